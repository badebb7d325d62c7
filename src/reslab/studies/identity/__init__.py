"""The identity study: "a block can learn the identity by setting its weights to zero".

He et al. 2015 (§3.1): "if identity mappings are optimal, the solvers may simply drive the weights of
the multiple nonlinear layers toward zero to approach identity mappings"; a residual block computes
a[l+2] = g(z[l+2] + a[l]), so with z[l+2] = 0 it gives g(a[l]) = a[l] for the non-negative a[l] that a
ReLU g leaves behind (and a[l] itself for pre-activation blocks, which have no g after the addition).

One measurement, whether residual stacks of fully connected blocks learn the identity more easily
than plain ones (check 2), and two checks of construction, which test the code, not a claim about
learning: zeroed branches are exact identities (check 1), appended zero-init blocks keep every logit
of a trained net (check 3). `measure.py` runs them into `results/{structure,fit,append}.json`,
`rule.py` judges them. The measurement compares like with like (the same initial weights, data,
batches and optimiser) without weight decay: decoupled decay pulls a residual branch toward zero,
i.e. the block toward the identity, but a plain layer toward outputting nothing, so it would favour
the residual arm before anything is learned (`fit_weight_decay` > 0 adds both arms with it, apart).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from reslab.studies import base
from reslab.studies.base import option
from reslab.training import runs
from reslab.training.config import TrainConfig

RESULTS = "results"  # <study>/results/<part>.json
# family -> (stages of blocks, overrides every model of it gets)
FAMILY_SHAPE: dict[str, tuple[int, dict]] = {
    "mlp": (1, {}),
    "cifar": (3, {}),
    "preact": (3, {"block": "basic"}),
}
METHODS = {  # how a branch is zeroed -> the model overrides it needs
    "norm": {},
    "weights": {"norm": "none"},
    "rezero": {"branch_scale": "rezero"},
    "skipinit": {"branch_scale": "skipinit"},
}
VARIANTS = {  # the blocks appended in check 3 -> (arch, overrides)
    "residual, zero-init": ("residual", {"zero_init_residual": True}),
    "plain, default init": ("plain", {}),
    "residual, default init": ("residual", {}),
}
ZERO_INIT, PLAIN, RESIDUAL = VARIANTS


@dataclass(frozen=True)
class IdentityConfig(base.StudyConfig):
    """The options of check 1 (zeroing), check 2 (`fit_*`) and check 3 (`base_*`, `append`)."""

    family: str = option("mlp", f"model family: {', '.join(FAMILY_SHAPE)}")
    seed: int = option(0, "seed of weights, data and batches")
    width: int = option(0, "MLP width (0: the model's default; ignored by conv nets)")
    check_depth: int = option(16, "depth of the nets zeroed in check 1")
    methods: tuple[str, ...] = option(tuple(METHODS), f"branch zeroing: {', '.join(METHODS)}")
    fit_depths: tuple[int, ...] = option((4, 16, 64), "check 2: weight layers per stack (even)")
    fit_width: int = option(64, "check 2: width of the stacks")
    fit_samples: int = option(1024, "check 2: random training vectors")
    fit_steps: int = option(1000, "check 2: Adam steps")
    fit_batch: int = option(128, "check 2: batch size")
    fit_lr: float = option(0.01, "check 2: peak learning rate (cosine)")
    fit_weight_decay: float = option(
        0.0,
        "check 2: > 0 adds plain and residual arms with this decoupled (AdamW) weight "
        "decay, shown apart: it pulls a residual block toward the identity, a plain one to zero",
    )
    base_depth: int = option(4, "check 3: depth of the trained net")
    base_iters: int = option(300, "check 3: its training iterations")
    append: tuple[int, ...] = option(
        (1, 4, 16), "check 3: blocks appended (per stage for conv nets)"
    )
    out: str = option("runs/identity", "root of study folders")

    def __post_init__(self) -> None:
        base.check_family(self.family, FAMILY_SHAPE)
        base.check_among("methods", self.methods, METHODS)
        if not self.fit_depths or any(d < 2 or d % 2 for d in self.fit_depths):
            raise ValueError(f"fit_depths must be even and >= 2, got {list(self.fit_depths)}")
        if not self.append or any(k < 1 for k in self.append):
            raise ValueError(f"append must be block counts >= 1, got {list(self.append)}")
        base.check_at_least(
            self, 1, "fit_width", "fit_samples", "fit_steps", "fit_batch", "base_iters"
        )
        if not self.fit_weight_decay >= 0:
            raise ValueError(f"fit_weight_decay must be >= 0, got {self.fit_weight_decay}")
        if self.fit_batch > self.fit_samples:
            raise ValueError(f"fit_batch ({self.fit_batch}) must be <= fit_samples")
        # fail before any work if a depth is invalid for the family
        base.check_models(
            (base.model_name(self.family, "residual", d), self.model_kwargs())
            for d in (self.check_depth, self.base_depth)
        )

    def model_kwargs(self) -> dict:
        """The overrides every net of the study's family gets, and its width."""
        width = {"width": self.width} if self.width and self.family == "mlp" else {}
        return FAMILY_SHAPE[self.family][1] | width

    def cells(self) -> list[tuple]:
        return [()]  # one engine run: the net check 3 appends to, trained `base_iters` iterations

    def run_config(self) -> TrainConfig:
        return base.run_config(
            self,
            runs.cell_name("base", self.base_depth, seed=self.seed),
            base.model_name(self.family, "residual", self.base_depth),
            self.seed,
            model_kwargs=self.model_kwargs(),
            iters=self.base_iters,
        )


# digits: TrainConfig's digits recipe, its `epochs` set back to the default (a run of `base_iters`
# steps does not use it), so the run config is that of earlier versions.
PRESETS: dict[str, dict[str, Any]] = {
    "digits": dict(train=dict(preset="digits", epochs=1.0, log_every=20)),
    "cpu": dict(  # CIFAR-10 on a 2-core CPU: a ResNet-20 trained 2 epochs (about 5-10 minutes)
        data="cifar10",
        family="cifar",
        check_depth=20,
        base_depth=20,
        base_iters=780,
        append=(1, 3, 9),
        train=dict(preset="cpu", log_every=20),
    ),
    "paper": dict(  # CIFAR-10, the paper's recipe for ResNet-20, for a GPU
        data="cifar10",
        family="cifar",
        check_depth=56,
        base_depth=20,
        base_iters=64000,
        append=(1, 3, 9, 18),
        fit_depths=(4, 16, 64, 128),
        fit_steps=5000,
        train=dict(preset="paper", log_every=100, eval_every=2000),
    ),
}
STUDY = base.Study(
    name="identity",
    help="does a residual block learn the identity more easily than a plain one? (He et al. 2015)",
    config=IdentityConfig,
    presets=PRESETS,
    toy=dict(
        check_depth=6,
        fit_depths=(2, 4),
        fit_steps=30,
        fit_width=8,
        fit_samples=64,
        fit_batch=32,
        base_iters=20,
        append=(1, 2),
        train=dict(num_threads=1, eval_every=20),
    ),
    preset_help="cpu: CIFAR-10 on a 2-core CPU; paper: CIFAR-10 with the paper's recipe, for a GPU",
    # the trained net of check 3 is reused by a rerun: what it is and how it was trained must match
    must_match=("data", "family", "seed", "width", "base_depth", "base_iters", "recipe"),
    measures=True,  # checks 1 and 2, and check 3 on the trained net
)
make_config, run = STUDY.make_config, STUDY.run  # as `reslab identity` does
