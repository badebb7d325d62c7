"""Report of the shortcut study, from its folder alone (`study.json` and the run folders
`runs/<variant>-s<seed>/`): summary.json, bars.png (test error per variant, He et al. 2016, Tables 1
and 2), curves.png (training loss, cf. its Fig. 3) and report.html; the verdict is `rule.py`'s."""

from __future__ import annotations

from pathlib import Path

from reslab.models.variants import VARIANTS
from reslab.report.html import fmt_mean_std, fmt_num, fmt_pct
from reslab.studies import records
from reslab.studies.pages import finish, summary_head, text_table, verdict_page
from reslab.studies.shortcuts.plots import panel, plot_bars, plot_curves
from reslab.studies.shortcuts.rule import CLASSES, paper_finding, paper_text, scale_note, verdict
from reslab.studies.stats import finite_or_none
from reslab.training import runs as rf

LABELS = {
    "agrees": ("agrees with the paper", "good"),
    "mostly_agrees": ("mostly agrees with the paper", "neutral"),
    "disagrees": ("disagrees with the paper", "warn"),
    "insufficient": ("insufficient runs", "neutral"),
}
ERRORS = ("final_train_error", "final_train_loss", "final_test_error")  # NaN when diverged


def collect_runs(study_dir: str | Path) -> tuple[list[dict], list[str]]:
    """(runs with a summary.json, in the paper's order, run folders without one yet)."""
    return records.collect(
        Path(study_dir),
        ("variant",),
        _run,
        lambda r: (list(VARIANTS).index(r["variant"]), r["seed"]),
        keep=lambda cell: cell["variant"] in VARIANTS,
    )


def _run(run_dir: Path, cell: dict, s: dict) -> dict:
    info = {"status": s.get("status", "completed"), "model": s.get("model")}
    info |= {"params": s.get("params"), "iters": s.get("steps")}
    return cell | info | {k: finite_or_none(s.get(k)) for k in ERRORS}


def write_summary(study_dir: str | Path) -> dict:
    """Collect the runs, judge them and write `<study_dir>/summary.json`; returns the summary dict."""
    study_dir = Path(study_dir)
    study = records.read_study(study_dir, "shortcuts")
    runs, incomplete = collect_runs(study_dir)
    summary = summary_head("shortcuts", study) | {"runs": runs, "incomplete": incomplete}
    summary["verdict"] = verdict(runs, int(study["paper_column"])).to_json()
    summary["verdict"]["scale_note"] = scale_note(summary)
    return rf.write_study_summary(study_dir, summary)


def _rows(v: dict, table: int) -> list[list[str]]:
    """One row per variant of `table` (Table 2's first: identity, as "original")."""
    judged = {j["variant"]: j for j in v.get("judged", [])}
    rows = []
    for g in panel(v["groups"], table):
        name, j = g["variant"], judged.get(g["variant"])
        seeds = f"{g['n']}" + (f" ({len(g['diverged'])} diverged)" if g["diverged"] else "")
        vs, agrees = ("reference" if name == "identity" else "—"), ""
        if j is not None:
            rel = "" if j["relative"] is None else f" ({100 * j['relative']:+.1f}%)"
            vs, agrees = CLASSES[j["class"]] + rel, "yes" if j["agrees"] else "no"
        rows.append(
            [
                "original (identity)" if table == 2 and name == "identity" else name,
                g["formula"],
                fmt_mean_std(g["test_error_mean"], g["test_error_std"]),
                fmt_pct(g["test_error_median"]),
                fmt_mean_std(g["train_error_mean"], g["train_error_std"]),
                fmt_num(g["train_loss_mean"]),
                seeds,
                vs,
                paper_text(paper_finding(name, v["column"])),
                agrees,
            ]
        )
    return rows


HEADER = ["variant", "unit", "test error", "median", "train error", "train loss", "seeds"]
HEADER += ["vs identity", "paper (ResNet-{column}, CIFAR-10)", "agrees"]
TERMINAL = (0, 2, 4, 7, 8, 9)  # the columns `format_table` shows


def format_table(summary: dict) -> str:
    """Both tables and the verdict as plain text, for the terminal."""
    v = summary["verdict"]
    header = [h.format(column=v["column"]) for h in HEADER]
    lines = []
    for table in (1, 2):
        rows = [[row[i] for i in TERMINAL] for row in _rows(v, table)]
        lines += [f"Table {table}", text_table([header[i] for i in TERMINAL], rows), ""]
    lines += [f"verdict: {v['status']}", v["text"]]
    return "\n".join(lines + ([f"note: {v['scale_note']}"] if v.get("scale_note") else []))


def build_report(study_dir: str | Path) -> Path:
    """Write summary.json, bars.png, curves.png and report.html into `study_dir`; returns the report."""
    study_dir = Path(study_dir)
    summary = write_summary(study_dir)
    v, runs = summary["verdict"], summary["runs"]
    bars = plot_bars(v["groups"], study_dir / "bars.png")
    curves = plot_curves(study_dir, v["groups"], runs, study_dir / "curves.png")
    source = f"{summary.get('base')} · He et al. 2016, Tables 1 and 2"
    notes = [n for n in (v.get("scale_note"), v.get("rule", "")) if n]
    title = "Shortcut and activation variants"
    page = verdict_page(study_dir, summary, title, source, LABELS, notes)
    page.heading("Test error per variant").figure(
        bars,
        "Bars: mean test error over seeds, ± one std; dots: single seeds; red crosses: diverged runs. "
        "Dashed line: the identity shortcut (the original unit).",
    )
    page.heading("Training curves").figure(
        curves,
        "Training loss against iterations, mean over seeds (log scale), as the paper's Fig. 3.",
    )
    header = [h.format(column=v["column"]) for h in HEADER]
    page.heading("Table 1: shortcut variants").table(header, _rows(v, 1))
    page.heading("Table 2: activation placements").table(header, _rows(v, 2))
    diverged = [
        rf.diverged_note(study_dir / r["run_dir"]) for r in runs if r["status"] in rf.UNTRAINED
    ]
    if diverged:
        page.paragraph(f'Diverged (the variant counts as "fails"): {"; ".join(diverged)}.')
    rule = (
        f"Declared before the numbers ({__package__}.rule): {v['rule']} (the paper's 'fail' is "
        "over 20% against 6.61%)."
    )
    seeds = ", ".join(map(str, summary.get("seeds", [])))
    what = (
        f"{len(runs)} finished training runs of {summary.get('base')} (width "
        f"{summary.get('width') or 'default'}) on {summary.get('data')}: every unit replaced by one "
        f"variant, the same recipe for all, seeds {seeds}. Errors are final test errors (train "
        "errors in eval mode on the whole training set). The paper's column is He et al. 2016's "
        f"ResNet-{v['column']} on CIFAR-10 (Table 1: ResNet-110, median of 5 runs; Table 2: the "
        f"ResNet-{v['column']} column) with the class its numbers fall in under this study's rule."
    )
    return finish(page, study_dir, what, summary, ("runs",), rule)
