"""The gradients study's second rule, `claims`, a pure function of the measured nets and their
training errors that `CLAIMS_RULE` states with its thresholds: which of two claims about vanishing
gradients and degradation the numbers support here. He et al. 2015 (§4.1) find the deep plain nets'
gradients healthy with batch norm and their optimization difficulty "unlikely to be caused by
vanishing gradients"; the study note reslab starts from names vanishing gradients "an important
factor" of degradation (both quoted in `HE_2015` and `NOTE`). Both claims are about degradation, so
neither is tested where the deepest plain net does not train to a higher error than the shallowest.
A vanishing gradient beside degradation is a co-occurrence, not a cause; a profile between the
classes, or seeds that disagree, make no call either way.

History: until issue 21 the study measured one seed, so the degradation margin was the fixed
DEGRADE and each profile one seed's. Three seeds, the seed spread in the margin and "every seed"
for a profile were declared before any multi-seed number was seen: a rule that rested on one
draw.
"""

from __future__ import annotations

import math
from typing import Any

from reslab.studies.gradients import PHASES
from reslab.studies.gradients.rule import geomean, log10, ratio_text, seed_range
from reslab.studies.stats import compare, mean_std
from reslab.training import runs

VANISH = 2.0
HEALTHY = 1.0
DEGRADE = 0.02
HE_2015 = {
    "source": 'He et al. 2015, "Deep Residual Learning for Image Recognition", §4.1, Plain Networks '
    "(ImageNet, 18- vs 34-layer plain nets: Table 2, Fig. 4 left)",
    "quote": "We argue that this optimization difficulty is unlikely to be caused by vanishing "
    "gradients. These plain networks are trained with BN [16], which ensures forward propagated "
    "signals to have non-zero variances. We also verify that the backward propagated gradients "
    "exhibit healthy norms with BN. So neither forward nor backward signals vanish. [...] We "
    "conjecture that the deep plain nets may have exponentially low convergence rates, which impact "
    "the reducing of the training error.",
}
NOTE = {
    "source": "the study note reslab starts from: sheng的学习笔记-AI-残差网络-Residual Networks "
    "(ResNets), section 退化问题的实质 (what the degradation problem is), "
    "http://www.kler.cn/a/273362.html",
    "original": "神经网络在反向传播过程中要不断传播梯度,而当层数加深,梯度在传播过程中逐渐消失"
    "【而梯度消失则是导致网络退化的一个重要因素】,导致无法对前面网络的权重进行有效调整",
    "translation": "In back-propagation a network keeps passing gradients backward, and as the "
    "layers get deeper the gradient gradually vanishes on its way [and vanishing gradients are an "
    "important factor causing network degradation], so that the weights of the earlier layers "
    "cannot be adjusted effectively.",
}
CLAIMS_RULE = (
    "degradation: mean training error over seeds of the deepest plain net - the shallowest > "
    "max({margin:g}, 2 x pooled seed std); profile of the deepest plain net per phase and seed, o = "
    f"log10 first/last gradient norm: vanishing o <= -{VANISH:g}, exploding o >= {VANISH:g}, healthy "
    f"|o| <= {HEALTHY:g}, else borderline; a phase's profile is every seed's, else mixed; the note "
    "if a phase vanishes, He et al. if every phase is healthy"
)
PROFILE_WORDS = {
    "vanishing": f"vanishing: {VANISH:g}+ orders below",
    "exploding": f"exploding: {VANISH:g}+ orders above",
    "healthy": f"healthy: within {HEALTHY:g} order",
    "borderline": f"borderline: {HEALTHY:g} to {VANISH:g} orders away",
    "mixed": "mixed: the seeds fall in different classes",
}
CONCLUSIONS = {
    "insufficient": "Cannot judge the two claims: both are about degradation, which needs plain nets "
    "trained to completion at two depths or more.",
    "no_degradation": "No degradation in this setting, so neither claim about its cause is tested "
    "here.",
    "supports_he": "The numbers side with He et al. 2015: training error degrades while the "
    "gradient norm stays healthy, so vanishing gradients do not explain this degradation (their "
    "conjecture of exponentially low convergence rates is not tested here).",
    "supports_note": "The numbers side with the note, as a co-occurrence: the early-layer gradient "
    "vanishes where training error degrades. They do not show that the vanishing causes the "
    "degradation; that would take an intervention that restores the early-layer gradient and "
    "removes the degradation.",
    "neither": "Neither claim as stated: by the rule the early-layer gradient does not vanish (in "
    f"no phase {VANISH:g}+ orders below in every seed; against the note), but it is not healthy "
    "either",
}
YANG_2019 = " (with batch norm a deep plain net's gradient grows toward the input at init: Yang et al. 2019)"


def profile(ratio: float | None) -> str | None:
    """The class of a first/last gradient-norm ratio by `CLAIMS_RULE` (None: no ratio to judge)."""
    if ratio is None or math.isnan(ratio):
        return None
    o = log10(ratio)
    if abs(o) >= VANISH:
        return "vanishing" if o < 0 else "exploding"
    return "healthy" if abs(o) <= HEALTHY else "borderline"


def seeds_profile(ratios: dict[int, float | None]) -> dict | None:
    """One phase's ratios by seed: their geometric mean and the profile every seed has (else
    "mixed"); None when no seed measured the phase."""
    if not ratios:
        return None
    found = {s: profile(r) for s, r in ratios.items()}
    one = found[next(iter(found))] if len(set(found.values())) == 1 else "mixed"
    return dict(ratio=geomean(list(ratios.values())), ratios=ratios, profiles=found, profile=one)


def train_error(errors: dict, e: dict) -> float | None:
    """A net's training error by its cell name (or, as summaries of one seed had it, '<arch>-<depth>';
    their rows have no seed)."""
    cell = runs.cell_name(e["arch"], e["depth"], seed=e.get("seed", 0))
    return errors[cell] if cell in errors else errors.get(f"{e['arch']}-{e['depth']}")


def claims(rows: list[dict], errors: dict[str, float | None], margin: float = DEGRADE) -> dict:
    """Which claim, He et al. 2015's or the note's, the numbers support, by `CLAIMS_RULE`. `rows`:
    one per net and seed; `errors`: each net's final training error by cell name."""
    out = {"he_2015": HE_2015, "note": NOTE, "rule": CLAIMS_RULE.format(margin=margin)}
    out["train_errors"] = errors
    errs: dict[int, dict[int, float]] = {}  # depth -> seed -> the plain net's training error
    plain: dict[int, dict[int, dict]] = {}  # depth -> seed -> the plain net's row
    for e in sorted(rows, key=lambda e: (e["depth"], e["seed"])):
        if e["arch"] == "plain" and (error := train_error(errors, e)) is not None:
            errs.setdefault(e["depth"], {})[e["seed"]] = error
            plain.setdefault(e["depth"], {})[e["seed"]] = e
    if len(errs) < 2:
        text = CONCLUSIONS["insufficient"]
        return out | {"status": "insufficient", "text": text, "degradation": None, "profile": None}
    lo, hi = min(errs), max(errs)
    c = compare(list(errs[lo].values()), list(errs[hi].values()), margin)
    degradation = {
        "shallow_depth": lo,
        "deep_depth": hi,
        "shallow_error": c["mean_a"],
        "deep_error": c["mean_b"],
        "increase": c["margin"],
        "margin": margin,
        "tolerance": c["tolerance"],
        "pooled_std": c["pooled_std"],
        "shallow_errors": errs[lo],
        "deep_errors": errs[hi],
        "shown": c["higher"],
    }
    prof: dict[str, Any] = {"depth": hi} | {
        p: seeds_profile({s: e[p]["weight_ratio"] for s, e in plain[hi].items() if e[p]})
        for p in PHASES
    }
    found = [prof[p]["profile"] for p in PHASES if prof[p]]
    if not degradation["shown"]:
        status = "no_degradation"
    elif "vanishing" in found:
        status = "supports_note"
    elif found and all(f == "healthy" for f in found):
        status = "supports_he"
    else:
        status = "neither"
    text = _claims_text(status, degradation, prof)
    return out | {"status": status, "text": text, "degradation": degradation, "profile": prof}


def _errors_text(errors: dict) -> str:
    """'90.0 ± 0.1% (seeds 0, 1, 2: 90.0, 89.9, 90.1%)', or '90.0%' for one seed."""
    mean, std = mean_std(list(errors.values()))
    if len(errors) < 2:
        return f"{mean:.1%}"
    each = ", ".join(f"{100 * x:.1f}" for x in errors.values())
    return f"{mean:.1%} ± {std:.1%} (seeds {', '.join(map(str, errors))}: {each}%)"


def _phase_text(x: dict) -> str:
    """'1e+10x (exploding: 2+ orders above), seeds 9e+09x to 2e+10x, in every seed' and the like."""
    text = f"{ratio_text(x['ratio'])} ({PROFILE_WORDS.get(x['profile'], 'no finite ratio')})"
    if len(x["ratios"]) < 2:
        return text
    text += seed_range(list(x["ratios"].values()))
    if x["profile"] != "mixed":
        return text + ", in every seed"
    return text + " (" + ", ".join(f"seed {s} {f}" for s, f in x["profiles"].items()) + ")"


def _claims_text(status: str, d: dict, prof: dict) -> str:
    phases = [(p, prof[p]) for p in PHASES if prof[p]]
    seen = "; ".join(f"{PHASES[p]} {_phase_text(x)}" for p, x in phases)
    need = f"more than {100 * d['margin']:g} pp"
    if len(d["deep_errors"]) > 1 or len(d["shallow_errors"]) > 1:
        need = (
            f"more than max({100 * d['margin']:g} pp, 2 x pooled seed std "
            f"{200 * d['pooled_std']:.1f} pp) = {100 * d['tolerance']:.1f} pp"
        )
    conclusion = CONCLUSIONS[status]
    if status == "neither":
        exploding = any(x["profile"] == "exploding" for _, x in phases)
        conclusion += f"{YANG_2019 if exploding else ''}."
    return (
        f"The {d['deep_depth']}-layer plain net ends training with {_errors_text(d['deep_errors'])} "
        f"training error against {_errors_text(d['shallow_errors'])} for the "
        f"{d['shallow_depth']}-layer one ({100 * d['increase']:+.1f} pp; degradation needs {need}); "
        f"its first layer's gradient norm is, relative to the last layer's, {seen}. {conclusion}"
    )
