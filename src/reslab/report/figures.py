"""Matplotlib helpers shared by the study reports: one look, one colour per depth and per arch, curve averaging.

Figures are built on `matplotlib.figure.Figure` directly (no pyplot, no global backend switch), so drawing
never opens a window and never touches a notebook's backend; PNGs are rendered by the Agg canvas.
Draw inside `with style():` so every study's figures share fonts, grid and colours.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib
import numpy as np
from matplotlib import ticker
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from numpy.typing import ArrayLike

from reslab import atomic

if TYPE_CHECKING:
    from matplotlib.typing import RcKeyType  # matplotlib >= 3.9

STYLE: dict[RcKeyType, Any] = {
    "font.size": 9.5,
    "axes.titlesize": 11,
    "axes.titleweight": "bold",
    "axes.labelsize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#d9dde3",
    "grid.linewidth": 0.6,
    "legend.frameon": False,
    "legend.fontsize": 8.5,
    "figure.facecolor": "white",
    "savefig.facecolor": "white",
}
# plain = warm, residual = cool, the same in every study
ARCH_COLORS = {"plain": "#c0392b", "residual": "#1f5f99", "zeroinit": "#2a9d8f"}
DPI = 150


@contextlib.contextmanager
def style() -> Iterator[None]:
    """Apply the shared rcParams while drawing (and saving) figures."""
    with matplotlib.rc_context(STYLE):
        yield


def figure(ncols: int = 1, *, width: float = 5.0, height: float = 3.6, sharey: bool = False):
    """A `Figure` with `ncols` side-by-side axes, each `width` x `height` inches. Returns (fig, [axes])."""
    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    axes = fig.subplots(1, ncols, sharey=sharey, squeeze=False)[0]
    return fig, list(axes)


def save(fig: Figure, path: str | Path) -> Path:
    """Write `fig` as a PNG at the shared resolution and return the path."""
    with atomic.replacing(path) as tmp:
        fig.savefig(tmp, dpi=DPI, format="png")
    return Path(path)


def depth_colors(depths: Sequence[int]) -> dict[int, tuple]:
    """One colour per distinct depth, shallow = light to deep = dark, so a depth has one colour across panels."""
    depths = sorted(set(depths))
    cmap = matplotlib.colormaps["viridis"]
    if len(depths) == 1:
        return {depths[0]: cmap(0.35)}
    # stop at 0.85: the top of viridis is a yellow that is hard to see on white
    return {d: cmap(0.85 * (1 - i / (len(depths) - 1))) for i, d in enumerate(depths)}


def smooth(y: Sequence[float], window: int) -> np.ndarray:
    """Centred moving average; the window shrinks at the ends so the curve keeps its first and last points."""
    a = np.asarray(y, dtype=float)
    if window <= 1 or len(a) < 3:
        return a
    kernel = np.ones(min(window, len(a)))
    return np.convolve(a, kernel, mode="same") / np.convolve(np.ones_like(a), kernel, mode="same")


def mean_curve(curves: Sequence[tuple[ArrayLike, ...]]):  # (x, y) pairs
    """Mean and std of several (x, y) curves on the first curve's x grid, over the x range all of them cover.

    Seeds of one configuration log at the same steps, so the interpolation is exact in the usual case.
    Returns (x, mean, std) as arrays; std is zero for a single curve.
    """
    arrays = [(np.asarray(x, float), np.asarray(y, float)) for x, y in curves]
    arrays = [(x, y) for x, y in arrays if len(x)]
    if not arrays:
        return np.empty(0), np.empty(0), np.empty(0)
    lo = max(x[0] for x, _ in arrays)
    hi = min(x[-1] for x, _ in arrays)
    grid = arrays[0][0]
    grid = grid[(grid >= lo) & (grid <= hi)]
    ys = np.stack([np.interp(grid, x, y) for x, y in arrays])  # (curves, len(grid))
    return grid, ys.mean(0), ys.std(0)


def percent_axis(ax: Axes, label: str) -> None:
    """Label a y axis that holds errors already multiplied by 100."""
    ax.set_ylabel(f"{label} (%)")
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))


def depth_axis(ax: Axes, depths: Sequence[int]) -> None:
    """Depth on x: log scale when depths span more than 4x, ticks exactly at the measured depths."""
    depths = sorted(set(depths))
    if depths and depths[-1] > 4 * depths[0]:
        ax.set_xscale("log")
        ax.xaxis.set_minor_locator(ticker.NullLocator())
    ax.set_xticks(depths)
    ax.set_xticklabels([str(d) for d in depths])
    ax.set_xlabel("depth (layers)")


def log_axis(ax: Axes, label: str = "") -> None:
    """A log-scale y axis with ticks at 1, 2 and 5 per decade, labelled as plain numbers."""
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    if label:
        ax.set_ylabel(label)
