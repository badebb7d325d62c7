"""The lesion study's two rules, pure functions of its lesioned nets (lesions.json's "nets"), each
stated once in RULE and SMOOTH_RULE: is a residual net robust to deleting blocks where its plain twin
breaks (`verdict`), and does its error rise smoothly with the number deleted (`smoothness_verdict`)?

Damage puts nets of any intact error on one scale (0: harmless, 1: as bad as guessing). A net that
diverged in training has no finite weights: it is not lesioned, counts for no arch, and the verdict
names it. Where the arms differ in more than their shortcuts (blocks, or a training setting), the
verdict says in what (`unlike_arms`); Veit et al. themselves set ResNet-110 against a 15-layer VGG.

Smoothness is Veit et al.'s "deleting increasing numbers of residual modules increases error
smoothly" (§4.2, Fig. 5(a)); the plain nets' curve is judged alike, for contrast. m(k) pools every
random set of every net, so the scatter between sets and between seeds both widen its standard
errors. Why these margins: an ensemble of many paths loses members a few at a time, so its error
climbs in many comparable steps, while a chain breaks at one threshold (a plain net reaches chance
at k = 1). A straight rise over n steps gives each step 1/n of it; a curve shaped like Fig. 5(a)
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
from reslab.training.runs import Verdict, diverged_at

ROBUST, BROKEN = 0.1, 0.5
MIN_KS, FLOOR, CLIFF = 4, 0.005, 0.5
RULE = (
    "damage = (error - intact) / (chance - intact); residual robust if median single-deletion "
    "damage <= {robust}; plain broken if >= {broken}; ensemble-like behaviour shown if the "
    "residual net is robust and the plain net broken; k_half = the fewest deleted blocks whose "
    "mean damage reaches 0.5"
)
SMOOTH_RULE = (
    "m(k) = mean error over the random sets of k deleted blocks (k = 0: intact); smooth if at "
    "least {min_ks} ks are measured, m rises by more than tol = max(2 * combined standard error, "
    "{floor}), no step falls by more than tol, and no step carries more than {cliff:.0%} of the "
    "whole rise per deleted block"
)
SMOOTH_HEADS = {
    "smooth": "Smooth",
    "cliff": "Not smooth, a cliff",
    "not_monotone": "Not smooth, the error falls",
    "no_rise": "No rise to judge",
    "insufficient": "Cannot judge the shape",
}


def _damage(net: dict, error: float) -> float:
    span = 1 - 1 / net["num_classes"] - net["intact_error"]  # chance - intact
    return (error - net["intact_error"]) / span if span > 0 else math.inf


def _median(xs: list[float]) -> float | None:
    return float(np.median(xs)) if xs else None


def _pooled(nets: list[dict]) -> dict[int, list[tuple[dict, float]]]:
    """k -> (net, error) of every random set of k deleted blocks of `nets`, k ascending."""
    by_k: dict[int, list[tuple[dict, float]]] = {}
    for n in nets:
        for m in n["multi"]:
            by_k.setdefault(m["k"], []).extend((n, e) for e in m["errors"])
    return dict(sorted(by_k.items()))


def arch_stats(nets: list[dict], arch: str) -> dict | None:
    """Single- and multi-deletion statistics of all nets of one arch (None: there are none)."""
    nets = [n for n in nets if n["arch"] == arch]
    if not nets:
        return None
    single = [(n, s) for n in nets for s in n["single"] if s["error"] is not None]
    none = {"error": None, "block": None}
    worst = max((s for _, s in single), key=lambda s: s["error"], default=none)
    multi = [
        {
            "k": k,
            "n": len(v),
            "error_mean": float(np.mean([e for _, e in v])),
            "error_std": float(np.std([e for _, e in v])),
            "damage_mean": float(np.mean([_damage(n, e) for n, e in v])),
        }
        for k, v in _pooled(nets).items()
    ]
    return {
        "arch": arch,
        "nets": len(nets),
        "models": sorted({n["model"] for n in nets}),
        "blocks": max(n["blocks"] for n in nets),
        "deletable": len({s["block"] for _, s in single}),
        "intact_error_mean": float(np.mean([n["intact_error"] for n in nets])),
        "single_error_median": _median([s["error"] for _, s in single]),
        "single_error_max": worst["error"],
        "worst_block": worst["block"],
        "single_rise_median": _median([s["error"] - n["intact_error"] for n, s in single]),
        "single_damage_median": _median([_damage(n, s["error"]) for n, s in single]),
        "multi": multi,
        "k_half": next((m["k"] for m in multi if m["damage_mean"] >= 0.5), None),
        "max_k": multi[-1]["k"] if multi else None,
    }


def verdict(nets: list[dict], diverged: Sequence[dict] = ()) -> Verdict:
    """RULE on the lesioned nets; those that diverged in training are named in the text."""
    stats = {"residual": arch_stats(nets, "residual"), "plain": arch_stats(nets, "plain")}
    judged = {a: s for a, s in stats.items() if s and s["single_damage_median"] is not None}
    damage = {a: s["single_damage_median"] for a, s in judged.items()}
    if "residual" not in damage:
        status, head = "insufficient", "Cannot judge"
    elif damage["residual"] > ROBUST:
        status, head = "not_shown", "Not shown, the residual net depends on single blocks"
    elif "plain" not in damage:
        status, head = "residual_robust", "Residual net robust (no plain net to compare)"
    elif damage["plain"] >= BROKEN:
        status, head = "shown", "Ensemble-like behaviour shown"
    else:
        status, head = "plain_robust_too", "Residual robust, but so is the plain net"
    if status == "insufficient":
        text = f"{head}: no residual net with a deletable block was lesioned (yet)."
    else:
        text = f"{head}: {'; '.join(_single_clause(a, s) for a, s in judged.items())}."
        ks = "; ".join(_k_clause(a, s) for a, s in stats.items() if s and s["multi"])
        text += f" Deleting random sets of k blocks, {ks}." if ks else ""
    unlike = unlike_arms(nets)
    differ = ({"blocks": unlike["blocks"]} if unlike["blocks"] else {}) | unlike["recipe"]
    if differ:
        what = "; ".join(
            f"{k}: residual {join_values(v['residual'])}, plain {join_values(v['plain'])}"
            for k, v in differ.items()
        )
        text += f" Not like for like: the arms differ in more than their shortcuts ({what})."
    if diverged:
        text += f" Not lesioned, diverged in training: {'; '.join(map(diverged_name, diverged))}."
    thresholds = {"robust": ROBUST, "broken": BROKEN}
    numbers = {"unlike": unlike} | stats
    return Verdict(status, numbers, thresholds, RULE.format(**thresholds), text)


def _single_clause(arch: str, s: dict) -> str:
    return (
        f"deleting one block of the {arch} net moves its test error from "
        f"{fmt_pct(s['intact_error_mean'])} to a median {fmt_pct(s['single_error_median'])} "
        f"(median rise {100 * s['single_rise_median']:+.2f} pp, damage "
        f"{s['single_damage_median']:.2f} of the way to chance; worst "
        f"{fmt_pct(s['single_error_max'])}, block {s['worst_block'] + 1})"
    )


def _k_clause(arch: str, s: dict) -> str:
    k, net = s["k_half"], f"the {arch} net"
    if k is None:
        return f"{net} stays below half-way to chance even with {s['max_k']} blocks deleted"
    return f"{net} reaches half-way to chance at k = {k} of {s['deletable']} blocks"


def diverged_name(d: dict) -> str:
    """A net that diverged in training, as the verdict and the tables name it."""
    at = diverged_at(d["step"], d.get("last_finite_loss"))
    return f"{Path(d['run_dir']).name} ({d['model']}, {at})"


def unlike_arms(nets: list[dict]) -> dict:
    """What, besides the shortcuts, differs between the arms: {"blocks": {arch: [counts]}} where
    their block counts differ, {"recipe": {setting: {arch: [values]}}} for each training setting
    (run config less model and seed) they do not share; "recipe_known": False where a net was
    recorded without its recipe (older folders)."""
    by = {a: [n for n in nets if n["arch"] == a] for a in ARCHS}
    out: dict = {"blocks": {}, "recipe": {}, "recipe_known": True}
    if not all(by.values()):
        return out
    blocks = {a: sorted({n["blocks"] for n in ns}) for a, ns in by.items()}
    if blocks["plain"] != blocks["residual"]:
        out["blocks"] = blocks
    if not all("recipe" in n for n in nets):
        return out | {"recipe_known": False}
    for k in sorted({k for n in nets for k in n["recipe"]}):
        values = {a: [n["recipe"].get(k) for n in ns] for a, ns in by.items()}
        values = {a: [v for i, v in enumerate(vs) if v not in vs[:i]] for a, vs in values.items()}
        if values["plain"] != values["residual"]:
            out["recipe"][k] = values
    return out


def smoothness(nets: list[dict], arch: str = "residual") -> dict:
    """SMOOTH_RULE on one arch's curve. "steepest": the step with the largest rise per deleted
    block; "worst_fall": the step closest to failing the fall test (largest fall less tolerance)."""
    nets = [n for n in nets if n["arch"] == arch]
    by_k = {0: [n["intact_error"] for n in nets]} if nets else {}
    by_k |= {k: [e for _, e in v] for k, v in _pooled(nets).items()}
    pts = [  # (k, mean error, its standard error), k = 0: the intact nets
        (k, float(np.mean(v)), float(np.std(v, ddof=1) / math.sqrt(len(v))) if len(v) > 1 else 0.0)
        for k, v in by_k.items()
    ]
    out: dict[str, Any] = {"arch": arch, "ks": [k for k, _, _ in pts[1:]], "rise": None}
    out |= {"steepest": None, "worst_fall": None, "status": "insufficient"}
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
    if rise <= out["rise_tolerance"]:
        out["status"] = "no_rise"
    elif fa[1] - fb[1] > tol(fa, fb):
        out["status"] = "not_monotone"
    else:
        out["status"] = "cliff" if share is not None and share > CLIFF else "smooth"
    return out


def _smooth_clause(s: dict) -> str:
    arch, st, f = s["arch"], s["status"], s["worst_fall"]
    if st == "insufficient":
        return f"the {arch} error is measured at {len(s['ks'])} values of k, {MIN_KS} needed"
    if st == "not_monotone":
        return (
            f"the {arch} error falls by {100 * f['fall']:.2f} pp from k = {f['from']} to {f['to']}, "
            f"beyond the spread (tolerance {100 * f['tolerance']:.2f} pp)"
        )
    span = f"{fmt_pct(s['intact'])} intact to {fmt_pct(s['error_at_k_max'])} at k = {s['k_max']}"
    if st == "no_rise":
        tol = 100 * s["rise_tolerance"]
        return f"the {arch} error goes from {span}, within the spread (tolerance {tol:.2f} pp)"
    step = s["steepest"]
    return (
        f"the {arch} error rises from {span}; its steepest step (k = {step['from']} → {step['to']}) "
        f"carries {step['share_per_block']:.0%} of the rise per deleted block (limit {CLIFF:.0%})"
    )


def smoothness_verdict(nets: list[dict]) -> Verdict:
    """The residual curve's shape, and the plain curve's for contrast."""
    res, plain = smoothness(nets, "residual"), smoothness(nets, "plain")
    text = f"{SMOOTH_HEADS[res['status']]} (Veit et al. Fig. 5(a)): {_smooth_clause(res)}."
    if plain["ks"]:
        text += f" Plain net: {plain['status'].replace('_', ' ')}, {_smooth_clause(plain)}."
    thresholds = {"min_ks": MIN_KS, "floor": FLOOR, "cliff": CLIFF}
    numbers = {"residual": res, "plain": plain}
    return Verdict(res["status"], numbers, thresholds, SMOOTH_RULE.format(**thresholds), text)
