"""The shortcut study's verdict, a pure function of its run rows: each variant's class against the
identity shortcut under `RULE`, next to the class the paper's own numbers (`PAPER`) fall in under the
same rule (`paper_finding`; Table 2's ResNet-164 column for a base of bottleneck units).

Why these margins: relative to identity's error, one rule serves CIFAR-10 and the digits alike.
FAIL_RATIO: the paper's "fail" is over 20% test error (Table 1 caption), 3.0x its identity's 6.61%;
its worst variant that trained is 12.86% (1.9x). EQUAL: the paper calls +1.5% (ReLU-only
pre-activation at 110 layers) "very similar" and -3.6% (full pre-activation at 110) "improved"
(§4.1, Table 2), so the margin lies between; 3% is also the paper's own run-to-run std (ResNet-1001:
4.89 +- 0.14%, Table 4). The classes so found are the paper's words too ("substantially higher",
"lags far behind", "poorer", "considerably worse", "worse", "very similar", "improved by healthy
margins"; §3.1, §4.1), except shortcut-only gating with b_g = -6, which the paper calls "much closer
to the ResNet-110 baseline" (than b_g = 0) while counting it among the multiplicative shortcuts that
"hamper information propagation" (§3.2): at +4.5% no single margin can call it equal and full
pre-activation's -3.6% better.
"""

from __future__ import annotations

import numpy as np

from reslab.models.variants import VARIANTS
from reslab.report.html import fmt_mean_std
from reslab.studies.shortcuts import TABLE_2
from reslab.studies.stats import mean_std, pooled_std, tolerance
from reslab.training.runs import UNTRAINED, Verdict

FAIL_RATIO = 3.0
EQUAL = 0.03
RULE = (
    f"vs identity: fails if a run diverged or error > {FAIL_RATIO:g}x identity's; clearly worse / "
    f"better if higher / lower by more than max({100 * EQUAL:g}% of identity's error, 2 x pooled "
    "seed std); else about equal. Agrees: the class the paper's numbers fall in."
)
CLASSES = {"fails": "fails", "worse": "clearly worse", "equal": "about equal", "better": "better"}
# He et al. 2016's CIFAR-10 test errors (%; "fail": over 20%): ResNet-110 (Tables 1-2), 164 (Table 2)
PAPER = {
    110: {name: v.paper for name, v in VARIANTS.items()},
    164: dict(zip(("identity", *TABLE_2), ("5.93", "6.50", "6.14", "5.91", "5.46"), strict=True)),
}
PAPER_UNITS, PAPER_ITERS = 54, 64_000  # ResNet-110/164 on CIFAR-10, He et al. 2016


def judge(e0: float, e: float | None, tol: float) -> str:
    """The class of a test error `e` (None: a run diverged) against identity's `e0` (RULE)."""
    if e is None or (e0 > 0 and e > FAIL_RATIO * e0):
        return "fails"
    return "worse" if e - e0 > tol else "better" if e - e0 < -tol else "equal"


def paper_finding(variant: str, column: int = 110) -> dict:
    """The paper's test error (%, "fail") of `variant` in the ResNet-`column` column (else 110) and
    its class under RULE, one run each: the tolerance is EQUAL * identity's (None: identity)."""
    column = column if variant in PAPER[column] else 110
    error, e0 = PAPER[column][variant], float(PAPER[column]["identity"]) / 100
    e = None if error == "fail" else float(error) / 100
    cls = None if variant == "identity" else judge(e0, e, EQUAL * e0)
    return {"column": column, "error": error, "class": cls}


def group_runs(runs: list[dict]) -> list[dict]:
    """One group per variant run, in the paper's order; its stats over the finished seeds."""
    groups = []
    for name, v in VARIANTS.items():
        if not (rs := [r for r in runs if r["variant"] == name]):
            continue
        test = [r["final_test_error"] for r in rs]
        done = [e for e in test if e is not None]
        te, tr = mean_std(test), mean_std([r["final_train_error"] for r in rs])
        groups.append(
            {
                "variant": name,
                "table": v.table,
                "formula": v.formula,
                "n": len(done),
                "seeds": [r["seed"] for r in rs],
                "diverged": [r["seed"] for r in rs if r["status"] in UNTRAINED],
                "params": next((r["params"] for r in rs if r["params"]), None),
                "test_errors": test,
                "test_error_mean": te[0],
                "test_error_std": te[1],
                "test_error_median": float(np.median(done)) if done else None,
                "train_error_mean": tr[0],
                "train_error_std": tr[1],
                "train_loss_mean": mean_std([r["final_train_loss"] for r in rs])[0],
            }
        )
    return groups


def classify(identity: dict, g: dict, column: int = 110) -> dict:
    """One variant's group against identity's (RULE) and the paper's finding for it."""
    e0, e = identity["test_error_mean"], g["test_error_mean"]
    pooled = pooled_std([(x["n"], x["test_error_std"]) for x in (identity, g)])
    tol = tolerance(pooled, floor=EQUAL * e0)
    margin = None if e is None else e - e0
    cls, paper = judge(e0, None if g["diverged"] else e, tol), paper_finding(g["variant"], column)
    return {
        "variant": g["variant"],
        "margin": margin,
        "relative": None if margin is None or e0 == 0 else margin / e0,
        "pooled_std": pooled,
        "tolerance": tol,
        "class": cls,
        "paper": paper,
        "agrees": cls == paper["class"],
    }


def verdict(runs: list[dict], column: int = 110) -> Verdict:
    """Judge every variant against the paper's finding for it in the ResNet-`column` column."""
    groups = group_runs(runs)
    identity = next((g for g in groups if g["variant"] == "identity"), None)
    thresholds = {"equal": EQUAL, "fail_ratio": FAIL_RATIO}
    if identity is None or not identity["n"] or identity["diverged"]:
        text = "Cannot judge: the identity shortcut has no finished run to compare with."
        numbers = {"groups": groups, "judged": [], "column": column}
        return Verdict("insufficient", numbers, thresholds, RULE, text)
    judged = [classify(identity, g, column) for g in groups[1:]]  # identity is the first
    agree, n = sum(j["agrees"] for j in judged), len(judged)
    finished = [g for g in groups if g["n"] and not g["diverged"]]
    best = min(finished, key=lambda g: g["test_error_mean"])
    numbers = dict(agree=agree, best=best["variant"], groups=groups, judged=judged, column=column)
    if not judged:
        text = "Cannot judge: no variant besides identity was run."
        return Verdict("insufficient", numbers, thresholds, RULE, text)
    status = "agrees" if agree == n else "mostly_agrees" if agree > n / 2 else "disagrees"
    ident = fmt_mean_std(identity["test_error_mean"], identity["test_error_std"])
    lowest = fmt_mean_std(best["test_error_mean"], best["test_error_std"])
    off = "; ".join(_off(j) for j in judged if not j["agrees"])
    text = (
        f"{agree} of {n} variants land where He et al. 2016 found them (ResNet-{column} column, "
        f"Tables 1-2); identity reaches {ident} test error."
        + (f" Not as in the paper: {off}." if off else "")
        + f" Lowest error: {best['variant']} ({lowest})."
    )
    return Verdict(status, numbers, thresholds, RULE, text)


def _off(j: dict) -> str:
    """'gate-shortcut about equal (-0.28 pp, tolerance 0.51), paper clearly worse (6.91%)'."""
    delta = "diverged"
    if j["margin"] is not None:
        delta = f"{100 * j['margin']:+.2f} pp, tolerance {100 * j['tolerance']:.2f}"
    return f"{j['variant']} {CLASSES[j['class']]} ({delta}), paper {paper_text(j['paper'])}"


def paper_text(p: dict) -> str:
    """'clearly worse (6.91%)', 'fails (over 20%)' (Table 1's "fail"), or '6.61%' for identity."""
    error = "over 20%" if p["error"] == "fail" else f"{p['error']}%"
    return error if p["class"] is None else f"{CLASSES[p['class']]} ({error})"


def scale_note(summary: dict) -> str | None:
    """A warning when the study is far smaller than the paper's: not CIFAR-10, fewer residual units,
    or fewer than half the iterations of the CIFAR-10 recipe (He et al. 2015, §4.2)."""
    data, units = summary.get("data"), summary.get("base_units")
    iters = max((r["iters"] or 0 for r in summary.get("runs", [])), default=0)
    units_ok = units is None or units >= PAPER_UNITS
    if data == "cifar10" and units_ok and not 0 < iters < PAPER_ITERS / 2:
        return None
    width = f", width {summary['width']}" if summary.get("width") else ""
    what = f"{summary.get('base')}{width}" + (f", {units} residual units" if units else "")
    return (
        f"Far smaller than the paper's experiment: {what} on {data} for {iters:,} iterations, "
        f"against ResNet-110/164 ({PAPER_UNITS} units) on CIFAR-10 for {PAPER_ITERS:,} iterations. "
        "The paper's classes are what these numbers are held against, not a prediction for this "
        "scale."
    )
