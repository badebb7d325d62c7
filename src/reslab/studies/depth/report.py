"""Report for the depth study, from the study folder alone (study.json, the run folders and the
replayed first steps): summary.json (a row per run and the verdict, `rule.verdict`), depth.png,
curves.png and report.html. What each number of a row is, is the runs table's caption (`NUMBERS`).
"""

from __future__ import annotations

from pathlib import Path

from reslab.report.html import fmt_count, fmt_num, fmt_pct
from reslab.studies import records
from reslab.studies.depth import ARMS, arm_order, first_step_path, label, plots, split_arm
from reslab.studies.depth.rule import learned, verdict
from reslab.studies.pages import finish, summary_head, text_table, verdict_page
from reslab.studies.stats import finite_or_none, mean_std
from reslab.training import runs as rf

END_WINDOW = 10  # logged steps averaged into the end-of-training mini-batch loss
LABELS = {
    "shown": ("extreme depth: shown", "good"),
    "shown_with_clipping": ("shown, with gradient clipping", "warn"),
    "partly_shown": ("partly shown", "warn"),
    "not_attributable": ("not attributable to the method", "bad"),
    "not_shown": ("not shown", "bad"),
    "insufficient": ("insufficient runs", "neutral"),
}
NUMBERS = (
    "Means over seeds. first |g|: global gradient norm of the first step before clipping "
    "(overflow: entries not finite in fp32); start loss: first mini-batch before any update; "
    "final loss: eval mode, whole training set; end batch loss: mean mini-batch loss of the "
    f"last {END_WINDOW} logged steps (train mode, so batch-norm nets use batch statistics); — "
    "marks a missing or non-finite value (diverged run)."
)


def _train_lines(run_dir: Path) -> list[dict]:
    return [
        ln for ln in rf.train_lines(run_dir) if finite_or_none(ln.get("train_loss")) is not None
    ]


def _run_entry(run_dir: Path, cell: dict, s: dict) -> dict:
    """One run's row, from its own files (summary, config, metrics) and its replayed first step."""
    config, train = rf.read_config(run_dir), _train_lines(run_dir)
    path = first_step_path(run_dir.parents[1], run_dir.name)
    step = rf.read_json(path) if path.is_file() else {}
    diverged, end = s.get("status") == "diverged", train[-END_WINDOW:]
    first, last = (train[0], train[-1]) if train else ({}, {})
    zero = (config.get("model_kwargs") or {}).get("zero_init_residual") is True
    return {  # a zero-initialised "residual" run of an older folder is the zeroinit arm
        "arm": cell["arm"].replace("residual", "zeroinit") if zero else cell["arm"],
        "depth": cell["depth"],
        "seed": cell["seed"],
        "model": s.get("model") or config.get("model"),
        "params": s.get("params"),
        "grad_clip": config.get("grad_clip"),
        "lr_scales": config.get("lr_scales") or {},
        "status": s.get("status", "completed"),
        "iters": s.get("steps"),
        "start_loss": first.get("train_loss"),
        "start_steps": first.get("step"),
        "final_train_loss": finite_or_none(s.get("final_train_loss")),
        "final_train_error": finite_or_none(s.get("final_train_error")),
        "final_test_error": finite_or_none(s.get("final_test_error")),
        "end_batch_loss": None if diverged else mean_std([ln["train_loss"] for ln in end])[0],
        "diverged_at": s.get("diverged_at_step", s.get("steps")) if diverged else None,
        "last_finite_loss": last.get("train_loss") if diverged else None,
        "last_finite_step": last.get("step") if diverged else None,
        "time_s": finite_or_none(s.get("time_s")) or last.get("time"),
        "first_loss": finite_or_none(step.get("loss")),
        "first_grad_norm": finite_or_none(step.get("grad_norm")),
        "first_grad_nonfinite": step.get("grad_nonfinite"),
        "first_grad_entries": step.get("grad_entries"),
        "classes": step.get("classes"),
    }


def write_summary(study_dir: str | Path) -> dict:
    """Collect the runs (one row each), judge them and write `<study_dir>/summary.json`."""
    study_dir = Path(study_dir)
    study = records.read_study(study_dir, "depth")
    runs, incomplete = records.collect(
        study_dir,
        ("arm", "depth"),
        _run_entry,
        lambda r: (arm_order(r["arm"]), r["depth"], r["seed"]),
        keep=lambda cell: split_arm(cell["arm"])[0] in ARMS,
    )
    summary = summary_head("depth", study, ("runs",), data=None, family=None)
    summary.update(runs=runs, incomplete=incomplete, verdict=verdict(runs).to_json())
    return rf.write_study_summary(study_dir, summary)


def _status(r: dict) -> str:
    if r["status"] == "diverged":
        text, last = f"diverged at step {r['diverged_at']}", r["last_finite_loss"]
        if last is not None:
            text += f" (last finite loss {fmt_num(last)}, step {r['last_finite_step']})"
        return text
    if r["final_train_loss"] is None:
        return "final loss not finite"
    return "learned" if learned(r) else "did not learn"


def _table(summary: dict) -> tuple[list[str], list[list]]:
    """The runs table: a row per (arm, depth) group, each seed's status in its last cell."""
    rows = []
    for g in summary["verdict"]["groups"]:
        rs = [r for r in summary["runs"] if (r["arm"], r["depth"]) == (g["arm"], g["depth"])]
        status = [_status(r) if len(rs) == 1 else f"seed {r['seed']}: {_status(r)}" for r in rs]
        row = {
            "arm": g["arm"],
            "depth": g["depth"],
            "params": fmt_count(g["params"]),
            "clip": f"{g['grad_clip']:g}" if g["grad_clip"] else "—",
            "seeds": len(g["seeds"]),
            "first |g|": "overflow" if g["first_grad_overflow"] else fmt_num(g["first_grad_norm"]),
            "start loss": fmt_num(g["start_loss"]),
            "final loss": fmt_num(g["final_train_loss"]),
            "end batch loss": fmt_num(g["end_batch_loss"]),
            "train error": fmt_pct(g["final_train_error"]),
            "test error": fmt_pct(g["final_test_error"]),
            "train time": "—" if g["time_s"] is None else f"{g['time_s']:.0f} s",
            "status": status,
        }
        rows.append(row)
    return (list(rows[0]) if rows else ["arm"]), [list(r.values()) for r in rows]


def _write_html(study_dir: Path, summary: dict) -> Path:
    v, runs = summary["verdict"], summary["runs"]
    source = "norm-free residual nets (ReZero, SkipInit, Fixup) against the same net without the "
    source += "method, plain and batch-norm nets"
    page = verdict_page(
        study_dir, summary, "Extreme depth without normalisation", source, LABELS, [v["rule"]]
    )
    arms = {g["arm"]: label(g["arm"], g["grad_clip"], g["lr_scales"]) for g in v["groups"]}
    page.heading("Arms").bullets([f"{a}: {text}" for a, text in arms.items()])
    page.heading("Loss, error and first gradient against depth")
    page.figure(study_dir / "depth.png", plots.DEPTH_CAPTION)
    if v["diverged_notes"]:
        page.heading(f"Why runs diverged at {v['deep']} layers").bullets(v["diverged_notes"])
    page.heading("Training curves of the deepest nets")
    page.figure(study_dir / "curves.png", plots.CURVES_CAPTION, max_width=820)
    page.heading("Runs").table(*_table(summary), NUMBERS)
    iters = max((r["iters"] or 0 for r in runs), default=0) or summary.get("iters")
    what = (
        f"{len(runs)} finished or diverged training runs "
        f"({', '.join(dict.fromkeys(r['arm'] for r in runs)) or 'no arms'}) of depth "
        f"{', '.join(map(str, sorted({r['depth'] for r in runs})))} on {summary.get('data')}, "
        f"{iters} iterations each with one recipe (listed below; a +clip arm adds gradient "
        "clipping to it). Depth counts weight layers. The first step of every run is replayed "
        "(same seed, model and first mini-batch) to measure its gradient."
    )
    steps = sorted({r["start_steps"] for r in runs if r["start_steps"] not in (None, 1)})
    if steps:  # the starting loss is not the first mini-batch's alone
        what += (
            f" The training loss was logged every {', '.join(map(str, steps))} steps, so the "
            "starting loss is the mean over the first of them, not the loss before any update."
        )
    keep = ("data", "family", "arms", "depths", "seeds", "iters", "width", "clip", "model_args")
    settings = {k: summary[k] for k in keep if k in summary}
    settings |= {f"arm {a}": m for a, m in summary.get("arm_models", {}).items()}
    settings |= {k: summary.get(k) for k in ("recipe", "incomplete")}
    rule = f"Declared before the numbers ({__package__}.rule): {v['rule']}."
    return finish(page, study_dir, what, settings, rule=rule)


def format_table(summary: dict) -> str:
    """The page's runs table as plain text, each seed's status on its row, and the verdict."""
    header, rows = _table(summary)
    table = text_table(header[:-1], [[str(c) for c in row[:-1]] for row in rows]).splitlines()
    status = [header[-1], *("; ".join(row[-1]) for row in rows)]
    lines = [f"{a}  {b}" for a, b in zip(table, status, strict=True)]
    v = summary["verdict"]
    return "\n".join([*lines, "", f"verdict: {v['status']}", v["text"], *v["diverged_notes"]])


def build_report(study_dir: str | Path) -> Path:
    """Write summary.json, depth.png, curves.png and report.html into `study_dir`."""
    study_dir = Path(study_dir)
    summary = write_summary(study_dir)
    v = summary["verdict"]
    deep = [r for r in summary["runs"] if r["depth"] == v["deep"]]
    lines = {r["run_dir"]: _train_lines(study_dir / r["run_dir"]) for r in deep}
    plots.plot_depth(v["groups"], study_dir / "depth.png")
    plots.plot_curves(deep, lines, study_dir / "curves.png")
    return _write_html(study_dir, summary)
