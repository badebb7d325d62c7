"""A study's grid on a Slurm cluster: every unfinished cell one job, submitted through submitit.

`reslab <study> ... --launcher slurm` trains the same cells as a local run, into the same run folders
(the same lock, the same checkpoints), but each as a job of one Slurm job array. The study folder
stays the one source of truth:

- `<study>/slurm/jobs.json` records the job id of every submitted cell. Rerunning the command (after
  the submitting process died, or from another login node) submits only cells that are neither
  finished (their run folder says so) nor still queued or running (`squeue` says so); a cell whose
  job failed, was cancelled or vanished is submitted again, and resumes from its last checkpoint.
- A job that Slurm preempts or stops at its time limit is requeued by submitit (its `Checkpointable`
  signal handler) and resumes from the run's last checkpoint.
- The submitting process waits, printing finished / running / pending / failed whenever they change,
  and hands each finished run to the study as a local run would. A cell whose job ended without its
  run (an error, scancel, a node that died) prints its job's log tail and is recorded in its run
  folder as a "failed" run (`runs.UNTRAINED`: its summary.json says "Slurm job N: <why>", the
  exception or Slurm's line in its log); the others go on, the report is built with it counted against its arm as a diverged run
  is, and then `raise_failed` names the failed cells (exit status 1). A failed run is not finished:
  the same command again submits it, and it resumes from its last checkpoint.
- `--slurm-procs N` (default: one per GPU of `--slurm-gpus`) runs each cell as one torch.distributed
  run of N processes, Slurm tasks of one job with the environment torchrun gives (RANK, WORLD_SIZE,
  LOCAL_RANK, MASTER_ADDR/PORT): the paper's batch of 128 over two GPUs, batch norm over 64 each.

Accounting (`sacct`) is not needed: a cell's state is its run folder's, and a job's is `squeue`'s.
submitit is an optional extra: `pip install -e ".[slurm]"`.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path

from reslab import atomic
from reslab.training import runs
from reslab.training.config import TrainConfig

JOBS = "jobs.json"  # in <study>/slurm/: {run name: Slurm job id}
# --launcher slurm, set by `base.main` for the study it runs: `grid.train_grid` submits the cells
LAUNCH: ContextVar[SlurmOptions | None] = ContextVar("LAUNCH", default=None)
# the states of a job Slurm may still run (squeue's %T); a requeued job passes through several
LIVE = set(
    "PENDING CONFIGURING RUNNING COMPLETING REQUEUED REQUEUE_HOLD REQUEUE_FED SPECIAL_EXIT RESIZING "
    "SUSPENDED STOPPED SIGNALING STAGE_OUT RESV_DEL_HOLD".split()
)


class CellsFailed(RuntimeError):
    """Some cells' jobs ended without finishing their runs."""


@dataclass
class SlurmOptions:
    """How a study's cells are launched; nothing here changes what a run computes."""

    launcher: str = field(
        default="local",
        metadata=dict(help="local: train here, --jobs at a time; slurm: one Slurm job per cell"),
    )
    slurm_partition: str | None = field(
        default=None, metadata=dict(help="Slurm partition (sbatch -p)")
    )
    slurm_time: int = field(
        default=0,
        metadata=dict(
            cli="slurm-time",
            help="time limit per job in minutes; 0: 24 h for conv nets, 1 h for MLPs",
        ),
    )
    slurm_gpus: int | None = field(
        default=None,
        metadata=dict(help="GPUs per job; default 1 for conv nets, 0 for MLPs"),
    )
    slurm_cpus: int | None = field(
        default=None,
        metadata=dict(help="CPUs per job (per process); default 8 for conv nets, 1 for MLPs"),
    )
    slurm_procs: int | None = field(
        default=None,
        metadata=dict(
            help="processes per job, one torch.distributed run as under torchrun (the batch split "
            "over them, batch norm per process); default one per GPU"
        ),
    )
    slurm_mem: str | None = field(
        default=None, metadata=dict(help="memory per job, e.g. 16G (sbatch --mem)")
    )
    slurm_account: str | None = field(default=None, metadata=dict(help="Slurm account (sbatch -A)"))
    slurm_qos: str | None = field(default=None, metadata=dict(help="quality of service"))
    slurm_sbatch: dict = field(
        default_factory=dict,
        metadata=dict(help="more sbatch options, e.g. constraint=a100"),
    )
    slurm_poll: float = field(
        default=15.0, metadata=dict(help="seconds between looks at the queue")
    )

    def __post_init__(self) -> None:
        if self.launcher not in ("local", "slurm"):
            raise ValueError(f"--launcher must be local or slurm, got {self.launcher!r}")
        for name in ("time", "gpus", "cpus", "procs"):
            value = getattr(self, f"slurm_{name}")
            if value is not None and not 0 <= value <= 1_000_000:
                raise ValueError(f"--slurm-{name} must be between 0 and 1000000, got {value}")
        if self.slurm_procs == 0:
            raise ValueError("--slurm-procs must be at least 1, got 0")
        if not 0.1 <= self.slurm_poll <= 3600:
            raise ValueError(f"--slurm-poll must be between 0.1 and 3600 s, got {self.slurm_poll}")


class TrainCell:
    """What a job runs: one cell's training (`train_one(cfg, threads, False)`, the grid's function
    for one run), resumed from its checkpoint when requeued. With `procs` > 1 each of the job's
    Slurm tasks runs this as one process of a torch.distributed run, in torchrun's environment."""

    def __init__(
        self, train_one: Callable[..., dict], cfg: TrainConfig, threads: int, procs: int = 1
    ) -> None:
        self.train_one, self.cfg, self.threads, self.procs = train_one, cfg, threads, procs

    def __call__(self) -> dict:
        if self.procs > 1:  # what torchrun would set; reslab's engine reads it (distributed.setup)
            import submitit

            # every task sees the job's GPUs; the engine picks cuda:LOCAL_RANK itself
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        return self.train_one(self.cfg, self.threads, False)

    def checkpoint(self):  # submitit calls it on preemption or at the time limit: requeue as is
        import submitit

        return submitit.helpers.DelayedSubmission(self)


def run_grid(
    configs: Sequence[TrainConfig],
    opts: SlurmOptions,
    done: Callable[[int, dict], None],
    train_one: Callable[..., dict],
) -> None:
    """Train `configs` as Slurm jobs, each job `train_one(config, threads, False)`; `done(i, summary)`
    for each finished run, finished ones first, and for each cell whose job ended without its run
    (recorded as a "failed" run: module docstring) as its job is seen gone."""
    folder = Path(configs[0].out).parent / "slurm"
    recorded = _read_jobs(folder)
    live = _queue(recorded.values())
    if live is None:  # submitting now could run a cell twice
        raise OSError(
            "--launcher slurm: squeue did not answer, so which cells are still queued is "
            "not known; nothing was submitted: rerun the same command"
        )
    todo = []
    for i, c in enumerate(configs):
        run_dir = Path(c.out) / c.run_name
        if runs.is_finished(run_dir):
            done(i, {"name": c.run_name, **(runs.read_summary(run_dir) or {}), "wall_s": 0.0})
        elif live.get(recorded.get(c.run_name, "")) is None:
            todo.append(i)
    mlp = all(c.model.startswith(("resmlp", "plainmlp")) for c in configs)
    if todo:
        executor = _executor(folder / "logs", opts, mlp, name=Path(configs[0].out).parent.name)
        flags = _sbatch_flags(opts, mlp)
        threads = int(flags["cpus_per_task"])  # what each job (each of its processes) is given
        procs = int(flags.get("ntasks_per_node", 1))
        cells = [TrainCell(train_one, configs[i], threads, procs) for i in todo]
        submitted = _submit(executor, cells)
        recorded.update({configs[i].run_name: job for i, job in zip(todo, submitted, strict=True)})
        runs.write_json(folder / JOBS, recorded)
        print(f"  submitted {len(todo)} jobs to Slurm (logs in {folder / 'logs'})", flush=True)
    waiting = {i for i, c in enumerate(configs) if not runs.is_finished(Path(c.out) / c.run_name)}
    failed: list[str] = []
    missing: dict[int, int] = {}  # polls in a row that found a waiting cell's job out of the queue
    last = None
    while waiting:
        queue = _queue(recorded[configs[i].run_name] for i in waiting)
        for i in sorted(waiting):
            c = configs[i]
            run_dir = Path(c.out) / c.run_name
            if runs.is_finished(run_dir):
                waiting.discard(i)
                done(i, {"name": c.run_name, **(runs.read_summary(run_dir) or {}), "wall_s": 0.0})
            elif queue is not None and recorded[c.run_name] not in queue:
                # its job ended, its run did not: seen twice, so that one look between two states
                # of a requeued job is not taken for its end
                missing[i] = missing.get(i, 0) + 1
                if missing[i] < 2:
                    continue
                waiting.discard(i)
                failed.append(c.run_name)
                job = recorded[c.run_name]
                tail, log, why = _log_tail(folder / "logs", job)
                print(f"  {c.run_name}: Slurm job {job} ended without finishing the run; its log "
                      f"{log} ends: {' | '.join(tail) or '(nothing)'}", flush=True)  # fmt: skip
                if why is None:
                    why = tail[-1] if tail else f"no log at {log} (it ended before it started)"
                done(i, _fail(c, job, why))
            else:
                missing.pop(i, None)
        states = list((queue or {}).values())
        counts = (
            len(configs) - len(waiting) - len(failed),
            sum(s == "RUNNING" for s in states),
            sum(s == "PENDING" for s in states),
            len(failed),
        )
        if counts != last and waiting:
            print("  slurm: {} finished, {} running, {} pending, {} failed".format(*counts), flush=True)  # fmt: skip
            last = counts
        if waiting:
            time.sleep(opts.slurm_poll)


def raise_failed(summaries: Sequence[dict]) -> None:
    """CellsFailed naming the cells of a grid whose Slurm jobs failed (`summaries` as the grid's
    training returned them), once the study's report counts them; nothing when none did."""
    failed = [s for s in summaries if s.get("status") == "failed"]
    if failed:
        named = "; ".join(f"{s['name']}: {s.get('error')}" for s in failed)
        raise CellsFailed(
            f"{len(failed)} of {len(summaries)} cells failed on Slurm ({named}); the report counts "
            "them as failed runs; rerun the same command to submit only them again"
        )


def check(opts: SlurmOptions, mlp: bool) -> None:
    """One line before anything is submitted when Slurm is missing or refuses the request (an
    unknown partition, more GPUs than any node has): `sbatch --test-only` with the same options."""
    if shutil.which("sbatch") is None:
        raise ValueError("--launcher slurm: sbatch not found; run on a Slurm login node")
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise ValueError(
            '--launcher slurm needs submitit: pip install -e ".[slurm]" (or pip install submitit)'
        ) from None
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in _sbatch_flags(opts, mlp).items()]
    out = subprocess.run(
        ["sbatch", "--test-only", *flags, "--wrap=true"], capture_output=True, text=True
    )
    if out.returncode != 0:
        why = (out.stderr.strip().splitlines() or ["sbatch failed"])[-1]
        raise ValueError(f"--launcher slurm: Slurm refuses {' '.join(flags)}: {why}")


# ------------------------------------------------------------------------------------ internals


def _sbatch_flags(opts: SlurmOptions, mlp: bool) -> dict[str, str]:
    """The resources every job asks for, as sbatch long options."""
    gpus = opts.slurm_gpus if opts.slurm_gpus is not None else (0 if mlp else 1)
    procs = opts.slurm_procs or max(1, gpus)
    if 0 < gpus < procs:  # process k takes cuda:k
        raise ValueError(f"--slurm-procs {procs} needs a GPU per process; --slurm-gpus is {gpus}")
    flags = {
        "time": str(opts.slurm_time or (60 if mlp else 24 * 60)),
        "cpus_per_task": str(opts.slurm_cpus or (1 if mlp else 8)),
        "partition": opts.slurm_partition,
        "gpus_per_node": str(gpus) if gpus else None,
        "ntasks_per_node": str(procs) if procs > 1 else None,
        "mem": opts.slurm_mem,
        "account": opts.slurm_account,
        "qos": opts.slurm_qos,
        **{k.replace("-", "_"): str(v) for k, v in opts.slurm_sbatch.items()},
    }
    return {k: v for k, v in flags.items() if v is not None}


def _executor(folder: Path, opts: SlurmOptions, mlp: bool, name: str):
    """A submitit SlurmExecutor asking for `_sbatch_flags`; logs in `folder/<job id>/`."""
    import submitit

    executor = submitit.SlurmExecutor(folder=folder / "%j", max_num_timeout=10)
    flags = _sbatch_flags(opts, mlp)
    params = dict(
        job_name=f"reslab-{name}",
        time=int(flags.pop("time")),
        cpus_per_task=int(flags.pop("cpus_per_task")),
        array_parallelism=256,
    )
    for key in ("partition", "mem", "account", "qos"):
        if key in flags:
            params[key] = flags.pop(key)
    for key in ("gpus_per_node", "ntasks_per_node"):
        if key in flags:
            params[key] = int(flags.pop(key))
    if flags:
        params["additional_parameters"] = flags
    executor.update_parameters(**params)
    return executor


def _submit(executor, cells: list[TrainCell]) -> list[str]:
    """Submit the cells as one job array (one job when there is one); their job ids."""
    if len(cells) == 1:
        return [executor.submit(cells[0]).job_id]
    with executor.batch():
        jobs = [executor.submit(cell) for cell in cells]
    return [j.job_id for j in jobs]


def _queue(job_ids) -> dict[str, str] | None:
    """{job id: state} of those of `job_ids` Slurm still holds (pending, running, ...); None when
    squeue could not answer (slurmctld busy or restarting), so that no job is taken to have ended."""
    ids = sorted({j for j in job_ids if j})
    if not ids or shutil.which("squeue") is None:
        return {}
    arrays = sorted({j.split("_")[0] for j in ids})
    out = subprocess.run(
        ["squeue", "-h", "-r", "-o", "%i %T", "-j", ",".join(arrays)],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:  # every job of the list has left the queue: squeue names them invalid
        return {} if "Invalid job id" in out.stderr else None
    states = dict(line.split() for line in out.stdout.splitlines() if line.strip())
    return {j: s for j, s in states.items() if j in ids and s in LIVE}


def _read_jobs(folder: Path) -> dict[str, str]:
    path = folder / JOBS
    if not path.is_file():
        return {}
    jobs = runs.read_json(path)
    if not isinstance(jobs, dict) or not all(isinstance(v, str) for v in jobs.values()):
        raise ValueError(f"{path} is not a {{run name: job id}} object; delete it to resubmit")
    return jobs


# the line of a job's log that says why it ended: Python's exception, or Slurm's word on the job
# (`*** JOB 12 ON node CANCELLED AT ... ***`, DUE TO TIME LIMIT, an oom-kill)
_WHY = re.compile(
    r"^([A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b|.*\*\*\* JOB |.*oom[-_]kill)"
)


def _log_tail(logs: Path, job: str, lines: int = 3) -> tuple[list[str], Path, str | None]:
    """(the last non-blank lines of a job's stderr, submitit's `<job>_0_log.err`; the file; the
    last line of it that says why the job ended, else None)."""
    err = logs / job / f"{job}_0_log.err"
    text = err.read_text(errors="replace") if err.is_file() else ""
    kept = [line.strip() for line in text.splitlines() if line.strip()]
    why = next((line for line in reversed(kept) if _WHY.match(line)), None)
    return kept[-lines:], err, why


def _fail(cfg: TrainConfig, job: str, why: str) -> dict:
    """Record in `cfg`'s run folder that Slurm job `job` ended without finishing it: a "failed"
    summary.json (`runs.UNTRAINED`) with the steps it logged; returns that summary. A job that
    died before it began the run leaves what a run stopped at step 0 leaves (its config, no
    metrics), which the reports read, and the same command resumes."""
    run_dir = Path(cfg.out) / cfg.run_name
    if not (run_dir / runs.CONFIG).is_file():
        runs.write_json(run_dir / runs.CONFIG, cfg.to_dict())
    if not (run_dir / runs.METRICS).is_file():
        atomic.write_text(run_dir / runs.METRICS, "")
    try:  # what it logged before it died (nothing: no metrics, or none readable)
        steps = [r["step"] for r in runs.read_metrics(run_dir / runs.METRICS)]
    except (OSError, ValueError):
        steps = []
    summary = {
        "name": cfg.run_name,
        "model": cfg.model,
        "data": cfg.data,
        "status": "failed",
        "error": f"Slurm job {job}: {why}",
        "steps": max(steps, default=0),
    }
    runs.write_json(run_dir / runs.SUMMARY, summary)
    return {**summary, "wall_s": 0.0}


def launcher_options(opts: dict) -> SlurmOptions:
    """Take the launcher's options out of parsed study options (they change no run's config)."""
    names = {f.name for f in dataclasses.fields(SlurmOptions)}
    return SlurmOptions(**{k: opts.pop(k) for k in list(opts) if k in names})
