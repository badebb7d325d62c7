"""Report for the identity study (He et al. 2015, §3.1: a block can learn the identity by setting its
weights to zero): zeroed branches are exact identities, learning the identity, appending blocks.

Works from the study folder alone: `study.json`, `results/{structure,fit,append}.json` written by
`reslab.studies.identity` and the run folder of check 3 under `runs/`. `build_report(study_dir)` writes
summary.json, structure.png, fit.png, append.png and report.html.

Verdict rules:
  structure  shown when, for every zeroing method and in both eval and train mode, every block with an
             identity shortcut outputs its input exactly (torch.equal), every shape-changing block
             outputs g(shortcut(input)) exactly, every block of the plain twin outputs exactly zero and
             the plain twin's logits are the same for every input.
  fit        per depth, the residual stack's final loss must be below the plain stack's by at least
             FACTOR (= 2); shown at every depth -> shown, at some -> partly.
  append     shown when appended zero-init residual blocks leave every logit equal (hence no prediction
             changed) for every k, and appended plain blocks raise the test error at least half way from
             the trained net's error to chance (1 - 1/classes) for every k.
Status: "shown" (all three), "partly" (some), "not_shown" (none). A part without results counts as
not shown and is named ("Not run yet"); when the training of check 3 diverged, no blocks are appended
(that part has no results) and the text names the run, its step and its last finite loss.
"""

from __future__ import annotations

from pathlib import Path

from reslab.report import figures
from reslab.report.html import Page, fmt_pct, join_values
from reslab.studies.identity.plots import plot_append, plot_fit, plot_structure
from reslab.studies.stats import finite_tree
from reslab.training import runs

PARTS = ("structure", "fit", "append")
RESULTS = "results"  # <study>/results/<part>.json
FACTOR = 2.0
# the blocks appended in check 3, as the results name them, with their colours in the figure
ZERO_INIT, PLAIN, RESIDUAL = "residual, zero-init", "plain, default init", "residual, default init"
VARIANT_COLORS = {
    ZERO_INIT: figures.ARCH_COLORS["residual"],
    PLAIN: figures.ARCH_COLORS["plain"],
    RESIDUAL: "#7f8c8d",
}
_LABELS = {
    "shown": ("identity shown", "good"),
    "partly": ("partly shown", "warn"),
    "not_shown": ("not shown", "warn"),
}


def collect(study_dir: str | Path) -> dict:
    """The results of the three checks, {part: dict}; a part not run yet is left out."""
    folder = Path(study_dir) / RESULTS
    if not folder.is_dir():
        raise FileNotFoundError(f"not an identity study folder (no {RESULTS}/): {study_dir}")
    return {
        p: runs.read_json(folder / f"{p}.json") for p in PARTS if (folder / f"{p}.json").is_file()
    }


# ---------------------------------------------------------------------------------------------- verdict


def judge_structure(structure: dict) -> dict:
    failures = []
    for method, r in structure["methods"].items():
        for mode, m in r["modes"].items():
            if m["identity_blocks"] == 0 or m["identity_exact"] != m["identity_blocks"]:
                failures.append(
                    f"{method}/{mode}: {m['identity_exact']}/{m['identity_blocks']} identity blocks exact"
                )
            if m["shape_exact"] != m["shape_blocks"]:
                failures.append(
                    f"{method}/{mode}: {m['shape_exact']}/{m['shape_blocks']} shape-changing blocks exact"
                )
            if m["plain_zero_blocks"] != m["blocks"] or not m["plain_constant_output"]:
                failures.append(
                    f"{method}/{mode}: plain twin {m['plain_zero_blocks']}/{m['blocks']} blocks zero"
                )
    some = next(iter(structure["methods"].values()))["modes"]["eval"]
    text = (
        f"with zeroed branches ({', '.join(structure['methods'])}) all {some['identity_blocks']} identity "
        f"blocks of {structure['model']} output their input exactly and the plain twin outputs zero"
        if not failures
        else f"not every zeroed block is exact: {'; '.join(failures)}"
    )
    return {"shown": not failures, "failures": failures, "text": text}


def judge_fit(fit: dict, factor: float = FACTOR) -> dict:
    depths = sorted({r["depth"] for r in fit["results"]})
    rows = []
    for d in depths:
        loss = {r["arch"]: r["final_loss"] for r in fit["results"] if r["depth"] == d}
        if "plain" in loss and "residual" in loss:
            ok = loss["residual"] * factor <= loss["plain"]
            rows.append(
                {"depth": d, "plain": loss["plain"], "residual": loss["residual"], "better": ok}
            )
    better = [r["better"] for r in rows]
    text = "fitting the identity, residual stacks reach relative loss " + ", ".join(
        f"{r['residual']:.3g} vs plain {r['plain']:.3g} ({r['depth']} layers)" for r in rows
    )
    worse = [str(r["depth"]) for r in rows if not r["better"]]
    if worse:
        text += f" (not {factor:g}x lower at {', '.join(worse)} layers)"
    return {
        "shown": bool(better) and all(better),
        "some": any(better),
        "depths": rows,
        "text": text,
    }


def judge_append(append: dict) -> dict:
    base, chance = append["base_test_error"], append["chance_error"]
    res = [r for r in append["results"] if r["variant"] == ZERO_INIT]
    plain = [r for r in append["results"] if r["variant"] == PLAIN]
    unchanged = bool(res) and all(r["logits_equal"] and r["changed_predictions"] == 0 for r in res)
    destroyed = bool(plain) and all(r["test_error"] >= base + 0.5 * (chance - base) for r in plain)
    ks = ", ".join(str(r["k"]) for r in res)
    text = (
        f"appending k = {ks} zero-init residual blocks to the trained {append['base_model']} "
        f"({fmt_pct(base)} test error) {'leaves every logit unchanged' if unchanged else 'changes the logits'}"
        f", while appended plain blocks give {', '.join(fmt_pct(r['test_error']) for r in plain)} "
        f"(chance {fmt_pct(chance)})"
    )
    return {
        "shown": unchanged and destroyed,
        "unchanged": unchanged,
        "destroyed": destroyed,
        "text": text,
    }


def verdict(results: dict) -> dict:
    """Judge each part present from its numbers (rules in the module docstring)."""
    judges = {"structure": judge_structure, "fit": judge_fit, "append": judge_append}
    parts = {p: judges[p](results[p]) for p in PARTS if p in results}
    shown = [v["shown"] for v in parts.values()]
    status = (
        "shown"
        if shown and all(shown) and len(parts) == 3
        else "partly"
        if any(shown)
        else "not_shown"
    )
    lead = {"shown": "Identity shown:", "partly": "Partly shown:", "not_shown": "Not shown:"}[
        status
    ]
    text = f"{lead} {'; '.join(v['text'] for v in parts.values())}."
    missing = [p for p in PARTS if p not in parts]
    if missing:
        text += f" Not run yet: {', '.join(missing)}."
    return {
        "status": status,
        "text": text,
        "rule": f"fit: residual loss x {FACTOR:g} <= plain loss; "
        "append: plain error >= base + (chance - base) / 2",
        **parts,
    }


def write_summary(study_dir: str | Path) -> dict:
    """Collect the results, judge them and write `<study_dir>/summary.json`; returns the summary."""
    study_dir = Path(study_dir)
    study = runs.read_json(study_dir / runs.STUDY)
    results = collect(study_dir)
    summary = {k: v for k, v in study.items() if k != "verdict"}
    summary.update(study="identity", verdict=verdict(results))
    diverged = [
        runs.diverged_note(d) for d in runs.run_dirs(study_dir) if runs.status(d) == "diverged"
    ]
    if diverged:
        summary["verdict"]["text"] += f" The training of check 3 diverged: {'; '.join(diverged)}."
    summary["append_results"] = results.get("append", {}).get("results", [])
    summary["fit_results"] = [
        {k: v for k, v in r.items() if k != "curve"}
        for r in results.get("fit", {}).get("results", [])
    ]
    summary = finite_tree(summary)
    runs.write_json(study_dir / runs.SUMMARY, summary, strict=True)
    return summary


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
    return [
        [
            r["arch"],
            str(r["depth"]),
            str(r["blocks"]),
            _fmt(r["train_loss"]),
            _fmt(r["final_loss"]),
        ]
        for r in sorted(summary["fit_results"], key=lambda r: (r["depth"], r["arch"]))
    ]


def _append_rows(summary: dict) -> list[list[str]]:
    return [
        [r["variant"], str(r["k"]), str(r["blocks"]), fmt_pct(r["test_error"]),
         str(r["changed_predictions"]), "yes" if r["logits_equal"] else "no"]
        for r in summary["append_results"]
    ]  # fmt: skip


def _fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:.3g}"  # None: non-finite (written as null)


def _table(header: list[str], rows: list[list[str]]) -> str:
    rows = [header, *rows]
    widths = [max(len(r[c]) for r in rows) for c in range(len(header))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


FIT_HEADER = ["arch", "layers", "blocks", "train loss", "held-out loss"]
APPEND_HEADER = ["appended", "k", "blocks", "test error", "predictions changed", "logits equal"]
STRUCTURE_HEADER = ["zeroing", "mode", "identity blocks exact", "shape blocks exact",
                    "max |out - in|", "plain blocks zero", "plain output constant"]  # fmt: skip


def format_table(summary: dict) -> str:
    """The fit and append numbers and the verdict as plain text for the terminal."""
    parts = []
    if summary["fit_results"]:
        parts.append(_table(FIT_HEADER, _fit_rows(summary)))
    if summary["append_results"]:
        parts.append(_table(APPEND_HEADER, _append_rows(summary)))
    v = summary["verdict"]
    return "\n\n".join([*parts, f"verdict ({v['status']}): {v['text']}"])


def build_report(study_dir: str | Path) -> Path:
    """summary.json, the figures and report.html, from the study folder alone."""
    study_dir = Path(study_dir)
    summary = write_summary(study_dir)
    results = collect(study_dir)
    v = summary["verdict"]
    label, tone = _LABELS[v["status"]]
    page = Page(
        "Identity: a block can learn the identity by setting its weights to zero",
        f"{study_dir.name} · {summary.get('data')} · He et al. 2015, §3.1",
    )
    page.verdict(label, v["text"], tone, [v["rule"]])
    if "structure" in results:
        s = results["structure"]
        page.heading("1. Zeroed branches are exact identities").paragraph(
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
    if "fit" in results:
        page.heading("2. Learning the identity").paragraph(
            f"Stacks of fully connected blocks (width {results['fit']['fit_width']}, default init) trained "
            f"for {results['fit']['fit_steps']} AdamW steps to output their input, on "
            f"{results['fit']['fit_samples']} random vectors |N(0, 1)|; loss = MSE / mean square of the "
            "data (1: as good as outputting zero), the held-out one on fresh random vectors."
        )
        page.figure(plot_fit(results["fit"], study_dir / "fit.png"), "Left: the loss each stack reaches "
                    "against depth. Middle, right: training curves.")  # fmt: skip
        page.table(FIT_HEADER, _fit_rows(summary))
    if "append" in results:
        a = results["append"]
        page.heading("3. Appending blocks to a trained net").paragraph(
            f"{a['base_model']} trained for {a['base_iters']} iterations with the engine "
            f"({a['base_run']}), then k blocks appended after its last block and evaluated on "
            f"{a['test_images']} test images before any further training."
        )
        page.figure(
            plot_append(a, VARIANT_COLORS, study_dir / "append.png"),
            "Test error against the number of appended blocks.",
            max_width=760,
        )
        page.table(APPEND_HEADER, _append_rows(summary))
    skip = ("study", "verdict", "append_results", "fit_results", "recipe", "train")
    recipe = summary.get("recipe") if isinstance(summary.get("recipe"), dict) else None
    page.setup(_what_was_run(summary), {k: v for k, v in summary.items() if k not in skip}, recipe)
    return page.write(study_dir / runs.REPORT)


def _what_was_run(summary: dict) -> str:
    return (
        f"Three checks on {summary.get('family')} nets and {summary.get('data')} (seed "
        f"{summary.get('seed')}): every way of zeroing the branches "
        f"({join_values(summary.get('methods', []))}) on a {summary.get('check_depth')}-layer net; "
        f"fully connected stacks of {join_values(summary.get('fit_depths', []))} layers fitting the "
        f"identity; a {summary.get('base_depth')}-layer residual net trained for "
        f"{summary.get('base_iters')} iterations with the recipe below, then k = "
        f"{join_values(summary.get('append', []))} blocks appended."
    )
