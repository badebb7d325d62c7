"""The lesion study (Veit, Wilber and Belongie 2016, "Residual Networks Behave Like Ensembles of
Relatively Shallow Networks", §4.1-4.2): deleting one block of a trained residual net at test time
barely changes its test error, deleting one layer of a plain net destroys it (Fig. 3), and the
residual net's error rises smoothly as more blocks are deleted together (Fig. 5(a)).

The nets come from trained run folders (`--from runs/...`) or, by default, from a plain/residual pair
per seed trained first with the engine. `measure.py` deletes their blocks into `lesions.json`,
`rule.py` judges it, `report.py` writes the summary, figures and page.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reslab.studies import base
from reslab.studies.base import ARCHS, option
from reslab.training import runs
from reslab.training.config import TrainConfig

LESIONS = "lesions.json"  # what the study measured: {"nets": [...], "diverged": [...]}


@dataclass(frozen=True)
class LesionConfig(base.StudyConfig):
    """Which trained nets to lesion (or which pair to train first) and how many deletions to try."""

    runs: tuple[str, ...] = option(
        (),
        "trained run folders to lesion (config.json + model.safetensors); "
        "none: train the plain/residual pair below first",
        cli="from",
    )
    residual: str = option("resmlp-34", "residual net trained here")
    plain: str = option("plainmlp-34", "plain net trained here")
    width: int = option(64, "MLP width (0: the model's default)")
    seeds: tuple[int, ...] = option((0, 1, 2), "one trained pair per seed")
    iters: int = option(0, "training iterations (0: the recipe's)")
    samples: int = option(20, "random sets of k blocks deleted, per k")
    ks: tuple[int, ...] = option((), "numbers of blocks deleted together (none: 1 to all)")
    test_subset: int = option(0, "evaluate on the first N test images (0: all)")
    device: str = option("auto", "cpu, cuda or auto (evaluation)")
    num_threads: int = option(0, "CPU threads per process (0: PyTorch's default)")
    jobs: int = option(0, "runs trained at once (0: auto)")
    out: str = option("runs/lesion", "root of study folders")

    def __post_init__(self) -> None:
        base.check_at_least(self, 1, "samples")
        if any(k < 1 for k in self.ks):
            raise ValueError(f"ks must be numbers of blocks >= 1, got {list(self.ks)}")
        base.check_at_least(self, 0, "test_subset")
        if not self.runs:
            if not self.seeds:
                raise ValueError("give at least one seed, or trained run folders with --from")
            kwargs = {"width": self.width} if self.width else {}
            base.check_models((name, kwargs) for name in (self.residual, self.plain))
        for run in map(Path, self.runs):
            if not (run / runs.CONFIG).is_file():
                raise FileNotFoundError(
                    f"--from {run}: no {runs.CONFIG} (not a training run folder)"
                )
            if not (run / runs.WEIGHTS).is_file() and runs.status(run) != "diverged":
                raise FileNotFoundError(f"--from {run}: no {runs.WEIGHTS} (run not finished)")

    def cells(self) -> list[tuple[str, int]]:
        """(arch, seed) of every net trained here: a plain/residual pair per seed (none: --from)."""
        return [] if self.runs else [(a, s) for s in self.seeds for a in ARCHS]

    def run_config(self, arch: str, seed: int) -> TrainConfig:
        model = getattr(self, arch)  # the `residual` or the `plain` field
        options: dict[str, Any] = {"model_kwargs": {"width": self.width} if self.width else {}}
        if self.num_threads:
            options["num_threads"] = self.num_threads
        return base.run_config(self, runs.cell_name(arch, seed=seed), model, seed, **options)


# digits: fully connected nets of 16 blocks (34 weight layers) with batch norm, trained with the
# engine's paper-digits recipe (He et al. 2015 §4.2 scaled to the digits, as Veit et al. trained
# their nets with He et al.'s recipe); cpu/paper: CIFAR nets with He et al.'s recipes. Veit et al.
# lesion a ResNet-110 and compare it with a plain VGG-15; `paper` pairs ResNet-110 with plain-20, the
# deepest plain CIFAR net that still trains well (He et al. 2015, Fig. 6). Both get He et al.'s
# warm-up (lr 0.01 until the training error is below 80%, at most 2,000 iterations), which the
# engine's paper preset gives nets of 110 layers and more only, so the two arms share one recipe;
# they still differ in depth, and the verdict says so.
CIFAR = dict(data="cifar10", width=0, seeds=(0,))  # CIFAR nets have no width option
PRESETS: dict[str, dict[str, Any]] = {
    # the fields' defaults; tiny matrices: more threads only contend for the cores
    "digits": dict(num_threads=1, train=dict(preset="paper-digits")),
    "cpu": dict(
        CIFAR,
        residual="resnet-20",
        plain="plain-20",
        samples=10,
        test_subset=2000,
        train=dict(preset="cpu", epochs=3.0, log_every=20),
    ),
    "paper": dict(
        CIFAR,
        residual="resnet-110",
        plain="plain-20",
        samples=20,
        ks=tuple(range(1, 21)),
        train=dict(
            preset="paper",
            warmup_iters=2000,
            warmup_lr=0.01,
            warmup_until_error=0.8,
            log_every=100,
            eval_every=1000,
        ),
    ),
}


STUDY = base.Study(
    name="lesion",
    help="delete blocks of trained plain and residual nets at test time (Veit et al. 2016)",
    config=LesionConfig,
    presets=PRESETS,
    toy=dict(residual="resmlp-8", plain="plainmlp-8", width=16, seeds=(0,), iters=40, samples=2)
    | dict(jobs=1, num_threads=1, train=dict(log_every=10, eval_every=20)),
    preset_help="cpu: CIFAR-10 ResNet-20 and plain-20, about 30 min on 2 cores with native bf16 "
    "(about 4x longer without, `reslab info`); paper: ResNet-110 vs plain-20, for a GPU",
    owns=("device", "num_threads"),
    default_name=lambda preset, values: "from-runs" if values.get("runs") else preset,
    must_match=("runs", "data", "residual", "plain", "width", "recipe"),
    measures=True,
)
make_config, run = STUDY.make_config, STUDY.run  # as `reslab lesion` does
