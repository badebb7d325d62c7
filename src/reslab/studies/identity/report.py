"""The identity study's summary.json, terminal table, figures and report.html, from its folder alone:
`study.json`, `results/{structure,fit,append}.json` and the run folder of check 3 under `runs/`."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from reslab.report.html import fmt_num, fmt_pct
from reslab.studies import records
from reslab.studies.identity import RESULTS
from reslab.studies.identity.plots import plot_append, plot_fit, plot_structure
from reslab.studies.identity.rule import CALLS, LABELS, verdict
from reslab.studies.pages import finish, summary_head, text_table, verdict_page
from reslab.studies.stats import finite_tree
from reslab.training import runs

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
    "logits equal": lambda r: _yes(r["logits_equal"]),
}
STRUCTURE: Columns = {
    "zeroing": lambda m: m["method"],
    "mode": lambda m: m["mode"],
    "identity blocks exact": lambda m: f"{m['identity_exact']}/{m['identity_blocks']}",
    "other shortcuts exact": lambda m: f"{m['shape_exact']}/{m['shape_blocks']}",
    "max |out - in|": lambda m: f"{m['max_abs_diff']:.1e}",
    "plain blocks zero": lambda m: f"{m['plain_zero_blocks']}/{m['blocks']}",
    "plain output constant": lambda m: _yes(m["plain_constant_output"]),
}


def collect(study_dir: str | Path) -> dict:
    """The results of the three checks, {part: dict}; a part not run yet is left out."""
    folder = Path(study_dir) / RESULTS
    if not folder.is_dir():
        raise FileNotFoundError(f"not an identity study folder (no {RESULTS}/): {study_dir}")
    return {path.stem: runs.read_json(path) for path in folder.glob("*.json")}


def write_summary(study_dir: Path, results: dict) -> dict:
    """Judge the results and write `<study_dir>/summary.json`; returns the summary."""
    summary = summary_head("identity", records.read_study(study_dir, "identity"))
    untrained = [d for d in runs.run_dirs(study_dir) if runs.status(d) in runs.UNTRAINED]
    summary["verdict"] = verdict(results, [runs.diverged_note(d) for d in untrained]).to_json()
    summary["append_results"] = results.get("append", {}).get("results", [])
    summary["fit_results"] = [
        {k: v for k, v in r.items() if k != "curve"}
        for r in results.get("fit", {}).get("results", [])
    ]
    return runs.write_study_summary(study_dir, finite_tree(summary))


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


def build_report(study_dir: str | Path) -> Path:
    """summary.json, the figures and report.html, from the study folder alone."""
    study_dir = Path(study_dir)
    results = collect(study_dir)
    summary = write_summary(study_dir, results)
    v = summary["verdict"]
    title = "Identity: does a residual block learn the identity more easily than a plain one?"
    notes = [v["rule"], v["construction"]["text"]]
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


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"
