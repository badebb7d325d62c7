"""Report of the landscape study, from its folder alone: summary.json, four figures, report.html."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from reslab.report import figures
from reslab.report.html import fmt_num, fmt_pct
from reslab.studies import records
from reslab.studies.base import ARCHS
from reslab.studies.landscape import SURFACES
from reslab.studies.landscape.rule import ratio, rows, verdict
from reslab.studies.pages import finish, text_table, verdict_page
from reslab.training import runs

TONES = {"shown": "good", "residual_too": "bad", "not_shown": "bad", "insufficient": "neutral"}
# status -> (label, tone), as the page and `reslab report`'s index show it: the status in words
LABELS = {status: (status.replace("_", " "), tone) for status, tone in TONES.items()}


def format_table(summary: dict) -> str:
    """The per-seed non-convexity of every (arch, depth), the nets without a surface and the verdict."""
    table = []
    for r in summary["rows"]:
        *seeds, mean = (fmt_num(x, ".3f") for x in [*r["ratios"], r["mean"]])
        table.append([r["arch"], str(r["depth"]), " ".join(seeds), mean])
    lines = [text_table(["arch", "depth", "|λmin/λmax| per seed", "mean"], table)]
    for n in summary["lost"]:
        lines.append(f"{n['arch']} {n['depth']} seed {n['seed']}: {n['status']}, no surface")
    v = summary["verdict"]
    return "\n".join([*lines, "", f"verdict: {v['status']}", f"  {v['text']}"])


def build_report(folder: str | Path) -> Path:
    """Write summary.json (study.json, the rows and verdict of `rule.py`, every net's numbers and
    the centre of its surface, the nets without one), the four figures and report.html."""
    folder = Path(folder)
    data, study = runs.read_json(folder / SURFACES), records.read_study(folder, "landscape")
    mid, table = len(data["xs"]) // 2, rows(data["nets"])
    keep = ("arch", "depth", "seed", "final_train_error", "lambda_max", "lambda_min")
    nets = [{k: n[k] for k in keep} | {"centre_loss": n["loss"][mid][mid]} for n in data["nets"]]
    v = verdict(table).to_json()
    summary = study | {"rows": table, "nets": nets, "lost": data["lost"], "verdict": v}
    summary = runs.write_study_summary(folder, summary)
    xs, drawn = np.asarray(data["xs"]), sorted(data["nets"], key=lambda n: -n["seed"])
    loss = {(n["arch"], n["depth"]): np.asarray(n["loss"]) for n in drawn}  # the first seed's
    depths = sorted({d for _, d in loss})
    with figures.style():
        contours = figures.save(_contours(loss, depths, xs), folder / "contours.png")
        slices = figures.save(_slices(loss, depths, xs), folder / "slices.png")
        surface = figures.save(_surface3d(loss, depths[-1], xs), folder / "surface.png")
        ratios = figures.save(_nonconvexity(table), folder / "nonconvexity.png")
    source = "Li, Xu, Taylor, Studer and Goldstein 2018, Figs. 5 and 7, on the main job's nets"
    title = "Loss landscapes of plain and residual twins"
    page = verdict_page(folder, summary, title, source, LABELS, [v["rule"]])
    page.figure(
        contours,
        "log10 training loss over the plane of two filter-normalised random directions through "
        "each net's trained weights (centre); plain nets above, their residual twins below, "
        "shallow to deep; the same contour levels in every panel",
    )
    page.figure(slices, "1-D slices through the centre along the first direction, every depth")
    page.figure(surface, f"the {depths[-1]}-layer twins as surfaces (same axes)", max_width=900)
    page.figure(
        ratios, "non-convexity |λmin/λmax| of the Hessian at the trained weights; dots: seeds"
    )
    page.table(
        ["arch", "depth", "seed", "training error", "λmax", "λmin", "|λmin/λmax|"],
        [
            [n["arch"], n["depth"], n["seed"], fmt_pct(n["final_train_error"])]
            + [f"{n['lambda_max']:.4g}", f"{n['lambda_min']:.4g}"]
            + [fmt_num(ratio(n["lambda_max"], n["lambda_min"]), ".3f")]
            for n in nets
        ],
    )
    what = (
        "Every net's loss and error on the first `subset` training images, batch norm in eval mode, "
        "at each point of the grid; the directions drawn once (direction_seed) and filter-normalised "
        "to each net, zero on biases and batch-norm parameters (the paper's --xignore biasbn)."
    )
    return finish(page, folder, what, study)


def _contours(loss: dict, depths: list[int], xs: np.ndarray) -> figures.Figure:
    """log10 loss of every net drawn, plain above residual, on one scale: every panel's range."""
    logs = {k: np.log10(z + 1e-12) for k, z in loss.items()}
    every = np.concatenate([x.ravel() for x in logs.values()])
    low, high = np.nanmin(every), np.nanmax(every[np.isfinite(every)])
    levels = np.linspace(low, max(high, low + 1), 30)
    fig = figures.Figure(figsize=(2.6 * len(depths), 5.2), layout="constrained")
    axes = fig.subplots(2, len(depths), squeeze=False)
    for row, arch in zip(axes, ARCHS, strict=True):
        for ax, depth in zip(row, depths, strict=True):
            if (arch, depth) not in logs:
                ax.set_axis_off()
                continue
            cs = ax.contourf(xs, xs, logs[arch, depth], levels=levels, cmap="viridis", extend="max")
            ax.plot(0, 0, "w+", ms=6)
            ax.set_title(f"{arch} {depth}", fontsize=9, color=figures.ARCH_COLORS[arch])
            ax.set(xticks=[], yticks=[])
    fig.colorbar(cs, ax=axes, shrink=0.8, label="log10 loss")
    return fig


def _slices(loss: dict, depths: list[int], xs: np.ndarray) -> figures.Figure:
    fig, axes = figures.figure(2, width=4.2, height=3.2, sharey=True)
    colors = figures.depth_colors(depths)
    for ax, arch in zip(axes, ARCHS, strict=True):
        for depth in depths:
            if (arch, depth) in loss:
                ax.plot(xs, loss[arch, depth][len(xs) // 2], color=colors[depth], label=f"{depth}")
        ax.set(yscale="log", xlabel="step along direction 1")
        ax.set_title(arch, color=figures.ARCH_COLORS[arch])
    axes[0].set_ylabel("training loss")
    axes[1].legend(title="layers", fontsize=8)
    return fig


def _surface3d(loss: dict, depth: int, xs: np.ndarray) -> figures.Figure:
    fig = figures.Figure(figsize=(9, 4), layout="constrained")
    X, Y = np.meshgrid(xs, xs)
    top = max(np.nanmax(z) for (_, d), z in loss.items() if d == depth)
    for k, arch in enumerate(ARCHS):
        ax = fig.add_subplot(1, 2, k + 1, projection="3d")
        if (arch, depth) in loss:
            ax.plot_surface(X, Y, loss[arch, depth], cmap="viridis", vmin=0, vmax=top)
        ax.set_zlim(0, top)
        ax.set_title(f"{arch} {depth}", color=figures.ARCH_COLORS[arch])
    return fig


def _nonconvexity(table: list[dict]) -> figures.Figure:
    fig, (ax,) = figures.figure(1, width=5.0, height=3.4)
    for arch in ARCHS:
        color, rs = figures.ARCH_COLORS[arch], [r for r in table if r["arch"] == arch]
        for r in rs:  # a None ratio (no minimum) is not drawn
            ax.plot([r["depth"]] * len(r["ratios"]), r["ratios"], "o", color=color, alpha=0.4, ms=4)
        means = [(r["depth"], r["mean"]) for r in rs if r["mean"] is not None]
        if means:
            ax.plot(*zip(*means, strict=True), "-", color=color, label=arch)
    figures.depth_axis(ax, sorted({r["depth"] for r in table}))
    ax.set_ylabel("|λmin / λmax|")
    ax.legend()
    return fig
