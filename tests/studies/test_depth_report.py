"""Depth report from real-format study folders written with constructed numbers (no training): files,
summary schema, diverged runs shown as diverged and explained from their replayed first step, old
folders' zero-initialised residual runs read as the zeroinit arm, and the verdict rule on every
status."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from reslab.studies import build_report as build_any
from reslab.studies.depth import first_step_path
from reslab.studies.depth.report import format_table, write_summary
from reslab.studies.depth.rule import diverged_notes, learned, verdict

ITERS = 40


def write_run(study_dir: Path, arm: str, depth: int, seed: int, start: float, final: float | None,
              diverged_at: int | None = None, kwargs: dict | None = None,
              lr_scales: dict | None = None) -> None:  # fmt: skip
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
        summary = {"name": run_dir.name, "status": "diverged", "steps": diverged_at,
                   "diverged_at_step": diverged_at}  # fmt: skip
    else:
        lines.append(
            {"kind": "final", "step": ITERS, "train_loss": final, "train_error": final / 4}
        )
        summary = {
            "name": run_dir.name, "model": model, "data": "digits", "params": 100 * depth,
            "steps": ITERS, "status": "completed", "final_train_loss": final,
            "final_train_error": final / 4, "final_test_error": final / 3, "time_s": 4.0,
        }  # fmt: skip
    config = {
        "model": model,
        "seed": seed,
        "model_kwargs": kwargs or {},
        "lr_scales": lr_scales or {},
    }
    config["grad_clip"] = 1.0 if arm.endswith("+clip") else 0.0
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(ln) + "\n" for ln in lines))
    (run_dir / "config.json").write_text(json.dumps(config))
    (run_dir / "summary.json").write_text(json.dumps(summary))


# (arm, depth) -> (start loss, final loss or None, diverged at step or None)
SHOWN = {
    ("plain", 10): (2.3, 0.05, None),
    ("plain", 1000): (2.4, None, 2),
    ("residual", 10): (2.4, 0.04, None),
    ("residual", 1000): (30.0, 2.2, None),
    ("zeroinit", 10): (2.4, 0.04, None),
    ("zeroinit", 1000): (2.4, 0.03, None),
    ("nonorm", 10): (4.1, 0.2, None),
    ("nonorm", 1000): (2.4, None, 1),
    ("rezero", 10): (2.4, 0.06, None),
    ("rezero", 1000): (2.4, 0.3, None),
    ("fixup", 10): (2.3, 0.07, None),
    ("fixup", 1000): (2.3, 0.5, None),
}
# the same study where ReZero learns at 1,000 layers only with clipping
CLIPPED = {
    **SHOWN,
    ("rezero", 1000): (2.4, None, 28),
    ("rezero+clip", 1000): (2.4, 0.4, None),
    ("nonorm+clip", 1000): (2.4, None, 1),
    ("plain+clip", 1000): (2.4, None, 2),
}


def write_study(root: Path, cells: dict, seeds=(0,)) -> Path:
    study_dir = root / "depth-study"
    arms = sorted({a for a, _ in cells})
    depths = sorted({d for _, d in cells})
    study = {"study": "depth", "data": "digits", "family": "mlp", "arms": arms, "depths": depths,
             "seeds": list(seeds), "iters": ITERS, "recipe": {"lr": 0.02, "grad_clip": 0.0}}  # fmt: skip
    study_dir.mkdir(parents=True)
    (study_dir / "study.json").write_text(json.dumps(study))
    for (arm, depth), (start, final, div) in cells.items():
        for seed in seeds:
            write_run(study_dir, arm, depth, seed, start, final, div)
    return study_dir


def _runs(cells: dict, first: dict | None = None) -> list[dict]:
    """Summary "runs" entries without any folder; `first` maps (arm, depth) to a replayed first
    step (loss, gradient norm, non-finite gradient entries)."""
    first = first or {}
    return [
        {"arm": a, "depth": d, "seed": 0, "model": f"m-{d}", "params": d, "iters": ITERS,
         "grad_clip": 1.0 if a.endswith("+clip") else 0.0, "lr_scales": {},
         "status": "diverged" if div else "completed", "start_loss": start, "start_steps": 1,
         "final_train_loss": final, "final_train_error": None if final is None else final / 4,
         "final_test_error": None, "end_batch_loss": final, "diverged_at": div,
         "last_finite_loss": start if div else None, "last_finite_step": 1 if div else None,
         "time_s": 1.0, "run_dir": f"runs/{a}-{d}-s0",
         **dict(zip(("first_loss", "first_grad_norm", "first_grad_nonfinite"),
                    first.get((a, d), (start, 1.0, 0)), strict=True)),
         "first_grad_entries": 1000, "classes": 10}
        for (a, d), (start, final, div) in cells.items()
    ]  # fmt: skip


def _strict_json(path: Path) -> dict:
    def no_nan(c):
        raise AssertionError(f"non-standard JSON constant {c} in {path}")

    return json.loads(path.read_text(), parse_constant=no_nan)


def test_report_from_the_folder_alone(tmp_path, browser):
    study_dir = write_study(tmp_path, CLIPPED)
    first_step_path(study_dir, "plain-1000-s0").parent.mkdir()
    first_step_path(study_dir, "plain-1000-s0").write_text(
        json.dumps({"loss": 2.4, "grad_norm": None, "grad_nonfinite": 700, "grad_entries": 1000})
    )
    report = build_any(study_dir)  # what `reslab report DIR` calls
    assert report == study_dir / "report.html"
    for name in ("depth.png", "curves.png"):
        assert (study_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    s = _strict_json(study_dir / "summary.json")
    assert s["study"] == "depth" and s["verdict"]["status"] == "shown_with_clipping"
    loaded, total, dom = browser.figures(report)
    assert loaded == total == 2
    page = dom.replace("&amp;", "&")
    assert "diverged at step 2" in dom and s["verdict"]["text"] in page
    assert "700 of 1,000 gradient entries are not finite" in page  # why plain diverged
    assert "residual, no norm, He init (negative control)" in page  # the arms, named
    assert "ReZero, no norm (x + alpha F(x), alpha = 0) + gradient norm clipped at 1" in page


def test_run_entries_hold_what_the_run_folders_say(tmp_path):
    study_dir = write_study(tmp_path, CLIPPED)
    first_step_path(study_dir, "rezero-1000-s0").parent.mkdir()
    first_step_path(study_dir, "rezero-1000-s0").write_text(
        json.dumps({"loss": 2.4, "grad_norm": 0.75, "grad_nonfinite": 0, "grad_entries": 1000})
    )
    summary = write_summary(study_dir)
    runs, incomplete = summary["runs"], summary["incomplete"]
    assert incomplete == [] and len(runs) == len(CLIPPED)
    by = {(r["arm"], r["depth"]): r for r in runs}
    clipped = by[("rezero+clip", 1000)]
    assert clipped["status"] == "completed" and clipped["start_loss"] == pytest.approx(
        0.4 + 2.0 * math.exp(-1 / 8)
    )
    assert clipped["start_steps"] == 1 and clipped["final_train_loss"] == 0.4
    assert clipped["grad_clip"] == 1.0 and by[("rezero", 1000)]["grad_clip"] == 0.0
    rezero = by[("rezero", 1000)]
    assert (rezero["first_loss"], rezero["first_grad_norm"]) == (2.4, 0.75)
    assert clipped["first_loss"] is None  # not replayed
    plain = by[("plain", 1000)]
    assert plain["status"] == "diverged" and plain["diverged_at"] == 2
    assert plain["last_finite_loss"] == 2.4 and plain["last_finite_step"] == 1
    assert plain["final_train_loss"] is None and plain["final_train_error"] is None
    order = [r["arm"] for r in runs if r["depth"] == 1000]
    assert order == ["plain", "plain+clip", "residual", "zeroinit", "nonorm", "nonorm+clip",
                     "rezero", "rezero+clip", "fixup"]  # fmt: skip


def test_zero_initialised_residual_runs_of_older_folders_are_the_zeroinit_arm(tmp_path):
    study_dir = write_study(tmp_path, {("plain", 10): (2.3, 0.05, None)})
    write_run(study_dir, "residual", 10, 0, 2.4, 0.1, kwargs={"zero_init_residual": True})
    write_run(study_dir, "residual", 12, 0, 2.4, 0.1, kwargs={"width": 8})
    arms = {(r["arm"], r["depth"]) for r in write_summary(study_dir)["runs"]}
    assert arms == {("plain", 10), ("zeroinit", 10), ("residual", 12)}


def _loss(v, arm: str, depth: int = 1000) -> tuple:
    """An (arm, depth) group's mean start and final training loss and the steps its runs diverged at,
    as the verdict's numbers hold them."""
    g = next(g for g in v.numbers["groups"] if (g["arm"], g["depth"]) == (arm, depth))
    return g["start_loss"], g["final_train_loss"], g["diverged_at"]


def test_verdict_shown_names_the_numbers():
    v = verdict(_runs(SHOWN))
    assert v.status == "shown" and (v.numbers["deep"], v.numbers["shallow"]) == (1000, 10)
    assert v.numbers["checks"] == {
        "methods_learned": {"rezero": True, "fixup": True},
        "methods_learned_with_clipping": {"rezero": None, "fixup": None},
        "controls_failed": {"nonorm": True, "plain": True},
        "controls_learned_shallow": {"nonorm": True, "plain": True},
    }
    assert _loss(v, "rezero") == (2.4, 0.3, []) and _loss(v, "plain") == (2.4, None, [2])
    assert _loss(v, "nonorm") == (2.4, None, [1]) and _loss(v, "zeroinit") == (2.4, 0.03, [])
    assert v.numbers["needed_clipping"] == [] and v.numbers["unrescued"] == []


def test_verdict_shown_with_clipping_names_the_methods_that_needed_it():
    v = verdict(_runs(CLIPPED))
    assert v.status == "shown_with_clipping" and v.numbers["needed_clipping"] == ["rezero"]
    assert v.numbers["checks"]["methods_learned"] == {"rezero": False, "fixup": True}
    assert v.numbers["checks"]["methods_learned_with_clipping"] == {"rezero": True, "fixup": None}
    assert v.numbers["checks"]["controls_failed"] == {
        "nonorm": True,
        "nonorm+clip": True,
        "plain": True,
        "plain+clip": True,
    }
    assert _loss(v, "rezero") == (2.4, None, [28]) and _loss(v, "rezero+clip") == (2.4, 0.4, [])
    # run only with clipping: it counts as needing it
    only_clipped = {k: v for k, v in CLIPPED.items() if k != ("rezero", 1000)}
    assert verdict(_runs(only_clipped)).status == "shown_with_clipping"


SHALLOW, FAILED = "controls_learned_shallow", "controls_failed"


@pytest.mark.parametrize(
    "change, status, unrescued, checks",
    [
        ({("fixup", 1000): (2.3, 2.0, None)}, "partly_shown", ["fixup"], {}),
        ({("plain", 10): (2.3, 2.2, None)}, "partly_shown", [], {SHALLOW: {"plain": False}}),
        ({("nonorm", 10): (4.1, None, 3)}, "partly_shown", [], {SHALLOW: {"nonorm": False}}),
        ({("nonorm", 1000): (2.4, 0.2, None)}, "not_attributable", [], {FAILED: {"nonorm": False}}),
        ({("plain", 1000): (2.4, 0.2, None)}, "not_attributable", [], {FAILED: {"plain": False}}),
        (
            {("nonorm+clip", 1000): (2.4, 0.2, None)},
            "not_attributable",
            [],
            {FAILED: {"nonorm+clip": False}},
        ),
        (
            {("plain+clip", 1000): (2.4, 0.2, None)},
            "not_attributable",
            [],
            {FAILED: {"plain+clip": False}},
        ),
        (
            {
                ("rezero", 1000): (2.4, None, 5),
                ("rezero+clip", 1000): (2.4, 2.0, None),
                ("fixup", 1000): (2.3, 1.5, None),  # 1.5 > 0.5 x 2.3: not learned
            },
            "not_shown",
            ["rezero", "fixup"],
            {"methods_learned": {"rezero": False, "fixup": False}},
        ),
        ({("rezero+clip", 1000): (2.4, 2.0, None)}, "partly_shown", ["rezero"], {}),
    ],
)
def test_verdict_follows_the_numbers(change, status, unrescued, checks):
    """Each status rests on the checks that name its cause: the methods that failed with and
    without clipping ("unrescued"), a control that did not learn at the shallow depth, or one that
    learned at the deep depth."""
    v = verdict(_runs({**CLIPPED, **change}))
    assert v.status == status and v.numbers["unrescued"] == unrescued, v.text
    for part, want in checks.items():
        assert {a: v.numbers["checks"][part][a] for a in want} == want


def test_verdict_states_the_step_budget_and_the_seeds(tmp_path):
    v = verdict(_runs(SHOWN))
    assert v.numbers["steps"] == ITERS and v.numbers["seeds"] == [0]
    # the budget is the completed runs' steps, not a diverged run's
    assert verdict(_runs({("plain", 1000): (2.4, None, 2), **SHOWN})).numbers["steps"] == ITERS
    s = write_summary(write_study(tmp_path, SHOWN, seeds=(0, 1, 2)))
    assert s["verdict"]["seeds"] == [0, 1, 2] and s["verdict"]["steps"] == ITERS
    assert f"budget of {ITERS} training steps" in format_table(s)


def test_an_arm_with_its_own_learning_rates_says_so(tmp_path):
    study_dir = write_study(tmp_path, {k: v for k, v in SHOWN.items() if k[0] != "fixup"})
    scales = {"bias": 0.1, "scale": 0.1}
    for depth in (10, 1000):
        write_run(study_dir, "fixup", depth, 0, 2.3, 0.5, lr_scales=scales)
    groups = write_summary(study_dir)["verdict"]["groups"]
    assert all(g["lr_scales"] == (scales if g["arm"] == "fixup" else {}) for g in groups)
    page = build_any(study_dir).read_text().replace("&quot;", '"')
    assert (
        'Fixup, no norm (scalar biases, rescaled init); parameters whose name holds "bias" 0.1'
        in (page)
    )


def test_a_diverged_seed_counts_against_its_arm(tmp_path):
    # a method with one diverged seed has not learned; a control with one learned seed has not failed
    study_dir = write_study(tmp_path, SHOWN, seeds=(0, 1))
    (study_dir / "runs" / "fixup-1000-s1").rename(study_dir / "gone")
    write_run(study_dir, "fixup", 1000, 1, 2.3, None, diverged_at=7)
    g = next(
        g
        for g in write_summary(study_dir)["verdict"]["groups"]
        if (g["arm"], g["depth"]) == ("fixup", 1000)
    )
    assert g["seeds"] == [0, 1] and g["diverged"] == [1] and not g["learned"]
    assert write_summary(study_dir)["verdict"]["status"] == "partly_shown"
    (study_dir / "runs" / "nonorm-1000-s1").rename(study_dir / "gone2")
    write_run(study_dir, "nonorm", 1000, 1, 2.4, 0.3)
    assert write_summary(study_dir)["verdict"]["status"] == "not_attributable"


def test_learned_means_at_most_half_the_starting_loss():
    at = {("plain", 10): (2.0, 0.1, None), ("plain", 100): (2.0, 1.5, None),
          ("nonorm", 10): (2.0, 0.1, None), ("nonorm", 100): (2.0, 1.5, None)}  # fmt: skip
    for final, ok in ((1.0, True), (1.01, False)):
        v = verdict(_runs({**at, ("rezero", 100): (2.0, final, None)}))
        assert v.numbers["checks"]["methods_learned"]["rezero"] is ok
        assert v.status == ("shown" if ok else "not_shown")


def test_falling_to_chance_from_far_above_it_is_not_learning():
    # a 10,000-layer batch-norm residual net at He init starts at 55 and ends at chance, ln 10 = 2.3
    (run,) = _runs({("residual", 10000): (55.4, 2.28, None)})
    assert not learned(run) and learned({**run, "final_train_loss": 1.15})
    assert learned({**run, "classes": None})  # an older folder: no replay, the start alone


@pytest.mark.parametrize("missing", [("plain",), ("nonorm",), ("rezero", "fixup")])
def test_insufficient_without_a_method_the_control_or_plain_at_the_deepest_depth(missing):
    assert verdict([]).status == "insufficient"
    cells = {k: v for k, v in SHOWN.items() if not (k[0] in missing and k[1] == 1000)}
    assert verdict(_runs(cells)).status == "insufficient"


def test_diverged_runs_are_explained_from_their_first_step():
    cells = {("plain", 1000): (2.4, None, 2), ("nonorm", 1000): (2.4, None, 1),
             ("rezero", 1000): (2.4, None, 28), ("fixup", 1000): (2.3, None, 2),
             ("rezero", 10): (2.4, None, 3)}  # fmt: skip
    first = {("plain", 1000): (2.4, None, 700), ("nonorm", 1000): (None, None, 1000),
             ("rezero", 1000): (2.4, 0.5, 0), ("fixup", 1000): (2.3, 3e12, 0)}  # fmt: skip
    notes = diverged_notes(_runs(cells, first), 1000)
    assert len(notes) == 4  # the deepest depth only
    plain, nonorm, rezero, fixup = (next(n for n in notes if n.startswith(a)) for a in
                                    ("plain", "nonorm", "rezero", "fixup"))  # fmt: skip
    assert "an overflow of its first gradient" in plain and "700 of 1,000" in plain
    assert "not finite at the first step, before any update" in nonorm
    assert "after a finite first step" in rezero and "0.5" in rezero and "not an overflow" in rezero
    assert "an exploding first gradient" in fixup and "its norm is 3e+12" in fixup
    unreplayed = _runs(cells, {("plain", 1000): (None, None, None)})
    assert "not replayed" in diverged_notes(unreplayed, 1000)[0]


def test_incomplete_run_is_listed_not_read(tmp_path):
    study_dir = write_study(tmp_path, SHOWN)
    (study_dir / "runs" / "skipinit-1000-s0").mkdir()  # started, nothing written yet
    write_summary(study_dir)
    s = _strict_json(study_dir / "summary.json")
    assert s["incomplete"] == ["runs/skipinit-1000-s0"] and len(s["runs"]) == len(SHOWN)


def test_format_table(tmp_path):
    text = format_table(write_summary(write_study(tmp_path, CLIPPED)))
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["arm", "depth", "params", "clip"]
    row = next(ln for ln in lines if ln.split()[:2] == ["plain", "1000"])
    assert "diverged at step 2 (last finite loss 2.4, step 1)" in row
    clipped = next(ln for ln in lines if ln.split()[0] == "rezero+clip")
    assert clipped.split()[3] == "1"  # its clip
    assert "verdict: shown_with_clipping" in text
