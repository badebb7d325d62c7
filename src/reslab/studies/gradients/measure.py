"""The gradients study's measurements of one net, on real data.

1. Gradient norms. ||dL/dW|| of every weight layer on the main path (shortcut projections left out), in
   the order the forward pass runs them, and ||dL/da|| of the input a of every residual block
   (`model.residual_blocks()`), for the mean cross-entropy L of `batches` fixed training batches in train
   mode (the mode training uses them in); norms are averaged over the batches.
2. Shattered gradients (Balduzzi et al. 2017, §2, Figs. 1-2). The 1-D input is a line through input
   space between two real test images, x(t) = x_a + t (x_b - x_a), t on a grid of `points` values in
   [0, 1], and the output is the logit of x_a's class: g(t) = d logit(x(t)) / dt
   = grad_x logit(x(t)) . (x_b - x_a), the paper's 1-D gradient of the net restricted to that line.
   Measures, averaged over `lines` lines:
     acf(k)          = sum_t (g_t - mean g)(g_(t+k) - mean g) / sum_t (g_t - mean g)^2   (k = 0..max_lag;
                       acf(1) is the correlation between the gradients of neighbouring inputs; a constant
                       sequence counts as 1)
     neighbour_corr  = mean over t of the Pearson correlation between the full input-gradient vectors
                       grad_x logit(x(t)) and grad_x logit(x(t+1)).
   The net runs in eval mode, so each point's gradient depends on that point only; batch-norm statistics
   are first re-estimated on the same real training batches (so they normalise as in training).
3. The initial weights, as a digest (`init_digest`), so the report can check that a plain net and its
   residual twin start from the same weights (like for like) from the measurement records alone.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import update_bn

from reslab.models.registry import Model
from reslab.studies.gradients import MEASUREMENTS
from reslab.training import runs
from reslab.training.config import TrainConfig

WEIGHT_LAYERS = (nn.Linear, nn.Conv2d)
Batches = list[tuple[torch.Tensor, torch.Tensor]]


def gradient_norms(model: Model, batches: Batches) -> dict:
    """The gradient norms of item 1 of the module docstring (train mode: the model's batch-norm
    statistics move)."""
    model.train()
    names = {
        m: n
        for n, m in model.named_modules()
        if isinstance(m, WEIGHT_LAYERS) and "downsample" not in n.split(".")
    }
    order: list[str] = []
    inputs: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda m, i, o: order.append(names[m])) for m in names]
    hooks += [
        b.register_forward_pre_hook(lambda m, args: inputs.append(args[0]))
        for b in model.residual_blocks()
    ]
    norms, losses, layers = [], [], list[str]()
    try:
        for x, y in batches:
            order.clear()
            inputs.clear()
            loss = F.cross_entropy(model(x), y)
            layers = list(dict.fromkeys(order))  # a layer run twice is measured once
            weights = [model.get_parameter(f"{n}.weight") for n in layers]
            grads = torch.autograd.grad(loss, weights + inputs)
            norms.append(torch.stack([g.norm() for g in grads]).double())
            losses.append(loss.item())
    finally:
        for h in hooks:
            h.remove()
    mean = sum(norms, torch.zeros((), dtype=torch.float64)) / len(batches)
    return {
        "loss": sum(losses) / len(batches),
        "weight_names": layers,
        "weight_norms": mean[: len(layers)].tolist(),
        "block_input_norms": mean[len(layers) :].tolist(),
    }


def line_gradients(
    model: nn.Module, x_a: torch.Tensor, x_b: torch.Tensor, unit: int, points: int, chunk: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Input gradients of logit `unit` along x(t) = x_a + t (x_b - x_a), t = linspace(0, 1, points).

    Returns (g, grads): g (points,) = d logit(x(t)) / dt, and grads (points, D) = grad_x logit(x(t)),
    flattened. The model must be in eval mode (each input's gradient must depend on that input only)."""
    if model.training:
        raise ValueError("line_gradients needs the model in eval mode (model.eval())")
    direction = x_b - x_a  # (C, H, W)
    t = torch.linspace(0, 1, points, device=x_a.device)
    chunks = []
    for ts in t.split(chunk):
        xs = (x_a + ts.view(-1, *[1] * x_a.dim()) * direction).requires_grad_()  # (T, C, H, W)
        (g,) = torch.autograd.grad(model(xs)[:, unit].sum(), xs)
        chunks.append(g.flatten(1))
    grads = torch.cat(chunks)  # (points, D)
    return grads @ direction.flatten(), grads


def autocorrelation(seq: torch.Tensor, max_lag: int) -> torch.Tensor:
    """acf(k), k = 0..max_lag, of a 1-D sequence (normalised by its total variance); all ones if constant."""
    s = seq.double() - seq.double().mean()
    var = (s * s).sum()
    if var == 0:
        return torch.ones(max_lag + 1, dtype=torch.float64)
    return torch.stack([(s[: len(s) - k] * s[k:]).sum() / var for k in range(max_lag + 1)])


def neighbour_correlation(grads: torch.Tensor) -> float:
    """Mean Pearson correlation between consecutive rows of `grads` (points, D)."""
    g = grads.double() - grads.double().mean(1, keepdim=True)
    return F.cosine_similarity(g[:-1], g[1:], dim=1, eps=1e-30).mean().item()


def shattering(model: nn.Module, lines: list[tuple], points: int, max_lag: int) -> dict:
    """acf of the gradient along each line, and the neighbour correlation (module docstring)."""
    found = [line_gradients(model, x_a, x_b, unit, points) for x_a, x_b, unit in lines]
    acf = torch.stack([autocorrelation(g, max_lag) for g, _ in found])  # (lines, max_lag + 1)
    corrs = [neighbour_correlation(grads) for _, grads in found]
    return {
        "acf": acf.mean(0).tolist(),
        "acf1_lines": acf[:, 1].tolist(),
        "neighbour_corr": sum(corrs) / len(corrs),
        "neighbour_corr_lines": corrs,
        "line_example": found[0][0].tolist(),
    }


def init_digest(model: nn.Module) -> str:
    """sha256 of every state-dict tensor (name, dtype, shape, values) except the shortcut projections
    (`downsample`, which a plain net does not have): equal for two nets exactly when the tensors they
    share by name hold the same values and neither has one the other lacks."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        if "downsample" in name.split("."):
            continue
        t = t.detach().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())  # raw bytes, any dtype
    return h.hexdigest()


def measure(model: Model, batches: Batches, lines: list, points: int, max_lag: int) -> dict:
    """Gradient norms (train mode) and shattering (eval mode, batch-norm statistics re-estimated as
    the plain average over `batches`) of a copy of `model`."""
    model = copy.deepcopy(model)
    out = gradient_norms(model, batches)
    with torch.no_grad():
        update_bn(batches, model)
    return out | shattering(model.eval(), lines, points, max_lag)


def inputs(c: TrainConfig, n_batches: int, n_lines: int, seed: int, device: torch.device):
    """(training data, `n_batches` fixed training batches, `n_lines` lines (x_a, x_b, class of x_a)
    between two test images) for the measures, on `device`."""
    from reslab.data import Loader
    from reslab.training.build import load_data

    train_data, test_data, _ = load_data(c)
    loader = Loader(train_data, c.batch_size, train=True, augment=False, seed=seed, device=device)
    if len(loader) == 0:
        raise ValueError(
            f"batch size {c.batch_size} is larger than the training set ({len(train_data)})"
        )
    if len(test_data) < 2 * n_lines:
        raise ValueError(f"lines must be <= {len(test_data) // 2} for this test set")
    batches = list(itertools.islice(loader.epoch(0), n_batches))
    mean, std = train_data.mean, train_data.std  # the test images normalised as the training ones
    test = Loader(
        test_data, len(test_data), train=False, augment=False, device=device, mean=mean, std=std
    )
    x, y = next(iter(test.epoch(0)))  # (N, C, H, W), (N,)
    pick = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[: 2 * n_lines]
    return train_data, batches, [(x[a], x[b], int(y[a])) for a, b in pick.view(2, -1).T.tolist()]


def after_training(cfg, folder: Path, configs: list[TrainConfig], trained: list, jobs: int) -> None:
    """Measure every net as the engine initialises it (same seed, same builder) and, where its run
    completed, after training, into `<folder>/measurements/<cell>.json`. The measures run on the
    engine's `device`, with its `num_threads` if set; small fully connected nets on a CPU use one
    thread, which measures faster than two contending for shared cores."""
    from reslab.models import count_params, load_weights
    from reslab.training.build import build_model

    want, t0 = cfg.train.get("device", "auto"), time.perf_counter()
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if want == "auto" else want)
    mlp = cfg.family == "mlp" and auto == "cpu"
    if threads := cfg.train.get("num_threads", 0) or (1 if mlp else 0):
        torch.set_num_threads(threads)
    (folder / MEASUREMENTS).mkdir(exist_ok=True)
    data: dict[int, tuple] = {}
    for (arch, depth, seed), c, summary in zip(cfg.cells(), configs, trained, strict=True):
        if seed not in data:  # each seed measures on its own batches and lines
            data = {seed: inputs(c, cfg.batches, cfg.lines, seed, device)}
        train_data, batches, lines = data[seed]
        run_dir = Path(c.out) / c.run_name
        status = summary.get("status", "not_trained")
        torch.manual_seed(c.seed)
        model = build_model(c, train_data).to(device)
        record = {"arch": arch, "depth": depth, "model": c.model, "model_kwargs": c.model_kwargs}
        record |= {"params": count_params(model), "seed": c.seed, "init_digest": init_digest(model)}
        record |= {"run_dir": run_dir.relative_to(folder).as_posix(), "train_status": status}
        phases = {"init": measure(model, batches, lines, cfg.points, cfg.max_lag)}
        if status == "completed":
            load_weights(model, run_dir / runs.WEIGHTS)
            phases["trained"] = measure(model, batches, lines, cfg.points, cfg.max_lag)
        path = folder / MEASUREMENTS / f"{c.run_name}.json"
        runs.write_json(path, record | {"iters": cfg.iters, "phases": phases})
        w, acf = phases["init"]["weight_norms"], phases["init"]["acf"]
        print(
            f"  {c.run_name:<16} init: |dL/dW| first {w[0]:.3g} last {w[-1]:.3g}, "
            f"acf(1) {acf[1]:.3f}  [{time.perf_counter() - t0:4.0f} s]",
            flush=True,
        )
