"""The identity study's summary.json, terminal table, figures and report.html, from its folder alone:
`study.json`, `results/{structure,fit,append}.json` and the run folder of check 3 under `runs/`."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from reslab.report import figures
from reslab.report.figures import ARCH_COLORS as COLORS
from reslab.report.html import fmt_num, fmt_pct
from reslab.studies import records
from reslab.studies.identity import PLAIN, RESIDUAL, RESULTS, ZERO_INIT
from reslab.studies.identity.rule import CALLS, LABELS, mode_failures, verdict
from reslab.studies.pages import finish, summary_head, text_table, verdict_page
from reslab.studies.stats import finite_tree
from reslab.training import runs

# the blocks appended in check 3, in the order and colours of the figure
VARIANT_COLORS = {ZERO_INIT: COLORS["residual"], PLAIN: COLORS["plain"], RESIDUAL: "#7f8c8d"}
Columns = dict[str, Callable[[dict], str]]  # header -> the cell of one row
FIT: Columns = {
    "arm": lambda r: r.get("arm", r["arch"]),
    "layers": lambda r: str(r["depth"]),
    "blocks": lambda r: str(r["blocks"]),
    "train loss": lambda r: fmt_num(r["train_loss"]),
    "held-out loss": lambda r: fmt_num(r["final_loss"]),
    "call at this depth": lambda r: r["call"],
}
APPEND: Columns = {
    "appended": lambda r: r["variant"],
    "k": lambda r: str(r["k"]),
    "blocks": lambda r: str(r["blocks"]),
    "test error": lambda r: fmt_pct(r["test_error"]),
    "predictions changed": lambda r: str(r["changed_predictions"]),
    "logits equal": lambda r: "yes" if r["logits_equal"] else "no",
}
STRUCTURE: Columns = {
    "zeroing": lambda m: m["method"],
    "mode": lambda m: m["mode"],
    "identity blocks exact": lambda m: f"{m['identity_exact']}/{m['identity_blocks']}",
    "other shortcuts exact": lambda m: f"{m['shape_exact']}/{m['shape_blocks']}",
    "max |out - in|": lambda m: f"{m['max_abs_diff']:.1e}",
    "plain blocks zero": lambda m: f"{m['plain_zero_blocks']}/{m['blocks']}",
    "plain output constant": lambda m: "yes" if m["plain_constant_output"] else "no",
}


def table(columns: Columns, rows: Iterable[dict]) -> tuple[list[str], list[list[str]]]:
    """The header and the cells of a table, for `text_table` and `Page.table`."""
    return list(columns), [[cell(r) for cell in columns.values()] for r in rows]


def fit_table(summary: dict) -> tuple[list[str], list[list[str]]]:
    """One row per arm and depth; the arms with weight decay (not judged) after the others."""
    calls = {r["depth"]: CALLS[r["call"]] for r in summary["verdict"]["measurement"]["depths"]}
    rows = [
        r | {"call": "not judged" if r.get("weight_decay") else calls.get(r["depth"], "—")}
        for r in summary["fit_results"]
    ]
    return table(
        FIT, sorted(rows, key=lambda r: (r["call"] == "not judged", r["depth"], r["arch"]))
    )


def format_table(summary: dict) -> str:
    """The measurement, the verdict, then the checks of construction, as plain text."""
    v, c = summary["verdict"], summary["verdict"]["construction"]
    parts = [f"verdict ({v['status']}): {v['text']}", f"construction ({c['status']}): {c['text']}"]
    if summary["fit_results"]:
        parts.insert(0, f"Measurement: learning the identity\n{text_table(*fit_table(summary))}")
    if summary["append_results"]:
        parts.append(text_table(*table(APPEND, summary["append_results"])))
    return "\n\n".join(parts)


def write_summary(study_dir: Path) -> tuple[dict, dict]:
    """Judge the results (`results/<part>.json`, a part not run yet left out) and write
    `<study_dir>/summary.json`; returns the summary and the results."""
    if not (study_dir / RESULTS).is_dir():
        raise FileNotFoundError(f"not an identity study folder (no {RESULTS}/): {study_dir}")
    results = {path.stem: runs.read_json(path) for path in (study_dir / RESULTS).glob("*.json")}
    summary = summary_head("identity", records.read_study(study_dir, "identity"))
    untrained = [d for d in runs.run_dirs(study_dir) if runs.status(d) in runs.UNTRAINED]
    summary["verdict"] = verdict(results, [runs.diverged_note(d) for d in untrained]).to_json()
    summary["append_results"] = results.get("append", {}).get("results", [])
    fit = results.get("fit", {}).get("results", [])
    summary["fit_results"] = [{k: v for k, v in r.items() if k != "curve"} for r in fit]
    return runs.write_study_summary(study_dir, finite_tree(summary)), results


def build_report(study_dir: str | Path) -> Path:
    """summary.json, the figures and report.html, from the study folder alone."""
    study_dir = Path(study_dir)
    summary, results = write_summary(study_dir)
    title = "Identity: does a residual block learn the identity more easily than a plain one?"
    notes = [summary["verdict"]["rule"], summary["verdict"]["construction"]["text"]]
    page = verdict_page(study_dir, summary, title, "He et al. 2015, §3.1", LABELS, notes)
    if "fit" in results:
        f = results["fit"]
        decay = (
            f" Arms marked with weight decay repeat both with decoupled (AdamW) decay "
            f"{f['fit_weight_decay']:g}, which pulls a residual block toward the identity and a plain "
            "one toward zero; they are shown, not judged."
            if f.get("fit_weight_decay")
            else ""
        )
        page.heading("Measurement: learning the identity").paragraph(
            f"Plain and residual stacks of fully connected blocks (width {f['fit_width']}) start from "
            "the same weights (same seed, same parameter names: He normal, BN weight 1, bias 0) and "
            f"train for {f['fit_steps']} Adam steps (peak lr {f['fit_lr']:g}, cosine, no weight "
            f"decay) to output their input, on the same {f['fit_samples']} random vectors |N(0, 1)| "
            "in the same batches; loss = MSE / mean square of the data (1: as good as outputting "
            f"zero), the held-out one on fresh random vectors.{decay}"
        )
        caption = "Left: the loss each stack reaches against depth. Middle, right: training curves."
        page.figure(plot_fit(f, study_dir / "fit.png"), caption)
        page.table(*fit_table(summary))
    page.heading("Checks of construction").paragraph(
        "These hold by how the blocks are built: they test the code, not a claim about learning.",
        small=True,
    )
    if "structure" in results:
        s = results["structure"]
        page.heading("Zeroed branches are exact identities", level=3).paragraph(
            f"Every residual branch of a freshly built {s['model']} is zeroed "
            f"({', '.join(s['methods'])}), then a batch of real training images runs through it and "
            "through its plain twin with the same weights. Counts are of exact fp32 equality "
            "(torch.equal), not closeness."
        )
        caption = (
            "Mean norm of each block's output (eval mode) with zeroed branches: the residual net "
            "carries its input through unchanged, the plain twin outputs zero after the first block."
        )
        page.figure(plot_structure(s, study_dir / "structure.png"), caption)
        modes = [
            {"method": method, "mode": mode, **m}
            for method, r in s["methods"].items()
            for mode, m in r["modes"].items()
        ]
        page.table(*table(STRUCTURE, modes))
        signed = next(iter(s["methods"].values())).get("signed_input")
        if signed:
            page.paragraph(
                f"With a signed input (random normal) a zeroed block returns g(a) with g = "
                f"{signed['g']}: equal to g(a): {signed['equals_g_of_input']}, equal to a: "
                f"{signed['equals_input']}. The identity a[l+2] = g(a[l]) = a[l] needs the "
                "non-negative inputs a ReLU leaves behind.",
                small=True,
            )
    if "append" in results:
        a = results["append"]
        page.heading("Appended zero-init blocks change nothing", level=3).paragraph(
            f"{a['base_model']} trained for {a['base_iters']} iterations with the engine "
            f"({a['base_run']}), then k blocks appended after its last block and evaluated on "
            f"{a['test_images']} test images before any further training. Plain and default-init "
            "residual blocks start from another init than the zero-init ones: shown for contrast."
        )
        caption = "Test error against the number of appended blocks."
        page.figure(plot_append(a, study_dir / "append.png"), caption, max_width=760)
        page.table(*table(APPEND, summary["append_results"]))
    what = (
        f"On {summary['family']} nets and {summary['data']} (seed {summary['seed']}): the three "
        "parts above with the settings below, the net of check 3 trained with the recipe below."
    )
    return finish(page, study_dir, what, summary, ("study", "append_results", "fit_results"))


def plot_structure(structure: dict, path: Path) -> Path:
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
        evals = [r["modes"]["eval"] for r in methods.values()]
        top = max(max(m["residual_norms"] + m["plain_norms"]) for m in evals)
        axes[0].set_ylim(0, 1.1 * top if top > 0 else 1.0)  # set once: the y axis is shared
        axes[0].set_ylabel("mean ||block output||")
        axes[0].legend()
        return figures.save(fig, path)


def plot_fit(fit: dict, path: Path) -> Path:
    """Final relative loss against depth, and the training curves of each arch (log y); arms with
    weight decay (not judged) dashed."""
    results = fit["results"]
    depths = [r["depth"] for r in results]
    colors = figures.depth_colors(depths)
    arms: dict[str, list[dict]] = {}  # arm -> its rows, shallow to deep
    for r in sorted(results, key=lambda r: r["depth"]):
        arms.setdefault(r.get("arm", r["arch"]), []).append(r)
    with figures.style():
        fig, axes = figures.figure(3, width=4.0, height=3.4)
        for arm, rs in arms.items():
            x, loss = [r["depth"] for r in rs], [max(r["final_loss"], 1e-12) for r in rs]
            ls, color = "--" if rs[0].get("weight_decay") else "-", COLORS[rs[0]["arch"]]
            axes[0].plot(x, loss, marker="o", color=color, ls=ls, lw=2, label=arm)
        figures.depth_axis(axes[0], depths)
        axes[0].set_ylabel("MSE / mean square of the data")
        axes[0].set_title("loss reached (held-out data)")
        for ax, arch in zip(axes[1:], ("plain", "residual"), strict=True):
            for r in (r for r in results if r["arch"] == arch):
                step, loss = np.asarray(r["curve"], dtype=float).T
                decay = ", decay" if r.get("weight_decay") else ""
                style = dict(color=colors[r["depth"]], ls="--" if decay else "-")
                ax.plot(step, np.maximum(loss, 1e-12), **style, label=f"{r['depth']} layers{decay}")
            ax.set_xlabel("step")
            ax.set_title(f"{arch} stacks: training loss")
        axes[2].sharey(axes[1])
        for ax in axes:
            ax.set_yscale("log")
            ax.legend(fontsize=7.5)
        return figures.save(fig, path)


def plot_append(append: dict, path: Path) -> Path:
    """Test error against the number of appended blocks, before any further training; one line per
    variant of appended blocks."""
    with figures.style():
        fig, (ax,) = figures.figure(1, width=5.6, height=3.8)
        for variant, color in VARIANT_COLORS.items():
            rs = sorted(
                (r for r in append["results"] if r["variant"] == variant), key=lambda r: r["k"]
            )
            k, error = [r["k"] for r in rs], [100 * r["test_error"] for r in rs]
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
