"""What every study shares, as plain functions and one small record.

A study is a package `reslab/studies/<name>/` holding its config dataclass, presets, grid, a short
`run(cfg)` and a `report.py`; it describes itself with a `Study` record (name, help, config class,
presets, toy preset, run, report, table) and lists its name in `reslab.studies.NAMES`. Everything
else is here: the common options, a config from a preset plus overrides, a cell's run config, the
early check that every model of the grid builds, claiming the study folder, training the grid with
one divergence policy, and finishing (report, terminal table, the summary).

The divergence policy: a run whose loss turns non-finite stops, and its run folder records the step
and the last finite loss (status "diverged"). It is never retried on its own (rerunning the study
keeps it as it is); the study goes on with the other runs, and its report names it.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import heapq
import json
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from reslab.training import runs
from reslab.training.config import TrainConfig, resolve

# TrainConfig fields a study sets itself for every run (not offered as engine options).
OWNED: tuple[str, ...] = (
    "model",
    "model_kwargs",
    "data",
    "data_dir",
    "iters",
    "seed",
    "name",
    "out",
    "resume",
)
OWNED += ("progress",)
# The model families the studies train (the registry's families that take any depth), plain or residual.
FAMILIES = ("mlp", "cifar", "preact")
ARCHS = ("plain", "residual")
# Fields of a run's TrainConfig that differ between the cells of one study (not part of its recipe).
PER_RUN = ("model", "model_kwargs", "seed", "name", "out", "resume", "progress")


@dataclass(frozen=True)
class StudyConfig:
    """The options every study has; a study's config dataclass adds its own fields to these."""

    preset: str = field(default="digits", metadata={"help": "the built-in grid and recipe"})
    data: str = field(default="digits", metadata={"help": "dataset (digits is built in)"})
    data_dir: str | None = field(default=None, metadata={"help": "data root"})
    name: str = field(
        default="", metadata={"help": "study folder name (default: the preset's name)"}
    )
    train: dict = field(
        default_factory=dict, metadata={"help": "TrainConfig overrides for every run"}
    )


@dataclass(frozen=True)
class Study:
    """One study, as the CLI, `reslab report`, `reslab.run_study` and the tests see it."""

    name: str
    help: str  # one line, for `reslab --help`
    config: type  # frozen dataclass with `preset`, `out`, `name` and `train` fields
    presets: dict[str, dict[str, Any]]  # preset -> field values; the first is the default
    run: Callable[[Any], dict]  # config -> summary (trains what is missing, then reports)
    report: Callable[[Path], Path]  # study folder -> report.html, from the folder alone
    table: Callable[[dict], str]  # summary -> plain-text table and verdict, for the terminal
    toy: dict[str, Any]  # overrides of the default preset that run the whole study in seconds
    preset_help: str = ""  # what the non-default presets are for
    owns: tuple[str, ...] = ()  # TrainConfig fields the study sets beyond OWNED
    default_name: Callable[[str, dict], str] | None = None  # (preset, values) -> folder name

    @property
    def default_preset(self) -> str:
        return next(iter(self.presets))

    def make_config(self, preset: str | None = None, **options: Any) -> Any:
        """This study's config: defaults < preset < options (see `make_config`)."""
        return make_config(self, preset, **options)


# ------------------------------------------------------------------------------------ configuration


def make_config(study: Study, preset: str | None = None, **options: Any) -> Any:
    """defaults < preset < options; `train` overrides are merged, not replaced. The study folder's
    name defaults to the preset's (`<preset>-<data>` when the data is overridden)."""
    preset = preset or study.default_preset
    if preset not in study.presets:
        raise ValueError(
            f"unknown {study.name} preset {preset!r}; choose from {', '.join(study.presets)}"
        )
    values = dict(study.presets[preset])
    values["train"] = dict(values.get("train", {}), **options.pop("train", {}))
    values.update(options)
    if not values.get("name"):
        if study.default_name:
            values["name"] = study.default_name(preset, values)
        else:
            values["name"] = preset if "data" not in options else f"{preset}-{options['data']}"
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    runs.check_name(values["name"], "study name")
    train = dict(values["train"])
    resolve(train.pop("preset", None), **train)  # a bad engine option fails first, in one line
    return study.config(preset=preset, **values)


def run_config(cfg: Any, name: str, model: str, seed: int, **options: Any) -> TrainConfig:
    """The ordinary training config of one cell: the study's `train` recipe (its `preset` key names a
    TrainConfig preset), the study's data and iterations, then this cell's model, seed and name,
    written to `<out>/<study name>/runs/<name>/` and resumed if it is there."""
    values = dict(
        cfg.train,
        model=model,
        data=cfg.data,
        data_dir=cfg.data_dir,
        seed=seed,
        name=name,
        out=str(study_dir(cfg) / runs.RUNS),
        resume=True,
        progress=False,
    )
    if getattr(cfg, "iters", 0):
        values["iters"] = cfg.iters
    values.update(options)
    return resolve(values.pop("preset", None), **values)


def recipe(run_cfg: TrainConfig) -> dict:
    """What every run of a study shares: a run config without its per-run fields."""
    return {k: v for k, v in run_cfg.to_dict().items() if k not in PER_RUN}


def study_dir(cfg: Any) -> Path:
    """`<out>/<name>/`, where `name` must be one folder name (never `..`)."""
    return Path(cfg.out) / runs.check_name(cfg.name, "study name")


def model_name(family: str, arch: str, depth: int) -> str:
    """The registered name of a `family` net ("mlp", "cifar", "preact": the registry's any-depth
    families) of `depth` weight layers, plain or residual: model_name("cifar", "plain", 20) == "plain-20"."""
    from reslab.models.registry import FAMILIES as REGISTERED

    if arch not in ARCHS:
        raise ValueError(f"arch must be plain or residual, got {arch!r}")
    fam = next((f for f in REGISTERED if f.name == family and f.any_depth), None)
    if fam is None:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)}, got {family!r}")
    return f"{fam.residual if arch == 'residual' else fam.plain}-{depth}"


def check_models(models: Iterable[tuple[str, dict]]) -> None:
    """Build every (name, overrides) of the grid on the meta device (no memory, no init), so a bad
    depth or option fails in one line before any training."""
    import torch

    from reslab.models import create_model

    seen = set()
    for name, kwargs in models:
        key = (name, json.dumps(kwargs, sort_keys=True, default=str))
        if key not in seen:
            seen.add(key)
            with torch.device("meta"):
                create_model(
                    name, **{"num_classes": 10, "in_chans": 1, "img_size": (8, 8), **kwargs}
                )


def claim(
    folder: Path,
    record: dict,
    must_match: Sequence[str],
    merge: Callable[[dict, dict], dict] | None = None,
) -> dict:
    """Write `study.json`; if the folder already holds a study, the keys in `must_match` must agree
    (else a one-line ValueError), and `merge(old, new)` decides the record written. Returns it."""
    record = jsonable(record)
    path = folder / runs.STUDY
    if path.exists():
        old = runs.read_json(path)  # a one-line ValueError unless it holds a JSON object
        diff = [k for k in must_match if not _agree(k, old.get(k), record.get(k))]
        if diff:
            raise ValueError(
                f"{folder} holds a study with other settings ({', '.join(diff)}); "
                "rerun with the same options to resume it, or pass --name for a new study"
            )
        record = merge(old, record) if merge else {**old, **record}
    folder.mkdir(parents=True, exist_ok=True)
    runs.write_json(path, record)
    return record


def _agree(key: str, old: Any, new: Any) -> bool:
    """Whether a setting recorded in study.json agrees with the new one. Two recipes agree on the keys
    both hold: a folder written before "recipe" meant the resolved run config everywhere (gradients and
    identity recorded only their overrides, shortcuts also the model's options) can still be resumed."""
    if key == "recipe" and isinstance(old, dict) and isinstance(new, dict):
        return all(old[k] == new[k] for k in old.keys() & new.keys())
    return old == new


def union(old: dict, new: dict, **orders: Sequence | None) -> dict:
    """A merge for `claim`: the new record, with each named list the union of old and new, in the
    order given (or sorted when the order is None): union(old, new, seeds=None, archs=ARCHS)."""
    out = {**old, **new}
    for key, order in orders.items():
        both = {*old.get(key, ()), *new.get(key, ())}
        out[key] = [x for x in order if x in both] if order is not None else sorted(both)
    return out


def jsonable(obj: Any) -> Any:
    """`obj` as plain JSON types (tuples become lists)."""
    return json.loads(json.dumps(obj, default=list))


# ------------------------------------------------------------------------------------ training


def default_jobs(mlp: bool) -> int:
    """Runs to train at once: small fully connected nets scale badly over threads, so on a CPU they
    run one per core; conv nets (and anything on a GPU) one at a time."""
    import torch

    return max(1, os.cpu_count() or 1) if mlp and not torch.cuda.is_available() else 1


def train_grid(
    configs: Sequence[TrainConfig],
    jobs: int = 1,
    on_done: Callable[[dict, float], None] | None = None,
) -> list[dict]:
    """Train every config under the divergence policy (module docstring); returns summaries in order.

    Finished runs return at once, unfinished ones resume. With `jobs` > 1 the runs go to that many
    spawned processes, each with cores // jobs threads; with one job the runs show a progress bar."""
    on_done = on_done or print_run
    threads = max(1, (os.cpu_count() or 1) // max(1, jobs))
    t0 = time.perf_counter()
    results: list[dict | None] = [None] * len(configs)
    eta = Estimate(configs, jobs)

    def done(i: int, summary: dict) -> None:
        results[i] = summary
        on_done(summary, time.perf_counter() - t0)
        eta.done(i, summary)

    if jobs <= 1:
        for i, c in enumerate(configs):
            done(i, _train_one(c, threads, True))
        return results  # type: ignore[return-value]
    with cf.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_train_one, c, threads, False): i for i, c in enumerate(configs)}
        for fut in cf.as_completed(futures):
            done(futures[fut], fut.result())
    return results  # type: ignore[return-value]


def _train_one(cfg: TrainConfig, threads: int, progress: bool) -> dict:
    import torch

    from reslab.training import Diverged, train

    run_dir = Path(cfg.out) / cfg.run_name
    if runs.status(run_dir) == "diverged":  # never retried on its own
        return {"name": cfg.run_name, **(runs.read_summary(run_dir) or {}), "wall_s": 0.0}
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    try:
        summary = train(dataclasses.replace(cfg, progress=progress))
    except Diverged as e:
        summary = {"name": cfg.run_name, "status": "diverged", "error": str(e)}
        summary.update(runs.read_summary(run_dir) or {})
    return {**summary, "wall_s": time.perf_counter() - t0}


def print_run(s: dict, elapsed: float) -> None:
    """One line per finished run: its errors, or where it diverged."""
    if s.get("status") == "diverged":
        step = s.get("diverged_at_step", s.get("steps"))
        loss = s.get("last_finite_loss")
        last = f", last finite loss {loss:.4g}" if isinstance(loss, (int, float)) else ""
        what = f"diverged at step {step}{last}"
    else:
        what = f"train error {s['final_train_error']:7.2%}  test error {s['final_test_error']:7.2%}"
    print(f"  {s['name']:<24} {what}  [{elapsed:5.0f} s]", flush=True)


class Estimate:
    """Says before a grid trains how long it will take, when that is more than `quiet_s`: each run
    not finished in an earlier invocation, timed on this machine (`_cost`: its start-up and its
    work, the steps, evaluations and checkpoints), the runs laid out in order over the `jobs`
    trained at once. After the first run it checks itself once: when that run's work took more than
    CHECK times its prediction, or less than 1/CHECK (a busier or a quieter machine; the first run
    of a worker process also pays its imports, which the check leaves out), it says the time to go
    again with every run's work scaled by that ratio. `measure(config, threads)` -> a
    `reslab.training.timing.Timing` (default: `timing.measure`; tests pass constructed ones)."""

    CHECK = 1.25
    WORK = ("time_s", "curve_eval_s", "final_eval_s", "checkpoint_s")  # a summary's timed work

    def __init__(
        self,
        configs: Sequence[TrainConfig],
        jobs: int = 1,
        quiet_s: float = 120.0,
        measure: Callable | None = None,
    ):
        self.jobs, self.quiet_s, self.checked = max(1, jobs), quiet_s, False
        self.left = {
            i for i, c in enumerate(configs) if not runs.is_finished(Path(c.out) / c.run_name)
        }
        self.parts: dict[int, tuple[float, float]] = {}  # run -> (start-up, work) seconds
        if not self.left:
            return
        threads = max(1, (os.cpu_count() or 1) // self.jobs)  # as train_grid gives each run
        if measure is None:
            from reslab.training import timing

            measure = partial(timing.measure, loaded={})  # the data loaded once for every kind
        timings: dict = {}
        try:
            self.parts = {i: _cost(configs[i], timings, threads, measure) for i in self.left}
        except (OSError, ValueError, RuntimeError):  # the run itself will say what is wrong
            return
        self.order = sorted(self.left)
        self.start = time.perf_counter()
        self.total = self.makespan([sum(self.parts[i]) for i in self.order], self.jobs)
        if self.total > quiet_s:
            print(
                f"  about {self.minutes(self.total)} for {len(self.left)} runs, {self.jobs} at a "
                f"time (timed on this machine: {len(timings)} kinds of run, a few steps each)",
                flush=True,
            )

    def done(self, i: int, summary: dict | None) -> None:
        if i not in self.left:
            return
        self.left.discard(i)
        s = summary or {}
        if self.checked or i not in self.parts or not self.left or s.get("status") != "completed":
            return
        self.checked = True
        start, work = self.parts[i]
        if all(k in s for k in self.WORK):
            worked = sum(s[k] for k in self.WORK)
        else:  # a summary without the parts: its wall time less the predicted start-up
            worked = s.get("wall_s", 0.0) - start
        ratio = worked / max(work, 1e-9)
        if 1 / self.CHECK <= ratio <= self.CHECK:
            return
        revised = [self.parts[j][0] + ratio * self.parts[j][1] for j in self.order]
        rest = self.makespan(revised, self.jobs) - (time.perf_counter() - self.start)
        if rest > self.quiet_s:
            print(
                f"  about {self.minutes(rest)} to go for {len(self.left)} more runs (the first "
                f"run's work took {ratio:.2g}x its timed estimate: the machine is busier or "
                "quieter now)",
                flush=True,
            )

    @staticmethod
    def minutes(seconds: float) -> str:
        """ "2.3 min" under ten minutes, "14 min" above."""
        return f"{seconds / 60:.1f} min" if seconds < 600 else f"{seconds / 60:.0f} min"

    @staticmethod
    def makespan(seconds: Sequence[float], jobs: int) -> float:
        """Wall time of runs taking `seconds`, started in order on the first of `jobs` free."""
        free = [0.0] * jobs  # a heap of the times the workers come free
        for s in seconds:
            heapq.heapreplace(free, free[0] + s)
        return max(free)


def _cost(c: TrainConfig, timings: dict, threads: int, measure: Callable) -> tuple[float, float]:
    """A run's predicted (start-up, work) seconds: its kind of run (`timing.timing_key`) timed by
    `measure` with `threads` CPU threads, once for each kind (kept in `timings`), scaled to its
    steps, evaluations and checkpoints (`Timing.work`)."""
    from reslab.training.timing import timing_key

    key = timing_key(c)
    if key not in timings:
        timings[key] = measure(c, threads)
    return timings[key].start_s, timings[key].work(c)


# ------------------------------------------------------------------------------------ finishing


def finish(study: Study, folder: Path, t0: float) -> dict:
    """Build the report from the folder, print the table and where the report is; return the summary."""
    report = study.report(folder)
    summary = runs.read_json(folder / runs.SUMMARY)
    print(study.table(summary))
    print(f"report: {report}  ({time.perf_counter() - t0:.0f} s)")
    return summary


# ------------------------------------------------------------------------------------ command line


def add_arguments(study: Study, parser: argparse.ArgumentParser) -> None:
    """The study's options (from its config dataclass), then the training engine's (from TrainConfig,
    less the fields the study sets per run)."""
    from reslab.options import add_dataclass_options

    others = [p for p in study.presets if p != study.default_preset]
    parser.add_argument(
        "--preset",
        default=argparse.SUPPRESS,
        help=f"{', '.join(study.presets)} (default: {study.default_preset}"
        + (f"; {study.preset_help}" if study.preset_help and others else "")
        + ")",
    )
    add_dataclass_options(parser, study.config, exclude=("preset", "train"))
    add_dataclass_options(
        parser.add_argument_group("training engine options (override the study's recipe)"),
        TrainConfig,
        exclude=OWNED + study.owns,
    )


def main(study: Study, opts: dict) -> dict:
    """Split parsed options into the study's and the engine's, and run the study."""
    fields = {f.name for f in dataclasses.fields(study.config)}
    train = {k: v for k, v in opts.items() if k not in fields}
    own = {k: v for k, v in opts.items() if k in fields}
    cfg = make_config(study, own.pop("preset", None), train=train, **own)
    folder = study_dir(cfg)
    new = not folder.exists()
    try:
        return study.run(cfg)
    except Exception:
        # a study refused before it wrote anything but its study.json leaves no folder behind
        if new and folder.is_dir() and [p.name for p in folder.iterdir()] == [runs.STUDY]:
            shutil.rmtree(folder)
        raise
