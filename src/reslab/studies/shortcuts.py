"""The shortcut study (He et al. 2016, "Identity Mappings in Deep Residual Networks", §3.1 Table 1 and
§4.1 Table 2): the same network and recipe with every shortcut and activation variant of its units.

Each variant of `reslab.models.variants` (identity, constant scaling, exclusive and shortcut-only gating
with the paper's gate-bias inits, 1x1 conv shortcut, dropout shortcut; BN after addition, ReLU before
addition, ReLU-only and full pre-activation) is trained once per seed as an ordinary run folder
`runs/shortcuts/<name>/runs/<variant>-s<seed>/`; the report module turns them into a table like the
paper's (test error, mean ± std over seeds), a bar figure, training curves and a verdict.

The built-in default trains a fully connected net of 54 two-layer units (`resmlp-110`, width 32: as
many units as the paper's ResNet-110) on the digits for 20 epochs: depth is what makes a multiplicative
shortcut compound, and small matrices keep each run to seconds on a CPU core. A run that diverges is
recorded as failed (the paper's "fail") and the study goes on.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from reslab.models import variants
from reslab.studies.common import Estimate, claim_study_dir, study_cli, train_many
from reslab.training.config import TrainConfig, resolve
from reslab.training.loop import Diverged


@dataclass(frozen=True)
class ShortcutsConfig:
    """One base network and recipe; every variant trained once per seed."""

    preset: str = field(default="digits", metadata={"help": "digits, cpu or paper"})
    data: str = field(default="digits", metadata={"help": "dataset (digits is built in)"})
    data_dir: str | None = field(default=None, metadata={"help": "data root"})
    base: str = field(
        default="resmlp-110", metadata={"help": "base net: resmlp-N, resnet-N (CIFAR)"}
    )
    width: int = field(default=32, metadata={"help": "MLP width (0: the model's default)"})
    variants: tuple[str, ...] = field(
        default=tuple(variants.VARIANTS),
        metadata={"help": f"variants to train: {', '.join(variants.VARIANTS)}"},
    )
    seeds: tuple[int, ...] = field(default=(0, 1, 2), metadata={"help": "seeds per variant"})
    iters: int = field(default=0, metadata={"help": "iterations per run (0: the recipe's)"})
    num_threads: int = field(default=0, metadata={"help": "CPU threads (0: PyTorch's default)"})
    out: str = field(default="runs/shortcuts", metadata={"help": "root of study folders"})
    name: str = field(default="", metadata={"help": "study folder name (default: the preset's)"})
    train: dict = field(default_factory=dict, metadata={"help": "TrainConfig overrides"})

    OWNED = ("model", "model_kwargs", "data", "data_dir", "iters", "seed", "name", "out")
    OWNED += ("resume", "progress", "num_threads")

    def __post_init__(self) -> None:
        bad = [v for v in self.variants if v not in variants.VARIANTS]
        if bad or not self.variants:
            raise ValueError(
                f"unknown variant(s) {bad}; choose from {', '.join(variants.VARIANTS)}"
            )
        if not self.seeds:
            raise ValueError("give at least one seed")
        kw = {"width": self.width} if self.width else {}
        with torch.device("meta"):  # fail before any training if the base does not take variants
            for v in self.variants:
                variants.build(self.base, v, in_chans=1, img_size=(8, 8), **kw)

    def run_config(self, variant: str, seed: int, study_dir: Path) -> TrainConfig:
        """The ordinary training config of one variant and seed."""
        options = dict(
            self.train,
            model=f"{self.base}+{variant}",
            model_kwargs={"width": self.width} if self.width else {},
            data=self.data,
            data_dir=self.data_dir,
            seed=seed,
            name=f"{variant}-s{seed}",
            out=str(study_dir / "runs"),
            resume=True,
            progress=False,
        )
        if self.iters:
            options["iters"] = self.iters
        if self.num_threads:
            options["num_threads"] = self.num_threads
        preset = options.pop("preset", None)
        return resolve(preset, **options)


# digits: see the module docstring; the recipe is the degradation study's digits recipe, shorter.
# paper: ResNet-110 on CIFAR-10 with He et al.'s recipe (64k iterations, lr 0.1 divided by 10 at 32k
# and 48k, lr 0.01 for the first 400 iterations), five seeds as the paper's medians of five runs.
PRESETS: dict[str, dict[str, Any]] = {
    "digits": dict(
        data="digits",
        base="resmlp-110",
        width=32,
        seeds=(0, 1, 2),
        num_threads=1,  # tiny matrices: more threads only contend for the cores
        train=dict(preset="digits", epochs=20.0, log_every=5, eval_every=50),
    ),
    "cpu": dict(
        data="cifar10",
        base="resnet-20",
        seeds=(0,),
        train=dict(preset="cpu", epochs=2.0, log_every=20),
    ),
    "paper": dict(
        data="cifar10",
        base="resnet-110",
        seeds=(0, 1, 2, 3, 4),
        # the engine's automatic warm-up reads the depth from the model name's last number, which a
        # variant name like "resnet-110+gate-shortcut-b0" hides, so it is set here
        train=dict(
            preset="paper", warmup_iters=400, warmup_lr=0.01, log_every=100, eval_every=2000
        ),
    ),
}


def make_config(preset: str = "digits", **options: Any) -> ShortcutsConfig:
    """defaults < preset < options; `train` overrides are merged, not replaced."""
    if preset not in PRESETS:
        raise ValueError(f"unknown shortcuts preset {preset!r}; choose from {', '.join(PRESETS)}")
    values = dict(PRESETS[preset])
    values["train"] = dict(values.get("train", {}), **options.pop("train", {}))
    values.update(options)
    values["name"] = values.get("name") or (
        preset if "data" not in options else f"{preset}-{options['data']}"
    )
    return ShortcutsConfig(
        preset=preset, **{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    )


def run(cfg: ShortcutsConfig) -> dict:
    """Train every variant x seed (skipping finished runs), then write summary, figures and report."""
    from reslab.report.shortcuts import build_report, format_table

    study_dir = Path(cfg.out) / cfg.name
    _claim(study_dir, cfg)
    configs = [cfg.run_config(v, s, study_dir) for v in cfg.variants for s in cfg.seeds]
    print(
        f"shortcuts: {len(configs)} runs ({len(cfg.variants)} variants of {cfg.base} x seeds "
        f"{list(cfg.seeds)}) on {cfg.data}, one at a time -> {study_dir}",
        flush=True,
    )
    t0, eta = time.perf_counter(), Estimate(configs)
    for i, c in enumerate(configs):
        if _diverged_before(c):
            continue
        try:
            s = train_many([c], 1, on_done=lambda s, _: _report_run(s, time.perf_counter() - t0))
            eta.done(i, s[0])
        except Diverged as err:
            print(f"  {c.run_name:<24} diverged: {err}", flush=True)
    report = build_report(study_dir)
    summary = json.loads((study_dir / "summary.json").read_text())
    print(format_table(summary))
    print(f"report: {report}  ({time.perf_counter() - t0:.0f} s)")
    return summary


def _diverged_before(c: TrainConfig) -> bool:
    """A run that diverged in an earlier invocation counts as failed; it is not retried."""
    path = Path(c.out) / c.run_name / "summary.json"
    return path.is_file() and json.loads(path.read_text()).get("status") == "diverged"


def _report_run(s: dict, elapsed: float) -> None:
    print(
        f"  {s['name']:<24} train error {s['final_train_error']:7.2%}  test error "
        f"{s['final_test_error']:7.2%}  [{elapsed:5.0f} s]",
        flush=True,
    )


def _claim(study_dir: Path, cfg: ShortcutsConfig) -> None:
    """study.json: a rerun may add variants or seeds, not change the base or the recipe."""
    recipe = cfg.run_config(cfg.variants[0], cfg.seeds[0], study_dir).to_dict()
    for k in ("model", "seed", "name", "out", "resume", "progress"):
        recipe.pop(k, None)
    record = {"study": "shortcuts", **dataclasses.asdict(cfg), "recipe": recipe}

    def merge(old: dict, new: dict) -> dict:
        return {
            **old,
            **new,
            "variants": [v for v in variants.VARIANTS if v in {*old["variants"], *new["variants"]}],
            "seeds": sorted(set(old["seeds"]) | set(new["seeds"])),
        }

    claim_study_dir(study_dir, record, ("data", "base", "width", "recipe"), merge)


HELP = "train every shortcut and activation variant of one net (He et al. 2016, Tables 1 and 2)"


add_arguments, main = study_cli(
    ShortcutsConfig,
    PRESETS,
    make_config,
    run,
    preset_help="cpu: CIFAR-10 ResNet-20, one seed, about an hour on 2 cores with native bf16 (about "
    "4x longer without, `reslab info`); paper: ResNet-110, 5 seeds, for a GPU",
)
