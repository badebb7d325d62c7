"""Report for the lesion study (Veit, Wilber and Belongie 2016, "Residual Networks Behave Like
Ensembles of Relatively Shallow Networks", §4.1-4.2: Figure 3, single deletions on CIFAR-10, and
Figure 5(a), several blocks deleted at once): deleting one block of a residual net barely changes
its test error, deleting one layer of a plain net destroys it, and the residual net's error rises
smoothly as more blocks are deleted. (Their Figure 4 is single deletion on ImageNet, not run here.)

Works from the study folder alone: `lesions.json` (written by `reslab.studies.lesion`: every measured
error, and the nets that diverged in training) and `study.json`. `build_report(study_dir)` writes
summary.json, single.png (error per deleted block), multi.png (error against the number of deleted
blocks) and report.html.

The verdict and smoothness rules, with their thresholds, are in `rule.py`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from reslab.report import figures
from reslab.report.html import fmt_mean_std, fmt_pct
from reslab.studies import records
from reslab.studies.base import ARCHS
from reslab.studies.lesion import LESIONS
from reslab.studies.lesion.rule import (
    _diverged_name,
    arch_stats,
    smoothness_verdict,
    verdict,
)
from reslab.studies.pages import finish, summary_head, verdict_page
from reslab.studies.stats import mean_std
from reslab.training import runs

LABELS = {
    "shown": ("ensemble-like: shown", "good"),
    "not_shown": ("residual net is fragile", "warn"),
    "plain_robust_too": ("plain net is robust too", "warn"),
    "residual_robust": ("residual robust (no plain net)", "neutral"),
    "insufficient": ("insufficient measurements", "neutral"),
}


def _read(study_dir: Path) -> tuple[dict, list[dict], list[dict]]:
    """(study.json, the lesioned nets, the diverged nets); none yet while the study is training."""
    path, study = study_dir / LESIONS, study_dir / runs.STUDY
    if not path.is_file() and not study.is_file():
        raise FileNotFoundError(
            f"not a lesion study folder (no {runs.STUDY}, no {LESIONS}): {study_dir}"
        )
    lesions = runs.read_json(path) if path.is_file() else {}
    record = records.read_study(study_dir, "lesion") if study.is_file() else {}
    return record, lesions.get("nets", []), lesions.get("diverged", [])


# ---------------------------------------------------------------------------------------- summary


def write_summary(study_dir: str | Path) -> dict:
    """Judge lesions.json and write `<study_dir>/summary.json`; returns the summary dict."""
    study_dir = Path(study_dir)
    study, nets, diverged = _read(study_dir)
    summary = summary_head("lesion", study)
    summary["nets"] = [
        {k: n[k] for k in ("run_dir", "model", "arch", "seed", "data", "blocks", "intact_error")}
        | {"trained_test_error": n.get("trained_test_error"), "test_images": n["test_images"]}
        for n in nets
    ]
    summary["diverged"] = diverged
    summary["verdict"] = verdict(nets, diverged).to_json()
    summary["smoothness"] = smoothness_verdict(nets).to_json()
    return runs.write_study_summary(study_dir, summary)


# ---------------------------------------------------------------------------------------- figures


def _chance(ax, nets: list[dict]) -> None:
    chance = 100 * (1 - 1 / nets[0]["num_classes"])
    ax.axhline(chance, color="#8a8f98", lw=1, ls=":", label="chance")


def plot_single(nets: list[dict], path: str | Path) -> Path:
    """Test error with each single block deleted (Veit et al. Fig. 3), plain vs residual; dashed lines:
    the intact nets; shaded: blocks that change the shape (not deletable in a plain net)."""
    with figures.style():
        fig, (ax,) = figures.figure(1, width=7.0, height=3.8)
        shaded = set()
        for arch in ARCHS:
            group = [n for n in nets if n["arch"] == arch]
            c = figures.ARCH_COLORS[arch]
            for j, n in enumerate(group):
                x = [s["block"] + 1 for s in n["single"]]
                y = [np.nan if s["error"] is None else 100 * s["error"] for s in n["single"]]
                label = f"{arch} ({n['model']}), one block deleted" if j == 0 else None
                lw, alpha = (1.8, 1.0) if len(group) == 1 else (1.0, 0.6)
                ax.plot(x, y, color=c, marker="o", ms=3, lw=lw, alpha=alpha, label=label)
                ax.axhline(100 * n["intact_error"], color=c, lw=1, ls="--", alpha=0.7)
                shaded |= {s["block"] + 1 for s in n["single"] if s["changes_shape"]}
        for b in sorted(shaded):
            ax.axvspan(b - 0.4, b + 0.4, color="#d9dde3", alpha=0.6, lw=0)
        title = "deleting one block at test time"
        return _finish(fig, ax, nets, "deleted block", "center right", title, path)


def _finish(
    fig, ax, nets: list[dict], xlabel: str, legend: str, title: str, path: str | Path
) -> Path:
    """The axes both lesion figures share: chance level, labels, legend, title; saved to `path`."""
    if nets:
        _chance(ax, nets)
    ax.set_xlabel(xlabel)
    figures.percent_axis(ax, "test error")
    ax.set_ylim(bottom=0)
    if nets:
        ax.legend(loc=legend)
    ax.set_title(title)
    return figures.save(fig, path)


def plot_multi(nets: list[dict], path: str | Path) -> Path:
    """Test error against the number of blocks deleted together (Veit et al. Fig. 5(a)): every random
    set as a faint dot, the mean ± std over sets and nets as a line and band; k = 0 is the intact net."""
    with figures.style():
        fig, (ax,) = figures.figure(1, width=6.0, height=3.8)
        for arch in ARCHS:
            s = arch_stats(nets, arch)
            if s is None:
                continue
            c = figures.ARCH_COLORS[arch]
            for n in (n for n in nets if n["arch"] == arch):
                for m in n["multi"]:
                    ax.scatter([m["k"]] * len(m["errors"]), 100 * np.array(m["errors"]),
                               color=c, s=6, alpha=0.2, lw=0)  # fmt: skip
            k = np.array([0] + [m["k"] for m in s["multi"]])
            mean = 100 * np.array([s["intact_error_mean"]] + [m["error_mean"] for m in s["multi"]])
            std = 100 * np.array([0.0] + [m["error_std"] for m in s["multi"]])
            ax.plot(
                k, mean, color=c, lw=2, marker="o", ms=3, label=f"{arch} ({', '.join(s['models'])})"
            )
            ax.fill_between(k, mean - std, mean + std, color=c, alpha=0.15, lw=0)
        xlabel, title = "number of blocks deleted (k)", "deleting random sets of k blocks"
        return _finish(fig, ax, nets, xlabel, "lower right", title, path)


# ---------------------------------------------------------------------------------------- text + html


def _note(arch: str, s: dict | None) -> str:
    if s is None:
        return f"{arch}: no net lesioned"
    if s["single_damage_median"] is None:
        return f"{arch}: no deletable block"
    k = f"k_half = {s['k_half']}" if s["k_half"] is not None else f"k_half > {s['max_k']}"
    return (
        f"{arch}: intact {fmt_pct(s['intact_error_mean'])}, one block deleted: median "
        f"{fmt_pct(s['single_error_median'])} (rise {100 * s['single_rise_median']:+.2f} pp, damage "
        f"{s['single_damage_median']:.2f}), worst {fmt_pct(s['single_error_max'])}; {k}"
    )


def _per_block_rows(nets: list[dict]) -> list[list]:
    n_blocks = max((n["blocks"] for n in nets), default=0)
    rows = []
    for b in range(n_blocks):
        row: list = [b + 1]
        shape = any(s["changes_shape"] for n in nets for s in n["single"] if s["block"] == b)
        row.append("yes" if shape else "")
        for arch in ARCHS:
            errs = [
                s["error"]
                for n in nets
                if n["arch"] == arch
                for s in n["single"]
                if s["block"] == b and s["error"] is not None
            ]
            row.append(fmt_mean_std(*mean_std(errs)) if errs else "—")
        rows.append(row)
    return rows


def _what_was_run(nets: list[dict], diverged: list[dict]) -> str:
    images = nets[0]["test_images"] if nets else 0
    left_out = (
        f" {len(diverged)} more diverged in training and were not lesioned." if diverged else ""
    )
    return (
        f"{len(nets)} trained net(s) were evaluated on the test set ({images} images) intact, with "
        "every single block deleted, and with random sets of k blocks deleted together. Deleting a "
        "residual block keeps its shortcut (identity, or the option-A subsampling / projection where "
        "the shape changes, as Veit et al. keep the downsampling projection); deleting a plain block "
        f"passes its input to the next block, which is possible only where the shape is kept.{left_out}"
    )


def _write_html(
    study_dir: Path, summary: dict, nets: list[dict], single: Path, multi: Path
) -> Path:
    v, diverged = summary["verdict"], summary.get("diverged", [])
    smooth = summary["smoothness"]["text"]
    title = "Lesion study: residual networks behave like ensembles"
    notes = [*(_note(a, v[a]) for a in ("residual", "plain")), smooth]
    data = ", ".join(sorted({n["data"] for n in nets}))
    source = "Veit et al. 2016, Figures 3 and 5(a)"
    page = verdict_page(study_dir, summary, title, source, LABELS, notes, data)
    page.heading("Deleting one block").figure(
        single,
        "Test error with one block deleted, per block (solid) and of the intact net (dashed); red: plain, "
        "blue: residual. Grey bands: blocks that change the shape, which a plain net cannot skip.",
    )
    page.heading("Deleting several blocks").figure(
        multi,
        "Test error against the number of blocks deleted at once: dots are single random sets, lines the "
        "mean and bands ± one std over sets (and nets). Veit et al. see the residual error rise smoothly "
        f"(Fig. 5(a)); here: {summary['smoothness']['status'].replace('_', ' ')}.",
        max_width=760,
    )
    rows = [
        [n["model"], n["arch"], n["seed"], n["blocks"], fmt_pct(n["intact_error"]),
         fmt_pct(n.get("trained_test_error")), n["run_dir"]]
        for n in nets
    ] + [
        [d["model"], d["arch"], d["seed"], "—", "not lesioned", _diverged_name(d), d["run_dir"]]
        for d in diverged
    ]  # fmt: skip
    page.heading("Nets").table(
        ["model", "arch", "seed", "blocks", "intact error", "trained test error", "run"],
        rows,
        "Intact error is measured here in fp32; the trained test error is the training run's own. "
        "A net that diverged in training has no finite weights and is not lesioned.",
    )
    page.heading("Test error per deleted block").table(
        ["block", "changes shape", "plain", "residual"],
        _per_block_rows(nets),
        "Mean ± std over nets of an arch; — where the block cannot be deleted or no such net was run.",
    )
    rule = (
        f"Declared before the numbers ({__package__}.rule): {v['rule']}. Ensemble-like behaviour "
        "is shown when the residual net is robust and the plain net broken. k_half is the smallest "
        "number of deleted blocks whose mean damage reaches 0.5. Smoothness of the multi-deletion "
        f"curve: {summary['smoothness']['rule']}."
    )
    skip = ("smoothness", "nets", "diverged")
    return finish(page, study_dir, _what_was_run(nets, diverged), summary, skip, rule)


def format_table(summary: dict) -> str:
    """The nets and the verdict as plain text, for the terminal."""
    v = summary["verdict"]
    head = f"{'model':<16}{'arch':<10}{'seed':>5}{'blocks':>8}  {'intact':>8}"
    lines = [head, "-" * len(head)]
    for n in summary["nets"]:
        lines.append(
            f"{n['model']:<16}{n['arch']:<10}{n['seed']:>5}{n['blocks']:>8}  {fmt_pct(n['intact_error']):>8}"
        )
    for d in summary.get("diverged", []):
        lines.append(f"{d['model']:<16}{d['arch']:<10}{d['seed']:>5}{'—':>8}  {_diverged_name(d)}")
    lines += ["", f"verdict: {v['status']}"]
    lines += [f"  {_note(a, v[a])}" for a in ("residual", "plain")]
    lines.append(v["text"])
    if "smoothness" in summary:  # absent from summaries written before it was judged
        lines += [
            "",
            f"smoothness: {summary['smoothness']['status']}",
            summary["smoothness"]["text"],
        ]
    return "\n".join(lines)


def build_report(study_dir: str | Path) -> Path:
    """Write summary.json, single.png, multi.png and report.html into `study_dir`; returns the report."""
    study_dir = Path(study_dir)
    summary = write_summary(study_dir)
    _, nets, _ = _read(study_dir)
    single = plot_single(nets, study_dir / "single.png")
    multi = plot_multi(nets, study_dir / "multi.png")
    return _write_html(study_dir, summary, nets, single, multi)
