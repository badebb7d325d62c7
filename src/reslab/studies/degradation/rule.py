"""The degradation study's verdict, as data: `verdict(runs)` is a pure function from the study's
rows (one per finished run, as `report.collect_runs` reads them) to a `Verdict`: its status, the
numbers it compared, the thresholds it used, and the rule (`RULE`) and sentence rendered from them.

Scoring. A run's score is its final training error (a fraction, measured in eval mode on the whole
training set). A run that diverged (or ended without a finite training error) failed to train: it
scores 1.0, every example wrong, and it makes its arm fail at that depth. It is never left out.

Verdict rule (errors are fractions). This is its third form; the history is at the end.
    gates, on the judged arms, before anything else:
        fit          where the study declares a fit gate (the digits preset: FIT = 0.01), the
                     shallowest nets of each arm must end at mean training error <= the gate; a net
                     that cannot fit the training set says nothing about depth
        convergence  per cell, fall = mean over its finished seeds of (training error at the last
                     evaluation at or before 90% of the run - final training error), both on the
                     whole training set in eval mode; a cell with fall > MOVE = 0.005 (0.5 pp,
                     7 of the digits' 1,442 images) is still learning: no verdict. A cell whose
                     error rose is not learning slowly and is judged as it ends; a cell without
                     training-set evaluations (older runs) is named as unchecked, not gated
    per arm, shallowest vs deepest depth measured:
        rise      = mean score(deepest) - mean score(shallowest); the same for the median
        tolerance = max(2 * seed std of the shallowest group, FLOOR)   FLOOR = 0.01 (1 pp, 14 images)
        degrades  = (mean rise > tolerance and median rise > tolerance), or a run of the arm
                    failed at a depth above the shallowest
    at the deepest depth both judged arms reached:
        residual_better = mean plain - mean residual > max(2 * pooled seed std of the two, FLOOR)
    status, in this order:
        insufficient            fewer than two plain depths
        not_fit                 the fit gate failed
        not_converged           the convergence gate failed
        not_shown               plain does not degrade
        plain_degrades          plain degrades; fewer than two residual depths to compare
        shown                   plain degrades, residual does not
        residual_degrades_less  plain degrades; residual degrades too, but no residual run failed, its
                                rise is at most FAR_LESS (a quarter) of plain's, and residual_better
        residual_degrades_too   plain degrades and residual degrades in any other way
The question per arm is whether its deepest nets train worse than seed noise explains, and the noise
is measured where the arm trains reliably, on its shallowest nets: the deep group's own spread is not
noise to forgive, since seeds that train and seeds that do not are the effect itself. The median
keeps one seed from deciding: with three seeds, two must rise (a diverged seed still counts against
its arm on its own, as a failed run). The sample std of one seed is 0, so then only the floor
applies; the arms' comparison at the deepest depth has no reference group, so it pools both (the
usual df-weighted pooled std). He et al.'s own table numbers are one run each: Table 2's ImageNet
top-1 validation errors (plain 18 -> 34 layers: 27.94 -> 28.54%; ResNet: 27.88 -> 25.03%) rise
0.60 pp for plain, inside the floor, so this rule does not call them degradation; the paper rests
that claim on its training curves (Fig. 4, Fig. 6), which it does not tabulate. (Validation errors
are not a training set's fit: the fit gate does not apply to them.)

History: what was declared, and what changed after numbers were seen.
    1. Issue 9: degrades if the mean rise exceeds max(2 * pooled seed std of the shallowest and the
       deepest group, FLOOR). Declared before any run.
    2. Issue 13, revised after numbers were seen: the first three-arm default ended with 64-layer
       residual nets at 8.0, 52.6 and 6.9% against 0% at 4 layers, and the tolerance pooled with that
       spread (37 pp) called it "does not degrade". The tolerance became the shallowest group's
       alone, and residual_degrades_less was added. Revised after the numbers: said so here.
    3. Issue 21, declared before any run of the new recipe and tested on constructed numbers first
       (tests/report/test_report_degradation.py): the fit and convergence gates (the 64-layer
       residual nets of rule 2's run were still falling when the constant-lr recipe stopped) and the
       median beside the mean. Its thresholds (FIT, MOVE) were fixed before the paper-digits recipe
       trained a deep net.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from reslab.report.html import fmt_pct, join_values
from reslab.studies.degradation import ARMS, JUDGED
from reslab.studies.stats import mean_std, pooled_std, tolerance
from reslab.training.runs import Verdict

FLOOR = 0.01
FAR_LESS = 0.25
MOVE = 0.005  # convergence: training error may fall by at most 0.5 pp over the last 10% of a run
FAILED = 1.0  # the score of a run that diverged: every example wrong
RULE = (
    "gates: the shallowest nets of both arms at most {fit} mean training error (fit), no judged "
    "cell's training error falling more than {move} over the last tenth of the run (convergence); "
    "per arm: degrades if mean and median train error(deepest) - (shallowest) > max(2 * seed std "
    "of the shallowest, {floor}) or a run failed deeper than the shallowest; diverged runs score "
    "{score}; far less: rise <= {far_less} x plain rise, none failed, and residual clearly below "
    "plain at the deepest common depth"
)


def failed(run: dict) -> bool:
    """Whether a run failed to train: it diverged, or it ended without a finite training error."""
    return run["final_train_error"] is None or run.get("status") == "diverged"


def score(run: dict) -> float:
    """A run's training error for the verdict; FAILED (1.0) if it failed to train."""
    return FAILED if failed(run) else run["final_train_error"]


def group_runs(runs: list[dict]) -> list[dict]:
    """Per (arm, depth): n runs, seeds, per-seed errors (None: failed), how many failed, the mean,
    median and std over seeds of the scores (a failed run counts as FAILED) and of the finite test
    errors, and `fall`: the mean over its finished seeds of how far the training error fell over the
    last tenth of the run (late - final; None when no seed has a late measurement)."""
    groups = []
    for arm in ARMS:
        for depth in sorted({r["depth"] for r in runs if r["arch"] == arm}):
            rs = [r for r in runs if r["arch"] == arm and r["depth"] == depth]
            scores = [score(r) for r in rs]
            (tr_mean, tr_std) = mean_std(scores)
            test = [r["final_test_error"] for r in rs if r["final_test_error"] is not None]
            te_mean, te_std = mean_std(test)
            falls = [
                r["late_train_error"] - r["final_train_error"]
                for r in rs
                if not failed(r) and r.get("late_train_error") is not None
            ]
            groups.append(
                {
                    "arch": arm,
                    "depth": depth,
                    "n": len(rs),
                    "failed": sum(failed(r) for r in rs),
                    "seeds": [r["seed"] for r in rs],
                    "model": next((r["model"] for r in rs if r["model"]), None),
                    "params": next((r["params"] for r in rs if r["params"] is not None), None),
                    "train_errors": [r["final_train_error"] for r in rs],
                    "test_errors": [r["final_test_error"] for r in rs],
                    "train_error_mean": tr_mean,
                    "train_error_median": float(np.median(scores)) if scores else None,
                    "train_error_std": tr_std,
                    "test_error_mean": te_mean,
                    "test_error_std": te_std,
                    "fall": float(np.mean(falls)) if falls else None,
                }
            )
    return groups


def _compare(gs: list[dict], floor: float) -> dict:
    """Deepest vs shallowest group of one arm: rise of the mean and of the median, the shallow seed
    std (the noise), tolerance, the depths where a run failed, degrades."""
    shallow, deep = gs[0], gs[-1]
    noise = shallow["train_error_std"] or 0.0
    tol = tolerance(noise, floor)
    margin = deep["train_error_mean"] - shallow["train_error_mean"]
    median_margin = deep["train_error_median"] - shallow["train_error_median"]
    lost = [g["depth"] for g in gs[1:] if g["failed"]]
    return {
        "shallow_depth": shallow["depth"],
        "deep_depth": deep["depth"],
        "shallow_mean": shallow["train_error_mean"],
        "deep_mean": deep["train_error_mean"],
        "margin": margin,
        "median_margin": median_margin,
        "noise_std": noise,
        "tolerance": tol,
        "failed_depths": lost,
        "degrades": (margin > tol and median_margin > tol) or bool(lost),
    }


def _deepest(groups: list[dict], floor: float) -> dict | None:
    """The two judged arms at the deepest depth both reached: is residual clearly below plain?"""
    by = {(g["arch"], g["depth"]): g for g in groups if g["n"]}
    common = [d for a, d in by if a == "plain" and ("residual", d) in by]
    if not common:
        return None
    depth = max(common)
    p, r = by["plain", depth], by["residual", depth]
    tol = tolerance(pooled_std([(g["n"], g["train_error_std"]) for g in (p, r)]), floor)
    diff = p["train_error_mean"] - r["train_error_mean"]
    return {
        "depth": depth,
        "plain_mean": p["train_error_mean"],
        "residual_mean": r["train_error_mean"],
        "difference": diff,
        "tolerance": tol,
        "residual_better": diff > tol,
    }


def _gates(groups: list[dict], fit: float | None) -> dict:
    """The two checks before any verdict, on the judged arms. unfit: the arms whose shallowest nets
    end above `fit` mean training error (None: no fit gate). moving: the cells whose training error
    still fell by more than MOVE over the last tenth of the run. unchecked: the cells with no late
    measurement, whose convergence is not known."""
    judged = [g for g in groups if g["arch"] in JUDGED and g["n"]]
    shallowest = {a: min((g for g in judged if g["arch"] == a), key=lambda g: g["depth"])
                  for a in JUDGED if any(g["arch"] == a for g in judged)}  # fmt: skip
    unfit = [
        {"arch": a, "depth": g["depth"], "mean": g["train_error_mean"]}
        for a, g in shallowest.items()
        if fit is not None and g["train_error_mean"] > fit
    ]
    moving = [
        {"arch": g["arch"], "depth": g["depth"], "fall": g["fall"]}
        for g in judged
        if g["fall"] is not None and g["fall"] > MOVE
    ]
    unchecked = [
        f"{g['arch']}-{g['depth']}" for g in judged if g["fall"] is None and not g["failed"]
    ]
    return {"fit": fit, "move": MOVE, "unfit": unfit, "moving": moving, "unchecked": unchecked}


def _status(plain: dict | None, residual: dict | None, deepest: dict | None, gates: dict) -> str:
    if plain is None:
        return "insufficient"
    if gates["unfit"]:
        return "not_fit"
    if gates["moving"]:
        return "not_converged"
    if not plain["degrades"]:
        return "not_shown"
    if residual is None:
        return "plain_degrades"
    if not residual["degrades"]:
        return "shown"
    less = (
        not residual["failed_depths"]
        and residual["margin"] <= FAR_LESS * plain["margin"]
        and deepest is not None
        and deepest["residual_better"]
    )
    return "residual_degrades_less" if less else "residual_degrades_too"


def _clause(arm: str, c: dict) -> str:
    note = (
        f"; it failed to train (diverged) at {join_values(c['failed_depths'])} layers"
        if c["failed_depths"]
        else ""
    )
    return (
        f"the {c['deep_depth']}-layer {arm} net ends at {fmt_pct(c['deep_mean'])} training error vs "
        f"{fmt_pct(c['shallow_mean'])} at {c['shallow_depth']} layers ({100 * c['margin']:+.2f} pp, "
        f"median {100 * c['median_margin']:+.2f} pp, tolerance {100 * c['tolerance']:.2f} pp){note}"
    )


def _gate_sentence(status: str, gates: dict) -> str:
    if status == "not_fit":
        nets = ", ".join(f"the {u['depth']}-layer {u['arch']} nets at {fmt_pct(u['mean'])}"
                         for u in gates["unfit"])  # fmt: skip
        return (
            f"No verdict: the recipe does not fit the shallowest nets ({nets}, where the fit gate "
            f"asks for at most {fmt_pct(gates['fit'])}), so a rise with depth would not be "
            "degradation of a net that can fit the training set."
        )
    cells = ", ".join(
        f"{m['arch']}-{m['depth']} ({100 * m['fall']:.2f} pp)" for m in gates["moving"]
    )
    return (
        f"No verdict: not converged. The training error still fell by more than "
        f"{100 * MOVE:.2f} pp over the last tenth of the run in {cells}; a slow start is not "
        "degradation, so train longer before reading depth against error."
    )


def _sentence(status: str, v: dict) -> str:
    plain, residual, deepest = v["plain"], v["residual"], v["deepest"]
    if status == "insufficient":
        depths = [g["depth"] for g in v["groups"] if g["arch"] == "plain" and g["n"]]
        return (
            f"Cannot judge degradation: plain nets finished at {len(depths)} depth(s) "
            f"({', '.join(map(str, depths)) or 'none'}), at least two are needed."
        )
    if status in ("not_fit", "not_converged"):
        return _gate_sentence(status, v["gates"])
    p = _clause("plain", plain)
    r = _clause("residual", residual) if residual else ""
    text = {
        "shown": f"Degradation shown: {p}, while {r}, "
        + (
            "within the tolerance."
            if residual is None or residual["margin"] <= residual["tolerance"]
            else "within the tolerance in its median though not in its mean: a minority of its "
            "seeds rose, so by the declared rule the arm does not degrade."
        ),
        "residual_degrades_less": f"Plain nets degrade and residual nets far less: {p}, while {r}, "
        f"at most {FAR_LESS:g} of the plain rise.",
        "residual_degrades_too": f"Both degrade: {p}, and {r}, not far less than plain"
        + (
            f" ({residual['margin'] / plain['margin']:.2f} of the plain rise; far less is at most "
            f"{FAR_LESS:g}, with no diverged run and the deepest residual net below plain)."
            if residual and plain["margin"] > 0
            else "."
        ),
        "plain_degrades": f"Plain nets degrade: {p}; fewer than two residual depths finished, so "
        "no residual comparison.",
        "not_shown": f"Degradation not shown: {p}, not above the tolerance in both mean and median"
        + (f"; for comparison {r}." if r else "."),
    }[status]
    if deepest:
        word = "below" if deepest["residual_better"] else "not clearly below"
        text += (
            f" At {deepest['depth']} layers the residual net ({fmt_pct(deepest['residual_mean'])}) is "
            f"{word} the plain net ({fmt_pct(deepest['plain_mean'])})."
        )
    return text


def verdict(runs: list[dict], floor: float = FLOOR, fit: float | None = None) -> Verdict:
    """Judge the study from measured final training errors (rule in the module docstring); `fit`
    is the fit gate (None: none, as for validation errors or early training).

    Returns a `Verdict` whose numbers are "n_train", "plain", "residual", "deepest", "extra",
    "gates", "groups" and "failed": "plain"/"residual" hold the shallowest-vs-deepest comparison (shallow_depth,
    deep_depth, shallow_mean, deep_mean, margin, median_margin, noise_std, tolerance, failed_depths,
    degrades) or None with fewer than two depths; "deepest" the two judged arms at their deepest
    common depth; "extra" the same comparison for the arms not judged (zeroinit); "gates" the fit and
    convergence checks (fit, move, unfit, moving, unchecked); "groups" the per-(arm, depth) stats;
    "failed" the run_dirs of runs that diverged or ended without a finite training error.
    """
    groups = group_runs(runs)
    comps: dict[str, dict | None] = {}
    for arm in ARMS:
        gs = [g for g in groups if g["arch"] == arm and g["n"] > 0]
        comps[arm] = _compare(gs, floor) if len(gs) >= 2 else None
    v: dict[str, Any] = {
        "plain": comps["plain"],
        "residual": comps["residual"],
        "deepest": _deepest(groups, floor),
        "extra": {a: comps[a] for a in ARMS if a not in JUDGED and comps[a] is not None},
        "gates": _gates(groups, fit),
        "groups": groups,
    }
    status = _status(v["plain"], v["residual"], v["deepest"], v["gates"])
    lost = [r["run_dir"] for r in runs if failed(r)]
    n = next((r["n_train"] for r in runs if r.get("n_train")), None)
    numbers = {"n_train": n, **v, "failed": lost}
    thresholds = {"floor": floor, "fit": fit, "move": MOVE, "far_less": FAR_LESS, "score": FAILED}
    return Verdict(status, numbers, thresholds, RULE.format(**thresholds), _text(status, numbers))


def _text(status: str, v: dict) -> str:
    """The verdict's sentence, from its numbers."""
    text = _sentence(status, v)
    if v["failed"]:
        text += (
            f" Failed to train (diverged, or its job failed), scored as {FAILED:.0%} error: "
            f"{', '.join(v['failed'])}."
        )
    zi = v["extra"].get("zeroinit")
    if zi:
        text += (
            f" Extra arm, not judged (its branches start at zero, which a plain net cannot): "
            f"{_clause('zero-init residual', zi)}."
        )
    return text
