"""The lesion study's rules, as pure functions of its lesioned nets (`lesions.json`'s "nets"): is a
residual net robust to deleting blocks where its plain twin breaks (`verdict`), and does its error
rise smoothly with the number deleted (`smoothness_verdict`)?

Verdict rule. For a net with intact test error e0 and chance error c = 1 - 1/classes, deleting blocks
that give error e does damage (e - e0) / (c - e0): 0 is harmless, 1 is as bad as guessing. Per arch,
over every net and every deletable block:
    robust  = median single-deletion damage <= ROBUST (0.1)
    broken  = median single-deletion damage >= BROKEN (0.5)
Status: "shown" (residual robust, plain broken), "not_shown" (residual not robust), "plain_robust_too"
(both robust-ish: plain not broken), "residual_robust" (no plain net measured), "insufficient" (no
residual net, or nothing deletable). Like for like: when the residual and the plain nets differ in
more than their shortcuts (in number of blocks, or in training recipe: any run config setting but
the model and seed, as recorded in lesions.json), the verdict text says in what (`unlike`); Veit et al.
themselves set ResNet-110 against a 15-layer VGG. The multi-deletion curve is summarised by k_half, the smallest
number of deleted blocks at which the mean damage reaches 0.5. A net that diverged in training has no
finite weights: it is not lesioned, so it counts for no arch, and the report names it (cell, step,
last finite loss).

Smoothness rule (summary.json "smoothness", judged on the residual nets; the plain nets' curve is
judged alike for contrast). Veit et al. §4.2: "deleting increasing numbers of residual modules
increases error smoothly" (Fig. 5(a)). The curve is m(k): the mean test error over every random set
of k deleted blocks of every net, with m(0) the mean intact error, at k = 0 and every measured k.
Its spread se(k) is the standard error of that mean (sample std of the pooled errors / sqrt(count),
0 for one value), so the scatter between random sets and between seeds both count. Points a < b
differ beyond the spread when |m(b) - m(a)| > tol(a, b) = max(2 sqrt(se(a)^2 + se(b)^2), FLOOR),
FLOOR = 0.005 (0.5 pp). In this order:
    insufficient  fewer than MIN_KS (4) measured k besides k = 0: too few points to tell a curve
                  from a step
    no_rise       m(k_max) - m(0) <= tol(0, k_max): nothing rises, so there is no shape to judge
    not_monotone  some step falls beyond the spread: m(b) < m(a) - tol(a, b)
    cliff         some step carries more than CLIFF (half) of the whole rise per deleted block:
                  (m(b) - m(a)) / (b - a) > CLIFF * (m(k_max) - m(0))
    smooth        otherwise: non-decreasing within the spread, and no single deleted block makes
                  most of the rise
Why these margins: an ensemble of many paths loses members a few at a time, so its error climbs in
many comparable steps, while a chain breaks at one threshold (a plain net reaches chance at k = 1).
A straight rise over n steps gives each step 1/n of it; a curve shaped like Veit et al.'s Fig. 5(a)
(6.4% intact, about 20% at k = 10, "a severe drop in performance" by k = 20, rising ever faster)
gives its steepest step about a tenth; a step carrying more than half is a threshold, not a slope,
and four steps are the fewest for which "half" tells the two apart. The falls forgiven are noise:
each k draws its own random sets, so neighbouring means scatter by their standard errors (2 of them
is a two-sided 95% band), and never by less than 0.5 pp (one test image of 355 on `digits` is 0.28
pp).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from reslab.report.html import fmt_pct, join_values
from reslab.studies.base import ARCHS
from reslab.studies.stats import tolerance
from reslab.training.runs import Verdict

ROBUST, BROKEN = 0.1, 0.5
MIN_KS, FLOOR, CLIFF = 4, 0.005, 0.5  # the smoothness rule (module docstring)
RULE = (
    "damage = (error - intact) / (chance - intact); residual robust if median single-deletion "
    "damage <= {robust}; plain broken if >= {broken}"
)
SMOOTH_RULE = (
    "m(k) = mean error over the random sets of k deleted blocks (k = 0: intact); smooth if at "
    "least {min_ks} ks are measured, m rises by more than tol = max(2 * combined standard error, "
    "{floor}), no step falls by more than tol, and no step carries more than {cliff:.0%} of the "
    "whole rise per deleted block"
)
_SMOOTH_HEADS = {
    "smooth": "Smooth",
    "cliff": "Not smooth, a cliff",
    "not_monotone": "Not smooth, the error falls",
    "no_rise": "No rise to judge",
    "insufficient": "Cannot judge the shape",
}


def _damage(net: dict, error: float) -> float:
    chance = 1 - 1 / net["num_classes"]
    span = chance - net["intact_error"]
    return (error - net["intact_error"]) / span if span > 0 else math.inf


def arch_stats(nets: list[dict], arch: str) -> dict | None:
    """Single- and multi-deletion statistics of all nets of one arch, or None if there are none."""
    nets = [n for n in nets if n["arch"] == arch]
    if not nets:
        return None
    single = [(n, s) for n in nets for s in n["single"] if s["error"] is not None]
    damage = [_damage(n, s["error"]) for n, s in single]
    rise = [s["error"] - n["intact_error"] for n, s in single]
    worst = max(single, key=lambda ns: ns[1]["error"], default=(None, None))[1]
    by_k: dict[int, list[tuple[float, float]]] = {}
    for n in nets:
        for m in n["multi"]:
            by_k.setdefault(m["k"], []).extend((e, _damage(n, e)) for e in m["errors"])
    multi = [
        {
            "k": k,
            "n": len(v),
            "error_mean": float(np.mean([e for e, _ in v])),
            "error_std": float(np.std([e for e, _ in v])),
            "damage_mean": float(np.mean([d for _, d in v])),
        }
        for k, v in sorted(by_k.items())
    ]
    k_half = next((m["k"] for m in multi if m["damage_mean"] >= 0.5), None)
    return {
        "arch": arch,
        "nets": len(nets),
        "models": sorted({n["model"] for n in nets}),
        "blocks": max(n["blocks"] for n in nets),
        "deletable": len({s["block"] for _, s in single}),
        "intact_error_mean": float(np.mean([n["intact_error"] for n in nets])),
        "single_error_median": float(np.median([s["error"] for _, s in single]))
        if single
        else None,
        "single_error_max": worst["error"] if worst else None,
        "worst_block": worst["block"] if worst else None,
        "single_rise_median": float(np.median(rise)) if rise else None,
        "single_damage_median": float(np.median(damage)) if damage else None,
        "multi": multi,
        "k_half": k_half,
        "max_k": multi[-1]["k"] if multi else None,
    }


def verdict(nets: list[dict], diverged: Sequence[dict] = ()) -> Verdict:
    """Judge the study from the measured errors only (rule in the module docstring); the nets that
    diverged in training are named in the text. Numbers: how unlike the arms are ("unlike") and
    each arm's damage statistics."""
    res, plain = arch_stats(nets, "residual"), arch_stats(nets, "plain")
    if res is None or res["single_damage_median"] is None:
        status = "insufficient"
    elif res["single_damage_median"] > ROBUST:
        status = "not_shown"
    elif plain is None or plain["single_damage_median"] is None:
        status = "residual_robust"
    else:
        status = "shown" if plain["single_damage_median"] >= BROKEN else "plain_robust_too"
    unlike = unlike_arms(nets)
    thresholds = {"robust": ROBUST, "broken": BROKEN}
    text = _sentence(status, res, plain) + _unlike_clause(unlike) + _diverged_clause(diverged)
    numbers = {"unlike": unlike, "residual": res, "plain": plain}
    return Verdict(status, numbers, thresholds, RULE.format(**thresholds), text)


def unlike_arms(nets: list[dict]) -> dict:
    """What, besides the shortcuts, differs between the residual and the plain nets: {"blocks":
    {arch: [counts]}} where their block counts differ, {"recipe": {setting: {arch: [values]}}} for
    every training setting (run config less model and seed) the arms do not share. Nets recorded
    without a recipe (older folders) leave the recipe unknown ("recipe_known": False)."""
    by = {a: [n for n in nets if n["arch"] == a] for a in ARCHS}
    out: dict = {"blocks": {}, "recipe": {}, "recipe_known": True}
    if not all(by.values()):
        return out
    blocks = {a: sorted({n["blocks"] for n in ns}) for a, ns in by.items()}
    if blocks["plain"] != blocks["residual"]:
        out["blocks"] = blocks
    if not all("recipe" in n for n in nets):
        return out | {"recipe_known": False}
    keys = sorted({k for n in nets for k in n["recipe"]})
    for k in keys:
        values = {a: _distinct(n["recipe"].get(k) for n in ns) for a, ns in by.items()}
        if values["plain"] != values["residual"]:
            out["recipe"][k] = values
    return out


def _distinct(values) -> list:
    seen = []
    for v in values:
        if v not in seen:
            seen.append(v)
    return seen


def _unlike_clause(u: dict) -> str:
    parts = []
    if u["blocks"]:
        b = u["blocks"]
        parts.append(
            f"depth ({join_values(b['residual'])} residual blocks against {join_values(b['plain'])} "
            "plain blocks)"
        )
    if u["recipe"]:
        settings = "; ".join(
            f"{k}: residual {join_values(v['residual'])}, plain {join_values(v['plain'])}"
            for k, v in u["recipe"].items()
        )
        parts.append(f"training recipe ({settings})")
    if not parts:
        return ""
    return (
        f" Not like for like: the residual and plain nets differ in {' and '.join(parts)}, not "
        "in their shortcuts alone."
    )


def error_curve(nets: list[dict], arch: str) -> list[tuple[int, float, float]]:
    """(k, mean error, its standard error) of one arch, from k = 0 (the intact nets) over every
    measured k; the errors of every random set of every net are pooled."""
    by_k = {0: [n["intact_error"] for n in nets if n["arch"] == arch]}
    if not by_k[0]:
        return []
    for n in (n for n in nets if n["arch"] == arch):
        for m in n["multi"]:
            by_k.setdefault(m["k"], []).extend(m["errors"])
    return [
        (k, float(np.mean(v)), float(np.std(v, ddof=1) / math.sqrt(len(v))) if len(v) > 1 else 0.0)
        for k, v in sorted(by_k.items())
    ]


def smoothness(nets: list[dict], arch: str = "residual") -> dict:
    """Judge the shape of one arch's multi-deletion curve by the smoothness rule (module docstring).

    "steepest" is the step with the largest rise per deleted block; "worst_fall" the step closest to
    failing the fall test (its fall minus its tolerance is the largest)."""
    pts = error_curve(nets, arch)
    out: dict[str, Any] = {"arch": arch, "ks": [k for k, _, _ in pts[1:]], "rise": None}
    out["steepest"] = None
    out |= {"worst_fall": None, "status": "insufficient"}
    if len(pts) - 1 < MIN_KS:
        return out

    def tol(a: tuple, b: tuple) -> float:
        return tolerance(math.hypot(a[2], b[2]), FLOOR)

    (_, m0, _), (k1, m1, _) = pts[0], pts[-1]
    steps = list(itertools.pairwise(pts))
    a, b = max(steps, key=lambda ab: (ab[1][1] - ab[0][1]) / (ab[1][0] - ab[0][0]))
    rise = m1 - m0
    share = (b[1] - a[1]) / (b[0] - a[0]) / rise if rise > 0 else None
    fa, fb = max(steps, key=lambda ab: ab[0][1] - ab[1][1] - tol(*ab))  # closest to failing
    out |= {
        "intact": m0,
        "k_max": k1,
        "error_at_k_max": m1,
        "rise": rise,
        "rise_tolerance": tol(pts[0], pts[-1]),
        "steepest": {"from": a[0], "to": b[0], "rise": b[1] - a[1], "share_per_block": share},
        "worst_fall": {"from": fa[0], "to": fb[0], "fall": fa[1] - fb[1], "tolerance": tol(fa, fb)},
    }
    if rise <= tol(pts[0], pts[-1]):
        out["status"] = "no_rise"
    elif fa[1] - fb[1] > tol(fa, fb):
        out["status"] = "not_monotone"
    elif share is not None and share > CLIFF:
        out["status"] = "cliff"
    else:
        out["status"] = "smooth"
    return out


def _smooth_clause(s: dict) -> str:
    arch, st = s["arch"], s["status"]
    if st == "insufficient":
        return f"the {arch} error is measured at {len(s['ks'])} values of k, {MIN_KS} needed"
    span = f"{fmt_pct(s['intact'])} intact to {fmt_pct(s['error_at_k_max'])} at k = {s['k_max']}"
    step = s["steepest"]
    steepest = (
        f"its steepest step (k = {step['from']} → {step['to']}) carries "
        f"{step['share_per_block']:.0%} of the rise per deleted block (limit {CLIFF:.0%})"
    )
    if st == "no_rise":
        return (
            f"the {arch} error goes from {span}, within the spread "
            f"(tolerance {100 * s['rise_tolerance']:.2f} pp)"
        )
    if st == "not_monotone":
        f = s["worst_fall"]
        return (
            f"the {arch} error falls by {100 * f['fall']:.2f} pp from k = {f['from']} to {f['to']}, "
            f"beyond the spread (tolerance {100 * f['tolerance']:.2f} pp)"
        )
    return f"the {arch} error rises from {span}; {steepest}"


def smoothness_verdict(nets: list[dict]) -> Verdict:
    """summary.json's "smoothness": the residual curve's status, and the plain curve's for contrast."""
    res, plain = smoothness(nets, "residual"), smoothness(nets, "plain")
    text = f"{_SMOOTH_HEADS[res['status']]} (Veit et al. Fig. 5(a)): {_smooth_clause(res)}."
    if plain["ks"]:
        text += f" Plain net: {plain['status'].replace('_', ' ')}, {_smooth_clause(plain)}."
    thresholds = {"min_ks": MIN_KS, "floor": FLOOR, "cliff": CLIFF}
    numbers = {"residual": res, "plain": plain}
    return Verdict(res["status"], numbers, thresholds, SMOOTH_RULE.format(**thresholds), text)


def _single_clause(arch: str, s: dict) -> str:
    return (
        f"deleting one block of the {arch} net moves its test error from {fmt_pct(s['intact_error_mean'])} "
        f"to a median {fmt_pct(s['single_error_median'])} (worst {fmt_pct(s['single_error_max'])}, "
        f"block {s['worst_block'] + 1}; median damage {s['single_damage_median']:.2f} of the way to chance)"
    )


def _k_clause(arch: str, s: dict) -> str:
    if not s["multi"]:
        return ""
    if s["k_half"] is None:
        return (
            f"the {arch} net stays below half-way to chance even with {s['max_k']} blocks deleted"
        )
    return (
        f"the {arch} net reaches half-way to chance at k = {s['k_half']} of {s['deletable']} blocks"
    )


def _sentence(status: str, res: dict | None, plain: dict | None) -> str:
    if status == "insufficient":
        return "Cannot judge: no residual net with a deletable block was lesioned (yet)."
    assert res is not None  # judged: a residual net was lesioned
    parts = [_single_clause("residual", res)]
    if plain is not None and plain["single_damage_median"] is not None:
        parts.append(_single_clause("plain", plain))
    ks = "; ".join(
        c for c in (_k_clause("residual", res), plain and _k_clause("plain", plain)) if c
    )
    head = {
        "shown": "Ensemble-like behaviour shown: ",
        "not_shown": "Not shown, the residual net depends on single blocks: ",
        "plain_robust_too": "Residual robust, but so is the plain net: ",
        "residual_robust": "Residual net robust (no plain net to compare): ",
    }[status]
    return head + "; ".join(parts) + (f". Deleting random sets of k blocks, {ks}." if ks else ".")


def _diverged_name(d: dict) -> str:
    loss = d.get("last_finite_loss")
    last = f", last finite loss {loss:.4g}" if isinstance(loss, (int, float)) else ""
    return f"{Path(d['run_dir']).name} ({d['model']}, diverged at step {d['step']}{last})"


def _diverged_clause(diverged: Sequence[dict]) -> str:
    names = "; ".join(map(_diverged_name, diverged))
    return f" Not lesioned, diverged in training: {names}." if diverged else ""
