"""The gradients study: vanishing/exploding and shattered gradients in plain vs residual twins.

For each depth and seed, a plain net and its residual twin (same class, seed, recipe and builder,
shortcut off in the plain one; the same initial weights where the shortcuts hold none) are measured
on real data (`measure.py`), at initialisation and after `iters` SGD steps of the engine (an ordinary
run folder per net under `runs/`). Every net is measured once per seed, so the verdicts hold against
the spread over seeds, not one draw.

1. Gradient norms per layer and per block input. He et al. 2015 (§1) name vanishing/exploding
   gradients as the obstacle normalisation largely solved; here one sees how far the gradient norm
   still drifts from the last layer to the first with and without shortcuts (with batch norm, a deep
   plain net's gradient explodes toward the input at initialisation: Yang et al. 2019, "A Mean Field
   Theory of Batch Normalization", ICLR).
2. Shattered gradients (Balduzzi et al. 2017, "The Shattered Gradients Problem: If resnets are the
   answer, then what is the question?", ICML, §2, Figs. 1-2). The paper feeds a 1-D input on a grid of
   256 points through a rectifier net and looks at the gradient of the output with respect to the input
   along the grid: for a shallow net it is a smooth, brown-noise-like sequence; with depth the
   feedforward net's gradient turns into white noise, while a resnet's keeps its structure (its
   abstract: the correlation between gradients decays exponentially with depth in feedforward nets and
   sublinearly in resnets). Fig. 2 compares the sequences by their autocorrelation function; here the
   1-D input is a line between two real test images.
3. Two claims about degradation, He et al. 2015's and the study note's, judged by the same numbers
   (`claims.py`).

`rule.py` judges the verdict and `report.py` writes summary.json, the figures and report.html from
the measurement records and the run folders.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from reslab.studies import base
from reslab.studies.base import ARCHS, FAMILIES, option
from reslab.training import runs
from reslab.training.config import TrainConfig

MEASUREMENTS = "measurements"  # <study>/measurements/<arch>-<depth>-s<seed>.json, one per net
PHASES = {"init": "at init", "trained": "after training"}  # the two measurements, as the text says


@dataclass(frozen=True)
class GradientsConfig(base.StudyConfig):
    """Which twins to measure, on what data, and how long to train them between the two measurements."""

    family: str = option("mlp", f"model family: {', '.join(FAMILIES)}")
    depths: tuple[int, ...] = option((8, 32, 128), "depths (weight layers)")
    archs: tuple[str, ...] = option(ARCHS, "plain and/or residual")
    seeds: tuple[int, ...] = option(
        (0, 1, 2), "seeds (initial weights, data order, measured inputs): one net each"
    )
    iters: int = option(100, "SGD steps between the two measurements (0: init only)")
    width: int = option(0, "MLP width (0: the model's default; ignored by conv nets)")
    model_args: dict = option({}, "model overrides for both archs, KEY=VALUE", cli="model_arg")
    residual_args: dict = option(
        {},
        "model overrides for the residual nets only (the report labels that arm with them)",
        cli="residual_arg",
    )
    batches: int = option(4, "training batches the gradient norms average")
    lines: int = option(8, "lines between test images (shattering)")
    points: int = option(256, "inputs on each line")
    max_lag: int = option(32, "largest lag of the autocorrelation")
    jobs: int = option(0, "runs trained at once (0: one per core for MLPs)")
    out: str = option("runs/gradients", "root of study folders")

    def __post_init__(self) -> None:
        base.check_family(self.family)
        base.check_among("archs", self.archs, ARCHS)
        base.check_grid(self)
        base.check_at_least(self, 0, "iters", "width")
        base.check_at_least(self, 1, "batches", "lines", "max_lag")
        if self.points < self.max_lag + 2:
            raise ValueError(f"points must be >= max_lag + 2, got {self.points} and {self.max_lag}")
        base.check_models(
            (base.model_name(self.family, a, d), self.model_kwargs(a))
            for d in self.depths
            for a in self.archs
        )

    def model_kwargs(self, arch: str) -> dict:
        mlp = self.width and self.family == "mlp"  # conv families have no width option
        kwargs = dict(self.model_args, **({"width": self.width} if mlp else {}))
        return dict(kwargs, **self.residual_args) if arch == "residual" else kwargs

    def cells(self) -> list[tuple[str, int, int]]:
        """(arch, depth, seed) of every net, by seed, then shallowest depth first."""
        return [(a, d, s) for s in self.seeds for d in self.depths for a in self.archs]

    @property
    def trains(self) -> bool:
        return self.iters > 0  # 0: measured at initialisation only

    def run_config(self, arch: str, depth: int, seed: int) -> TrainConfig:
        """The ordinary training config of one net (its first `iters` steps)."""
        name = runs.cell_name(arch, depth, seed=seed)
        model, kwargs = base.model_name(self.family, arch, depth), self.model_kwargs(arch)
        return base.run_config(self, name, model, seed, model_kwargs=kwargs, iters=self.iters)


# Built-in settings. digits: fully connected nets of width 64 with batch norm, 8 to 128 weight layers,
# three seeds, trained with the engine's paper-digits recipe (He et al. 2015 §4.2 scaled to the
# digits: 1,980 iterations, lr 0.1 after a warm-up, / 10 at 50% and 75%, weight decay 1e-4), so
# "after training" is after a converged schedule, as the claims about degradation are about trained
# nets. The residual nets keep the default init, so at initialisation each plain net and its twin
# hold exactly the same weights (MLPs and option-A conv nets, which have no projection weights;
# projections draw from the RNG first).
CIFAR = dict(data="cifar10", family="cifar", depths=(20, 56, 110))  # the paper's CIFAR-10 depths
PRESETS: dict[str, dict[str, Any]] = {
    "digits": dict(data="digits", family="mlp", depths=(8, 32, 128), width=64, iters=1980)
    | dict(train=dict(preset="paper-digits")),
    # CIFAR-10 on a 2-core CPU: 50 steps per net, tens of minutes per seed
    "cpu": CIFAR
    | dict(iters=50, batches=2, lines=4, points=128)
    | dict(train=dict(preset="cpu", schedule="constant", log_every=10)),
    # CIFAR-10 with the paper's recipe (warm-up for 110+ layers), for a GPU
    "paper": CIFAR
    | dict(iters=500, batches=8, lines=16)
    | dict(train=dict(preset="paper", schedule="constant", log_every=50)),
}
STUDY = base.Study(
    name="gradients",
    help="gradient norms per layer and shattered gradients, plain vs residual (Balduzzi et al. 2017)",
    config=GradientsConfig,
    presets=PRESETS,
    # two seeds, so the toy goes through the spread over seeds
    toy=dict(depths=(2, 4), seeds=(0, 1), iters=5, width=8, batches=1, lines=2, points=12)
    | dict(max_lag=4, jobs=1, train=dict(num_threads=1, eval_every=5)),
    preset_help="cpu: CIFAR-10 on a 2-core CPU; paper: CIFAR-10 with the paper's recipe, for a GPU",
    # a rerun may add depths, archs or seeds, not change what a measurement means
    must_match=("data", "family", "iters", "width", "model_args", "residual_args", "recipe")
    + ("batches", "lines", "points", "max_lag"),
    grows=dict(depths=None, archs=ARCHS, seeds=None),
    measures=True,
)
make_config, run = STUDY.make_config, STUDY.run  # as `reslab gradients` does
