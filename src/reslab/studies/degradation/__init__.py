"""The degradation study (He et al. 2015, Figures 1 and 6): plain and residual twins across depths.

For each depth, architecture and seed it trains one ordinary run folder with the same recipe, then
`report.py` turns the folders into `summary.json` (with a verdict computed from the numbers),
`curves.png`, `depth.png` and `report.html`. Rerunning the same command skips finished runs and
resumes an interrupted one from its last checkpoint.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from reslab.studies import base
from reslab.studies.base import ARCHS, FAMILIES
from reslab.studies.degradation import report
from reslab.training import runs
from reslab.training.config import TrainConfig


@dataclass(frozen=True)
class DegradationConfig(base.StudyConfig):
    """What to train: a grid of depths x architectures x seeds, all with one recipe."""

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

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {', '.join(FAMILIES)}, got {self.family!r}")
        bad = [a for a in self.archs if a not in ARCHS]
        if bad or not self.archs:
            raise ValueError(f"archs must be plain and/or residual, got {list(self.archs)}")
        if not self.depths or not self.seeds:
            raise ValueError("give at least one depth and one seed")
        base.check_models((self.model_name(a, d), {}) for d in self.depths for a in self.archs)

    def model_name(self, arch: str, depth: int) -> str:
        return base.model_name(self.family, arch, depth)

    def cells(self) -> list[tuple[str, int, int]]:
        """(arch, depth, seed) of every run, shallowest depth first."""
        return [(a, d, s) for d in self.depths for a in self.archs for s in self.seeds]

    def run_config(self, arch: str, depth: int, seed: int) -> TrainConfig:
        """The ordinary training config of one cell of the grid."""
        kwargs = {"width": self.width} if self.width else {}
        if arch == "residual":
            kwargs.update(self.residual_args)
        name = runs.cell_name(arch, depth, seed=seed)
        return base.run_config(self, name, self.model_name(arch, depth), seed, model_kwargs=kwargs)


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
        train=dict(preset="digits", epochs=60.0, log_every=5, eval_every=50),
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


def run(cfg: DegradationConfig) -> dict:
    """Train every cell of the grid (skipping finished runs), then write summary, figures and report."""
    folder = base.study_dir(cfg)
    configs = [cfg.run_config(*cell) for cell in cfg.cells()]
    record = {"study": "degradation", **asdict(cfg), "recipe": base.recipe(configs[0])}
    base.claim(
        folder,
        record,
        ("data", "family", "width", "residual_args", "recipe"),
        lambda old, new: base.union(old, new, depths=None, seeds=None, archs=ARCHS),
    )
    jobs = cfg.jobs or base.default_jobs(cfg.family == "mlp")
    print(
        f"degradation: {len(configs)} runs ({', '.join(cfg.archs)} x depths {list(cfg.depths)} x "
        f"seeds {list(cfg.seeds)}) on {cfg.data}, {jobs} at a time -> {folder}",
        flush=True,
    )
    t0 = time.perf_counter()
    base.train_grid(configs, jobs)
    return base.finish(STUDY, folder, t0)


STUDY = base.Study(
    name="degradation",
    help="train plain and residual twins across depths (He et al. 2015, Fig. 6)",
    config=DegradationConfig,
    presets=PRESETS,
    run=run,
    report=report.build_report,
    table=report.format_table,
    toy=dict(depths=(2, 6), seeds=(0,), width=16, iters=30, jobs=1, train=dict(eval_every=15)),
    preset_help="cpu: CIFAR-10 on a 2-core CPU, about 30 min where it computes bf16 natively and "
    "about 2 h where it does not (`reslab info`); paper: the paper's grid and recipe, for a GPU",
)
make_config = STUDY.make_config  # defaults < preset < options, as `reslab degradation` does
