"""What every study shares: one `Study` record, one runner, and the plain functions they use.

A study is a package `reslab/studies/<name>/`: its config dataclass (fields, `cells()`,
`run_config(*cell)`), presets and `Study` record in `__init__.py`; its verdict rule, table and page
in `report.py` (`build_report(folder)`, `format_table(summary)`); and, when it measures the trained
nets, `after_training(cfg, folder, configs, trained, jobs)` in `measure.py`. `run(study, cfg)` is
the one runner: study folder -> run configs -> study.json -> train the grid (one divergence policy:
`reslab.launch.grid`) -> measure -> report. `report.py` and `measure.py` are imported only when
used, so the CLI lists every study and its options without importing torch or matplotlib.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import importlib
import json
import shutil
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reslab.launch.grid import default_jobs, train_grid
from reslab.launch.slurm import LAUNCH, SlurmOptions, launcher_options, raise_failed
from reslab.studies import records
from reslab.training import runs
from reslab.training.config import TrainConfig, resolve
from reslab.training.config import _f as option  # option(default, help): TrainConfig's own helper

# TrainConfig fields `run_config` sets for each run. OWNED, with those the study sets for all its
# runs alike, are not engine options; PER_RUN, with --log-to (which changes no number), are not
# part of the recipe the runs share (a rerun may change them).
_SET_PER_RUN = ("model", "model_kwargs", "seed", "name", "out", "resume", "progress", "log_lines")
OWNED: tuple[str, ...] = (*_SET_PER_RUN, "data", "data_dir", "iters")
PER_RUN = (*_SET_PER_RUN, "log_to")
# The model families the studies train (the registry's any-depth families), plain or residual.
FAMILIES = ("mlp", "cifar", "preact")
ARCHS = ("plain", "residual")


@dataclass(frozen=True)
class StudyConfig:
    """The options every study has; a study's config dataclass adds its own fields to these."""

    preset: str = option("digits", "the built-in grid and recipe")
    data: str = option("digits", "dataset (digits is built in)")
    data_dir: str | None = option(None, "data root")
    name: str = option("", "study folder name (default: the preset's name)")
    train: dict = option({}, "TrainConfig overrides for every run")

    def cells(self) -> list[tuple]:
        """The cells of the grid, each the arguments of `run_config` (none: nothing to train)."""
        return []

    def run_config(self, *cell: Any) -> TrainConfig:
        raise NotImplementedError(f"{type(self).__name__} has no run_config for {cell}")

    def facts(self, configs: Sequence[TrainConfig]) -> dict:
        """What study.json records beside the config's fields: the recipe the runs share."""
        return {"recipe": recipe(configs[0])} if configs else {}

    @property
    def trains(self) -> bool:
        """Whether the grid is trained (a study may measure its nets at initialisation only)."""
        return True


@dataclass(frozen=True)
class Study:
    """One study, as the CLI, `reslab report`, `reslab.run_study` and the tests see it: what it is
    called, its config and presets, and what its study.json must keep across reruns."""

    name: str
    help: str  # one line, for `reslab --help`
    config: type[StudyConfig]  # a frozen subclass with `out`, `cells()` and `run_config(*cell)`
    presets: dict[str, dict[str, Any]]  # preset -> field values; the first is the default
    toy: dict[str, Any]  # overrides of the default preset that run the whole study in seconds
    must_match: tuple[str, ...] = ()  # study.json keys a rerun in the same folder must agree on
    grows: dict[str, Any] = field(default_factory=dict)  # keys a rerun extends (`records.merge`)
    measures: bool = False  # measure.py's after_training runs once the grid is trained
    preset_help: str = ""  # what the non-default presets are for
    owns: tuple[str, ...] = ()  # TrainConfig fields the study sets beyond OWNED
    default_name: Callable[[str, dict], str] | None = None  # (preset, values) -> folder name

    def part(self, module: str) -> Any:
        """The study package's `report` or `measure` module, imported on first use."""
        return importlib.import_module(f"{self.config.__module__}.{module}")

    def make_config(self, preset: str | None = None, **options: Any) -> Any:
        return make_config(self, preset, **options)

    def run(self, cfg: Any) -> dict:
        """Train what is missing, measure, report; returns the summary (see `run`)."""
        return run(self, cfg)

    def report(self, folder: Path) -> Path:
        """Write summary.json, the figures and report.html from the study folder alone."""
        return self.part("report").build_report(folder)

    def table(self, summary: dict) -> str:
        """The summary as plain text (table and verdict), for the terminal."""
        return self.part("report").format_table(summary)


def make_config(study: Study, preset: str | None = None, **options: Any) -> Any:
    """defaults < preset < options; `train` overrides are merged, not replaced. The study folder's
    name defaults to the preset's (`<preset>-<data>` when `data` is not the preset's own)."""
    preset = preset or next(iter(study.presets))  # the first is the default
    if preset not in study.presets:
        raise ValueError(
            f"unknown {study.name} preset {preset!r}; choose from {', '.join(study.presets)}"
        )
    values = dict(study.presets[preset])
    preset_data = values.get("data", study.config.data)
    values["train"] = dict(values.get("train", {}), **options.pop("train", {}))
    values.update(options)
    if not values.get("name") and study.default_name:
        values["name"] = study.default_name(preset, values)
    elif not values.get("name"):
        data = values.get("data", preset_data)
        values["name"] = preset if data == preset_data else f"{preset}-{data}"
    for key, value in values.items():  # `--depths 2 2`: a cell named twice is one cell
        if isinstance(value, (list, tuple)):
            values[key] = tuple({repr(v): v for v in value}.values())
            if len(values[key]) < len(value):
                flag = "--" + key.replace("_", "-")
                warnings.warn(f"{flag} lists a value twice; each is used once", stacklevel=2)
    runs.check_name(values["name"], "study name")
    _engine(values["train"])  # a bad engine option fails first, in one line
    return study.config(preset=preset, **values)


def _engine(values: dict) -> TrainConfig:
    """A `train` recipe (engine options, its `preset` key naming a TrainConfig preset) resolved."""
    values = dict(values)
    return resolve(values.pop("preset", None), **values)


def run_config(cfg: Any, name: str, model: str, seed: int, **options: Any) -> TrainConfig:
    """The ordinary training config of one cell: the study's `train` recipe, the study's data and
    iterations, then this cell's model, seed and name, written to `<out>/<study name>/runs/<name>/`
    and resumed if it is there."""
    cell = dict(model=model, seed=seed, name=name, data=cfg.data, data_dir=cfg.data_dir)
    # quiet runs: the study prints a line per run
    where = dict(out=str(study_dir(cfg) / runs.RUNS), resume=True, progress=False, log_lines=False)
    iters = {"iters": cfg.iters} if getattr(cfg, "iters", 0) else {}
    return _engine({**cfg.train, **cell, **where, **iters, **options})


def recipe(run_cfg: TrainConfig | dict) -> dict:
    """What the runs of a study share: a run config (or its config.json) less its per-run fields."""
    values = run_cfg if isinstance(run_cfg, dict) else run_cfg.to_dict()
    return {k: v for k, v in values.items() if k not in PER_RUN}


def study_dir(cfg: Any) -> Path:
    """`<out>/<name>/`, where `name` must be one folder name (never `..`)."""
    return Path(cfg.out) / runs.check_name(cfg.name, "study name")


def model_name(family: str, arch: str, depth: int) -> str:
    """The registered name of a `family` net of `depth` weight layers, plain or residual:
    model_name("cifar", "plain", 20) == "plain-20"."""
    from reslab.models.registry import FAMILIES as REGISTERED

    if arch not in ARCHS:
        raise ValueError(f"arch must be plain or residual, got {arch!r}")
    check_family(family)
    fam = next(f for f in REGISTERED if f.name == family and f.any_depth)
    return f"{fam.residual if arch == 'residual' else fam.plain}-{depth}"


def check_among(name: str, values: Sequence[Any], allowed: Iterable[Any]) -> None:
    """A one-line ValueError unless field `name`'s `values` are some, and all among `allowed`."""
    allowed = list(allowed)
    if not values or any(v not in allowed for v in values):
        raise ValueError(f"{name} must be among {', '.join(map(str, allowed))}, got {list(values)}")


def check_at_least(cfg: Any, low: int, *names: str) -> None:
    """A one-line ValueError for the first of the fields `names` of `cfg` below `low`."""
    for name in names:
        if getattr(cfg, name) < low:
            raise ValueError(f"{name} must be >= {low}, got {getattr(cfg, name)}")


def check_family(family: str, allowed: Iterable[str] = FAMILIES) -> None:
    if family not in allowed:
        raise ValueError(f"family must be one of {', '.join(allowed)}, got {family!r}")


def check_grid(cfg: Any) -> None:
    if not cfg.depths or not cfg.seeds:
        raise ValueError("give at least one depth and one seed")


def check_models(models: Iterable[tuple[str, dict]]) -> None:
    """Build every (name, overrides) of the grid on the meta device (no memory, no init), so a bad
    depth or option fails in one line before any training."""
    import torch

    from reslab.models import create_model

    unique = {(n, json.dumps(kw, sort_keys=True, default=str)): (n, kw) for n, kw in models}
    with torch.device("meta"):
        for name, kwargs in unique.values():
            create_model(name, **{"num_classes": 10, "in_chans": 1, "img_size": (8, 8), **kwargs})


def run(study: Study, cfg: Any) -> dict:
    """The one runner: claim the study folder (study.json), train every cell of the grid that is not
    finished, let the study measure its nets, then build the report from the folder, print the
    table and return the summary."""
    folder = study_dir(cfg)
    configs = [cfg.run_config(*cell) for cell in cfg.cells()]
    record = {"study": study.name, **dataclasses.asdict(cfg), **cfg.facts(configs)}
    records.write_study(folder, record, study.must_match, study.grows)
    jobs = getattr(cfg, "jobs", 1) or default_jobs(all("mlp" in c.model for c in configs))
    t0 = time.perf_counter()
    train = bool(configs) and cfg.trains
    what = f"{len(configs)} runs on {cfg.data}, {jobs} at a time" if train else f"on {cfg.data}"
    print(f"{study.name}: {what} -> {folder}", flush=True)
    trained = train_grid(configs, jobs) if train else [{} for _ in configs]
    if study.measures:
        study.part("measure").after_training(cfg, folder, configs, trained, jobs)
    report = study.report(folder)
    import torch  # not before it is needed (`reslab --help` imports this module)

    from reslab.training.tracking import provenance, write_results_csv

    write_results_csv(folder)
    # env.json as a run's, with the date it ended: the results page of a study that owns no runs
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    runs.write_json(folder / runs.ENV, provenance(torch.device("cpu")) | {"date": now})
    summary = runs.read_json(folder / runs.SUMMARY)
    print(study.table(summary))
    print(f"report: {report}  ({time.perf_counter() - t0:.0f} s)")
    raise_failed(trained)  # cells whose Slurm jobs failed: counted in the report, then exit 1
    return summary


def add_arguments(study: Study, parser: argparse.ArgumentParser) -> None:
    """The study's options (from its config dataclass), then the training engine's (TrainConfig's,
    less the fields the study sets per run), each showing its default preset's value."""
    from reslab.options import add_dataclass_options

    default = next(iter(study.presets))
    parser.add_argument(
        "--preset",
        default=argparse.SUPPRESS,
        help=f"{', '.join(study.presets)} (default: {default}"
        + (f"; {study.preset_help}" if study.preset_help and len(study.presets) > 1 else "")
        + "). The defaults shown below are the default preset's; --print-config shows any preset's",
    )
    shown = study.presets[default]  # over the fields' defaults (the config is not built: no torch)
    add_dataclass_options(parser, study.config, exclude=("preset", "train"), shown=shown)
    engine = parser.add_argument_group("training engine options (override the study's recipe)")
    defaults = _engine(shown.get("train") or {}).to_dict()
    add_dataclass_options(engine, TrainConfig, exclude=OWNED + study.owns, shown=defaults)
    slurm = "where the runs train (a Slurm cluster: pip install -e '.[slurm]')"
    add_dataclass_options(parser.add_argument_group(slurm), SlurmOptions)


def engine_recipe(cfg: Any) -> dict:
    """The engine options every run of study config `cfg` trains with (its `train` recipe resolved
    over TrainConfig's defaults; the cells set the model, seed and name)."""
    return _engine(cfg.train).to_dict()


def config_from_options(study: Study, opts: dict) -> Any:
    """The study config of parsed options: the study's own fields, the rest engine overrides (the
    launcher's options, which change no run, left out)."""
    launcher = {f.name for f in dataclasses.fields(SlurmOptions)}
    own = {f.name for f in dataclasses.fields(study.config)} - launcher
    values = {k: v for k, v in opts.items() if k in own}
    train = {k: v for k, v in opts.items() if k not in own | launcher}
    train = {**values.pop("train", {}), **train}
    return make_config(study, values.pop("preset", None), train=train, **values)


def main(study: Study, opts: dict) -> dict:
    """Split parsed options into the study's and the engine's, and run the study."""
    launch = launcher_options(opts)  # where the runs train changes none of them
    cfg = config_from_options(study, opts)
    folder = study_dir(cfg)
    new = not folder.exists()
    token = LAUNCH.set(launch if launch.launcher == "slurm" else None)
    try:
        return study.run(cfg)
    except Exception:
        # a study refused before it wrote anything but its study.json leaves no folder behind
        if new and folder.is_dir() and [p.name for p in folder.iterdir()] == [runs.STUDY]:
            shutil.rmtree(folder)
        raise
    finally:
        LAUNCH.reset(token)
