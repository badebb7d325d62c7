"""The depth study's figures, depth.png and curves.png, each with its caption (`*_CAPTION`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import ticker
from matplotlib.axes import Axes

from reslab.report import figures
from reslab.studies.depth import CLIP, split_arm

# plain and the batch-norm residual arms as in every study; the negative control in grey, the
# norm-free methods in their own colours. ReZero and SkipInit build the same network without norms,
# so SkipInit is dash-dotted to stay visible; a "+clip" arm is its arm's colour, dashed.
COLORS = {"nonorm": "#555555", "rezero": "#2e8b57", "skipinit": "#d98c00", "fixup": "#7b3294"}
COLORS |= figures.ARCH_COLORS
START = dict(ls=":", lw=0.8, marker="o", mfc="none", ms=4, alpha=0.7)  # a starting loss


def _style(arm: str) -> dict:
    base, clipped = split_arm(arm)
    ls = (0, (4, 2)) if clipped else "-." if base == "skipinit" else "-"
    return {"color": COLORS[base], "ls": ls}


def _log_axis(ax: Axes, label: str) -> None:
    """A log y axis: ticks at 1, 2 and 5 per decade over a few decades, at powers of ten (no minor
    ticks) over many (a first gradient or a starting loss can be 1e9)."""
    lo, hi = ax.get_ylim()
    if hi / lo < 1e4:
        figures.log_axis(ax, label)
        return
    ax.yaxis.set_major_locator(ticker.LogLocator(numticks=8))
    ax.yaxis.set_minor_locator(ticker.NullLocator())
    ax.set_ylabel(label)


def _panel(ax: Axes, groups: list[dict], key: str, top: float, step: float, scale=1.0) -> None:
    """One value per (arm, depth) against depth. A missing value (diverged, or an overflowed
    gradient) is a cross above the measured values, each arm's crosses on their own row from `top`
    up: rows a factor `step` apart on a log axis, `step` apart on a linear one."""
    log, row = ax.get_yscale() == "log", 0
    for arm in dict.fromkeys(g["arm"] for g in groups):  # the report's arm order
        gs, st = [g for g in groups if g["arm"] == arm], _style(arm)
        pts = [(g["depth"], scale * g[key]) for g in gs if g[key] is not None]
        x, y = zip(*pts, strict=True) if pts else ((), ())
        ax.plot(x, y, marker="o", lw=1.8, ms=4, label=arm, **st)
        bad = [g["depth"] for g in gs if g[key] is None]
        if bad:
            ys = [top * step**row if log else top + step * row] * len(bad)
            ax.scatter(bad, ys, marker="x", s=50, color=st["color"], zorder=4, clip_on=False)
            row += 1


DEPTH_CAPTION = (
    "Left: final training loss (solid; eval mode on the whole training set) and starting loss "
    "(hollow, dotted; the first mini-batch before any update) against depth. Middle: final "
    "training error. Right: the global gradient norm of the first step, before any clipping. "
    "Crosses at the top: diverged runs (no final loss) and gradients that overflow fp32."
)
CURVES_CAPTION = (
    "Mini-batch training loss (train mode, lightly smoothed) of every arm at the deepest depth. A "
    "cross marks the last finite loss of a run that diverged."
)


def plot_depth(groups: list[dict], path: str | Path) -> Path:
    """depth.png (`DEPTH_CAPTION`) from the verdict's (arm, depth) groups."""
    losses = [g[k] for g in groups for k in ("start_loss", "final_train_loss") if g[k]]
    grads = [  # an overflowed first gradient is a cross; one never replayed is left out
        {**g, "first_grad_norm": None if g["first_grad_overflow"] else g["first_grad_norm"]}
        for g in groups
        if g["first_grad_norm"] is not None or g["first_grad_overflow"]
    ]
    norms = [g["first_grad_norm"] for g in grads if g["first_grad_norm"]]
    with figures.style():
        fig, (ax, ax_err, ax_g) = figures.figure(3, width=4.2, height=3.9)
        for a in (ax, ax_g):  # log scales first: _panel places its crosses by the scale
            a.set_yscale("log")
        _panel(ax, groups, "final_train_loss", 2.0 * max(losses, default=10.0), 1.35)
        for arm in dict.fromkeys(g["arm"] for g in groups if not g["arm"].endswith(CLIP)):
            gs = [g for g in groups if g["arm"] == arm and g["start_loss"]]  # +clip: the same start
            x, y = [g["depth"] for g in gs], [g["start_loss"] for g in gs]
            ax.plot(x, y, color=_style(arm)["color"], **START)
        _panel(ax_err, groups, "final_train_error", 104.0, 4.0, scale=100.0)
        _panel(ax_g, grads, "first_grad_norm", 10.0 * max(norms, default=1.0), 4.0)
        for a in (ax, ax_err, ax_g):
            figures.depth_axis(a, [g["depth"] for g in groups] or [1])
        _log_axis(ax, "training loss")
        ax.set_title("final (solid) and starting (dotted) loss")
        figures.percent_axis(ax_err, "final training error")
        ax_err.set_ylim(0, None)
        ax_err.set_title("final training error")
        _log_axis(ax_g, "gradient norm, first step")
        ax_g.set_title("first gradient (× = overflow)")
        if groups:  # nine arms: beside the panels, not over their crosses
            handles = ax_err.get_legend_handles_labels()
            fig.legend(
                *handles,
                loc="outside right upper",
                title="× = diverged",
                title_fontsize=8,
                fontsize=7,
            )
        return figures.save(fig, path)


def plot_curves(runs: list[dict], lines: dict[str, list[dict]], path: str | Path) -> Path:
    """curves.png (`CURVES_CAPTION`): each arm's mean curve over its `runs` (the deepest)."""
    with figures.style():
        fig, (ax,) = figures.figure(1, width=6.4, height=3.9)
        for arm in dict.fromkeys(r["arm"] for r in runs):  # the report's arm order
            rs, st = [r for r in runs if r["arm"] == arm], _style(arm)
            points = [[(ln["step"], ln["train_loss"]) for ln in lines[r["run_dir"]]] for r in rs]
            curves = [np.array(p, dtype=float).reshape(-1, 2).T for p in points]  # (steps, losses)
            at = [r["diverged_at"] or 0 for r in rs if r["status"] == "diverged"]
            x, y, _ = figures.mean_curve(curves)
            name = f"{arm} (diverged at step {min(at)})" if at else arm
            ax.plot(x, figures.smooth(y, max(1, len(y) // 25)), lw=1.8, label=name, **st)
            for r, (cx, cy) in zip(rs, curves, strict=True):
                if r["status"] == "diverged" and len(cx):  # the run's last finite loss
                    ax.scatter(cx[-1:], cy[-1:], marker="x", s=60, color=st["color"], zorder=4)
        _log_axis(ax, "training loss (mini-batch)")
        ax.set_xlabel("iterations")
        ax.set_title(f"training loss at {runs[0]['depth']} layers" if runs else "no runs")
        if runs:
            ax.legend(fontsize=7)
        return figures.save(fig, path)
