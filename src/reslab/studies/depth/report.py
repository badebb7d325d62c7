"""Report for the depth study (issue 6, "extreme depth without normalisation"): after one fixed budget
of iterations, norm-free residual nets (ReZero, SkipInit, Fixup) of 10,000 layers have learned, while
the plain net of that depth has not (it diverges or stays near its starting loss).

Works from the study folder alone (it imports nothing from the study): `study.json` and the run
folders `runs/<arm>-<depth>-s<seed>/` (config.json, metrics.jsonl, summary.json) that
`reslab.studies.depth` writes. `build_report` writes, beside study.json: summary.json, depth.png (final
training loss and error against depth), curves.png (training loss of the deepest nets) and report.html.

Losses, per run:
    start  = the first logged training loss: with the study's log_every=1, the cross-entropy of the
             first mini-batch before any update (else the mean over the first log_every steps)
    final  = the engine's final training loss: eval mode, the whole training set, after the last step
A run "learned" if it finished and final <= LEARNED * start (LEARNED = 0.5: at most half its
starting loss); a diverged run or a non-finite final loss has not. With several seeds, a cell learned
if every seed did, and failed if none did. Verdict, at the deepest depth D and the shallowest d:
    "shown"        every norm-free arm at D learned, the plain net at D failed, and it learned at d
    "partly_shown" some norm-free arm at D learned, but not all of the above holds
    "not_shown"    no norm-free arm at D learned
    "insufficient" no norm-free arm or no plain net finished at D
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from reslab.report.html import Page, fmt_count, fmt_pct
from reslab.studies.depth import plots
from reslab.studies.stats import finite_or_none, mean_std
from reslab.training import runs as rf

ARMS = ("plain", "residual", "rezero", "skipinit", "fixup")  # the order of tables and legends
NORM_FREE = ("rezero", "skipinit", "fixup")
LEARNED = 0.5
END_WINDOW = 10  # logged steps averaged into the end-of-training mini-batch loss
_LABELS = {
    "shown": ("extreme depth: shown", "good"),
    "partly_shown": ("partly shown", "warn"),
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


def _run_entry(run_dir: Path, rel: str, arm: str, depth: int, seed: int) -> dict:
    """One run's numbers from its own files (summary, metrics)."""
    s, config, train = (
        rf.read_summary(run_dir) or {},
        rf.read_config(run_dir),
        _train_lines(run_dir),
    )
    last = train[-END_WINDOW:]
    diverged = s.get("status") == "diverged"
    return {
        "arm": arm,
        "depth": depth,
        "seed": seed,
        "model": s.get("model") or config.get("model"),
        "params": s.get("params"),
        "status": s.get("status", "completed"),
        "iters": s.get("steps"),
        "start_loss": train[0]["train_loss"] if train else None,
        "start_steps": train[0]["step"] if train else None,
        "final_train_loss": finite_or_none(s.get("final_train_loss")),
        "final_train_error": finite_or_none(s.get("final_train_error")),
        "final_test_error": finite_or_none(s.get("final_test_error")),
        "end_batch_loss": _mean([ln["train_loss"] for ln in last]) if not diverged else None,
        "diverged_at": s.get("steps") if diverged else None,
        "last_finite_loss": train[-1]["train_loss"] if diverged and train else None,
        "last_finite_step": train[-1]["step"] if diverged and train else None,
        "time_s": finite_or_none(s.get("time_s")) or (train[-1].get("time") if train else None),
        "run_dir": rel,
    }


def collect_runs(study_dir: str | Path) -> tuple[list[dict], list[str]]:
    """(one entry per run with a summary, run folders without one yet), relative to study_dir."""
    study_dir = Path(study_dir)
    rf.read_study(study_dir, "depth")
    runs, incomplete = [], []
    for run_dir in rf.run_dirs(study_dir):
        cell = rf.parse_cell(run_dir.name, ("arm", "depth"))
        if not cell or cell["arm"] not in ARMS:
            continue
        rel = run_dir.relative_to(study_dir).as_posix()
        if rf.read_summary(run_dir) is None:
            incomplete.append(rel)
            continue
        runs.append(_run_entry(run_dir, rel, cell["arm"], cell["depth"], cell["seed"]))
    runs.sort(key=lambda r: (ARMS.index(r["arm"]), r["depth"], r["seed"]))
    return runs, incomplete


# ---------------------------------------------------------------------------------------------- verdict


def learned(run: dict, ratio: float = LEARNED) -> bool:
    """Finished with a final training loss at most `ratio` times its starting loss."""
    start, final = run["start_loss"], run["final_train_loss"]
    return run["status"] == "completed" and None not in (start, final) and final <= ratio * start


def _mean(values: list) -> float | None:
    return mean_std(values)[0]


def group_runs(runs: list[dict], ratio: float = LEARNED) -> list[dict]:
    """Per (arm, depth): seeds, diverged seeds, means over seeds, and whether every/no seed learned."""
    groups = []
    for arm in ARMS:
        for depth in sorted({r["depth"] for r in runs if r["arm"] == arm}):
            rs = [r for r in runs if r["arm"] == arm and r["depth"] == depth]
            ok = [learned(r, ratio) for r in rs]
            groups.append(
                {
                    "arm": arm,
                    "depth": depth,
                    "model": next((r["model"] for r in rs if r["model"]), None),
                    "params": next((r["params"] for r in rs if r["params"]), None),
                    "seeds": [r["seed"] for r in rs],
                    "diverged": [r["seed"] for r in rs if r["status"] == "diverged"],
                    "diverged_at": [r["diverged_at"] for r in rs if r["status"] == "diverged"],
                    "start_loss": _mean([r["start_loss"] for r in rs]),
                    "final_train_loss": _mean([r["final_train_loss"] for r in rs]),
                    "end_batch_loss": _mean([r["end_batch_loss"] for r in rs]),
                    "final_train_error": _mean([r["final_train_error"] for r in rs]),
                    "final_test_error": _mean([r["final_test_error"] for r in rs]),
                    "time_s": _mean([r["time_s"] for r in rs]),
                    "learned": all(ok),
                    "failed": not any(ok),
                }
            )
    return groups


def _fmt_loss(x: float | None) -> str:
    return "—" if x is None else f"{x:.3g}"


def describe(g: dict) -> str:
    """'2.44 → 0.21', '2.3 → 0.5, seed(s) 1 diverged' or 'diverged at step 2'."""
    if g["diverged"] and len(g["diverged"]) == len(g["seeds"]):
        return f"diverged at step {', '.join(map(str, g['diverged_at']))}"
    text = f"{_fmt_loss(g['start_loss'])} → {_fmt_loss(g['final_train_loss'])}"
    if g["diverged"]:
        text += f", seed(s) {', '.join(map(str, g['diverged']))} diverged"
    return text


def verdict(runs: list[dict], ratio: float = LEARNED) -> dict:
    """Judge the study from the measured losses only (rule in the module docstring)."""
    groups = group_runs(runs, ratio)
    at = {(g["arm"], g["depth"]): g for g in groups}
    depths = sorted({g["depth"] for g in groups})
    deep, shallow = (depths[-1], depths[0]) if depths else (None, None)
    free = [at[(a, deep)] for a in NORM_FREE if (a, deep) in at]
    plain, plain_shallow = at.get(("plain", deep)), at.get(("plain", shallow))
    if shallow == deep:
        plain_shallow = None
    base = {
        "rule": _rule(ratio),
        "ratio": ratio,
        "deep": deep,
        "shallow": shallow,
        "groups": groups,
    }
    if not free or plain is None:
        text = (
            "Cannot judge: the verdict needs a norm-free residual arm and the plain arm at the "
            f"deepest depth ({deep or 'none'})."
        )
        return {**base, "status": "insufficient", "text": text, "checks": {}}
    checks = {
        "norm_free_learned": {g["arm"]: g["learned"] for g in free},
        "plain_deep_failed": plain["failed"],
        "plain_shallow_learned": None if plain_shallow is None else plain_shallow["learned"],
    }
    learned_free = [g for g in free if g["learned"]]
    if not learned_free:
        status = "not_shown"
    elif len(learned_free) == len(free) and plain["failed"] and checks["plain_shallow_learned"]:
        status = "shown"
    else:
        status = "partly_shown"
    return {
        **base,
        "status": status,
        "text": _sentence(status, at, free, deep, shallow, ratio),
        "checks": checks,
    }


def _rule(ratio: float) -> str:
    return (
        f"learned: finished and final training loss <= {ratio:g} x starting loss; shown: every "
        "norm-free arm learned at the deepest depth, the plain net did not (or diverged) there and "
        "learned at the shallowest depth"
    )


def _sentence(
    status: str, at: dict, free: list[dict], deep: int, shallow: int, ratio: float
) -> str:
    parts = ", ".join(f"{g['arm']} {describe(g)}" for g in free)
    ok = [g["arm"] for g in free if g["learned"]]
    plain = at[("plain", deep)]
    shallow_plain = at.get(("plain", shallow)) if shallow != deep else None
    p = f"the plain net {describe(plain)}" + (
        " (did not learn)" if plain["failed"] and not plain["diverged"] else ""
    )
    if shallow_plain is not None:
        p += f", against {describe(shallow_plain)} at {shallow} layers"
    bn = at.get(("residual", deep))
    tail = f" The batch-norm residual net: {describe(bn)}." if bn else ""
    head = f"At {deep} layers (training loss start → final: {parts}; {p})."
    if status == "shown":
        return f"Shown. {head} Every norm-free residual net learned; the plain net did not.{tail}"
    if status == "not_shown":
        return (
            f"Not shown. {head} No norm-free residual net got down to {ratio:g} times its "
            f"starting loss.{tail}"
        )
    missing = []
    if len(ok) < len(free):
        missing.append(f"not every norm-free arm learned (learned: {', '.join(ok)})")
    if not plain["failed"]:
        missing.append("the plain net learned too")
    elif shallow_plain is None:
        missing.append("no shallower plain net to compare with")
    elif not shallow_plain["learned"]:
        missing.append(f"the plain net did not learn at {shallow} layers either")
    return f"Partly shown: {'; '.join(missing)}. {head}{tail}"


# ---------------------------------------------------------------------------------------------- summary


def write_summary(study_dir: str | Path) -> dict:
    """Collect the runs, judge them and write `<study_dir>/summary.json`; returns the summary dict."""
    study_dir = Path(study_dir)
    study = rf.read_study(study_dir, "depth")
    runs, incomplete = collect_runs(study_dir)
    summary = {"study": "depth", "data": None, "family": None}
    summary.update({k: v for k, v in study.items() if k not in ("study", "runs", "verdict")})
    summary.update(runs=runs, incomplete=incomplete, verdict=verdict(runs))
    rf.write_json(study_dir / rf.SUMMARY, summary, strict=True)
    return summary


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
    for arm in ARMS:
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


def _row(g: dict, runs: list[dict]) -> dict[str, object]:
    """One (arm, depth) group as table cells, keyed by column name."""
    return {
        "arm": g["arm"],
        "depth": g["depth"],
        "params": fmt_count(g["params"]),
        "seeds": len(g["seeds"]),
        "start loss": _fmt_loss(g["start_loss"]),
        "final loss": _fmt_loss(g["final_train_loss"]),
        "end batch loss": _fmt_loss(g["end_batch_loss"]),
        "train error": fmt_pct(g["final_train_error"]),
        "test error": fmt_pct(g["final_test_error"]),
        "train time": "—" if g["time_s"] is None else f"{g['time_s']:.0f} s",
        "status": _status(g, runs),
    }


def _what_was_run(summary: dict) -> str:
    runs = summary["runs"]
    iters = max((r["iters"] or 0 for r in runs), default=0) or summary.get("iters")
    arms = ", ".join(a for a in ARMS if any(r["arm"] == a for r in runs)) or "no arms"
    return (
        f"{len(runs)} finished or diverged training runs ({arms}) of depth "
        f"{', '.join(map(str, sorted({r['depth'] for r in runs})))} on {summary.get('data')}, "
        f"{iters} iterations each with one recipe (listed below). The plain net is the batch-norm "
        "residual net with its shortcuts removed; ReZero, SkipInit and Fixup have no normalisation "
        "layer at all (and with no norm, ReZero and SkipInit put their scalar at the same place, so "
        "they are the same network). Depth counts weight layers." + _start_note(runs)
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
    label, tone = _LABELS[v["status"]]
    page = Page(
        "Extreme depth without normalisation",
        f"{study_dir.name} · {summary.get('data')} · norm-free residual nets (ReZero, SkipInit, "
        "Fixup) against plain and batch-norm nets",
    )
    page.verdict(label, v["text"], tone, [v["rule"]])
    page.heading("Loss and error against depth").figure(
        depth_png,
        "Left: final training loss (solid; eval mode on the whole training set) and starting loss "
        "(hollow, dotted; the first mini-batch before any update) against depth. Right: final "
        "training error. Crosses at the top: diverged runs (no final loss).",
    )
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
        "Means over seeds. start loss: first mini-batch before any update; final loss: eval mode, "
        f"whole training set; end batch loss: mean mini-batch loss of the last {END_WINDOW} logged "
        "steps (train mode, so batch-norm nets use batch statistics); — marks a missing or "
        "non-finite value (diverged run).",
    )
    if summary.get("incomplete"):
        page.paragraph(
            f"Not finished (no {rf.SUMMARY}), left out: {', '.join(summary['incomplete'])}.",
            small=True,
        )
    page.heading("How the verdict is decided").paragraph(
        f"A run learned if it finished with a final training loss at most {v['ratio']:g} times its "
        "starting loss; a run that diverged did not. Shown: at the deepest depth every norm-free "
        "residual arm learned and the plain net did not, while the plain net learned at the "
        "shallowest depth (so the failure is depth's, not the recipe's). Partly shown: some "
        "norm-free arm learned but not all of that holds. Not shown: no norm-free arm learned.",
        small=True,
    )
    keep = ("data", "family", "arms", "depths", "seeds", "iters", "width", "model_args")
    config = {k: summary[k] for k in keep if k in summary}
    if isinstance(summary.get("arm_models"), dict):
        config |= {f"arm {a}": m for a, m in summary["arm_models"].items()}
    recipe = summary.get("recipe") if isinstance(summary.get("recipe"), dict) else None
    page.setup(_what_was_run(summary), config, recipe)
    return page.write(study_dir / rf.REPORT)


def format_table(summary: dict) -> str:
    """The summary as a plain-text table plus the verdict, for the terminal."""
    cols = {"arm": "<9", "depth": ">6", "params": ">9", "start loss": ">12", "final loss": ">12",
            "train error": ">13", "test error": ">12", "status": ""}  # fmt: skip
    head = "".join(f"{c:{f}}" if f else f"  {c}" for c, f in cols.items())
    lines = [head, "-" * len(head)]
    for g in summary["verdict"]["groups"]:
        row = _row(g, summary["runs"])
        row["status"] = "; ".join(row["status"])
        lines.append("".join(f"{row[c]:{f}}" if f else f"  {row[c]}" for c, f in cols.items()))
    v = summary["verdict"]
    return "\n".join([*lines, "", f"verdict: {v['status']}", v["text"]])


def build_report(study_dir: str | Path) -> Path:
    """Write summary.json, depth.png, curves.png and report.html into `study_dir`; returns the report."""
    study_dir = Path(study_dir)
    summary = write_summary(study_dir)
    depth_png = plots.plot_depth(summary["verdict"]["groups"], study_dir / "depth.png")
    deep, series = _deepest(study_dir, summary["runs"])
    curves_png = plots.plot_curves(deep, series, study_dir / "curves.png")
    return _write_html(study_dir, summary, depth_png, curves_png)
