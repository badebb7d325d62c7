"""Studies: the experiments that make the claims about residual networks visible, one package each.

`NAMES` is the registry: the CLI adds one command per name, `reslab report` finds each study
folder's report through it, and the tests iterate it. A study package `reslab.studies.<name>`
exposes `STUDY` (a `reslab.studies.base.Study`), `make_config(preset, **options)` and `run(cfg)`.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from reslab.training import runs

NAMES = ("degradation", "depth", "gradients", "identity", "landscape", "lesion", "shortcuts")


def get(name: str | None):
    """The `Study` record of a registered study (a ValueError for any other name, or None)."""
    if name not in NAMES:
        raise ValueError(f"unknown study {name!r}; choose from {', '.join(NAMES)}")
    return importlib.import_module(f"reslab.studies.{name}").STUDY


def list_studies() -> list[str]:
    """The names of the registered studies (each is also a `reslab` command)."""
    return list(NAMES)


def run_study(name: str, /, preset: str | None = None, **overrides: Any) -> dict:
    """Run a study as its CLI command does and return its summary (verdict included):
    `run_study("degradation", depths=(4, 16), seeds=(0,))`. Finished runs are reused; the overrides
    are the study's config fields (`name` among them: the study folder's name)."""
    study = get(name)
    return study.run(study.make_config(preset, **overrides))


def study_kind(folder: str | Path) -> str | None:
    """The registered study held in `folder` (its study.json's "study", else the parent folder's
    name as in runs/<study>/<name>/), or None if it holds no study.json of a known kind."""
    folder = Path(folder)
    if not (folder / runs.STUDY).is_file():
        return None
    kind = runs.read_json(folder / runs.STUDY).get("study") or folder.parent.name
    return kind if kind in NAMES else None


def study_folders(path: Path) -> dict[Path, str]:
    """Each study folder at or below `path` and its kind, in the registry's order, then by path."""
    found = [path] if study_kind(path) else [p.parent for p in path.rglob(runs.STUDY)]
    kinds = {p: kind for p in found if (kind := study_kind(p))}
    return dict(sorted(kinds.items(), key=lambda pk: (NAMES.index(pk[1]), pk[0].as_posix())))


def build_report(path: str | Path) -> Path:
    """`reslab report PATH`: the report of the study in `path`, or of every study below `path` plus
    an index page linking them; returns the page written."""
    from reslab.report.html import build_index

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"report path is not a directory: {path}")
    kind = study_kind(path)
    if kind is not None:
        return get(kind).report(path)
    if (path / runs.STUDY).is_file():
        raise ValueError(
            f"{path}/{runs.STUDY} names an unknown study kind; reports exist for {', '.join(NAMES)}"
        )
    found = study_folders(path)
    if not found and not any(path.rglob(runs.CONFIG)):
        raise FileNotFoundError(
            f"no study folder (with a {runs.STUDY}) or run folder below {path}; nothing written"
        )
    for folder, kind in found.items():
        get(kind).report(folder)
    return build_index(path, status_label)


def status_label(study: str, status: str) -> str:
    """A verdict's status key in its study's words (its report's `LABELS`: status -> (label, tone)),
    for the index page; the key with spaces ("not_shown" -> "not shown") where it has none."""
    labels = getattr(get(study).part("report"), "LABELS", {}) if study in NAMES else {}
    return labels[status][0] if status in labels else status.replace("_", " ")
