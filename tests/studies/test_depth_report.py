"""Depth report from real-format study folders written with constructed numbers (no training): files,
summary schema, diverged runs shown as diverged, and the verdict rule on every outcome."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from reslab.studies import build_report as build_any
from reslab.studies.depth.report import (
    build_report,
    collect_runs,
    format_table,
    verdict,
    write_summary,
)

ITERS = 40


def write_run(study_dir: Path, arm: str, depth: int, seed: int, start: float, final: float | None,
              diverged_at: int | None = None) -> None:  # fmt: skip
    """One run folder as the engine writes it: the loss falls from `start` to `final`; a diverged run
    logs finite losses until the step before `diverged_at` and leaves a "diverged" summary."""
    run_dir = study_dir / "runs" / f"{arm}-{depth}-s{seed}"
    run_dir.mkdir(parents=True)
    last = ITERS if diverged_at is None else diverged_at - 1
    lines = []
    for step in range(1, last + 1):
        loss = start if final is None else final + (start - final) * math.exp(-step / 8)
        lines.append({"kind": "train", "step": step, "train_loss": loss, "train_error": 0.5,
                      "lr": 0.02, "time": step / 10})  # fmt: skip
    model = f"{'plainmlp' if arm == 'plain' else 'resmlp'}-{depth}"
    if diverged_at is not None:
        summary = {"name": run_dir.name, "status": "diverged", "steps": diverged_at}
    else:
        lines.append(
            {"kind": "final", "step": ITERS, "train_loss": final, "train_error": final / 4}
        )
        summary = {
            "name": run_dir.name, "model": model, "data": "digits", "params": 100 * depth,
            "steps": ITERS, "status": "completed", "final_train_loss": final,
            "final_train_error": final / 4, "final_test_error": final / 3, "time_s": 4.0,
        }  # fmt: skip
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(ln) + "\n" for ln in lines))
    (run_dir / "config.json").write_text(json.dumps({"model": model, "seed": seed}))
    (run_dir / "summary.json").write_text(json.dumps(summary))


# (arm, depth) -> (start loss, final loss or None, diverged at step or None)
SHOWN = {
    ("plain", 10): (2.3, 0.05, None),
    ("plain", 1000): (2.4, None, 2),
    ("residual", 10): (2.4, 0.04, None),
    ("residual", 1000): (2.4, 0.03, None),
    ("rezero", 10): (2.4, 0.06, None),
    ("rezero", 1000): (2.4, 0.3, None),
    ("fixup", 10): (2.3, 0.07, None),
    ("fixup", 1000): (2.3, 0.5, None),
}


def write_study(root: Path, cells: dict, seeds=(0,)) -> Path:
    study_dir = root / "depth-study"
    arms = sorted({a for a, _ in cells})
    depths = sorted({d for _, d in cells})
    study = {"study": "depth", "data": "digits", "family": "mlp", "arms": arms, "depths": depths,
             "seeds": list(seeds), "iters": ITERS, "recipe": {"lr": 0.02, "grad_clip": 1.0}}  # fmt: skip
    study_dir.mkdir(parents=True)
    (study_dir / "study.json").write_text(json.dumps(study))
    for (arm, depth), (start, final, div) in cells.items():
        for seed in seeds:
            write_run(study_dir, arm, depth, seed, start, final, div)
    return study_dir


def _runs(cells: dict) -> list[dict]:
    """Summary "runs" entries without any folder."""
    return [
        {"arm": a, "depth": d, "seed": 0, "model": f"m-{d}", "params": d, "iters": ITERS,
         "status": "diverged" if div else "completed", "start_loss": start, "start_steps": 1,
         "final_train_loss": final, "final_train_error": None if final is None else final / 4,
         "final_test_error": None, "end_batch_loss": final, "diverged_at": div,
         "last_finite_loss": start if div else None, "last_finite_step": 1 if div else None,
         "time_s": 1.0, "run_dir": f"runs/{a}-{d}-s0"}
        for (a, d), (start, final, div) in cells.items()
    ]  # fmt: skip


def _strict_json(path: Path) -> dict:
    def no_nan(c):
        raise AssertionError(f"non-standard JSON constant {c} in {path}")

    return json.loads(path.read_text(), parse_constant=no_nan)


def test_report_from_the_folder_alone(tmp_path, browser):
    study_dir = write_study(tmp_path, SHOWN)
    report = build_any(study_dir)  # what `reslab report DIR` calls
    assert report == study_dir / "report.html"
    for name in ("summary.json", "depth.png", "curves.png"):
        assert (study_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" or name.endswith("json")
    s = _strict_json(study_dir / "summary.json")
    assert s["study"] == "depth" and s["verdict"]["status"] == "shown"
    loaded, total, dom = browser.figures(report)
    assert loaded == total == 2
    assert "diverged at step 2" in dom and s["verdict"]["text"] in dom.replace("&amp;", "&")


def test_run_entries_hold_what_the_run_folders_say(tmp_path):
    study_dir = write_study(tmp_path, SHOWN)
    runs, incomplete = collect_runs(study_dir)
    assert incomplete == [] and len(runs) == len(SHOWN)
    by = {(r["arm"], r["depth"]): r for r in runs}
    rezero = by[("rezero", 1000)]
    assert rezero["status"] == "completed" and rezero["start_loss"] == pytest.approx(
        0.3 + 2.1 * math.exp(-1 / 8)
    )
    assert rezero["start_steps"] == 1 and rezero["final_train_loss"] == 0.3
    plain = by[("plain", 1000)]
    assert plain["status"] == "diverged" and plain["diverged_at"] == 2
    assert plain["last_finite_loss"] == 2.4 and plain["last_finite_step"] == 1
    assert plain["final_train_loss"] is None and plain["final_train_error"] is None


def test_verdict_shown_names_the_numbers():
    v = verdict(_runs(SHOWN))
    assert v["status"] == "shown" and (v["deep"], v["shallow"]) == (1000, 10)
    assert v["checks"] == {
        "norm_free_learned": {"rezero": True, "fixup": True},
        "plain_deep_failed": True,
        "plain_shallow_learned": True,
    }
    assert "rezero 2.4 → 0.3" in v["text"] and "plain net diverged" in v["text"]


@pytest.mark.parametrize(
    "change, status, phrase",
    [
        ({("fixup", 1000): (2.3, 2.0, None)}, "partly_shown", "not every norm-free arm"),
        ({("plain", 1000): (2.4, 0.2, None)}, "partly_shown", "plain net learned too"),
        ({("plain", 10): (2.3, 2.2, None)}, "partly_shown", "did not learn at 10 layers"),
        (
            {("rezero", 1000): (2.4, None, 5), ("fixup", 1000): (2.3, 1.5, None)},
            "not_shown",
            "No norm-free",
        ),
    ],
)
def test_verdict_follows_the_numbers(change, status, phrase):
    v = verdict(_runs({**SHOWN, **change}))
    assert v["status"] == status and phrase in v["text"], v["text"]


def test_learned_means_at_most_half_the_starting_loss():
    at = {("plain", 10): (2.0, 0.1, None), ("plain", 100): (2.0, 1.5, None)}
    for final, ok in ((1.0, True), (1.01, False)):
        v = verdict(_runs({**at, ("rezero", 100): (2.0, final, None)}))
        assert v["checks"]["norm_free_learned"]["rezero"] is ok


def test_insufficient_without_plain_or_norm_free_at_the_deepest_depth():
    assert verdict([])["status"] == "insufficient"
    only_bn = {k: v for k, v in SHOWN.items() if k[0] in ("plain", "residual")}
    assert verdict(_runs(only_bn))["status"] == "insufficient"


def test_seeds_a_cell_learned_only_if_every_seed_did(tmp_path):
    study_dir = write_study(tmp_path, SHOWN, seeds=(0, 1))
    (study_dir / "runs" / "fixup-1000-s1").rename(study_dir / "gone")
    write_run(study_dir, "fixup", 1000, 1, 2.3, None, diverged_at=7)
    s = write_summary(study_dir)
    g = next(g for g in s["verdict"]["groups"] if (g["arm"], g["depth"]) == ("fixup", 1000))
    assert g["seeds"] == [0, 1] and g["diverged"] == [1] and not g["learned"]
    assert s["verdict"]["status"] == "partly_shown"


def test_incomplete_run_is_listed_not_read(tmp_path):
    study_dir = write_study(tmp_path, SHOWN)
    (study_dir / "runs" / "skipinit-1000-s0").mkdir()  # started, nothing written yet
    build_report(study_dir)
    s = _strict_json(study_dir / "summary.json")
    assert s["incomplete"] == ["runs/skipinit-1000-s0"] and len(s["runs"]) == len(SHOWN)


def test_format_table(tmp_path):
    text = format_table(write_summary(write_study(tmp_path, SHOWN)))
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["arm", "depth", "params"]
    row = next(ln for ln in lines if ln.startswith("plain") and " 1000 " in ln)
    assert "diverged at step 2 (last finite loss 2.4, step 1)" in row
    assert "verdict: shown" in text
