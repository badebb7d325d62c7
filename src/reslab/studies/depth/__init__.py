"""The depth study (issue 6, "extreme depth without normalisation"): the training loss after one fixed
budget of iterations against depth, from 10 to 10,000 layers, for five arms:

- plain:    the plain net with batch norm (the residual net with its shortcuts removed);
- residual: the residual net with batch norm, each branch's last BN weight at zero (Goyal et al. 2017);
- rezero:   norm-free, x + alpha * F(x) with alpha = 0 at init (Bachlechner et al. 2020);
- fixup:    norm-free, Fixup's scalar biases, multiplier and rescaled init (Zhang et al. 2019, §3);
- skipinit: norm-free, the same scalar at the end of the branch (De & Smith 2020): without norms
            it is the same network as ReZero, x + alpha * F(x), so it is not in the default arms.

Each (arm, depth, seed) cell trains one ordinary run folder `runs/<arm>-<depth>-s<seed>/` with the
same recipe; a rerun skips finished runs and resumes interrupted ones, and a diverged run is kept as
it is (the one policy of `reslab.studies.base`). Training loss is logged at every step, so the first
logged loss is the loss of the first mini-batch before any update: the starting value `report.py`
compares the final loss with.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from reslab.studies import base
from reslab.studies.base import FAMILIES
from reslab.studies.depth import report
from reslab.studies.depth.report import ARMS, NORM_FREE
from reslab.training import runs
from reslab.training.config import TrainConfig

# arm -> (plain or residual twin of the family, model options), in the report's order of ARMS. The
# residual arm's branches start at zero (zero_init_residual), measured as needed: with the digits
# recipe below, resmlp-10000 with batch norm and without it starts at loss 55 (5,000 unit-variance
# branches add up) and is still at 50 (chance error) after 40 steps; with it, it starts at 2.4 and
# ends at 0.13 after 80 steps.
ARM_MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "plain": ("plain", {}),
    "residual": ("residual", {"zero_init_residual": True}),
    "rezero": ("residual", {"norm": "none", "branch_scale": "rezero"}),
    "skipinit": ("residual", {"norm": "none", "branch_scale": "skipinit"}),
    "fixup": ("residual", {"norm": "none", "branch_scale": "fixup"}),
}
assert tuple(ARM_MODELS) == ARMS and set(NORM_FREE) <= set(ARMS)
DEFAULT_ARMS = ("plain", "residual", "rezero", "fixup")  # skipinit = rezero without norms
# longest runs first, so the short ones fill the gaps: Fixup's scalar biases are the most ops per
# block; plain diverges within steps
_LONGEST_FIRST = ("fixup", "residual", "rezero", "skipinit", "plain")


@dataclass(frozen=True)
class DepthConfig(base.StudyConfig):
    """What to train: a grid of arms x depths x seeds, all with one recipe and one budget."""

    family: str = field(default="mlp", metadata={"help": f"model family: {', '.join(FAMILIES)}"})
    arms: tuple[str, ...] = field(
        default=DEFAULT_ARMS, metadata={"help": f"arms to train: {', '.join(ARMS)}"}
    )
    depths: tuple[int, ...] = field(
        default=(10, 100, 1000, 10000), metadata={"help": "depths (weight layers)"}
    )
    seeds: tuple[int, ...] = field(
        default=(0,), metadata={"help": "seeds; each cell is trained once per seed"}
    )
    iters: int = field(default=0, metadata={"help": "iterations per run (0: the preset's)"})
    width: int = field(default=0, metadata={"help": "MLP width (0: the preset's)"})
    model_args: dict = field(
        default_factory=dict,
        metadata={"help": "model overrides for every arm, KEY=VALUE", "cli": "model_arg"},
    )
    jobs: int = field(
        default=0, metadata={"help": "runs trained at once (0: one per core for MLPs on a CPU)"}
    )
    out: str = field(default="runs/depth", metadata={"help": "root of study folders"})

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {', '.join(FAMILIES)}, got {self.family!r}")
        bad = [a for a in self.arms if a not in ARMS]
        if bad or not self.arms:
            raise ValueError(f"arms must be among {', '.join(ARMS)}, got {list(self.arms)}")
        if not self.depths or not self.seeds:
            raise ValueError("give at least one depth and one seed")
        if self.width and self.family != "mlp":
            raise ValueError(
                f"width is an option of the mlp family, not of {self.family!r}; pass --width 0"
            )
        if self.iters < 0 or self.width < 0 or self.jobs < 0:
            raise ValueError("iters, width and jobs must be >= 0")
        # Every arm's options at the shallowest depth, then every other depth once (a plain net is its
        # residual twin with the shortcut off, built by the same function with the same depth rule):
        # building a 10,000-layer net takes seconds even on the meta device.
        shallow, *deeper = sorted(set(self.depths))
        first = self.arms[0]
        base.check_models(
            [(self.model_name(a, shallow), self.model_kwargs(a)) for a in self.arms]
            + [(self.model_name(first, d), self.model_kwargs(first)) for d in deeper]
        )

    def model_name(self, arm: str, depth: int | str) -> str:
        """The registry name of an arm's net of `depth` layers ("D" gives the pattern)."""
        return base.model_name(self.family, ARM_MODELS[arm][0], depth)  # type: ignore[arg-type]

    def model_kwargs(self, arm: str) -> dict:
        width = {"width": self.width} if self.width else {}
        return {**ARM_MODELS[arm][1], **width, **self.model_args}

    def cells(self) -> list[tuple[str, int, int]]:
        """(arm, depth, seed) of every run: deepest first, and at each depth the longest arms first."""
        arms = sorted(self.arms, key=_LONGEST_FIRST.index)
        return [
            (a, d, s) for d in sorted(self.depths, reverse=True) for a in arms for s in self.seeds
        ]

    def run_config(self, arm: str, depth: int, seed: int) -> TrainConfig:
        """The ordinary training config of one cell of the grid."""
        name = runs.cell_name(arm, depth, seed=seed)
        model, kwargs = self.model_name(arm, depth), self.model_kwargs(arm)
        return base.run_config(self, name, model, seed, model_kwargs=kwargs)


# digits: fully connected nets of width 32 on the built-in 8x8 digits, 60 steps of SGD each: under
# 10 minutes on a 2-core AMD EPYC (AVX2; the README's CPU B), four arms, two runs at a time. A
# 10,000-layer step is overhead-bound, about 3 s (ReZero) to 5 s (Fixup: its four scalar biases per
# block are many tiny ops) on one of its cores, so the 10,000-layer runs are most of the time. At 60
# steps every norm-free 10,000-layer net is below half its starting loss (Fixup 2.30 -> 0.97, ReZero
# 2.45 -> 0.48 on CPU B); at 100 steps (the default before, 6 min 52 s on the README's CPU A and
# over 15 minutes on an AVX2 CPU) below 0.7. One recipe for every cell: the engine's digits recipe
# plus clipping of the global gradient norm at 1, without which ReZero diverges at 10,000 layers
# even at lr 0.005 (its 5,000 scalars all move the same way at once) and Fixup at lr 0.01 learns for
# 25 steps, then collapses to chance. The loss is logged at every step (the first line is the loss
# before any update); evaluating every 30 steps and checkpointing once, at the end, keeps the pauses
# (and the folder: a 10,000-layer net's checkpoint is ~90 MB) small.
PRESETS: dict[str, dict[str, Any]] = {
    "digits": dict(
        data="digits",
        family="mlp",
        depths=(10, 100, 1000, 10000),
        seeds=(0,),
        width=32,
        iters=60,
        train=dict(preset="digits", grad_clip=1.0, log_every=1, eval_every=30, checkpoint_every=60),
    ),
}


def run(cfg: DepthConfig) -> dict:
    """Train every cell (skipping finished and diverged runs), then write summary, figures and report."""
    folder = base.study_dir(cfg)
    configs = [cfg.run_config(*cell) for cell in cfg.cells()]
    arm_models = {a: {"model": cfg.model_name(a, "D"), **cfg.model_kwargs(a)} for a in cfg.arms}
    record = {"study": "depth", **asdict(cfg), "arm_models": arm_models}
    record["recipe"] = base.recipe(configs[0])
    base.claim(
        folder,
        record,
        ("data", "family", "width", "model_args", "recipe"),
        lambda old, new: {
            **base.union(old, new, depths=None, seeds=None, arms=ARMS),
            "arm_models": {**old.get("arm_models", {}), **new["arm_models"]},
        },
    )
    jobs = cfg.jobs or base.default_jobs(cfg.family == "mlp")
    print(
        f"depth: {len(configs)} runs ({', '.join(cfg.arms)} x depths {list(cfg.depths)} x seeds "
        f"{list(cfg.seeds)}) on {cfg.data}, {jobs} at a time -> {folder}",
        flush=True,
    )
    t0 = time.perf_counter()
    base.train_grid(configs, jobs)
    return base.finish(STUDY, folder, t0)


STUDY = base.Study(
    name="depth",
    help="final training loss against depth, 10 to 10,000 layers: plain, batch-norm and norm-free "
    "residual nets",
    config=DepthConfig,
    presets=PRESETS,
    run=run,
    report=report.build_report,
    table=report.format_table,
    toy=dict(depths=(4, 6), iters=12, width=8, jobs=1, train=dict(eval_every=6, num_threads=1)),
    preset_help="digits: MLPs of width 32 on the built-in digits, about 10 min on a 2-core CPU",
)
make_config = STUDY.make_config  # defaults < preset < options, as `reslab depth` does
