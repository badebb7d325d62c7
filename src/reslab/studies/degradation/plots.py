"""Figures of the degradation study, from the study folder's numbers: training curves in the style
of He et al. 2015 Figure 6, and final error against depth."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from reslab.report import figures
from reslab.training.runs import read_metrics

LABELS = {"zeroinit": "zero-init residual"}


def _curve(lines: list[dict], kind: str, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, error in %) of the `kind` lines that hold `key`."""
    pts = [(ln["step"], ln[key]) for ln in lines if ln["kind"] == kind and ln.get(key) is not None]
    xy = np.array(pts, dtype=float).reshape(-1, 2)
    return xy[:, 0], 100 * xy[:, 1]


def plot_curves(study_dir: Path, runs: list[dict], path: Path, archs: list[str]) -> Path:
    """Fig. 6 style: train error (thin dashed) and test error (bold) vs iterations, mean over seeds;
    one panel per arm (plain left), one colour per depth shared by every panel."""
    metrics = {r["run_dir"]: read_metrics(study_dir / r["run_dir"]) for r in runs}
    colors = figures.depth_colors([r["depth"] for r in runs] or [0])
    late_max = [1.0]  # the y range shows the later part of training, as in the paper's 0-20% axes
    with figures.style():
        fig, axes = figures.figure(len(archs), width=5.2, height=3.9, sharey=True)
        for ax, arch in zip(axes, archs, strict=True):
            depths = sorted({r["depth"] for r in runs if r["arch"] == arch})
            for depth in depths:
                rs = [
                    metrics[r["run_dir"]] for r in runs if (r["arch"], r["depth"]) == (arch, depth)
                ]
                train = [_curve(lines, "train", "train_error") for lines in rs]
                test = [_curve(lines, "eval", "test_error") for lines in rs]
                c = colors[depth]
                for x, y in test if len(rs) > 1 else []:
                    ax.plot(x, y, color=c, lw=0.6, alpha=0.25)
                x, y, _ = figures.mean_curve(train)
                ax.plot(x, figures.smooth(y, max(1, len(y) // 30)), color=c, lw=1.0, ls="--")
                xt, yt, _ = figures.mean_curve(test)
                ax.plot(xt, yt, color=c, lw=2.2, label=f"{LABELS.get(arch, arch)}-{depth}")
                for xs, ys in ((x, y), (xt, yt)):
                    late = ys[xs >= 0.25 * xs[-1]] if len(xs) else ys
                    if np.isfinite(late).any():  # a diverged run logs NaN
                        late_max.append(float(np.nanmax(late)))
            if depths:
                ax.legend(loc="upper right", title="test (bold), train (dashed)", title_fontsize=8)
            else:
                ax.text(
                    0.5, 0.5, f"no {arch} runs", ha="center", va="center", transform=ax.transAxes
                )
            ax.set_title(LABELS.get(arch, arch))
            ax.set_xlabel("iterations")
        figures.percent_axis(axes[0], "error")
        axes[0].set_ylim(0, min(100.0, 1.15 * max(late_max)))
        return figures.save(fig, path)


def plot_depth(groups: list[dict], path: Path, archs: list[str]) -> Path:
    """Final training error (solid, error bars = seed std, dots = seeds, x = a diverged run drawn at
    100%) and test error (dashed) vs depth."""
    with figures.style():
        fig, (ax,) = figures.figure(1, width=5.6, height=3.9)
        for arch in archs:
            gs = [g for g in groups if g["arch"] == arch]
            if not gs:
                continue
            c, name = figures.ARCH_COLORS[arch], LABELS.get(arch, arch)
            d = [g["depth"] for g in gs]
            mean = [100 * g["train_error_mean"] for g in gs]
            std = [100 * (g["train_error_std"] or 0.0) for g in gs]
            ax.errorbar(
                d, mean, yerr=std, color=c, marker="o", lw=2, capsize=3, label=f"{name}, train"
            )
            seeds = [(g["depth"], e) for g in gs for e in g["train_errors"]]
            if ok := [(x, 100 * e) for x, e in seeds if e is not None]:
                ax.scatter(*zip(*ok, strict=True), color=c, s=12, alpha=0.35, zorder=3)
            if lost := [(x, 100.0) for x, e in seeds if e is None]:
                ax.scatter(*zip(*lost, strict=True), color=c, marker="x", s=40, zorder=4)
            if test := [
                (g["depth"], 100 * m) for g in gs if (m := g["test_error_mean"]) is not None
            ]:
                x, y = zip(*test, strict=True)
                ax.plot(x, y, color=c, lw=1.2, ls="--", marker="s", ms=3, label=f"{name}, test")
        figures.depth_axis(ax, [g["depth"] for g in groups] or [1])
        figures.percent_axis(ax, "final error")
        ax.set_ylim(bottom=0)
        if groups:
            handles, labels = ax.get_legend_handles_labels()
            order = sorted(range(len(labels)), key=lambda i: ("test" in labels[i], labels[i]))
            ax.legend([handles[i] for i in order], [labels[i] for i in order])
        ax.set_title("final error against depth")
        return figures.save(fig, path)
