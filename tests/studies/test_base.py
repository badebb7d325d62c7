"""What the studies share: the one divergence policy, cell names, the statistics, and the time
estimate a long study prints before its runs train."""

import ast
import json
import math
import statistics
from dataclasses import replace
from pathlib import Path

import pytest

from reslab.launch.grid import Estimate, train_grid
from reslab.studies import base, records, stats
from reslab.training import TrainConfig, runs
from reslab.training.timing import Timing


def _cfg(tmp_path, model, iters, name):
    return TrainConfig(model=model, iters=iters, out=str(tmp_path), name=name)


SIZES = {"train": 1000, "test": 100, "val": 0}


def _summary(train_s: float, wall_s: float = 0.0) -> dict:
    """A finished run's summary.json, with the parts of its time the engine records."""
    parts = dict(time_s=train_s, curve_eval_s=0.0, final_eval_s=0.0, checkpoint_s=0.0)
    return {"status": "completed", "wall_s": wall_s or train_s, **parts}


def test_estimate_times_each_kind_of_run_and_lays_the_runs_out_over_the_jobs(tmp_path, capsys):
    configs = [
        _cfg(tmp_path, "resmlp-10", 100, "a"),  # 5 s to start + 100 x 0.1 s = 15 s
        _cfg(tmp_path, "resmlp-100", 100, "b"),  # 5 + 100 x 1 = 105 s
        _cfg(tmp_path, "resnet-110", 200, "c"),  # 5 + 200 x 2 = 405 s
        _cfg(tmp_path, "resmlp-10", 100, "e"),  # the same kind as "a": not timed again
        _cfg(tmp_path, "resmlp-1000", 100, "d"),  # finished in an earlier invocation: not timed
    ]
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "summary.json").write_text(json.dumps({"status": "completed"}))
    step_s = {"resmlp-10": 0.1, "resmlp-100": 1.0, "resnet-110": 2.0}
    timed = []

    def measure(c, threads):
        timed.append(c.model)
        return Timing(5.0, step_s[c.model], 0.0, SIZES, 10)

    eta = Estimate(configs, jobs=2, quiet_s=60, measure=measure)
    assert sorted(timed) == ["resmlp-10", "resmlp-100", "resnet-110"]
    # the longest first (in the order given they would take 15 + 405 = 420 s): c (405 s) and b
    # (105 s) start; a and e run after b while c goes on: 405 s in all
    assert eta.order == [2, 1, 0, 3]
    assert eta.total == pytest.approx(405.0)
    assert eta.makespan([15, 105, 405, 15], 2) == pytest.approx(420.0)
    assert "about 6.8 min for 4 runs, 2 at a time" in capsys.readouterr().out
    eta.done(4, _summary(0.1))  # a run finished before says nothing about speed
    eta.done(0, _summary(11.0, wall_s=30.0))  # its work within 1.25x of 10 s: nothing more to say
    assert capsys.readouterr().out == ""

    eta = Estimate(configs, jobs=2, quiet_s=60, measure=measure)
    capsys.readouterr()
    # its work took twice its 10 s (its wall time also holds a worker's imports): a busier machine.
    # Every run's work doubled: c 805 s beside b 205 s, a and e (25 s each): 805 s to go
    eta.done(0, _summary(20.0, wall_s=40.0))
    assert "about 13 min to go for 3 more runs (the first run's work took 2x" in (
        capsys.readouterr().out
    )
    eta.done(1, _summary(500.0))
    assert capsys.readouterr().out == ""  # said once


def test_estimate_counts_the_evaluations(tmp_path):
    """A run's evaluations are priced by the images they score (`eval_images`): 100 steps of 128
    with 100 test images score 6-step-apart points of 100 images (16 in the loop), then the whole
    1,000 training and 100 test images: 2,700 images at 10 ms."""
    c = _cfg(tmp_path, "resmlp-10", 100, "a")
    assert Timing(5.0, 0.1, 0.01, SIZES, 10).predict(c) == pytest.approx(5 + 10 + 27)
    assert Timing(5.0, 0.1, 0.01, SIZES, 10).predict(replace(c, iters=0, epochs=2)) == (
        pytest.approx(5 + 2 + 0.01 * (3 * 100 + 1100))  # 20 steps: a point every 6, 3 in the loop
    )


def test_short_studies_stay_quiet_and_a_failed_timing_says_nothing(tmp_path, capsys):
    configs = [_cfg(tmp_path, "resmlp-4", 10, "a"), _cfg(tmp_path, "resmlp-8", 10, "b")]
    eta = Estimate(configs, measure=lambda c, threads: Timing(1.0, 0.01, 0.0, SIZES, 10))
    eta.done(0, _summary(2.0))  # 20x its prediction, but 2 s to go
    eta.done(1, None)

    def broken(c, threads):
        raise FileNotFoundError("no data here")

    eta = Estimate(configs, measure=broken)
    eta.done(0, _summary(2.0))
    assert capsys.readouterr().out == ""


def test_a_diverged_run_is_recorded_and_the_grid_goes_on(tmp_path, capsys):
    common = dict(
        data="digits", iters=12, log_every=1, out=str(tmp_path), num_threads=1, resume=True
    )
    configs = [
        TrainConfig(model="plainmlp-8", lr=1e6, name="boom", **common),  # overflows at once
        TrainConfig(model="resmlp-4", lr=0.02, name="fine", **common),
    ]
    boom, fine = train_grid(configs, jobs=1)
    assert boom["status"] == "diverged" and fine["status"] == "completed"
    assert runs.status(tmp_path / "boom") == "diverged"
    out = capsys.readouterr().out
    assert "boom" in out and "diverged at step" in out
    # never retried on its own: a rerun leaves the diverged folder as it was
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "boom").iterdir()}
    again = train_grid(configs, jobs=1)
    assert (
        again[0]["status"] == "diverged"
        and again[1]["final_train_error"] == fine["final_train_error"]
    )
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "boom").iterdir()} == before


def test_collect_reads_each_finished_cell_once_and_lists_the_unfinished(tmp_path):
    for name, summary in [
        ("residual-8-s1", {"steps": 3}),
        ("plain-8-s0", {"steps": 5}),
        ("plain-16-s0", None),  # still training
        ("other-8-s0", {"steps": 7}),  # a cell this study does not know
        ("notes", {"steps": 9}),  # not a cell at all
    ]:
        (tmp_path / runs.RUNS / name).mkdir(parents=True)
        if summary:
            runs.write_json(tmp_path / runs.RUNS / name / runs.SUMMARY, summary)

    def row(run_dir, cell, summary):
        return cell | {"iters": summary["steps"], "folder": run_dir.name}

    rows, incomplete = records.collect(
        tmp_path,
        ("arch", "depth"),
        row,
        lambda r: r["seed"],
        keep=lambda cell: cell["arch"] in ("plain", "residual"),
    )
    assert rows == [
        {"arch": "plain", "depth": 8, "seed": 0, "iters": 5, "folder": "plain-8-s0",
         "run_dir": "runs/plain-8-s0"},
        {"arch": "residual", "depth": 8, "seed": 1, "iters": 3, "folder": "residual-8-s1",
         "run_dir": "runs/residual-8-s1"},
    ]  # fmt: skip
    assert incomplete == ["runs/plain-16-s0"]
    # without `keep` every folder is a run: one whose name is no cell gets an empty cell
    rows, _ = records.collect(tmp_path, ("arch", "depth"), row, lambda r: r["folder"])
    assert [r["folder"] for r in rows] == ["notes", "other-8-s0", "plain-8-s0", "residual-8-s1"]
    assert rows[0] == {"iters": 9, "folder": "notes", "run_dir": "runs/notes"}


def test_cell_names_round_trip():
    assert runs.cell_name("plain", 20, seed=0) == "plain-20-s0"
    assert runs.parse_cell("plain-20-s0", ("arch", "depth")) == {
        "arch": "plain",
        "depth": 20,
        "seed": 0,
    }
    assert runs.parse_cell("gate-shortcut-s3", ("variant",)) == {
        "variant": "gate-shortcut",
        "seed": 3,
    }
    assert runs.parse_cell("plain-x-s0", ("arch", "depth")) is None
    assert runs.parse_cell("plain-20", ("arch", "depth")) is None
    with pytest.raises(ValueError):
        runs.cell_name("a/b", seed=0)


def test_statistics_against_the_statistics_module():
    a, b = [0.10, 0.12, 0.11], [0.20, 0.26, float("nan")]
    assert stats.mean_std(a) == pytest.approx((statistics.mean(a), statistics.stdev(a)))
    assert stats.mean_std([0.3]) == (0.3, None) and stats.mean_std([None, math.inf]) == (None, None)
    c = stats.compare(a, b, floor=0.01)
    pooled = math.sqrt((2 * statistics.variance(a) + statistics.variance(b[:2])) / 3)
    assert c["pooled_std"] == pytest.approx(pooled)
    assert c["margin"] == pytest.approx(0.23 - 0.11) and c["higher"] is (
        0.12 > max(2 * pooled, 0.01)
    )
    assert stats.compare([0.1], [0.105], floor=0.01)["higher"] is False  # within the floor


def test_one_tolerance_for_every_rule():
    assert stats.tolerance(0.02, floor=0.01) == 0.04  # twice the spread
    assert stats.tolerance(0.004, floor=0.01) == 0.01  # never below the floor
    assert stats.tolerance(0.0, floor=0.01) == 0.01  # one seed: the floor alone
    assert stats.tolerance(0.02, floor=0.01, k=3) == pytest.approx(0.06)
    # no study writes its own max(k * spread, floor) in code: each calls stats.tolerance
    own = [
        f"{path.name}:{node.lineno}"
        for path in Path(stats.__file__).parent.rglob("*.py")
        if path.name != "stats.py"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call)
        and getattr(node.func, "id", None) == "max"
        and any(isinstance(a, ast.BinOp) and isinstance(a.op, ast.Mult) for a in node.args)
    ]
    assert not own


def test_model_names_come_from_the_registry():
    from reslab.models import create_model

    for family in base.FAMILIES:
        for arch in base.ARCHS:
            name = base.model_name(family, arch, 20 if family != "mlp" else 8)
            assert create_model(name, num_classes=10).default_cfg["residual"] is (
                arch == "residual"
            )
    with pytest.raises(ValueError, match="family must be one of"):
        base.model_name("vgg", "plain", 8)


@pytest.mark.parametrize(
    ("study", "options", "message"),
    [
        ("degradation", dict(family="vgg"), "family must be one of mlp, cifar, preact, got 'vgg'"),
        (
            "degradation",
            dict(archs=("plain", "wide")),
            r"archs must be among .*\['plain', 'wide'\]",
        ),
        ("gradients", dict(archs=()), r"archs must be among plain, residual, got \[\]"),
        ("depth", dict(seeds=()), "give at least one depth and one seed"),
        ("gradients", dict(batches=0), "batches must be >= 1, got 0"),
        ("lesion", dict(test_subset=-1), "test_subset must be >= 0, got -1"),
        ("identity", dict(family="vgg"), "family must be one of"),
    ],
)
def test_a_bad_option_is_one_line_naming_the_field(study, options, message):
    from reslab.studies import get

    with pytest.raises(ValueError, match=message) as err:
        get(study).make_config(None, **options)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("writes_study_json", [False, True])
def test_a_refused_study_keeps_its_message_and_leaves_no_folder(
    writes_study_json, tmp_path, monkeypatch
):
    from reslab import studies

    def refuse(study, cfg):
        if writes_study_json:
            records.write_study(base.study_dir(cfg), {"study": "lesion"})
        raise ValueError("the study's own reason")

    monkeypatch.setattr(base, "run", refuse)
    with pytest.raises(ValueError, match="the study's own reason"):
        base.main(studies.get("lesion"), {"out": str(tmp_path), "name": "s"})
    assert not (tmp_path / "s").exists()
