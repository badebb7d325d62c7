"""Report for the gradients study: gradient norms per layer and shattered gradients (Balduzzi et al. 2017,
"The Shattered Gradients Problem: If resnets are the answer, then what is the question?", Figs. 1-2),
plain nets vs their residual twins.

Works from the study folder alone: `study.json`, `measurements/<arch>-<depth>.json` written by
`reslab.studies.gradients` and the run folders under `runs/` (for a run that diverged: where, and its
last finite loss). `build_report(study_dir)` writes summary.json, norms.png, activations.png,
shattering.png, lines.png and report.html.

Verdict rules (numbers at initialisation, each arch at its deepest measured depth where one is named):
  drift       ratio = ||dL/dW|| of the first weight layer / ||dL/dW|| of the last (the classifier);
              orders = |log10 ratio|, the orders of magnitude the gradient norm changes across the net.
              Shown when orders(plain) - orders(residual) >= ORDERS (= 1); the text says whether the plain
              net's gradient vanishes (ratio < 1) or explodes (ratio > 1) toward the input.
  shattering  acf(1) (correlation of the gradients of neighbouring inputs, mean over lines) per depth;
              decay = acf(1) at the shallowest depth - acf(1) at the deepest, per arch.
              Shown when decay(plain) - decay(residual) > tolerance = max(2 * se, FLOOR), where se is the
              standard error of that difference from the spread over lines, and FLOOR = 0.05.
Status: "shown" (both parts), "partly" (one), "not_shown" (neither), "insufficient" (no plain or no
residual net measured). A net whose training diverged is measured at initialisation only (the rules
above use init numbers); the verdict text names it with its step and last finite loss.
"""

from __future__ import annotations

import math
from pathlib import Path

from reslab.report.html import Page, fmt_count, join_values
from reslab.studies.gradients.plots import ARCHS, PHASES, plot_lines, plot_norms, plot_shattering
from reslab.studies.stats import finite_tree, mean_std
from reslab.training import runs

MEASUREMENTS = "measurements"  # <study>/measurements/<arch>-<depth>.json, one record per net
ORDERS = 1.0
FLOOR = 0.05
_LABELS = {
    "shown": ("shortcuts keep gradients in shape", "good"),
    "partly": ("partly shown", "warn"),
    "not_shown": ("effect not shown", "warn"),
    "insufficient": ("insufficient measurements", "neutral"),
}


def collect(study_dir: str | Path) -> list[dict]:
    """The measurement records of the study, sorted by arch then depth."""
    folder = Path(study_dir) / MEASUREMENTS
    if not folder.is_dir():
        raise FileNotFoundError(f"not a gradients study folder (no {MEASUREMENTS}/): {study_dir}")
    records = [runs.read_json(p) for p in sorted(folder.glob("*.json"))]
    return sorted(records, key=lambda r: (ARCHS.index(r["arch"]), r["depth"]))


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
    """One compact entry per measured net (what summary.json lists)."""
    keys = ("arch", "depth", "model", "params", "train_status", "run_dir")
    return [
        {k: r.get(k) for k in keys}
        | {p: phase_numbers(r["phases"][p]) if p in r["phases"] else None for p in PHASES}
        for r in records
    ]


# ---------------------------------------------------------------------------------------------- verdict


def _drift(entries: list[dict]) -> dict | None:
    plain, res = (_deepest(entries, a) for a in ARCHS)
    if plain is None or res is None:
        return None
    p, r = plain["init"]["weight_ratio"], res["init"]["weight_ratio"]
    orders_p, orders_r = _orders(p), _orders(r)
    return {
        "plain_depth": plain["depth"],
        "residual_depth": res["depth"],
        "plain_ratio": p,
        "residual_ratio": r,
        "plain_orders": orders_p,
        "residual_orders": orders_r,
        "plain_direction": "explode" if p > 1 else "vanish",
        "shown": orders_p - orders_r >= ORDERS,
        "plain_ratio_trained": (plain["trained"] or {}).get("weight_ratio"),
        "residual_ratio_trained": (res["trained"] or {}).get("weight_ratio"),
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


def _ratio_text(x: float) -> str:
    return f"{x:.3g}x" if x >= 0.01 else f"1/{1 / x:.3g}" if x > 0 else "0"


def verdict(entries: list[dict], floor: float = FLOOR) -> dict:
    """Judge the study from the measured numbers (rules in the module docstring)."""
    drift, shatter = _drift(entries), _shatter(entries, floor)
    if drift is None:
        status = "insufficient"
        text = "Cannot judge: the study needs at least one plain and one residual net measured."
        return {"status": status, "text": text, "drift": None, "shattering": None}
    parts = []
    d = drift
    parts.append(
        f"at initialisation the first layer's gradient norm is {_ratio_text(d['plain_ratio'])} the "
        f"last layer's in the {d['plain_depth']}-layer plain net (gradients {d['plain_direction']} "
        f"toward the input over {d['plain_orders']:.1f} orders of magnitude) vs "
        f"{_ratio_text(d['residual_ratio'])} in the {d['residual_depth']}-layer residual net "
        f"({d['residual_orders']:.1f} orders)"
    )
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
        tail.append(f"the drift differs by less than {ORDERS:g} order of magnitude")
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
        "rule": f"drift: |log10 first/last| plain - residual >= {ORDERS:g}; shattering: decay of "
        f"acf(1) plain - residual > max(2 * se, {floor})",
        "drift": drift,
        "shattering": shatter,
    }


def write_summary(study_dir: str | Path) -> dict:
    """Collect the measurements, judge them and write `<study_dir>/summary.json`."""
    study_dir = Path(study_dir)
    study = runs.read_json(study_dir / runs.STUDY)
    entries = nets(collect(study_dir))
    summary = {k: v for k, v in study.items() if k not in ("nets", "verdict")}
    summary.update(study="gradients", nets=entries, verdict=verdict(entries))
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


def _rows(summary: dict) -> list[list[str]]:
    rows = []
    for e in summary["nets"]:
        i, t = e["init"], e["trained"] or {}
        rows.append(
            [
                e["arch"],
                str(e["depth"]),
                fmt_count(e["params"]),
                _fmt(i["weight_ratio"]),
                _fmt(t.get("weight_ratio")),
                _fmt(i["block_input_ratio"]),
                f"{i['acf1']:.3f} ± {i['acf1_std']:.3f}",
                _fmt(t.get("acf1"), ".3f"),
                f"{i['neighbour_corr']:.3f}",
                _fmt(t.get("loss"), ".3f"),
                e["train_status"],
            ]
        )
    return rows


HEADER = [
    "arch",
    "depth",
    "params",
    "|g| first/last W, init",
    "trained",
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
    return "\n".join(
        [*lines, f"verdict ({summary['verdict']['status']}): {summary['verdict']['text']}"]
    )


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
    page.heading("Gradient norm per layer").figure(
        figs["norms"],
        "||dL/dW|| of every weight layer on the main path against its index (log scale), "
        "one line per depth; left plain, right residual; top at init, bottom after training. A flat "
        "line is a gradient that neither vanishes nor explodes on its way to the input.",
    )
    page.figure(
        figs["activations"],
        "||dL/da|| of the input a of every block against the block index (log scale).",
    )
    page.heading("Shattered gradients").figure(
        figs["shattering"],
        "Left: acf(1), the correlation between the gradients of neighbouring inputs "
        "on a line, against depth (bars: std over lines). Middle and right: the autocorrelation "
        "against lag at init. In the paper (Fig. 2) feedforward nets fall to white noise (acf ≈ 0) "
        "with depth, resnets keep their correlation.",
    )
    page.figure(
        figs["lines"],
        "The gradient along one line at init, one trace per depth (Fig. 1 "
        "style): smooth (brown-noise-like) for a structured gradient, jagged (white-noise-like) "
        "for a shattered one.",
    )
    page.heading("Numbers").table(
        HEADER,
        _rows(summary),
        caption="first/last: ratio of the first "
        "to the last layer's gradient norm; ± std over lines.",
    )
    skip = ("study", "nets", "verdict", "recipe", "train")
    recipe = summary.get("recipe") if isinstance(summary.get("recipe"), dict) else None
    page.setup(
        _what_was_measured(summary), {k: v for k, v in summary.items() if k not in skip}, recipe
    )
    return page.write(study_dir / runs.REPORT)


def _what_was_measured(summary: dict) -> str:
    return (
        f"Plain nets and their residual twins ({summary.get('family')} family, depths "
        f"{join_values(summary.get('depths', []))}) with the same initial weights, on "
        f"{summary.get('data')}: at initialisation and after {summary.get('iters')} SGD steps of the "
        "training engine. Gradient norms: the mean cross-entropy of "
        f"{summary.get('batches')} real training batches, in train mode. Shattering: the gradient of "
        f"the logit of the start image's class along {summary.get('lines')} lines between two test "
        f"images ({summary.get('points')} points each), in eval mode with batch-norm statistics "
        "re-estimated on the same batches."
    )
