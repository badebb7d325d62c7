"""A study's own files, on top of `reslab.training.runs`: study.json, written where a study claims
its folder (`write_study`: a rerun must agree with the settings it holds, and may add cells), and
study.json and summary.json checked where they are read (`read_record`) against the types the
study's config declares and the keys every study adds: a wrong type or a missing key is one line
naming the file and the field, never a traceback or a silently wrong report."""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from reslab import studies
from reslab.training import runs

# Keys of study.json and a study's summary.json beside the study config's fields, with their types.
_RECORD_KEYS: dict[str, Any] = {
    "study": str,
    "schema": int,
    "recipe": dict,
    "reused": int,
    "paper_column": int,
    "base_units": int,
    "arm_models": dict,
    "arm_train": dict,
}
# Keys a study's report reads from study.json without a default (`upgrade` adds them to old ones).
_REQUIRED: dict[str, tuple[str, ...]] = {"shortcuts": ("paper_column",)}


def collect(
    study_dir: Path,
    fields: tuple[str, ...],
    row: Callable[[Path, dict, dict], dict],
    order: Callable[[dict], Any],
    keep: Callable[[dict], bool] | None = None,
    dirs: Iterable[Path] | None = None,
) -> tuple[list[dict], list[str]]:
    """(`row(run_dir, cell, summary)` and its "run_dir" for each run folder with a summary.json,
    sorted by `order`; the folders without one yet), paths relative to `study_dir`. The folders are
    `dirs`, else those under runs/; a cell is the folder's name read as `fields` ({} if it is not
    one); given `keep`, a folder whose name is not a cell that `keep` accepts is skipped."""
    rows, incomplete = [], []
    for run_dir in runs.run_dirs(study_dir) if dirs is None else dirs:
        cell = runs.parse_cell(run_dir.name, fields)
        if keep is not None and (cell is None or not keep(cell)):
            continue
        rel = run_dir.relative_to(study_dir).as_posix()
        summary = runs.read_summary(run_dir)
        if summary is None:
            incomplete.append(rel)
        else:
            rows.append(row(run_dir, cell or {}, summary) | {"run_dir": rel})
    return sorted(rows, key=order), incomplete


def read_study(study_dir: str | Path, kind: str) -> dict:
    """A `kind` study folder's study.json, read and checked (`read_record`), or {} for a folder that
    holds only runs/; a one-line FileNotFoundError when it holds neither."""
    study_dir = Path(study_dir)
    if (study_dir / runs.STUDY).is_file():
        return read_record(study_dir / runs.STUDY, kind)
    if (study_dir / runs.RUNS).is_dir():
        return {}
    raise FileNotFoundError(
        f"not a {kind} study folder (no {runs.STUDY}, no {runs.RUNS}/): {study_dir}"
    )


def read_record(path: str | Path, kind: str) -> dict:
    """A `kind` study's study.json or summary.json (by its file name), in today's form (`upgrade`),
    if each field it holds has the type the study writes there (its config dataclass's fields, then
    the keys every study adds) and no key its report needs is missing; else a one-line ValueError
    naming the file, the field, what it holds and what is allowed. Nothing is written."""
    path = Path(path)
    record = runs.upgrade(runs.read_json(path), kind)
    summary = path.name == runs.SUMMARY
    schema = dict(_RECORD_KEYS)
    if kind in studies.NAMES:  # the config's fields (a dataclass's annotations are its fields)
        schema.update(typing.get_type_hints(studies.get(kind).config))
    if summary:
        schema["verdict"] = dict
    else:
        schema.setdefault("runs", list[str | dict])  # the run folders to read (degradation)
    for key in _REQUIRED.get(kind, ()) + (("verdict",) if summary else ()):
        if key not in record:
            raise ValueError(f"{path} has no {key!r} field; {rebuild(path)}")
    for key, expected in schema.items():
        if key in record and not _is(record[key], expected):
            _wrong(path, key, record[key], expected)
    for key in ("status", "text") if summary else ():
        if not isinstance(record["verdict"].get(key), str):
            _wrong(path, f"verdict.{key}", record["verdict"].get(key, "missing"), str)
    return record


def write_study(
    folder: Path, record: dict, must_match: Sequence[str] = (), grows: Mapping[str, Any] = {}
) -> dict:
    """Write `<folder>/study.json`. If the folder already holds a study, the keys in `must_match`
    must agree (else a one-line ValueError) and the keys in `grows` are extended (`merge`), so a
    rerun may add seeds or depths to a study but not change what its runs share."""
    record = json.loads(json.dumps({**record, "schema": runs.SCHEMA}, default=list))  # as read back
    path = folder / runs.STUDY
    if path.exists():  # read in today's form, whichever reslab wrote it, and checked
        old = read_record(path, record.get("study", ""))
        diff = [k for k in must_match if not _agree(k, old.get(k), record.get(k))]
        if diff:
            raise ValueError(
                f"{folder} holds a study with other settings ({', '.join(diff)}); "
                "rerun with the same options to resume it, or pass --name for a new study"
            )
        record = merge(old, record, **grows)
    folder.mkdir(parents=True, exist_ok=True)
    runs.write_json(path, record)
    return record


def _agree(key: str, old: Any, new: Any) -> bool:
    """Whether a setting in study.json agrees with the new one; two recipes agree on the keys both
    hold, so a folder whose recipe has fewer keys can still be resumed."""
    if key == "recipe" and isinstance(old, dict) and isinstance(new, dict):
        return all(old[k] == new[k] for k in old.keys() & new.keys())
    return old == new


def merge(old: dict, new: dict, **orders: Any) -> dict:
    """The new record, with each named key the union of old and new. A list is kept in the order
    given (a sequence to follow, a sort key, or None: sorted); a dict is merged:
    merge(old, new, seeds=None, archs=ARCHS)."""
    out = {**old, **new}
    for key, order in orders.items():
        both = {*old.get(key, ()), *new.get(key, ())}
        if isinstance(new.get(key), dict):
            out[key] = {**old.get(key, {}), **new[key]}
        elif order is None or callable(order):
            out[key] = sorted(both, key=order)
        else:
            out[key] = [x for x in order if x in both]
    return out


def _is(value: Any, expected: Any) -> bool:
    """Whether a JSON `value` has the type `expected` (a config field's annotation; tuples are
    JSON lists, a float field takes a whole number, no number field takes true or false)."""
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if origin in (typing.Union, types.UnionType):
        return any(_is(value, a) for a in args)
    if expected is Any:
        return True
    if isinstance(value, bool):
        return expected is bool
    if expected is float:
        return isinstance(value, (int, float))
    if origin in (tuple, list):
        return isinstance(value, list) and all(_is(v, args[0] if args else Any) for v in value)
    return isinstance(value, origin or expected)  # dict[str, Any]: any object


def _wrong(path: Path, field: str, value: Any, expected: Any) -> None:
    shown = json.dumps(value, default=str)
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    raise ValueError(
        f"{path}: field {field!r} should be {_describe(expected)}, got {shown}; {rebuild(path)}"
    )


def _describe(expected: Any) -> str:
    """A type as the user sees it: "a list of whole numbers", "text or null"."""
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin in (tuple, list):
        return f"a list of {_PLURAL.get(args[0], 'values') if args else 'values'}"
    return _NAMES.get(origin or expected, getattr(expected, "__name__", str(expected)))


_NAMES = {
    str: "text",
    int: "a whole number",
    float: "a number",
    bool: "true or false",
    dict: "an object",
    type(None): "null",
}
_PLURAL = {str: "texts", int: "whole numbers", float: "numbers", str | dict: "names or objects"}


def rebuild(path: Path) -> str:
    """What to do about a bad study.json or summary.json, for the end of a one-line message."""
    if path.name == runs.SUMMARY:
        return f"`reslab report {path.parent}` writes it anew from the study folder"
    return "fix or restore that field (nothing was written)"
