"""Report for the identity study (He et al. 2015, §3.1: a block can learn the identity by setting its
weights to zero): one measurement, learning the identity, and two checks of construction, zeroed
branches and appended zero-init blocks.

Works from the study folder alone: `study.json`, `results/{structure,fit,append}.json` written by
`reslab.studies.identity` and the run folder of check 3 under `runs/`. `build_report(study_dir)` writes
summary.json, structure.png, fit.png, append.png and report.html.

The measurement's rule and the checks of construction are in `rule.py`.
"""

from __future__ import annotations

from pathlib import Path

from reslab.report import figures
from reslab.report.html import fmt_pct, join_values
from reslab.studies import records
from reslab.studies.identity import PLAIN, RESIDUAL, RESULTS, ZERO_INIT
from reslab.studies.identity.plots import plot_append, plot_fit, plot_structure
from reslab.studies.identity.rule import CALLS, _fmt, verdict
from reslab.studies.pages import finish, summary_head, text_table, verdict_page
from reslab.studies.stats import finite_tree
from reslab.training import runs

PARTS = ("structure", "fit", "append")
# the blocks appended in check 3, as the results name them, with their colours in the figure
VARIANT_COLORS = {
    ZERO_INIT: figures.ARCH_COLORS["residual"],
    PLAIN: figures.ARCH_COLORS["plain"],
    RESIDUAL: "#7f8c8d",
}
LABELS = {
    "shown": ("residual learns the identity more easily", "good"),
    "partly": ("partly shown", "warn"),
    "not_shown": ("not shown: tied", "warn"),
    "reversed": ("plain learns it more easily", "warn"),
    "insufficient": ("insufficient", "neutral"),
}


def collect(study_dir: str | Path) -> dict:
    """The results of the three checks, {part: dict}; a part not run yet is left out."""
    folder = Path(study_dir) / RESULTS
    if not folder.is_dir():
        raise FileNotFoundError(f"not an identity study folder (no {RESULTS}/): {study_dir}")
    return {
        p: runs.read_json(folder / f"{p}.json") for p in PARTS if (folder / f"{p}.json").is_file()
    }


def write_summary(study_dir: str | Path) -> dict:
    """Collect the results, judge them and write `<study_dir>/summary.json`; returns the summary."""
    study_dir = Path(study_dir)
    results = collect(study_dir)
    study = records.read_study(study_dir, "identity")
    summary = summary_head("identity", study)
    diverged = [
        runs.diverged_note(d) for d in runs.run_dirs(study_dir) if runs.status(d) in runs.UNTRAINED
    ]
    summary["verdict"] = verdict(results, diverged).to_json()
    summary["append_results"] = results.get("append", {}).get("results", [])
    summary["fit_results"] = [
        {k: v for k, v in r.items() if k != "curve"}
        for r in results.get("fit", {}).get("results", [])
    ]
    return runs.write_study_summary(study_dir, finite_tree(summary))


# ---------------------------------------------------------------------------------------------- text + html


def _structure_rows(structure: dict) -> list[list[str]]:
    rows = []
    for method, r in structure["methods"].items():
        for mode, m in r["modes"].items():
            rows.append([
                method, mode, f"{m['identity_exact']}/{m['identity_blocks']}",
                f"{m['shape_exact']}/{m['shape_blocks']}", f"{m['max_abs_diff']:.1e}",
                f"{m['plain_zero_blocks']}/{m['blocks']}", "yes" if m["plain_constant_output"] else "no",
            ])  # fmt: skip
    return rows


def _fit_rows(summary: dict) -> list[list[str]]:
    """One row per arm and depth; the arms with weight decay (not judged) after the others."""
    calls = {r["depth"]: r["call"] for r in summary["verdict"]["measurement"]["depths"]}
    order = sorted(
        summary["fit_results"], key=lambda r: (bool(r.get("weight_decay")), r["depth"], r["arch"])
    )
    return [
        [
            r.get("arm", r["arch"]),
            str(r["depth"]),
            str(r["blocks"]),
            _fmt(r["train_loss"]),
            _fmt(r["final_loss"]),
            "not judged" if r.get("weight_decay") else CALLS.get(calls.get(r["depth"], ""), "—"),
        ]
        for r in order
    ]


def _append_rows(summary: dict) -> list[list[str]]:
    return [
        [r["variant"], str(r["k"]), str(r["blocks"]), fmt_pct(r["test_error"]),
         str(r["changed_predictions"]), "yes" if r["logits_equal"] else "no"]
        for r in summary["append_results"]
    ]  # fmt: skip


FIT_HEADER = ["arm", "layers", "blocks", "train loss", "held-out loss", "call at this depth"]
APPEND_HEADER = ["appended", "k", "blocks", "test error", "predictions changed", "logits equal"]
STRUCTURE_HEADER = ["zeroing", "mode", "identity blocks exact", "other shortcuts exact",
                    "max |out - in|", "plain blocks zero", "plain output constant"]  # fmt: skip


def format_table(summary: dict) -> str:
    """The measurement, the verdict, then the checks of construction, as plain text."""
    v = summary["verdict"]
    parts = []
    if summary["fit_results"]:
        parts.append(
            "Measurement: learning the identity\n" + text_table(FIT_HEADER, _fit_rows(summary))
        )
    parts.append(f"verdict ({v['status']}): {v['text']}")
    construction = v["construction"]
    parts.append(f"construction ({construction['status']}): {construction['text']}")
    if summary["append_results"]:
        parts.append(text_table(APPEND_HEADER, _append_rows(summary)))
    return "\n\n".join(parts)


def build_report(study_dir: str | Path) -> Path:
    """summary.json, the figures and report.html, from the study folder alone."""
    study_dir = Path(study_dir)
    summary = write_summary(study_dir)
    results = collect(study_dir)
    v = summary["verdict"]
    construction = v["construction"]
    title = "Identity: does a residual block learn the identity more easily than a plain one?"
    notes = [v["rule"], construction["text"]]
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
        page.figure(plot_fit(f, study_dir / "fit.png"), "Left: the loss each stack reaches "
                    "against depth. Middle, right: training curves.")  # fmt: skip
        page.table(FIT_HEADER, _fit_rows(summary))
    page.heading("Checks of construction").paragraph(
        "These hold by how the blocks are built: they test the code, not a claim about learning. "
        + construction["text"],
        small=True,
    )
    if "structure" in results:
        s = results["structure"]
        page.heading("Zeroed branches are exact identities", level=3).paragraph(
            f"Every residual branch of a freshly built {s['model']} is zeroed ({', '.join(s['methods'])}"
            "), then a batch of real training images runs through it and through its plain twin with the "
            "same weights. Counts are of exact fp32 equality (torch.equal), not closeness."
        )
        page.figure(plot_structure(s, study_dir / "structure.png"), "Mean norm of each block's output "
                    "(eval mode) with zeroed branches: the residual net carries its input through "
                    "unchanged, the plain twin outputs zero after the first block.")  # fmt: skip
        page.table(STRUCTURE_HEADER, _structure_rows(s))
        signed = next(
            (r.get("signed_input") for r in s["methods"].values() if "signed_input" in r), None
        )
        if signed:
            page.paragraph(
                f"With a signed input (random normal) a zeroed block returns g(a) with g = {signed['g']}: "
                f"equal to g(a): {signed['equals_g_of_input']}, equal to a: {signed['equals_input']}. The "
                "identity a[l+2] = g(a[l]) = a[l] needs the non-negative inputs a ReLU leaves behind.",
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
        page.figure(
            plot_append(a, VARIANT_COLORS, study_dir / "append.png"),
            "Test error against the number of appended blocks.",
            max_width=760,
        )
        page.table(APPEND_HEADER, _append_rows(summary))
    skip = ("study", "append_results", "fit_results")
    return finish(page, study_dir, _what_was_run(summary), summary, skip)


def _what_was_run(summary: dict) -> str:
    decay = summary.get("fit_weight_decay")
    arms = f", and again with weight decay {decay:g} (not judged)" if decay else ""
    return (
        f"On {summary.get('family')} nets and {summary.get('data')} (seed {summary.get('seed')}): "
        f"the measurement, plain and residual fully connected stacks of "
        f"{join_values(summary.get('fit_depths', []))} layers fitting the identity{arms}; the checks "
        f"of construction, every way of zeroing the branches "
        f"({join_values(summary.get('methods', []))}) on a {summary.get('check_depth')}-layer net, "
        f"and a {summary.get('base_depth')}-layer residual net trained for "
        f"{summary.get('base_iters')} iterations with the recipe below, then k = "
        f"{join_values(summary.get('append', []))} blocks appended."
    )
