"""What the studies share: the time estimate a long study prints after its first run."""

import json

from reslab.studies.common import Estimate
from reslab.training import TrainConfig


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
