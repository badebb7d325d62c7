"""Self-contained HTML pages for study reports, and an index page over a folder of studies.

A `Page` collects blocks (headings, paragraphs, key/value facts, figures, tables, a verdict box) and renders
one file with inline CSS and figures as base64 PNG data URIs: it opens anywhere, offline, with nothing beside it.
All text is HTML-escaped; the only markup that passes through is what the builder itself writes.
`build_index(root)` writes `root/index.html` linking every `report.html` found below `root`, and listing
the single training runs (`reslab train`) found there.
"""

from __future__ import annotations

import base64
import datetime
import html
import json
import math
import os
import re
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from reslab import atomic
from reslab.training import runs

TONES = ("good", "bad", "warn", "neutral")

CSS = """
:root { --ink:#1d2430; --muted:#5b6676; --line:#e3e7ed; --bg:#f6f7f9; --card:#fff;
        --good:#1e7d4f; --bad:#b3261e; --warn:#a86400; --neutral:#3d5a80; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--ink); line-height:1.55;
       font:15px/1.55 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1040px; margin: 0 auto; padding: 32px 24px 48px; }
header h1 { font-size: 28px; margin: 0 0 4px; letter-spacing: -0.01em; }
header p { color: var(--muted); margin: 0 0 24px; }
h2 { font-size: 19px; margin: 32px 0 10px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
h3 { font-size: 16px; margin: 22px 0 8px; }
p { margin: 8px 0; max-width: 78ch; }
p.small, .small { color: var(--muted); font-size: 13px; }
code { font: 13px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background:#eef1f5;
       padding: 1px 4px; border-radius: 4px; }
.verdict { background: var(--card); border: 1px solid var(--line); border-left: 6px solid var(--tone);
           border-radius: 8px; padding: 14px 18px; margin: 8px 0 20px; box-shadow: 0 1px 2px rgba(0,0,0,.04); }
.verdict .label { display:inline-block; color:#fff; background:var(--tone); border-radius: 999px;
                  font-size: 12px; font-weight: 600; letter-spacing: .04em; text-transform: uppercase;
                  padding: 2px 10px; margin-bottom: 6px; }
.verdict p.text { font-size: 16px; margin: 4px 0; }
.verdict ul { margin: 6px 0 0; padding-left: 20px; color: var(--muted); font-size: 13.5px; }
.good { --tone: var(--good); } .bad { --tone: var(--bad); }
.warn { --tone: var(--warn); } .neutral { --tone: var(--neutral); }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 4px 18px; background: var(--card);
           border: 1px solid var(--line); border-radius: 8px; padding: 12px 18px; margin: 10px 0; }
dl.facts dt { color: var(--muted); } dl.facts dd { margin: 0; font-variant-numeric: tabular-nums; }
figure { background: var(--card); border: 1px solid var(--line); border-radius: 8px;
         margin: 14px 0; padding: 12px; }
figure img { display: block; max-width: 100%; height: auto; margin: 0 auto; }
figcaption { color: var(--muted); font-size: 13.5px; margin-top: 8px; }
.table-wrap { overflow-x: auto; margin: 10px 0; }
table { border-collapse: collapse; background: var(--card); border: 1px solid var(--line);
        border-radius: 8px; font-size: 14px; min-width: 60%; }
caption { caption-side: bottom; text-align: left; color: var(--muted); font-size: 13px; padding-top: 6px; }
th, td { padding: 6px 12px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top;
         white-space: nowrap; }
td.wrap { white-space: normal; min-width: 24ch; }
th { background: #eef1f5; font-weight: 600; }
tbody tr:nth-child(even) td { background: #fafbfc; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
a { color: var(--neutral); }
ul.plain { margin: 6px 0; }
details { background: var(--card); border: 1px solid var(--line); border-radius: 8px;
          padding: 8px 18px; margin: 28px 0 0; }
details > summary { cursor: pointer; font-weight: 600; padding: 4px 0; }
footer { color: var(--muted); font-size: 12px; margin-top: 40px; border-top: 1px solid var(--line); padding-top: 10px; }
"""

# Marks how many figures actually decoded, so a headless-browser test can check the page without other tools.
SCRIPT = """
window.addEventListener("load", function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) if (imgs[i].complete && imgs[i].naturalWidth > 0) ok++;
  document.body.dataset.figuresLoaded = ok;
  document.body.dataset.figuresTotal = imgs.length;
});
"""

GENERATOR = '<meta name="generator" content="reslab">'  # marks the pages reslab may rewrite
_NUMERIC = re.compile(r"^[-+\u2212]?\.?\d")


class Link(NamedTuple):
    """A table cell that links to `href` (a relative path or URL)."""

    text: str
    href: str


def fmt_pct(x: float | None, digits: int = 2) -> str:
    """A fraction as a percentage: 0.0612 -> '6.12%'; None or NaN -> '—'."""
    if x is None or not math.isfinite(x):
        return "—"
    return f"{100 * x:.{digits}f}%"


def fmt_num(x: float | None, spec: str = ".3g") -> str:
    """A number in the format `spec`: 0.012345 -> '0.0123'; None or NaN -> '—'."""
    return "—" if x is None or not math.isfinite(x) else format(x, spec)


def fmt_mean_std(mean: float | None, std: float | None, digits: int = 2, pct: bool = True) -> str:
    """'mean ± std' (fractions shown as percentages if `pct`); the ± part is dropped when std is None."""
    if mean is None or not math.isfinite(mean):
        return "—"
    scale, unit = (100.0, "%") if pct else (1.0, "")
    if std is None or not math.isfinite(std):
        return f"{scale * mean:.{digits}f}{unit}"
    return f"{scale * mean:.{digits}f} ± {scale * std:.{digits}f}{unit}"


def fmt_count(n: int | None) -> str:
    """A parameter count in short form: 272474 -> '0.27M', 8400 -> '8.4K'."""
    if n is None:
        return "—"
    if n >= 1e5:  # the ResNet paper's convention: 0.27M, 1.7M
        return f"{n / 1e6:.2f}M"
    if n >= 1e3:
        return f"{n / 1e3:.1f}K"
    return str(n)


def png_data_uri(png: bytes | str | Path) -> str:
    """A PNG (bytes or a file path) as a `data:image/png;base64,...` URI."""
    data = png if isinstance(png, bytes) else Path(png).read_bytes()
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        raise ValueError(
            f"figure is not a PNG file: {png if not isinstance(png, bytes) else 'bytes'}"
        )
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _cell(value: object) -> str:
    if isinstance(value, (list, tuple)) and not isinstance(value, Link):  # one line per item
        return f"<td>{'<br>'.join(html.escape(str(v)) for v in value)}</td>"
    if isinstance(value, Link):
        return f'<td><a href="{html.escape(value.href)}">{html.escape(value.text)}</a></td>'
    text = str(value)
    cls = ' class="num"' if _NUMERIC.match(text) else ' class="wrap"' if len(text) > 60 else ""
    return f"<td{cls}>{html.escape(text)}</td>"


class Page:
    """An HTML report page built block by block; every method returns the page so calls can be chained."""

    def __init__(self, title: str, subtitle: str = ""):
        self.title = title
        self.subtitle = subtitle
        self.blocks: list[str] = []
        self.appendix: list[str] = []  # collapsed, after everything else (`setup`)

    def heading(self, text: str, level: int = 2) -> Page:
        if level not in (2, 3):
            raise ValueError(f"heading level must be 2 or 3 (1 is the page title), got {level}")
        self.blocks.append(f"<h{level}>{html.escape(text)}</h{level}>")
        return self

    def paragraph(self, text: str, small: bool = False) -> Page:
        cls = ' class="small"' if small else ""
        self.blocks.append(f"<p{cls}>{html.escape(text)}</p>")
        return self

    def bullets(self, items: Sequence[str]) -> Page:
        lis = "".join(f"<li>{html.escape(str(i))}</li>" for i in items)
        self.blocks.append(f'<ul class="plain">{lis}</ul>')
        return self

    def facts(self, items: Mapping[str, object]) -> Page:
        """A two-column key/value block (e.g. the study configuration)."""
        rows = "".join(
            f"<dt>{html.escape(str(k))}</dt><dd>{html.escape(str(v))}</dd>"
            for k, v in items.items()
        )
        self.blocks.append(f'<dl class="facts">{rows}</dl>')
        return self

    def figure(
        self, png: bytes | str | Path, caption: str, alt: str = "", max_width: int = 0
    ) -> Page:
        """Embed a PNG (bytes or path) with a caption below it, at most `max_width` CSS pixels wide if set."""
        size = f' style="max-width: min(100%, {int(max_width)}px)"' if max_width else ""
        self.blocks.append(
            f'<figure><img src="{png_data_uri(png)}" alt="{html.escape(alt or caption)}"{size}>'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
        return self

    def table(
        self, header: Sequence[str], rows: Sequence[Sequence[object]], caption: str = ""
    ) -> Page:
        """A table; cells that read as numbers are right-aligned, `Link` cells become links,
        list cells show one item per line."""
        for row in rows:
            if len(row) != len(header):
                raise ValueError(
                    f"table row has {len(row)} cells, header has {len(header)}: {row!r}"
                )
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
        body = "".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in rows)
        cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
        self.blocks.append(
            f'<div class="table-wrap"><table>{cap}<thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>"
        )
        return self

    def verdict(
        self, label: str, text: str, tone: str = "neutral", notes: Sequence[str] = ()
    ) -> Page:
        """A coloured box: a short status `label`, a sentence `text`, and optional smaller `notes`."""
        if tone not in TONES:
            raise ValueError(f"verdict tone must be one of {TONES}, got {tone!r}")
        extra = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
        self.blocks.append(
            f'<section class="verdict {tone}"><span class="label">{html.escape(label)}</span>'
            f'<p class="text">{html.escape(text)}</p>{f"<ul>{extra}</ul>" if extra else ""}</section>'
        )
        return self

    def setup(self, what: str, config: Mapping[str, object], recipe: Mapping | None = None) -> Page:
        """How the study was run, collapsed at the end of the page whenever it is called: a paragraph
        `what`, the study's settings and, when given, the training recipe every run shares."""
        blocks, self.blocks = self.blocks, []
        self.paragraph(what).facts({k: join_values(v) for k, v in config.items()})
        if recipe:
            self.heading("Recipe (every run)", level=3).facts(
                {k: join_values(v) for k, v in recipe.items()}
            )
        inner, self.blocks = self.blocks, blocks
        self.appendix.append(
            "<details><summary>How this was run: configuration and recipe</summary>"
            + "\n".join(inner)
            + "</details>"
        )
        return self

    def render(self) -> str:
        """The whole page as one HTML string."""
        stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
        sub = f"<p>{html.escape(self.subtitle)}</p>" if self.subtitle else ""
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">{GENERATOR}'
            f"<title>{html.escape(self.title)}</title><style>{CSS}</style></head>\n"
            f"<body><main><header><h1>{html.escape(self.title)}</h1>{sub}</header>\n"
            + "\n".join(self.blocks + self.appendix)
            + f"\n<footer>Generated by reslab on {stamp} from the run folders alone.</footer>"
            f"</main><script>{SCRIPT}</script></body></html>\n"
        )

    def write(self, path: str | Path) -> Path:
        """Render and write the page; returns the path."""
        return atomic.write_text(path, self.render())


def join_values(values) -> str:
    """A config value for a facts table: dicts as k=v pairs, sequences comma-separated ("—" if empty)."""
    if isinstance(values, dict):
        return ", ".join(f"{k}={v}" for k, v in values.items())
    if isinstance(values, (list, tuple)):
        return ", ".join(map(str, values)) or "—"
    return str(values)


def _below(path: Path, top: Path) -> bool:
    """Whether `path`, with every link followed, is `top` or lies below it (`top` resolved)."""
    return path.resolve().is_relative_to(top)


def _read_json(path: Path, top: Path) -> dict:
    """A JSON object from a regular file below `top`; {} when it is missing, unreadable, not an
    object or a link out of `top`, so a broken or hostile file blanks its row, not the index."""
    if not (_below(path, top) and path.is_file()):
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _text(value: object) -> str:
    """`value` as text UTF-8 can write: a folder name or a JSON string may hold lone surrogates."""
    return str(value).encode("utf-8", "replace").decode("utf-8")


def _status(study: str, status: str, label: Callable[[str, str], str] | None) -> str:
    if label is not None:
        return label(study, status)
    return status.replace("_", " ")


def _href(path: Path, root: Path) -> str:
    return urllib.parse.quote(os.fsencode(path.relative_to(root).as_posix()))


def _training_runs(root: Path, top: Path) -> list[list[object]]:
    """Index rows of the run folders below `root` outside any study folder: (name linked to its
    metrics.csv or summary.json, model, data, status, steps, final train and test error)."""
    studies = {p.parent for p in root.rglob(runs.STUDY)}
    rows: list[list[object]] = []
    for config in sorted(root.rglob(runs.CONFIG)):
        folder = config.parent
        if not (_below(config, top) and config.is_file()) or studies & {*folder.parents, folder}:
            continue
        summary = _read_json(folder / runs.SUMMARY, top)
        cfg = _read_json(config, top)
        files = [folder / f for f in ("metrics.csv", runs.SUMMARY)]
        target = next((f for f in files if _below(f, top) and f.is_file()), None)
        name = _text(folder.relative_to(root).as_posix())
        status = summary.get("status", "unfinished")
        rows.append(
            [
                Link(name, _href(target, root)) if target else name,
                _text(cfg.get("model", "—")),
                _text(cfg.get("data", "—")),
                _text(status),
                _text(summary.get("steps", "—")),
                fmt_pct(_number(summary.get("final_train_error"))),
                fmt_pct(_number(summary.get("final_test_error"))),
            ]
        )
    return rows


def _number(x: object) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def build_index(root: str | Path, label: Callable[[str, str], str] | None = None) -> Path:
    """Write `root/index.html`: one row per `report.html` found below `root`, with its study and verdict
    (its status in words: `label(study, status)`, default the status key with spaces), then one row
    per training run below `root` that belongs to no study (`reslab train`'s run folders).

    Only regular files that lie below `root` once links are followed are linked or read; links are
    relative and percent-encoded, and every name or text read from disk is shown as text.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"report index root is not a directory: {root}")
    top = root.resolve()
    rows = []
    for report in sorted(root.rglob(runs.REPORT)):
        if not (_below(report, top) and report.is_file()):
            continue  # a link to a page outside `root`
        folder = report.parent
        summary = _read_json(folder / runs.SUMMARY, top)
        study = summary.get("study") or _read_json(folder / runs.STUDY, top).get("study") or "—"
        verdict = summary.get("verdict")
        verdict = verdict if isinstance(verdict, dict) else {}
        href = _href(report, root)
        name = folder.relative_to(root).as_posix() if folder != root else "."
        status, text = verdict.get("status"), verdict.get("text", "")
        shown = "—" if status is None else _status(str(study), str(status), label)
        rows.append([_text(study), Link(_text(name), href), _text(shown), _text(text)])
    single = _training_runs(root, top)
    counts = f"{len(rows)} study report(s) and {len(single)} training run(s) under {top}"
    page = Page("reslab reports", _text(counts))
    if rows:
        page.table(["study", "folder", "status", "verdict"], rows)
    else:
        page.paragraph(
            "No report.html found below this folder yet: run `reslab report <study_dir>` first."
        )
    if single:
        page.heading("Training runs")
        header = ["run", "model", "data", "status", "steps", "train error", "test error"]
        page.table(header, single)
    index = root / "index.html"
    if index.is_symlink():  # writing would replace the file it points to, wherever that is
        raise FileExistsError(f"{index} is a link; it is left as it is")
    if index.is_file() and GENERATOR not in index.read_text(errors="replace"):
        raise FileExistsError(f"{index} exists and was not written by reslab; it is left as it is")
    return page.write(index)
