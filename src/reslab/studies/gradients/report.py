"""Report for the gradients study: gradient norms per layer and shattered gradients (Balduzzi et al. 2017,
"The Shattered Gradients Problem: If resnets are the answer, then what is the question?", Figs. 1-2),
plain nets vs their residual twins.

Works from the study folder alone: `study.json`, `measurements/<arch>-<depth>.json` written by
`reslab.studies.gradients` and the run folders under `runs/` (for a run that diverged: where, and its
last finite loss). `build_report(study_dir)` writes summary.json, norms.png, activations.png,
shattering.png, lines.png and report.html.

Every net is measured once per seed (its own initial weights, data order, batches and lines). A
number "over seeds" is the mean over seeds, for a gradient-norm ratio the geometric mean (the mean of
its log10), and the report gives every seed's value or the range beside it.

The verdict rule is in `rule.py`, the claims rule in `claims.py`, each with its thresholds.
Like for like (summary["like_for_like"]): at each depth and seed the plain net and its residual twin
must share the seed, the run config apart from the model (name and options) and the initial weights
(`init_digest` in the measurement records). Options given to the residual arm only (`residual_args`, e.g.
zero_init_residual) make it its own arm: the table labels it with them and the verdict names them.
Status "same", "differs" or "unknown" (folders measured before the digest was recorded).
"""

from __future__ import annotations

import math
from pathlib import Path

from reslab.report.html import fmt_count, fmt_mean_std, join_values
from reslab.studies import records
from reslab.studies.base import recipe
from reslab.studies.gradients import MEASUREMENTS
from reslab.studies.gradients.claims import HE_2015, NOTE, _error, claims, profile
from reslab.studies.gradients.plots import ARCHS, plot_lines, plot_norms, plot_shattering
from reslab.studies.gradients.rule import _seed, combine, geomean, nets, verdict
from reslab.studies.pages import finish, summary_head, text_table, verdict_page
from reslab.studies.stats import finite_tree, mean_std
from reslab.training import runs

LABELS = {
    "shown": ("shortcuts keep gradients in shape", "good"),
    "partly": ("partly shown", "warn"),
    "not_shown": ("effect not shown", "warn"),
    "insufficient": ("insufficient measurements", "neutral"),
}
_CLAIM_LABELS = {
    "supports_he": ("the numbers side with He et al. 2015", "neutral"),
    "supports_note": ("the numbers side with the note (co-occurrence)", "neutral"),
    "neither": ("neither claim as stated", "warn"),
    "no_degradation": ("no degradation here: neither claim tested", "neutral"),
    "insufficient": ("insufficient measurements", "neutral"),
}


def collect(study_dir: str | Path) -> list[dict]:
    """The measurement records of the study, sorted by arch then depth."""
    folder = Path(study_dir) / MEASUREMENTS
    if not folder.is_dir():
        raise FileNotFoundError(f"not a gradients study folder (no {MEASUREMENTS}/): {study_dir}")
    records = [runs.read_json(p) for p in sorted(folder.glob("*.json"))]
    return sorted(records, key=lambda r: (ARCHS.index(r["arch"]), r["depth"], r.get("seed", 0)))


def like_for_like(study_dir: str | Path, records: list[dict], study: dict) -> dict:
    """Whether each plain net and its residual twin (same depth, same seed) share seed, recipe and
    initial weights (rule in the module docstring), from the measurement records and the run configs."""
    by = {(r["arch"], r["depth"], _seed(r)): r for r in records}
    residual_args = study.get("residual_args") or {}
    pairs = []
    for _, depth, seed in sorted(k for k in by if k[0] == "plain" and ("residual", *k[1:]) in by):
        p, r = by["plain", depth, seed], by["residual", depth, seed]
        cp, cr = (runs.read_config(Path(study_dir) / x["run_dir"]) for x in (p, r))
        digests = p.get("init_digest"), r.get("init_digest")
        pairs.append(
            {
                "depth": depth,
                "seed": seed,
                "same_seed": cp.get("seed") == cr.get("seed"),
                "same_recipe": recipe(cp) == recipe(cr),
                "same_init": None if None in digests else digests[0] == digests[1],
            }
        )
    checks = [x[k] for x in pairs for k in ("same_seed", "same_recipe", "same_init")]
    if not pairs:
        status = "unknown"
    elif residual_args or False in checks:
        status = "differs"
    else:
        status = "unknown" if None in checks else "same"
    return {
        "status": status,
        "residual_args": residual_args,
        "pairs": pairs,
        "text": _like_text(status, pairs, residual_args),
    }


def _like_text(status: str, pairs: list[dict], residual_args: dict) -> str:
    if not pairs:
        return "No depth has both a plain and a residual net, so there is no pair to compare."
    depths = join_values(sorted({x["depth"] for x in pairs}))
    if status == "same":
        return (
            f"Like for like: at each depth ({depths}) and seed the plain net and its residual twin "
            "share the seed, the training recipe (run configs equal apart from the model) and the "
            "initial weights (equal digests of every shared tensor); no option is set on one arm only."
        )
    parts = []
    if residual_args:
        parts.append(f"the residual arm is its own arm, {_arm('residual', residual_args)}")
    for key, what in (
        ("same_seed", "seeds"),
        ("same_recipe", "training recipes"),
        ("same_init", "initial weights"),
    ):
        bad = sorted({x["depth"] for x in pairs if x[key] is False})
        if bad:
            parts.append(f"the {what} differ at depth {join_values(bad)}")
    unknown = sorted({x["depth"] for x in pairs if x["same_init"] is None})
    if unknown:
        parts.append(f"the initial weights were not recorded (depth {join_values(unknown)})")
    lead = "Not like for like" if status == "differs" else "Like for like not fully checked"
    return f"{lead}: {'; '.join(parts)}."


def _arm(arch: str, residual_args: dict) -> str:
    """The arm's label: 'residual (zero_init_residual=True)' when options are set on it alone."""
    if arch != "residual" or not residual_args:
        return arch
    return f"{arch} ({', '.join(f'{k}={v}' for k, v in sorted(residual_args.items()))})"


def train_errors(study_dir: str | Path, entries: list[dict]) -> dict[str, float | None]:
    """'<arch>-<depth>-s<seed>' (the run's cell name) -> the final training error of each net and seed
    (whole training set, the engine's last evaluation, from its run folder); None where training did
    not complete."""
    out = {}
    for e in entries:
        done = e["train_status"] == "completed" and e.get("run_dir")
        summary = (runs.read_summary(Path(study_dir) / e["run_dir"]) if done else None) or {}
        out[runs.cell_name(e["arch"], e["depth"], seed=_seed(e))] = summary.get("final_train_error")
    return out


def write_summary(study_dir: str | Path) -> dict:
    """Collect the measurements, judge them (verdict, claims, like for like) and write
    `<study_dir>/summary.json`."""
    study_dir = Path(study_dir)
    measured = collect(study_dir)
    study = records.read_study(study_dir, "gradients")
    entries = nets(measured)
    summary = summary_head("gradients", study, ("nets", "seed_nets"))
    summary.update(nets=combine(entries), seed_nets=entries)
    like = like_for_like(study_dir, measured, study)
    diverged = [
        runs.diverged_note(study_dir / e["run_dir"])
        for e in entries
        if e["train_status"] == "diverged"
    ]
    summary["verdict"] = verdict(entries, like=like, diverged=diverged).to_json()
    summary["claims"] = claims(entries, train_errors(study_dir, entries))
    summary["like_for_like"] = like
    return runs.write_study_summary(study_dir, finite_tree(summary))


# ---------------------------------------------------------------------------------------------- text + html


def _fmt(x: float | None, spec: str = ".3g") -> str:
    return "—" if x is None or not math.isfinite(x) else format(x, spec)


def _seed_entries(summary: dict, e: dict) -> list[dict]:
    """The per-seed entries of one (arch, depth) entry (a summary without them: the entry itself)."""
    es = [
        x
        for x in summary.get("seed_nets") or []
        if (x["arch"], x["depth"]) == (e["arch"], e["depth"])
    ]
    return es or [e]


def _ratio_cell(es: list[dict], phase: str) -> tuple[str, str]:
    """(ratio over seeds with the seeds' range, profile of every seed or 'mixed') of one phase."""
    ratios = [(x[phase] or {}).get("weight_ratio") for x in es if x[phase]]
    if not ratios:
        return "—", "—"
    calls = {profile(r) for r in ratios}
    ratio = geomean(ratios)
    spread = sorted(r for r in ratios if r is not None and not math.isnan(r))
    text = _fmt(ratio) + (f" [{_fmt(spread[0])}, {_fmt(spread[-1])}]" if len(spread) > 1 else "")
    return text, (calls.pop() or "—") if len(calls) == 1 else "mixed"


def _rows(summary: dict) -> list[list[str]]:
    rows = []
    errors = summary.get("claims", {}).get("train_errors", {})
    for e in summary["nets"]:
        i, t = e["init"], e["trained"] or {}
        es = _seed_entries(summary, e)
        error = mean_std([_error(errors, x) for x in es])
        statuses = [x["train_status"] for x in es]
        rows.append(
            [
                _arm(e["arch"], summary.get("residual_args") or {}),
                str(e["depth"]),
                fmt_count(e["params"]),
                str(len(es)),
                "—" if error[0] is None else fmt_mean_std(*error),
                *_ratio_cell(es, "init"),
                *_ratio_cell(es, "trained"),
                _fmt(i["block_input_ratio"]),
                f"{i['acf1']:.3f} ± {i['acf1_std']:.3f}",
                _fmt(t.get("acf1"), ".3f"),
                f"{i['neighbour_corr']:.3f}",
                _fmt(t.get("loss"), ".3f"),
                ", ".join(f"{k} x{statuses.count(k)}" if len(es) > 1 else k
                          for k in dict.fromkeys(statuses)),
            ]
        )  # fmt: skip
    return rows


HEADER = [
    "arch",
    "depth",
    "params",
    "seeds",
    "train error",
    "|g| first/last W, init",
    "profile",
    "trained",
    "profile",
    "|g| first/last block input, init",
    "acf(1) init ± std",
    "acf(1) trained",
    "neighbour corr init",
    "loss trained",
    "training",
]


def format_table(summary: dict) -> str:
    """The per-net numbers and the verdict as plain text for the terminal."""
    lines = [text_table(HEADER, _rows(summary))]
    v, c = summary["verdict"], summary.get("claims")
    lines.append(f"verdict ({v['status']}): {v['text']}")
    if c:  # absent from summaries written before the claims were judged
        lines.append(f"claims ({c['status']}): {c['text']}")
    return "\n".join(lines)


def build_report(study_dir: str | Path) -> Path:
    """summary.json, the four figures and report.html, from the study folder alone."""
    study_dir = Path(study_dir)
    summary = write_summary(study_dir)
    records = collect(study_dir)
    figs = {
        "norms": plot_norms(
            records, "weight_norms", "weight layer (forward order)", study_dir / "norms.png"
        ),
        "activations": plot_norms(
            records, "block_input_norms", "block", study_dir / "activations.png"
        ),
        "shattering": plot_shattering(records, nets(records), study_dir / "shattering.png"),
        "lines": plot_lines(records, study_dir / "lines.png"),
    }
    v = summary["verdict"]
    title = "Gradients: plain vs residual networks"
    source = "gradient norms per layer and shattered gradients (Balduzzi et al. 2017, Figs. 1-2)"
    page = verdict_page(study_dir, summary, title, source, LABELS, [v.get("rule", "")])
    c = summary["claims"]
    label, tone = _CLAIM_LABELS[c["status"]]
    page.heading("Vanishing gradients and degradation: two claims").verdict(
        label, c["text"], tone, [c["rule"]]
    )
    page.bullets(
        [
            f"{HE_2015['source']}: “{HE_2015['quote']}”",
            f"{NOTE['source']}: “{NOTE['original']}” (“{NOTE['translation']}”)",
            summary["like_for_like"]["text"],
        ]
    )
    page.heading("Gradient norm per layer").figure(
        figs["norms"],
        "||dL/dW|| of every weight layer on the main path against its index (log scale), "
        "one line per depth and seed; left plain, right residual; top at init, bottom after "
        "training. A flat line is a gradient that neither vanishes nor explodes on its way to the "
        "input.",
    )
    page.figure(
        figs["activations"],
        "||dL/da|| of the input a of every block against the block index (log scale).",
    )
    page.heading("Shattered gradients").figure(
        figs["shattering"],
        "Left: acf(1), the correlation between the gradients of neighbouring inputs "
        "on a line, against depth (bars: std over the lines of every seed). Middle and right: the "
        "autocorrelation against lag at init, one line per depth and seed. In the paper (Fig. 2) feedforward nets fall to white noise (acf ≈ 0) "
        "with depth, resnets keep their correlation.",
    )
    page.figure(
        figs["lines"],
        "The gradient along one line at init (the first seed), one trace per depth (Fig. 1 "
        "style): smooth (brown-noise-like) for a structured gradient, jagged (white-noise-like) "
        "for a shattered one.",
    )
    page.heading("Numbers").table(
        HEADER,
        _rows(summary),
        caption="Over seeds: train error is the mean ± std of the engine's final evaluation on the "
        "whole training set; first/last is the ratio of the first to the last layer's gradient norm, "
        "its geometric mean over seeds [lowest, highest seed], and its profile by the claims rule "
        "when every seed has it (else mixed); acf(1) ± std over the lines of every seed.",
    )
    skip = ("study", "nets", "seed_nets")
    return finish(page, study_dir, _what_was_measured(summary), summary, skip)


def _what_was_measured(summary: dict) -> str:
    return (
        f"Plain nets and their residual twins ({summary.get('family')} family, depths "
        f"{join_values(summary.get('depths', []))}, seeds "
        f"{join_values(summary.get('seeds', [summary.get('seed', 0)]))}) with the same initial "
        f"weights, on {summary.get('data')}, each seed on its own batches and lines: at initialisation and after {summary.get('iters')} SGD steps of the "
        "training engine. Gradient norms: the mean cross-entropy of "
        f"{summary.get('batches')} real training batches, in train mode. Shattering: the gradient of "
        f"the logit of the start image's class along {summary.get('lines')} lines between two test "
        f"images ({summary.get('points')} points each), in eval mode with batch-norm statistics "
        "re-estimated on the same batches."
    )
