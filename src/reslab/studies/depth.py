"""The depth study (issue 6, "extreme depth without normalisation"): the training loss after one fixed
budget of iterations against depth, from 10 to 10,000 layers, for five arms:

- plain:    the plain net with batch norm (the residual net with its shortcuts removed);
- residual: the residual net with batch norm, each branch's last BN weight at zero (Goyal et al. 2017);
- rezero:   norm-free, x + alpha * F(x) with alpha = 0 at init (Bachlechner et al. 2020);
- fixup:    norm-free, Fixup's scalar biases, multiplier and rescaled init (Zhang et al. 2019, §3);
- skipinit: norm-free, the same scalar at the end of the branch (De & Smith 2020): without norms
            it is the same network as ReZero, x + alpha * F(x), so it is not in the default arms.

Each (arm, depth, seed) cell trains one ordinary run folder `runs/<arm>-<depth>-s<seed>/` with the
same recipe, through the shared `train_many`; a rerun skips finished runs and resumes interrupted
ones. A run that diverges (the engine raises `Diverged` and leaves `summary.json` with status
"diverged") is recorded as such, is not retried (delete its folder to retry it), and the study goes
on. Training loss is logged at every step, so the first logged loss is the loss of the first
mini-batch before any update: the starting value the report compares the final loss with.
`reslab.report.depth` writes summary.json, the figures, report.html and the verdict.
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
from reslab.studies.degradation import ARCHS, FAMILIES
from reslab.training.config import TrainConfig, resolve

# arm -> (plain or residual twin of the family, model options). The residual arm's branches start at
# zero (zero_init_residual), measured as needed: with the digits recipe below, resmlp-10000 with batch
# norm and without it starts at loss 55 (5,000 unit-variance branches add up) and is still at 50 (chance
# error) after 40 steps; with it, it starts at 2.4 and ends at 0.13 after 80 steps.
ARMS: dict[str, tuple[str, dict[str, Any]]] = {
    "plain": ("plain", {}),
    "residual": ("residual", {"zero_init_residual": True}),
    "rezero": ("residual", {"norm": "none", "branch_scale": "rezero"}),
    "skipinit": ("residual", {"norm": "none", "branch_scale": "skipinit"}),
    "fixup": ("residual", {"norm": "none", "branch_scale": "fixup"}),
}
NORM_FREE = ("rezero", "skipinit", "fixup")
DEFAULT_ARMS = ("plain", "residual", "rezero", "fixup")  # skipinit = rezero without norms


@dataclass(frozen=True)
class DepthConfig:
    """What to train: a grid of arms x depths x seeds, all with one recipe and one budget."""

    preset: str = field(default="digits", metadata={"help": "digits"})
    data: str = field(default="digits", metadata={"help": "dataset (digits is built in)"})
    data_dir: str | None = field(default=None, metadata={"help": "data root"})
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
    name: str = field(
        default="", metadata={"help": "study folder name (default: the preset's name)"}
    )
    train: dict = field(
        default_factory=dict, metadata={"help": "TrainConfig overrides for every run"}
    )

    # TrainConfig fields the study sets itself, per run.
    OWNED = ("model", "model_kwargs", "data", "data_dir", "iters", "seed", "name", "out")
    OWNED += ("resume", "progress")

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
        # Fail before any training if a cell cannot be built: every arm's options at the shallowest
        # depth, then every other depth once (a plain net is its residual twin with the shortcut off,
        # built by the same function with the same depth rule). Building a 10,000-layer net takes
        # seconds even on the meta device, so the deep ones are built no more than needed.
        shallow, *deeper = sorted(set(self.depths))
        for arm in self.arms:
            _check_model(self.model_name(arm, shallow), self.model_kwargs(arm))
        for depth in deeper:
            _check_model(self.model_name(self.arms[0], depth), self.model_kwargs(self.arms[0]))

    def model_name(self, arm: str, depth: int | str) -> str:
        """The registry name of an arm's net of `depth` layers ("D" gives the pattern)."""
        return FAMILIES[self.family][ARCHS.index(ARMS[arm][0])].format(depth)

    def model_kwargs(self, arm: str) -> dict:
        width = {"width": self.width} if self.width else {}
        return {**ARMS[arm][1], **width, **self.model_args}

    def run_config(self, arm: str, depth: int, seed: int, study_dir: Path) -> TrainConfig:
        """The ordinary training config of one cell of the grid."""
        options = dict(
            self.train,
            model=self.model_name(arm, depth),
            model_kwargs=self.model_kwargs(arm),
            data=self.data,
            data_dir=self.data_dir,
            seed=seed,
            name=f"{arm}-{depth}-s{seed}",
            out=str(study_dir / "runs"),
            resume=True,
            progress=False,
        )
        if self.iters:
            options["iters"] = self.iters
        preset = options.pop("preset", None)
        return resolve(preset, **options)


def _check_model(name: str, kwargs: dict) -> None:
    """Build the model on the meta device (no memory, no init); the registry's one-line error says
    what is allowed."""
    from reslab.models import create_model

    with torch.device("meta"):
        create_model(name, num_classes=10, in_chans=1, img_size=(8, 8), **kwargs)


# digits: fully connected nets of width 32 on the built-in 8x8 digits, 60 steps of SGD each: under
# 10 minutes on a 2-core AMD EPYC (AVX2; the README's CPU B), four arms, two runs at a time. A
# 10,000-layer step is overhead-bound, about 3 s (ReZero) to 5 s (Fixup: its four scalar biases per
# block are many tiny ops) on one of its cores, so the 10,000-layer runs are most of the time. At 60
# steps every norm-free 10,000-layer net is below half its starting loss (Fixup 2.30 -> 0.97, ReZero
# 2.45 -> 0.48 on CPU B); at 100 steps (the default before, 6 min 52 s on the README's CPU A and
# over 15 minutes on an AVX2 CPU) below 0.7. One recipe for every cell: the engine's digits recipe
# (as the degradation study) plus clipping of the global gradient norm at 1, without which ReZero diverges at 10,000 layers even at
# lr 0.005 (its 5,000 scalars all move the same way at once) and Fixup at lr 0.01 learns for 25
# steps, then collapses to chance. The loss is logged at every step (the first line is the loss
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
        # the engine's digits recipe (SGD, lr 0.02, momentum 0.9, batch 128, constant lr), plus:
        train=dict(preset="digits", grad_clip=1.0, log_every=1, eval_every=30, checkpoint_every=60),
    ),
}


def make_config(preset: str = "digits", **options: Any) -> DepthConfig:
    """defaults < preset < options; `train` overrides are merged, not replaced."""
    if preset not in PRESETS:
        raise ValueError(f"unknown depth preset {preset!r}; choose from {', '.join(PRESETS)}")
    values = dict(PRESETS[preset])
    values["train"] = dict(values.get("train", {}), **options.pop("train", {}))
    values.update(options)
    values["name"] = values.get("name") or (
        preset if "data" not in options else f"{preset}-{options['data']}"
    )
    return DepthConfig(
        preset=preset, **{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    )


def run(cfg: DepthConfig) -> dict:
    """Train every cell (skipping finished and diverged runs), then write summary, figures and report."""
    from reslab.report.depth import build_report, format_table

    study_dir = Path(cfg.out) / cfg.name
    _claim(study_dir, cfg)
    # longest first, so the short runs fill the gaps: deepest first, and at each depth the arms by
    # step time (Fixup's scalar biases are the most ops per block; plain diverges within steps)
    arms = sorted(cfg.arms, key=("fixup", "residual", "rezero", "skipinit", "plain").index)
    cells = [(a, d, s) for d in sorted(cfg.depths, reverse=True) for a in arms for s in cfg.seeds]
    configs = [cfg.run_config(a, d, s, study_dir) for a, d, s in cells]
    jobs = cfg.jobs or default_jobs(cfg.family == "mlp")
    print(
        f"depth: {len(configs)} runs ({', '.join(cfg.arms)} x depths {list(cfg.depths)} x seeds "
        f"{list(cfg.seeds)}) on {cfg.data}, {jobs} at a time -> {study_dir}",
        flush=True,
    )
    t0 = time.perf_counter()
    if jobs == 1:
        configs = [dataclasses.replace(c, progress=True) for c in configs]
    # a diverged run is recorded (the engine writes status "diverged") and not retried
    for c in configs:
        if _summary(c).get("status") == "diverged":
            _report_run(_summary(c), 0.0)
    todo = [c for c in configs if _summary(c).get("status") != "diverged"]
    train_many(todo, jobs, on_done=_report_run, tolerate_divergence=True)
    report = build_report(study_dir)
    summary = json.loads((study_dir / "summary.json").read_text())
    print(format_table(summary))
    print(f"report: {report}  ({time.perf_counter() - t0:.0f} s)")
    return summary


def _summary(c: TrainConfig) -> dict:
    path = Path(c.out) / c.run_name / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _report_run(s: dict, elapsed: float) -> None:
    if s.get("status") == "diverged":
        what = f"diverged at step {s.get('steps')}"
    else:
        what = f"train loss {s['final_train_loss']:9.4f}  train error {s['final_train_error']:7.2%}"
    print(f"  {s['name']:<20} {what}  [{elapsed:5.0f} s]", flush=True)


def _claim(study_dir: Path, cfg: DepthConfig) -> None:
    """study.json: the grid and the resolved recipe; a rerun may add arms, depths or seeds, not change
    the recipe."""
    recipe = cfg.run_config(cfg.arms[0], cfg.depths[0], cfg.seeds[0], study_dir).to_dict()
    for k in ("model", "model_kwargs", "seed", "name", "out", "resume", "progress"):
        recipe.pop(k, None)
    arms = {a: {"model": cfg.model_name(a, "D"), **cfg.model_kwargs(a)} for a in cfg.arms}
    record = {"study": "depth", **dataclasses.asdict(cfg), "arm_models": arms, "recipe": recipe}

    def merge(old: dict, new: dict) -> dict:
        return {
            **old,
            **new,
            "depths": sorted(set(old["depths"]) | set(new["depths"])),
            "seeds": sorted(set(old["seeds"]) | set(new["seeds"])),
            "arms": [a for a in ARMS if a in {*old["arms"], *new["arms"]}],
            "arm_models": {**old.get("arm_models", {}), **new["arm_models"]},
        }

    claim_study_dir(study_dir, record, ("data", "family", "width", "model_args", "recipe"), merge)


HELP = "final training loss against depth, 10 to 10,000 layers: plain, batch-norm and norm-free residual nets"


add_arguments, main = study_cli(
    DepthConfig,
    PRESETS,
    make_config,
    run,
    preset_help="digits: MLPs of width 32 on the built-in digits, about 10 min on a 2-core CPU",
)
