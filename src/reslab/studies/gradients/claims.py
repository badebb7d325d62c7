"""The gradients study's second rule, as a pure function of the measured nets and their training
errors: which of two claims about vanishing gradients and degradation the numbers support here.

Claims rule (summary["claims"]): which of two claims about vanishing gradients and degradation the
numbers support in this setting. He et al. 2015 (§4.1): the plain nets' optimization difficulty "is
unlikely to be caused by vanishing gradients"; the gradients "exhibit healthy norms with BN". The study
note reslab starts from: vanishing gradients are "an important factor" of degradation (both quoted in
HE_2015 and NOTE). Numbers: each net's final training error (whole training set, the engine's last
evaluation, read from its run folder) and, for plain nets, ratio = first/last as in `drift`, at init and
after training, o = log10 ratio.
  degradation  the mean training error over seeds of the deepest plain net trained to completion
               (in at least one seed) exceeds the shallowest one's by more than
               max(DEGRADE, 2 x pooled seed std of the two) (DEGRADE = 0.02, two percentage points;
               `reslab.studies.stats.compare`).
  profile      of that deepest plain net, per phase and seed: vanishing if o <= -VANISH (= 2: the
               first layer's gradient norm 100x or more below the last layer's); exploding if
               o >= VANISH; healthy if |o| <= HEALTHY (= 1: within 10x); in between: borderline (no
               call either way). A phase's profile is the one every seed has; seeds that disagree
               make it "mixed" (no call either way).
  status       "insufficient" (fewer than two plain depths trained to completion); "no_degradation"
               (neither claim is tested here); else "supports_note" if a phase is vanishing (a
               co-occurrence: the measurement does not show it causes the degradation); "supports_he"
               if every phase is healthy; "neither" otherwise (exploding, borderline or mixed: the
               gradient does not vanish in every seed, and is not healthy in every seed either).
  History: until issue 21 the study measured one seed, so the degradation margin was the fixed
  DEGRADE and each profile one seed's. Three seeds, the seed spread in the margin and "every seed"
  for a profile were declared before any multi-seed number was seen: a rule that rested on one
  draw.
"""

from __future__ import annotations

import math
from typing import Any

from reslab.studies.gradients.plots import PHASES
from reslab.studies.gradients.rule import _range, _ratio_text, _seed, geomean
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

_CLAIMS_RULE = (
    "degradation: mean training error over seeds of the deepest plain net - the shallowest > "
    "max({margin:g}, 2 x pooled seed std); profile of the deepest plain net per phase and seed, o = "
    f"log10 first/last gradient norm: vanishing o <= -{VANISH:g}, exploding o >= {VANISH:g}, healthy "
    f"|o| <= {HEALTHY:g}, else borderline; a phase's profile is every seed's, else mixed; the note "
    "if a phase vanishes, He et al. if every phase is healthy"
)
_PROFILE_WORDS = {
    "vanishing": f"vanishing: {VANISH:g}+ orders below",
    "exploding": f"exploding: {VANISH:g}+ orders above",
    "healthy": f"healthy: within {HEALTHY:g} order",
    "borderline": f"borderline: {HEALTHY:g} to {VANISH:g} orders away",
    "mixed": "mixed: the seeds fall in different classes",
}


def profile(ratio: float | None) -> str | None:
    """'vanishing', 'exploding', 'healthy' or 'borderline' for a first/last gradient-norm ratio (the
    claims rule in the module docstring); None when there is no finite ratio to judge."""
    if ratio is None or math.isnan(ratio):
        return None
    orders = math.log10(ratio) if 0 < ratio < math.inf else -math.inf if ratio <= 0 else math.inf
    if orders <= -VANISH:
        return "vanishing"
    if orders >= VANISH:
        return "exploding"
    return "healthy" if abs(orders) <= HEALTHY else "borderline"


def _error(errors: dict, e: dict) -> float | None:
    """A net's training error by its cell name (or, as summaries of one seed had it, '<arch>-<depth>')."""
    cell = runs.cell_name(e["arch"], e["depth"], seed=_seed(e))
    return errors[cell] if cell in errors else errors.get(f"{e['arch']}-{e['depth']}")


def claims(entries: list[dict], errors: dict[str, float | None], margin: float = DEGRADE) -> dict:
    """Which claim, He et al. 2015's or the note's, the numbers support (rule in the module docstring).
    `entries`: one per net and seed; `errors`: `train_errors`."""
    out = {"he_2015": HE_2015, "note": NOTE, "rule": _CLAIMS_RULE.format(margin=margin)}
    out["train_errors"] = errors
    plain: dict[
        int, list
    ] = {}  # depth -> [(seed, entry, training error)] of the plain nets trained to completion
    for e in sorted(
        (e for e in entries if e["arch"] == "plain"), key=lambda e: (e["depth"], _seed(e))
    ):
        if _error(errors, e) is not None:
            plain.setdefault(e["depth"], []).append((_seed(e), e, _error(errors, e)))
    if len(plain) < 2:
        text = (
            "Cannot judge the two claims: both are about degradation, which needs plain nets trained "
            "to completion at two depths or more."
        )
        return out | {"status": "insufficient", "text": text, "degradation": None, "profile": None}
    lo, hi = min(plain), max(plain)
    e_lo, e_hi = ([x[2] for x in plain[d]] for d in (lo, hi))
    c = compare(e_lo, e_hi, margin)
    degradation = {
        "shallow_depth": lo,
        "deep_depth": hi,
        "shallow_error": c["mean_a"],
        "deep_error": c["mean_b"],
        "increase": c["margin"],
        "margin": margin,
        "tolerance": c["tolerance"],
        "pooled_std": c["pooled_std"],
        "shallow_errors": {s: err for s, _, err in plain[lo]},
        "deep_errors": {s: err for s, _, err in plain[hi]},
        "shown": c["higher"],
    }
    prof: dict[str, Any] = {"depth": hi}
    for p in PHASES:
        seeds = {s: (e[p] or {}).get("weight_ratio") for s, e, _ in plain[hi]}
        seeds = {s: r for s, r in seeds.items() if r is not None}
        found = {s: profile(r) for s, r in seeds.items()}
        calls = set(found.values())
        prof[p] = None if not seeds else {
            "ratio": geomean(list(seeds.values())),
            "ratios": seeds,
            "profiles": found,
            "profile": calls.pop() if len(calls) == 1 else "mixed",
        }  # fmt: skip
    calls_found = [prof[p]["profile"] for p in PHASES if prof[p]]
    if not degradation["shown"]:
        status = "no_degradation"
    elif "vanishing" in calls_found:
        status = "supports_note"
    elif calls_found and all(f == "healthy" for f in calls_found):
        status = "supports_he"
    else:
        status = "neither"
    return out | {
        "status": status,
        "text": _claims_text(status, degradation, prof),
        "degradation": degradation,
        "profile": prof,
    }


def _errors_text(errors: dict) -> str:
    """'90.0 ± 0.1% (seeds 0, 1, 2: 90.0, 89.9, 90.1%)', or '90.0%' for one seed."""
    mean, std = mean_std(list(errors.values()))
    if len(errors) < 2:
        return f"{mean:.1%}"
    each = ", ".join(f"{100 * x:.1f}" for x in errors.values())
    return f"{mean:.1%} ± {std:.1%} (seeds {', '.join(map(str, errors))}: {each}%)"


def _phase_text(x: dict) -> str:
    """'1e+10x (exploding: 2+ orders above), seeds 9e+09x to 2e+10x, every seed' and the like."""
    words = _PROFILE_WORDS.get(x["profile"], "no finite ratio")
    text = f"{_ratio_text(x['ratio'])} ({words})"
    ratios = list(x.get("ratios", {}).values())
    if len(ratios) > 1:
        text += _range(ratios)
        if x["profile"] == "mixed":
            text += " (" + ", ".join(f"seed {s} {f}" for s, f in x["profiles"].items()) + ")"
        else:
            text += ", in every seed"
    return text


def _claims_text(status: str, d: dict, prof: dict) -> str:
    phases = [(p, prof[p]) for p in PHASES if prof[p]]
    seen = "; ".join(
        f"{'at init' if p == 'init' else 'after training'} {_phase_text(x)}" for p, x in phases
    )
    deep = d.get("deep_errors") or {0: d["deep_error"]}
    shallow = d.get("shallow_errors") or {0: d["shallow_error"]}
    need = f"more than {100 * d['margin']:g} pp"
    if len(deep) > 1 or len(shallow) > 1:
        need = (
            f"more than max({100 * d['margin']:g} pp, 2 x pooled seed std "
            f"{200 * d['pooled_std']:.1f} pp) = {100 * d['tolerance']:.1f} pp"
        )
    measured = (
        f"the {d['deep_depth']}-layer plain net ends training with {_errors_text(deep)} training "
        f"error against {_errors_text(shallow)} for the {d['shallow_depth']}-layer one "
        f"({100 * d['increase']:+.1f} pp; degradation needs {need}); its first layer's gradient "
        f"norm is, relative to the last layer's, {seen}"
    )
    found = {x["profile"] for _, x in phases}
    conclusion = {
        "no_degradation": "No degradation in this setting, so neither claim about its cause is "
        "tested here.",
        "supports_he": "The numbers side with He et al. 2015: training error degrades while the "
        "gradient norm stays healthy, so vanishing gradients do not explain this degradation (their "
        "conjecture of exponentially low convergence rates is not tested here).",
        "supports_note": "The numbers side with the note, as a co-occurrence: the early-layer "
        "gradient vanishes where training error degrades. They do not show that the vanishing causes "
        "the degradation; that would take an intervention that restores the early-layer gradient and "
        "removes the degradation.",
        "neither": "Neither claim as stated: by the rule the early-layer gradient does not vanish "
        f"(in no phase {VANISH:g}+ orders below in every seed; against the note), but it is not "
        "healthy either"
        + (
            " (with batch norm a deep plain net's gradient grows toward the input at init: Yang et "
            "al. 2019)"
            if "exploding" in found
            else ""
        )
        + ".",
    }[status]
    return f"{measured[0].upper()}{measured[1:]}. {conclusion}"
