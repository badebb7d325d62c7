"""Report for the shortcut study (He et al. 2016, "Identity Mappings in Deep Residual Networks", Table 1:
shortcut variants; Table 2: activation placements; Fig. 3: training curves).

Works from the study folder alone (it imports nothing from the study): `study.json` and the run
folders `runs/<variant>-s<seed>/` (config.json, metrics.jsonl, summary.json) that
`reslab.studies.shortcuts` writes. `build_report` writes summary.json, bars.png (test error per
variant), curves.png (training loss) and report.html.

Verdict: every variant is judged against the identity shortcut (the original unit) into one of four
classes, and the study's verdict is how many variants land in the class the paper found for them.
Errors are fractions; e = a variant's mean final test error over its finished seeds, e0 the identity's:
    fails          one of its runs diverged, or e > FAIL_RATIO * e0            FAIL_RATIO = 3
    clearly worse  e - e0 > tolerance
    about equal    |e - e0| <= tolerance
    better         e - e0 < -tolerance
    tolerance = max(EQUAL * e0, 2 * pooled seed std of the two)                EQUAL = 0.03
    (pooled as in `reslab.studies.stats`: a variant none of whose runs finished adds no degree of
    freedom)
The margins are relative to e0, so one rule serves CIFAR-10 and the digits alike. FAIL_RATIO: the
paper reports "fail" above 20% test error (Table 1 caption), 3.0x its identity's 6.61%; its worst
variant that trained is 12.86% (1.9x). EQUAL: the paper calls +1.5% (ReLU-only pre-activation at 110
layers) "very similar" and -3.6% (full pre-activation at 110) "improved" (§4.1, Table 2), so the
margin lies between; 3% is also the paper's own run-to-run std (ResNet-1001: 4.89 +- 0.14%, Table 4).

The paper's findings (`FINDINGS`), ResNet-110 column for Table 1 and both columns of Table 2, each its
numbers' class under the rule above (test error %, relative margin to the identity's 6.61 / 5.93):
    variant            ResNet-110                 ResNet-164
    scale-both         12.35  +87%  clearly worse
    scale-shortcut     fail         fails
    gate-exclusive     8.70   +32%  clearly worse
    gate-exclusive-b0  fail         fails
    gate-shortcut      6.91   +4.5% clearly worse
    gate-shortcut-b0   12.86  +95%  clearly worse
    conv-shortcut      12.22  +85%  clearly worse
    dropout-shortcut   fail         fails
    bn-after-add       8.17   +24%  clearly worse      6.50  +9.6% clearly worse
    relu-before-add    7.84   +19%  clearly worse      6.14  +3.5% clearly worse
    relu-preact        6.71   +1.5% about equal        5.91  -0.3% about equal
    full-preact        6.37   -3.6% better             5.46  -7.9% better
These are the paper's words too ("substantially higher", "lags far behind", "poorer", "considerably
worse", "worse", "very similar", "improved by healthy margins"; §3.1, §4.1), except shortcut-only gating
with b_g = -6, which the paper calls "much closer to the ResNet-110 baseline" (than b_g = 0) while
counting it among the multiplicative shortcuts that "hamper information propagation" (§3.2): at +4.5%
no single margin can call it equal and full pre-activation's -3.6% better.

A base made of bottleneck units (study.json "paper_column": 164) is held against the ResNet-164
column where Table 2 has one, otherwise against ResNet-110.
Status: "agrees" (every variant run lands in the paper's class), "mostly_agrees" (more than half do),
"disagrees" (half or fewer), "insufficient" (no identity run finished, one diverged, or no other
variant was run).
Scale note: the verdict box warns when the study is far smaller than the paper's: not CIFAR-10, fewer
residual units than the paper's 54 (ResNet-110 and ResNet-164 both have 54), or fewer than half of
the 64k iterations the CIFAR-10 recipe trains for (He et al. 2015, §4.2).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from reslab.models.variants import VARIANTS
from reslab.report.html import Page, fmt_mean_std, fmt_pct
from reslab.studies.shortcuts.plots import plot_bars, plot_curves, train_lines
from reslab.studies.stats import finite_or_none, mean_std, pooled_std
from reslab.training import runs as rf

FAIL_RATIO = 3.0
EQUAL = 0.03
CLASSES = {"fails": "fails", "worse": "clearly worse", "equal": "about equal", "better": "better"}
# Table 2's ResNet-164 column (%); the ResNet-110 column of both tables is `VARIANTS[v].paper`.
PAPER_164 = {
    "identity": "5.93",
    "bn-after-add": "6.50",
    "relu-before-add": "6.14",
    "relu-preact": "5.91",
    "full-preact": "5.46",
}
FINDINGS: dict[int, dict[str, str]] = {
    110: {
        "scale-both": "worse",
        "scale-shortcut": "fails",
        "gate-exclusive": "worse",
        "gate-exclusive-b0": "fails",
        "gate-shortcut": "worse",
        "gate-shortcut-b0": "worse",
        "conv-shortcut": "worse",
        "dropout-shortcut": "fails",
        "bn-after-add": "worse",
        "relu-before-add": "worse",
        "relu-preact": "equal",
        "full-preact": "better",
    },
    164: {
        "bn-after-add": "worse",
        "relu-before-add": "worse",
        "relu-preact": "equal",
        "full-preact": "better",
    },
}
PAPER_SCALE: dict[str, Any] = {
    "data": "cifar10",
    "units": 54,
    "iters": 64_000,
}  # ResNet-110/164, He et al. 2016
_LABELS = {
    "agrees": ("agrees with the paper", "good"),
    "mostly_agrees": ("mostly agrees with the paper", "neutral"),
    "disagrees": ("disagrees with the paper", "warn"),
    "insufficient": ("insufficient runs", "neutral"),
}


def paper_finding(variant: str, column: int = 110) -> dict:
    """The paper's test error (%, "fail" or None) and class of `variant` in the ResNet-`column`
    column, falling back to ResNet-110 where the paper gives no ResNet-164 number."""
    if column == 164 and variant in PAPER_164:
        error = PAPER_164[variant]
    else:
        column, error = 110, VARIANTS[variant].paper
    return {"column": column, "error": error, "class": FINDINGS[column].get(variant)}


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


def classify(identity: dict, g: dict, equal: float = EQUAL, fail_ratio: float = FAIL_RATIO) -> dict:
    """One variant against identity: margin, relative margin, pooled seed std, tolerance and the
    class (rule in the module docstring)."""
    e0 = identity["test_error_mean"]
    pooled = pooled_std([(x["n"], x["test_error_std"]) for x in (identity, g)])
    tolerance = max(equal * e0, 2 * pooled)
    e = g["test_error_mean"]
    margin = None if e is None else e - e0
    if g["diverged"] or e is None or (e0 > 0 and e > fail_ratio * e0):
        cls = "fails"
    elif margin > tolerance:
        cls = "worse"
    else:
        cls = "better" if margin < -tolerance else "equal"
    return {
        "variant": g["variant"],
        "margin": margin,
        "relative": None if margin is None or e0 == 0 else margin / e0,
        "pooled_std": pooled,
        "tolerance": tolerance,
        "class": cls,
    }


def verdict(runs: list[dict], column: int = 110) -> dict:
    """Judge every variant against the paper's finding for it in the ResNet-`column` column."""
    groups = group_runs(runs)
    by = {g["variant"]: g for g in groups}
    identity = by.get("identity")
    rule = (
        f"vs identity: fails if a run diverged or error > {FAIL_RATIO:g}x identity's; clearly worse "
        f"/ better if higher / lower by more than max({100 * EQUAL:g}% of identity's error, 2 x "
        "pooled seed std); else about equal. Agrees: the class the paper's numbers fall in."
    )
    out = {"rule": rule, "column": column, "equal": EQUAL, "fail_ratio": FAIL_RATIO}
    if identity is None or not identity["n"] or identity["diverged"]:
        text = "Cannot judge: the identity shortcut has no finished run to compare with."
        return {"status": "insufficient", "text": text, "groups": groups, "judged": [], **out}
    judged = []
    for g in groups:
        if g["variant"] != "identity":
            paper = paper_finding(g["variant"], column)
            c = classify(identity, g)
            judged.append(c | {"paper": paper, "agrees": c["class"] == paper["class"]})
    agree = sum(j["agrees"] for j in judged)
    if not judged:
        status = "insufficient"
    elif agree == len(judged):
        status = "agrees"
    else:
        status = "mostly_agrees" if agree > len(judged) / 2 else "disagrees"
    finished = [g for g in groups if g["n"] and not g["diverged"]]
    best = min(finished, key=lambda g: g["test_error_mean"])
    return {
        "status": status,
        "text": _sentence(status, identity, best, judged, column),
        "agree": agree,
        "best": best["variant"],
        "groups": groups,
        "judged": judged,
        **out,
    }


def _delta(j: dict) -> str:
    if j["margin"] is None:
        return "diverged"
    return f"{100 * j['margin']:+.2f} pp, tolerance {100 * j['tolerance']:.2f}"


def _sentence(status: str, identity: dict, best: dict, judged: list[dict], column: int) -> str:
    if status == "insufficient":
        return "Cannot judge: no variant besides identity was run."
    ident = fmt_mean_std(identity["test_error_mean"], identity["test_error_std"])
    agree = sum(j["agrees"] for j in judged)
    text = (
        f"{agree} of {len(judged)} variants land where He et al. 2016 found them (ResNet-{column} "
        f"column, Tables 1-2); identity reaches {ident} test error."
    )
    off = [j for j in judged if not j["agrees"]]
    if off:
        text += " Not as in the paper: " + "; ".join(
            f"{j['variant']} {CLASSES[j['class']]} ({_delta(j)}), paper {_paper_text(j['paper'])}"
            for j in off
        )
        text += "."
    best_err = fmt_mean_std(best["test_error_mean"], best["test_error_std"])
    return text + f" Lowest error: {best['variant']} ({best_err})."


def scale_note(summary: dict) -> str | None:
    """A warning when the study is far smaller than the paper's (rule in the module docstring)."""
    data, units = summary.get("data"), summary.get("base_units")
    iters = max((r["iters"] or 0 for r in summary.get("runs", [])), default=0)
    short = [
        data != PAPER_SCALE["data"],
        units is not None and units < PAPER_SCALE["units"],
        0 < iters < PAPER_SCALE["iters"] / 2,
    ]
    if not any(short):
        return None
    width = f", width {summary['width']}" if summary.get("width") else ""
    what = f"{summary.get('base')}{width}" + (f", {units} residual units" if units else "")
    return (
        f"Far smaller than the paper's experiment: {what} on {data} for {iters:,} iterations, "
        "against ResNet-110/164 (54 units) on CIFAR-10 for 64,000 iterations. The paper's classes "
        "are what these numbers are held against, not a prediction for this scale."
    )


# ---------------------------------------------------------------------------------------- summary


def write_summary(study_dir: str | Path) -> dict:
    """Collect the runs, judge them and write `<study_dir>/summary.json`; returns the summary dict."""
    study_dir = Path(study_dir)
    study = rf.read_study(study_dir, "shortcuts")
    runs, incomplete = collect_runs(study_dir)
    summary: dict[str, Any] = {"study": "shortcuts"}
    summary.update({k: v for k, v in study.items() if k not in ("study", "verdict")})
    summary.update(runs=runs, incomplete=incomplete)
    summary["verdict"] = verdict(runs, int(study.get("paper_column", 110)))
    summary["verdict"]["scale_note"] = scale_note(summary)
    rf.write_json(study_dir / rf.SUMMARY, summary, strict=True)
    return summary


# ---------------------------------------------------------------------------------------- text + html


def _measured(v: dict, name: str) -> str:
    j = next((j for j in v.get("judged", []) if j["variant"] == name), None)
    if j is None:
        return "reference" if name == "identity" else "—"
    rel = "" if j["relative"] is None else f" ({100 * j['relative']:+.1f}%)"
    return CLASSES[j["class"]] + rel


def _paper_text(p: dict) -> str:
    """'clearly worse (6.91%)', 'fails (over 20%)' (Table 1's "fail"), or '6.61%' for identity."""
    error = "over 20%" if p["error"] == "fail" else f"{p['error']}%"
    return error if p["class"] is None else f"{CLASSES[p['class']]} ({error})"


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
    label, tone = _LABELS[v["status"]]
    page = Page(
        "Shortcut and activation variants",
        f"{study_dir.name} · {summary.get('data')} · {summary.get('base')} · He et al. 2016, Tables 1 and 2",
    )
    notes = [n for n in (v.get("scale_note"), v.get("rule", "")) if n]
    page.verdict(label, v["text"], tone, notes)
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
    if summary.get("incomplete"):
        page.paragraph(f"Not finished, left out: {', '.join(summary['incomplete'])}.", small=True)
    page.heading("How the verdict is decided").paragraph(
        f"Every variant is compared with the identity shortcut: it fails if one of its runs diverged "
        f"or its mean test error is over {v['fail_ratio']:g}x the identity's (the paper's 'fail' is "
        "over 20% against 6.61%); it is clearly worse or better when its mean is higher or lower by "
        f"more than max({100 * v['equal']:g}% of the identity's error, 2 × pooled seed std), else "
        "about equal. The paper's numbers fall into the same classes (its column here); a variant "
        "agrees when both classes are the same.",
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
