"""The run-folder contract: what a training run and a study leave on disk, read and written in one place.

A run folder `<out>/<name>/` holds `config.json` (the resolved TrainConfig), `env.json` (provenance),
`metrics.jsonl` (one JSON object a line: {"kind", "step", ...}), `summary.json` (written last; its
"status" is "completed" or "diverged", or "failed" where a launcher recorded that the job training
it ended without it), `model.safetensors` and `checkpoints/`. A study folder holds
`study.json` (the study's settings), `runs/<cell>/` (one run folder per cell of its grid), `env.json`
(the provenance of the study's command, as a run's, with the date it ended), and what its report
writes: `summary.json`, figures and `report.html`. Each of these JSON files holds one
JSON object, and `read_json` (`reslab.jsonfile`) says so, naming the file, when one does not.

A cell is named `<part>-<part>-...-s<seed>` (e.g. `plain-20-s0`, `residual-64-s2`, `B-s0`);
`cell_name` writes it and `parse_cell` reads it back. No other module spells these file names.

Schemas. A run's summary.json is a `RunSummary`; a study's verdict is a `Verdict` (its status, the
numbers its rule compared and the thresholds it used, the rule and the sentence rendered from them).
study.json and a study's summary.json carry `"schema": SCHEMA`; `upgrade` reads one written by any
earlier reslab (no "schema": version 0) in today's form, so no report patches in old keys itself.
This module imports no torch: the report toolkit and the CLI read run folders through it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

from reslab.jsonfile import read_json, write_json
from reslab.jsonfile import write_text as write_text  # the writers' `runs.write_text`

CONFIG = "config.json"
ENV = "env.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
STUDY = "study.json"
WEIGHTS = "model.safetensors"
CHECKPOINTS = "checkpoints"
RUNS = "runs"  # a study's run folders live in <study>/runs/
REPORT = "report.html"

FINISHED = ("completed", "diverged")
# ended without a trained net: a study counts either against its arm. A "failed" run (its Slurm job
# died: `launch.slurm`) is not finished, so rerunning the study trains it again, from its checkpoint
UNTRAINED = ("diverged", "failed")
LOCK = ".lock"  # held (flock) by the process writing the run; the OS releases it when that process dies

_NAME = re.compile(r"[\w.+=-]+")


class Diverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept.

    `step`: the first step whose loss was not finite (or, when only the weights were, the step whose
    update made them so); `last_finite_loss`: the training loss of the step before it, or None."""

    def __init__(
        self, message: str, step: int | None = None, last_finite_loss: float | None = None
    ):
        super().__init__(message)
        self.step, self.last_finite_loss = step, last_finite_loss

    def __reduce__(self):  # keep the fields across processes (studies train in a process pool)
        return type(self), (str(self), self.step, self.last_finite_loss)


def check_name(name: str, what: str = "name") -> str:
    """`name` if it names one folder (letters, digits and . _ - + =, not "." or "..", at most
    NAME_MAX bytes), else a one-line ValueError: a run or study name must never lead outside its
    --out folder, nor fail only when its folder is made."""
    if not _NAME.fullmatch(name) or set(name) == {"."}:
        raise ValueError(
            f"{what} must be one folder name of letters, digits and . _ - + = (not . or ..), "
            f"got {name!r}"
        )
    if len(name.encode()) > NAME_MAX:
        raise ValueError(
            f"{what} must be at most {NAME_MAX} characters (a folder name), got {len(name)}"
        )
    return name


NAME_MAX = 255  # bytes of one file or folder name (Linux, macOS, Windows)


@contextlib.contextmanager
def lock(run_dir: str | Path, active: bool = True) -> Iterator[None]:
    """Hold `<run_dir>/.lock` while a run is written, so a second process started on the same folder
    stops with one line instead of training into it; released by the OS if this process dies."""
    if not active:
        yield
        return
    import fcntl

    run_dir = Path(run_dir)
    new = [p for p in (run_dir, *run_dir.parents) if not p.exists()]  # folders this call creates
    try:
        run_dir.mkdir(parents=True, exist_ok=True)  # may fail half way: those made are tidied
        with open(run_dir / LOCK, "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise OSError(
                    f"run folder {run_dir} is being written by another reslab process; "
                    "wait for it to finish or pick another --name"
                ) from None
            try:
                yield
            finally:
                if is_finished(run_dir):  # nothing more will be written: no lock file left behind
                    (run_dir / LOCK).unlink(missing_ok=True)
                fcntl.flock(f, fcntl.LOCK_UN)
    finally:
        if new and (not os.path.isdir(run_dir) or [p.name for p in run_dir.iterdir()] == [LOCK]):
            with contextlib.suppress(OSError):  # nothing was written: tidy up
                (run_dir / LOCK).unlink()
            for folder in new:
                with contextlib.suppress(OSError):
                    folder.rmdir()


def metric_lines(path: str | Path) -> list[tuple[int, str]]:
    """(line number, text) of each non-blank line of a metrics.jsonl file; a one-line ValueError for
    a line that is not UTF-8, unless it is the last (torn in mid-write by a kill: its bad bytes
    become U+FFFD, and its readers drop it as they drop any torn last line)."""
    path = Path(path)
    lines = [(i, ln) for i, ln in enumerate(path.read_bytes().split(b"\n"), 1) if ln.strip()]
    out = []
    for k, (i, line) in enumerate(lines):
        try:
            text = line.decode(errors="replace" if k == len(lines) - 1 else "strict")
        except UnicodeDecodeError:
            raise ValueError(f"{path} line {i} is not UTF-8 text") from None
        out.append((i, text))
    return out


def read_metrics(path: str | Path) -> list[dict]:
    """The lines of a metrics.jsonl file (or of `<run_dir>/metrics.jsonl`) as dicts; a torn last
    line (a run still writing, or killed) is skipped, a bad line elsewhere is an error naming it."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS
    lines = metric_lines(path)
    out = []
    for k, (i, line) in enumerate(lines):
        record = metric_record(line)
        if record is not None:
            out.append(record)
        elif k < len(lines) - 1:
            raise ValueError(f"{path} line {i} {NOT_A_RECORD}")
    return out


NOT_A_RECORD = "is not a metrics record (a JSON object with a kind, a step and numbers)"


def metric_record(line: str) -> dict | None:
    """The record a metrics line holds, or None when it holds none: not JSON (or nested past what
    the parser takes), or not an object with a "kind" string, a whole "step" >= 0 and numbers (or
    null) for its other values, as `RunLog.write` writes them."""
    try:
        rec = json.loads(line)
    except (ValueError, RecursionError):
        return None

    def number(v) -> bool:
        return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))

    if not (
        isinstance(rec, dict)
        and isinstance(rec.get("kind"), str)
        and isinstance(rec.get("step"), int)
        and not isinstance(rec["step"], bool)
        and rec["step"] >= 0
        and all(number(v) for k, v in rec.items() if k not in ("kind", "step"))
    ):
        return None
    return rec


# ------------------------------------------------------------------------------------------ run folders


def train_lines(run_dir: str | Path) -> list[dict]:
    """The training lines ("kind": "train") a run logged; none while it has no metrics.jsonl."""
    path = Path(run_dir) / METRICS
    return [ln for ln in read_metrics(path) if ln.get("kind") == "train"] if path.is_file() else []


def read_summary(run_dir: str | Path) -> dict | None:
    """A run's summary.json, or None while it has none (not started, or still training)."""
    path = Path(run_dir) / SUMMARY
    return read_json(path) if path.is_file() else None


def read_config(run_dir: str | Path) -> dict:
    """A run's config.json as a dict ({} when it has none)."""
    path = Path(run_dir) / CONFIG
    return read_json(path) if path.is_file() else {}


def status(run_dir: str | Path) -> str | None:
    """ "completed", "diverged", "failed", or None for a run that has not finished (or is unreadable)."""
    try:
        summary = read_summary(run_dir)
    except (OSError, ValueError):
        return None
    return summary.get("status") if isinstance(summary, dict) else None


def is_finished(run_dir: str | Path) -> bool:
    """Whether the run ended (completed or diverged): rerunning it would change nothing."""
    return status(run_dir) in FINISHED


def diverged_note(run_dir: str | Path) -> str:
    """'<cell> at step N (last finite loss L)' for a run whose training diverged, from its summary;
    '<cell> failed (<why>)' for one whose job failed."""
    run_dir = Path(run_dir)
    summary = read_summary(run_dir) or {}
    if summary.get("status") == "failed":
        return f"{run_dir.name} failed ({summary.get('error', 'no reason recorded')})"
    loss = summary.get("last_finite_loss")
    last = f" (last finite loss {loss:.4g})" if isinstance(loss, (int, float)) else ""
    step = summary.get("diverged_at_step", summary.get("steps", "?"))
    return f"{run_dir.name} at step {step}{last}"


def diverged_at(step: object, loss: object) -> str:
    """'diverged at step N, last finite loss L' (without the loss where the run recorded none)."""
    last = f", last finite loss {loss:.4g}" if isinstance(loss, (int, float)) else ""
    return f"diverged at step {step}{last}"


def run_dirs(study_dir: str | Path) -> list[Path]:
    """The run folders of a study, sorted by name (those under `<study_dir>/runs/`)."""
    root = Path(study_dir) / RUNS
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


# ------------------------------------------------------------------------------------------ cells

_CELL = re.compile(r"^(.+)-s(\d+)$")


def cell_name(*parts: object, seed: int) -> str:
    """The folder name of one cell of a study grid: cell_name("plain", 20, seed=0) == "plain-20-s0"."""
    if not parts or any("/" in str(p) or not str(p) for p in parts):
        raise ValueError(f"cell parts must be non-empty names without '/', got {parts!r}")
    return "-".join(map(str, parts)) + f"-s{int(seed)}"


def parse_cell(name: str, fields: tuple[str, ...]) -> dict | None:
    """The fields of a cell name, or None if it is not one: parse_cell("plain-20-s0", ("arch", "depth"))
    == {"arch": "plain", "depth": 20, "seed": 0}. With one field, the whole prefix is that field
    (so it may contain '-'); with several, the prefix splits on its last len(fields) - 1 dashes and
    a field named "depth" must be an integer."""
    m = _CELL.match(name)
    if not m:
        return None
    values = m[1].rsplit("-", len(fields) - 1) if len(fields) > 1 else [m[1]]
    if len(values) != len(fields):
        return None
    cell: dict[str, Any] = dict(zip(fields, values, strict=True))
    if "depth" in cell:
        if not cell["depth"].isdigit():
            return None
        cell["depth"] = int(cell["depth"])
    cell["seed"] = int(m[2])
    return cell


# ------------------------------------------------------------------------------------------ schemas

SCHEMA = 1  # the version of study.json and of a study's summary.json this reslab writes


class RunSummary(TypedDict, total=False):
    """A run folder's summary.json, written last by the training engine."""

    name: str
    status: str  # "completed", "diverged" or "failed" (its job ended without it; not finished)
    error: str  # "failed" only: why, e.g. "Slurm job 12: <its log's last line>"
    model: str
    data: str
    steps: int  # optimizer steps taken
    params: int
    final_train_error: float | None  # fractions; None where not finite
    final_test_error: float | None
    final_train_loss: float | None
    final_test_loss: float | None
    diverged_at_step: int  # "diverged" only: the first step whose loss was not finite
    last_finite_loss: float | None  # "diverged" only
    time_s: float


@dataclass(frozen=True)
class Verdict:
    """What a study's rule decided from its rows: one of the study's `status` words, the `numbers` it
    compared, the `thresholds` it compared them with, and the `rule` and the `text` rendered from
    those. In summary.json it is one object: status, text, rule, thresholds, then the numbers."""

    status: str
    numbers: dict[str, Any]
    thresholds: dict[str, Any]
    rule: str
    text: str

    def to_json(self) -> dict:
        head = {"status": self.status, "text": self.text, "rule": self.rule}
        return head | {"thresholds": self.thresholds} | self.numbers


# What each study's study.json gained at schema 1 over the folders written before it: the value an
# older folder ran with (degradation: no fit gate; depth: no arm's own training options, the
# default clip, which no arm of it used; shortcuts: a base of basic blocks, held against ResNet-110,
# and the default number of runs trained at once).
_ADDED_IN_1: dict[str, dict[str, Any]] = {
    "degradation": {"fit_gate": 0.0},
    "depth": {"arm_train": {}, "clip": 1.0},
    "shortcuts": {"paper_column": 110, "jobs": 0},
}


# The keys of each verdict of a summary that were thresholds before a Verdict held them apart.
_THRESHOLDS_IN_0: dict[str, dict[str, tuple[str, ...]]] = {
    "degradation": {"verdict": ("floor",)},
    "shortcuts": {"verdict": ("equal", "fail_ratio")},
    "lesion": {"verdict": ("robust", "broken"), "smoothness": ("min_ks", "floor", "cliff")},
    "depth": {"verdict": ("ratio",)},
}


def upgrade(record: dict, kind: str) -> dict:
    """A `kind` study's study.json or summary.json, as written by any reslab, in today's form: its
    kind under "study", the keys added since with the values the older study ran with, renamed keys
    under today's names (gradients: one "seed" became "seeds"; a verdict's thresholds are under
    "thresholds"), and "schema": SCHEMA."""
    out = {"study": kind, **record}
    if out.get("schema", 0) < 1:
        for key, value in _ADDED_IN_1.get(kind, {}).items():
            out.setdefault(key, value)
        if kind == "gradients" and "seed" in out and "seeds" not in out:
            out["seeds"] = [out.pop("seed")]
        for part, keys in _THRESHOLDS_IN_0.get(kind, {}).items():
            v = out.get(part)
            if isinstance(v, dict) and "thresholds" not in v:
                rest = {k: x for k, x in v.items() if k not in keys}
                out[part] = rest | {"thresholds": {k: v[k] for k in keys if k in v}}
    out["schema"] = SCHEMA
    return out


def write_study_summary(study_dir: str | Path, summary: dict) -> dict:
    """Write a study's summary.json (standard JSON: no NaN or inf), stamped with the schema."""
    summary = {**summary, "schema": SCHEMA}
    write_json(Path(study_dir) / SUMMARY, summary, strict=True)
    return summary
