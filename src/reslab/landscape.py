"""Loss landscapes along filter-normalised random directions (Li, Xu, Taylor, Studer and Goldstein
2018, "Visualizing the Loss Landscape of Neural Nets", §4 and §6).

A net's loss is drawn over a plane through its trained weights w: L(w + a d1 + b d2) for a grid of
(a, b). The directions are random Gaussian tensors shaped like the parameters, then *filter
normalised*: each filter (a slice along dim 0: an output channel of a conv, a row of a Linear) is
scaled to the norm of the same filter of w, so that the scale-invariance of ReLU nets with batch norm
does not make one net's surface look flatter than another's (§4). Parameters of one dimension (biases,
batch-norm weights and biases) get a zero direction, as the paper's `--xignore biasbn` does. The same
seed draws the same Gaussian tensors for nets with the same parameter names and shapes, so a plain
net and its residual twin are cut along the same random directions, each scaled to its own filters.

The surface is evaluated in eval mode (batch norm uses its running statistics) on fixed images; the
centre of the grid is the model's own loss, bit for bit. `surface` scores one point at a time, each
point's weights written in place into a copy of the model; `stacked_scores` scores K grid points in
one call (their weights stacked, `torch.vmap` of the model over them), and `surface` does so where
that is faster (MLPs on a couple of hundred images). `hessian_extremes` gives
the largest and the smallest eigenvalue of the loss's Hessian at w (Lanczos on Hessian-vector
products): the paper's measure of non-convexity is |λmin / λmax| (§6, Fig. 7).

    d1, d2 = directions(model, seed=0)
    grid = surface(model, d1, d2, images, labels, np.linspace(-1, 1, 21), np.linspace(-1, 1, 21))
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from reslab.training.precision import has_conv

Direction = dict[str, torch.Tensor]
# `surface` stacks grid points where that is faster than the in-place loop (benchmarks/
# bench_landscape.py, docs/performance.md): on 200 images a deep MLP's forward pass is per-call
# overhead that K points share; on 1,000 images, or through convolutions, it is arithmetic, and
# stacking, slower per multiply-add, loses
STACKED, STACK_IMAGES = 16, 200


def directions(model: nn.Module, seed: int = 0, n: int = 2) -> list[Direction]:
    """`n` filter-normalised random directions for `model`'s parameters, zero on biases and norms.

    Each is {parameter name: tensor like the parameter}. Drawn from a generator seeded with `seed`, in
    the order of `model.named_parameters()`: twins with the same names and shapes draw the same."""
    gen = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    out = []
    for _ in range(n):
        d = {}
        for name, w in params.items():
            raw = torch.randn(w.shape, generator=gen, dtype=torch.float32)
            d[name] = filter_normalise(raw, w.detach().float().cpu()).to(w.device, w.dtype)
        out.append(d)
    return out


def filter_normalise(d: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """`d` with each filter (slice along dim 0) scaled to the norm of `w`'s; zero where w.dim() <= 1
    (a bias or a norm's weight: the paper's --xignore biasbn)."""
    if w.dim() <= 1:
        return torch.zeros_like(d)
    dn = d.flatten(1).norm(dim=1).clamp_min(1e-10)
    wn = w.flatten(1).norm(dim=1)
    return d * (wn / dn).view(-1, *[1] * (d.dim() - 1))


@torch.no_grad()
def surface(
    model: nn.Module,
    d1: Direction,
    d2: Direction | None,
    images: torch.Tensor,
    labels: torch.Tensor,
    xs: Sequence[float],
    ys: Sequence[float] = (0.0,),
    batch_size: int = 1024,
    points_at_once: int | None = None,
) -> dict[str, np.ndarray]:
    """Loss and top-1 error at w + x d1 + y d2 for every (x, y) of the grid, in eval mode, on
    `images`/`labels`: {"loss": (len(ys), len(xs)), "error": (len(ys), len(xs))}. With d2 None, a
    1-D slice (pass ys=(0,)). The grid is scored on a copy of `model`; `model` is left untouched.

    `points_at_once` 1 scores one point at a time, each point's weights written in place into the
    copy's parameters; > 1 scores that many in one call (`stacked_scores`); None: STACKED points
    for a net without convolutions scored on at most STACK_IMAGES images, where that is faster,
    else one (benchmarks/bench_landscape.py). The centre is always scored alone, with the weights
    copied unchanged, so that it is the model's own loss bit for bit."""
    if points_at_once is None:
        few = len(labels) <= STACK_IMAGES and not has_conv(model)
        points_at_once = STACKED if few else 1
    net = copy.deepcopy(model).eval().requires_grad_(False)
    params = dict(net.named_parameters())
    w = {k: params[k].clone() for k in _moving(params, d1, d2)}  # the trained weights
    loss = np.zeros((len(ys), len(xs)))
    error = np.zeros((len(ys), len(xs)))
    points = [(j, i, a, b) for j, b in enumerate(ys) for i, a in enumerate(xs)]
    alone, stacked = points, []
    if points_at_once > 1:  # the centre (the model's own weights) alone, the others stacked
        centre = [p[2] == 0 and (d2 is None or p[3] == 0) for p in points]
        alone = [p for p, c in zip(points, centre, strict=True) if c]
        stacked = [p for p, c in zip(points, centre, strict=True) if not c]
    for start in range(0, len(stacked), points_at_once):  # net's weights are w here
        chunk = stacked[start : start + points_at_once]
        ab = [(a, b) for _, _, a, b in chunk]
        scores = stacked_scores(net, d1, d2, ab, images, labels, batch_size)
        for (j, i, _, _), (point_loss, point_error) in zip(chunk, scores, strict=True):
            loss[j, i], error[j, i] = point_loss, point_error
    for j, i, a, b in alone:
        for k, trained in w.items():  # w + a d1 + b d2 in place; w itself, bit for bit, at 0, 0
            p = params[k].copy_(trained)
            if a != 0:
                p.add_(d1[k], alpha=a)
            if d2 is not None and b != 0:
                p.add_(d2[k], alpha=b)
        loss[j, i], error[j, i] = _score(net, images, labels, batch_size)
    return {"loss": loss, "error": error}


@torch.no_grad()
def stacked_scores(
    model: nn.Module,
    d1: Direction,
    d2: Direction | None,
    points: Sequence[tuple[float, float]],
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int = 1024,
) -> list[tuple[float, float]]:
    """(loss, top-1 error) at w + a d1 + b d2 for every (a, b) of `points`, all in one call per batch
    of images: the K points' weights stacked along a new first dimension, `torch.vmap` of the model
    (`functional_call`) over them. Parameters whose directions are zero (biases, norms) and the
    buffers are shared, so batch norm must be in eval mode (the caller's). Equal to the loop up to
    float rounding: a batched matrix product sums in another order."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    moving = _moving(params, d1, d2)
    shared = {k: w for k, w in params.items() if k not in moving} | dict(model.named_buffers())
    a = torch.tensor([p[0] for p in points])
    b = torch.tensor([p[1] for p in points])
    weights = {}
    for k in moving:
        w, shape = params[k], (-1,) + (1,) * params[k].dim()
        out = w + a.view(shape).to(w) * d1[k]  # (K, *w.shape)
        weights[k] = out if d2 is None else out + b.view(shape).to(w) * d2[k]

    def forward(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(model, (p, shared), (x,))

    batched = torch.vmap(forward, in_dims=(0, None))
    total = torch.zeros(len(points), dtype=torch.float64)
    wrong = torch.zeros(len(points), dtype=torch.long)
    for start in range(0, len(labels), batch_size):
        x, y = images[start : start + batch_size], labels[start : start + batch_size]
        logits = batched(weights, x).float()  # (K, B, classes)
        ce = F.cross_entropy(logits.flatten(0, 1), y.repeat(len(points)), reduction="none")
        total += ce.view(len(points), -1).sum(1).double()
        wrong += (logits.argmax(2) != y).sum(1)
    n = len(labels)
    return [(t / n, w / n) for t, w in zip(total.tolist(), wrong.tolist(), strict=True)]


def hessian_extremes(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    tol: float = 1e-3,
    maxiter: int = 200,
) -> tuple[float, float]:
    """(λmax, λmin) of the Hessian of the mean cross-entropy on `images` at the model's weights, in
    eval mode, by Lanczos (scipy's eigsh) on Hessian-vector products (double backward)."""
    from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

    was_training = model.training
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    n = sum(p.numel() for p in params)
    try:
        loss = F.cross_entropy(model(images), labels)
        grads = torch.autograd.grad(loss, params, create_graph=True)
        flat = torch.cat([g.reshape(-1) for g in grads])

        def hvp(v: np.ndarray) -> np.ndarray:
            vec = torch.as_tensor(v.ravel(), dtype=flat.dtype, device=flat.device)
            hv = torch.autograd.grad(flat, params, grad_outputs=vec, retain_graph=True)
            return torch.cat([h.reshape(-1) for h in hv]).double().cpu().numpy()

        op = LinearOperator((n, n), matvec=hvp, dtype=np.float64)
        v0 = np.random.default_rng(0).standard_normal(n)  # a fixed start: the same answer each time
        extremes = []
        for which in ("LA", "SA"):
            try:
                vals = eigsh(op, k=1, which=which, tol=tol, maxiter=maxiter, v0=v0, return_eigenvectors=False)  # fmt: skip
            except ArpackNoConvergence as e:  # the best estimate so far
                vals = e.eigenvalues if len(e.eigenvalues) else np.array([np.nan])
            extremes.append(float(vals[0]))
    finally:
        model.train(was_training)
    return extremes[0], extremes[1]


def _moving(names: Iterable[str], d1: Direction, d2: Direction | None) -> list[str]:
    """The parameters a grid moves: those with a nonzero direction (not biases and norms)."""
    return [k for k in names if d1[k].any() or (d2 is not None and d2[k].any())]


def _score(model, images, labels, batch_size) -> tuple[float, float]:
    total, wrong = 0.0, 0
    for start in range(0, len(labels), batch_size):
        x, y = images[start : start + batch_size], labels[start : start + batch_size]
        logits = model(x).float()
        total += F.cross_entropy(logits, y, reduction="sum").item()
        wrong += int((logits.argmax(1) != y).sum())
    return total / len(labels), wrong / len(labels)
