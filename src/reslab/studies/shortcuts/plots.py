"""Figures of the shortcut study, from its folder's numbers: test error per variant (He et al. 2016,
Tables 1 and 2) and training loss against iterations (cf. its Fig. 3); left the shortcut variants
(Table 1), right the activation placements (Table 2), each panel opening with identity."""

from __future__ import annotations

from pathlib import Path

import matplotlib

from reslab.report import figures
from reslab.training import runs as rf

IDENTITY, OTHER, DIVERGED = figures.ARCH_COLORS["residual"], "#9aa3ad", figures.ARCH_COLORS["plain"]


def panel(groups: list[dict], table: int) -> list[dict]:
    """The groups of `table`'s variants, identity first (the original unit of both tables)."""
    gs = [g for g in groups if g["table"] == table or g["variant"] == "identity"]
    return sorted(gs, key=lambda g: g["variant"] != "identity")


def _label(name: str, table: int) -> str:
    return "original" if table == 2 and name == "identity" else name


def plot_bars(groups: list[dict], path: str | Path) -> Path:
    """Test error per variant, mean ± std over seeds (bars), single seeds as dots, diverged seeds as
    crosses at the top; the identity's mean as a dashed line."""
    ident = next((g for g in groups if g["variant"] == "identity"), None)
    top = max([100 * e for g in groups for e in g["test_errors"] if e is not None] + [1.0])
    titles = ("shortcut variants (Table 1)", "activation placements (Table 2)")
    with figures.style():
        fig, axes = figures.figure(2, width=5.4, height=4.0, sharey=True)
        for table, ax, title in zip((1, 2), axes, titles, strict=True):
            gs = panel(groups, table)
            for i, g in enumerate(gs):
                color = IDENTITY if g["variant"] == "identity" else OTHER
                if g["test_error_mean"] is not None:
                    std = 100 * (g["test_error_std"] or 0)
                    ax.bar(i, 100 * g["test_error_mean"], 0.7, color=color, yerr=std, capsize=3)
                seeds = [100 * e for e in g["test_errors"] if e is not None]
                ax.scatter([i] * len(seeds), seeds, color="#1d2430", s=10, zorder=3)
                if n := len(g["diverged"]):
                    ax.scatter([i] * n, [top * 1.02] * n, marker="x", color=DIVERGED, zorder=3)
            if ident and ident["test_error_mean"] is not None:
                ax.axhline(100 * ident["test_error_mean"], color=IDENTITY, lw=1, ls="--")
            ax.set_xticks(range(len(gs)))
            ax.set_xticklabels([_label(g["variant"], table) for g in gs], rotation=40, ha="right")
            ax.set_title(title)
            ax.grid(axis="x", visible=False)
        figures.percent_axis(axes[0], "test error")
        axes[0].set_ylim(0, top * 1.06)
        return figures.save(fig, path)


def _curve(study_dir: Path, run: dict) -> tuple[list, list]:
    """(steps, training losses) a run logged (none when it diverged before logging any)."""
    train = rf.train_lines(study_dir / run["run_dir"])
    return [ln["step"] for ln in train], [ln["train_loss"] for ln in train]


def plot_curves(study_dir: Path, groups: list[dict], runs: list[dict], path: str | Path) -> Path:
    """Training loss against iterations, mean over seeds, one line per variant (log scale)."""
    cmap = matplotlib.colormaps["tab10"]
    with figures.style():
        fig, axes = figures.figure(2, width=5.4, height=3.8, sharey=True)
        for ax, table in zip(axes, (1, 2), strict=True):
            for i, name in enumerate(g["variant"] for g in panel(groups, table)):
                curves = [_curve(study_dir, r) for r in runs if r["variant"] == name]
                x, y, _ = figures.mean_curve(curves)
                if len(x):
                    identity = name == "identity"
                    color, lw = (IDENTITY, 2.4) if identity else (cmap(i % 10), 1.3)
                    ax.plot(x, figures.smooth(y, 3), color=color, lw=lw, label=_label(name, table))
            figures.log_axis(ax)
            ax.set_xlabel("iterations")
            ax.set_title(f"training loss, Table {table} variants")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
        axes[0].set_ylabel("training loss (mean over seeds)")
        return figures.save(fig, path)
