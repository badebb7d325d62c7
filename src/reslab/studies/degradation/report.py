"""Report for the degradation study (He et al. 2015, "Deep Residual Learning for Image Recognition",
§4.1-4.2, Figures 1 and 6): deeper plain nets reach a *higher training error*; residual twins do not.

Works from a study folder alone (no retraining): `study.json` plus the train run folders
`runs/<arch>-<depth>-s<seed>/` (config.json, metrics.jsonl, summary.json) that `reslab.studies.degradation`
writes. `build_report(study_dir)` writes, beside study.json: summary.json, curves.png (Fig. 6 style),
depth.png (final training error against depth) and report.html.

Verdict rule, per arch, comparing its shallowest and deepest measured depth (errors are fractions,
training error = `final_train_error`, measured in eval mode on the whole training set):
    margin    = mean over seeds(deepest) - mean over seeds(shallowest)
    tolerance = max(2 * pooled seed std of the two groups, FLOOR)        FLOOR = 0.01 (1 percentage point)
    degrades  = margin > tolerance
The pooled std is the usual df-weighted one (sample std per group); with one seed per group it is 0 and only
the floor applies. Status: "shown" (plain degrades, residual does not), "residual_degrades_too",
"not_shown" (plain does not degrade), "plain_degrades" (plain degrades; fewer than two residual depths to
compare), "insufficient" (fewer than two plain depths measured).
"""

from __future__ import annotations

import re
from pathlib import Path

from reslab.report.html import Page, fmt_count, fmt_mean_std, fmt_pct, join_values
from reslab.studies.degradation.plots import plot_curves, plot_depth
from reslab.studies.stats import finite_or_none, mean_std, pooled_std
from reslab.training import runs as rf

ARCHS = ("plain", "residual")
FLOOR = 0.01
_LABELS = {
    "shown": ("degradation shown", "good"),
    "residual_degrades_too": ("residual degrades too", "warn"),
    "not_shown": ("degradation not shown", "warn"),
    "plain_degrades": ("plain degrades (no residual comparison)", "neutral"),
    "insufficient": ("insufficient runs", "neutral"),
}


# ---------------------------------------------------------------------------------------------- reading


def _run_dirs(study_dir: Path, study: dict) -> list[Path]:
    """Run folders listed in study.json ("runs": names or {"run_dir"/"name": ...}), else all of runs/."""
    listed = study.get("runs")
    if isinstance(listed, list) and listed:
        names = [(r.get("run_dir") or r.get("name")) if isinstance(r, dict) else r for r in listed]
        return [
            study_dir / n if (study_dir / n).is_dir() else study_dir / rf.RUNS / n for n in names
        ]
    return rf.run_dirs(study_dir)


def _identify(run_dir: Path, config: dict, summary: dict) -> tuple[str, int, int]:
    """(arch, depth, seed) from the cell name `<arch>-<depth>-s<seed>`, else from the run's config."""
    cell = rf.parse_cell(run_dir.name, ("arch", "depth"))
    if cell and cell["arch"] in ARCHS:
        return cell["arch"], cell["depth"], cell["seed"]
    model = str(summary.get("model") or config.get("model") or "")
    digits = re.search(r"(\d+)$", model)
    arch = config.get("arch") or (_arch_of(model) if model else None)
    depth = config.get("depth") or (int(digits[1]) if digits else None)
    seed = config.get("seed")
    if arch not in ARCHS or depth is None or seed is None:
        raise ValueError(
            f"cannot tell arch/depth/seed of run folder {run_dir}: name it <plain|residual>-<depth>-s<seed>"
        )
    return arch, int(depth), int(seed)


def _arch_of(model: str) -> str | None:
    from reslab.models import is_residual  # only for run folders not named as cells

    try:
        return "residual" if is_residual(model) else "plain"
    except ValueError:  # not a registered model name
        return None


def _scan(study_dir: Path) -> tuple[list[dict], list[str]]:
    """(completed run entries, run folders without a summary.json yet), both relative to study_dir."""
    runs, incomplete = [], []
    for run_dir in _run_dirs(study_dir, rf.read_study(study_dir, "degradation")):
        rel = run_dir.relative_to(study_dir).as_posix()
        summary = rf.read_summary(run_dir)
        if summary is None:
            incomplete.append(rel)
            continue
        config = rf.read_config(run_dir)
        arch, depth, seed = _identify(run_dir, config, summary)
        runs.append(
            {
                "arch": arch,
                "depth": depth,
                "seed": seed,
                "model": summary.get("model") or config.get("model"),
                "final_train_error": finite_or_none(summary.get("final_train_error")),
                "final_test_error": finite_or_none(summary.get("final_test_error")),
                "params": summary.get("params"),
                "iters": summary.get("steps"),
                "run_dir": rel,
                "status": summary.get("status", "completed"),
            }
        )
    runs.sort(key=lambda r: (ARCHS.index(r["arch"]), r["depth"], r["seed"]))
    return runs, incomplete


def collect_runs(study_dir: str | Path) -> list[dict]:
    """One summary entry per finished run of the study (see CONTRACT: arch, depth, seed, model,
    final_train_error, final_test_error, params, iters, run_dir; plus the run's status)."""
    return _scan(Path(study_dir))[0]


# ---------------------------------------------------------------------------------------------- verdict


def group_runs(runs: list[dict]) -> list[dict]:
    """Per (arch, depth): n, seeds, per-seed errors and their mean/std over seeds (non-finite errors left out)."""
    groups = []
    for arch in ARCHS:
        for depth in sorted({r["depth"] for r in runs if r["arch"] == arch}):
            rs = [r for r in runs if r["arch"] == arch and r["depth"] == depth]
            train = [r["final_train_error"] for r in rs if r["final_train_error"] is not None]
            test = [r["final_test_error"] for r in rs if r["final_test_error"] is not None]
            (tr_mean, tr_std), (te_mean, te_std) = mean_std(train), mean_std(test)
            groups.append(
                {
                    "arch": arch,
                    "depth": depth,
                    "n": len(train),
                    "seeds": [r["seed"] for r in rs],
                    "model": next((r["model"] for r in rs if r["model"]), None),
                    "params": next((r["params"] for r in rs if r["params"] is not None), None),
                    "train_errors": [r["final_train_error"] for r in rs],
                    "test_errors": [r["final_test_error"] for r in rs],
                    "train_error_mean": tr_mean,
                    "train_error_std": tr_std,
                    "test_error_mean": te_mean,
                    "test_error_std": te_std,
                }
            )
    return groups


def _compare(shallow: dict, deep: dict, floor: float) -> dict:
    """Deepest vs shallowest group of one arch: margin, pooled seed std, tolerance, degrades."""
    pooled = pooled_std([(g["n"], g["train_error_std"]) for g in (shallow, deep)])
    tolerance = max(2 * pooled, floor)
    margin = deep["train_error_mean"] - shallow["train_error_mean"]
    return {
        "shallow_depth": shallow["depth"],
        "deep_depth": deep["depth"],
        "shallow_mean": shallow["train_error_mean"],
        "deep_mean": deep["train_error_mean"],
        "margin": margin,
        "pooled_std": pooled,
        "tolerance": tolerance,
        "degrades": margin > tolerance,
    }


def _clause(arch: str, c: dict) -> str:
    return (
        f"the {c['deep_depth']}-layer {arch} net ends at {fmt_pct(c['deep_mean'])} training error vs "
        f"{fmt_pct(c['shallow_mean'])} at {c['shallow_depth']} layers ({100 * c['margin']:+.2f} pp, "
        f"tolerance {100 * c['tolerance']:.2f} pp)"
    )


def _sentence(status: str, plain: dict | None, residual: dict | None, depths: list[int]) -> str:
    if status == "insufficient":
        return (
            f"Cannot judge degradation: plain nets finished at {len(depths)} depth(s) "
            f"({', '.join(map(str, depths)) or 'none'}), at least two are needed."
        )
    p = _clause("plain", plain)
    r = _clause("residual", residual) if residual else ""
    if status == "shown":
        return f"Degradation shown: {p}, while {r}, within the tolerance."
    if status == "residual_degrades_too":
        return f"Both degrade: {p}, and {r}, also above the tolerance."
    if status == "plain_degrades":
        return f"Plain nets degrade: {p}; fewer than two residual depths finished, so no residual comparison."
    tail = f"; for comparison {r}" if r else ""
    return f"Degradation not shown: {p}, not above the tolerance{tail}."


def verdict(runs: list[dict], floor: float = FLOOR) -> dict:
    """Judge the study from measured final training errors only (rule in the module docstring).

    Returns {"status", "text", "rule", "floor", "plain", "residual", "groups", "left_out"}: "plain"/"residual"
    hold the shallowest-vs-deepest comparison (shallow_depth, deep_depth, shallow_mean, deep_mean, margin,
    pooled_std, tolerance, degrades) or None with fewer than two depths; "groups" the per-(arch, depth)
    stats; "left_out" the run_dirs without a finite training error (diverged runs).
    """
    groups = group_runs(runs)
    comps: dict[str, dict | None] = {}
    for arch in ARCHS:
        gs = [g for g in groups if g["arch"] == arch and g["n"] > 0]
        comps[arch] = _compare(gs[0], gs[-1], floor) if len(gs) >= 2 else None
    plain, residual = comps["plain"], comps["residual"]
    if plain is None:
        status = "insufficient"
    elif not plain["degrades"]:
        status = "not_shown"
    elif residual is None:
        status = "plain_degrades"
    else:
        status = "residual_degrades_too" if residual["degrades"] else "shown"
    plain_depths = [g["depth"] for g in groups if g["arch"] == "plain" and g["n"] > 0]
    left_out = [r["run_dir"] for r in runs if r["final_train_error"] is None]
    text = _sentence(status, plain, residual, plain_depths)
    if left_out:
        text += f" Left out, no finite training error (diverged): {', '.join(left_out)}."
    return {
        "status": status,
        "text": text,
        "rule": f"per arch: degrades if mean train error(deepest) - mean(shallowest) > "
        f"max(2 * pooled seed std, {floor})",
        "floor": floor,
        "plain": plain,
        "residual": residual,
        "groups": groups,
        "left_out": left_out,
    }


# ---------------------------------------------------------------------------------------------- summary


def write_summary(study_dir: str | Path) -> dict:
    """Collect the runs, judge them and write `<study_dir>/summary.json`; returns the summary dict."""
    study_dir = Path(study_dir)
    study = rf.read_study(study_dir, "degradation")
    runs, incomplete = _scan(study_dir)
    summary = {"study": "degradation", "data": None, "family": None}
    summary.update({k: v for k, v in study.items() if k not in ("study", "runs", "verdict")})
    if summary["data"] is None and runs:
        summary["data"] = rf.read_summary(study_dir / runs[0]["run_dir"]).get("data")
    summary.update(runs=runs, incomplete=incomplete, verdict=verdict(runs))
    rf.write_json(study_dir / rf.SUMMARY, summary, strict=True)
    return summary


# ---------------------------------------------------------------------------------------------- text + html


def _comparison_note(arch: str, c: dict | None, floor: float) -> str:
    if c is None:
        return f"{arch}: fewer than two depths finished, no comparison"
    word = "degrades" if c["degrades"] else "does not degrade"
    return (
        f"{arch}: {c['shallow_depth']} → {c['deep_depth']} layers, {fmt_pct(c['shallow_mean'])} → "
        f"{fmt_pct(c['deep_mean'])} ({100 * c['margin']:+.2f} pp); tolerance {100 * c['tolerance']:.2f} pp "
        f"= max(2 × pooled seed std {100 * c['pooled_std']:.2f} pp, floor {100 * floor:.2f} pp): {word}"
    )


def _per_seed(group: dict, key: str) -> list[str]:
    return [f"seed {s}: {fmt_pct(e)}" for s, e in zip(group["seeds"], group[key], strict=True)]


def _iters(summary: dict) -> int | None:
    """Iterations per run as measured (study.json may say 0 when the recipe counts epochs)."""
    return (
        max((r["iters"] or 0 for r in summary["runs"]), default=0) or summary.get("iters") or None
    )


def _what_was_run(summary: dict) -> str:
    runs = summary["runs"]
    archs = [a for a in ARCHS if any(r["arch"] == a for r in runs)] or summary.get("archs", [])
    depths = summary.get("depths") or sorted({r["depth"] for r in runs})
    seeds = summary.get("seeds") or sorted({r["seed"] for r in runs})
    recipe = " with the recipe listed below" if summary.get("recipe") else ""
    return (
        f"{len(runs)} finished training runs: {' and '.join(archs) or 'no'} networks "
        f"({summary.get('family') or 'family not recorded'}) of depth {join_values(depths)}, each from seed(s) "
        f"{join_values(seeds)}, trained for {_iters(summary)} iterations on {summary.get('data')}{recipe}. "
        "A plain net is its residual twin with the shortcuts removed: same layers, same parameters. "
        "Training error is measured after training on the whole training set in eval mode, without "
        "augmentation; test error on the test set."
    )


def _write_html(study_dir: Path, summary: dict, curves: Path, depth: Path) -> Path:
    v = summary["verdict"]
    label, tone = _LABELS[v["status"]]
    page = Page(
        "Degradation: plain vs residual networks",
        f"{study_dir.name} · {summary.get('data')} · He et al. 2015, Figures 1 and 6",
    )
    page.verdict(label, v["text"], tone, [_comparison_note(a, v[a], v["floor"]) for a in ARCHS])
    page.heading("Training curves").figure(
        curves,
        "Training error (thin dashed) and test error (bold) against iterations, mean over seeds "
        "(faint lines: test error of each seed). Left: plain nets, right: residual nets; one colour per "
        "depth in both panels. In the paper (Fig. 6), deeper plain nets sit higher, deeper residual nets lower.",
    )
    page.heading("Final error against depth").figure(
        depth,
        max_width=760,
        caption="Final training error (solid, mean ± seed std, dots = single seeds) and test error (dashed) against "
        "depth. Degradation is the plain curve rising with depth while the residual curve does not.",
    )
    rows = [
        [
            g["arch"],
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
        [
            "arch",
            "depth",
            "model",
            "params",
            "seeds",
            "train error",
            "test error",
            "train, per seed",
            "test, per seed",
        ],
        rows,
        "Errors as mean ± sample std over seeds; — marks a missing or non-finite value (diverged run).",
    )
    if summary.get("incomplete"):
        page.paragraph(
            f"Not finished (no summary.json), left out: {', '.join(summary['incomplete'])}.",
            small=True,
        )
    skip = ("runs", "verdict", "incomplete", "recipe", "train")
    config = {k: v for k, v in summary.items() if k not in skip} | {"iters": _iters(summary)}
    recipe = summary.get("recipe") if isinstance(summary.get("recipe"), dict) else None
    page.setup(_what_was_run(summary), config, recipe)
    page.heading("How the verdict is decided").paragraph(
        "For each architecture, the mean final training error of the deepest finished depth is compared with "
        "that of the shallowest. It degrades if the difference exceeds max(2 × pooled seed std, "
        f"{100 * v['floor']:g} percentage point), so a difference within the spread of seeds does not count. "
        "Degradation is shown when plain nets degrade and residual nets do not.",
        small=True,
    )
    return page.write(study_dir / "report.html")


def format_table(summary: dict) -> str:
    """The summary as a plain-text table plus verdict lines, for the terminal."""
    v = summary["verdict"]
    head = (
        f"{'arch':<9}{'depth':>6}{'params':>9}{'seeds':>7}  {'train error':<17}{'test error':<17}"
    )
    lines = [head.rstrip(), "-" * len(head.rstrip())]
    for g in v["groups"]:
        lines.append(
            f"{g['arch']:<9}{g['depth']:>6}{fmt_count(g['params']):>9}{g['n']:>7}  "
            f"{fmt_mean_std(g['train_error_mean'], g['train_error_std']):<17}"
            f"{fmt_mean_std(g['test_error_mean'], g['test_error_std'])}"
        )
    lines += ["", f"verdict: {v['status']}"]
    lines += [f"  {_comparison_note(a, v[a], v['floor'])}" for a in ARCHS]
    lines.append(v["text"])
    return "\n".join(lines)


def build_report(study_dir: str | Path) -> Path:
    """Write summary.json, curves.png, depth.png and report.html into `study_dir`; returns the report path."""
    study_dir = Path(study_dir)
    summary = write_summary(study_dir)
    curves = plot_curves(study_dir, summary["runs"], study_dir / "curves.png")
    depth = plot_depth(summary["verdict"]["groups"], study_dir / "depth.png")
    return _write_html(study_dir, summary, curves, depth)
