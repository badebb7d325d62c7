"""Report of the shortcut study, from its folder alone: summary.json, bars.png, curves.png (cf. He
et al. 2016, Fig. 3) and report.html, the shortcut variants (Table 1) apart from the activation
placements (Table 2), each opening with identity; the verdict is `rule.py`'s."""

from __future__ import annotations

from pathlib import Path

import matplotlib

from reslab.models.variants import VARIANTS
from reslab.report import figures
from reslab.report.html import fmt_mean_std, fmt_num, fmt_pct
from reslab.studies import records
from reslab.studies.pages import finish, summary_head, text_table, verdict_page
from reslab.studies.shortcuts.rule import CLASSES, paper_finding, paper_text, scale_note, verdict
from reslab.studies.stats import finite_or_none
from reslab.training import runs as rf

LABELS = {
    "agrees": ("agrees with the paper", "good"),
    "mostly_agrees": ("mostly agrees with the paper", "neutral"),
    "disagrees": ("disagrees with the paper", "warn"),
    "insufficient": ("insufficient runs", "neutral"),
}
HEADER = ["variant", "unit", "test error", "median", "train error", "train loss", "seeds"]
HEADER += ["vs identity", "paper (ResNet-{column}, CIFAR-10)", "agrees"]
TERMINAL = (0, 2, 4, 7, 8, 9)  # the columns `format_table` shows
IDENTITY, OTHER, DIVERGED = figures.ARCH_COLORS["residual"], "#9aa3ad", figures.ARCH_COLORS["plain"]


def _run(run_dir: Path, cell: dict, s: dict) -> dict:
    info = {"status": s.get("status", "completed"), "model": s.get("model")}
    info |= {"params": s.get("params"), "iters": s.get("steps")}
    errors = ("final_train_error", "final_train_loss", "final_test_error")  # NaN when diverged
    return cell | info | {k: finite_or_none(s.get(k)) for k in errors}


def write_summary(study_dir: str | Path) -> dict:
    study_dir = Path(study_dir)
    study = records.read_study(study_dir, "shortcuts")
    runs, incomplete = records.collect(
        study_dir,
        ("variant",),
        _run,
        lambda r: (list(VARIANTS).index(r["variant"]), r["seed"]),
        keep=lambda cell: cell["variant"] in VARIANTS,
    )
    summary = summary_head("shortcuts", study) | {"runs": runs, "incomplete": incomplete}
    summary["verdict"] = verdict(runs, study["paper_column"]).to_json()
    summary["verdict"]["scale_note"] = scale_note(summary)
    return rf.write_study_summary(study_dir, summary)


def _table(v: dict, table: int) -> tuple[list[str], list[list[str]]]:
    """The header and one row per variant of `table` (Table 2's first: identity, as "original")."""
    judged = {j["variant"]: j for j in v["judged"]}
    rows = []
    for g in panel(v["groups"], table):
        name, j = g["variant"], judged.get(g["variant"])
        label = "original (identity)" if table == 2 and name == "identity" else name
        test = fmt_mean_std(g["test_error_mean"], g["test_error_std"])
        train = fmt_mean_std(g["train_error_mean"], g["train_error_std"])
        seeds = f"{g['n']}" + (f" ({len(g['diverged'])} diverged)" if g["diverged"] else "")
        vs, agrees = ("reference" if name == "identity" else "—"), ""
        if j is not None:
            rel = "" if j["relative"] is None else f" ({100 * j['relative']:+.1f}%)"
            vs, agrees = CLASSES[j["class"]] + rel, "yes" if j["agrees"] else "no"
        paper = paper_text(paper_finding(name, v["column"]))
        stats = [test, fmt_pct(g["test_error_median"]), train, fmt_num(g["train_loss_mean"])]
        rows.append([label, g["formula"], *stats, seeds, vs, paper, agrees])
    return [h.format(column=v["column"]) for h in HEADER], rows


def format_table(summary: dict) -> str:
    v, lines = summary["verdict"], []
    for table in (1, 2):
        header, rows = _table(v, table)
        columns = [[row[i] for i in TERMINAL] for row in [header, *rows]]
        lines += [f"Table {table}", text_table(columns[0], columns[1:]), ""]
    lines += [f"verdict: {v['status']}", v["text"]]
    return "\n".join(lines + ([f"note: {v['scale_note']}"] if v.get("scale_note") else []))


def build_report(study_dir: str | Path) -> Path:
    study_dir = Path(study_dir)
    summary = write_summary(study_dir)
    v, runs = summary["verdict"], summary["runs"]
    source = f"{summary['base']} · He et al. 2016, Tables 1 and 2"
    notes = [n for n in (v["scale_note"], v["rule"]) if n]
    page = verdict_page(
        study_dir, summary, "Shortcut and activation variants", source, LABELS, notes
    )
    bars, curves = plot(study_dir, v["groups"], runs)
    page.heading("Test error per variant").figure(
        bars,
        "Bars: mean test error over seeds, ± one std; dots: single seeds; red crosses: diverged runs. "
        "Dashed line: the identity shortcut (the original unit).",
    )
    page.heading("Training curves").figure(
        curves,
        "Training loss against iterations, mean over seeds (log scale), as the paper's Fig. 3.",
    )
    page.heading("Table 1: shortcut variants").table(*_table(v, 1))
    page.heading("Table 2: activation placements").table(*_table(v, 2))
    diverged = [
        rf.diverged_note(study_dir / r["run_dir"]) for r in runs if r["status"] in rf.UNTRAINED
    ]
    if diverged:
        page.paragraph(f'Diverged (the variant counts as "fails"): {"; ".join(diverged)}.')
    rule = (
        f"Declared before the numbers ({__package__}.rule): {v['rule']} (the paper's 'fail' is "
        "over 20% against 6.61%)."
    )
    what = (
        f"{len(runs)} finished training runs of {summary['base']} (width "
        f"{summary['width'] or 'default'}) on {summary['data']}: every unit replaced by one "
        f"variant, the same recipe for all, seeds {', '.join(map(str, summary['seeds']))}. Errors "
        "are final test errors (train errors in eval mode on the whole training set). The paper's "
        f"column is He et al. 2016's ResNet-{v['column']} on CIFAR-10 (Table 1: ResNet-110, median "
        f"of 5 runs; Table 2: the ResNet-{v['column']} column) with the class its numbers fall in "
        "under this study's rule."
    )
    return finish(page, study_dir, what, summary, ("runs",), rule)


def panel(groups: list[dict], table: int) -> list[dict]:
    """The groups of `table`'s variants, identity first (the original unit of both tables)."""
    gs = [g for g in groups if g["table"] == table or g["variant"] == "identity"]
    return sorted(gs, key=lambda g: g["variant"] != "identity")


def plot(study_dir: Path, groups: list[dict], runs: list[dict]) -> tuple[Path, Path]:
    """bars.png (test error per variant) and curves.png (training loss, mean over seeds), by table."""
    top = max([100 * e for g in groups for e in g["test_errors"] if e is not None] + [1.0])
    curves: dict[str, list] = {g["variant"]: [] for g in groups}  # (steps, losses) of each seed
    for r in runs:
        log = rf.train_lines(study_dir / r["run_dir"])  # none when it diverged before logging any
        curves[r["variant"]].append([[ln[k] for ln in log] for k in ("step", "train_loss")])
    titles = ("shortcut variants (Table 1)", "activation placements (Table 2)")
    cmap = matplotlib.colormaps["tab10"]
    with figures.style():
        bars, bar_axes = figures.figure(2, width=5.4, height=4.0, sharey=True)
        lines, line_axes = figures.figure(2, width=5.4, height=3.8, sharey=True)
        for table, ax, lax, title in zip((1, 2), bar_axes, line_axes, titles, strict=True):
            gs = panel(groups, table)
            names = [g["variant"] for g in gs]
            labels = ["original" if table == 2 and n == "identity" else n for n in names]
            for i, (g, name, label) in enumerate(zip(gs, names, labels, strict=True)):
                seeds = [100 * e for e in g["test_errors"] if e is not None]
                if seeds:
                    fill = IDENTITY if name == "identity" else OTHER
                    std = 100 * (g["test_error_std"] or 0)
                    ax.bar(i, 100 * g["test_error_mean"], 0.7, color=fill, yerr=std, capsize=3)
                ax.scatter([i] * len(seeds), seeds, color="#1d2430", s=10, zorder=3)
                if n := len(g["diverged"]):
                    ax.scatter([i] * n, [top * 1.02] * n, marker="x", color=DIVERGED, zorder=3)
                x, y, _ = figures.mean_curve(curves[name])
                if len(x):
                    color, lw = (IDENTITY, 2.4) if name == "identity" else (cmap(i % 10), 1.3)
                    lax.plot(x, figures.smooth(y, 3), color=color, lw=lw, label=label)
            if gs and names[0] == "identity" and gs[0]["test_error_mean"] is not None:
                ax.axhline(100 * gs[0]["test_error_mean"], color=IDENTITY, lw=1, ls="--")
            ax.set_xticks(range(len(gs)))
            ax.set_xticklabels(labels, rotation=40, ha="right")
            ax.set_title(title)
            ax.grid(axis="x", visible=False)
            figures.log_axis(lax)
            lax.set_xlabel("iterations")
            lax.set_title(f"training loss, Table {table} variants")
            if lax.get_legend_handles_labels()[0]:
                lax.legend(fontsize=7)
        figures.percent_axis(bar_axes[0], "test error")
        bar_axes[0].set_ylim(0, top * 1.06)
        line_axes[0].set_ylabel("training loss (mean over seeds)")
        return figures.save(bars, study_dir / "bars.png"), figures.save(
            lines, study_dir / "curves.png"
        )
