"""Degradation report from a real-format study folder: files, summary schema, and the verdict rule on
constructed numbers (effect present, absent, reversed, within seed noise, too few depths)."""

from __future__ import annotations

import json
import statistics

import pytest

from reslab.studies import build_report as build_any
from reslab.studies.degradation import FIT
from reslab.studies.degradation import report as degradation
from reslab.studies.degradation.report import build_report, collect_runs, format_table
from reslab.studies.degradation.rule import FAILED, FLOOR, MOVE, verdict


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
    assert v.status == "shown"
    assert v.numbers["plain"]["margin"] == pytest.approx(0.105 - 0.052)
    assert v.numbers["residual"]["margin"] == pytest.approx(0.031 - 0.05)
    assert v.numbers["plain"]["tolerance"] == FLOOR  # seed spread is tiny, the floor decides
    assert (v.numbers["plain"]["shallow_mean"], v.numbers["plain"]["deep_mean"]) == pytest.approx(
        (0.052, 0.105)
    )
    # the sentence is rendered from those numbers
    assert "10.50%" in v.text and "5.20%" in v.text and "+5.30 pp" in v.text


def test_effect_absent_says_so_with_numbers():
    runs = _runs({("plain", 20): [0.05, 0.052, 0.054], ("plain", 56): [0.053, 0.055, 0.051],
                  ("residual", 20): [0.05, 0.051, 0.049], ("residual", 56): [0.03, 0.031, 0.032]})  # fmt: skip
    v = verdict(runs)
    assert v.status == "not_shown" and not v.numbers["plain"]["degrades"]
    assert v.numbers["plain"]["deep_mean"] == pytest.approx(0.053)
    assert v.numbers["plain"]["margin"] == pytest.approx(0.001)


def test_residual_degrades_too():
    runs = _runs({("plain", 20): [0.05, 0.052], ("plain", 56): [0.10, 0.11],
                  ("residual", 20): [0.04, 0.041], ("residual", 56): [0.09, 0.092]})  # fmt: skip
    v = verdict(runs)
    assert v.status == "residual_degrades_too" and v.numbers["residual"]["degrades"]


def test_difference_within_seed_spread_is_not_degradation():
    # 3 pp apart, above the 1 pp floor but well inside 2 x the shallow nets' 6 pp seed std
    runs = _runs({("plain", 20): [0.04, 0.10, 0.16], ("plain", 56): [0.07, 0.13, 0.19]})
    v = verdict(runs)
    assert v.numbers["plain"]["noise_std"] == pytest.approx(statistics.stdev([0.04, 0.10, 0.16]))
    assert v.numbers["plain"]["tolerance"] == pytest.approx(
        2 * statistics.stdev([0.04, 0.10, 0.16])
    )
    assert v.numbers["plain"]["margin"] == pytest.approx(0.03)
    assert v.status == "not_shown"


def test_a_deep_groups_own_spread_is_not_forgiven():
    """The first run of the three-arm default: 64-layer residual nets at 8.0, 52.6 and 6.9% against
    0% at 4 layers. Pooled with the deep spread the tolerance was 37 pp and the arm "did not degrade";
    the noise is the shallow nets' (0 here), so it degrades, and by more than a quarter of plain's
    rise (0.00 -> 79.61%)."""
    runs = _runs({("plain", 4): [0.0, 0.0, 0.0], ("plain", 64): [0.8037, 0.8058, 0.7788],
                  ("residual", 4): [0.0, 0.0, 0.0], ("residual", 64): [0.0798, 0.5257, 0.0693]})  # fmt: skip
    v = verdict(runs)
    assert v.numbers["residual"]["tolerance"] == FLOOR and v.numbers["residual"]["degrades"]
    assert v.numbers["residual"]["margin"] == pytest.approx(0.2249, abs=1e-4)
    assert v.numbers["deepest"][
        "residual_better"
    ]  # 57 pp below plain, beyond the pooled 2 x 18.4 pp
    assert v.status == "residual_degrades_too"


def test_deepest_comparison_pools_both_arms_by_degrees_of_freedom():
    a, b = [0.05, 0.07], [0.20, 0.30, 0.10, 0.25]
    v = verdict(_runs({("plain", 20): [0.0], ("plain", 56): b, ("residual", 56): a}))
    ss = (len(a) - 1) * statistics.variance(a) + (len(b) - 1) * statistics.variance(b)
    pooled = (ss / (len(a) + len(b) - 2)) ** 0.5
    assert v.numbers["deepest"]["tolerance"] == pytest.approx(2 * pooled)
    assert v.numbers["deepest"]["difference"] == pytest.approx(statistics.fmean(b) - 0.06)


@pytest.mark.parametrize("margin, degrades", [(0.005, False), (0.02, True)])
def test_single_seed_uses_the_floor(margin, degrades):
    v = verdict(_runs({("plain", 20): [0.05], ("plain", 56): [0.05 + margin]}))
    assert v.numbers["plain"]["noise_std"] == 0 and v.numbers["plain"]["tolerance"] == FLOOR
    assert v.numbers["plain"]["degrades"] is degrades
    assert v.status == ("plain_degrades" if degrades else "not_shown")


def test_single_depth_is_insufficient():
    v = verdict(
        _runs({("plain", 20): [0.05, 0.06], ("residual", 20): [0.04], ("residual", 56): [0.03]})
    )
    assert (
        v.status == "insufficient"
        and v.numbers["plain"] is None
        and v.numbers["residual"] is not None
    )
    assert [g["depth"] for g in v.numbers["groups"] if g["arch"] == "plain"] == [20]
    assert (
        verdict(_runs({("residual", 20): [0.04], ("residual", 56): [0.03]})).status
        == "insufficient"
    )
    assert verdict([]).status == "insufficient"


def test_shallowest_and_deepest_are_compared_and_a_failed_run_scores_one():
    runs = _runs(
        {("plain", 8): [0.05, 0.06], ("plain", 20): [0.30], ("plain", 110): [0.12, 0.13, None]}
    )
    v = verdict(runs)
    assert (v.numbers["plain"]["shallow_depth"], v.numbers["plain"]["deep_depth"]) == (8, 110)
    assert v.numbers["plain"]["margin"] == pytest.approx((0.12 + 0.13 + FAILED) / 3 - 0.055)
    assert v.numbers["plain"]["failed_depths"] == [110] and v.numbers["plain"]["degrades"]
    g110 = next(g for g in v.numbers["groups"] if g["depth"] == 110)
    assert g110["n"] == 3 and g110["failed"] == 1
    assert g110["train_error_std"] == pytest.approx(statistics.stdev([0.12, 0.13, 1.0]))
    assert v.numbers["plain"]["tolerance"] == pytest.approx(
        max(FLOOR, 2 * statistics.stdev([0.05, 0.06]))
    )
    assert v.numbers["failed"] == ["runs/plain-110-s2"]


def _spread(errs: list[float], d: float = 0.002) -> list[float]:
    """Two seeds a small spread apart around each of `errs`' values."""
    return [max(0.0, errs[0] - d), errs[0] + d]


# What issue 13 measured before the arms were separated (digits, width 64 + BN, lr 0.02, 60 epochs,
# 2 seeds; training error at 4/16/64 layers): plain collapses, residual at He init rises a little,
# the zero-init arm does not rise at all.
ISSUE_13 = {"plain": (0.002, 0.124, 0.899), "residual": (0.007, 0.017, 0.051),
            "zeroinit": (0.002, 0.009, 0.007)}  # fmt: skip


def _issue_13(arms=("plain", "residual", "zeroinit")) -> list[dict]:
    return _runs(
        {(a, d): _spread([e]) for a in arms for d, e in zip((4, 16, 64), ISSUE_13[a], strict=True)}
    )


def test_he_init_residual_that_rises_a_little_degrades_far_less_than_plain():
    v = verdict(_issue_13())
    assert v.status == "residual_degrades_less"
    assert v.numbers["plain"]["degrades"] and v.numbers["residual"]["degrades"]
    assert v.numbers["residual"]["margin"] == pytest.approx(0.051 - 0.007)
    assert v.numbers["deepest"]["depth"] == 64 and v.numbers["deepest"]["residual_better"]
    assert not v.numbers["extra"]["zeroinit"]["degrades"]
    assert (
        v.numbers["residual"]["margin"] <= v.thresholds["far_less"] * v.numbers["plain"]["margin"]
    )


def test_the_zero_init_arm_never_decides_the_verdict():
    judged = verdict(_issue_13(("plain", "residual")))
    assert judged.status == verdict(_issue_13()).status and judged.numbers["extra"] == {}
    # a study with only plain and zero-init nets (as older studies ran) has no judged residual arm
    only = verdict(_issue_13(("plain", "zeroinit")))
    assert only.status == "plain_degrades" and only.numbers["residual"] is None


def test_papers_table_2_imagenet_numbers():
    """He et al. 2015 Table 2 (top-1 %, 10-crop, ImageNet val; one run each): plain-18 27.94,
    plain-34 28.54, ResNet-18 27.88, ResNet-34 25.03. The plain rise, 0.60 pp, is inside the 1 pp
    floor, so by this rule the table alone does not show degradation (the paper shows it with the
    training curves of Fig. 4); the deeper ResNet is clearly better than the deeper plain net."""
    v = verdict(_runs({("plain", 18): [0.2794], ("plain", 34): [0.2854],
                       ("residual", 18): [0.2788], ("residual", 34): [0.2503]}))  # fmt: skip
    assert v.status == "not_shown" and v.numbers["plain"]["margin"] == pytest.approx(0.0060)
    assert not v.numbers["residual"]["degrades"] and v.numbers["residual"][
        "margin"
    ] == pytest.approx(-0.0285)
    assert v.numbers["deepest"]["residual_better"] and v.numbers["deepest"][
        "difference"
    ] == pytest.approx(0.0351)


def test_a_diverged_deepest_residual_run_counts_against_its_arm():
    runs = _runs({("plain", 4): [0.0, 0.0], ("plain", 64): [0.80, 0.82],
                  ("residual", 4): [0.0, 0.0], ("residual", 64): [0.01, None]})  # fmt: skip
    v = verdict(runs)
    assert v.numbers["residual"]["failed_depths"] == [64] and v.numbers["residual"]["degrades"]
    assert v.status == "residual_degrades_too"
    assert v.numbers["failed"] == ["runs/residual-64-s1"]


def test_residual_rising_more_than_a_quarter_of_plain_degrades_too():
    runs = _runs({("plain", 4): [0.0, 0.0], ("plain", 64): [0.40, 0.40],
                  ("residual", 4): [0.0, 0.0], ("residual", 64): [0.11, 0.11]})  # fmt: skip
    assert verdict(runs).status == "residual_degrades_too"
    runs[-1]["final_train_error"] = runs[-2]["final_train_error"] = 0.09
    assert verdict(runs).status == "residual_degrades_less"


def test_group_means_match_the_folder(study_dir, degrades):
    v = verdict(collect_runs(study_dir)[0])
    assert len(v.numbers["groups"]) == len(degrades)
    for g in v.numbers["groups"]:
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
    runs, _ = collect_runs(study_dir)
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
    head = "arm depth model params seeds train error test error"
    assert lines[0].split() == head.split()
    assert any(ln.split()[:2] == ["plain", "56"] and "14.50 ± 0.50%" in ln for ln in lines)
    assert "verdict: shown" in text


def test_bad_folders(tmp_path, study_dir):
    with pytest.raises(FileNotFoundError, match="not a degradation study"):
        build_report(tmp_path / "nothing")
    (study_dir / "runs" / "plain-56-s0").rename(study_dir / "runs" / "weird")
    (study_dir / "runs" / "weird" / "config.json").write_text("{}")
    (study_dir / "runs" / "weird" / "summary.json").write_text('{"model": "mystery"}')
    with pytest.raises(ValueError, match="cannot tell arm/depth/seed"):
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


def test_diverged_run_counts_as_failed_and_is_named(study_dir):
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
    assert g56["n"] == 3 and g56["failed"] == 1
    assert g56["train_error_mean"] == pytest.approx((FAILED + 0.150 + 0.145) / 3)
    assert v["failed"] == ["runs/plain-56-s0"]
    assert "seed 0: diverged" in (study_dir / "report.html").read_text()


def test_old_zero_init_residual_runs_are_the_zeroinit_arm(study_dir):
    """Studies made before the arms were separated zero-initialised their residual arm."""
    for run in (study_dir / "runs").glob("residual-*"):
        config = json.loads((run / "config.json").read_text())
        config["model_kwargs"] = {"zero_init_residual": True}
        (run / "config.json").write_text(json.dumps(config))
    build_report(study_dir)
    s = _strict_json(study_dir / "summary.json")
    assert {r["arch"] for r in s["runs"]} == {"plain", "zeroinit"}
    assert s["verdict"]["residual"] is None and s["verdict"]["status"] == "plain_degrades"
    assert "zero-init branches (extra arm)" in (study_dir / "report.html").read_text()


def test_study_json_as_the_study_runner_writes_it(study_dir):
    """iters 0 (the recipe counts epochs), a full recipe dict and train overrides."""
    study = json.loads((study_dir / "study.json").read_text())
    study.update(
        iters=0, train={"lr": 0.1}, recipe={"lr": 0.1, "epochs": 60.0, "schedule": "constant"}
    )
    (study_dir / "study.json").write_text(json.dumps(study))
    text = build_report(study_dir).read_text()
    assert "200 iterations each" in text and "<dd>200</dd>" in text
    assert "<dt>schedule</dt><dd>constant</dd>" in text


# ---------------------------------------------------------------- the gates (issue 21), declared first


def _converged(finals: dict, late: dict | None = None) -> list[dict]:
    """_runs with a late training error per run: equal to the final one (converged) unless
    late[(arch, depth)] gives how far above the final error each seed was at 90% of the run."""
    runs = _runs(finals)
    for r in runs:
        fall = (late or {}).get((r["arch"], r["depth"]), 0.0)
        if r["final_train_error"] is not None:
            r.update(late_train_error=r["final_train_error"] + fall, n_train=1442)
    return runs


# Figure 6 of He et al. 2015 in shape, on a training set the shallow nets fit: deeper plain nets end
# higher, deeper residual nets lower.
FIG_6 = {("plain", 4): [0.0, 0.0, 0.0], ("plain", 16): [0.01, 0.02, 0.015],
         ("plain", 64): [0.30, 0.35, 0.28], ("residual", 4): [0.004, 0.005, 0.006],
         ("residual", 16): [0.002, 0.001, 0.002], ("residual", 64): [0.0, 0.0, 0.001]}  # fmt: skip


def test_figure_6_shaped_numbers_show_degradation():
    v = verdict(_converged(FIG_6), fit=FIT)
    assert (
        v.status == "shown"
        and v.numbers["gates"]["moving"] == []
        and v.numbers["gates"]["unfit"] == []
    )
    assert v.numbers["n_train"] == 1442


def test_a_slow_but_converging_deep_net_is_not_converged_not_degraded():
    """The deep residual nets still fall 3 pp over the last tenth: a slow start, not degradation."""
    finals = {**FIG_6, ("residual", 64): [0.05, 0.06, 0.04]}
    v = verdict(_converged(finals, {("residual", 64): 0.03}), fit=FIT)
    assert (
        v.status == "not_converged" and v.numbers["residual"]["degrades"]
    )  # what it would have said
    assert v.numbers["gates"]["moving"] == [
        {"arch": "residual", "depth": 64, "fall": pytest.approx(0.03)}
    ]


@pytest.mark.parametrize("fall, status", [(MOVE - 0.001, "shown"), (MOVE + 0.001, "not_converged")])
def test_the_convergence_gate_is_half_a_point(fall, status):
    assert verdict(_converged(FIG_6, {("plain", 16): fall}), fit=FIT).status == status


def test_a_rising_late_error_is_not_slow_convergence():
    """Error that went up over the last tenth is not a net still learning: judged as it ends."""
    v = verdict(_converged(FIG_6, {("plain", 64): -0.05}), fit=FIT)
    assert v.status == "shown"


def test_a_truly_degrading_residual_arm_says_so():
    finals = {**FIG_6, ("residual", 64): [0.20, 0.25, 0.22]}
    v = verdict(_converged(finals), fit=FIT)
    assert v.status == "residual_degrades_too"


@pytest.mark.parametrize("shallow, status", [(FIT - 0.001, "shown"), (FIT + 0.001, "not_fit")])
def test_the_fit_gate_asks_the_shallowest_nets_to_fit(shallow, status):
    finals = {**FIG_6, ("residual", 4): [shallow] * 3}
    v = verdict(_converged(finals), fit=FIT)
    assert v.status == status
    if status == "not_fit":
        assert v.numbers["gates"]["unfit"] == [
            {"arch": "residual", "depth": 4, "mean": pytest.approx(shallow)}
        ]
    assert verdict(_converged(finals)).status == "shown"  # no gate unless the study declares one


def test_one_seed_cannot_make_an_arm_degrade():
    """Mean rise 26.7 pp, but two of three seeds fit as well as the shallow nets: the median does
    not rise, so it is not degradation (a diverged seed would be: it counts against its arm)."""
    finals = {**FIG_6, ("plain", 64): [0.0, 0.0, 0.80]}
    v = verdict(_converged(finals), fit=FIT)
    assert (
        v.numbers["plain"]["margin"] > v.numbers["plain"]["tolerance"]
        and v.numbers["plain"]["median_margin"] == 0
    )
    assert not v.numbers["plain"]["degrades"] and v.status == "not_shown"
    finals[("plain", 64)] = [0.0, 0.0, None]
    assert verdict(_converged(finals), fit=FIT).status == "shown"


def test_convergence_unknown_is_named_not_gated():
    v = verdict(_runs(FIG_6), fit=FIT)  # runs written without training-set evaluations
    assert v.status == "shown" and "plain-64" in v.numbers["gates"]["unchecked"]


@pytest.mark.parametrize(
    "status, says",
    [("shown", "shows the effect the paper reports"), ("residual_degrades_too", "does not reproduce"),
     ("not_converged", "no verdict"), ("not_shown", "does not show")],
)  # fmt: skip
def test_the_analogue_sentence_follows_the_verdict(status, says):
    text = degradation.setting({"data": "digits", "runs": [], "verdict": {"status": status}})
    assert says in text
    assert ("shows the effect" in text) == (status == "shown")


def test_late_error_read_from_a_real_format_folder(make_study):
    """eval lines with train_eval_error (the engine's eval_train) give the 90% point; the gate and
    the fit gate recorded in study.json decide."""
    finals = {(a, d): [(e, e + 0.03, e + (0.02 if (a, d) == ("plain", 20) else 0.0))] * 2
              for (a, d), e in {("plain", 8): 0.0, ("plain", 20): 0.2, ("residual", 8): 0.0,
                                ("residual", 20): 0.0}.items()}  # fmt: skip
    study_dir = make_study(finals, fit_gate=FIT)
    runs, _ = collect_runs(study_dir)
    plain20 = next(r for r in runs if (r["arch"], r["depth"]) == ("plain", 20))
    assert plain20["late_step"] == 180 and plain20["late_train_error"] == pytest.approx(0.22)
    assert plain20["n_train"] == 1442
    s = degradation.write_summary(study_dir)
    assert s["verdict"]["status"] == "not_converged" and s["verdict"]["gates"]["fit"] == FIT


def test_a_minority_of_rising_seeds_is_said_to_be_one():
    """lr 0.2 in the README's secondary table: 64-layer residual seeds at 0.14, 0.00, 18.38%."""
    finals = {**FIG_6, ("residual", 64): [0.0014, 0.0, 0.1838]}
    v = verdict(_converged(finals), fit=FIT)
    assert (
        v.status == "shown" and v.numbers["residual"]["margin"] > v.numbers["residual"]["tolerance"]
    )
    r = v.numbers["residual"]
    assert r["median_margin"] <= r["tolerance"] < r["margin"]  # its median did not rise
