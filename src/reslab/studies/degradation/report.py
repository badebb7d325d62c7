"""The degradation study's report, from a study folder alone (no retraining): its study.json and
the run folders `runs/<arm>-<depth>-s<seed>/` become summary.json (with the verdict of `rule.py`),
curves.png (He et al. 2015 Fig. 6 style), depth.png and report.html. Run folders of studies made
before the arms existed whose residual nets were zero-initialised count as `zeroinit`.
"""

from __future__ import annotations

from pathlib import Path

from reslab.report.html import fmt_count, fmt_mean_std, fmt_pct
from reslab.studies import records
from reslab.studies.degradation import ARMS, JUDGED
from reslab.studies.degradation.plots import plot_curves, plot_depth
from reslab.studies.degradation.rule import verdict
from reslab.studies.pages import finish, summary_head, text_table, verdict_page
from reslab.studies.stats import finite_or_none
from reslab.training import runs as rf

ARM_LABELS = {"zeroinit": "residual, zero-init branches (extra arm)"}  # the others: their names
LATE = 0.9  # the convergence gate's late point: the last training-set evaluation at <= 90% of a run
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
# What the analogue's result says next to the paper, by verdict: never "the same effect" unless the
# verdict found it.
_ANALOGUE = {
    "shown": "here it shows the effect the paper reports (Fig. 6), not the paper's numbers.",
    "residual_degrades_less": "here plain nets degrade and residual nets far less: the paper's "
    "direction (Fig. 6), though its residual nets did not rise at all.",
    "residual_degrades_too": "here the residual nets degrade too, which the paper's Fig. 6 does "
    "not show: this setting does not reproduce the cure.",
    "not_shown": "here the plain nets do not degrade, so it does not show the paper's effect.",
    "plain_degrades": "here the plain nets degrade; without residual twins it cannot show the "
    "cure.",
}
HEAD = ["arm", "depth", "model", "params", "seeds", "train error", "test error"]


def collect_runs(study_dir: str | Path) -> tuple[list[dict], list[str]]:
    """(one row per finished run, with its last training-set evaluation at or before LATE of the
    run; the folders not finished yet), from the run folders study.json lists under "runs" (names,
    or {"run_dir"/"name": ...}), else from all of runs/."""
    study_dir = Path(study_dir)
    listed = [
        str(r.get("run_dir") or r.get("name")) if isinstance(r, dict) else r
        for r in records.read_study(study_dir, "degradation").get("runs") or []
    ]
    dirs = [study_dir / n if (study_dir / n).is_dir() else study_dir / rf.RUNS / n for n in listed]

    def row(run_dir: Path, cell: dict, summary: dict) -> dict:
        if cell.get("arch") not in ARMS:
            raise ValueError(
                f"cannot tell arm/depth/seed of run folder {run_dir}: name it "
                f"<{'|'.join(ARMS)}>-<depth>-s<seed>"
            )
        config, steps = rf.read_config(run_dir), summary.get("steps")
        zero = (config.get("model_kwargs") or {}).get("zero_init_residual") is True
        evals = [ln for ln in rf.read_metrics(run_dir) if "train_eval_error" in ln]  # eval_train
        before = [ln for ln in evals if steps and ln["step"] <= LATE * steps]
        late = before[-1] if before else {}
        n_train = evals[-1].get("train_eval_n") if evals else None
        return {
            "arch": "zeroinit" if cell["arch"] == "residual" and zero else cell["arch"],
            "depth": cell["depth"],
            "seed": cell["seed"],
            "model": summary.get("model") or config.get("model"),
            "final_train_error": finite_or_none(summary.get("final_train_error")),
            "final_test_error": finite_or_none(summary.get("final_test_error")),
            "params": summary.get("params"),
            "iters": steps,
            "run_dir": run_dir.relative_to(study_dir).as_posix(),  # here in the row's keys
            "status": summary.get("status", "completed"),
            "late_step": late.get("step"),
            "late_train_error": finite_or_none(late.get("train_eval_error")),
            "n_train": n_train if isinstance(n_train, int) else None,
        }

    def order(r: dict) -> tuple:
        return ARMS.index(r["arch"]), r["depth"], r["seed"]

    return records.collect(study_dir, ("arch", "depth"), row, order, dirs=dirs or None)


def setting(summary: dict) -> str:
    """What the study's results may be compared with in the paper's Figure 6 and, for the analogue,
    what this verdict says next to the paper."""
    data, iters = summary.get("data"), _iters(summary) or 0
    if data == "digits" or summary.get("family") == "mlp":
        status = summary["verdict"]["status"]
        said = _ANALOGUE.get(status, "here it gives no verdict, so it says nothing either way.")
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
    """Collect the runs, judge them and write `<study_dir>/summary.json`; returns the summary."""
    study_dir = Path(study_dir)
    runs, incomplete = collect_runs(study_dir)
    study = records.read_study(study_dir, "degradation")
    summary = summary_head("degradation", study, ("runs",), data=None, family=None)
    if summary["data"] is None and runs:
        summary["data"] = (rf.read_summary(study_dir / runs[0]["run_dir"]) or {}).get("data")
    fit = summary.get("fit_gate") or None  # 0: no fit gate
    summary.update(runs=runs, incomplete=incomplete, verdict=verdict(runs, fit=fit).to_json())
    summary["setting"] = setting(summary)
    return rf.write_study_summary(study_dir, summary)


def _iters(summary: dict) -> int | None:
    """Iterations per run as measured (study.json may say 0 when the recipe counts epochs)."""
    measured = max((r["iters"] or 0 for r in summary["runs"]), default=0)
    return measured or summary.get("iters") or None


def _row(g: dict, page: bool = False) -> list:
    """A group's cells under HEAD; on the page, with the arm in words and each seed's errors."""
    errors = [fmt_mean_std(g[f"{k}_error_mean"], g[f"{k}_error_std"]) for k in ("train", "test")]
    failed = f" ({g['failed']} diverged)" if g["failed"] else ""
    arm = ARM_LABELS.get(g["arch"], g["arch"]) if page else g["arch"]
    cells = [arm, g["depth"], g["model"] or "—", fmt_count(g["params"]), g["n"]]
    row: list = [*map(str, cells), errors[0] + failed, errors[1]]
    return [*row, _per_seed(g, "train"), _per_seed(g, "test")] if page else row


def _per_seed(g: dict, key: str) -> list[str]:
    lost = "diverged" if key == "train" else fmt_pct(None)
    pairs = zip(g["seeds"], g[f"{key}_errors"], strict=True)
    return [f"seed {s}: {lost if e is None else fmt_pct(e)}" for s, e in pairs]


def format_table(summary: dict) -> str:
    """The summary as a plain-text table plus the verdict, for the terminal."""
    v = summary["verdict"]
    table = text_table(HEAD, [_row(g) for g in v["groups"]])
    setting_ = summary.get("setting") or setting(summary)
    return "\n".join([table, "", f"verdict: {v['status']}", v["text"], setting_])


def build_report(study_dir: str | Path) -> Path:
    """Write summary.json, curves.png, depth.png and report.html into `study_dir`; returns the
    report's path."""
    study_dir = Path(study_dir)
    summary = write_summary(study_dir)
    v, runs = summary["verdict"], summary["runs"]
    arms = [a for a in ARMS if any(r["arch"] == a for r in runs)] or list(summary.get("archs", []))
    curves = plot_curves(study_dir, runs, study_dir / "curves.png", arms or list(JUDGED))
    depth = plot_depth(v["groups"], study_dir / "depth.png", arms or list(JUDGED))

    sentence, *facts = v["text"].splitlines()  # the verdict's sentence, then its facts as notes
    shown = summary | {"verdict": v | {"text": sentence}}
    title, source = "Degradation: plain vs residual networks", "He et al. 2015, Figures 1 and 6"
    page = verdict_page(study_dir, shown, title, source, LABELS, facts)
    page.paragraph(summary["setting"])
    page.heading("Training curves").figure(
        curves,
        "Training error (thin dashed) and test error (bold) against iterations, mean over seeds "
        "(faint lines: test error of each seed). One panel per arm; one colour per depth in "
        "every panel. In the paper (Fig. 6, at convergence), deeper plain nets sit higher, deeper "
        "residual nets lower.",
    )
    page.heading("Final error against depth").figure(
        depth,
        max_width=760,
        caption="Final training error (solid, mean ± seed std, dots = single seeds; a diverged run "
        "is drawn at 100%) and test error (dashed) against depth. Degradation is the plain curve "
        "rising with depth while the residual curve does not.",
    )
    page.heading("Runs").table(
        [*HEAD, "train, per seed", "test, per seed"],
        [_row(g, page=True) for g in v["groups"]],
        "Errors as mean ± sample std over seeds. A run that diverged counts as 100% training error "
        "in the mean; — marks a missing or non-finite value.",
    )
    what = (
        f"{len(runs)} finished training runs of the arms {', '.join(arms) or '—'}, "
        f"{_iters(summary)} iterations each. A plain net is its residual twin with the shortcuts "
        "removed: same layers, same parameters, the same (He) initialisation, recipe and seeds. "
        "Training error is measured after training on the whole training set in eval mode, without "
        "augmentation; test error on the test set."
    )
    if "zeroinit" in arms:
        what += (
            " The zero-init arm is the residual net with the last BN weight of each branch at "
            "zero (Goyal et al. 2017), so each block starts as the identity; a plain net cannot "
            "start so (it would output zeros), so this arm is shown but not judged."
        )
    rule = (
        f"Declared before the numbers ({__package__}.rule): {v['rule']}. The zero-init arm is "
        "described by the same numbers but never decides the verdict."
    )
    settings = summary | {"iters": _iters(summary)}
    return finish(page, study_dir, what, settings, ("runs", "setting"), rule)
