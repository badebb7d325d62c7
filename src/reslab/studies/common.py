"""What every study shares: training a list of run configs (in parallel where it pays), claiming a
study folder without mixing two different studies in it, and JSON-safe records."""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import json
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from reslab.training.config import TrainConfig
from reslab.training.tracking import write_json


def train_many(
    configs: Sequence[TrainConfig],
    jobs: int = 1,
    on_done: Callable[[dict, float], None] | None = None,
    tolerate_divergence: bool = False,
) -> list[dict]:
    """Train every config (finished runs return at once, unfinished ones resume); returns summaries in order.

    With `jobs` > 1 the runs go to that many spawned processes, each with cores // jobs threads.
    `tolerate_divergence`: a run whose loss or weights turn non-finite gives its summary (status
    "diverged", as the engine wrote it) instead of stopping the others."""
    threads = max(1, (os.cpu_count() or 1) // max(1, jobs))
    t0 = time.perf_counter()
    results: list[dict | None] = [None] * len(configs)
    eta = Estimate(configs, jobs)
    if jobs <= 1:
        for i, c in enumerate(configs):
            results[i] = _train_one(c, threads, c.progress, tolerate_divergence)
            if on_done:
                on_done(results[i], time.perf_counter() - t0)
            eta.done(i, results[i])
        return results  # type: ignore[return-value]
    with cf.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {
            pool.submit(_train_one, c, threads, False, tolerate_divergence): i
            for i, c in enumerate(configs)
        }
        for fut in cf.as_completed(futures):
            results[futures[fut]] = fut.result()
            if on_done:
                on_done(results[futures[fut]], time.perf_counter() - t0)
            eta.done(futures[fut], results[futures[fut]])
    return results  # type: ignore[return-value]


class Estimate:
    """Says once, after the first run trained here, how long the rest will take when that is more
    than `quiet_s`: the first run's seconds per unit of cost (layers x iterations or epochs) times
    the cost left, less what the other runs in flight have done, over the runs trained at once.
    Runs finished in an earlier invocation count 0."""

    def __init__(self, configs: Sequence[TrainConfig], jobs: int = 1, quiet_s: float = 120.0):
        self.cost = [_cost(c) for c in configs]
        self.left = {i for i, c in enumerate(configs) if not _finished(c)}
        self.jobs, self.quiet_s, self.said = max(1, jobs), quiet_s, False

    def done(self, i: int, summary: dict | None) -> None:
        if i not in self.left:
            return
        self.left.discard(i)
        wall = (summary or {}).get("wall_s")
        if self.said or not wall or not self.left:
            return
        self.said = True
        # the other runs in flight have had as long as this one: that much of their cost is done
        work = wall / self.cost[i] * sum(self.cost[j] for j in self.left) - (self.jobs - 1) * wall
        rest = max(0.0, work) / self.jobs
        if rest > self.quiet_s:
            print(
                f"  about {rest / 60:.0f} min to go for {len(self.left)} more runs "
                "(estimated from the first run's speed on this machine)",
                flush=True,
            )


def _cost(c: TrainConfig) -> float:
    """A run's cost in arbitrary units: depth (weight layers) x iterations (or epochs)."""
    from reslab.training.config import _depth

    return max(1, _depth(c.model)) * (c.iters or c.epochs)


def _finished(c: TrainConfig) -> bool:
    path = Path(c.out) / c.run_name / "summary.json"
    try:
        return json.loads(path.read_text()).get("status") in ("completed", "diverged")
    except (OSError, ValueError):
        return False


def default_jobs(mlp: bool) -> int:
    """Runs to train at once: small fully connected nets scale badly over threads, so on a CPU they
    run one per core; conv nets (and anything on a GPU) one at a time."""
    return max(1, os.cpu_count() or 1) if mlp and not torch.cuda.is_available() else 1


def _train_one(cfg: TrainConfig, threads: int, progress: bool, tolerate: bool = False) -> dict:
    from reslab.training import Diverged, train

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    try:
        return {
            **train(dataclasses.replace(cfg, progress=progress)),
            "wall_s": time.perf_counter() - t0,
        }
    except Diverged as e:
        if not tolerate:
            raise
        summary = Path(cfg.out) / cfg.run_name / "summary.json"
        written = json.loads(summary.read_text()) if summary.is_file() else {}
        return {"name": cfg.run_name, "status": "diverged", "error": str(e), **written}


def claim_study_dir(
    study_dir: Path,
    record: dict,
    must_match: Sequence[str],
    merge: Callable[[dict, dict], dict] | None = None,
) -> dict:
    """Write `study.json`; if the folder already holds a study, the keys in `must_match` must agree
    (else a one-line ValueError), and `merge(old, new)` decides the record written. Returns it."""
    record = jsonable(record)
    path = study_dir / "study.json"
    if path.exists():
        old = json.loads(path.read_text())
        diff = [k for k in must_match if old.get(k) != record.get(k)]
        if diff:
            raise ValueError(
                f"{study_dir} holds a study with other settings ({', '.join(diff)}); "
                "rerun with the same options to resume it, or pass --name for a new study"
            )
        record = merge(old, record) if merge else {**old, **record}
    study_dir.mkdir(parents=True, exist_ok=True)
    write_json(path, record)
    return record


def jsonable(obj: Any) -> Any:
    """`obj` as plain JSON types (tuples become lists)."""
    return json.loads(json.dumps(obj, default=list))


def study_cli(
    config_cls: type,
    presets: dict,
    make_config: Callable,
    run: Callable,
    preset_help: str,
    engine_help: str = "training engine options (override the study's recipe)",
):
    """The CLI half of a study: `add_arguments(parser)` and `main(opts)`.

    Options come from the study's config dataclass, then from `TrainConfig` minus the fields the
    study sets per run (`config_cls.OWNED`); `main` splits them back and calls `run(make_config(...))`."""
    import argparse

    def add_arguments(parser: argparse.ArgumentParser) -> None:
        from reslab.options import add_dataclass_options

        parser.add_argument(
            "--preset",
            default=argparse.SUPPRESS,
            help=f"{', '.join(presets)} (default: digits; {preset_help})",
        )
        add_dataclass_options(parser, config_cls, exclude=("preset", "train"))
        add_dataclass_options(
            parser.add_argument_group(engine_help), TrainConfig, exclude=config_cls.OWNED
        )

    def main(opts: dict) -> dict:
        fields = {f.name for f in dataclasses.fields(config_cls)}
        train = {k: v for k, v in opts.items() if k not in fields}
        study = {k: v for k, v in opts.items() if k in fields}
        return run(make_config(study.pop("preset", "digits"), train=train, **study))

    return add_arguments, main
