"""Report for the gradients study, from the study folder alone: the measurement records
(`measurements/<arch>-<depth>-s<seed>.json`), study.json and the run folders under `runs/` (each net's
final training error; for a run that diverged, where, and its last finite loss). `build_report`
writes summary.json, norms.png, activations.png, shattering.png, lines.png and report.html.
"""

from __future__ import annotations

from pathlib import Path

from reslab.report.html import fmt_count, fmt_mean_std, fmt_num, join_values
from reslab.studies import records
from reslab.studies.base import ARCHS, recipe
from reslab.studies.gradients import MEASUREMENTS
from reslab.studies.gradients.claims import claims, seeds_profile, train_error
from reslab.studies.gradients.plots import plot_lines, plot_norms, plot_shattering
from reslab.studies.gradients.rule import combine, nets, verdict
from reslab.studies.pages import finish, summary_head, text_table, verdict_page
from reslab.studies.stats import finite_tree, mean_std
from reslab.training import runs

LABELS = {
    "shown": ("shortcuts keep gradients in shape", "good"),
    "partly": ("partly shown", "warn"),
    "not_shown": ("effect not shown", "warn"),
    "insufficient": ("insufficient measurements", "neutral"),
}
CLAIM_LABELS = {
    "supports_he": ("the numbers side with He et al. 2015", "neutral"),
    "supports_note": ("the numbers side with the note (co-occurrence)", "neutral"),
    "neither": ("neither claim as stated", "warn"),
    "no_degradation": ("no degradation here: neither claim tested", "neutral"),
    "insufficient": ("insufficient measurements", "neutral"),
}
CHECKS = {"same_seed": "seeds", "same_recipe": "training recipes", "same_init": "initial weights"}


def collect(study_dir: Path) -> list[dict]:
    """The measurement records of the study, sorted by arch, depth and seed."""
    folder = study_dir / MEASUREMENTS
    if not folder.is_dir():
        raise FileNotFoundError(f"not a gradients study folder (no {MEASUREMENTS}/): {study_dir}")
    # a study of one seed wrote its records without a "seed"
    found = [{"seed": 0} | runs.read_json(p) for p in sorted(folder.glob("*.json"))]
    return sorted(found, key=lambda r: (ARCHS.index(r["arch"]), r["depth"], r["seed"]))


def like_for_like(study_dir: str | Path, measured: list[dict], study: dict) -> dict:
    """Whether each plain net and its residual twin (same depth and seed) share the seed, the run
    config apart from the model and the initial weights (`init_digest`; "unknown" for records
    measured before it was recorded). Options on the residual arm only (`residual_args`, e.g.
    zero_init_residual) make it its own arm, labelled with them."""
    by = {(r["arch"], r["depth"], r["seed"]): r for r in measured}
    residual_args = study.get("residual_args") or {}
    pairs = []
    for depth, seed in sorted(
        (d, s) for a, d, s in by if a == "plain" and ("residual", d, s) in by
    ):
        p, r = by["plain", depth, seed], by["residual", depth, seed]
        cp, cr = (runs.read_config(Path(study_dir) / x["run_dir"]) for x in (p, r))
        digests = p.get("init_digest"), r.get("init_digest")
        same_init = None if None in digests else digests[0] == digests[1]
        same = cp.get("seed") == cr.get("seed"), recipe(cp) == recipe(cr), same_init
        pairs.append({"depth": depth, "seed": seed} | dict(zip(CHECKS, same, strict=True)))
    checks = [x[k] for x in pairs for k in CHECKS]
    status = "same" if pairs and None not in checks else "unknown"
    if pairs and (residual_args or False in checks):
        status = "differs"
    text = _like_text(status, pairs, residual_args)
    return {"status": status, "residual_args": residual_args, "pairs": pairs, "text": text}


def _like_text(status: str, pairs: list[dict], residual_args: dict) -> str:
    if not pairs:
        return "No depth has both a plain and a residual net, so there is no pair to compare."
    if status == "same":
        return (
            f"Like for like: at each depth ({join_values(sorted({x['depth'] for x in pairs}))}) and "
            "seed the plain net and its residual twin share the seed, the training recipe (run "
            "configs equal apart from the model) and the initial weights (equal digests of every "
            "shared tensor); no option is set on one arm only."
        )
    parts = []
    if residual_args:
        parts.append(f"the residual arm is its own arm, {_arm('residual', residual_args)}")
    for key, what in CHECKS.items():
        if bad := sorted({x["depth"] for x in pairs if x[key] is False}):
            parts.append(f"the {what} differ at depth {join_values(bad)}")
    if unknown := sorted({x["depth"] for x in pairs if x["same_init"] is None}):
        parts.append(f"the initial weights were not recorded (depth {join_values(unknown)})")
    lead = "Not like for like" if status == "differs" else "Like for like not fully checked"
    return f"{lead}: {'; '.join(parts)}."


def _arm(arch: str, residual_args: dict) -> str:
    """The arm's label: 'residual (zero_init_residual=True)' when options are set on it alone."""
    options = ", ".join(f"{k}={v}" for k, v in sorted(residual_args.items()))
    return f"{arch} ({options})" if arch == "residual" and options else arch


def write_summary(study_dir: Path, measured: list[dict]) -> dict:
    """Judge the `measured` records (verdict, claims, like for like) and write summary.json. The
    claims read each net's final training error (the engine's last evaluation on the whole training
    set) from its run folder, by cell name; None where training did not complete."""
    study = records.read_study(study_dir, "gradients")
    rows = nets(measured)
    summary = summary_head("gradients", study, ("nets", "seed_nets"))
    summary.update(nets=combine(rows), seed_nets=rows)
    like = like_for_like(study_dir, measured, study)
    notes = [
        runs.diverged_note(study_dir / e["run_dir"])
        for e in rows
        if e["train_status"] == "diverged"
    ]
    summary["verdict"] = verdict(rows, like=like, diverged=notes).to_json()
    errors = {}
    for e in rows:
        done = e["train_status"] == "completed" and e["run_dir"]
        run = (runs.read_summary(study_dir / e["run_dir"]) if done else None) or {}
        errors[runs.cell_name(e["arch"], e["depth"], seed=e["seed"])] = run.get("final_train_error")
    summary["claims"] = claims(rows, errors)
    summary["like_for_like"] = like
    return runs.write_study_summary(study_dir, finite_tree(summary))


def _ratio_cells(es: list[dict], phase: str, head: str) -> list[tuple[str, str]]:
    """Column `head`: the ratio over seeds with the seeds' range; "profile": the one every seed has
    (else 'mixed')."""
    x = seeds_profile({i: e[phase]["weight_ratio"] for i, e in enumerate(es) if e[phase]})
    if x is None:
        return [(head, "—"), ("profile", "—")]
    spread = sorted(r for r in x["ratios"].values() if r is not None)
    each = f" [{fmt_num(spread[0])}, {fmt_num(spread[-1])}]" if len(spread) > 1 else ""
    return [(head, fmt_num(x["ratio"]) + each), ("profile", x["profile"] or "—")]


def _table(summary: dict) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the numbers: one row per arch and depth, over its seeds."""
    errors = summary.get("claims", {}).get("train_errors", {})
    rows = []
    for e in summary["nets"]:
        i, t = e["init"], e["trained"] or {}
        key = e["arch"], e["depth"]
        es = [x for x in summary.get("seed_nets") or [] if (x["arch"], x["depth"]) == key] or [e]
        statuses = [x["train_status"] for x in es]
        counts = {k: f"{k} x{statuses.count(k)}" if len(es) > 1 else k for k in statuses}
        rows.append(
            [
                ("arch", _arm(e["arch"], summary.get("residual_args") or {})),
                ("depth", str(e["depth"])),
                ("params", fmt_count(e["params"])),
                ("seeds", str(len(es))),
                ("train error", fmt_mean_std(*mean_std([train_error(errors, x) for x in es]))),
                *_ratio_cells(es, "init", "|g| first/last W, init"),
                *_ratio_cells(es, "trained", "trained"),
                ("|g| first/last block input, init", fmt_num(i["block_input_ratio"])),
                ("acf(1) init ± std", f"{i['acf1']:.3f} ± {i['acf1_std']:.3f}"),
                ("acf(1) trained", fmt_num(t.get("acf1"), ".3f")),
                ("neighbour corr init", f"{i['neighbour_corr']:.3f}"),
                ("loss trained", fmt_num(t.get("loss"), ".3f")),
                ("training", ", ".join(counts.values())),
            ]
        )
    return [h for h, _ in rows[0]] if rows else [], [[c for _, c in row] for row in rows]


def format_table(summary: dict) -> str:
    """The per-net numbers, the verdict and the claims as plain text for the terminal."""
    lines = [text_table(*_table(summary))]
    lines.append(f"verdict ({summary['verdict']['status']}): {summary['verdict']['text']}")
    if c := summary.get("claims"):  # absent from summaries written before the claims were judged
        lines.append(f"claims ({c['status']}): {c['text']}")
    return "\n".join(lines)


def build_report(study_dir: str | Path) -> Path:
    """summary.json, the four figures and report.html, from the study folder alone."""
    study_dir = Path(study_dir)
    measured = collect(study_dir)
    s = write_summary(study_dir, measured)
    c = s["claims"]
    title = "Gradients: plain vs residual networks"
    source = "gradient norms per layer and shattered gradients (Balduzzi et al. 2017, Figs. 1-2)"
    page = verdict_page(study_dir, s, title, source, LABELS, [s["verdict"]["rule"]])
    label, tone = CLAIM_LABELS[c["status"]]
    page.heading("Vanishing gradients and degradation: two claims")
    page.verdict(label, c["text"], tone, [c["rule"]])
    page.bullets(
        [
            f"{c['he_2015']['source']}: “{c['he_2015']['quote']}”",
            f"{c['note']['source']}: “{c['note']['original']}” (“{c['note']['translation']}”)",
            s["like_for_like"]["text"],
        ]
    )
    norms = plot_norms(
        measured, "weight_norms", "weight layer (forward order)", study_dir / "norms.png"
    )
    page.heading("Gradient norm per layer").figure(
        norms,
        "||dL/dW|| of every weight layer on the main path against its index (log scale), "
        "one line per depth and seed; left plain, right residual; top at init, bottom after "
        "training. A flat line is a gradient that neither vanishes nor explodes on its way to the "
        "input.",
    )
    page.figure(
        plot_norms(measured, "block_input_norms", "block", study_dir / "activations.png"),
        "||dL/da|| of the input a of every block against the block index (log scale).",
    )
    page.heading("Shattered gradients").figure(
        plot_shattering(measured, s["seed_nets"], study_dir / "shattering.png"),
        "Left: acf(1), the correlation between the gradients of neighbouring inputs on a line, "
        "against depth (bars: std over the lines of every seed). Middle and right: the "
        "autocorrelation against lag at init, one line per depth and seed. In the paper (Fig. 2) "
        "feedforward nets fall to white noise (acf ≈ 0) with depth, resnets keep their correlation.",
    )
    page.figure(
        plot_lines(measured, study_dir / "lines.png"),
        "The gradient along one line at init (the first seed), one trace per depth (Fig. 1 "
        "style): smooth (brown-noise-like) for a structured gradient, jagged (white-noise-like) "
        "for a shattered one.",
    )
    page.heading("Numbers").table(
        *_table(s),
        caption="Over seeds: train error is the mean ± std of the engine's final evaluation on the "
        "whole training set; first/last is the ratio of the first to the last layer's gradient norm, "
        "its geometric mean over seeds [lowest, highest seed], and its profile by the claims rule "
        "when every seed has it (else mixed); acf(1) ± std over the lines of every seed.",
    )
    what = (
        f"Plain nets and their residual twins ({s.get('family')} family, depths "
        f"{join_values(s.get('depths', []))}, seeds {join_values(s.get('seeds', [0]))}) with the same "
        f"initial weights, on {s.get('data')}, each seed on its own batches and lines: at "
        f"initialisation and after {s.get('iters')} SGD steps of the training engine. Gradient norms: "
        f"the mean cross-entropy of {s.get('batches')} real training batches, in train mode. "
        f"Shattering: the gradient of the logit of the start image's class along {s.get('lines')} "
        f"lines between two test images ({s.get('points')} points each), in eval mode with "
        "batch-norm statistics re-estimated on the same batches."
    )
    return finish(page, study_dir, what, s, ("study", "nets", "seed_nets"))
