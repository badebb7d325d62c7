"""The lesion study (Veit, Wilber and Belongie 2016, "Residual Networks Behave Like Ensembles of
Relatively Shallow Networks", §4.1-4.2, Figures 3 and 4): delete blocks of a trained net at test time.

Deleting block l of a residual net removes its residual branch and keeps its shortcut, as Veit et al.
do ("leaving the skip connection (or downsampling projection, if any) untouched", §4.1): the block
becomes its shortcut path h(x) followed by what comes after the addition (the ReLU of a post-activation
block, which is the identity on its non-negative input). Where a block changes the shape, that path is
the option-A subsampling with zero channels or the projection, as the network defines it. Deleting
block l of a plain net passes its input straight to block l+1, which is possible only where the block
keeps the shape; blocks that change it are recorded as not deletable. Then random sets of k deletable
blocks are deleted together (`samples` sets per k), giving test error against k.

The nets come from trained run folders (`--from runs/...`: config.json + model.safetensors, as the
training engine writes them) or, by default, from a plain/residual pair trained first with the engine.
`run(cfg)` writes `runs/lesion/<name>/lesions.json` (every measured error), and the report module turns
it into summary.json, single.png, multi.png and report.html.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from reslab.studies.common import claim_study_dir, default_jobs, study_cli, train_many
from reslab.training.config import TrainConfig, resolve
from reslab.training.tracking import write_json


@dataclass(frozen=True)
class LesionConfig:
    """Which trained nets to lesion (or which pair to train first) and how many deletions to try."""

    preset: str = field(default="digits", metadata={"help": "digits, cpu or paper"})
    runs: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "trained run folders to lesion (config.json + model.safetensors); "
            "none: train the plain/residual pair below first",
            "cli": "from",
        },
    )
    data: str = field(default="digits", metadata={"help": "dataset of the pair trained here"})
    data_dir: str | None = field(default=None, metadata={"help": "data root"})
    residual: str = field(default="resmlp-34", metadata={"help": "residual net trained here"})
    plain: str = field(default="plainmlp-34", metadata={"help": "plain net trained here"})
    width: int = field(default=64, metadata={"help": "MLP width (0: the model's default)"})
    seeds: tuple[int, ...] = field(
        default=(0, 1, 2), metadata={"help": "one trained pair per seed"}
    )
    iters: int = field(default=0, metadata={"help": "training iterations (0: the recipe's)"})
    samples: int = field(default=20, metadata={"help": "random sets of k blocks deleted, per k"})
    ks: tuple[int, ...] = field(
        default=(), metadata={"help": "numbers of blocks deleted together (none: 1 to all)"}
    )
    test_subset: int = field(
        default=0, metadata={"help": "evaluate on the first N test images (0: all)"}
    )
    device: str = field(default="auto", metadata={"help": "cpu, cuda or auto (evaluation)"})
    num_threads: int = field(
        default=0, metadata={"help": "CPU threads per process (0: PyTorch's default)"}
    )
    jobs: int = field(default=0, metadata={"help": "runs trained at once (0: auto)"})
    out: str = field(default="runs/lesion", metadata={"help": "root of study folders"})
    name: str = field(default="", metadata={"help": "study folder name (default: the preset's)"})
    train: dict = field(default_factory=dict, metadata={"help": "TrainConfig overrides"})

    OWNED = ("model", "model_kwargs", "data", "data_dir", "iters", "seed", "name", "out")
    OWNED += ("resume", "progress", "device", "num_threads")

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise ValueError(f"samples must be >= 1, got {self.samples}")
        if any(k < 1 for k in self.ks):
            raise ValueError(f"ks must be numbers of blocks >= 1, got {list(self.ks)}")
        if self.test_subset < 0:
            raise ValueError(f"test_subset must be >= 0, got {self.test_subset}")
        if not self.runs:
            if not self.seeds:
                raise ValueError("give at least one seed, or trained run folders with --from")
            for name in (self.residual, self.plain):  # fail before any training
                _check_model(name, self.width)
        for run in self.runs:
            if not (Path(run) / "config.json").is_file():
                raise FileNotFoundError(f"--from {run}: no config.json (not a training run folder)")
            if not (Path(run) / "model.safetensors").is_file():
                raise FileNotFoundError(f"--from {run}: no model.safetensors (run not finished)")

    def run_config(self, arch: str, seed: int, study_dir: Path) -> TrainConfig:
        """The training config of the `arch` ("plain" | "residual") net of one pair."""
        options = dict(
            self.train,
            model=self.residual if arch == "residual" else self.plain,
            model_kwargs={"width": self.width} if self.width else {},
            data=self.data,
            data_dir=self.data_dir,
            seed=seed,
            name=f"{arch}-s{seed}",
            out=str(study_dir / "runs"),
            resume=True,
            progress=False,
        )
        if self.iters:
            options["iters"] = self.iters
        if self.num_threads:
            options["num_threads"] = self.num_threads
        preset = options.pop("preset", None)
        return resolve(preset, **options)


def _check_model(name: str, width: int) -> None:
    from reslab.models import create_model

    with torch.device("meta"):
        create_model(name, in_chans=1, img_size=(8, 8), **({"width": width} if width else {}))


# digits: fully connected nets of 16 blocks (34 weight layers) with batch norm, trained with the
# degradation study's digits recipe; cpu/paper: CIFAR nets with He et al.'s recipes. Veit et al.
# lesion a ResNet-110 and compare it with a plain VGG-15; `paper` pairs ResNet-110 with plain-20,
# the deepest plain CIFAR net that still trains well (He et al. 2015, Fig. 6).
PRESETS: dict[str, dict[str, Any]] = {
    "digits": dict(
        data="digits",
        residual="resmlp-34",
        plain="plainmlp-34",
        width=64,
        seeds=(0, 1, 2),
        samples=20,
        num_threads=1,  # tiny matrices: more threads only contend for the cores
        train=dict(preset="digits", epochs=60.0, log_every=10, eval_every=100),
    ),
    "cpu": dict(
        data="cifar10",
        residual="resnet-20",
        plain="plain-20",
        seeds=(0,),
        samples=10,
        test_subset=2000,
        train=dict(preset="cpu", epochs=3.0, log_every=20),
    ),
    "paper": dict(
        data="cifar10",
        residual="resnet-110",
        plain="plain-20",
        seeds=(0,),
        samples=20,
        ks=tuple(range(1, 21)),
        train=dict(preset="paper", log_every=100, eval_every=1000),
    ),
}


def make_config(preset: str = "digits", **options: Any) -> LesionConfig:
    """defaults < preset < options; `train` overrides are merged, not replaced."""
    if preset not in PRESETS:
        raise ValueError(f"unknown lesion preset {preset!r}; choose from {', '.join(PRESETS)}")
    values = dict(PRESETS[preset])
    values["train"] = dict(values.get("train", {}), **options.pop("train", {}))
    values.update(options)
    values["name"] = values.get("name") or (preset if not values.get("runs") else "from-runs")
    return LesionConfig(
        preset=preset, **{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    )


# ---------------------------------------------------------------------------------------- lesions


def shortcut_path(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What is left of `block` when its residual branch is deleted (a plain block: its input)."""
    if hasattr(block, "shortcut_forward"):  # blocks that define it themselves (models.variants)
        return block.shortcut_forward(x)
    if block.shortcut == "none":
        return x
    if block.downsample is None:
        h = x
    elif block.preact and block.projects:  # a pre-act projection sees the pre-activated input
        h = block.downsample(torch.relu(block.bn1(x)))
    else:
        h = block.downsample(x)
    if isinstance(getattr(block, "post", None), nn.Module):  # `to_residual` blocks: their own g
        return block.post(h.clone())  # clone: g may act in place
    return h if block.preact else torch.relu(h)  # the ReLU after the addition stays


class Lesioned(nn.Module):
    """A deleted block: its shortcut path (residual) or the identity (plain)."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return shortcut_path(self.block, x)


@contextlib.contextmanager
def lesioned(model: nn.Module, blocks: Sequence[int]) -> Iterator[nn.Module]:
    """`model` with the blocks at these indices of `model.residual_blocks()` deleted, restored on exit."""
    all_blocks = model.residual_blocks()
    names = {id(m): n for n, m in model.named_modules()}
    swapped = []
    try:
        for i in sorted(set(blocks)):
            if not 0 <= i < len(all_blocks):
                raise ValueError(f"block index {i} out of range: the model has {len(all_blocks)}")
            name = names[id(all_blocks[i])]
            model.set_submodule(name, Lesioned(all_blocks[i]))
            swapped.append((name, all_blocks[i]))
        yield model
    finally:
        for name, block in swapped:
            model.set_submodule(name, block)


@torch.no_grad()
def block_shapes(model: nn.Module, x: torch.Tensor) -> list[tuple[tuple, tuple]]:
    """(input shape, output shape) of every block for the batch `x`, without the batch dimension."""
    shapes: list[tuple[tuple, tuple]] = []
    hooks = [
        b.register_forward_hook(lambda m, a, o: shapes.append((a[0].shape[1:], o.shape[1:])))
        for b in model.residual_blocks()
    ]
    was_training = model.training
    try:
        model.eval()
        model(x)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return [(tuple(i), tuple(o)) for i, o in shapes]


def is_residual(model: nn.Module) -> bool:
    return any(b.shortcut != "none" for b in model.residual_blocks())


def random_sets(eligible: Sequence[int], ks: Sequence[int], samples: int, seed: int) -> dict:
    """k -> `samples` distinct random sets of k blocks from `eligible` (every set, where there are
    fewer); k larger than len(eligible) is left out. The same seed gives the same sets."""
    rng = np.random.default_rng(seed)
    sets = {}
    for k in ks:
        if k > len(eligible):
            continue
        if math.comb(len(eligible), k) <= samples:
            sets[k] = [list(c) for c in itertools.combinations(eligible, k)]
            continue
        chosen: list[list[int]] = []
        while len(chosen) < samples:
            s = sorted(int(i) for i in rng.choice(eligible, size=k, replace=False))
            if s not in chosen:
                chosen.append(s)
        sets[k] = chosen
    return sets


# ---------------------------------------------------------------------------------------- measuring


def load_run(run_dir: str | Path, device: str = "auto"):
    """(model with trained weights, train split, test split, train config, Dist) of a run folder.

    The model is built as the engine built it; names of `reslab.models.variants` work too."""
    from reslab.models import load_weights
    from reslab.training import distributed
    from reslab.training.loop import build_model, load_data

    run_dir = Path(run_dir)
    cfg = TrainConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    train_data, test_data, _ = load_data(cfg)
    model = build_model(cfg, train_data)
    load_weights(model, run_dir / "model.safetensors")
    d = distributed.setup(device)
    return model.to(d.device).eval(), train_data, test_data, cfg, d


def measure(run_dir: str | Path, cfg: LesionConfig) -> dict:
    """Test error of the intact net, with each single block deleted, and with random sets of k."""
    from reslab.data import Loader
    from reslab.training.evaluation import evaluate

    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    model, train_data, test_data, tcfg, d = load_run(run_dir, cfg.device)
    if not hasattr(model, "residual_blocks"):
        raise ValueError(
            f"{run_dir}: model {tcfg.model} has no residual_blocks(); cannot lesion it"
        )
    if cfg.test_subset:
        test_data = test_data.subset(torch.arange(min(cfg.test_subset, len(test_data.labels))))

    def error() -> float:
        r = evaluate(model, test_data, 256, d, mean=train_data.mean, std=train_data.std)
        return r["error"]

    probe = next(iter(Loader(test_data, 2, train=False, augment=False, device=d.device).epoch(0)))
    shapes = block_shapes(model, probe[0])
    residual = is_residual(model)
    changes = [i != o for i, o in shapes]
    eligible = [i for i, c in enumerate(changes) if residual or not c]
    intact = error()
    single = []
    for i, change in enumerate(changes):
        e = None
        if i in eligible:
            with lesioned(model, [i]):
                e = error()
        single.append({"block": i, "changes_shape": change, "error": e})
    ks = cfg.ks or tuple(range(1, len(eligible) + 1))
    multi = []
    for k, sets in random_sets(eligible, ks, cfg.samples, seed=0).items():
        errors = []
        for s in sets:
            with lesioned(model, s):
                errors.append(error())
        multi.append({"k": k, "errors": errors, "sets": sets})
    summary_path = Path(run_dir) / "summary.json"
    trained = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    return {
        "run_dir": str(run_dir),
        "model": tcfg.model,
        "arch": "residual" if residual else "plain",
        "seed": tcfg.seed,
        "data": tcfg.data,
        "num_classes": len(test_data.classes),
        "test_images": len(test_data.labels),
        "blocks": len(changes),
        "intact_error": intact,
        "trained_test_error": trained.get("final_test_error"),
        "single": single,
        "multi": multi,
    }


# ---------------------------------------------------------------------------------------- the study


def run(cfg: LesionConfig) -> dict:
    """Train the pair(s) if no run folders were given, lesion every net, write the report."""
    from reslab.report.lesion import build_report, format_table

    study_dir = Path(cfg.out) / cfg.name
    record = {"study": "lesion", **dataclasses.asdict(cfg)}
    if not cfg.runs:
        record["recipe"] = _recipe(cfg, study_dir)
    claim_study_dir(study_dir, record, ("runs", "data", "residual", "plain", "width", "recipe"))
    t0 = time.perf_counter()
    if cfg.runs:
        run_dirs = [Path(r) for r in cfg.runs]
    else:
        configs = [
            cfg.run_config(a, s, study_dir) for s in cfg.seeds for a in ("plain", "residual")
        ]
        jobs = cfg.jobs or default_jobs("mlp" in cfg.residual)
        print(
            f"lesion: training {len(configs)} runs ({cfg.plain}, {cfg.residual} x seeds "
            f"{list(cfg.seeds)}) on {cfg.data}, {jobs} at a time -> {study_dir}",
            flush=True,
        )
        train_many(configs, jobs, on_done=_report_run)
        run_dirs = [Path(c.out) / c.run_name for c in configs]
    nets = []
    for run_dir in run_dirs:
        t = time.perf_counter()
        n = measure(run_dir, cfg)
        if run_dir.resolve().is_relative_to(study_dir.resolve()):  # the pair trained here
            n["run_dir"] = run_dir.resolve().relative_to(study_dir.resolve()).as_posix()
        nets.append(n)
        print(
            f"  lesioned {n['model']:<14} s{n['seed']}: intact {n['intact_error']:.2%}, "
            f"{sum(s['error'] is not None for s in n['single'])} single deletions, "
            f"{sum(len(m['errors']) for m in n['multi'])} multi [{time.perf_counter() - t:.0f} s]",
            flush=True,
        )
    write_json(study_dir / "lesions.json", {"nets": nets})
    report = build_report(study_dir)
    summary = json.loads((study_dir / "summary.json").read_text())
    print(format_table(summary))
    print(f"report: {report}  ({time.perf_counter() - t0:.0f} s)")
    return summary


def _recipe(cfg: LesionConfig, study_dir: Path) -> dict:
    recipe = cfg.run_config("residual", cfg.seeds[0], study_dir).to_dict()
    for k in ("model", "model_kwargs", "seed", "name", "out", "resume", "progress"):
        recipe.pop(k, None)
    return recipe


def _report_run(s: dict, elapsed: float) -> None:
    print(
        f"  {s['name']:<14} train error {s['final_train_error']:7.2%}  test error "
        f"{s['final_test_error']:7.2%}  [{elapsed:4.0f} s]",
        flush=True,
    )


HELP = "delete blocks of trained plain and residual nets at test time (Veit et al. 2016)"


add_arguments, main = study_cli(
    LesionConfig,
    PRESETS,
    make_config,
    run,
    preset_help="cpu: CIFAR-10 ResNet-20 and plain-20, about 30 min on 2 cores with native bf16 (about "
    "4x longer without, `reslab info`); paper: ResNet-110 vs plain-20, for a GPU",
)
