"""Report for the identity study (He et al. 2015, §3.1: a block can learn the identity by setting its
weights to zero): zeroed branches are exact identities, learning the identity, appending blocks.

Works from the study folder alone: `study.json` and `results/{structure,fit,append}.json` written by
`reslab.studies.identity`. `build_report(study_dir)` writes summary.json, structure.png, fit.png,
append.png and report.html.

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
Status: "shown" (all three), "partly" (some), "not_shown" (none).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from reslab.report import figures
from reslab.report.html import Page, fmt_pct

PARTS = ("structure", "fit", "append")
FACTOR = 2.0
_LABELS = {
    "shown": ("identity shown", "good"),
    "partly": ("partly shown", "warn"),
    "not_shown": ("not shown", "warn"),
}
_VARIANT_COLORS = {
    "residual, zero-init": figures.ARCH_COLORS["residual"],
    "plain, default init": figures.ARCH_COLORS["plain"],
    "residual, default init": "#7f8c8d",
}


def collect(study_dir: str | Path) -> dict:
    """The results of the three checks, {part: dict}; a part not run yet is left out."""
    folder = Path(study_dir) / "results"
    if not folder.is_dir():
        raise FileNotFoundError(f"not an identity study folder (no results/): {study_dir}")
    return {
        p: json.loads((folder / f"{p}.json").read_text())
        for p in PARTS
        if (folder / f"{p}.json").is_file()
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
    res = [r for r in append["results"] if r["variant"] == "residual, zero-init"]
    plain = [r for r in append["results"] if r["variant"] == "plain, default init"]
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
    study_dir = Path(study_dir)
    study = json.loads((study_dir / "study.json").read_text())
    results = collect(study_dir)
    summary = {k: v for k, v in study.items() if k != "verdict"}
    summary.update(study="identity", verdict=verdict(results))
    summary["append_results"] = results.get("append", {}).get("results", [])
    summary["fit_results"] = [
        {k: v for k, v in r.items() if k != "curve"}
        for r in results.get("fit", {}).get("results", [])
    ]
    (study_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


# ---------------------------------------------------------------------------------------------- figures


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
    """Final relative loss against depth, and the training curves of each arch (log y)."""
    results = fit["results"]
    colors = figures.depth_colors([r["depth"] for r in results])
    with figures.style():
        fig, axes = figures.figure(3, width=4.0, height=3.4)
        ax = axes[0]
        for arch in ("plain", "residual"):
            rs = sorted((r for r in results if r["arch"] == arch), key=lambda r: r["depth"])
            ax.plot(
                [r["depth"] for r in rs],
                [max(r["final_loss"], 1e-12) for r in rs],
                marker="o",
                color=figures.ARCH_COLORS[arch],
                lw=2,
                label=arch,
            )
        figures.depth_axis(ax, [r["depth"] for r in results])
        ax.set_yscale("log")
        ax.set_ylabel("MSE / mean square of the data")
        ax.set_title("loss reached (held-out data)")
        ax.legend()
        for ax, arch in zip(axes[1:], ("plain", "residual"), strict=True):
            for r in results:
                if r["arch"] == arch:
                    step, loss = np.asarray(r["curve"], dtype=float).T
                    ax.plot(
                        step,
                        np.maximum(loss, 1e-12),
                        color=colors[r["depth"]],
                        label=f"{r['depth']} layers",
                    )
            ax.set_yscale("log")
            ax.set_xlabel("step")
            ax.set_title(f"{arch} stacks: training loss")
            ax.legend()
        axes[2].sharey(axes[1])
        return figures.save(fig, path)


def plot_append(append: dict, path: str | Path) -> Path:
    """Test error against the number of appended blocks, before any further training."""
    with figures.style():
        fig, (ax,) = figures.figure(1, width=5.6, height=3.8)
        for variant, color in _VARIANT_COLORS.items():
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
            f"{r['train_loss']:.3g}",
            f"{r['final_loss']:.3g}",
        ]
        for r in sorted(summary["fit_results"], key=lambda r: (r["depth"], r["arch"]))
    ]


def _append_rows(summary: dict) -> list[list[str]]:
    return [
        [r["variant"], str(r["k"]), str(r["blocks"]), fmt_pct(r["test_error"]),
         str(r["changed_predictions"]), "yes" if r["logits_equal"] else "no"]
        for r in summary["append_results"]
    ]  # fmt: skip


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
    page.facts({k: summary.get(k) for k in ("data", "family", "seed", "check_depth", "base_depth",
                                            "base_iters", "append", "fit_depths", "fit_width",
                                            "fit_steps", "fit_lr", "fit_weight_decay")})  # fmt: skip
    if "structure" in results:
        s = results["structure"]
        page.heading("1. Zeroed branches are exact identities").paragraph(
            f"Every residual branch of a freshly built {s['model']} is zeroed ({', '.join(s['methods'])}"
            "), then a batch of real training images runs through it and through its plain twin with the "
            "same weights. Counts are of exact fp32 equality (torch.equal), not closeness."
        )
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
        page.figure(plot_structure(s, study_dir / "structure.png"), "Mean norm of each block's output "
                    "(eval mode) with zeroed branches: the residual net carries its input through "
                    "unchanged, the plain twin outputs zero after the first block.")  # fmt: skip
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
        page.figure(plot_append(a, study_dir / "append.png"), "Test error against the number of "
                    "appended blocks.", max_width=760)  # fmt: skip
        page.table(APPEND_HEADER, _append_rows(summary))
    return page.write(study_dir / "report.html")
