"""The gradients study: vanishing/exploding and shattered gradients in plain vs residual twins.

For each depth, a plain net and its residual twin (same class and seed, shortcut off in the plain one;
the same initial weights where the shortcuts hold none) are measured on real data, at initialisation
and after `iters` SGD steps of the engine (an ordinary run folder per net under `runs/`):

1. Gradient norms. ||dL/dW|| of every weight layer on the main path (shortcut projections left out), in
   the order the forward pass runs them, and ||dL/da|| of the input a of every residual block
   (`model.residual_blocks()`), for the mean cross-entropy L of `batches` fixed training batches in train
   mode (the mode training uses them in); norms are averaged over the batches. He et al. 2015 (§1)
   name vanishing/exploding gradients as the obstacle normalisation largely solved; here one sees how
   far the gradient norm still drifts from the last layer to the first with and without shortcuts
   (with batch norm, a deep plain net's gradient explodes toward the input at initialisation: Yang et
   al. 2019, "A Mean Field Theory of Batch Normalization", ICLR).
2. Shattered gradients (Balduzzi et al. 2017, "The Shattered Gradients Problem: If resnets are the
   answer, then what is the question?", ICML, §2, Figs. 1-2). The paper feeds a 1-D input on a grid of
   256 points through a rectifier net and looks at the gradient of the output with respect to the input
   along the grid: for a shallow net it is a smooth, brown-noise-like sequence; with depth the
   feedforward net's gradient turns into white noise, while a resnet's keeps its structure (its
   abstract: the correlation between gradients decays exponentially with depth in feedforward nets and
   sublinearly in resnets). Fig. 2 compares the sequences by their autocorrelation function.
   Here the 1-D input is a line through input space between two real test images,
   x(t) = x_a + t (x_b - x_a), t on a grid of `points` values in [0, 1], and the output is the logit of
   x_a's class: g(t) = d logit(x(t)) / dt = grad_x logit(x(t)) . (x_b - x_a), the paper's 1-D gradient
   of the net restricted to that line. Measures, averaged over `lines` lines:
     acf(k)          = sum_t (g_t - mean g)(g_(t+k) - mean g) / sum_t (g_t - mean g)^2   (k = 0..max_lag;
                       acf(1) is the correlation between the gradients of neighbouring inputs; a constant
                       sequence counts as 1)
     neighbour_corr  = mean over t of the Pearson correlation between the full input-gradient vectors
                       grad_x logit(x(t)) and grad_x logit(x(t+1)).
   The net runs in eval mode, so each point's gradient depends on that point only; batch-norm statistics
   are first re-estimated on the same real training batches (so they normalise as in training).

Measurements go to `measurements/<arch>-<depth>.json`; `reslab.report.gradients` turns them into
summary.json (verdict from the numbers), figures and report.html.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from reslab.studies.common import claim_study_dir, study_cli, train_many
from reslab.studies.degradation import ARCHS, FAMILIES  # the same twins, named the same way
from reslab.training.config import TrainConfig, resolve
from reslab.training.tracking import write_json

WEIGHT_LAYERS = (nn.Linear, nn.Conv2d)


@dataclass(frozen=True)
class GradientsConfig:
    """Which twins to measure, on what data, and how long to train them between the two measurements."""

    preset: str = field(default="digits", metadata={"help": "digits, cpu or paper"})
    data: str = field(default="digits", metadata={"help": "dataset (digits is built in)"})
    data_dir: str | None = field(default=None, metadata={"help": "data root"})
    family: str = field(default="mlp", metadata={"help": f"model family: {', '.join(FAMILIES)}"})
    depths: tuple[int, ...] = field(
        default=(8, 32, 128), metadata={"help": "depths (weight layers)"}
    )
    archs: tuple[str, ...] = field(default=ARCHS, metadata={"help": "plain and/or residual"})
    seed: int = field(default=0, metadata={"help": "seed of the initial weights and data order"})
    iters: int = field(
        default=100, metadata={"help": "SGD steps between the two measurements (0: init only)"}
    )
    width: int = field(
        default=0, metadata={"help": "MLP width (0: the model's default; ignored by conv nets)"}
    )
    model_args: dict = field(
        default_factory=dict,
        metadata={"help": "model overrides for both archs, KEY=VALUE", "cli": "model_arg"},
    )
    residual_args: dict = field(
        default_factory=dict,
        metadata={"help": "model overrides for the residual nets only", "cli": "residual_arg"},
    )
    batches: int = field(
        default=4, metadata={"help": "training batches the gradient norms average"}
    )
    lines: int = field(default=8, metadata={"help": "lines between test images (shattering)"})
    points: int = field(default=256, metadata={"help": "inputs on each line"})
    max_lag: int = field(default=32, metadata={"help": "largest lag of the autocorrelation"})
    jobs: int = field(
        default=0, metadata={"help": "runs trained at once (0: one per core for MLPs)"}
    )
    out: str = field(default="runs/gradients", metadata={"help": "root of study folders"})
    name: str = field(default="", metadata={"help": "study folder name (default: the preset's)"})
    train: dict = field(default_factory=dict, metadata={"help": "TrainConfig overrides"})

    # TrainConfig fields the study sets itself, per run.
    OWNED = ("model", "model_kwargs", "data", "data_dir", "iters", "seed", "name", "out", "resume")

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {', '.join(FAMILIES)}, got {self.family!r}")
        if not self.archs or any(a not in ARCHS for a in self.archs):
            raise ValueError(f"archs must be plain and/or residual, got {list(self.archs)}")
        if not self.depths:
            raise ValueError("give at least one depth")
        for name in ("iters", "width"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("batches", "lines", "max_lag"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.points < self.max_lag + 2:
            raise ValueError(f"points must be >= max_lag + 2, got {self.points} and {self.max_lag}")
        for depth in self.depths:  # fail before any training if a name is invalid
            for arch in self.archs:
                with torch.device("meta"):
                    self.build(arch, depth, 10, 1, (8, 8))

    def model_name(self, arch: str, depth: int) -> str:
        return FAMILIES[self.family][ARCHS.index(arch)].format(depth)

    def model_kwargs(self, arch: str) -> dict:
        mlp = self.width and self.family == "mlp"  # conv families have no width option
        kwargs = dict(self.model_args, **({"width": self.width} if mlp else {}))
        return dict(kwargs, **self.residual_args) if arch == "residual" else kwargs

    def build(self, arch: str, depth: int, num_classes: int, in_chans: int, img_size) -> nn.Module:
        from reslab.models import create_model

        kwargs = self.model_kwargs(arch)
        return create_model(self.model_name(arch, depth), num_classes, in_chans, img_size, **kwargs)

    def run_config(self, arch: str, depth: int, study_dir: Path) -> TrainConfig:
        """The ordinary training config of one net (its first `iters` steps)."""
        options = dict(
            self.train,
            model=self.model_name(arch, depth),
            model_kwargs=self.model_kwargs(arch),
            data=self.data,
            data_dir=self.data_dir,
            seed=self.seed,
            iters=self.iters,
            name=f"{arch}-{depth}-s{self.seed}",
            out=str(study_dir / "runs"),
            resume=True,
        )
        options.setdefault("progress", False)
        return resolve(
            self.train.get("preset"), **{k: v for k, v in options.items() if k != "preset"}
        )


# Built-in settings. digits: fully connected nets of width 64 with batch norm, 8 to 128 weight layers,
# the degradation study's digits recipe for the training steps. The residual nets keep the default
# init, so at initialisation each plain net and its twin hold exactly the same weights (MLPs and
# option-A conv nets, which have no projection weights; projections draw from the RNG first).
_DIGITS_RECIPE = dict(
    lr=0.02,
    momentum=0.9,
    weight_decay=0.0,
    batch_size=128,
    schedule="constant",
    augment="off",
    log_every=10,
)
PRESETS: dict[str, dict[str, Any]] = {
    "digits": dict(
        data="digits", family="mlp", depths=(8, 32, 128), width=64, iters=100, train=_DIGITS_RECIPE
    ),
    "cpu": dict(  # CIFAR-10 on a 2-core CPU: 50 steps per net, tens of minutes
        data="cifar10",
        family="cifar",
        depths=(20, 56, 110),
        iters=50,
        batches=2,
        lines=4,
        points=128,
        train=dict(preset="cpu", schedule="constant", log_every=10),
    ),
    "paper": dict(  # CIFAR-10 with the paper's recipe (warm-up for 110+ layers), for a GPU
        data="cifar10",
        family="cifar",
        depths=(20, 56, 110),
        iters=500,
        batches=8,
        lines=16,
        train=dict(preset="paper", schedule="constant", log_every=50),
    ),
}


def make_config(preset: str = "digits", **options: Any) -> GradientsConfig:
    """defaults < preset < options; `train` overrides are merged, not replaced."""
    if preset not in PRESETS:
        raise ValueError(f"unknown gradients preset {preset!r}; choose from {', '.join(PRESETS)}")
    values = dict(PRESETS[preset])
    values["train"] = dict(values.get("train", {}), **options.pop("train", {}))
    values.update(options)
    if not values.get("name"):
        values["name"] = preset if "data" not in options else f"{preset}-{options['data']}"
    return GradientsConfig(
        preset=preset, **{k: (tuple(v) if isinstance(v, list) else v) for k, v in values.items()}
    )


# ---------------------------------------------------------------------------------------------- measures


def gradient_norms(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> dict:
    """||dL/dW|| per main-path weight layer (forward order) and ||dL/da|| per block input a, with L the
    mean cross-entropy of a batch, in train mode; each averaged over `batches`. The model is not changed
    (a copy runs, so batch-norm statistics stay as they were)."""
    model = copy.deepcopy(model).train()
    layers = {
        m: n
        for n, m in model.named_modules()
        if isinstance(m, WEIGHT_LAYERS) and "downsample" not in n.split(".")
    }
    order: list[str] = []
    inputs: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda m, i, o: order.append(layers[m])) for m in layers]
    hooks += [
        b.register_forward_pre_hook(lambda m, args: inputs.append(args[0]))
        for b in model.residual_blocks()
    ]
    weight_sum, input_sum, loss_sum, names = None, None, 0.0, []
    try:
        for x, y in batches:
            order.clear()
            inputs.clear()
            loss = F.cross_entropy(model(x), y)
            names = list(dict.fromkeys(order))  # a layer run twice is measured once
            weights = [model.get_submodule(n).weight for n in names]
            grads = torch.autograd.grad(loss, weights + inputs)
            norms = torch.stack([g.norm() for g in grads]).double()
            w, a = norms[: len(weights)], norms[len(weights) :]
            weight_sum = w if weight_sum is None else weight_sum + w
            input_sum = a if input_sum is None else input_sum + a
            loss_sum += loss.item()
    finally:
        for h in hooks:
            h.remove()
    n = len(batches)
    return {
        "loss": loss_sum / n,
        "weight_names": names,
        "weight_norms": (weight_sum / n).tolist(),
        "block_input_norms": (input_sum / n).tolist(),
    }


@torch.no_grad()
def calibrate_norms(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Re-estimate every batch norm's running statistics as the plain average over `batches` (train-mode
    forward passes that change no weight); leaves the model in eval mode."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    for x, _ in batches:
        model(x)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.eval()


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
    grads = []
    for ts in t.split(chunk):
        xs = (x_a + ts.view(-1, *[1] * x_a.dim()) * direction).requires_grad_()  # (T, C, H, W)
        (g,) = torch.autograd.grad(model(xs)[:, unit].sum(), xs)
        grads.append(g.flatten(1))
    grads = torch.cat(grads)  # (points, D)
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
    """acf of the gradient along each line, and the neighbour correlation (see the module docstring)."""
    acfs, corrs, example = [], [], []
    for x_a, x_b, unit in lines:
        g, grads = line_gradients(model, x_a, x_b, unit, points)
        acfs.append(autocorrelation(g, max_lag))
        corrs.append(neighbour_correlation(grads))
        if not example:
            example = g.tolist()
    acf = torch.stack(acfs)  # (lines, max_lag + 1)
    return {
        "acf": acf.mean(0).tolist(),
        "acf1_lines": acf[:, 1].tolist(),
        "neighbour_corr": sum(corrs) / len(corrs),
        "neighbour_corr_lines": corrs,
        "line_example": example,
    }


def measure(model: nn.Module, batches: list, lines: list, points: int, max_lag: int) -> dict:
    """Gradient norms (train mode) and shattering (eval mode, norms calibrated on `batches`) of a copy."""
    model = copy.deepcopy(model)
    out = gradient_norms(model, batches)
    calibrate_norms(model, batches)
    return out | shattering(model, lines, points, max_lag)


# ---------------------------------------------------------------------------------------------- study


def _batches(cfg: GradientsConfig, run_cfg: TrainConfig, device: torch.device):
    """(training data, the fixed training batches, the lines between test images) for the measures."""
    from reslab.data import Loader
    from reslab.training.loop import load_data

    train_data, test_data, _ = load_data(run_cfg)
    loader = Loader(
        train_data, run_cfg.batch_size, train=True, augment=False, seed=cfg.seed, device=device
    )
    if len(loader) == 0:
        raise ValueError(
            f"batch size {run_cfg.batch_size} is larger than the training set ({len(train_data)})"
        )
    batches = list(itertools.islice(loader.epoch(0), cfg.batches))
    if len(test_data) < 2 * cfg.lines:
        raise ValueError(f"lines must be <= {len(test_data) // 2} for this test set")
    test = Loader(
        test_data,
        len(test_data),
        train=False,
        augment=False,
        device=device,
        mean=train_data.mean,
        std=train_data.std,
    )
    x, y = next(iter(test.epoch(0)))  # (N, C, H, W), (N,)
    pick = torch.randperm(len(y), generator=torch.Generator().manual_seed(cfg.seed))
    pick = pick[: 2 * cfg.lines].to(device)
    lines = [(x[a], x[b], int(y[a])) for a, b in pick.view(2, -1).T.tolist()]
    return train_data, batches, lines


def _train_all(configs: list[TrainConfig], jobs: int) -> dict[str, str]:
    """Train every config (finished ones are skipped); run name -> "completed" or "diverged"."""
    from reslab.training import Diverged

    try:
        train_many(configs, jobs)
    except Diverged:  # the other runs still finish; their status is read below
        pass
    status = {}
    for c in configs:
        done = Path(c.out) / c.run_name / "summary.json"
        status[c.run_name] = json.loads(done.read_text()).get("status") if done.is_file() else ""
        if status[c.run_name] not in ("completed", "diverged"):  # stopped early: train it now
            try:
                status[c.run_name] = train_many([c], 1)[0].get("status", "completed")
            except Diverged:
                status[c.run_name] = "diverged"
    return status


def _device(cfg: GradientsConfig) -> torch.device:
    want = cfg.train.get("device", "auto")
    return torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if want == "auto" else want
    )


def run(cfg: GradientsConfig) -> dict:
    """Train each net `iters` steps (skipping finished runs), measure both phases, write the report."""
    from reslab.models import count_params, load_weights
    from reslab.report.gradients import build_report, format_table
    from reslab.training.loop import build_model

    study_dir = Path(cfg.out) / cfg.name
    _claim(study_dir, cfg)
    cells = [(a, d) for d in cfg.depths for a in cfg.archs]
    configs = [cfg.run_config(a, d, study_dir) for a, d in cells]
    small = cfg.family == "mlp" and not torch.cuda.is_available()  # small nets: one per core
    jobs = cfg.jobs or ((os.cpu_count() or 1) if small else 1)
    t0 = time.perf_counter()
    print(
        f"gradients: {', '.join(cfg.archs)} x depths {list(cfg.depths)} on {cfg.data}, measured at "
        f"init and after {cfg.iters} steps -> {study_dir}",
        flush=True,
    )
    status = _train_all(configs, jobs) if cfg.iters else {}
    threads = cfg.train.get("num_threads") or (1 if small else 0)
    if threads:  # small nets: one thread measures faster than two contending for shared cores
        torch.set_num_threads(threads)
    device = _device(cfg)
    train_data, batches, lines = _batches(cfg, configs[0], device)
    (study_dir / "measurements").mkdir(exist_ok=True)
    for (arch, depth), c in zip(cells, configs, strict=True):
        torch.manual_seed(c.seed)  # the engine's init: same seed, same builder
        model = build_model(c, train_data).to(device)
        run_dir = Path(c.out) / c.run_name
        record = {
            "arch": arch,
            "depth": depth,
            "model": c.model,
            "model_kwargs": c.model_kwargs,
            "params": count_params(model),
            "run_dir": run_dir.relative_to(study_dir).as_posix(),
            "train_status": status.get(c.run_name, "not_trained"),
            "iters": cfg.iters,
            "phases": {"init": measure(model, batches, lines, cfg.points, cfg.max_lag)},
        }
        if record["train_status"] == "completed":
            load_weights(model, run_dir / "model.safetensors")
            record["phases"]["trained"] = measure(model, batches, lines, cfg.points, cfg.max_lag)
        write_json(study_dir / "measurements" / f"{arch}-{depth}.json", record)
        init = record["phases"]["init"]
        print(
            f"  {f'{arch}-{depth}':<14} init: |dL/dW| first {init['weight_norms'][0]:.3g} last "
            f"{init['weight_norms'][-1]:.3g}, acf(1) {init['acf'][1]:.3f}  "
            f"[{time.perf_counter() - t0:4.0f} s]",
            flush=True,
        )
    report = build_report(study_dir)
    summary = json.loads((study_dir / "summary.json").read_text())
    print(format_table(summary))
    print(f"report: {report}  ({time.perf_counter() - t0:.0f} s)")
    return summary


def train_recipe(train: dict) -> dict:
    """The training options that change what is computed (not how fast or how it is shown)."""
    volatile = ("progress", "num_threads", "device", "compile", "log_every", "eval_every")
    return {k: v for k, v in train.items() if k not in volatile}


def _claim(study_dir: Path, cfg: GradientsConfig) -> None:
    """study.json; a rerun may add depths or archs, not change what a measurement means."""
    record = {"study": "gradients", **dataclasses.asdict(cfg), "recipe": train_recipe(cfg.train)}

    def merge(old: dict, new: dict) -> dict:
        return {
            **old,
            **new,
            "depths": sorted(set(old["depths"]) | set(new["depths"])),
            "archs": [a for a in ARCHS if a in set(old["archs"]) | set(new["archs"])],
        }

    keys = ("data", "family", "seed", "iters", "width", "model_args", "residual_args", "recipe")
    claim_study_dir(study_dir, record, (*keys, "batches", "lines", "points", "max_lag"), merge)


HELP = "gradient norms per layer and shattered gradients, plain vs residual (Balduzzi et al. 2017)"


add_arguments, main = study_cli(
    GradientsConfig,
    PRESETS,
    make_config,
    run,
    preset_help="cpu: CIFAR-10 on a 2-core CPU; paper: CIFAR-10 with the paper's recipe, for a GPU",
)
