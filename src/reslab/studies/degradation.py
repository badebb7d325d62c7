"""The degradation study (He et al. 2015, Figures 1 and 6): plain and residual twins across depths.

For each depth, architecture and seed it trains one ordinary run folder with the same recipe, then
the report module turns the folders into `summary.json` (with a verdict computed from the numbers),
`curves.png`, `depth.png` and `report.html`. Rerunning the same command skips finished runs and
resumes an interrupted one from its last checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from reslab.studies.common import claim_study_dir, default_jobs, study_cli, train_many
from reslab.training.config import TrainConfig, resolve

FAMILIES = {  # family -> (plain model name pattern, residual model name pattern)
    "mlp": ("plainmlp-{}", "resmlp-{}"),
    "cifar": ("plain-{}", "resnet-{}"),
    "preact": ("preact_plain-{}", "preact_resnet-{}"),
}
ARCHS = ("plain", "residual")


@dataclass(frozen=True)
class DegradationConfig:
    """What to train: a grid of depths x architectures x seeds, all with one recipe."""

    preset: str = field(default="digits", metadata={"help": "digits, cpu or paper"})
    data: str = field(default="digits", metadata={"help": "dataset (digits is built in)"})
    data_dir: str | None = field(default=None, metadata={"help": "data root"})
    family: str = field(default="mlp", metadata={"help": f"model family: {', '.join(FAMILIES)}"})
    depths: tuple[int, ...] = field(
        default=(4, 8, 16, 32, 64), metadata={"help": "depths (weight layers)"}
    )
    archs: tuple[str, ...] = field(default=ARCHS, metadata={"help": "plain and/or residual"})
    seeds: tuple[int, ...] = field(
        default=(0, 1, 2), metadata={"help": "seeds; each cell is trained once per seed"}
    )
    iters: int = field(default=0, metadata={"help": "iterations per run (0: the preset's)"})
    width: int = field(default=0, metadata={"help": "MLP width (0: the preset's)"})
    residual_args: dict = field(
        default_factory=dict,
        metadata={
            "help": "model overrides for the residual nets only, KEY=VALUE",
            "cli": "residual_arg",
        },
    )
    jobs: int = field(
        default=0, metadata={"help": "runs trained at once (0: one per 2 cores for small nets)"}
    )
    out: str = field(default="runs/degradation", metadata={"help": "root of study folders"})
    name: str = field(
        default="", metadata={"help": "study folder name (default: the preset's name)"}
    )
    train: dict = field(
        default_factory=dict, metadata={"help": "TrainConfig overrides for every run"}
    )

    # TrainConfig fields the study sets itself, per run.
    OWNED = (
        "model",
        "model_kwargs",
        "data",
        "data_dir",
        "iters",
        "seed",
        "name",
        "out",
        "resume",
        "progress",
    )

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {', '.join(FAMILIES)}, got {self.family!r}")
        bad = [a for a in self.archs if a not in ARCHS]
        if bad or not self.archs:
            raise ValueError(f"archs must be plain and/or residual, got {list(self.archs)}")
        if not self.depths or not self.seeds:
            raise ValueError("give at least one depth and one seed")
        for depth in self.depths:  # fail before any training if a name is invalid
            for arch in self.archs:
                _check_model_name(self.model_name(arch, depth))

    def model_name(self, arch: str, depth: int) -> str:
        return FAMILIES[self.family][ARCHS.index(arch)].format(depth)

    def run_config(self, arch: str, depth: int, seed: int, study_dir: Path) -> TrainConfig:
        """The ordinary training config of one cell of the grid."""
        kwargs = {"width": self.width} if self.width else {}
        if arch == "residual":
            kwargs.update(self.residual_args)
        options = dict(
            self.train,
            model=self.model_name(arch, depth),
            model_kwargs=kwargs,
            data=self.data,
            data_dir=self.data_dir,
            seed=seed,
            name=f"{arch}-{depth}-s{seed}",
            out=str(study_dir / "runs"),
            resume=True,
            progress=False,
        )
        if self.iters:
            options["iters"] = self.iters
        return resolve(
            self.train.get("preset"), **{k: v for k, v in options.items() if k != "preset"}
        )


def _check_model_name(name: str) -> None:
    """Fail before any training when a depth is invalid for the family (the error names valid depths)."""
    from reslab.models import create_model

    with torch.device("meta"):  # no memory, no initialisation cost
        create_model(name, num_classes=10, in_chans=1, img_size=(8, 8))


# Built-in grids. digits: fully connected nets of width 64 with batch norm (the measured setting in
# which a 64-layer plain net fails to train while its residual twin trains); the residual branches'
# last BN starts at zero (zero_init_residual), so every block starts as the identity.
PRESETS: dict[str, dict[str, Any]] = {
    "digits": dict(
        data="digits",
        family="mlp",
        depths=(4, 8, 16, 32, 64),
        seeds=(0, 1, 2),
        width=64,
        residual_args={"zero_init_residual": True},
        train=dict(
            lr=0.02,
            momentum=0.9,
            weight_decay=0.0,
            batch_size=128,
            epochs=60.0,
            schedule="constant",
            augment="off",
            log_every=5,
            eval_every=50,
        ),
    ),
    # CIFAR-10 on a 2-core CPU in about 30 minutes with native bf16 (about 4x longer in fp32 on an
    # AVX2 CPU): 2.5 epochs of the one-cycle schedule. Residual
    # branches start at zero so that the deeper ResNet is not slower off the mark in so short a run.
    "cpu": dict(
        data="cifar10",
        family="cifar",
        depths=(20, 56),
        seeds=(0, 1),
        residual_args={"zero_init_residual": True},
        train=dict(preset="cpu", epochs=2.5, log_every=20, eval_every=244),
    ),
    "paper": dict(
        data="cifar10",
        family="cifar",
        depths=(20, 32, 44, 56, 110),
        seeds=(0,),
        train=dict(preset="paper", log_every=100, eval_every=1000),
    ),
}


def make_config(preset: str = "digits", **options: Any) -> DegradationConfig:
    """defaults < preset < options; `train` overrides are merged, not replaced."""
    if preset not in PRESETS:
        raise ValueError(f"unknown degradation preset {preset!r}; choose from {', '.join(PRESETS)}")
    values = {k: v for k, v in PRESETS[preset].items()}
    values["train"] = dict(values.get("train", {}), **options.pop("train", {}))
    values.update(options)
    values.setdefault("name", "")
    if not values["name"]:
        values["name"] = preset if "data" not in options else f"{preset}-{options['data']}"
    return DegradationConfig(
        preset=preset, **{k: (tuple(v) if isinstance(v, list) else v) for k, v in values.items()}
    )


def run(cfg: DegradationConfig) -> dict:
    """Train every cell of the grid (skipping finished runs), then write summary, figures and report."""
    from reslab.report.degradation import build_report, format_table

    study_dir = Path(cfg.out) / cfg.name
    _claim_study_dir(study_dir, cfg)
    cells = [(a, d, s) for d in cfg.depths for a in cfg.archs for s in cfg.seeds]
    configs = [cfg.run_config(a, d, s, study_dir) for a, d, s in cells]
    jobs = cfg.jobs or default_jobs(cfg.family == "mlp")
    print(
        f"degradation: {len(configs)} runs ({', '.join(cfg.archs)} x depths {list(cfg.depths)} x "
        f"seeds {list(cfg.seeds)}) on {cfg.data}, {jobs} at a time -> {study_dir}",
        flush=True,
    )
    t0 = time.perf_counter()
    if jobs == 1:
        configs = [dataclasses.replace(c, progress=True) for c in configs]
    train_many(configs, jobs, on_done=_report_run)
    report = build_report(study_dir)
    summary = json.loads((study_dir / "summary.json").read_text())
    print(format_table(summary))
    print(f"report: {report}  ({time.perf_counter() - t0:.0f} s)")
    return summary


HELP = "train plain and residual twins across depths (He et al. 2015, Fig. 6)"


add_arguments, main = study_cli(
    DegradationConfig,
    PRESETS,
    make_config,
    run,
    preset_help="cpu: CIFAR-10 on a 2-core CPU, about 30 min where it computes bf16 natively and about "
    "2 h where it does not (`reslab info`); paper: the paper's grid and recipe, for a GPU",
)


def _report_run(s: dict, elapsed: float) -> None:
    print(
        f"  {s['name']:<22} train error {s['final_train_error']:7.2%}  test error "
        f"{s['final_test_error']:7.2%}  [{elapsed:5.0f} s]",
        flush=True,
    )


def _claim_study_dir(study_dir: Path, cfg: DegradationConfig) -> None:
    """study.json: the grid and the resolved recipe; a rerun may add depths, seeds or archs, not change the recipe."""
    recipe = cfg.run_config(cfg.archs[0], cfg.depths[0], cfg.seeds[0], study_dir).to_dict()
    for k in ("model", "model_kwargs", "seed", "name", "out", "resume", "progress"):
        recipe.pop(k, None)
    record = {"study": "degradation", **dataclasses.asdict(cfg), "recipe": recipe}

    def merge(old: dict, new: dict) -> dict:
        return {
            **old,
            **new,
            "depths": sorted(set(old["depths"]) | set(new["depths"])),
            "seeds": sorted(set(old["seeds"]) | set(new["seeds"])),
            "archs": [a for a in ARCHS if a in set(old["archs"]) | set(new["archs"])],
        }

    claim_study_dir(
        study_dir, record, ("data", "family", "width", "residual_args", "recipe"), merge
    )
