"""The gradients study's rows and its verdict rule: `nets` (one row per net and seed, from its
measurement record), `combine` (one row per net over its seeds) and `verdict`, a pure function of the
rows that `RULE` states with its thresholds: do shortcuts keep the gradient in shape?

Both parts judge the numbers at initialisation, where each plain net and its residual twin hold the
same weights (a net whose training diverged is measured there only; the text names it). The drift is
judged seed by seed, as the two arms of one seed share its initial weights; the shattering over the
lines of every seed, whose spread gives the standard error of the decay difference. A ratio over seeds
is their geometric mean (the mean of its log10).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from reslab.studies.base import ARCHS
from reslab.studies.gradients import PHASES
from reslab.studies.stats import mean_std, tolerance
from reslab.training.runs import Verdict

ORDERS = 1.0
FLOOR = 0.05
RULE = (
    "drift: |log10 first/last| plain - residual >= {orders:g} in every seed; shattering: decay of "
    "acf(1) plain - residual > max(2 * se, {floor}), over the lines of every seed"
)
LEADS = {
    "shown": "Shortcuts keep the gradient in shape:",
    "partly": "Partly shown:",
    "not_shown": "Not shown:",
}


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else math.inf


def phase_numbers(phase: dict) -> dict:
    """The summary numbers of one measurement phase (acf(1): mean and sample std over lines)."""
    w, a = phase["weight_norms"], phase["block_input_norms"]
    acf1, acf1_std = mean_std(phase["acf1_lines"])
    return {
        "loss": phase["loss"],
        "first_weight_grad": w[0],
        "last_weight_grad": w[-1],
        "weight_ratio": _ratio(w[0], w[-1]),
        "block_input_ratio": _ratio(a[0], a[-1]) if a else None,
        "acf1": acf1,
        "acf1_std": acf1_std or 0.0,
        "acf1_lines": len(phase["acf1_lines"]),
        "neighbour_corr": phase["neighbour_corr"],
    }


def nets(records: list[dict]) -> list[dict]:
    """One row per measured net and seed (summary.json "seed_nets")."""
    keys = ("arch", "depth", "model", "params", "train_status", "run_dir", "seed")
    return [
        {k: r.get(k) for k in keys}
        | {p: phase_numbers(r["phases"][p]) if p in r["phases"] else None for p in PHASES}
        for r in records
    ]


def combine(rows: list[dict]) -> list[dict]:
    """One row per (arch, depth) over its seeds (summary.json "nets"); a net of one seed is its own
    row, less its seed."""
    groups: dict[tuple, list[dict]] = {}
    for e in rows:
        groups.setdefault((e["arch"], e["depth"]), []).append(e)
    out = []
    for es in groups.values():
        es = sorted(es, key=lambda e: e["seed"])
        row = {k: v for k, v in es[0].items() if k != "seed"}
        if len(es) > 1:
            status = [e.get("train_status", "completed") for e in es]
            row["train_status"] = next((x for x in status if x != "completed"), "completed")
            row |= {p: _combine_phase([e[p] for e in es if e[p]]) for p in PHASES}
        out.append(row)
    return out


def _combine_phase(phases: list[dict]) -> dict | None:
    """One phase over seeds: means, geometric means of the norms and their ratios, acf(1) mean and
    sample std over all lines (pooled from each seed's mean, std and count)."""
    if not phases:
        return None
    n = sum(x["acf1_lines"] for x in phases)
    acf1 = sum(x["acf1"] * x["acf1_lines"] for x in phases) / n
    ss = sum((x["acf1_lines"] - 1) * x["acf1_std"] ** 2 for x in phases)
    ss += sum(x["acf1_lines"] * (x["acf1"] - acf1) ** 2 for x in phases)
    geo = ("first_weight_grad", "last_weight_grad", "weight_ratio", "block_input_ratio")
    return {
        "loss": mean_std([x["loss"] for x in phases])[0],
        **{k: geomean([x.get(k) for x in phases]) for k in geo},
        "acf1": acf1,
        "acf1_std": math.sqrt(ss / (n - 1)) if n > 1 else 0.0,
        "acf1_lines": n,
        "neighbour_corr": mean_std([x["neighbour_corr"] for x in phases])[0],
    }


def log10(x: float) -> float:
    """log10 of a ratio of norms, -inf for 0 and inf for inf; its abs is the orders of magnitude."""
    return math.log10(x) if 0 < x < math.inf else -math.inf if x <= 0 else math.inf


def geomean(xs: list[float | None]) -> float | None:
    """The geometric mean of the positive numbers `xs` (0 and inf allowed, None left out); NaN when
    they hold both 0 and inf."""
    logs = [log10(x) for x in xs if x is not None and not math.isnan(x)]
    if not logs:
        return None
    if len(logs) == 1:
        return next(x for x in xs if x is not None)
    m = sum(logs) / len(logs)
    return math.nan if math.isnan(m) else 0.0 if m == -math.inf else 10**m if m < 308 else math.inf


def ratio_text(x: float | None) -> str:
    """A ratio of norms: '1.34e+10x', '0.471x', '1/361'."""
    if x is None or math.isnan(x):
        return "—"
    return f"{x:.3g}x" if x >= 0.01 else f"1/{1 / x:.3g}" if x > 0 else "0"


def seed_range(ratios: list[float | None]) -> str:
    """', seeds 1/40 to 1/90' for ratios of several seeds; '' for one."""
    xs = sorted(x for x in ratios if x is not None and not math.isnan(x))
    return f", seeds {ratio_text(xs[0])} to {ratio_text(xs[-1])}" if len(xs) > 1 else ""


def _drift(rows: list[dict]) -> dict | None:
    """The drift part over the seeds that measured both arms: ratios over seeds, the call seed by seed."""
    deepest = {(e["seed"], e["arch"]): e for e in sorted(rows, key=lambda e: e["depth"])}
    seeds = sorted(s for s, a in deepest if a == "plain" and (s, "residual") in deepest)
    if not seeds:
        return None
    plain, res = ([deepest[s, a] for s in seeds] for a in ARCHS)
    init = [[e["init"]["weight_ratio"] for e in es] for es in (plain, res)]
    trained = [[(e["trained"] or {}).get("weight_ratio") for e in es] for es in (plain, res)]
    p, r = geomean(init[0]), geomean(init[1])
    assert p is not None and r is not None  # every pair measured both nets at init
    diffs = [abs(log10(a)) - abs(log10(b)) for a, b in zip(*init, strict=True)]
    p_trained, r_trained = (None if None in t else geomean(t) for t in trained)
    return {
        "plain_depth": plain[0]["depth"],
        "residual_depth": res[0]["depth"],
        "plain_ratio": p,
        "residual_ratio": r,
        "plain_orders": abs(log10(p)),
        "residual_orders": abs(log10(r)),
        "plain_direction": "explode" if p > 1 else "vanish",
        "shown": all(d >= ORDERS for d in diffs),
        "plain_ratio_trained": p_trained,
        "residual_ratio_trained": r_trained,
        "seeds": seeds,
        "plain_ratios": init[0],
        "residual_ratios": init[1],
        "orders_differences": diffs,
    }


def _shatter(rows: list[dict], floor: float) -> dict | None:
    ends = {a: sorted((e for e in rows if e["arch"] == a), key=lambda e: e["depth"]) for a in ARCHS}
    if any(len(es) < 2 for es in ends.values()):
        return None
    decays, var = {}, {}
    for arch, es in ends.items():
        lo, hi = es[0]["init"], es[-1]["init"]
        var[arch] = sum(s["acf1_std"] ** 2 / s["acf1_lines"] for s in (lo, hi))
        decays[arch] = {
            "shallow_depth": es[0]["depth"],
            "deep_depth": es[-1]["depth"],
            "shallow_acf1": lo["acf1"],
            "deep_acf1": hi["acf1"],
            "decay": lo["acf1"] - hi["acf1"],
        }
    margin = decays["plain"]["decay"] - decays["residual"]["decay"]
    tol = tolerance(math.sqrt(var["plain"] + var["residual"]), floor)
    return decays | {"margin": margin, "tolerance": tol, "shown": margin > tol}


def verdict(
    rows: list[dict], floor: float = FLOOR, like: dict | None = None, diverged: Sequence[str] = ()
) -> Verdict:
    """Judge the per-seed `rows` by `RULE`: numbers "drift", "shattering" and "diverged_notes" (one
    per net whose training diverged). The text also names a like-for-like check that failed (`like`,
    from `report.like_for_like`) and those nets."""
    thresholds = {"orders": ORDERS, "floor": floor}
    drift, shatter = _drift(rows), _shatter(combine(rows), floor)
    shown = [drift is not None and drift["shown"], shatter is not None and shatter["shown"]]
    status = "shown" if all(shown) else "partly" if any(shown) else "not_shown"
    status = "insufficient" if drift is None else status
    text = _text(status, drift, shatter)
    if like and like["status"] == "differs":
        text += f" {like['text']}"
    if diverged:
        text += f" Diverged in training, so measured at init only: {'; '.join(diverged)}."
    numbers = {"drift": drift, "shattering": shatter, "diverged_notes": list(diverged)}
    return Verdict(status, numbers, thresholds, RULE.format(**thresholds), text)


def _text(status: str, d: dict | None, s: dict | None) -> str:
    if d is None:
        return "Cannot judge: the study needs at least one plain and one residual net measured."
    n = len(d["seeds"])
    over = f"geometric means over {n} seeds: " if n > 1 else ""
    parts = [
        f"at initialisation ({over}first layer / last layer) the gradient norm ratio is "
        f"{ratio_text(d['plain_ratio'])} in the {d['plain_depth']}-layer plain net (gradients "
        f"{d['plain_direction']} toward the input over {d['plain_orders']:.1f} orders of "
        f"magnitude{seed_range(d['plain_ratios'])}) vs {ratio_text(d['residual_ratio'])} in the "
        f"{d['residual_depth']}-layer residual net ({d['residual_orders']:.1f} orders"
        f"{seed_range(d['residual_ratios'])})"
    ]
    if n > 1:
        lo, hi = min(d["orders_differences"]), max(d["orders_differences"])
        parts.append(f"the plain net drifts {lo:.1f} to {hi:.1f} orders more, seed by seed")
    if d["plain_ratio_trained"] is not None and d["residual_ratio_trained"] is not None:
        parts.append(
            f"after training the ratios are {ratio_text(d['plain_ratio_trained'])} (plain) and "
            f"{ratio_text(d['residual_ratio_trained'])} (residual)"
        )
    if s is not None:
        p, r = s["plain"], s["residual"]
        parts.append(
            f"the correlation between gradients of neighbouring inputs, acf(1), falls from "
            f"{p['shallow_acf1']:.2f} to {p['deep_acf1']:.2f} in plain nets ({p['shallow_depth']} → "
            f"{p['deep_depth']} layers) and from {r['shallow_acf1']:.2f} to {r['deep_acf1']:.2f} in "
            f"residual nets (decay difference {s['margin']:+.2f}, tolerance {s['tolerance']:.2f})"
        )
    tail = []
    if not d["shown"]:
        some = " in some seed" if n > 1 else ""
        tail.append(f"the drift differs by less than {ORDERS:g} order of magnitude{some}")
    if s is None:
        tail.append("shattering needs two depths per arch")
    elif not s["shown"]:
        tail.append("acf(1) does not decay faster for plain nets beyond the tolerance")
    text = f"{LEADS[status]} {'; '.join(parts)}."
    return text + (f" ({'; '.join(tail)}.)" if tail else "")
