"""Report for the shortcut study (He et al. 2016, "Identity Mappings in Deep Residual Networks", Table 1:
shortcut variants; Table 2: activation placements; Fig. 3: training curves).

Works from the study folder alone (it imports nothing from the study): `study.json` and the run
folders `runs/<variant>-s<seed>/` (config.json, metrics.jsonl, summary.json) that
`reslab.studies.shortcuts` writes. `build_report` writes summary.json, bars.png (test error per
variant), curves.png (training loss) and report.html.

The verdict rule, the paper's findings it holds the variants against, and the scale note are in
`rule.py`.
"""

from __future__ import annotations

from pathlib import Path

from reslab.models.variants import VARIANTS
from reslab.report.html import fmt_mean_std, fmt_pct
from reslab.studies import records
from reslab.studies.pages import finish, summary_head, verdict_page
from reslab.studies.shortcuts.plots import plot_bars, plot_curves, train_lines
from reslab.studies.shortcuts.rule import CLASSES, _paper_text, paper_finding, scale_note, verdict
from reslab.studies.stats import finite_or_none
from reslab.training import runs as rf

LABELS = {
    "agrees": ("agrees with the paper", "good"),
    "mostly_agrees": ("mostly agrees with the paper", "neutral"),
    "disagrees": ("disagrees with the paper", "warn"),
    "insufficient": ("insufficient runs", "neutral"),
}


def collect_runs(study_dir: str | Path) -> tuple[list[dict], list[str]]:
    """(runs with a summary.json, run folders without one yet); a diverged run has errors None."""
    study_dir = Path(study_dir)
    runs, incomplete = [], []
    for run_dir in rf.run_dirs(study_dir):
        cell = rf.parse_cell(run_dir.name, ("variant",))
        if not cell or cell["variant"] not in VARIANTS:
            continue
        rel = run_dir.relative_to(study_dir).as_posix()
        s = rf.read_summary(run_dir)
        if s is None:
            incomplete.append(rel)
            continue
        runs.append(
            {
                "variant": cell["variant"],
                "seed": cell["seed"],
                "status": s.get("status", "completed"),
                "model": s.get("model"),
                "params": s.get("params"),
                "iters": s.get("steps"),
                "final_train_error": finite_or_none(s.get("final_train_error")),
                "final_train_loss": finite_or_none(s.get("final_train_loss")),
                "final_test_error": finite_or_none(s.get("final_test_error")),
                "run_dir": rel,
            }
        )
    order = list(VARIANTS)
    runs.sort(key=lambda r: (order.index(r["variant"]), r["seed"]))
    return runs, incomplete


# ---------------------------------------------------------------------------------------- summary


def write_summary(study_dir: str | Path) -> dict:
    """Collect the runs, judge them and write `<study_dir>/summary.json`; returns the summary dict."""
    study_dir = Path(study_dir)
    study = records.read_study(study_dir, "shortcuts")
    runs, incomplete = collect_runs(study_dir)
    summary = summary_head("shortcuts", study)
    summary.update(runs=runs, incomplete=incomplete)
    summary["verdict"] = verdict(runs, int(study["paper_column"])).to_json()
    summary["verdict"]["scale_note"] = scale_note(summary)
    return rf.write_study_summary(study_dir, summary)


# ---------------------------------------------------------------------------------------- text + html


def _measured(v: dict, name: str) -> str:
    j = next((j for j in v.get("judged", []) if j["variant"] == name), None)
    if j is None:
        return "reference" if name == "identity" else "—"
    rel = "" if j["relative"] is None else f" ({100 * j['relative']:+.1f}%)"
    return CLASSES[j["class"]] + rel


def _paper(v: dict, name: str) -> str:
    return _paper_text(paper_finding(name, v["column"]))


def _agrees(v: dict, name: str) -> str:
    j = next((j for j in v.get("judged", []) if j["variant"] == name), None)
    return "" if j is None else "yes" if j["agrees"] else "no"


def _rows(v: dict, table: int) -> list[list]:
    gs = [
        g for g in v["groups"] if g["table"] == table or (table == 2 and g["variant"] == "identity")
    ]
    gs.sort(key=lambda g: g["variant"] != "identity")
    return [
        [
            "original (identity)" if table == 2 and g["variant"] == "identity" else g["variant"],
            g["formula"],
            fmt_mean_std(g["test_error_mean"], g["test_error_std"]),
            fmt_pct(g["test_error_median"]),
            fmt_mean_std(g["train_error_mean"], g["train_error_std"]),
            "—" if g["train_loss_mean"] is None else f"{g['train_loss_mean']:.3g}",
            f"{g['n']}" + (f" ({len(g['diverged'])} diverged)" if g["diverged"] else ""),
            _measured(v, g["variant"]),
            _paper(v, g["variant"]),
            _agrees(v, g["variant"]),
        ]
        for g in gs
    ]


def _header(column: int) -> list[str]:
    return ["variant", "unit", "test error", "median", "train error", "train loss", "seeds",
            "vs identity", f"paper (ResNet-{column}, CIFAR-10)", "agrees"]  # fmt: skip


def _what_was_run(summary: dict) -> str:
    column = summary["verdict"]["column"]
    return (
        f"{len(summary['runs'])} finished training runs of {summary.get('base')} (width "
        f"{summary.get('width') or 'default'}) on {summary.get('data')}: every unit replaced by one "
        "variant, the same recipe for all, seeds "
        f"{', '.join(map(str, summary.get('seeds', [])))}. Errors are final test errors (train "
        "errors in eval mode on the whole training set). The paper's column is He et al. 2016's "
        f"ResNet-{column} on CIFAR-10 (Table 1: ResNet-110, median of 5 runs; Table 2: the "
        f"ResNet-{column} column) with the class its numbers fall in under this study's rule."
    )


def _diverged(study_dir: Path, runs: list[dict]) -> list[str]:
    """'<cell> at step N, last finite loss L' for every diverged run (the loss from its metrics)."""
    out = []
    for r in (r for r in runs if r["status"] == "diverged"):
        losses = [finite_or_none(ln.get("train_loss")) for ln in train_lines(study_dir, r)]
        losses = [x for x in losses if x is not None]
        last = f", last finite loss {losses[-1]:.3g}" if losses else ""
        out.append(f"{Path(r['run_dir']).name} at step {r['iters']}{last}")
    return out


def _write_html(study_dir: Path, summary: dict, bars: Path, curves: Path) -> Path:
    v = summary["verdict"]
    source = f"{summary.get('base')} · He et al. 2016, Tables 1 and 2"
    notes = [n for n in (v.get("scale_note"), v.get("rule", "")) if n]
    page = verdict_page(
        study_dir, summary, "Shortcut and activation variants", source, LABELS, notes
    )
    page.heading("Test error per variant").figure(
        bars,
        "Bars: mean test error over seeds, ± one std; dots: single seeds; red crosses: diverged runs. "
        "Dashed line: the identity shortcut (the original unit).",
    )
    page.heading("Training curves").figure(
        curves,
        "Training loss against iterations, mean over seeds (log scale), as the paper's Fig. 3.",
    )
    header = _header(v["column"])
    page.heading("Table 1: shortcut variants").table(header, _rows(v, 1))
    page.heading("Table 2: activation placements").table(header, _rows(v, 2))
    diverged = _diverged(study_dir, summary["runs"])
    if diverged:
        page.paragraph(f'Diverged (the variant counts as "fails"): {"; ".join(diverged)}.')
    rule = (
        f"Declared before the numbers ({__package__}.rule): {v['rule']} (the paper's 'fail' is "
        "over 20% against 6.61%)."
    )
    return finish(page, study_dir, _what_was_run(summary), summary, ("runs",), rule)


def format_table(summary: dict) -> str:
    """Both tables and the verdict as plain text, for the terminal."""
    v = summary["verdict"]
    lines = []
    for table in (1, 2):
        paper = f"paper (ResNet-{v['column']})"
        head = (
            f"{'variant':<20}{'test error':<18}{'train error':<18}{'vs identity':<24}"
            f"{paper:<26}agrees"
        )
        lines += [f"Table {table}", head, "-" * len(head)]
        for row in _rows(v, table):
            lines.append(f"{row[0]:<20}{row[2]:<18}{row[4]:<18}{row[7]:<24}{row[8]:<26}{row[9]}")
        lines.append("")
    lines += [f"verdict: {v['status']}", v["text"]]
    if v.get("scale_note"):
        lines.append(f"note: {v['scale_note']}")
    return "\n".join(lines)


def build_report(study_dir: str | Path) -> Path:
    """Write summary.json, bars.png, curves.png and report.html into `study_dir`; returns the report."""
    study_dir = Path(study_dir)
    summary = write_summary(study_dir)
    bars = plot_bars(summary["verdict"]["groups"], study_dir / "bars.png")
    curves = plot_curves(study_dir, summary["runs"], study_dir / "curves.png")
    return _write_html(study_dir, summary, bars, curves)
