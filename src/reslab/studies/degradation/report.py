"""Report for the degradation study (He et al. 2015, "Deep Residual Learning for Image Recognition",
§4.1-4.2, Figures 1, 4 and 6): deeper plain nets reach a *higher training error*; residual twins do not.

Works from a study folder alone (no retraining): `study.json` plus the train run folders
`runs/<arm>-<depth>-s<seed>/` (config.json, metrics.jsonl, summary.json) that `reslab.studies.degradation`
writes. `build_report(study_dir)` writes, beside study.json: summary.json, curves.png (Fig. 6 style),
depth.png (final training error against depth) and report.html.

The arms are in the package's docstring (`reslab.studies.degradation`). Run folders of studies made
before the arms existed whose residual nets were zero-initialised count as `zeroinit`.

The verdict rule, its thresholds and its history are in `rule.py`.
"""

from __future__ import annotations

import re
from pathlib import Path

from reslab.report.html import fmt_count, fmt_mean_std, fmt_pct, join_values
from reslab.studies import records
from reslab.studies.degradation import ARMS, JUDGED
from reslab.studies.degradation.plots import plot_curves, plot_depth
from reslab.studies.degradation.rule import verdict
from reslab.studies.pages import finish, summary_head, verdict_page
from reslab.studies.stats import finite_or_none
from reslab.training import runs as rf

ARM_LABELS = {
    "plain": "plain",
    "residual": "residual",
    "zeroinit": "residual, zero-init branches (extra arm)",
}
LATE = 0.9  # ... measured from the last training-set evaluation at or before 90% of the run
PAPER_ITERS = 64000  # He et al. 2015 §4.2: CIFAR-10 nets trained for 64k iterations (Fig. 6)
LABELS = {
    "shown": ("degradation shown", "good"),
    "residual_degrades_less": ("residual degrades far less than plain", "good"),
    "residual_degrades_too": ("residual degrades too", "warn"),
    "not_shown": ("degradation not shown", "warn"),
    "not_fit": ("no verdict: the shallow nets do not fit", "warn"),
    "not_converged": ("no verdict: not converged", "warn"),
    "plain_degrades": ("plain degrades (no residual comparison)", "neutral"),
    "insufficient": ("insufficient runs", "neutral"),
}


# ---------------------------------------------------------------------------------------------- reading


def _run_dirs(study_dir: Path, study: dict) -> list[Path]:
    """Run folders listed in study.json ("runs": names or {"run_dir"/"name": ...}), else all of runs/."""
    listed = study.get("runs")
    if isinstance(listed, list) and listed:
        names = [
            str(r.get("run_dir") or r.get("name")) if isinstance(r, dict) else r for r in listed
        ]
        return [
            study_dir / n if (study_dir / n).is_dir() else study_dir / rf.RUNS / n for n in names
        ]
    return rf.run_dirs(study_dir)


def _identify(run_dir: Path, config: dict, summary: dict) -> tuple[str, int, int]:
    """(arm, depth, seed) from the cell name `<arm>-<depth>-s<seed>`, else from the run's config. A
    residual net whose branches were zero-initialised (older studies did that to the residual arm) is
    the zeroinit arm, whatever its folder is called."""
    cell = rf.parse_cell(run_dir.name, ("arch", "depth"))
    if cell and cell["arch"] in ARMS:
        arm, depth, seed = cell["arch"], cell["depth"], cell["seed"]
    else:
        model = str(summary.get("model") or config.get("model") or "")
        digits = re.search(r"(\d+)$", model)
        arm = config.get("arch") or (_arch_of(model) if model else None)
        depth = config.get("depth") or (int(digits[1]) if digits else None)
        seed = config.get("seed")
        if arm not in ARMS or depth is None or seed is None:
            raise ValueError(
                f"cannot tell arm/depth/seed of run folder {run_dir}: name it "
                f"<{'|'.join(ARMS)}>-<depth>-s<seed>"
            )
    kwargs = config.get("model_kwargs")
    if arm == "residual" and isinstance(kwargs, dict) and kwargs.get("zero_init_residual") is True:
        arm = "zeroinit"
    return arm, int(depth), int(seed)


def _arch_of(model: str) -> str | None:
    from reslab.models import is_residual  # only for run folders not named as cells

    try:
        return "residual" if is_residual(model) else "plain"
    except ValueError:  # not a registered model name
        return None


def collect_runs(study_dir: str | Path) -> tuple[list[dict], list[str]]:
    """(one entry per finished run: arch -- the arm --, depth, seed, model, final_train_error,
    final_test_error, params, iters, run_dir, status and the late training error; the run folders
    without a summary.json yet), both relative to study_dir."""
    study_dir = Path(study_dir)
    runs, incomplete = [], []
    for run_dir in _run_dirs(study_dir, records.read_study(study_dir, "degradation")):
        rel = run_dir.relative_to(study_dir).as_posix()
        summary = rf.read_summary(run_dir)
        if summary is None:
            incomplete.append(rel)
            continue
        config = rf.read_config(run_dir)
        arm, depth, seed = _identify(run_dir, config, summary)
        late = _late(rf.read_metrics(run_dir), summary.get("steps"))
        runs.append(
            {
                "arch": arm,
                "depth": depth,
                "seed": seed,
                "model": summary.get("model") or config.get("model"),
                "final_train_error": finite_or_none(summary.get("final_train_error")),
                "final_test_error": finite_or_none(summary.get("final_test_error")),
                "params": summary.get("params"),
                "iters": summary.get("steps"),
                "run_dir": rel,
                "status": summary.get("status", "completed"),
                **late,
            }
        )
    runs.sort(key=lambda r: (ARMS.index(r["arch"]), r["depth"], r["seed"]))
    return runs, incomplete


def _late(lines: list[dict], steps: int | None) -> dict:
    """The training-set evaluation (`train_eval_error`, written with the engine's `eval_train`) at
    the last evaluation at or before LATE of the run's `steps`: {"late_step", "late_train_error",
    "n_train"}, each None when the run has none (older runs, runs without eval_train)."""
    evals = [ln for ln in lines if ln.get("kind") == "eval" and "train_eval_error" in ln]
    early = [ln for ln in evals if steps and ln["step"] <= LATE * steps]
    pick = early[-1] if early else None
    n = evals[-1].get("train_eval_n") if evals else None
    return {
        "late_step": pick and pick["step"],
        "late_train_error": pick and finite_or_none(pick["train_eval_error"]),
        "n_train": n if isinstance(n, int) else None,
    }


# ---------------------------------------------------------------------------------------------- summary


# What the analogue's result says next to the paper, by verdict: never "the same effect" unless the
# verdict found it.
_ANALOGUE = {
    "shown": "here it shows the effect the paper reports (Fig. 6), not the paper's numbers.",
    "residual_degrades_less": "here plain nets degrade and residual nets far less: the paper's "
    "direction (Fig. 6), though its residual nets did not rise at all.",
    "residual_degrades_too": "here the residual nets degrade too, which the paper's Fig. 6 does "
    "not show: this setting does not reproduce the cure.",
    "not_shown": "here the plain nets do not degrade, so it does not show the paper's effect.",
    "plain_degrades": "here the plain nets degrade; without residual twins it cannot show the cure.",
}


def setting(summary: dict) -> str:
    """How the study's setting relates to the paper's Figure 6: what its results may be compared with,
    and (for the analogue) what this verdict says next to the paper."""
    data, iters = summary.get("data"), _iters(summary) or 0
    if data == "digits" or summary.get("family") == "mlp":
        status = (summary.get("verdict") or {}).get("status")
        said = _ANALOGUE.get(
            str(status), "here it gives no verdict, so it says nothing either way."
        )
        return (
            "A small analogue of the paper's experiment: fully connected nets on the 8x8 digits, "
            f"not the paper's CIFAR-10 conv nets; {said}"
        )
    if data == "cifar10" and iters < PAPER_ITERS:
        return (
            f"Early training: {iters:,} iterations against the paper's {PAPER_ITERS:,} (§4.2). "
            "This shows how the nets start to train, not the converged curves of Figure 6."
        )
    if data == "cifar10":
        return f"The paper's setting and budget ({iters:,} iterations): comparable with Figure 6."
    return f"{data}: a dataset the paper did not use; compare the arms with each other only."


def write_summary(study_dir: str | Path) -> dict:
    """Collect the runs, judge them and write `<study_dir>/summary.json`; returns the summary dict."""
    study_dir = Path(study_dir)
    study = records.read_study(study_dir, "degradation")
    runs, incomplete = collect_runs(study_dir)
    summary = summary_head("degradation", study, ("runs",), data=None, family=None)
    if summary["data"] is None and runs:
        summary["data"] = (rf.read_summary(study_dir / runs[0]["run_dir"]) or {}).get("data")
    fit = summary.get("fit_gate") or None  # 0: no fit gate
    summary.update(runs=runs, incomplete=incomplete, verdict=verdict(runs, fit=fit).to_json())
    summary["setting"] = setting(summary)
    return rf.write_study_summary(study_dir, summary)


# ---------------------------------------------------------------------------------------------- text + html


def _comparison_note(arm: str, c: dict | None, floor: float) -> str:
    label = ARM_LABELS[arm]
    if c is None:
        return f"{label}: fewer than two depths finished, no comparison"
    word = "degrades" if c["degrades"] else "does not degrade"
    failed = f", failed at {join_values(c['failed_depths'])} layers" if c["failed_depths"] else ""
    return (
        f"{label}: {c['shallow_depth']} → {c['deep_depth']} layers, {fmt_pct(c['shallow_mean'])} → "
        f"{fmt_pct(c['deep_mean'])} ({100 * c['margin']:+.2f} pp, median "
        f"{100 * c.get('median_margin', c['margin']):+.2f} pp); tolerance {100 * c['tolerance']:.2f} pp "
        f"= max(2 × seed std at {c['shallow_depth']} layers {100 * c['noise_std']:.2f} pp, "
        f"floor {100 * floor:.2f} pp)"
        f"{failed}: {word}"
    )


def _images(fraction: float, n: int | None) -> str:
    """A threshold in percentage points and, where the training set's size is known, in images."""
    return f"{100 * fraction:.2f} pp" + (f" ({fraction * n:.0f} of {n:,} images)" if n else "")


def _gate_notes(v: dict) -> list[str]:
    g, n = v.get("gates") or {}, v.get("n_train")
    notes = []
    if g.get("fit") is not None:
        bad = ", ".join(f"{u['arch']}-{u['depth']} {fmt_pct(u['mean'])}" for u in g["unfit"])
        notes.append(
            f"fit gate: the shallowest nets of both arms at most {_images(g['fit'], n)}: "
            + (f"failed ({bad})" if bad else "passed")
        )
    if g:
        bad = ", ".join(
            f"{m['arch']}-{m['depth']} fell {100 * m['fall']:.2f} pp" for m in g["moving"]
        )
        unknown = f"; not measured for {', '.join(g['unchecked'])}" if g["unchecked"] else ""
        notes.append(
            f"convergence gate: training error falls at most {_images(g['move'], n)} over the last "
            f"tenth of the run: " + (f"failed ({bad})" if bad else "passed") + unknown
        )
    return notes


def _notes(v: dict) -> list[str]:
    floor = v["thresholds"]["floor"]
    notes = _gate_notes(v) + [_comparison_note(a, v[a], floor) for a in JUDGED]
    d = v["deepest"]
    if d:
        word = "clearly below" if d["residual_better"] else "not clearly below"
        notes.append(
            f"at {d['depth']} layers: residual {fmt_pct(d['residual_mean'])} vs plain "
            f"{fmt_pct(d['plain_mean'])} ({100 * d['difference']:+.2f} pp, tolerance "
            f"{100 * d['tolerance']:.2f} pp): {word}"
        )
    notes += [f"not judged — {_comparison_note(a, c, floor)}" for a, c in v["extra"].items()]
    return notes


def _per_seed(group: dict, key: str) -> list[str]:
    def cell(e: float | None) -> str:
        return "diverged" if e is None and key == "train_errors" else fmt_pct(e)

    return [f"seed {s}: {cell(e)}" for s, e in zip(group["seeds"], group[key], strict=True)]


def _iters(summary: dict) -> int | None:
    """Iterations per run as measured (study.json may say 0 when the recipe counts epochs)."""
    return (
        max((r["iters"] or 0 for r in summary["runs"]), default=0) or summary.get("iters") or None
    )


def _arms(summary: dict) -> list[str]:
    runs = summary["runs"]
    return [a for a in ARMS if any(r["arch"] == a for r in runs)] or list(summary.get("archs", []))


def _what_was_run(summary: dict) -> str:
    runs, arms = summary["runs"], _arms(summary)
    depths = summary.get("depths") or sorted({r["depth"] for r in runs})
    seeds = summary.get("seeds") or sorted({r["seed"] for r in runs})
    recipe = " with the recipe listed below" if summary.get("recipe") else ""
    text = (
        f"{len(runs)} finished training runs: {', '.join(arms) or 'no'} networks "
        f"({summary.get('family') or 'family not recorded'}) of depth {join_values(depths)}, each from seed(s) "
        f"{join_values(seeds)}, trained for {_iters(summary)} iterations on {summary.get('data')}{recipe}. "
        "A plain net is its residual twin with the shortcuts removed: same layers, same parameters, "
        "the same (He) initialisation, recipe and seeds. Training error is measured after training on "
        "the whole training set in eval mode, without augmentation; test error on the test set."
    )
    if "zeroinit" in arms:
        text += (
            " The zero-init arm is the residual net with the last BN weight of each branch at zero "
            "(Goyal et al. 2017), so each block starts as the identity; a plain net cannot start so "
            "(it would output zeros), so this arm is shown but not judged."
        )
    return text


def _write_html(study_dir: Path, summary: dict, curves: Path, depth: Path) -> Path:
    v = summary["verdict"]
    title, source = "Degradation: plain vs residual networks", "He et al. 2015, Figures 1 and 6"
    page = verdict_page(study_dir, summary, title, source, LABELS, _notes(v))
    page.paragraph(summary["setting"])
    page.heading("Training curves").figure(
        curves,
        "Training error (thin dashed) and test error (bold) against iterations, mean over seeds "
        "(faint lines: test error of each seed). One panel per arm; one colour per depth in every "
        "panel. In the paper (Fig. 6, at convergence), deeper plain nets sit higher, deeper residual "
        "nets lower.",
    )
    page.heading("Final error against depth").figure(
        depth,
        max_width=760,
        caption="Final training error (solid, mean ± seed std, dots = single seeds; a diverged run is "
        "drawn at 100%) and test error (dashed) against depth. Degradation is the plain curve rising "
        "with depth while the residual curve does not.",
    )
    rows = [
        [
            ARM_LABELS[g["arch"]],
            g["depth"],
            g["model"] or "—",
            fmt_count(g["params"]),
            g["n"],
            fmt_mean_std(g["train_error_mean"], g["train_error_std"]),
            fmt_mean_std(g["test_error_mean"], g["test_error_std"]),
            _per_seed(g, "train_errors"),
            _per_seed(g, "test_errors"),
        ]
        for g in v["groups"]
    ]
    page.heading("Runs").table(
        ["arm", "depth", "model", "params", "seeds", "train error", "test error",
         "train, per seed", "test, per seed"],
        rows,
        "Errors as mean ± sample std over seeds. A run that diverged counts as 100% training error "
        "in the mean; — marks a missing or non-finite value.",
    )  # fmt: skip
    rule = (
        f"Declared before the numbers ({__package__}.rule): {v['rule']}. The zero-init arm is "
        "described by the same numbers but never decides the verdict."
    )
    settings = summary | {"iters": _iters(summary)}
    skip = ("runs", "setting")
    return finish(page, study_dir, _what_was_run(summary), settings, skip, rule)


def format_table(summary: dict) -> str:
    """The summary as a plain-text table plus verdict lines, for the terminal."""
    v = summary["verdict"]
    head = f"{'arm':<9}{'depth':>6}{'params':>9}{'seeds':>7}  {'train error':<17}{'test error':<17}"
    lines = [head.rstrip(), "-" * len(head.rstrip())]
    for g in v["groups"]:
        failed = f"  ({g['failed']} diverged)" if g["failed"] else ""
        lines.append(
            f"{g['arch']:<9}{g['depth']:>6}{fmt_count(g['params']):>9}{g['n']:>7}  "
            f"{fmt_mean_std(g['train_error_mean'], g['train_error_std']):<17}"
            f"{fmt_mean_std(g['test_error_mean'], g['test_error_std'])}{failed}"
        )
    lines += ["", f"verdict: {v['status']}"]
    lines += [f"  {n}" for n in _notes(v)]
    lines += [v["text"], summary.get("setting") or setting(summary)]
    return "\n".join(lines)


def build_report(study_dir: str | Path) -> Path:
    """Write summary.json, curves.png, depth.png and report.html into `study_dir`; returns the report path."""
    study_dir = Path(study_dir)
    summary = write_summary(study_dir)
    arms = _arms(summary) or list(JUDGED)
    curves = plot_curves(study_dir, summary["runs"], study_dir / "curves.png", arms)
    depth = plot_depth(summary["verdict"]["groups"], study_dir / "depth.png", arms)
    return _write_html(study_dir, summary, curves, depth)
