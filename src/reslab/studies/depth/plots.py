"""The depth study's figures, drawn from the numbers `report.py` reads out of the study folder:
depth.png (final and starting training loss, and final training error, against depth) and
curves.png (training loss against iterations of every arm at the deepest depth)."""

from __future__ import annotations

from pathlib import Path

from matplotlib import ticker
from matplotlib.axes import Axes

from reslab.report import figures

# plain and batch-norm residual as in every study; the norm-free arms in their own colours. ReZero and
# SkipInit build the same network when there is no norm, so SkipInit is dashed to stay visible.
COLORS = {**figures.ARCH_COLORS, "rezero": "#2e8b57", "skipinit": "#d98c00", "fixup": "#7b3294"}
DASHES = {"skipinit": (0, (4, 2))}


def _style(arm: str) -> dict:
    return {"color": COLORS[arm], "ls": DASHES.get(arm, "-")}


def _log_loss_axis(ax: Axes, label: str) -> None:
    """A log-scale loss axis with plain numbers at 1, 2 and 5 times the powers of ten."""
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_locator(ticker.NullLocator())
    ax.set_ylabel(label)


def _crosses(ax: Axes, depths: list[int], y: float, color: str) -> None:
    """Diverged cells: a labelled cross at height y (the top of the panel), not a measured value."""
    ax.scatter(depths, [y] * len(depths), marker="x", s=60, color=color, zorder=4)
    for d in depths:
        ax.annotate("diverged", (d, y), textcoords="offset points", xytext=(0, -13),
                    ha="center", fontsize=7.5, color=color)  # fmt: skip


def plot_depth(groups: list[dict], path: str | Path) -> Path:
    """Left: final training loss (solid) and starting loss (hollow, dotted) against depth, log-log;
    right: final training error. A diverged cell is a cross at the top of the panel."""
    with figures.style():
        fig, (ax, ax_err) = figures.figure(2, width=5.0, height=3.9)
        finite = [g[k] for g in groups for k in ("start_loss", "final_train_loss") if g[k]]
        top = 2.0 * max(finite, default=10.0)
        for arm in dict.fromkeys(g["arm"] for g in groups):  # groups come in the report's arm order
            gs = [g for g in groups if g["arm"] == arm]
            ok = [g for g in gs if g["final_train_loss"] is not None]
            bad = [g["depth"] for g in gs if g["final_train_loss"] is None]
            st = _style(arm)
            ax.plot([g["depth"] for g in ok], [g["final_train_loss"] for g in ok], marker="o",
                    lw=2, label=arm, **st)  # fmt: skip
            starts = [(g["depth"], g["start_loss"]) for g in gs if g["start_loss"]]
            if starts:
                ax.plot(*zip(*starts, strict=True), color=st["color"], ls=":", lw=0.8,
                        marker="o", mfc="none", ms=4, alpha=0.7)  # fmt: skip
            if bad:
                _crosses(ax, bad, top, st["color"])
            err = [(g["depth"], 100 * g["final_train_error"]) for g in gs
                   if g["final_train_error"] is not None]  # fmt: skip
            if err:
                ax_err.plot(*zip(*err, strict=True), marker="o", lw=2, label=arm, **st)
            if bad:
                _crosses(ax_err, bad, 100, st["color"])
        depths = [g["depth"] for g in groups] or [1]
        for a in (ax, ax_err):
            figures.depth_axis(a, depths)
        _log_loss_axis(ax, "training loss")
        if any(g["final_train_loss"] is None for g in groups):
            ax.set_ylim(top=top * 1.3)  # room for the crosses
        ax.set_title("final (solid) and starting (dotted) loss")
        figures.percent_axis(ax_err, "final training error")
        ax_err.set_ylim(0, 105)
        ax_err.set_title("final training error")
        if groups:  # the error panel has room above its low curves
            ax_err.legend(loc="best", title="× = diverged", title_fontsize=8)
        return figures.save(fig, path)


def plot_curves(deep: int | None, series: list[tuple], path: str | Path) -> Path:
    """Training loss (mini-batch, train mode, lightly smoothed) against iterations for every arm at the
    deepest depth `deep`, mean over seeds; `series` is [(arm, [(steps, losses) per seed], step it
    diverged at or None)]; a diverged run ends in a cross at its last finite loss."""
    with figures.style():
        fig, (ax,) = figures.figure(1, width=6.4, height=3.9)
        for arm, curves, diverged_at in series:
            st = _style(arm)
            x, y, _ = figures.mean_curve(curves)
            label = arm
            if diverged_at is not None:
                label += f" (diverged at step {diverged_at})"
                for cx, cy in curves:
                    if len(cx):
                        ax.scatter(cx[-1:], cy[-1:], marker="x", s=60, color=st["color"], zorder=4)
            if len(x):
                ax.plot(x, figures.smooth(y, max(1, len(y) // 25)), lw=1.8, label=label, **st)
            else:
                ax.plot([], [], label=label, **st)
        _log_loss_axis(ax, "training loss (mini-batch)")
        ax.set_xlabel("iterations")
        ax.set_title(f"training loss at {deep} layers" if deep else "no runs")
        if series:
            ax.legend()
        return figures.save(fig, path)
