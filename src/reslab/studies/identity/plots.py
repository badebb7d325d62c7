"""Figures of the identity study, from its results (`results/{structure,fit,append}.json`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from reslab.report import figures
from reslab.studies.identity import PLAIN, RESIDUAL, ZERO_INIT
from reslab.studies.identity.rule import mode_failures

COLORS = {"residual": figures.ARCH_COLORS["residual"], "plain": figures.ARCH_COLORS["plain"]}
# the blocks appended in check 3, in the order and colours of the figure
VARIANT_COLORS = {ZERO_INIT: COLORS["residual"], PLAIN: COLORS["plain"], RESIDUAL: "#7f8c8d"}


def plot_structure(structure: dict, path: str | Path) -> Path:
    """Mean norm of each block's output (eval mode) with zeroed branches: residual flat, plain zero."""
    methods = structure["methods"]
    with figures.style():
        fig, axes = figures.figure(len(methods), width=3.4, height=3.0, sharey=True)
        for ax, (method, r) in zip(axes, methods.items(), strict=True):
            m = r["modes"]["eval"]
            blocks = np.arange(1, m["blocks"] + 1)
            for arch, ls in (("residual", "-"), ("plain", "--")):
                norms = m[f"{arch}_norms"]
                ax.plot(blocks, norms, color=COLORS[arch], ls=ls, marker="o", ms=3, label=arch)
            exact = not any(mode_failures(mode) for mode in r["modes"].values())
            ax.set_title(f"{method}: {'exact' if exact else 'NOT exact'}")
            ax.set_xlabel("block")
        eval_modes = [r["modes"]["eval"] for r in methods.values()]
        top = max(max(m["residual_norms"] + m["plain_norms"]) for m in eval_modes)
        axes[0].set_ylim(0, 1.1 * top if top > 0 else 1.0)  # set once: the y axis is shared
        axes[0].set_ylabel("mean ||block output||")
        axes[0].legend()
        return figures.save(fig, path)


def plot_fit(fit: dict, path: str | Path) -> Path:
    """Final relative loss against depth, and the training curves of each arch (log y); arms with
    weight decay (not judged) dashed."""
    results = fit["results"]
    depths = [r["depth"] for r in results]
    colors = figures.depth_colors(depths)
    with figures.style():
        fig, axes = figures.figure(3, width=4.0, height=3.4)
        for arm in dict.fromkeys(r.get("arm", r["arch"]) for r in results):
            rs = sorted(
                (r for r in results if r.get("arm", r["arch"]) == arm), key=lambda r: r["depth"]
            )
            x, loss = [r["depth"] for r in rs], [max(r["final_loss"], 1e-12) for r in rs]
            ls, color = "--" if rs[0].get("weight_decay") else "-", COLORS[rs[0]["arch"]]
            axes[0].plot(x, loss, marker="o", color=color, ls=ls, lw=2, label=arm)
        figures.depth_axis(axes[0], depths)
        axes[0].set_ylabel("MSE / mean square of the data")
        axes[0].set_title("loss reached (held-out data)")
        for ax, arch in zip(axes[1:], ("plain", "residual"), strict=True):
            for r in (r for r in results if r["arch"] == arch):
                step, loss = np.asarray(r["curve"], dtype=float).T
                decay = bool(r.get("weight_decay"))
                label = f"{r['depth']} layers" + (", decay" if decay else "")
                ls = "--" if decay else "-"
                ax.plot(step, np.maximum(loss, 1e-12), color=colors[r["depth"]], ls=ls, label=label)
            ax.set_xlabel("step")
            ax.set_title(f"{arch} stacks: training loss")
        axes[2].sharey(axes[1])
        for ax in axes:
            ax.set_yscale("log")
            ax.legend(fontsize=7.5)
        return figures.save(fig, path)


def plot_append(append: dict, path: str | Path) -> Path:
    """Test error against the number of appended blocks, before any further training; one line per
    variant of appended blocks."""
    with figures.style():
        fig, (ax,) = figures.figure(1, width=5.6, height=3.8)
        for variant, color in VARIANT_COLORS.items():
            rs = sorted(
                (r for r in append["results"] if r["variant"] == variant), key=lambda r: r["k"]
            )
            k, error = [r["k"] for r in rs], [100 * r["test_error"] for r in rs]
            if rs:
                ax.plot(k, error, marker="o", color=color, lw=2, label=f"+k {variant}")
        label = "trained net, nothing appended"
        ax.axhline(100 * append["base_test_error"], color="#333", ls=":", label=label)
        ax.axhline(100 * append["chance_error"], color="#999", ls="--", lw=0.8, label="chance")
        figures.depth_axis(ax, [r["k"] for r in append["results"]])
        ax.set_xlabel("blocks appended (k)")
        figures.percent_axis(ax, "test error")
        ax.set_ylim(0, 100)
        ax.set_title(f"appending to a trained {append['base_model']}")
        ax.legend(fontsize=7.5)
        return figures.save(fig, path)
