"""What every study's report.py shares: the head of its summary.json, the opening of its page (the
verdict) and its close (how the verdict is decided, how the study was run)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from reslab.report.html import Page
from reslab.training import runs


def summary_head(
    kind: str, study: Mapping[str, Any], drop: Iterable[str] = (), **first: Any
) -> dict[str, Any]:
    """A study's summary.json before its rows and verdict: `study` = `kind`, the keys in `first`
    (defaults study.json may override), then study.json's keys, less its old verdict and `drop`."""
    skip = {"study", "verdict", *drop}
    return {"study": kind, **first, **{k: v for k, v in study.items() if k not in skip}}


def text_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """`header` and `rows` as plain text, columns right-aligned two spaces apart (the terminal)."""
    rows = [header, *rows]
    widths = [max(len(r[c]) for r in rows) for c in range(len(header))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


def verdict_page(
    folder: Path,
    summary: Mapping[str, Any],
    title: str,
    source: str,
    labels: Mapping[str, tuple[str, str]],
    notes: Sequence[str] = (),
    data: str | None = None,
) -> Page:
    """A study's report page, subtitled "<folder> · <data> · <source>", that opens with its verdict
    (`labels` maps a status to the (label, tone) shown)."""
    verdict = summary["verdict"]
    label, tone = labels[verdict["status"]]
    data = summary.get("data") if data is None else data
    page = Page(title, f"{folder.name} · {data} · {source}")
    return page.verdict(label, verdict["text"], tone, notes)


def finish(
    page: Page,
    folder: Path,
    what: str,
    settings: Mapping[str, Any],
    skip: Iterable[str] = (),
    rule: str | None = None,
) -> Path:
    """Close a study's page and write `<folder>/report.html`: the run folders left out as not
    finished (`settings["incomplete"]`), "How the verdict is decided" (`rule`, when given), then how
    the study was run: `what`, the `settings` (its study.json or summary) less the verdict, the
    recipe, `incomplete` and `skip`, and the recipe every run shares."""
    if settings.get("incomplete"):
        left_out = ", ".join(settings["incomplete"])
        page.paragraph(f"Not finished (no {runs.SUMMARY}), left out: {left_out}.", small=True)
    if rule:
        page.heading("How the verdict is decided").paragraph(rule, small=True)
    recipe = settings.get("recipe") if isinstance(settings.get("recipe"), dict) else None
    hidden = {"verdict", "recipe", "train", "incomplete", *skip}
    page.setup(what, {k: v for k, v in settings.items() if k not in hidden}, recipe)
    return page.write(folder / runs.REPORT)
