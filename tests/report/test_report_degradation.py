"""Degradation report from a real-format study folder: files, summary schema, and the verdict rule on
constructed numbers (effect present, absent, reversed, within seed noise, too few depths)."""

from __future__ import annotations

import json
import statistics

import pytest

from reslab.studies import build_report as build_any
from reslab.studies.degradation import report as degradation
from reslab.studies.degradation.report import (
    FLOOR,
    build_report,
    collect_runs,
    format_table,
    verdict,
)


def _strict_json(path):
    def no_nan(c):
        raise AssertionError(f"non-standard JSON constant {c} in {path}")

    return json.loads(path.read_text(), parse_constant=no_nan)


def _runs(finals: dict) -> list[dict]:
    """Summary "runs" entries from {(arch, depth): [train errors per seed]}, without any folder."""
    return [
        {"arch": a, "depth": d, "seed": s, "model": f"{a}-{d}", "final_train_error": e,
         "final_test_error": None if e is None else e + 0.03, "params": d * 1000, "iters": 100,
         "run_dir": f"runs/{a}-{d}-s{s}", "status": "completed"}
        for (a, d), errs in finals.items() for s, e in enumerate(errs)
    ]  # fmt: skip


def test_build_report_writes_every_file(study_dir):
    report = build_report(study_dir)
    assert report == study_dir / "report.html"
    for name in ("summary.json", "curves.png", "depth.png", "report.html"):
        assert (study_dir / name).stat().st_size > 0, name
    for name in ("curves.png", "depth.png"):
        assert (study_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = report.read_text()
    assert text.count('src="data:image/png;base64,') == 2
    assert "Degradation shown" in text and "plain-56" in text


def test_summary_schema_and_values(study_dir, tmp_path):
    build_report(study_dir)
    s = _strict_json(study_dir / "summary.json")
    assert s["study"] == "degradation" and s["data"] == "digits" and s["family"] == "cifar"
    assert s["recipe"]["lr"] == 0.1 and s["iters"] == 200
    assert len(s["runs"]) == 18 and s["incomplete"] == []
    types = {"arch": str, "depth": int, "seed": int, "model": str, "final_train_error": float,
             "final_test_error": float, "params": int, "iters": int, "run_dir": str}  # fmt: skip
    for r in s["runs"]:
        for key, typ in types.items():
            assert type(r[key]) is typ, (key, r[key])
        assert r["arch"] in ("plain", "residual")
        assert 0 <= r["final_train_error"] <= 1 and 0 <= r["final_test_error"] <= 1
        assert (study_dir / r["run_dir"] / "summary.json").is_file()
        # the entry holds exactly what the run folder's own summary.json says
        own = json.loads((study_dir / r["run_dir"] / "summary.json").read_text())
        assert r["final_train_error"] == own["final_train_error"] and r["params"] == own["params"]
    v = s["verdict"]
    assert v["status"] == "shown"
    assert isinstance(v["text"], str) and v["plain"]["degrades"] and not v["residual"]["degrades"]
    for g in v["groups"]:
        assert 0 <= g["train_error_mean"] <= 1 and 0 <= g["test_error_mean"] <= 1 and g["n"] == 3


def test_effect_present():
    runs = _runs({("plain", 20): [0.05, 0.052, 0.054], ("plain", 56): [0.10, 0.11, 0.105],
                  ("residual", 20): [0.05, 0.051, 0.049], ("residual", 56): [0.03, 0.031, 0.032]})  # fmt: skip
    v = verdict(runs)
    assert v["status"] == "shown"
    assert v["plain"]["margin"] == pytest.approx(0.105 - 0.052)
    assert v["residual"]["margin"] == pytest.approx(0.031 - 0.05)
    assert v["plain"]["tolerance"] == FLOOR  # seed spread is tiny, the floor decides
    assert "10.50%" in v["text"] and "5.20%" in v["text"] and "+5.30 pp" in v["text"]


def test_effect_absent_says_so_with_numbers():
    runs = _runs({("plain", 20): [0.05, 0.052, 0.054], ("plain", 56): [0.053, 0.055, 0.051],
                  ("residual", 20): [0.05, 0.051, 0.049], ("residual", 56): [0.03, 0.031, 0.032]})  # fmt: skip
    v = verdict(runs)
    assert v["status"] == "not_shown" and not v["plain"]["degrades"]
    assert (
        v["text"].startswith("Degradation not shown")
        and "5.30%" in v["text"]
        and "+0.10 pp" in v["text"]
    )


def test_residual_degrades_too():
    runs = _runs({("plain", 20): [0.05, 0.052], ("plain", 56): [0.10, 0.11],
                  ("residual", 20): [0.04, 0.041], ("residual", 56): [0.09, 0.092]})  # fmt: skip
    v = verdict(runs)
    assert v["status"] == "residual_degrades_too" and v["residual"]["degrades"]
    assert v["text"].startswith("Both degrade")


def test_difference_within_seed_spread_is_not_degradation():
    # 3 pp apart, above the 1 pp floor but well inside 2 x the 6 pp seed std
    runs = _runs({("plain", 20): [0.04, 0.10, 0.16], ("plain", 56): [0.07, 0.13, 0.19]})
    v = verdict(runs)
    pooled = statistics.fmean([statistics.variance([0.04, 0.10, 0.16]),
                               statistics.variance([0.07, 0.13, 0.19])]) ** 0.5  # fmt: skip
    assert v["plain"]["pooled_std"] == pytest.approx(pooled)
    assert v["plain"]["tolerance"] == pytest.approx(2 * pooled)
    assert v["plain"]["margin"] == pytest.approx(0.03)
    assert v["status"] == "not_shown"


def test_pooled_std_weights_groups_by_degrees_of_freedom():
    a, b = [0.05, 0.07], [0.20, 0.30, 0.10, 0.25]
    v = verdict(_runs({("plain", 20): a, ("plain", 56): b}))
    ss = (len(a) - 1) * statistics.variance(a) + (len(b) - 1) * statistics.variance(b)
    assert v["plain"]["pooled_std"] == pytest.approx((ss / (len(a) + len(b) - 2)) ** 0.5)


@pytest.mark.parametrize("margin, degrades", [(0.005, False), (0.02, True)])
def test_single_seed_uses_the_floor(margin, degrades):
    v = verdict(_runs({("plain", 20): [0.05], ("plain", 56): [0.05 + margin]}))
    assert v["plain"]["pooled_std"] == 0 and v["plain"]["tolerance"] == FLOOR
    assert v["plain"]["degrades"] is degrades
    assert v["status"] == ("plain_degrades" if degrades else "not_shown")


def test_single_depth_is_insufficient():
    v = verdict(
        _runs({("plain", 20): [0.05, 0.06], ("residual", 20): [0.04], ("residual", 56): [0.03]})
    )
    assert v["status"] == "insufficient" and v["plain"] is None and v["residual"] is not None
    assert "1 depth(s) (20)" in v["text"]
    assert (
        verdict(_runs({("residual", 20): [0.04], ("residual", 56): [0.03]}))["status"]
        == "insufficient"
    )
    assert verdict([])["status"] == "insufficient"


def test_shallowest_and_deepest_are_compared_and_missing_errors_are_left_out():
    runs = _runs(
        {("plain", 8): [0.05, None], ("plain", 20): [0.30], ("plain", 110): [0.12, 0.13, None]}
    )
    v = verdict(runs)
    assert (v["plain"]["shallow_depth"], v["plain"]["deep_depth"]) == (8, 110)
    assert v["plain"]["margin"] == pytest.approx(0.125 - 0.05)
    g110 = next(g for g in v["groups"] if g["depth"] == 110)
    assert g110["n"] == 2 and g110["train_error_std"] == pytest.approx(
        statistics.stdev([0.12, 0.13])
    )


def test_group_means_match_the_folder(study_dir, degrades):
    v = verdict(collect_runs(study_dir))
    assert len(v["groups"]) == len(degrades)
    for g in v["groups"]:
        train = [t for t, _ in degrades[(g["arch"], g["depth"])]]
        test = [t for _, t in degrades[(g["arch"], g["depth"])]]
        assert g["train_error_mean"] == pytest.approx(statistics.fmean(train))
        assert g["train_error_std"] == pytest.approx(statistics.stdev(train))
        assert g["test_error_mean"] == pytest.approx(statistics.fmean(test))


def test_incomplete_runs_and_torn_metrics(study_dir):
    (study_dir / "runs" / "plain-110-s0").mkdir()  # started, nothing written yet
    metrics = study_dir / "runs" / "plain-56-s0" / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"kind": "train", "st')  # a line being written
    build_report(study_dir)
    s = _strict_json(study_dir / "summary.json")
    assert s["incomplete"] == ["runs/plain-110-s0"] and len(s["runs"]) == 18
    assert "runs/plain-110-s0" in (study_dir / "report.html").read_text()


def test_runs_listed_in_study_json_are_the_ones_read(study_dir):
    study = json.loads((study_dir / "study.json").read_text())
    study["runs"] = ["plain-8-s0", {"run_dir": "runs/residual-56-s1"}]
    (study_dir / "study.json").write_text(json.dumps(study))
    runs = collect_runs(study_dir)
    assert [(r["arch"], r["depth"], r["seed"]) for r in runs] == [
        ("plain", 8, 0),
        ("residual", 56, 1),
    ]


def test_single_arch_study_builds(make_study):
    study_dir = make_study({("plain", 20): [(0.05, 0.08)], ("plain", 56): [(0.12, 0.15)]})
    build_report(study_dir)
    s = _strict_json(study_dir / "summary.json")
    assert s["verdict"]["status"] == "plain_degrades" and s["verdict"]["residual"] is None
    assert (
        "12.00%" in s["verdict"]["text"]
        and "fewer than two residual depths" in s["verdict"]["text"]
    )


def test_format_table(study_dir):
    text = format_table(degradation.write_summary(study_dir))
    lines = text.splitlines()
    assert lines[0].split() == [
        "arch",
        "depth",
        "params",
        "seeds",
        "train",
        "error",
        "test",
        "error",
    ]
    assert any(ln.split()[:2] == ["plain", "56"] and "14.50 ± 0.50%" in ln for ln in lines)
    assert "verdict: shown" in text


def test_bad_folders(tmp_path, study_dir):
    with pytest.raises(FileNotFoundError, match="not a degradation study"):
        build_report(tmp_path / "nothing")
    (study_dir / "runs" / "plain-56-s0").rename(study_dir / "runs" / "weird")
    (study_dir / "runs" / "weird" / "config.json").write_text("{}")
    (study_dir / "runs" / "weird" / "summary.json").write_text('{"model": "mystery"}')
    with pytest.raises(ValueError, match="cannot tell arch/depth/seed"):
        collect_runs(study_dir)


def test_build_dispatches_study_and_root(tmp_path, make_study):
    a = make_study(DEGRADES_SMALL, name="a")
    b = make_study(DEGRADES_SMALL, name="b", with_kind=False)  # kind from runs/degradation/<name>
    index = build_any(tmp_path / "runs")
    assert (a / "report.html").is_file() and (b / "report.html").is_file()
    page = index.read_text()
    assert 'href="degradation/a/report.html"' in page and 'href="degradation/b/report.html"' in page
    assert build_any(a) == a / "report.html"
    (a / "study.json").write_text('{"study": "lesion-of-nothing"}')
    with pytest.raises(ValueError, match="unknown study kind"):
        build_any(a)


DEGRADES_SMALL = {("plain", 8): [(0.05, 0.08)], ("plain", 20): [(0.09, 0.12)],
                  ("residual", 8): [(0.05, 0.08)], ("residual", 20): [(0.04, 0.07)]}  # fmt: skip


def test_diverged_run_is_left_out_and_named(study_dir):
    run = study_dir / "runs" / "plain-56-s0"
    (run / "summary.json").write_text('{"name": "plain-56-s0", "status": "diverged", "steps": 120}')
    with (run / "metrics.jsonl").open("a") as f:  # what json.dumps writes for a NaN loss
        f.write('{"kind": "train", "step": 210, "train_loss": NaN, "train_error": NaN}\n')
    build_report(study_dir)
    s = _strict_json(study_dir / "summary.json")
    entry = next(r for r in s["runs"] if r["run_dir"] == "runs/plain-56-s0")
    assert entry["status"] == "diverged" and entry["final_train_error"] is None
    assert entry["model"] == "plain-56"  # from config.json
    v = s["verdict"]
    g56 = next(g for g in v["groups"] if (g["arch"], g["depth"]) == ("plain", 56))
    assert g56["n"] == 2 and g56["train_error_mean"] == pytest.approx((0.150 + 0.145) / 2)
    assert v["left_out"] == ["runs/plain-56-s0"] and "runs/plain-56-s0" in v["text"]
    assert "seed 0: —" in (study_dir / "report.html").read_text()


def test_study_json_as_the_study_runner_writes_it(study_dir):
    """iters 0 (the recipe counts epochs), a full recipe dict and train overrides."""
    study = json.loads((study_dir / "study.json").read_text())
    study.update(
        iters=0, train={"lr": 0.1}, recipe={"lr": 0.1, "epochs": 60.0, "schedule": "constant"}
    )
    (study_dir / "study.json").write_text(json.dumps(study))
    text = build_report(study_dir).read_text()
    assert "trained for 200 iterations" in text and "<dd>200</dd>" in text
    assert "<dt>schedule</dt><dd>constant</dd>" in text
