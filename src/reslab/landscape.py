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
centre of the grid is the model's own loss, bit for bit. `hessian_extremes` gives the largest and the
smallest eigenvalue of the loss's Hessian at w (Lanczos on Hessian-vector products): the paper's
measure of non-convexity is |λmin / λmax| (§6, Fig. 7).

    d1, d2 = directions(model, seed=0)
    grid = surface(model, d1, d2, images, labels, np.linspace(-1, 1, 21), np.linspace(-1, 1, 21))
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

Direction = dict[str, torch.Tensor]


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
) -> dict[str, np.ndarray]:
    """Loss and top-1 error at w + x d1 + y d2 for every (x, y) of the grid, in eval mode, on
    `images`/`labels`: {"loss": (len(ys), len(xs)), "error": (len(ys), len(xs))}. With d2 None, a
    1-D slice (pass ys=(0,)). The model's weights are left as they were."""
    was_training = model.training
    model.eval()
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())
    loss = np.zeros((len(ys), len(xs)))
    error = np.zeros((len(ys), len(xs)))
    try:
        for j, b in enumerate(ys):
            for i, a in enumerate(xs):
                moved = {k: _moved(w, d1[k], a, None if d2 is None else d2[k], b) for k, w in params.items()}  # fmt: skip
                loss[j, i], error[j, i] = _score(model, moved, buffers, images, labels, batch_size)
    finally:
        model.train(was_training)
    return {"loss": loss, "error": error}


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


def _moved(w: torch.Tensor, d1, a: float, d2, b: float) -> torch.Tensor:
    """w + a d1 + b d2, and w itself (the same tensor, bit for bit) at the centre."""
    if a == 0 and (d2 is None or b == 0):
        return w
    out = w + a * d1
    return out if d2 is None or b == 0 else out + b * d2


def _score(model, params, buffers, images, labels, batch_size) -> tuple[float, float]:
    total, wrong = 0.0, 0
    for start in range(0, len(labels), batch_size):
        x, y = images[start : start + batch_size], labels[start : start + batch_size]
        logits = functional_call(model, (params, buffers), (x,)).float()
        total += F.cross_entropy(logits, y, reduction="sum").item()
        wrong += int((logits.argmax(1) != y).sum())
    return total / len(labels), wrong / len(labels)
