"""Figures of the shortcut study, from its folder's numbers: test error per variant (He et al. 2016,
Tables 1 and 2) and training loss against iterations (cf. its Fig. 3)."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np

from reslab.models.variants import VARIANTS
from reslab.report import figures
from reslab.training import runs as rf


def _label(g: dict, table: int) -> str:
    return "original" if table == 2 and g["variant"] == "identity" else g["variant"]


def plot_bars(groups: list[dict], path: str | Path) -> Path:
    """Test error per variant, mean ± std over seeds (bars), single seeds as dots, diverged seeds as
    crosses at the top; left the shortcut variants (Table 1), right the activation placements (Table 2)."""
    ident = next((g for g in groups if g["variant"] == "identity"), None)
    panels = [
        ("shortcut variants (Table 1)", [g for g in groups if g["table"] == 1]),
        ("activation placements (Table 2)",
         ([ident] if ident else []) + [g for g in groups if g["table"] == 2]),
    ]  # fmt: skip
    top = max([100 * e for g in groups for e in g["test_errors"] if e is not None] + [1.0])
    with figures.style():
        fig, axes = figures.figure(2, width=5.4, height=4.0, sharey=True)
        for table, ax, (title, gs) in zip((1, 2), axes, panels, strict=True):
            for i, g in enumerate(gs):
                c = figures.ARCH_COLORS["residual"] if g["variant"] == "identity" else "#9aa3ad"
                if g["test_error_mean"] is not None:
                    ax.bar(i, 100 * g["test_error_mean"], color=c, width=0.7,
                           yerr=100 * (g["test_error_std"] or 0), capsize=3)  # fmt: skip
                seeds = [100 * e for e in g["test_errors"] if e is not None]
                ax.scatter([i] * len(seeds), seeds, color="#1d2430", s=10, zorder=3)
                if g["diverged"]:
                    ax.scatter([i] * len(g["diverged"]), [top * 1.02] * len(g["diverged"]),
                               marker="x", color=figures.ARCH_COLORS["plain"], zorder=3)  # fmt: skip
            if ident and ident["test_error_mean"] is not None:
                ax.axhline(100 * ident["test_error_mean"], color=figures.ARCH_COLORS["residual"],
                           lw=1, ls="--")  # fmt: skip
            ax.set_xticks(range(len(gs)))
            ax.set_xticklabels([_label(g, table) for g in gs], rotation=40, ha="right")
            ax.set_title(title)
            ax.grid(axis="x", visible=False)
        figures.percent_axis(axes[0], "test error")
        axes[0].set_ylim(0, top * 1.06)
        return figures.save(fig, path)


def train_lines(study_dir: Path, run: dict) -> list[dict]:
    """The run's logged training steps (none when it diverged before logging any)."""
    run_dir = study_dir / run["run_dir"]
    lines = rf.read_metrics(run_dir) if (run_dir / rf.METRICS).is_file() else []
    return [ln for ln in lines if ln.get("kind") == "train"]


def plot_curves(study_dir: Path, runs: list[dict], path: str | Path) -> Path:
    """Training loss against iterations, mean over seeds, one line per variant (log scale; cf. the
    paper's Fig. 3 training curves); left Table 1 variants, right Table 2."""
    cmap = matplotlib.colormaps["tab10"]
    with figures.style():
        fig, axes = figures.figure(2, width=5.4, height=3.8, sharey=True)
        for ax, table in zip(axes, (1, 2), strict=True):
            names = [n for n, v in VARIANTS.items() if v.table == table or n == "identity"]
            for i, name in enumerate(n for n in names if any(r["variant"] == n for r in runs)):
                curves = []
                for r in (r for r in runs if r["variant"] == name):
                    pts = [(ln["step"], ln["train_loss"]) for ln in train_lines(study_dir, r)]
                    if pts:
                        steps, losses = zip(*pts, strict=True)
                        curves.append((np.array(steps, float), np.array(losses, float)))
                x, y, _ = figures.mean_curve(curves)
                if len(x):
                    c = figures.ARCH_COLORS["residual"] if name == "identity" else cmap(i % 10)
                    lw = 2.4 if name == "identity" else 1.3
                    label = "original" if table == 2 and name == "identity" else name
                    ax.plot(x, figures.smooth(y, 3), color=c, lw=lw, label=label)
            figures.log_axis(ax)
            ax.set_xlabel("iterations")
            ax.set_title(f"training loss, Table {table} variants")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
        axes[0].set_ylabel("training loss (mean over seeds)")
        return figures.save(fig, path)
