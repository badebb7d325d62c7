"""The shortcut study's verdict, as a pure function of its rows (one per finished run,
`report.collect_runs`): where each variant lands against the identity shortcut, next to where the
paper found it.

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

from typing import Any

import numpy as np

from reslab.models.variants import VARIANTS
from reslab.report.html import fmt_mean_std
from reslab.studies.stats import mean_std, pooled_std, tolerance
from reslab.training.runs import UNTRAINED, Verdict

FAIL_RATIO = 3.0
EQUAL = 0.03
RULE = (
    "vs identity: fails if a run diverged or error > {fail_ratio:g}x identity's; clearly worse / "
    "better if higher / lower by more than max({equal:g}% of identity's error, 2 x pooled seed "
    "std); else about equal. Agrees: the class the paper's numbers fall in."
)
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


def paper_finding(variant: str, column: int = 110) -> dict:
    """The paper's test error (%, "fail" or None) and class of `variant` in the ResNet-`column`
    column, falling back to ResNet-110 where the paper gives no ResNet-164 number."""
    if column == 164 and variant in PAPER_164:
        error = PAPER_164[variant]
    else:
        column, error = 110, VARIANTS[variant].paper
    return {"column": column, "error": error, "class": FINDINGS[column].get(variant)}


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
                "diverged": [r["seed"] for r in rs if r["status"] in UNTRAINED],  # or failed
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
    tol = tolerance(pooled, floor=equal * e0)
    e = g["test_error_mean"]
    margin = None if e is None else e - e0
    if g["diverged"] or margin is None or (e0 > 0 and e > fail_ratio * e0):
        cls = "fails"
    elif margin > tol:
        cls = "worse"
    else:
        cls = "better" if margin < -tol else "equal"
    return {
        "variant": g["variant"],
        "margin": margin,
        "relative": None if margin is None or e0 == 0 else margin / e0,
        "pooled_std": pooled,
        "tolerance": tol,
        "class": cls,
    }


def verdict(runs: list[dict], column: int = 110) -> Verdict:
    """Judge every variant against the paper's finding for it in the ResNet-`column` column: a
    `Verdict` whose numbers are the column, the variants' groups, how each judged variant compares
    ("judged"), how many agree with the paper and the best variant."""
    groups = group_runs(runs)
    by = {g["variant"]: g for g in groups}
    identity = by.get("identity")
    thresholds = {"equal": EQUAL, "fail_ratio": FAIL_RATIO}
    rule = RULE.format(fail_ratio=FAIL_RATIO, equal=100 * EQUAL)
    if identity is None or not identity["n"] or identity["diverged"]:
        text = "Cannot judge: the identity shortcut has no finished run to compare with."
        numbers = {"groups": groups, "judged": [], "column": column}
        return Verdict("insufficient", numbers, thresholds, rule, text)
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
    numbers = {"agree": agree, "best": best["variant"], "groups": groups, "judged": judged}
    text = _sentence(status, identity, best, judged, column)
    return Verdict(status, numbers | {"column": column}, thresholds, rule, text)


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


def _paper_text(p: dict) -> str:
    """'clearly worse (6.91%)', 'fails (over 20%)' (Table 1's "fail"), or '6.61%' for identity."""
    error = "over 20%" if p["error"] == "fail" else f"{p['error']}%"
    return error if p["class"] is None else f"{CLASSES[p['class']]} ({error})"
