"""The gradients study's rules, as pure functions of the measured nets (`report.nets`): `verdict`
(do shortcuts keep the gradient in shape?) and `claims` (which claim about vanishing gradients and
degradation the numbers support).

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
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from reslab.studies.gradients.plots import ARCHS, PHASES
from reslab.studies.stats import mean_std, tolerance
from reslab.training.runs import Verdict

ORDERS = 1.0
FLOOR = 0.05
RULE = (
    "drift: |log10 first/last| plain - residual >= {orders:g} in every seed; shattering: decay of "
    "acf(1) plain - residual > max(2 * se, {floor}), over the lines of every seed"
)


# ---------------------------------------------------------------------------------------------- rows


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
    assert p is not None and r is not None  # every pair measured both nets at init
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
    tol = tolerance(se, floor)
    return decays | {"margin": margin, "tolerance": tol, "shown": margin > tol}


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


def verdict(
    entries: list[dict],
    floor: float = FLOOR,
    like: dict | None = None,
    diverged: Sequence[str] = (),
) -> Verdict:
    """Judge the study from the measured numbers (rules in the module docstring). Numbers: "drift",
    "shattering" and "diverged_notes" (`diverged`, one note per net whose training diverged); the
    text also names a like-for-like check that failed (`like`, from `report.like_for_like`) and
    those nets."""
    thresholds = {"orders": ORDERS, "floor": floor}
    rule = RULE.format(**thresholds)
    drift, shatter = _drift(entries), _shatter(combine(entries), floor)

    def judged(status: str, text: str) -> Verdict:
        if like and like["status"] == "differs":
            text += f" {like['text']}"
        if diverged:
            text += f" Diverged in training, so measured at init only: {'; '.join(diverged)}."
        numbers = {"drift": drift, "shattering": shatter, "diverged_notes": list(diverged)}
        return Verdict(status, numbers, thresholds, rule, text)

    if drift is None:
        text = "Cannot judge: the study needs at least one plain and one residual net measured."
        return judged("insufficient", text)
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
    return judged(status, text)
