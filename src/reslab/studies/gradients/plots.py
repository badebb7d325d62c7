"""Figures of the gradients study, from its measurement records: gradient norm per layer, the
autocorrelation of the gradient along a line against depth and lag (Balduzzi et al. 2017, Fig. 2), and
the gradient along one line (Fig. 1 style). Several seeds draw one line each in their depth's colour;
the gradient along one line is the first seed's."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from reslab.report import figures
from reslab.studies.base import ARCHS
from reslab.studies.gradients import PHASES


def _per_net(
    ax: Axes, nets: Sequence[tuple[int, Sequence[float]]], start: int, colors: dict
) -> None:
    """One line per net, its (depth, y) against the index from `start`, in its depth's colour; one
    legend entry per depth."""
    for i, (depth, y) in enumerate(nets):
        label = None if any(d == depth for d, _ in nets[:i]) else f"{depth} layers"
        ax.plot(np.arange(start, start + len(y)), y, color=colors[depth], lw=1.6, label=label)
    if nets:
        ax.legend()


def plot_norms(records: list[dict], key: str, xlabel: str, path: str | Path) -> Path:
    """Gradient norm against layer (or block) index, log y; rows = phases, columns = plain/residual,
    one line per depth and seed."""
    phases = [p for p in PHASES if any(p in r["phases"] for r in records)]
    colors = figures.depth_colors([r["depth"] for r in records])
    with figures.style():
        fig = Figure(figsize=(10.4, 3.5 * len(phases)), layout="constrained")
        axes = fig.subplots(len(phases), 2, sharey="row", squeeze=False)
        for row, phase in zip(axes, phases, strict=True):
            for ax, arch in zip(row, ARCHS, strict=True):
                nets = [
                    (r["depth"], [x if x > 0 else np.nan for x in r["phases"][phase][key]])
                    for r in records
                    if r["arch"] == arch and phase in r["phases"]
                ]
                _per_net(ax, nets, 1, colors)  # an exactly zero gradient has no log: NaN
                ax.set_yscale("log")
                ax.set_title(f"{arch}, {PHASES[phase]}")
                ax.set_xlabel(xlabel)
            row[0].set_ylabel("gradient norm")
        return figures.save(fig, path)


def plot_shattering(records: list[dict], rows: list[dict], path: str | Path) -> Path:
    """acf(1) against depth (init solid, trained dashed; bars = std over lines), and acf(k) against lag
    at init for plain and residual nets, one line per depth and seed (Balduzzi et al. 2017, Fig. 2).
    `rows`: the per-net numbers of each phase (`rule.nets`)."""
    colors = figures.depth_colors([r["depth"] for r in records])
    with figures.style():
        fig, axes = figures.figure(3, width=4.2, height=3.5)
        ax = axes[0]
        for arch in ARCHS:
            for phase, ls in (("init", "-"), ("trained", "--")):
                pts = [(e["depth"], e[phase]) for e in rows if e["arch"] == arch and e[phase]]
                if pts:
                    ax.errorbar(
                        [d for d, _ in pts],
                        [x["acf1"] for _, x in pts],
                        yerr=[x["acf1_std"] for _, x in pts],
                        color=figures.ARCH_COLORS[arch],
                        ls=ls,
                        marker="o",
                        capsize=3,
                        label=f"{arch}, {phase}",
                    )
        figures.depth_axis(ax, [r["depth"] for r in records])
        ax.axhline(0, color="#888", lw=0.8)
        ax.set_ylabel("acf(1): neighbour correlation")
        ax.set_title("gradient correlation vs depth")
        ax.legend()
        for ax, arch in zip(axes[1:], ARCHS, strict=True):
            acfs = [(r["depth"], r["phases"]["init"]["acf"]) for r in records if r["arch"] == arch]
            _per_net(ax, acfs, 0, colors)
            ax.axhline(0, color="#888", lw=0.8)
            ax.set_xlabel("lag (grid steps along the line)")
            ax.set_title(f"{arch}: autocorrelation at init")
        axes[1].set_ylabel("acf(lag)")
        return figures.save(fig, path)


def plot_lines(records: list[dict], path: str | Path) -> Path:
    """Fig. 1 style: the gradient along the first line (standardised), one trace per depth, stacked;
    brown-noise-like when smooth, white-noise-like when shattered."""
    colors = figures.depth_colors([r["depth"] for r in records])
    first = min((r["seed"] for r in records), default=0)
    with figures.style():
        fig, axes = figures.figure(2, width=5.0, height=3.8, sharey=True)
        for ax, arch in zip(axes, ARCHS, strict=True):
            rs = [r for r in records if r["arch"] == arch and r["seed"] == first]
            for i, r in enumerate(rs):
                g = np.asarray(r["phases"]["init"]["line_example"], dtype=float)
                g = (g - g.mean()) / max(g.std(), 1e-30) / 3.0  # +-1 spans +-3 std
                t = np.linspace(0, 1, len(g))
                ax.plot(t, g - 2.5 * i, color=colors[r["depth"]], lw=1.0)
            ax.set_yticks([-2.5 * i for i in range(len(rs))], [f"{r['depth']}" for r in rs])
            ax.set_xlabel("t along the line between two test images")
            ax.set_title(f"{arch}: d logit / dt at init")
        axes[0].set_ylabel("depth (each trace standardised)")
        return figures.save(fig, path)
