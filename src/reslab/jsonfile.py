"""JSON files that hold one object (a run's config and summary, a study's record): written
atomically, with NaN and infinity refused where a reader needs valid JSON, in one line naming the
file and the field; read back with a one-line error naming the file when one holds something else.
`reslab.training.runs` says which files these are."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from reslab import atomic


def write_json(path: str | Path, obj: Any, strict: bool = False) -> Path:
    """Write JSON atomically (temp file + rename), so a reader never sees half a file.

    `strict`: refuse NaN/inf (a study summary must be valid JSON for any reader), in one line
    naming the file and the field."""
    try:
        text = json.dumps(obj, indent=2, allow_nan=not strict)
    except ValueError:
        where, value = _not_finite(obj)
        raise ValueError(
            f"cannot write {path}: {where} is {value}, which JSON cannot hold"
        ) from None
    return atomic.write_text(path, text + "\n")


def _not_finite(obj: Any, where: str = "") -> tuple[str, float] | tuple[None, None]:
    """The first NaN or infinity in a JSON-like `obj`, as ("runs[2].train_error", nan)."""
    if isinstance(obj, float) and obj != obj or obj in (float("inf"), float("-inf")):
        return where or "the value", obj
    items = (
        obj.items()
        if isinstance(obj, dict)
        else enumerate(obj)
        if isinstance(obj, (list, tuple))
        else ()
    )
    for k, v in items:
        found = _not_finite(
            v, f"{where}[{k}]" if isinstance(k, int) else f"{where}.{k}".lstrip(".")
        )
        if found[0] is not None:
            return found
    return None, None


# atomically: a failure leaves the old file whole, one line naming it
write_text = atomic.write_text


def read_json(path: str | Path) -> dict:
    """A run or study JSON file, which holds one JSON object; a one-line ValueError naming the file
    when it is not valid JSON or holds something else (a list, a string, a number)."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except ValueError as e:  # UnicodeDecodeError is one too
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    except RecursionError:
        raise ValueError(f"{path} is not valid JSON: nested too deeply") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path} should hold a JSON object, got {_JSON_TYPES.get(type(obj))}")
    return obj


_JSON_TYPES = {
    list: "list",
    str: "string",
    int: "number",
    float: "number",
    bool: "true or false",
    type(None): "null",
}
