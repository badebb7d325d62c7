"""Report of the lesion study from its folder alone (lesions.json, study.json): summary.json,
single.png and multi.png (Veit et al. 2016 Figs. 3 and 5(a); their Fig. 4, ImageNet, is not run
here) and report.html."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from reslab.report import figures
from reslab.report.html import fmt_mean_std, fmt_pct
from reslab.studies import records
from reslab.studies.base import ARCHS
from reslab.studies.lesion import LESIONS
from reslab.studies.lesion.rule import diverged_name, smoothness_verdict, verdict
from reslab.studies.pages import finish, summary_head, text_table, verdict_page
from reslab.studies.stats import mean_std
from reslab.training import runs

LABELS = {
    "shown": ("ensemble-like: shown", "good"),
    "not_shown": ("residual net is fragile", "warn"),
    "plain_robust_too": ("plain net is robust too", "warn"),
    "residual_robust": ("residual robust (no plain net)", "neutral"),
    "insufficient": ("insufficient measurements", "neutral"),
}
NETS = ["model", "arch", "seed", "blocks", "intact error", "trained test error", "run"]
# summary.json's nets: lesions.json's less what only the rules read
KEYS = "run_dir model arch seed data blocks intact_error trained_test_error test_images".split()


def _net_rows(summary: dict) -> list[list[str]]:
    """The nets as the page and the terminal show them: the lesioned, then the diverged."""
    rows = [
        [n["model"], n["arch"], str(n["seed"]), str(n["blocks"]), fmt_pct(n["intact_error"])]
        + [fmt_pct(n["trained_test_error"]), n["run_dir"]]
        for n in summary["nets"]
    ]
    return rows + [
        [d["model"], d["arch"], str(d["seed"]), "—", "not lesioned", diverged_name(d), d["run_dir"]]
        for d in summary.get("diverged", [])
    ]


def format_table(summary: dict) -> str:
    lines = [text_table(NETS, _net_rows(summary))]
    for key in ("verdict", "smoothness"):  # no smoothness in summaries written before it was judged
        if v := summary.get(key):
            lines += ["", f"{key}: {v['status']}", v["text"]]
    return "\n".join(lines)


def build_report(folder: str | Path) -> Path:
    folder = Path(folder)
    study, path = records.read_study(folder, "lesion"), folder / LESIONS
    lesions = runs.read_json(path) if path.is_file() else {}  # none yet while the nets train
    nets, diverged = lesions.get("nets", []), lesions.get("diverged", [])
    summary = summary_head("lesion", study) | {
        "nets": [{k: n.get(k) for k in KEYS} for n in nets],
        "diverged": diverged,
        "verdict": verdict(nets, diverged).to_json(),
        "smoothness": smoothness_verdict(nets).to_json(),
    }
    summary = runs.write_study_summary(folder, summary)
    v, smooth = summary["verdict"], summary["smoothness"]
    single, multi = _figures(folder, nets, v)

    title = "Lesion study: residual networks behave like ensembles"
    source = "Veit et al. 2016, Figures 3 and 5(a)"
    data = ", ".join(sorted({n["data"] for n in nets}))
    page = verdict_page(folder, summary, title, source, LABELS, [smooth["text"]], data)
    page.heading("Deleting one block").figure(
        single,
        "Test error with one block deleted, per block (solid) and of the intact net (dashed); red: "
        "plain, blue: residual. Grey bands: blocks that change the shape, which a plain net cannot "
        "skip.",
    )
    page.heading("Deleting several blocks").figure(
        multi,
        "Test error against the number of blocks deleted at once: dots are single random sets, lines "
        "the mean and bands ± one std over sets (and nets). Veit et al. see the residual error rise "
        f"smoothly (Fig. 5(a)); here: {smooth['status'].replace('_', ' ')}.",
        max_width=760,
    )
    page.heading("Nets").table(
        NETS,
        _net_rows(summary),
        "Intact error is measured here in fp32; the trained test error is the training run's own. "
        "A net that diverged in training has no finite weights and is not lesioned.",
    )
    per_block = []
    for b in range(max((n["blocks"] for n in nets), default=0)):
        at_b = [(n["arch"], s) for n in nets for s in n["single"] if s["block"] == b]
        shape = "yes" if any(s["changes_shape"] for _, s in at_b) else ""
        errors = [mean_std([s["error"] for a, s in at_b if a == arch]) for arch in ARCHS]
        per_block.append([b + 1, shape, *(fmt_mean_std(*e) for e in errors)])
    page.heading("Test error per deleted block").table(
        ["block", "changes shape", *ARCHS],
        per_block,
        "Mean ± std over nets of an arch; — where the block cannot be deleted or no such net was run.",
    )
    rule = (
        f"Declared before the numbers ({__package__}.rule): {v['rule']}. Smoothness of the "
        f"multi-deletion curve: {smooth['rule']}."
    )
    images = nets[0]["test_images"] if nets else 0
    what = (
        f"{len(nets)} trained net(s) were evaluated on the test set ({images} images) intact, with "
        "every single block deleted, and with random sets of k blocks deleted together. Deleting a "
        "residual block keeps its shortcut (identity, or the option-A subsampling / projection where "
        "the shape changes, as Veit et al. keep the downsampling projection); deleting a plain block "
        "passes its input to the next block, which is possible only where the shape is kept."
    )
    if diverged:
        what += f" {len(diverged)} more diverged in training and were not lesioned."
    return finish(page, folder, what, summary, ("smoothness", "nets", "diverged"), rule)


def _figures(folder: Path, nets: list[dict], v: dict) -> tuple[Path, Path]:
    """single.png (Veit et al. Fig. 3) and multi.png (Fig. 5(a)); what they show: their captions."""
    with figures.style():
        fig3, (single,) = figures.figure(1, width=7.0, height=3.8)
        fig5, (multi,) = figures.figure(1, width=6.0, height=3.8)
        single.set(title="deleting one block at test time", xlabel="deleted block")
        multi.set(title="deleting random sets of k blocks", xlabel="number of blocks deleted (k)")
        shaded = set()
        for arch in ARCHS:
            group, c = [n for n in nets if n["arch"] == arch], figures.ARCH_COLORS[arch]
            lw, alpha = (1.8, 1.0) if len(group) == 1 else (1.0, 0.6)
            for j, n in enumerate(group):
                x = [s["block"] + 1 for s in n["single"]]
                y = [np.nan if s["error"] is None else 100 * s["error"] for s in n["single"]]
                label = f"{arch} ({n['model']}), one block deleted" if j == 0 else None
                single.plot(x, y, color=c, marker="o", ms=3, lw=lw, alpha=alpha, label=label)
                single.axhline(100 * n["intact_error"], color=c, lw=1, ls="--", alpha=0.7)
                shaded |= {s["block"] + 1 for s in n["single"] if s["changes_shape"]}
                for m in n["multi"]:  # each random set a dot
                    k, errors = [m["k"]] * len(m["errors"]), 100 * np.array(m["errors"])
                    multi.scatter(k, errors, color=c, s=6, alpha=0.2, lw=0)
            if s := v[arch]:  # the verdict's numbers: mean and std over the sets of all nets
                curve = s["multi"]
                k = [0] + [m["k"] for m in curve]
                mean = 100 * np.array([s["intact_error_mean"]] + [m["error_mean"] for m in curve])
                std = 100 * np.array([0.0] + [m["error_std"] for m in curve])
                label = f"{arch} ({', '.join(s['models'])})"
                multi.plot(k, mean, color=c, lw=2, marker="o", ms=3, label=label)
                multi.fill_between(k, mean - std, mean + std, color=c, alpha=0.15, lw=0)
        for b in sorted(shaded):
            single.axvspan(b - 0.4, b + 0.4, color="#d9dde3", alpha=0.6, lw=0)
        for ax, legend in ((single, "center right"), (multi, "lower right")):
            if nets:
                chance = 100 * (1 - 1 / nets[0]["num_classes"])
                ax.axhline(chance, color="#8a8f98", lw=1, ls=":", label="chance")
                ax.legend(loc=legend)
            figures.percent_axis(ax, "test error")
            ax.set_ylim(bottom=0)
        return figures.save(fig3, folder / "single.png"), figures.save(fig5, folder / "multi.png")
