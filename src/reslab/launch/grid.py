"""Training a study's grid of runs, under one divergence policy, and saying how long it will take.

The divergence policy: a run whose loss turns non-finite stops, and its run folder records the step
and the last finite loss (status "diverged"). It is never retried on its own (rerunning the study
keeps it as it is); the study goes on with the other runs, and its report names it. A cell whose
Slurm job failed is reported the same way (status "failed", `slurm`), but rerunning trains it again.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import heapq
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

from reslab.launch import slurm
from reslab.training import runs
from reslab.training.config import TrainConfig


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
    spawned processes, each with cores // jobs threads; with one job the runs show a progress bar.
    Configs of one run folder (a grid that names a cell twice) are trained once."""
    folders = [Path(c.out) / c.run_name for c in configs]
    if len(set(folders)) < len(folders):  # two workers on one folder would fail on its lock
        unique = {f: c for f, c in zip(folders, configs, strict=True)}
        by_folder = dict(zip(unique, train_grid(list(unique.values()), jobs, on_done), strict=True))
        return [by_folder[f] for f in folders]
    on_done = on_done or print_run
    threads = max(1, (os.cpu_count() or 1) // max(1, jobs))
    t0 = time.perf_counter()
    results: list[dict | None] = [None] * len(configs)
    if (launch := slurm.LAUNCH.get()) is not None:  # --launcher slurm: each cell a Slurm job
        slurm.check(launch, mlp=all(c.model.startswith(("resmlp", "plainmlp")) for c in configs))

        def finished(i: int, summary: dict) -> None:
            results[i] = summary
            on_done(summary, time.perf_counter() - t0)

        slurm.run_grid(configs, launch, finished, _train_one)
        return results  # type: ignore[return-value]
    eta = Estimate(configs, jobs)

    def done(i: int, summary: dict) -> None:
        results[i] = summary
        on_done(summary, time.perf_counter() - t0)
        eta.done(i, summary)

    if jobs <= 1:
        for i, c in enumerate(configs):
            done(i, _train_one(c, threads, True))
        return results  # type: ignore[return-value]
    # the longest runs first (their timed estimates), so that no core idles at the end while one
    # deep run finishes alone: 10-15% less wall time for a depth grid on two cores
    first = [i for i in range(len(configs)) if i not in eta.order]
    with worker_pool(jobs) as pool:
        futures = {
            pool.submit(_train_one, configs[i], threads, False): i for i in first + eta.order
        }
        for fut in cf.as_completed(futures):
            done(futures[fut], fut.result())
    return results  # type: ignore[return-value]


def worker_pool(jobs: int) -> cf.ProcessPoolExecutor:
    """`jobs` spawned worker processes that exit when this process is gone: killed with -9 (what
    the OOM killer does), it cannot tell them to stop, and they would train on into its folder."""
    context = multiprocessing.get_context("spawn")
    return cf.ProcessPoolExecutor(
        jobs, mp_context=context, initializer=_die_with_parent, initargs=(os.getpid(),)
    )


def _die_with_parent(parent: int) -> None:
    """In a worker: a thread that ends the process within half a second of its parent's death (the
    worker is then re-parented, so its parent id changes). Its run keeps its last checkpoint, and
    the lock the OS releases lets the rerun resume it."""
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="die-with-parent").start()


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
    """One line per finished run: its errors, where it diverged, or why its Slurm job failed."""
    if s.get("status") == "failed":
        what = f"failed ({s.get('error')})"
    elif s.get("status") == "diverged":
        step = s.get("diverged_at_step", s.get("steps"))
        what = runs.diverged_at(step, s.get("last_finite_loss"))
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
        self.order: list[int] = []  # the unfinished runs, longest first (none when not timed)
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
        self.order = sorted(self.left, key=lambda i: (-sum(self.parts[i]), i))
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
        """Wall time of runs taking `seconds`, started in this order on the first of `jobs` free."""
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
