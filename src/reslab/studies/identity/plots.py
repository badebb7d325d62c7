"""Figures of the identity study, from its results (`results/{structure,fit,append}.json`): block
output norms with zeroed branches, the loss of stacks fitting the identity, and the test error of a
trained net with blocks appended."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from reslab.report import figures


def plot_structure(structure: dict, path: str | Path) -> Path:
    """Mean norm of each block's output (eval mode) with zeroed branches: residual flat, plain zero."""
    methods = list(structure["methods"])
    with figures.style():
        fig, axes = figures.figure(len(methods), width=3.4, height=3.0, sharey=True)
        for ax, method in zip(axes, methods, strict=True):
            m = structure["methods"][method]["modes"]["eval"]
            idx = np.arange(1, m["blocks"] + 1)
            for arch, key, ls in (
                ("residual", "residual_norms", "-"),
                ("plain", "plain_norms", "--"),
            ):
                ax.plot(
                    idx,
                    m[key],
                    color=figures.ARCH_COLORS[arch],
                    ls=ls,
                    marker="o",
                    ms=3,
                    label=arch,
                )
            ok = (
                m["identity_exact"] == m["identity_blocks"]
                and m["plain_zero_blocks"] == m["blocks"]
            )
            ax.set_title(f"{method}: {'exact' if ok else 'NOT exact'}")
            ax.set_xlabel("block")
        top = max(max(m["modes"]["eval"]["residual_norms"] + m["modes"]["eval"]["plain_norms"])
                  for m in structure["methods"].values())  # fmt: skip
        axes[0].set_ylim(0, 1.1 * top if top > 0 else 1.0)  # set once: the y axis is shared
        axes[0].set_ylabel("mean ||block output||")
        axes[0].legend()
        return figures.save(fig, path)


def plot_fit(fit: dict, path: str | Path) -> Path:
    """Final relative loss against depth, and the training curves of each arch (log y); arms with
    weight decay (not judged) dashed."""
    results = fit["results"]
    colors = figures.depth_colors([r["depth"] for r in results])
    with figures.style():
        fig, axes = figures.figure(3, width=4.0, height=3.4)
        ax = axes[0]
        arms = dict.fromkeys((r.get("arm", r["arch"]), r["arch"]) for r in results)
        for arm, arch in arms:
            rs = sorted((r for r in results if r.get("arm", arch) == arm), key=lambda r: r["depth"])
            ax.plot(
                [r["depth"] for r in rs],
                [max(r["final_loss"], 1e-12) for r in rs],
                marker="o",
                color=figures.ARCH_COLORS[arch],
                ls="--" if rs[0].get("weight_decay") else "-",
                lw=2,
                label=arm,
            )
        figures.depth_axis(ax, [r["depth"] for r in results])
        ax.set_yscale("log")
        ax.set_ylabel("MSE / mean square of the data")
        ax.set_title("loss reached (held-out data)")
        ax.legend(fontsize=7.5)
        for ax, arch in zip(axes[1:], ("plain", "residual"), strict=True):
            for r in results:
                if r["arch"] == arch:
                    step, loss = np.asarray(r["curve"], dtype=float).T
                    decay = bool(r.get("weight_decay"))
                    ax.plot(
                        step,
                        np.maximum(loss, 1e-12),
                        color=colors[r["depth"]],
                        ls="--" if decay else "-",
                        label=f"{r['depth']} layers" + (", decay" if decay else ""),
                    )
            ax.set_yscale("log")
            ax.set_xlabel("step")
            ax.set_title(f"{arch} stacks: training loss")
            ax.legend(fontsize=7.5)
        axes[2].sharey(axes[1])
        return figures.save(fig, path)


def plot_append(append: dict, colors: dict[str, str], path: str | Path) -> Path:
    """Test error against the number of appended blocks, before any further training; one line per
    variant of appended blocks, in the order and colours of `colors`."""
    with figures.style():
        fig, (ax,) = figures.figure(1, width=5.6, height=3.8)
        for variant, color in colors.items():
            rs = sorted(
                (r for r in append["results"] if r["variant"] == variant), key=lambda r: r["k"]
            )
            if rs:
                ax.plot(
                    [r["k"] for r in rs],
                    [100 * r["test_error"] for r in rs],
                    marker="o",
                    color=color,
                    lw=2,
                    label=f"+k {variant}",
                )
        ax.axhline(
            100 * append["base_test_error"],
            color="#333",
            ls=":",
            label="trained net, nothing appended",
        )
        ax.axhline(100 * append["chance_error"], color="#999", ls="--", lw=0.8, label="chance")
        ks = sorted({r["k"] for r in append["results"]})
        if ks and ks[-1] > 4 * ks[0]:
            ax.set_xscale("log")
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_xlabel("blocks appended (k)")
        figures.percent_axis(ax, "test error")
        ax.set_ylim(0, 100)
        ax.set_title(f"appending to a trained {append['base_model']}")
        ax.legend(fontsize=7.5)
        return figures.save(fig, path)
