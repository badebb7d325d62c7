"""The loss-landscape study (Li, Xu, Taylor, Studer and Goldstein 2018, "Visualizing the Loss
Landscape of Neural Nets", Figures 5 and 7): why shortcuts work, seen.

Li et al. draw ResNet-56's loss over a plane of two filter-normalised random directions through its
trained weights: smooth and nearly convex; the same net without shortcuts is chaotic, more so the
deeper it is. Here the nets are the main job's plain and residual twins (`reslab degradation`: the
same layers, He initialisation, recipe and seeds), reused from its study folder (`--source`) where
they are finished there and trained here with the same recipe where not.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from reslab.studies import base, records
from reslab.studies.base import ARCHS, option
from reslab.training import runs
from reslab.training.config import TrainConfig

SURFACES = "landscape.json"  # in the study folder: every net's grid and Hessian extremes
TWINS_SHARE = ("data", "data_dir", "train", "depths", "seeds", "iters")  # as the twins' config's
# what a finished run of --source must share (in its config.json) with a cell's to be reused
SAME_RECIPE = ("model", "model_kwargs", "data", "seed", "iters", "lr", "batch_size", "weight_decay")


@dataclass(frozen=True)
class LandscapeConfig(base.StudyConfig):
    """Which twins to draw (the main job's grid) and how finely."""

    depths: tuple[int, ...] = option(
        (4, 8, 16, 32, 64), "depths (weight layers), as the main job's"
    )
    seeds: tuple[int, ...] = option((0, 1, 2), "seeds of the twins")
    width: int = option(0, "MLP width (0: the main job's)")
    iters: int = option(0, "iterations per run (0: the recipe's)")
    source: str = option(
        "runs/degradation/digits",
        "the main job's study folder: its finished runs of the same recipe are reused; the others "
        "are trained here",
    )
    points: int = option(21, "grid points per direction")
    span: float = option(1.0, "the grid covers [-span, span]^2")
    subset: int = option(1000, "training images the loss is evaluated on (fixed)")
    hessian_images: int = option(256, "of those, the images the Hessian's eigenvalues are taken on")
    direction_seed: int = option(0, "seed of the random directions")
    jobs: int = option(0, "runs trained at once (0: one per core)")
    out: str = option("runs/landscape", "root of study folders")

    def __post_init__(self) -> None:
        base.check_grid(self)
        if not 3 <= self.points <= 201 or self.points % 2 == 0:
            raise ValueError(
                f"points must be odd, 3 to 201 (the centre is a point), got {self.points}"
            )
        if not 0 < self.span <= 10:
            raise ValueError(f"span must be in (0, 10], got {self.span}")
        if not 1 <= self.subset <= 1_000_000 or not 1 <= self.hessian_images <= self.subset:
            raise ValueError(
                f"subset must be 1 to 1000000 images and hessian_images 1 to subset, got "
                f"{self.subset} and {self.hessian_images}"
            )
        self.twins()  # checks depths, width and the recipe as the main job would
        # a --source of other data has no twins to reuse: name the preset that draws its nets
        path = Path(self.source) / runs.STUDY
        source = records.read_record(path, "degradation") if path.is_file() else {}
        if source.get("data", self.data) != self.data:
            preset = source.get("preset", "?")
            hint = f"--preset {preset}" if preset in PRESETS else f"--data {source['data']}"
            raise ValueError(
                f"--source {self.source} holds nets trained on {source['data']} (preset {preset}), "
                f"this landscape is of {self.data} nets: pass {hint} with the same --depths and "
                "--seeds to draw them"
            )

    def twins(self):
        """The degradation study's config of the same grid and recipe: the twins' source."""
        from reslab.studies import degradation

        same = {k: getattr(self, k) for k in TWINS_SHARE}
        width = {"width": self.width} if self.width else {}  # 0: the preset's
        return degradation.STUDY.make_config(self.preset, archs=ARCHS, **same, **width)

    def cells(self) -> list[tuple[str, int, int]]:
        return [(a, d, s) for d in self.depths for a in ARCHS for s in self.seeds]

    def run_config(self, arch: str, depth: int, seed: int) -> TrainConfig:
        """The main job's run of this cell: in --source where it finished there, else here."""
        cfg = self.twins().run_config(arch, depth, seed)
        reused = Path(self.source) / runs.RUNS / cfg.run_name
        old, new = runs.read_config(reused), cfg.to_dict()
        same = runs.is_finished(reused) and all(old.get(k) == new[k] for k in SAME_RECIPE)
        return replace(cfg, out=str(reused.parent if same else base.study_dir(self) / runs.RUNS))

    def facts(self, configs) -> dict:
        here = str(base.study_dir(self) / runs.RUNS)
        return {"recipe": base.recipe(configs[0]), "reused": sum(c.out != here for c in configs)}


PRESETS = {
    # the main job's nets (`reslab degradation`'s digits preset), 21 x 21 points over [-1, 1]^2
    "digits": dict(),
    # the conv twins of `reslab degradation --data cifar10 --preset cpu`, 2.5 epochs, on a coarser
    # grid and fewer images: every point is a forward pass of a conv net on the CPU
    "cpu": dict(
        data="cifar10",
        depths=(20, 56),
        seeds=(0, 1),
        source="runs/degradation/cpu",
        points=11,
        subset=500,
        hessian_images=128,
    ),
}

STUDY = base.Study(
    name="landscape",
    help="loss surfaces of plain and residual twins along the same random directions (Li et al. 2018)",
    config=LandscapeConfig,
    presets=PRESETS,
    toy=dict(
        depths=(2, 6),
        seeds=(0,),
        width=16,
        iters=30,
        points=5,
        subset=200,
        hessian_images=64,
        jobs=1,
    ),
    must_match=("width", "recipe", "points", "span", "subset", "hessian_images", "direction_seed"),
    grows={"seeds": None},
    measures=True,
    preset_help="cpu: the conv twins of `reslab degradation --data cifar10 --preset cpu` "
    "(ResNet-20/56 and plain-20/56), 11 x 11 points on 500 training images",
)
