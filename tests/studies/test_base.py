"""What the studies share: the one divergence policy, cell names, the statistics, and the time
estimate a long study prints after its first run."""

import json
import math
import statistics

import pytest

from reslab.studies import base, stats
from reslab.studies.base import Estimate
from reslab.training import TrainConfig, runs


def _cfg(tmp_path, model, iters, name):
    return TrainConfig(model=model, iters=iters, out=str(tmp_path), name=name)


def test_estimate_scales_the_first_run_by_depth_and_iterations(tmp_path, capsys):
    configs = [
        _cfg(tmp_path, "resmlp-10", 100, "a"),  # cost 10 x 100
        _cfg(tmp_path, "resmlp-100", 100, "b"),  # 10x the first
        _cfg(tmp_path, "resnet-110", 200, "c"),  # 22x the first
        _cfg(tmp_path, "resmlp-1000", 100, "d"),  # finished in an earlier invocation: costs 0
    ]
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "summary.json").write_text(json.dumps({"status": "completed"}))
    eta = Estimate(configs, jobs=2, quiet_s=60)
    eta.done(3, {"wall_s": 0.1})  # a finished run says nothing about speed
    assert capsys.readouterr().out == ""
    # 10 s per 1,000 units: (10,000 + 22,000) units = 320 s, less the 10 s the other job has run,
    # over 2 jobs: 155 s
    eta.done(0, {"wall_s": 10.0})
    assert "about 3 min to go for 2 more runs" in capsys.readouterr().out
    eta.done(1, {"wall_s": 100.0})
    assert capsys.readouterr().out == ""  # said once


def test_short_studies_stay_quiet(tmp_path, capsys):
    configs = [_cfg(tmp_path, "resmlp-4", 10, "a"), _cfg(tmp_path, "resmlp-8", 10, "b")]
    eta = Estimate(configs)
    eta.done(0, {"wall_s": 2.0})  # 4 s to go
    eta.done(1, None)
    assert capsys.readouterr().out == ""


def test_a_diverged_run_is_recorded_and_the_grid_goes_on(tmp_path, capsys):
    common = dict(
        data="digits", iters=12, log_every=1, out=str(tmp_path), num_threads=1, resume=True
    )
    configs = [
        TrainConfig(model="plainmlp-8", lr=1e6, name="boom", **common),  # overflows at once
        TrainConfig(model="resmlp-4", lr=0.02, name="fine", **common),
    ]
    boom, fine = base.train_grid(configs, jobs=1)
    assert boom["status"] == "diverged" and fine["status"] == "completed"
    assert runs.status(tmp_path / "boom") == "diverged"
    assert "boom" in capsys.readouterr().out
    # never retried on its own: a rerun leaves the diverged folder as it was
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "boom").iterdir()}
    again = base.train_grid(configs, jobs=1)
    assert (
        again[0]["status"] == "diverged"
        and again[1]["final_train_error"] == fine["final_train_error"]
    )
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "boom").iterdir()} == before


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


@pytest.mark.parametrize("writes_study_json", [False, True])
def test_a_refused_study_keeps_its_message_and_leaves_no_folder(writes_study_json, tmp_path):
    import dataclasses

    from reslab import studies

    def refuse(cfg):
        if writes_study_json:
            base.claim(base.study_dir(cfg), {"study": "lesion"}, ())
        raise ValueError("the study's own reason")

    study = dataclasses.replace(studies.get("lesion"), run=refuse)
    with pytest.raises(ValueError, match="the study's own reason"):
        base.main(study, {"out": str(tmp_path), "name": "s"})
    assert not (tmp_path / "s").exists()
