"""Report for the gradients study: gradient norms per layer and shattered gradients (Balduzzi et al. 2017,
"The Shattered Gradients Problem: If resnets are the answer, then what is the question?", Figs. 1-2),
plain nets vs their residual twins.

Works from the study folder alone: `study.json` and `measurements/<arch>-<depth>.json` written by
`reslab.studies.gradients`. `build_report(study_dir)` writes summary.json, norms.png, activations.png,
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
residual net measured).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from reslab.report import figures
from reslab.report.html import Page, fmt_count

ARCHS = ("plain", "residual")
PHASES = ("init", "trained")
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
    folder = Path(study_dir) / "measurements"
    if not folder.is_dir():
        raise FileNotFoundError(f"not a gradients study folder (no measurements/): {study_dir}")
    records = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    return sorted(records, key=lambda r: (ARCHS.index(r["arch"]), r["depth"]))


def _stats(phase: dict) -> dict:
    """The summary numbers of one measurement phase."""
    w, a = phase["weight_norms"], phase["block_input_norms"]
    acf1 = np.array(phase["acf1_lines"])
    return {
        "loss": phase["loss"],
        "first_weight_grad": w[0],
        "last_weight_grad": w[-1],
        "weight_ratio": w[0] / w[-1] if w[-1] > 0 else math.inf,
        "block_input_ratio": (a[0] / a[-1] if a[-1] > 0 else math.inf) if a else None,
        "acf1": float(acf1.mean()),
        "acf1_std": float(acf1.std(ddof=1)) if len(acf1) > 1 else 0.0,
        "acf1_lines": len(acf1),
        "neighbour_corr": phase["neighbour_corr"],
    }


def nets(records: list[dict]) -> list[dict]:
    """One compact entry per measured net (what summary.json lists)."""
    keys = ("arch", "depth", "model", "params", "train_status", "run_dir")
    return [
        {k: r.get(k) for k in keys}
        | {p: _stats(r["phases"][p]) if p in r["phases"] else None for p in PHASES}
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
    study = json.loads((study_dir / "study.json").read_text())
    entries = nets(collect(study_dir))
    summary = {k: v for k, v in study.items() if k not in ("nets", "verdict")}
    summary.update(study="gradients", nets=entries, verdict=verdict(entries))
    text = json.dumps(_finite(summary), indent=2, allow_nan=False)
    (study_dir / "summary.json").write_text(text + "\n")
    return summary


def _finite(obj):
    """`obj` with non-finite floats (a zero gradient's ratio) as None, so the JSON stays standard."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return None if isinstance(obj, float) and not math.isfinite(obj) else obj


# ---------------------------------------------------------------------------------------------- figures


def _phases(records: list[dict]) -> list[str]:
    return [p for p in PHASES if any(p in r["phases"] for r in records)]


def plot_norms(records: list[dict], key: str, xlabel: str, path: str | Path) -> Path:
    """Gradient norm against layer (or block) index, log y; rows = phases, columns = plain/residual,
    one line per depth."""
    phases = _phases(records)
    colors = figures.depth_colors([r["depth"] for r in records])
    with figures.style():
        fig = Figure(figsize=(10.4, 3.5 * len(phases)), layout="constrained")
        axes = fig.subplots(len(phases), 2, sharey="row", squeeze=False)
        for row, phase in zip(axes, phases, strict=True):
            for ax, arch in zip(row, ARCHS, strict=True):
                for r in records:
                    if r["arch"] != arch or phase not in r["phases"]:
                        continue
                    y = np.asarray(r["phases"][phase][key], dtype=float)
                    y = np.where(y > 0, y, np.nan)  # an exactly zero gradient has no log
                    ax.plot(
                        np.arange(1, len(y) + 1),
                        y,
                        color=colors[r["depth"]],
                        lw=1.6,
                        label=f"{r['depth']} layers",
                    )
                ax.set_yscale("log")
                ax.set_title(f"{arch}, {'at init' if phase == 'init' else 'after training'}")
                ax.set_xlabel(xlabel)
                if ax.lines:
                    ax.legend()
            row[0].set_ylabel("gradient norm")
        return figures.save(fig, path)


def plot_shattering(records: list[dict], path: str | Path) -> Path:
    """acf(1) against depth (init solid, trained dashed; bars = std over lines), and acf(k) against lag
    at init for plain and residual nets, one line per depth (Balduzzi et al. 2017, Fig. 2)."""
    colors = figures.depth_colors([r["depth"] for r in records])
    with figures.style():
        fig, axes = figures.figure(3, width=4.2, height=3.5)
        ax = axes[0]
        for arch in ARCHS:
            rs = [r for r in records if r["arch"] == arch]
            for phase, ls in (("init", "-"), ("trained", "--")):
                pts = [(r["depth"], _stats(r["phases"][phase])) for r in rs if phase in r["phases"]]
                if not pts:
                    continue
                d = [p[0] for p in pts]
                ax.errorbar(
                    d,
                    [p[1]["acf1"] for p in pts],
                    yerr=[p[1]["acf1_std"] for p in pts],
                    color=figures.ARCH_COLORS[arch],
                    ls=ls,
                    marker="o",
                    capsize=3,
                    label=f"{arch}, {'init' if phase == 'init' else 'trained'}",
                )
        figures.depth_axis(ax, [r["depth"] for r in records])
        ax.axhline(0, color="#888", lw=0.8)
        ax.set_ylabel("acf(1): neighbour correlation")
        ax.set_title("gradient correlation vs depth")
        ax.legend()
        for ax, arch in zip(axes[1:], ARCHS, strict=True):
            for r in records:
                if r["arch"] == arch:
                    acf = r["phases"]["init"]["acf"]
                    ax.plot(
                        range(len(acf)),
                        acf,
                        color=colors[r["depth"]],
                        lw=1.6,
                        label=f"{r['depth']} layers",
                    )
            ax.axhline(0, color="#888", lw=0.8)
            ax.set_xlabel("lag (grid steps along the line)")
            ax.set_title(f"{arch}: autocorrelation at init")
            if ax.lines[1:]:
                ax.legend()
        axes[1].set_ylabel("acf(lag)")
        return figures.save(fig, path)


def plot_lines(records: list[dict], path: str | Path) -> Path:
    """Fig. 1 style: the gradient along the first line (standardised), one trace per depth, stacked;
    brown-noise-like when smooth, white-noise-like when shattered."""
    colors = figures.depth_colors([r["depth"] for r in records])
    with figures.style():
        fig, axes = figures.figure(2, width=5.0, height=3.8, sharey=True)
        for ax, arch in zip(axes, ARCHS, strict=True):
            rs = [r for r in records if r["arch"] == arch]
            for i, r in enumerate(rs):
                g = np.asarray(r["phases"]["init"]["line_example"], dtype=float)
                g = (g - g.mean()) / max(g.std(), 1e-30) / 3.0  # +-1 spans +-3 std
                t = np.linspace(0, 1, len(g))
                ax.plot(
                    t, g - 2.5 * i, color=colors[r["depth"]], lw=1.0, label=f"{r['depth']} layers"
                )
            ax.set_yticks([-2.5 * i for i in range(len(rs))], [f"{r['depth']}" for r in rs])
            ax.set_xlabel("t along the line between two test images")
            ax.set_title(f"{arch}: d logit / dt at init")
        axes[0].set_ylabel("depth (each trace standardised)")
        return figures.save(fig, path)


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
        "shattering": plot_shattering(records, study_dir / "shattering.png"),
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
    page.heading("What was measured").paragraph(
        f"Plain nets and their residual twins ({summary.get('family')} family, depths "
        f"{', '.join(str(d) for d in summary.get('depths', []))}) with the same initial weights, on "
        f"{summary.get('data')}: at initialisation and after {summary.get('iters')} SGD steps of the "
        "training engine. Gradient norms: the mean cross-entropy of "
        f"{summary.get('batches')} real training batches, in train mode. Shattering: the gradient of "
        f"the logit of the start image's class along {summary.get('lines')} lines between two test "
        f"images ({summary.get('points')} points each), in eval mode with batch-norm statistics "
        "re-estimated on the same batches."
    )
    page.facts(
        {
            k: summary.get(k)
            for k in (
                "data",
                "family",
                "seed",
                "iters",
                "width",
                "model_args",
                "residual_args",
                "train",
            )
        }
    )
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
    return page.write(study_dir / "report.html")
