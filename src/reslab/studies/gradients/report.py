"""Report for the gradients study: gradient norms per layer and shattered gradients (Balduzzi et al. 2017,
"The Shattered Gradients Problem: If resnets are the answer, then what is the question?", Figs. 1-2),
plain nets vs their residual twins.

Works from the study folder alone: `study.json`, `measurements/<arch>-<depth>.json` written by
`reslab.studies.gradients` and the run folders under `runs/` (for a run that diverged: where, and its
last finite loss). `build_report(study_dir)` writes summary.json, norms.png, activations.png,
shattering.png, lines.png and report.html.

Every net is measured once per seed (its own initial weights, data order, batches and lines). A
number "over seeds" is the mean over seeds, for a gradient-norm ratio the geometric mean (the mean of
its log10), and the report gives every seed's value or the range beside it.

Verdict rules (numbers at initialisation, each arch at its deepest measured depth where one is named):
  drift       ratio = ||dL/dW|| of the first weight layer / ||dL/dW|| of the last (the classifier);
              orders = |log10 ratio|, the orders of magnitude the gradient norm changes across the net.
              Shown when orders(plain) - orders(residual) >= ORDERS (= 1) in every seed (the two arms
              of one seed share its initial weights); the text says whether the plain net's gradient
              vanishes (ratio < 1) or explodes (ratio > 1) toward the input.
  shattering  acf(1) (correlation of the gradients of neighbouring inputs, mean over the lines of
              every seed) per depth; decay = acf(1) at the shallowest depth - acf(1) at the deepest,
              per arch. Shown when decay(plain) - decay(residual) > tolerance = max(2 * se, FLOOR),
              where se is the standard error of that difference from the spread over the lines of all
              seeds, and FLOOR = 0.05.
Status: "shown" (both parts), "partly" (one), "not_shown" (neither), "insufficient" (no plain or no
residual net measured). A net whose training diverged is measured at initialisation only (the rules
above use init numbers); the verdict text names it with its step and last finite loss.

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
Like for like (summary["like_for_like"]): at each depth and seed the plain net and its residual twin
must share the seed, the run config apart from the model (name and options) and the initial weights
(`init_digest` in the measurement records). Options given to the residual arm only (`residual_args`, e.g.
zero_init_residual) make it its own arm: the table labels it with them and the verdict names them.
Status "same", "differs" or "unknown" (folders measured before the digest was recorded).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from reslab.report.html import Page, fmt_count, fmt_mean_std, join_values
from reslab.studies.base import PER_RUN
from reslab.studies.gradients.plots import ARCHS, PHASES, plot_lines, plot_norms, plot_shattering
from reslab.studies.stats import compare, finite_tree, mean_std
from reslab.training import runs

MEASUREMENTS = "measurements"  # <study>/measurements/<arch>-<depth>.json, one record per net
ORDERS = 1.0
FLOOR = 0.05
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
_LABELS = {
    "shown": ("shortcuts keep gradients in shape", "good"),
    "partly": ("partly shown", "warn"),
    "not_shown": ("effect not shown", "warn"),
    "insufficient": ("insufficient measurements", "neutral"),
}
_CLAIM_LABELS = {
    "supports_he": ("the numbers side with He et al. 2015", "neutral"),
    "supports_note": ("the numbers side with the note (co-occurrence)", "neutral"),
    "neither": ("neither claim as stated", "warn"),
    "no_degradation": ("no degradation here: neither claim tested", "neutral"),
    "insufficient": ("insufficient measurements", "neutral"),
}


def collect(study_dir: str | Path) -> list[dict]:
    """The measurement records of the study, sorted by arch then depth."""
    folder = Path(study_dir) / MEASUREMENTS
    if not folder.is_dir():
        raise FileNotFoundError(f"not a gradients study folder (no {MEASUREMENTS}/): {study_dir}")
    records = [runs.read_json(p) for p in sorted(folder.glob("*.json"))]
    return sorted(records, key=lambda r: (ARCHS.index(r["arch"]), r["depth"], r.get("seed", 0)))


def phase_numbers(phase: dict) -> dict:
    """The summary numbers of one measurement phase (acf(1): mean and sample std over lines)."""
    w, a = phase["weight_norms"], phase["block_input_norms"]
    acf1, acf1_std = mean_std(phase["acf1_lines"])
    return {
        "loss": phase["loss"],
        "first_weight_grad": w[0],
        "last_weight_grad": w[-1],
        "weight_ratio": w[0] / w[-1] if w[-1] > 0 else math.inf,
        "block_input_ratio": (a[0] / a[-1] if a[-1] > 0 else math.inf) if a else None,
        "acf1": acf1,
        "acf1_std": acf1_std or 0.0,
        "acf1_lines": len(phase["acf1_lines"]),
        "neighbour_corr": phase["neighbour_corr"],
    }


def nets(records: list[dict]) -> list[dict]:
    """One compact entry per measured net and seed (summary.json "seed_nets")."""
    keys = ("arch", "depth", "model", "params", "train_status", "run_dir")
    return [
        {k: r.get(k) for k in keys}
        | {"seed": r.get("seed", 0)}
        | {p: phase_numbers(r["phases"][p]) if p in r["phases"] else None for p in PHASES}
        for r in records
    ]


def _seed(e: dict) -> int:
    return e.get("seed", 0)


def combine(entries: list[dict]) -> list[dict]:
    """One entry per (arch, depth) over its seeds (summary.json "nets"): the numbers over seeds as
    the module docstring says, acf(1) and its std over the lines of every seed. A net measured with
    one seed is its own entry (less its seed)."""
    out = []
    for arch, depth in dict.fromkeys((e["arch"], e["depth"]) for e in entries):
        es = sorted((e for e in entries if (e["arch"], e["depth"]) == (arch, depth)), key=_seed)
        if len(es) == 1:
            out.append({k: v for k, v in es[0].items() if k != "seed"})
            continue
        status = [e.get("train_status", "completed") for e in es]
        entry = {k: es[0].get(k) for k in ("arch", "depth", "model", "params")}
        entry["train_status"] = next((x for x in status if x != "completed"), "completed")
        entry["run_dir"] = es[0].get("run_dir")
        for p in PHASES:
            phases = [e[p] for e in es if e[p]]
            entry[p] = _combine_phase(phases) if phases else None
        out.append(entry)
    return out


def _combine_phase(phases: list[dict]) -> dict:
    """The numbers of one phase over seeds: means, geometric means of the norms and their ratios,
    acf(1) mean and sample std over all lines (pooled from each seed's mean, std and count)."""
    n = sum(x["acf1_lines"] for x in phases)
    acf1 = sum(x["acf1"] * x["acf1_lines"] for x in phases) / n
    ss = sum((x["acf1_lines"] - 1) * x["acf1_std"] ** 2 for x in phases)
    ss += sum(x["acf1_lines"] * (x["acf1"] - acf1) ** 2 for x in phases)
    geo = ("first_weight_grad", "last_weight_grad", "weight_ratio", "block_input_ratio")
    return {
        "loss": _mean([x["loss"] for x in phases]),
        **{k: geomean([x.get(k) for x in phases]) for k in geo},
        "acf1": acf1,
        "acf1_std": math.sqrt(ss / (n - 1)) if n > 1 else 0.0,
        "acf1_lines": n,
        "neighbour_corr": _mean([x["neighbour_corr"] for x in phases]),
    }


def _mean(xs: list) -> float | None:
    return mean_std(xs)[0]


def _log10(x: float) -> float:
    return math.log10(x) if 0 < x < math.inf else -math.inf if x <= 0 else math.inf


def geomean(xs: list[float | None]) -> float | None:
    """The geometric mean of the positive numbers `xs` (0 and inf allowed, None left out); NaN when
    they hold both 0 and inf."""
    logs = [_log10(x) for x in xs if x is not None and not math.isnan(x)]
    if not logs:
        return None
    if len(logs) == 1:
        return next(x for x in xs if x is not None)
    m = sum(logs) / len(logs)
    return math.nan if math.isnan(m) else 0.0 if m == -math.inf else 10**m if m < 308 else math.inf


# ---------------------------------------------------------------------------------------------- verdict


def _by_seed(entries: list[dict]) -> dict[int, list[dict]]:
    return {s: [e for e in entries if _seed(e) == s] for s in sorted({_seed(e) for e in entries})}


def _drift(entries: list[dict]) -> dict | None:
    """The drift rule over the seeds that measured both arms (the numbers over seeds, the call on
    every seed)."""
    pairs = {}
    for seed, es in _by_seed(entries).items():
        plain, res = (_deepest(es, a) for a in ARCHS)
        if plain is not None and res is not None:
            pairs[seed] = (plain, res)
    if not pairs:
        return None
    ratios = {
        f"{arch}_{phase}": [(pr[i][phase] or {}).get("weight_ratio") for pr in pairs.values()]
        for i, arch in enumerate(ARCHS)
        for phase in PHASES
    }
    diffs = [_orders(p["init"]["weight_ratio"]) - _orders(r["init"]["weight_ratio"])
             for p, r in pairs.values()]  # fmt: skip
    p, r = geomean(ratios["plain_init"]), geomean(ratios["residual_init"])
    assert p is not None and r is not None  # every net is measured at init
    plain, res = next(iter(pairs.values()))
    trained = {a: ratios[f"{a}_trained"] for a in ARCHS}
    return {
        "plain_depth": plain["depth"],
        "residual_depth": res["depth"],
        "plain_ratio": p,
        "residual_ratio": r,
        "plain_orders": _orders(p),
        "residual_orders": _orders(r),
        "plain_direction": "explode" if p > 1 else "vanish",
        "shown": all(d >= ORDERS for d in diffs),
        "plain_ratio_trained": None if None in trained["plain"] else geomean(trained["plain"]),
        "residual_ratio_trained": None
        if None in trained["residual"]
        else geomean(trained["residual"]),
        "seeds": list(pairs),
        "plain_ratios": ratios["plain_init"],
        "residual_ratios": ratios["residual_init"],
        "orders_differences": diffs,
    }


def _orders(ratio: float) -> float:
    """|log10 ratio|: orders of magnitude between two norms (inf if one of them is zero)."""
    return abs(math.log10(ratio)) if 0 < ratio < math.inf else math.inf


def _shatter(entries: list[dict], floor: float) -> dict | None:
    decays = {}
    for arch in ARCHS:
        es = sorted((e for e in entries if e["arch"] == arch), key=lambda e: e["depth"])
        if len(es) < 2:
            return None
        lo, hi = es[0]["init"], es[-1]["init"]
        var = sum(s["acf1_std"] ** 2 / s["acf1_lines"] for s in (lo, hi))
        decays[arch] = {
            "shallow_depth": es[0]["depth"],
            "deep_depth": es[-1]["depth"],
            "shallow_acf1": lo["acf1"],
            "deep_acf1": hi["acf1"],
            "decay": lo["acf1"] - hi["acf1"],
            "var": var,
        }
    margin = decays["plain"]["decay"] - decays["residual"]["decay"]
    se = math.sqrt(decays["plain"].pop("var") + decays["residual"].pop("var"))
    tolerance = max(2 * se, floor)
    return decays | {"margin": margin, "tolerance": tolerance, "shown": margin > tolerance}


def _deepest(entries: list[dict], arch: str) -> dict | None:
    es = [e for e in entries if e["arch"] == arch]
    return max(es, key=lambda e: e["depth"]) if es else None


def _ratio_text(x: float | None) -> str:
    if x is None or math.isnan(x):
        return "—"
    return f"{x:.3g}x" if x >= 0.01 else f"1/{1 / x:.3g}" if x > 0 else "0"


def _range(ratios: list[float | None]) -> str:
    """', seeds 1/40 to 1/90' for ratios of several seeds; '' for one."""
    xs = sorted(x for x in ratios if x is not None and not math.isnan(x))
    if len(xs) < 2:
        return ""
    return f", seeds {_ratio_text(xs[0])} to {_ratio_text(xs[-1])}"


def verdict(entries: list[dict], floor: float = FLOOR) -> dict:
    """Judge the study from the measured numbers (rules in the module docstring)."""
    drift, shatter = _drift(entries), _shatter(combine(entries), floor)
    if drift is None:
        status = "insufficient"
        text = "Cannot judge: the study needs at least one plain and one residual net measured."
        return {"status": status, "text": text, "drift": None, "shattering": None}
    parts = []
    d = drift
    n = len(d["seeds"])
    over = f"geometric means over {n} seeds: " if n > 1 else ""
    parts.append(
        f"at initialisation ({over}first layer / last layer) the gradient norm ratio is "
        f"{_ratio_text(d['plain_ratio'])} in the {d['plain_depth']}-layer plain net (gradients "
        f"{d['plain_direction']} toward the input over {d['plain_orders']:.1f} orders of "
        f"magnitude{_range(d['plain_ratios'])}) vs {_ratio_text(d['residual_ratio'])} in the "
        f"{d['residual_depth']}-layer residual net ({d['residual_orders']:.1f} orders"
        f"{_range(d['residual_ratios'])})"
    )
    if n > 1:
        lo, hi = min(d["orders_differences"]), max(d["orders_differences"])
        parts.append(f"the plain net drifts {lo:.1f} to {hi:.1f} orders more, seed by seed")
    if d["plain_ratio_trained"] is not None and d["residual_ratio_trained"] is not None:
        parts.append(
            f"after training the ratios are {_ratio_text(d['plain_ratio_trained'])} (plain) and "
            f"{_ratio_text(d['residual_ratio_trained'])} (residual)"
        )
    if shatter is not None:
        p, r = shatter["plain"], shatter["residual"]
        parts.append(
            f"the correlation between gradients of neighbouring inputs, acf(1), falls from "
            f"{p['shallow_acf1']:.2f} to {p['deep_acf1']:.2f} in plain nets ({p['shallow_depth']} → "
            f"{p['deep_depth']} layers) and from {r['shallow_acf1']:.2f} to {r['deep_acf1']:.2f} in "
            f"residual nets (decay difference {shatter['margin']:+.2f}, tolerance "
            f"{shatter['tolerance']:.2f})"
        )
    shown = [d["shown"], shatter["shown"] if shatter else False]
    status = "shown" if all(shown) else "partly" if any(shown) else "not_shown"
    lead = {
        "shown": "Shortcuts keep the gradient in shape:",
        "partly": "Partly shown:",
        "not_shown": "Not shown:",
    }[status]
    tail = []
    if not d["shown"]:
        tail.append(
            f"the drift differs by less than {ORDERS:g} order of magnitude"
            + (" in some seed" if n > 1 else "")
        )
    if shatter is None:
        tail.append("shattering needs two depths per arch")
    elif not shatter["shown"]:
        tail.append("acf(1) does not decay faster for plain nets beyond the tolerance")
    text = f"{lead} {'; '.join(parts)}."
    if tail:
        text += f" ({'; '.join(tail)}.)"
    return {
        "status": status,
        "text": text,
        "rule": f"drift: |log10 first/last| plain - residual >= {ORDERS:g} in every seed; "
        f"shattering: decay of acf(1) plain - residual > max(2 * se, {floor}), over the lines of "
        "every seed",
        "drift": drift,
        "shattering": shatter,
    }


# ---------------------------------------------------------------------------------------------- claims


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


def train_errors(study_dir: str | Path, entries: list[dict]) -> dict[str, float | None]:
    """'<arch>-<depth>-s<seed>' (the run's cell name) -> the final training error of each net and seed
    (whole training set, the engine's last evaluation, from its run folder); None where training did
    not complete."""
    out = {}
    for e in entries:
        done = e["train_status"] == "completed" and e.get("run_dir")
        summary = (runs.read_summary(Path(study_dir) / e["run_dir"]) if done else None) or {}
        out[runs.cell_name(e["arch"], e["depth"], seed=_seed(e))] = summary.get("final_train_error")
    return out


def _error(errors: dict, e: dict) -> float | None:
    """A net's training error by its cell name (or, as summaries of one seed had it, '<arch>-<depth>')."""
    cell = runs.cell_name(e["arch"], e["depth"], seed=_seed(e))
    return errors[cell] if cell in errors else errors.get(f"{e['arch']}-{e['depth']}")


def claims(entries: list[dict], errors: dict[str, float | None], margin: float = DEGRADE) -> dict:
    """Which claim, He et al. 2015's or the note's, the numbers support (rule in the module docstring).
    `entries`: one per net and seed; `errors`: `train_errors`."""
    out = {"he_2015": HE_2015, "note": NOTE, "rule": _CLAIMS_RULE.format(margin=margin)}
    out["train_errors"] = errors
    plain: dict[int, list[tuple]] = {}  # depth -> [(seed, entry, training error)] of the plain
    # nets trained to completion
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
    profiles = [prof[p]["profile"] for p in PHASES if prof[p]]
    if not degradation["shown"]:
        status = "no_degradation"
    elif "vanishing" in profiles:
        status = "supports_note"
    elif profiles and all(f == "healthy" for f in profiles):
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


def like_for_like(study_dir: str | Path, records: list[dict], study: dict) -> dict:
    """Whether each plain net and its residual twin (same depth, same seed) share seed, recipe and
    initial weights (rule in the module docstring), from the measurement records and the run configs."""
    by = {(r["arch"], r["depth"], _seed(r)): r for r in records}
    residual_args = study.get("residual_args") or {}
    pairs = []
    for _, depth, seed in sorted(k for k in by if k[0] == "plain" and ("residual", *k[1:]) in by):
        p, r = by["plain", depth, seed], by["residual", depth, seed]
        cp, cr = (runs.read_config(Path(study_dir) / x["run_dir"]) for x in (p, r))
        digests = p.get("init_digest"), r.get("init_digest")
        pairs.append(
            {
                "depth": depth,
                "seed": seed,
                "same_seed": cp.get("seed") == cr.get("seed"),
                "same_recipe": _recipe(cp) == _recipe(cr),
                "same_init": None if None in digests else digests[0] == digests[1],
            }
        )
    checks = [x[k] for x in pairs for k in ("same_seed", "same_recipe", "same_init")]
    if not pairs:
        status = "unknown"
    elif residual_args or False in checks:
        status = "differs"
    else:
        status = "unknown" if None in checks else "same"
    return {
        "status": status,
        "residual_args": residual_args,
        "pairs": pairs,
        "text": _like_text(status, pairs, residual_args),
    }


def _recipe(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in PER_RUN}


def _like_text(status: str, pairs: list[dict], residual_args: dict) -> str:
    if not pairs:
        return "No depth has both a plain and a residual net, so there is no pair to compare."
    depths = join_values(sorted({x["depth"] for x in pairs}))
    if status == "same":
        return (
            f"Like for like: at each depth ({depths}) and seed the plain net and its residual twin "
            "share the seed, the training recipe (run configs equal apart from the model) and the "
            "initial weights (equal digests of every shared tensor); no option is set on one arm only."
        )
    parts = []
    if residual_args:
        parts.append(f"the residual arm is its own arm, {_arm('residual', residual_args)}")
    for key, what in (
        ("same_seed", "seeds"),
        ("same_recipe", "training recipes"),
        ("same_init", "initial weights"),
    ):
        bad = sorted({x["depth"] for x in pairs if x[key] is False})
        if bad:
            parts.append(f"the {what} differ at depth {join_values(bad)}")
    unknown = sorted({x["depth"] for x in pairs if x["same_init"] is None})
    if unknown:
        parts.append(f"the initial weights were not recorded (depth {join_values(unknown)})")
    lead = "Not like for like" if status == "differs" else "Like for like not fully checked"
    return f"{lead}: {'; '.join(parts)}."


def _arm(arch: str, residual_args: dict) -> str:
    """The arm's label: 'residual (zero_init_residual=True)' when options are set on it alone."""
    if arch != "residual" or not residual_args:
        return arch
    return f"{arch} ({', '.join(f'{k}={v}' for k, v in sorted(residual_args.items()))})"


def write_summary(study_dir: str | Path) -> dict:
    """Collect the measurements, judge them (verdict, claims, like for like) and write
    `<study_dir>/summary.json`."""
    study_dir = Path(study_dir)
    study = runs.read_json(study_dir / runs.STUDY)
    records = collect(study_dir)
    entries = nets(records)
    summary = {k: v for k, v in study.items() if k not in ("nets", "seed_nets", "verdict")}
    summary.update(study="gradients", nets=combine(entries), seed_nets=entries)
    summary["verdict"] = verdict(entries)
    summary["claims"] = claims(entries, train_errors(study_dir, entries))
    summary["like_for_like"] = like_for_like(study_dir, records, study)
    if summary["like_for_like"]["status"] == "differs":
        summary["verdict"]["text"] += f" {summary['like_for_like']['text']}"
    diverged = [
        runs.diverged_note(study_dir / e["run_dir"])
        for e in entries
        if e["train_status"] == "diverged"
    ]
    if diverged:
        summary["verdict"]["text"] += (
            f" Diverged in training, so measured at init only: {'; '.join(diverged)}."
        )
    summary = finite_tree(summary)
    runs.write_json(study_dir / runs.SUMMARY, summary, strict=True)
    return summary


# ---------------------------------------------------------------------------------------------- text + html


def _fmt(x: float | None, spec: str = ".3g") -> str:
    return "—" if x is None or not math.isfinite(x) else format(x, spec)


def _seed_entries(summary: dict, e: dict) -> list[dict]:
    """The per-seed entries of one (arch, depth) entry (a summary without them: the entry itself)."""
    es = [
        x
        for x in summary.get("seed_nets") or []
        if (x["arch"], x["depth"]) == (e["arch"], e["depth"])
    ]
    return es or [e]


def _ratio_cell(es: list[dict], phase: str) -> tuple[str, str]:
    """(ratio over seeds with the seeds' range, profile of every seed or 'mixed') of one phase."""
    ratios = [(x[phase] or {}).get("weight_ratio") for x in es if x[phase]]
    if not ratios:
        return "—", "—"
    calls = {profile(r) for r in ratios}
    ratio = geomean(ratios)
    spread = sorted(r for r in ratios if r is not None and not math.isnan(r))
    text = _fmt(ratio) + (f" [{_fmt(spread[0])}, {_fmt(spread[-1])}]" if len(spread) > 1 else "")
    return text, (calls.pop() or "—") if len(calls) == 1 else "mixed"


def _rows(summary: dict) -> list[list[str]]:
    rows = []
    errors = summary.get("claims", {}).get("train_errors", {})
    for e in summary["nets"]:
        i, t = e["init"], e["trained"] or {}
        es = _seed_entries(summary, e)
        error = mean_std([_error(errors, x) for x in es])
        statuses = [x["train_status"] for x in es]
        rows.append(
            [
                _arm(e["arch"], summary.get("residual_args") or {}),
                str(e["depth"]),
                fmt_count(e["params"]),
                str(len(es)),
                "—" if error[0] is None else fmt_mean_std(*error),
                *_ratio_cell(es, "init"),
                *_ratio_cell(es, "trained"),
                _fmt(i["block_input_ratio"]),
                f"{i['acf1']:.3f} ± {i['acf1_std']:.3f}",
                _fmt(t.get("acf1"), ".3f"),
                f"{i['neighbour_corr']:.3f}",
                _fmt(t.get("loss"), ".3f"),
                ", ".join(f"{k} x{statuses.count(k)}" if len(es) > 1 else k
                          for k in dict.fromkeys(statuses)),
            ]
        )  # fmt: skip
    return rows


HEADER = [
    "arch",
    "depth",
    "params",
    "seeds",
    "train error",
    "|g| first/last W, init",
    "profile",
    "trained",
    "profile",
    "|g| first/last block input, init",
    "acf(1) init ± std",
    "acf(1) trained",
    "neighbour corr init",
    "loss trained",
    "training",
]


def format_table(summary: dict) -> str:
    """The per-net numbers and the verdict as plain text for the terminal."""
    rows = [HEADER, *_rows(summary)]
    widths = [max(len(r[c]) for r in rows) for c in range(len(HEADER))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    v, c = summary["verdict"], summary.get("claims")
    lines.append(f"verdict ({v['status']}): {v['text']}")
    if c:  # absent from summaries written before the claims were judged
        lines.append(f"claims ({c['status']}): {c['text']}")
    return "\n".join(lines)


def build_report(study_dir: str | Path) -> Path:
    """summary.json, the four figures and report.html, from the study folder alone."""
    study_dir = Path(study_dir)
    summary = write_summary(study_dir)
    records = collect(study_dir)
    figs = {
        "norms": plot_norms(
            records, "weight_norms", "weight layer (forward order)", study_dir / "norms.png"
        ),
        "activations": plot_norms(
            records, "block_input_norms", "block", study_dir / "activations.png"
        ),
        "shattering": plot_shattering(records, nets(records), study_dir / "shattering.png"),
        "lines": plot_lines(records, study_dir / "lines.png"),
    }
    v = summary["verdict"]
    label, tone = _LABELS[v["status"]]
    page = Page(
        "Gradients: plain vs residual networks",
        f"{study_dir.name} · {summary.get('data')} · gradient norms per layer and shattered "
        "gradients (Balduzzi et al. 2017, Figs. 1-2)",
    )
    page.verdict(label, v["text"], tone, [v.get("rule", "")])
    c = summary["claims"]
    label, tone = _CLAIM_LABELS[c["status"]]
    page.heading("Vanishing gradients and degradation: two claims").verdict(
        label, c["text"], tone, [c["rule"]]
    )
    page.bullets(
        [
            f"{HE_2015['source']}: “{HE_2015['quote']}”",
            f"{NOTE['source']}: “{NOTE['original']}” (“{NOTE['translation']}”)",
            summary["like_for_like"]["text"],
        ]
    )
    page.heading("Gradient norm per layer").figure(
        figs["norms"],
        "||dL/dW|| of every weight layer on the main path against its index (log scale), "
        "one line per depth and seed; left plain, right residual; top at init, bottom after "
        "training. A flat line is a gradient that neither vanishes nor explodes on its way to the "
        "input.",
    )
    page.figure(
        figs["activations"],
        "||dL/da|| of the input a of every block against the block index (log scale).",
    )
    page.heading("Shattered gradients").figure(
        figs["shattering"],
        "Left: acf(1), the correlation between the gradients of neighbouring inputs "
        "on a line, against depth (bars: std over the lines of every seed). Middle and right: the "
        "autocorrelation against lag at init, one line per depth and seed. In the paper (Fig. 2) feedforward nets fall to white noise (acf ≈ 0) "
        "with depth, resnets keep their correlation.",
    )
    page.figure(
        figs["lines"],
        "The gradient along one line at init (the first seed), one trace per depth (Fig. 1 "
        "style): smooth (brown-noise-like) for a structured gradient, jagged (white-noise-like) "
        "for a shattered one.",
    )
    page.heading("Numbers").table(
        HEADER,
        _rows(summary),
        caption="Over seeds: train error is the mean ± std of the engine's final evaluation on the "
        "whole training set; first/last is the ratio of the first to the last layer's gradient norm, "
        "its geometric mean over seeds [lowest, highest seed], and its profile by the claims rule "
        "when every seed has it (else mixed); acf(1) ± std over the lines of every seed.",
    )
    skip = ("study", "nets", "seed_nets", "verdict", "recipe", "train")
    recipe = summary.get("recipe") if isinstance(summary.get("recipe"), dict) else None
    page.setup(
        _what_was_measured(summary), {k: v for k, v in summary.items() if k not in skip}, recipe
    )
    return page.write(study_dir / runs.REPORT)


def _what_was_measured(summary: dict) -> str:
    return (
        f"Plain nets and their residual twins ({summary.get('family')} family, depths "
        f"{join_values(summary.get('depths', []))}, seeds "
        f"{join_values(summary.get('seeds', [summary.get('seed', 0)]))}) with the same initial "
        f"weights, on {summary.get('data')}, each seed on its own batches and lines: at initialisation and after {summary.get('iters')} SGD steps of the "
        "training engine. Gradient norms: the mean cross-entropy of "
        f"{summary.get('batches')} real training batches, in train mode. Shattering: the gradient of "
        f"the logit of the start image's class along {summary.get('lines')} lines between two test "
        f"images ({summary.get('points')} points each), in eval mode with batch-norm statistics "
        "re-estimated on the same batches."
    )
