"""Report of the landscape study, from its folder alone: summary.json (rows and verdict),
contours.png (plain above residual, shallow to deep, the same levels everywhere), slices.png,
surface.png (the deepest twins in 3D), nonconvexity.png and report.html."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from reslab.report import figures
from reslab.report.html import Page, fmt_pct
from reslab.studies import records
from reslab.studies.landscape import SURFACES
from reslab.studies.landscape.rule import rows, verdict
from reslab.studies.pages import finish
from reslab.training import runs

LABELS = {  # status -> (label, tone), as the page and `reslab report`'s index show it
    "shown": ("shown", "good"),
    "residual_too": ("residual too", "bad"),
    "not_shown": ("not shown", "bad"),
    "insufficient": ("insufficient", "neutral"),
}


def write_summary(folder: Path) -> dict:
    data = runs.read_json(folder / SURFACES)
    table = rows(data["nets"])
    nets = [
        {
            k: n[k]
            for k in ("arch", "depth", "seed", "final_train_error", "lambda_max", "lambda_min")
        }
        | {"centre_loss": n["loss"][len(data["xs"]) // 2][len(data["xs"]) // 2]}
        for n in data["nets"]
    ]
    summary = records.read_study(folder, "landscape") | {
        "rows": table,
        "nets": nets,
        "lost": data["lost"],
        "verdict": verdict(table).to_json(),
    }
    return runs.write_study_summary(folder, summary)


def format_table(summary: dict) -> str:
    head = f"{'arch':<10}{'depth':>6}  {'|λmin/λmax| per seed':<28}{'mean':>8}"
    lines = [head, "-" * len(head)]
    for r in summary["rows"]:
        per = " ".join("—" if x is None else f"{x:.3f}" for x in r["ratios"])
        mean = "—" if r["mean"] is None else f"{r['mean']:.3f}"
        lines.append(f"{r['arch']:<10}{r['depth']:>6}  {per:<28}{mean:>8}")
    for n in summary["lost"]:
        lines.append(f"{n['arch']:<10}{n['depth']:>6}  seed {n['seed']}: {n['status']}, no surface")
    v = summary["verdict"]
    return "\n".join([*lines, "", f"verdict: {v['status']}", f"  {v['text']}"])


def build_report(folder: str | Path) -> Path:
    folder = Path(folder)
    summary = write_summary(folder)
    data = runs.read_json(folder / SURFACES)
    xs = np.asarray(data["xs"])
    first: dict[tuple[str, int], dict] = {}  # (arch, depth) -> the first seed's net, the one drawn
    for n in sorted(data["nets"], key=lambda n: n["seed"]):
        first.setdefault((n["arch"], n["depth"]), n)
    depths = sorted({d for _, d in first})
    with figures.style():
        contours = figures.save(_contours(first, depths, xs), folder / "contours.png")
        slices = figures.save(_slices(first, depths, xs), folder / "slices.png")
        surface = figures.save(_surface3d(first, depths[-1], xs), folder / "surface.png")
        ratios = figures.save(_nonconvexity(summary["rows"]), folder / "nonconvexity.png")
    v = summary["verdict"]
    page = Page(
        "Loss landscapes of plain and residual twins",
        "Li, Xu, Taylor, Studer and Goldstein 2018, Figs. 5 and 7, on the main job's nets",
    )
    label, tone = LABELS[v["status"]]
    page.verdict(label, v["text"], tone, [v["rule"]])
    page.figure(contours, "log10 training loss over the plane of two filter-normalised random "
                "directions through each net's trained weights (centre); plain nets above, their "
                "residual twins below, shallow to deep; the same contour levels in every panel")  # fmt: skip
    page.figure(slices, "1-D slices through the centre along the first direction, every depth")
    page.figure(surface, f"the {depths[-1]}-layer twins as surfaces (same axes)", max_width=900)
    page.figure(
        ratios, "non-convexity |λmin/λmax| of the Hessian at the trained weights; dots: seeds"
    )
    page.table(
        ["arch", "depth", "seed", "training error", "λmax", "λmin", "|λmin/λmax|"],
        [
            [
                n["arch"],
                n["depth"],
                n["seed"],
                fmt_pct(n["final_train_error"]),
                f"{n['lambda_max']:.4g}",
                f"{n['lambda_min']:.4g}",
                "—" if n["lambda_max"] <= 0 else f"{abs(n['lambda_min'] / n['lambda_max']):.3f}",
            ]
            for n in summary["nets"]
        ],  # fmt: skip
    )
    what = (
        "Every net's loss and error on the first `subset` training images, batch norm in eval mode, "
        "at each point of the grid; the directions drawn once (direction_seed) and filter-normalised "
        "to each net, zero on biases and batch-norm parameters (the paper's --xignore biasbn)."
    )
    return finish(page, folder, what, records.read_study(folder, "landscape"))


def _levels(first: dict) -> np.ndarray:
    logs = np.log10(np.concatenate([np.asarray(n["loss"]).ravel() for n in first.values()]) + 1e-12)
    low, high = np.nanmin(logs), np.nanmax(logs[np.isfinite(logs)])
    return np.linspace(low, max(high, low + 1), 30)  # every panel's whole range, on one scale


def _contours(first: dict, depths: list[int], xs: np.ndarray):
    fig = figures.Figure(figsize=(2.6 * len(depths), 5.2), layout="constrained")
    axes = fig.subplots(2, len(depths), squeeze=False)
    levels = _levels(first)
    for i, arch in enumerate(("plain", "residual")):
        for j, depth in enumerate(depths):
            ax = axes[i][j]
            n = first.get((arch, depth))
            if n is None:
                ax.set_axis_off()
                continue
            cs = ax.contourf(xs, xs, np.log10(np.asarray(n["loss"]) + 1e-12), levels=levels,
                             cmap="viridis", extend="max")  # fmt: skip
            ax.plot(0, 0, "w+", ms=6)
            ax.set_title(f"{arch} {depth}", fontsize=9, color=figures.ARCH_COLORS[arch])
            ax.set_xticks([]), ax.set_yticks([])
    fig.colorbar(cs, ax=axes, shrink=0.8, label="log10 loss")
    return fig


def _slices(first: dict, depths: list[int], xs: np.ndarray):
    fig, axes = figures.figure(2, width=4.2, height=3.2, sharey=True)
    colors = figures.depth_colors(depths)
    mid = len(xs) // 2
    for ax, arch in zip(axes, ("plain", "residual"), strict=True):
        for depth in depths:
            n = first.get((arch, depth))
            if n is not None:
                ax.plot(xs, np.asarray(n["loss"])[mid], color=colors[depth], label=f"{depth}")
        ax.set_yscale("log")
        ax.set_title(arch, color=figures.ARCH_COLORS[arch])
        ax.set_xlabel("step along direction 1")
    axes[0].set_ylabel("training loss")
    axes[1].legend(title="layers", fontsize=8)
    return fig


def _surface3d(first: dict, depth: int, xs: np.ndarray):
    fig = figures.Figure(figsize=(9, 4), layout="constrained")
    X, Y = np.meshgrid(xs, xs)
    top = max(np.nanmax(np.asarray(n["loss"])) for (a, d), n in first.items() if d == depth)
    for k, arch in enumerate(("plain", "residual")):
        ax = fig.add_subplot(1, 2, k + 1, projection="3d")
        n = first.get((arch, depth))
        if n is not None:
            ax.plot_surface(X, Y, np.asarray(n["loss"]), cmap="viridis", vmin=0, vmax=top)
        ax.set_zlim(0, top)
        ax.set_title(f"{arch} {depth}", color=figures.ARCH_COLORS[arch])
    return fig


def _nonconvexity(table: list[dict]):
    fig, (ax,) = figures.figure(1, width=5.0, height=3.4)
    for arch in ("plain", "residual"):
        rs = [r for r in table if r["arch"] == arch]
        for r in rs:
            ys = [x for x in r["ratios"] if x is not None]
            ax.plot(
                [r["depth"]] * len(ys), ys, "o", color=figures.ARCH_COLORS[arch], alpha=0.4, ms=4
            )
        means = [(r["depth"], r["mean"]) for r in rs if r["mean"] is not None]
        if means:
            ax.plot(*zip(*means, strict=True), "-", color=figures.ARCH_COLORS[arch], label=arch)
    figures.depth_axis(ax, sorted({r["depth"] for r in table}))
    ax.set_ylabel("|λmin / λmax|")
    ax.legend()
    return fig
