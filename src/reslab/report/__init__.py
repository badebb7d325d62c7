"""Reports rebuilt from run folders alone: a self-contained HTML page builder (`html`), shared matplotlib
helpers (`figures`) and one module per study (`degradation`, He et al. 2015 Figs 1 and 6).

`build_any(path)` is what `reslab report <path>` calls: a study folder gets its study's report; any other folder
gets every study below it rebuilt and an `index.html` linking them.
"""

from __future__ import annotations

import json
from pathlib import Path

from reslab.report import degradation, depth, gradients, identity, lesion, shortcuts
from reslab.report.html import build_index

# study kind (study.json "study", else the parent folder name as in runs/<kind>/<name>/) -> report builder
BUILDERS = {"degradation": degradation.build_report}
BUILDERS["depth"] = depth.build_report
BUILDERS["gradients"] = gradients.build_report
BUILDERS["identity"] = identity.build_report
BUILDERS["lesion"] = lesion.build_report
BUILDERS["shortcuts"] = shortcuts.build_report


def study_kind(folder: str | Path) -> str | None:
    """The kind of study held in `folder`, or None if it holds no study.json of a known kind."""
    folder = Path(folder)
    if not (folder / "study.json").is_file():
        return None
    kind = json.loads((folder / "study.json").read_text()).get("study") or folder.parent.name
    return kind if kind in BUILDERS else None


def build_any(path: str | Path) -> Path:
    """Build the report of the study in `path`, or of every study below `path` plus an index; returns the page."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"report path is not a directory: {path}")
    kind = study_kind(path)
    if kind is not None:
        return BUILDERS[kind](path)
    if (path / "study.json").is_file():
        raise ValueError(
            f"{path}/study.json names an unknown study kind; reports exist for {sorted(BUILDERS)}"
        )
    for study_json in sorted(path.rglob("study.json")):
        kind = study_kind(study_json.parent)
        if kind is not None:
            BUILDERS[kind](study_json.parent)
    return build_index(path)


__all__ = ["BUILDERS", "build_any", "build_index", "study_kind"]
