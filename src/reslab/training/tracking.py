"""What a run leaves behind: metrics as JSON lines and as CSV, TensorBoard events (scalars, and the
config with the final numbers as hparams), provenance, summary; and, where a run asks for them, the
same lines in MLflow or W&B (`reslab.training.trackers`).

Only the logging process (rank 0) writes. On resume, metric lines past the checkpoint's step (and a
`final` line, which the resumed run writes anew) are dropped so the file reads as one uninterrupted
run. `metrics.csv` is the same lines as a table (one column per key, empty where a line has none, as
Lightning's CSVLogger writes it), rewritten from the JSON lines whenever the log closes; a study's
`results.csv` is one row per run (`write_results_csv`).
"""

from __future__ import annotations

import csv
import io
import json
import platform
import subprocess
import sys
from pathlib import Path

import torch

import reslab
from reslab import atomic
from reslab.training import allocator, precision, runs, trackers


class RunLog:
    """Appends metrics to `metrics.jsonl` and TensorBoard; a no-op on non-logging ranks."""

    def __init__(
        self,
        run_dir: Path,
        active: bool = True,
        resume_step: int | None = None,
        log_to: str = "",
        config: dict | None = None,
    ):
        """`log_to`: the experiment trackers (`reslab.training.trackers`) that also get the run's
        `config` and every line; their runs open here, before the first step."""
        self.run_dir, self.active = run_dir, active
        self._tb = None
        self.trackers: list[trackers.Tracker] = []
        if not active:
            return
        self.path = run_dir / runs.METRICS
        if resume_step is not None and self.path.exists():
            _truncate_after(self.path, resume_step)
        elif resume_step is None:
            atomic.write_text(self.path, "")
        self.trackers = trackers.open_trackers(log_to, run_dir, config or {})

    def write(self, kind: str, step: int, **values: float) -> None:
        if not self.active:
            return
        line = {"kind": kind, "step": step, **values}
        atomic.append_text(self.path, json.dumps(line) + "\n")
        scalars = {  # what the charts plot: the numbers, less the x-axes other than the step
            k: v for k, v in values.items() if k not in ("epoch", "time") and _number(v)
        }
        tb = self._writer()
        for key, value in scalars.items():
            tb.add_scalar(f"{kind}/{key}", value, step)
        for tracker in self.trackers:
            tracker.log(kind, step, scalars)

    def _writer(self):
        if self._tb is None:
            from torch.utils.tensorboard import SummaryWriter  # slow import: only when logging

            self._tb = SummaryWriter(log_dir=str(self.run_dir))
        return self._tb

    def hparams(self, config: dict, metrics: dict[str, float]) -> None:
        """The run's config and final numbers in TensorBoard's HParams tab (the metrics' tags are
        scalars this log wrote, e.g. "final/test_error"), in the run's own event file."""
        if not self.active:
            return
        from torch.utils.tensorboard.summary import hparams

        writer = self._writer().file_writer
        for part in hparams(trackers.flat_config(config), metrics):
            writer.add_summary(part)

    def close(self, error: BaseException | None = None) -> None:
        """Flush TensorBoard, write metrics.csv, and close the tracker runs: with the summary and
        weights the run folder holds now, or as failed by `error`."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self.active and self.path.exists():
            write_metrics_csv(self.run_dir)
        opened, self.trackers = self.trackers, []
        trackers.finish_all(opened, self.run_dir, error)


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def write_metrics_csv(run_dir: Path) -> Path:
    """`<run_dir>/metrics.csv` from its metrics.jsonl: one row per line, columns kind, step, then
    every other key in the order first seen."""
    rows = runs.read_metrics(run_dir)
    return runs.write_text(run_dir / METRICS_CSV, _csv(rows, ["kind", "step"]))


def write_results_csv(study_dir: Path) -> Path:
    """`<study_dir>/results.csv`: one row per run of a study, its config's model and seed and its
    summary's numbers (final errors and losses, steps, status, time), for a spreadsheet or pandas."""
    rows = []
    for run_dir in runs.run_dirs(study_dir):
        summary = runs.read_summary(run_dir) or {"status": "unfinished"}
        config = runs.read_config(run_dir)
        row = {"run": run_dir.name, "model": config.get("model"), "seed": config.get("seed")}
        row.update({k: v for k, v in summary.items() if not isinstance(v, (dict, list))})
        rows.append(row)
    return runs.write_text(study_dir / RESULTS_CSV, _csv(rows, ["run", "model", "seed"]))


METRICS_CSV = "metrics.csv"
RESULTS_CSV = "results.csv"


def _csv(rows: list[dict], first: list[str]) -> str:
    columns = list(dict.fromkeys([*first, *(k for row in rows for k in row)]))
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def _truncate_after(path: Path, step: int) -> None:
    """Keep the lines up to `step` (a resumed run rewrites what follows). A torn last line (a kill in
    mid-write) is dropped; an unreadable line anywhere else stops the resume and the file is kept."""
    lines = runs.metric_lines(path)  # a line that is not UTF-8 stops here, the file untouched
    keep = []
    for k, (i, line) in enumerate(lines):
        record = runs.metric_record(line)
        if record is None:
            if k == len(lines) - 1:
                break
            raise ValueError(
                f"{path} line {i} {runs.NOT_A_RECORD}; fix or remove that line to resume "
                "(nothing in the run folder was changed)"
            )
        if (
            record["step"] <= step and record.get("kind") != "final"
        ):  # the final line is written anew
            keep.append(line)
    atomic.write_text(path, "".join(line + "\n" for line in keep))  # a kill now loses no line


def provenance(device: torch.device) -> dict:
    """Versions, machine and git commit, for `env.json`."""
    return {
        "reslab": reslab.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else precision.cpu_name(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_family_model": _cpu_family_model(),
        "threads": torch.get_num_threads(),
        "malloc": allocator.current(),
        "git_commit": git_commit(),
        "argv": sys.argv,
    }


def _cpu_family_model() -> str | None:
    """The "25/1" of an x86 CPU's family and model numbers, which tell CPUs of one brand name apart
    ("AMD EPYC" is Zen 3 as 25/1 and Zen 4 as 25/17); None where /proc/cpuinfo does not say."""
    fields = {}
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8", errors="replace"):
            key, _, value = line.partition(":")
            if key.strip() in ("cpu family", "model") and key.strip() not in fields:
                fields[key.strip()] = value.strip()
            if not line.strip():
                break  # the first processor is enough
    except OSError:
        return None
    return f"{fields['cpu family']}/{fields['model']}" if len(fields) == 2 else None


def git_commit() -> str | None:
    """The commit of the reslab source tree, when it is a git checkout."""
    src = Path(reslab.__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
