"""The depth study (issues 6 and 13, "extreme depth without normalisation"): the training loss after
one fixed budget of iterations against depth, from 10 to 10,000 layers.

The arms (`ARM_MODELS`, in words `LABELS`): plain and residual, both with batch norm at He init, are
the like-for-like pair; zeroinit zeroes each branch's last BN weight (Goyal et al. 2017), an init
the plain net cannot have, so it is shown, never judged; nonorm, the residual net without norm or
branch scaling, is the negative control, the norm-free net less the method. The methods: ReZero,
x + alpha * F(x) with alpha = 0 (Bachlechner et al. 2020); Fixup's scalar biases, multiplier and
rescaled init (Zhang et al. 2019, §3), its scalars trained at lr/10 as the official code does
(hongyi-zhang/Fixup, cifar_train.py: every parameter whose name holds "bias" or "scale", the
classifier's bias included; `ARM_TRAIN`); SkipInit (De & Smith 2020), which without norms is the
same network as ReZero and so is not in the default arms. The recipe clips no gradient, as neither
the ReZero nor the Fixup paper does; an arm name with "+clip" (`rezero+clip`) is that arm with the
global gradient norm clipped at `clip`, so an arm that trains only with clipping is shown with and
without it, next to the controls (nonorm, plain) given the same help.

Each (arm, depth, seed) cell is one run folder `runs/<arm>-<depth>-s<seed>/`. The loss is logged at
every step, so the first logged loss is the first mini-batch's before any update, the start the
report compares the final loss with; the first step of every cell is also replayed (`measure`) to
tell why a run diverged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reslab.studies import base
from reslab.studies.base import FAMILIES, option
from reslab.training import runs
from reslab.training.config import TrainConfig

# arm -> (plain or residual twin of the family, model options), in display order
ARM_MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "plain": ("plain", {}),
    "residual": ("residual", {}),
    "zeroinit": ("residual", {"zero_init_residual": True}),
    "nonorm": ("residual", {"norm": "none"}),
    "rezero": ("residual", {"norm": "none", "branch_scale": "rezero"}),
    "skipinit": ("residual", {"norm": "none", "branch_scale": "skipinit"}),
    "fixup": ("residual", {"norm": "none", "branch_scale": "fixup"}),
}
ARMS = tuple(ARM_MODELS)
METHODS = ("rezero", "skipinit", "fixup")  # the norm-free methods the verdict judges
CONTROLS = ("nonorm", "plain")  # what must fail where the methods learn
CLIP = "+clip"
LABELS = {  # each arm in words, for the page
    "plain": "plain, batch norm, He init",
    "residual": "residual, batch norm, He init (plain's twin)",
    "zeroinit": "residual, batch norm, zero-init branches (extra arm)",
    "nonorm": "residual, no norm, He init (negative control)",
    "rezero": "ReZero, no norm (x + alpha F(x), alpha = 0)",
    "skipinit": "SkipInit, no norm (the same network as ReZero here)",
    "fixup": "Fixup, no norm (scalar biases, rescaled init)",
}
# arm -> training options of its own (TrainConfig fields), on top of the study's recipe
ARM_TRAIN: dict[str, dict[str, Any]] = {"fixup": {"lr_scales": {"bias": 0.1, "scale": 0.1}}}
# every arm but skipinit; each method and control also with clipping
DEFAULT_ARMS: tuple[str, ...] = ("plain", "plain+clip", "residual", "zeroinit", "nonorm")
DEFAULT_ARMS += ("nonorm+clip", "rezero", "rezero+clip", "fixup", "fixup+clip")
# longest runs first, so the short ones fill the gaps: Fixup's scalar biases are the most ops per
# block; plain and nonorm diverge within steps at depth
_LONGEST_FIRST = ("fixup", "residual", "zeroinit", "rezero", "skipinit", "plain", "nonorm")
FIRST_STEP = "first_step"  # folder of the replayed first steps, one JSON file per run


@dataclass(frozen=True)
class DepthConfig(base.StudyConfig):
    """What to train: a grid of arms x depths x seeds, all with one recipe and one budget."""

    family: str = option("mlp", f"model family: {', '.join(FAMILIES)}")
    arms: tuple[str, ...] = option(
        DEFAULT_ARMS, f"arms to train: {', '.join(ARMS)}, each also as <arm>{CLIP}"
    )
    depths: tuple[int, ...] = option((10, 100, 1000), "depths (weight layers)")
    seeds: tuple[int, ...] = option((0, 1, 2), "seeds; each cell is trained once per seed")
    iters: int = option(0, "iterations per run (0: the preset's)")
    width: int = option(0, "MLP width (0: the preset's)")
    clip: float = option(1.0, f"global gradient-norm clip of the {CLIP} arms")
    model_args: dict = option({}, "model overrides for every arm, KEY=VALUE", cli="model_arg")
    jobs: int = option(0, "runs trained at once (0: one per core for MLPs on a CPU)")
    out: str = option("runs/depth", "root of study folders")

    def __post_init__(self) -> None:
        base.check_family(self.family)
        if not self.arms or any(split_arm(a)[0] not in ARMS for a in self.arms):
            raise ValueError(
                f"arms must be among {', '.join(ARMS)} (each also as <arm>{CLIP}), "
                f"got {list(self.arms)}"
            )
        base.check_grid(self)
        if self.width and self.family != "mlp":
            raise ValueError(
                f"width is an option of the mlp family, not of {self.family!r}; pass --width 0"
            )
        base.check_at_least(self, 0, "iters", "width", "jobs")
        if not self.clip > 0:
            raise ValueError(f"clip must be > 0 (the {CLIP} arms clip at it), got {self.clip}")
        # Every arm at the shallowest depth, then every other depth once (a plain net is its
        # residual twin less the shortcut): a 10,000-layer net takes seconds even on meta tensors.
        shallow, *deeper = sorted(set(self.depths))
        cells = [(a, shallow) for a in self.arms] + [(self.arms[0], d) for d in deeper]
        base.check_models((self.model_name(a, d), self.model_kwargs(a)) for a, d in cells)

    def model_name(self, arm: str, depth: int | str) -> str:
        """The registry name of an arm's net of `depth` layers ("D" gives the pattern)."""
        arch = ARM_MODELS[split_arm(arm)[0]][0]
        return base.model_name(self.family, arch, depth)  # type: ignore[arg-type]

    def model_kwargs(self, arm: str) -> dict:
        width = {"width": self.width} if self.width else {}
        return {**ARM_MODELS[split_arm(arm)[0]][1], **width, **self.model_args}

    def cells(self) -> list[tuple[str, int, int]]:
        """(arm, depth, seed) of every run: deepest first, at each depth the longest arms first."""
        arms = sorted(self.arms, key=lambda a: (_LONGEST_FIRST.index(split_arm(a)[0]), a))
        depths = sorted(self.depths, reverse=True)
        return [(a, d, s) for d in depths for a in arms for s in self.seeds]

    def run_config(self, arm: str, depth: int, seed: int) -> TrainConfig:
        name, (base_arm, clipped) = runs.cell_name(arm, depth, seed=seed), split_arm(arm)
        options = {**ARM_TRAIN.get(base_arm, {}), **({"grad_clip": self.clip} if clipped else {})}
        model, kwargs = self.model_name(arm, depth), self.model_kwargs(arm)
        return base.run_config(self, name, model, seed, model_kwargs=kwargs, **options)

    def facts(self, configs: Sequence[TrainConfig]) -> dict:
        models = {a: {"model": self.model_name(a, "D"), **self.model_kwargs(a)} for a in self.arms}
        train = {a: ARM_TRAIN[split_arm(a)[0]] for a in self.arms if split_arm(a)[0] in ARM_TRAIN}
        recipe = base.recipe(self.run_config("plain", *self.cells()[0][1:]))
        return {"arm_models": models, "arm_train": train, "recipe": recipe}


# digits: MLPs on the built-in 8x8 digits, 60 steps (about 5 epochs) of the engine's digits recipe
# (lr 0.02, momentum 0.9, batch 128, no weight decay) without clipping; 10 to 1,000 layers fit in 10
# minutes on a 2-core CPU. Evaluating every 30 steps and checkpointing once, at the end, keeps the
# pauses (and the folder: a 10,000-layer net's checkpoint is ~90 MB) small.
_TRAIN = dict(preset="digits", log_every=1, eval_every=30, checkpoint_every=60)
_DIGITS = dict(data="digits", family="mlp", seeds=(0, 1, 2), width=32, iters=60, train=_TRAIN)
PRESETS: dict[str, dict[str, Any]] = {
    "digits": dict(_DIGITS, depths=(10, 100, 1000)),
    "digits-10k": dict(_DIGITS, depths=(10, 100, 1000, 10000)),
}


def split_arm(arm: str) -> tuple[str, bool]:
    base = arm.removesuffix(CLIP)
    return base, base != arm


def arm_order(arm: str) -> tuple[int, bool]:
    """Sort key: the order of ARMS (an unknown arm last), each +clip arm right after its arm."""
    base, clipped = split_arm(arm)
    return ARMS.index(base) if base in ARMS else len(ARMS), clipped


def label(arm: str, grad_clip: float, lr_scales: dict) -> str:
    text = LABELS[split_arm(arm)[0]]
    if lr_scales:
        scales = ", ".join(f'"{k}" {v:g} x lr' for k, v in lr_scales.items())
        text += f"; parameters whose name holds {scales}"
    return text + (f" + gradient norm clipped at {grad_clip:g}" if grad_clip else "")


def first_step_path(study_dir: str | Path, run_name: str) -> Path:
    return Path(study_dir) / FIRST_STEP / f"{run_name}.json"


STUDY = base.Study(
    name="depth",
    help="final training loss against depth, 10 to 1,000 layers (10,000 with --preset digits-10k): "
    "plain, batch-norm and norm-free residual nets, with a norm-free negative control",
    config=DepthConfig,
    presets=PRESETS,
    toy=dict(
        arms=("plain", "zeroinit", "nonorm", "rezero", "rezero+clip"),  # every kind, fewer runs
        depths=(4, 6),
        seeds=(0,),
        iters=12,
        width=8,
        jobs=1,
        train=dict(eval_every=6, num_threads=1),
    ),
    owns=("lr_scales",),  # set per arm (ARM_TRAIN)
    must_match=("data", "family", "width", "clip", "model_args", "recipe"),
    grows=dict(depths=None, seeds=None, arms=arm_order, arm_models=None, arm_train=None),
    measures=True,  # each run's first step, replayed
    preset_help="digits-10k: the same up to 10,000 layers, about 30 core-minutes per seed (45 "
    "minutes or more on 2 cores)",
)
make_config, run = STUDY.make_config, STUDY.run  # as `reslab depth` does
