"""The degradation study (He et al. 2015, Figures 1 and 6): plain and residual twins across depths.

`plain` and `residual` are the like-for-like pair the verdict rests on (the same layers, the same He
initialisation, recipe and seeds, as the paper compared them); `zeroinit` is the residual net with
each branch's last BN weight at zero (Goyal et al. 2017), an initialisation a plain net cannot have,
trained as an extra arm that the report draws and tables but does not judge. Each (depth, arm,
seed) is one ordinary run folder; `report.py` turns the folders into summary.json (with the verdict
of `rule.py`), curves.png, depth.png and report.html.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from reslab.studies import base
from reslab.studies.base import FAMILIES, option
from reslab.training import runs
from reslab.training.config import TrainConfig

ARMS = ("plain", "residual", "zeroinit")
JUDGED = ("plain", "residual")  # the like-for-like pair the verdict rests on
FIT = 0.01  # the digits preset's fit gate: its shallowest nets must reach <= 1% training error


@dataclass(frozen=True)
class DegradationConfig(base.StudyConfig):
    """What to train: a grid of depths x architectures x seeds, all with one recipe."""

    family: str = option("mlp", f"model family: {', '.join(FAMILIES)}")
    depths: tuple[int, ...] = option((4, 8, 16, 32, 64), "depths (weight layers)")
    archs: tuple[str, ...] = option(
        JUDGED,
        "arms: plain, residual (both at He init: the judged pair), zeroinit (residual "
        "with zero-init branches: an extra arm, not judged)",
    )
    seeds: tuple[int, ...] = option((0, 1, 2), "seeds; each cell is trained once per seed")
    iters: int = option(0, "iterations per run (0: the preset's)")
    fit_gate: float = option(
        0.0,
        "no verdict unless the shallowest nets of both judged arms end at most this "
        "mean training error (0: no gate; the digits preset declares 0.01)",
    )
    width: int = option(0, "MLP width (0: the preset's)")
    residual_args: dict = option(
        {}, "model overrides for the residual and zeroinit nets only, KEY=VALUE", cli="residual_arg"
    )
    jobs: int = option(0, "runs trained at once (0: one per 2 cores for small nets)")
    out: str = option("runs/degradation", "root of study folders")

    def __post_init__(self) -> None:
        if not 0 <= self.fit_gate < 1:
            raise ValueError(f"fit_gate must be in [0, 1), got {self.fit_gate}")
        base.check_family(self.family)
        base.check_among("archs", self.archs, ARMS)
        base.check_grid(self)
        if "zero_init_residual" in self.residual_args:
            raise ValueError(
                "residual_args may not set zero_init_residual: train the zeroinit arm "
                "(--archs plain residual zeroinit) so the report labels it"
            )
        base.check_models((self.model_name(a, d), {}) for d in self.depths for a in self.archs)

    def model_name(self, arch: str, depth: int) -> str:
        return base.model_name(self.family, "plain" if arch == "plain" else "residual", depth)

    def cells(self) -> list[tuple[str, int, int]]:
        """(arch, depth, seed) of every run, shallowest depth first."""
        return [(a, d, s) for d in self.depths for a in self.archs for s in self.seeds]

    def run_config(self, arch: str, depth: int, seed: int) -> TrainConfig:
        kwargs = {"width": self.width} if self.width else {}
        if arch != "plain":
            kwargs.update(self.residual_args)
        if arch == "zeroinit":
            kwargs["zero_init_residual"] = True
        name = runs.cell_name(arch, depth, seed=seed)
        return base.run_config(self, name, self.model_name(arch, depth), seed, model_kwargs=kwargs)


# Built-in grids (the fields' defaults are the digits preset's). digits: fully connected nets of
# width 64 with batch norm on He et al. 2015 §4.2's CIFAR recipe scaled to the digits (the engine's
# `paper-digits` preset: 180 epochs, lr 0.1 after a 5% warm-up at 0.01, / 10 at 50% and 75%, weight
# decay 1e-4), fixed before any deep net was trained on it. Every evaluation also scores the whole
# training set, for the convergence gate. The zeroinit arm is left out of the default to keep it
# within five minutes on a 2-core CPU: it is not judged, and it costs as much as a judged arm.
PRESETS: dict[str, dict[str, Any]] = {
    "digits": dict(width=64, fit_gate=FIT, train=dict(preset="paper-digits", eval_train=True)),
    # CIFAR-10 on a 2-core CPU in about 30 minutes with native bf16 (about 4x longer in fp32 on an
    # AVX2 CPU): 2.5 epochs of the one-cycle schedule, against the paper's 64k iterations (182
    # epochs), so it shows early training, not the converged Figure 6; the report says so.
    "cpu": dict(
        data="cifar10",
        family="cifar",
        depths=(20, 56),
        seeds=(0, 1),
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


STUDY = base.Study(
    name="degradation",
    help="train plain and residual twins across depths (He et al. 2015, Fig. 6)",
    config=DegradationConfig,
    presets=PRESETS,
    toy=dict(depths=(2, 6), seeds=(0,), width=16, iters=30, jobs=1, train=dict(eval_every=15)),
    must_match=("data", "family", "width", "residual_args", "recipe"),
    grows=dict(depths=None, seeds=None, archs=ARMS),  # a rerun may add depths, seeds and arms
    preset_help="cpu: CIFAR-10 on a 2-core CPU, 2.5 epochs (early training, not the converged "
    "Fig. 6), about 30 min where it computes bf16 natively and about 2 h where it does not "
    "(`reslab info`); paper: the paper's grid and recipe (Fig. 6), for a GPU",
)
make_config, run = STUDY.make_config, STUDY.run  # as `reslab degradation` does
