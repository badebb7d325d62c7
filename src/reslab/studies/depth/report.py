"""Report for the depth study (issues 6 and 13, "extreme depth without normalisation"): after one fixed
budget of iterations, do norm-free residual nets of 10,000 layers learn because of their method
(ReZero, SkipInit, Fixup), while the same residual net without the method, and the plain net, do not?

Works from the study folder alone (it imports nothing from the study): `study.json`, the run folders
`runs/<arm>-<depth>-s<seed>/` (config.json, metrics.jsonl, summary.json) and the replayed first steps
`first_step/<arm>-<depth>-s<seed>.json` that `reslab.studies.depth` writes. `build_report` writes,
beside study.json: summary.json, depth.png (final loss, final error and first-step gradient norm
against depth), curves.png (training loss of the deepest nets) and report.html.

The arms, and what each differs from its comparison in, are in the package's docstring
(`reslab.studies.depth`). A `residual` run of an older folder whose branches were zero-initialised
counts as `zeroinit`.

Numbers, per run:
    start  = the first logged training loss: with the study's log_every=1, the cross-entropy of the
             first mini-batch before any update (else the mean over the first log_every steps)
    final  = the engine's final training loss: eval mode, the whole training set, after the last step
    first step = the first step replayed by the study (same seed, model and mini-batch): its loss,
             the gradient's global L2 norm before any clipping (float64, so a norm beyond fp32's range
             is still a number), and how many gradient entries are not finite in fp32 (an overflow)

When a run learned, and the verdict, are in `rule.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from reslab.report.html import fmt_count, fmt_pct
from reslab.studies import records
from reslab.studies.depth import first_step_path, plots
from reslab.studies.depth.arms import (
    CLIP,
    arm_order,
    is_arm,
    label,
    split_arm,
)
from reslab.studies.depth.rule import _fmt_loss, _mean, learned, verdict
from reslab.studies.pages import finish, summary_head, verdict_page
from reslab.studies.stats import finite_or_none
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


# ---------------------------------------------------------------------------------------------- reading


def _train_lines(run_dir: Path) -> list[dict]:
    """The run's logged training steps with a finite loss (none when it has no metrics yet)."""
    lines = rf.read_metrics(run_dir) if (run_dir / rf.METRICS).is_file() else []
    return [
        ln
        for ln in lines
        if ln.get("kind") == "train" and finite_or_none(ln.get("train_loss")) is not None
    ]


def _first_step(study_dir: Path, run_name: str) -> dict:
    path = first_step_path(study_dir, run_name)
    s = rf.read_json(path) if path.is_file() else {}
    return {
        "first_loss": finite_or_none(s.get("loss")),
        "first_grad_norm": finite_or_none(s.get("grad_norm")),
        "first_grad_nonfinite": s.get("grad_nonfinite"),
        "first_grad_entries": s.get("grad_entries"),
        "classes": s.get("classes"),
    }


def _arm(name: str, config: dict) -> str:
    """The cell's arm; a batch-norm residual run with zero-initialised branches (older folders called
    it "residual") is the zeroinit arm, whatever its folder is called."""
    base, clipped = split_arm(name)
    kwargs = config.get("model_kwargs")
    if base == "residual" and isinstance(kwargs, dict) and kwargs.get("zero_init_residual") is True:
        return "zeroinit" + (CLIP if clipped else "")
    return name


def _run_entry(study_dir: Path, run_dir: Path, cell: dict) -> dict:
    """One run's numbers from its own files (summary, config, metrics) and its replayed first step."""
    s, config, train = (
        rf.read_summary(run_dir) or {},
        rf.read_config(run_dir),
        _train_lines(run_dir),
    )
    last = train[-END_WINDOW:]
    diverged = s.get("status") == "diverged"
    return {
        "arm": _arm(cell["arm"], config),
        "depth": cell["depth"],
        "seed": cell["seed"],
        "model": s.get("model") or config.get("model"),
        "params": s.get("params"),
        "grad_clip": config.get("grad_clip"),
        "lr_scales": config.get("lr_scales") or {},
        "status": s.get("status", "completed"),
        "iters": s.get("steps"),
        "start_loss": train[0]["train_loss"] if train else None,
        "start_steps": train[0]["step"] if train else None,
        "final_train_loss": finite_or_none(s.get("final_train_loss")),
        "final_train_error": finite_or_none(s.get("final_train_error")),
        "final_test_error": finite_or_none(s.get("final_test_error")),
        "end_batch_loss": _mean([ln["train_loss"] for ln in last]) if not diverged else None,
        "diverged_at": s.get("diverged_at_step", s.get("steps")) if diverged else None,
        "last_finite_loss": train[-1]["train_loss"] if diverged and train else None,
        "last_finite_step": train[-1]["step"] if diverged and train else None,
        "time_s": finite_or_none(s.get("time_s")) or (train[-1].get("time") if train else None),
        **_first_step(study_dir, run_dir.name),
        "run_dir": run_dir.relative_to(study_dir).as_posix(),
    }


def collect_runs(study_dir: str | Path) -> tuple[list[dict], list[str]]:
    """(one entry per run with a summary, run folders without one yet), relative to study_dir."""
    study_dir = Path(study_dir)
    records.read_study(study_dir, "depth")
    runs, incomplete = [], []
    for run_dir in rf.run_dirs(study_dir):
        cell = rf.parse_cell(run_dir.name, ("arm", "depth"))
        if not cell or not is_arm(cell["arm"]):
            continue
        if rf.read_summary(run_dir) is None:
            incomplete.append(run_dir.relative_to(study_dir).as_posix())
            continue
        runs.append(_run_entry(study_dir, run_dir, cell))
    runs.sort(key=lambda r: (arm_order(r["arm"]), r["depth"], r["seed"]))
    return runs, incomplete


# ---------------------------------------------------------------------------------------------- summary


def write_summary(study_dir: str | Path) -> dict:
    """Collect the runs, judge them and write `<study_dir>/summary.json`; returns the summary dict."""
    study_dir = Path(study_dir)
    study = records.read_study(study_dir, "depth")
    runs, incomplete = collect_runs(study_dir)
    summary = summary_head("depth", study, ("runs",), data=None, family=None)
    summary.update(runs=runs, incomplete=incomplete, verdict=verdict(runs).to_json())
    return rf.write_study_summary(study_dir, summary)


# ---------------------------------------------------------------------------------------------- figures


def _loss_curve(study_dir: Path, run: dict) -> tuple[np.ndarray, np.ndarray]:
    pts = [(ln["step"], ln["train_loss"]) for ln in _train_lines(study_dir / run["run_dir"])]
    if not pts:
        return np.empty(0), np.empty(0)
    x, y = (np.array(v, dtype=float) for v in zip(*pts, strict=True))
    return x, y


def _deepest(study_dir: Path, runs: list[dict]) -> tuple[int | None, list[tuple]]:
    """(deepest depth, [(arm, loss curve per seed, step it diverged at or None)]) for curves.png."""
    deep = max((r["depth"] for r in runs), default=None)
    series = []
    for arm in sorted({r["arm"] for r in runs}, key=arm_order):
        rs = [r for r in runs if r["arm"] == arm and r["depth"] == deep]
        if rs:
            diverged = any(r["status"] == "diverged" for r in rs)
            at = min(r["diverged_at"] or 0 for r in rs) if diverged else None
            series.append((arm, [_loss_curve(study_dir, r) for r in rs], at))
    return deep, series


# ---------------------------------------------------------------------------------------------- text + html


def _status(g: dict, runs: list[dict]) -> list[str]:
    """One line per seed: learned, did not learn, or where it diverged (seed named if several)."""
    rs = [r for r in runs if r["arm"] == g["arm"] and r["depth"] == g["depth"]]
    out = []
    for r in rs:
        if r["status"] == "diverged":
            text = f"diverged at step {r['diverged_at']}"
            if r["last_finite_loss"] is not None:
                text += f" (last finite loss {_fmt_loss(r['last_finite_loss'])}, step {r['last_finite_step']})"
        elif r["final_train_loss"] is None:
            text = "final loss not finite"
        else:
            text = "learned" if learned(r) else "did not learn"
        out.append(text if len(rs) == 1 else f"seed {r['seed']}: {text}")
    return out


def _first_grad(g: dict) -> str:
    """The first step's gradient norm, or 'overflow' when a seed's gradient was not finite in fp32."""
    if g["first_grad_overflow"]:
        return "overflow"
    return "—" if g["first_grad_norm"] is None else f"{g['first_grad_norm']:.3g}"


def _row(g: dict, runs: list[dict]) -> dict[str, Any]:
    """One (arm, depth) group as table cells, keyed by column name."""
    return {
        "arm": g["arm"],
        "depth": g["depth"],
        "params": fmt_count(g["params"]),
        "clip": f"{g['grad_clip']:g}" if g["grad_clip"] else "—",
        "seeds": len(g["seeds"]),
        "first |g|": _first_grad(g),
        "start loss": _fmt_loss(g["start_loss"]),
        "final loss": _fmt_loss(g["final_train_loss"]),
        "end batch loss": _fmt_loss(g["end_batch_loss"]),
        "train error": fmt_pct(g["final_train_error"]),
        "test error": fmt_pct(g["final_test_error"]),
        "train time": "—" if g["time_s"] is None else f"{g['time_s']:.0f} s",
        "status": _status(g, runs),
    }


def _arm_lines(groups: list[dict]) -> list[str]:
    """One line per arm present: its name and what it is."""
    arms = {g["arm"]: (g["grad_clip"], g.get("lr_scales")) for g in groups}
    return [f"{a}: {label(a, clip, scales)}" for a, (clip, scales) in arms.items()]


def _what_was_run(summary: dict) -> str:
    runs = summary["runs"]
    iters = max((r["iters"] or 0 for r in runs), default=0) or summary.get("iters")
    arms = ", ".join(dict.fromkeys(r["arm"] for r in runs)) or "no arms"
    return (
        f"{len(runs)} finished or diverged training runs ({arms}) of depth "
        f"{', '.join(map(str, sorted({r['depth'] for r in runs})))} on {summary.get('data')}, "
        f"{iters} iterations each with one recipe (listed below; a +clip arm adds gradient "
        "clipping to it). Depth counts weight layers. The first step of every run is replayed "
        "(same seed, model and first mini-batch) to measure its gradient." + _start_note(runs)
    )


def _start_note(runs: list[dict]) -> str:
    """Where the starting loss is not the first mini-batch's alone, say over how many steps it is."""
    steps = sorted({r["start_steps"] for r in runs if r["start_steps"] not in (None, 1)})
    if not steps:
        return ""
    return (
        f" The training loss was logged every {', '.join(map(str, steps))} steps, so the starting "
        "loss is the mean over the first of them, not the loss before any update."
    )


def _write_html(study_dir: Path, summary: dict, depth_png: Path, curves_png: Path) -> Path:
    v = summary["verdict"]
    source = "norm-free residual nets (ReZero, SkipInit, Fixup) against the same net without the "
    source += "method, plain and batch-norm nets"
    title = "Extreme depth without normalisation"
    page = verdict_page(study_dir, summary, title, source, LABELS, [v["rule"]])
    page.heading("Arms").bullets(_arm_lines(v["groups"]))
    page.heading("Loss, error and first gradient against depth").figure(
        depth_png,
        "Left: final training loss (solid; eval mode on the whole training set) and starting loss "
        "(hollow, dotted; the first mini-batch before any update) against depth. Middle: final "
        "training error. Right: the global gradient norm of the first step, before any clipping. "
        "Crosses at the top: diverged runs (no final loss) and gradients that overflow fp32.",
    )
    if v.get("diverged_notes"):
        page.heading(f"Why runs diverged at {v['deep']} layers").bullets(v["diverged_notes"])
    page.heading("Training curves of the deepest nets").figure(
        curves_png,
        max_width=820,
        caption="Mini-batch training loss (train mode, lightly smoothed) of every arm at the deepest "
        "depth. A cross marks the last finite loss of a run that diverged.",
    )
    rows = [_row(g, summary["runs"]) for g in v["groups"]]
    page.heading("Runs").table(
        list(rows[0]) if rows else ["arm"],
        [list(r.values()) for r in rows],
        "Means over seeds. first |g|: global gradient norm of the first step before clipping "
        "(overflow: entries not finite in fp32); start loss: first mini-batch before any update; "
        "final loss: eval mode, whole training set; end batch loss: mean mini-batch loss of the "
        f"last {END_WINDOW} logged steps (train mode, so batch-norm nets use batch statistics); — "
        "marks a missing or non-finite value (diverged run).",
    )
    rule = (  # the rule as the verdict states it, and the statuses it leaves out
        f"Declared before the numbers ({__package__}.rule): {v['rule']}; partly shown: a method "
        "learned, but not all of the above holds; not shown: no method learned. The batch-norm "
        "residual arms are shown, not judged."
    )
    keep = ("data", "family", "arms", "depths", "seeds", "iters", "width", "clip", "model_args")
    settings = {k: summary[k] for k in keep if k in summary}
    if isinstance(summary.get("arm_models"), dict):
        settings |= {f"arm {a}": m for a, m in summary["arm_models"].items()}
    settings |= {k: summary.get(k) for k in ("recipe", "incomplete")}
    return finish(page, study_dir, _what_was_run(summary), settings, rule=rule)


def format_table(summary: dict) -> str:
    """The summary as a plain-text table plus the verdict, for the terminal."""
    cols = {"arm": "<14", "depth": ">6", "clip": ">5", "first |g|": ">10", "start loss": ">11",
            "final loss": ">11", "train error": ">12", "test error": ">11", "status": ""}  # fmt: skip
    head = "".join(f"{c:{f}}" if f else f"  {c}" for c, f in cols.items())
    lines = [head, "-" * len(head)]
    for g in summary["verdict"]["groups"]:
        row = _row(g, summary["runs"])
        row["status"] = "; ".join(row["status"])
        lines.append("".join(f"{row[c]:{f}}" if f else f"  {row[c]}" for c, f in cols.items()))
    v = summary["verdict"]
    notes = v.get("diverged_notes") or []
    return "\n".join([*lines, "", f"verdict: {v['status']}", v["text"], *notes])


def build_report(study_dir: str | Path) -> Path:
    """Write summary.json, depth.png, curves.png and report.html into `study_dir`; returns the report."""
    study_dir = Path(study_dir)
    summary = write_summary(study_dir)
    depth_png = plots.plot_depth(summary["verdict"]["groups"], study_dir / "depth.png")
    deep, series = _deepest(study_dir, summary["runs"])
    curves_png = plots.plot_curves(deep, series, study_dir / "curves.png")
    return _write_html(study_dir, summary, depth_png, curves_png)
