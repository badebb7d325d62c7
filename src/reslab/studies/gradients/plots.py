"""Figures of the gradients study, from its measurement records (`measurements/<arch>-<depth>-s<seed>.json`):
gradient norm per layer, the autocorrelation of the gradient along a line against depth and lag
(Balduzzi et al. 2017, Fig. 2), and the gradient along one line (Fig. 1 style). Several seeds draw
one line each in their depth's colour; the gradient along one line is the first seed's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from reslab.report import figures

ARCHS = ("plain", "residual")  # columns of the figures; the order of every list in the study
PHASES = ("init", "trained")  # measured at initialisation and after the training steps


def _once(seen: set, label: str) -> str | None:
    """`label` the first time it is seen (one legend entry for the seeds of one depth), else None."""
    if label in seen:
        return None
    seen.add(label)
    return label


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
                seen: set[str] = set()
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
                        label=_once(seen, f"{r['depth']} layers"),
                    )
                ax.set_yscale("log")
                ax.set_title(f"{arch}, {'at init' if phase == 'init' else 'after training'}")
                ax.set_xlabel(xlabel)
                if ax.lines:
                    ax.legend()
            row[0].set_ylabel("gradient norm")
        return figures.save(fig, path)


def plot_shattering(records: list[dict], entries: list[dict], path: str | Path) -> Path:
    """acf(1) against depth (init solid, trained dashed; bars = std over lines), and acf(k) against lag
    at init for plain and residual nets, one line per depth (Balduzzi et al. 2017, Fig. 2). `entries`:
    the per-net numbers of each phase (`report.nets`)."""
    colors = figures.depth_colors([r["depth"] for r in records])
    with figures.style():
        fig, axes = figures.figure(3, width=4.2, height=3.5)
        ax = axes[0]
        for arch in ARCHS:
            es = [e for e in entries if e["arch"] == arch]
            for phase, ls in (("init", "-"), ("trained", "--")):
                pts = [(e["depth"], e[phase]) for e in es if e[phase]]
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
            seen: set[str] = set()
            for r in records:
                if r["arch"] == arch:
                    acf = r["phases"]["init"]["acf"]
                    ax.plot(
                        range(len(acf)),
                        acf,
                        color=colors[r["depth"]],
                        lw=1.6,
                        label=_once(seen, f"{r['depth']} layers"),
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
        first = min((r.get("seed", 0) for r in records), default=0)
        for ax, arch in zip(axes, ARCHS, strict=True):
            rs = [r for r in records if r["arch"] == arch and r.get("seed", 0) == first]
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
