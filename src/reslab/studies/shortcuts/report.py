"""Report for the shortcut study (He et al. 2016, "Identity Mappings in Deep Residual Networks", Table 1:
shortcut variants; Table 2: activation placements; Fig. 3: training curves).

Works from the study folder alone (it imports nothing from the study): `study.json` and the run
folders `runs/<variant>-s<seed>/` (config.json, metrics.jsonl, summary.json) that
`reslab.studies.shortcuts` writes. `build_report` writes summary.json, bars.png (test error per
variant), curves.png (training loss) and report.html.

Verdict rule (errors are fractions; test error = `final_test_error`). Every variant is compared with
the identity shortcut, the paper's original unit:
    margin    = mean over seeds(variant) - mean over seeds(identity)
    tolerance = max(2 * pooled seed std of the two, FLOOR)       FLOOR = 0.01 (1 percentage point)
    (pooled as in `reslab.studies.stats`: a variant none of whose runs finished adds no degree of
    freedom)
    worse if margin > tolerance or any of its runs diverged; better if margin < -tolerance; else tied.
Status, from the shortcut variants of Table 1: "shown" (identity worse than none and better than all
others), "identity_not_beaten" (none better, some tied), "identity_beaten" (some variant better),
"insufficient" (no finished identity run or no other variant). The text also names the best variant
overall and compares full pre-activation with the original unit (Table 2).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from reslab.models.variants import VARIANTS
from reslab.report.html import Page, fmt_mean_std, fmt_pct
from reslab.studies.shortcuts.plots import plot_bars, plot_curves, train_lines
from reslab.studies.stats import finite_or_none, mean_std, pooled_std
from reslab.training import runs as rf

FLOOR = 0.01
_LABELS = {
    "shown": ("identity shortcut best", "good"),
    "identity_not_beaten": ("identity not beaten (ties)", "neutral"),
    "identity_beaten": ("identity beaten", "warn"),
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


def group_runs(runs: list[dict]) -> list[dict]:
    """Per variant: seeds, per-seed errors, mean/std/median test and train error, diverged runs."""
    groups = []
    for name, v in VARIANTS.items():
        rs = [r for r in runs if r["variant"] == name]
        if not rs:
            continue
        test = [r["final_test_error"] for r in rs if r["final_test_error"] is not None]
        train = [r["final_train_error"] for r in rs if r["final_train_error"] is not None]
        loss = [r["final_train_loss"] for r in rs if r["final_train_loss"] is not None]
        (te_mean, te_std), (tr_mean, tr_std) = mean_std(test), mean_std(train)
        groups.append(
            {
                "variant": name,
                "table": v.table,
                "formula": v.formula,
                "paper": v.paper,
                "n": len(test),
                "seeds": [r["seed"] for r in rs],
                "diverged": [r["seed"] for r in rs if r["status"] == "diverged"],
                "params": next((r["params"] for r in rs if r["params"]), None),
                "test_errors": [r["final_test_error"] for r in rs],
                "test_error_mean": te_mean,
                "test_error_std": te_std,
                "test_error_median": float(np.median(test)) if test else None,
                "train_error_mean": tr_mean,
                "train_error_std": tr_std,
                "train_loss_mean": float(np.mean(loss)) if loss else None,
            }
        )
    return groups


def compare(identity: dict, g: dict, floor: float = FLOOR) -> dict:
    """One variant against identity: margin, pooled seed std, tolerance and the call."""
    pooled = pooled_std([(x["n"], x["test_error_std"]) for x in (identity, g)])
    tolerance = max(2 * pooled, floor)
    margin = None
    if g["test_error_mean"] is not None:
        margin = g["test_error_mean"] - identity["test_error_mean"]
    if g["diverged"] or margin is None or margin > tolerance:
        call = "worse"
    else:
        call = "better" if margin < -tolerance else "tied"
    return {
        "variant": g["variant"],
        "margin": margin,
        "pooled_std": pooled,
        "tolerance": tolerance,
        "call": call,
    }


def verdict(runs: list[dict], floor: float = FLOOR) -> dict:
    """Judge the study from the measured test errors only (rule in the module docstring)."""
    groups = group_runs(runs)
    by = {g["variant"]: g for g in groups}
    identity = by.get("identity")
    if identity is None or not identity["n"] or identity["diverged"]:
        return {
            "status": "insufficient",
            "text": "Cannot judge: the identity shortcut has no finished run to compare with.",
            "groups": groups,
            "comparisons": [],
            "floor": floor,
        }
    comps = [compare(identity, g, floor) for g in groups if g["variant"] != "identity"]
    t1 = [c for c in comps if VARIANTS[c["variant"]].table == 1]
    calls = {c["call"] for c in t1}
    if not t1:
        status = "insufficient"
    elif "better" in calls:
        status = "identity_beaten"
    else:
        status = "shown" if calls == {"worse"} else "identity_not_beaten"
    finished = [g for g in groups if g["n"] and not g["diverged"]]
    best = min(finished, key=lambda g: g["test_error_mean"])
    return {
        "status": status,
        "text": _sentence(status, identity, best, t1, [c for c in comps if c not in t1]),
        "rule": f"vs identity: worse if diverged or mean test error higher by more than max(2 * pooled "
        f"seed std, {floor}); better if lower by more; else tied",
        "floor": floor,
        "best": best["variant"],
        "groups": groups,
        "comparisons": comps,
    }


def _delta(c: dict) -> str:
    if c["margin"] is None:
        return f"{c['variant']} (diverged)"
    return f"{c['variant']} ({100 * c['margin']:+.2f} pp, tolerance {100 * c['tolerance']:.2f})"


def _sentence(status: str, identity: dict, best: dict, t1: list[dict], t2: list[dict]) -> str:
    if status == "insufficient":
        return "Cannot judge: no shortcut variant besides identity finished."
    ident = fmt_mean_std(identity["test_error_mean"], identity["test_error_std"])
    worse = [c for c in t1 if c["call"] == "worse"]
    tied = [c for c in t1 if c["call"] == "tied"]
    better = [c for c in t1 if c["call"] == "better"]
    head = {
        "shown": "Identity shortcut best beyond seed spread: ",
        "identity_not_beaten": "Identity shortcut not beaten, but not clearly best: ",
        "identity_beaten": "Identity shortcut beaten: ",
    }[status]
    parts = [f"identity reaches {ident} test error; {len(worse)} of {len(t1)} other shortcut variants "
             "are worse beyond seed spread"]  # fmt: skip
    if tied:
        parts.append(f"tied within spread: {', '.join(map(_delta, tied))}")
    if better:
        parts.append(f"better: {', '.join(map(_delta, better))}")
    text = head + "; ".join(parts) + "."
    text += (
        f" Best variant overall: {best['variant']} "
        f"({fmt_mean_std(best['test_error_mean'], best['test_error_std'])})."
    )
    pre = next((c for c in t2 if c["variant"] == "full-preact"), None)
    if pre is not None:
        word = {"better": "better than", "worse": "worse than", "tied": "tied with"}[pre["call"]]
        text += f" Full pre-activation is {word} the original unit: {_delta(pre)}."
    return text


# ---------------------------------------------------------------------------------------- summary


def write_summary(study_dir: str | Path) -> dict:
    """Collect the runs, judge them and write `<study_dir>/summary.json`; returns the summary dict."""
    study_dir = Path(study_dir)
    study = rf.read_study(study_dir, "shortcuts")
    runs, incomplete = collect_runs(study_dir)
    summary = {"study": "shortcuts"}
    summary.update({k: v for k, v in study.items() if k not in ("study", "verdict")})
    summary.update(runs=runs, incomplete=incomplete, verdict=verdict(runs))
    rf.write_json(study_dir / rf.SUMMARY, summary, strict=True)
    return summary


# ---------------------------------------------------------------------------------------- text + html


def _call(comps: list[dict], name: str) -> str:
    c = next((c for c in comps if c["variant"] == name), None)
    if c is None:
        return "reference" if name == "identity" else "—"
    return c["call"] if c["margin"] is None else f"{c['call']} ({100 * c['margin']:+.2f} pp)"


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
            _call(v["comparisons"], g["variant"]),
            g["paper"],
        ]
        for g in gs
    ]


_HEADER = ["variant", "unit", "test error", "median", "train error", "train loss", "seeds",
           "vs identity", "paper (ResNet-110, CIFAR-10)"]  # fmt: skip


def _what_was_run(summary: dict) -> str:
    return (
        f"{len(summary['runs'])} finished training runs of {summary.get('base')} (width "
        f"{summary.get('width') or 'default'}) on {summary.get('data')}: every unit replaced by one "
        "variant, the same recipe for all, seeds "
        f"{', '.join(map(str, summary.get('seeds', [])))}. Errors are final test errors (train "
        "errors in eval mode on the whole training set). The paper's column is He et al. 2016's "
        "ResNet-110 on CIFAR-10 (Table 1: median of 5 runs; Table 2: the ResNet-110 column), for the "
        "ranking, not for the numbers: the data and network here differ."
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
    label, tone = _LABELS[v["status"]]
    page = Page(
        "Shortcut and activation variants",
        f"{study_dir.name} · {summary.get('data')} · {summary.get('base')} · He et al. 2016, Tables 1 and 2",
    )
    page.verdict(label, v["text"], tone, [v.get("rule", "")])
    page.heading("Test error per variant").figure(
        bars,
        "Bars: mean test error over seeds, ± one std; dots: single seeds; red crosses: diverged runs. "
        "Dashed line: the identity shortcut (the original unit).",
    )
    page.heading("Training curves").figure(
        curves,
        "Training loss against iterations, mean over seeds (log scale), as the paper's Fig. 3.",
    )
    page.heading("Table 1: shortcut variants").table(_HEADER, _rows(v, 1))
    page.heading("Table 2: activation placements").table(_HEADER, _rows(v, 2))
    diverged = _diverged(study_dir, summary["runs"])
    if diverged:
        page.paragraph(
            f'Diverged (counted worse than identity, the paper\'s "fail"): {"; ".join(diverged)}.'
        )
    if summary.get("incomplete"):
        page.paragraph(f"Not finished, left out: {', '.join(summary['incomplete'])}.", small=True)
    page.heading("How the verdict is decided").paragraph(
        "Every variant is compared with the identity shortcut: it is worse if one of its runs diverged or its "
        "mean test error is higher by more than max(2 × pooled seed std, "
        f"{100 * v['floor']:g} percentage point), better if lower by as much, else tied. The identity "
        "shortcut is shown best when every other shortcut variant of Table 1 is worse.",
        small=True,
    )
    skip = ("runs", "verdict", "incomplete", "recipe", "train")
    recipe = summary.get("recipe") if isinstance(summary.get("recipe"), dict) else None
    page.setup(_what_was_run(summary), {k: v for k, v in summary.items() if k not in skip}, recipe)
    return page.write(study_dir / rf.REPORT)


def format_table(summary: dict) -> str:
    """Both tables and the verdict as plain text, for the terminal."""
    v = summary["verdict"]
    lines = []
    for table in (1, 2):
        head = (
            f"{'variant':<20}{'test error':<18}{'train error':<18}{'vs identity':<24}{'paper':>7}"
        )
        lines += [f"Table {table}", head, "-" * len(head)]
        for row in _rows(v, table):
            lines.append(f"{row[0]:<20}{row[2]:<18}{row[4]:<18}{row[7]:<24}{row[8]:>7}")
        lines.append("")
    lines += [f"verdict: {v['status']}", v["text"]]
    return "\n".join(lines)


def build_report(study_dir: str | Path) -> Path:
    """Write summary.json, bars.png, curves.png and report.html into `study_dir`; returns the report."""
    study_dir = Path(study_dir)
    summary = write_summary(study_dir)
    bars = plot_bars(summary["verdict"]["groups"], study_dir / "bars.png")
    curves = plot_curves(study_dir, summary["runs"], study_dir / "curves.png")
    return _write_html(study_dir, summary, bars, curves)
