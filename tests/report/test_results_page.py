"""`reslab report PATH --results FILE`: the Markdown results page, written from study folders alone."""

from __future__ import annotations

import json

from reslab import cli
from reslab.studies.degradation.report import format_table, write_summary
from reslab.studies.results import write_results

FINALS = {("plain", 4): [(0.0, 0.02), (0.0, 0.03)], ("plain", 64): [(0.80, 0.82), (0.85, 0.86)],
          ("residual", 4): [(0.0, 0.02), (0.0, 0.025)], ("residual", 64): [(0.0, 0.03), (0.0, 0.03)]}  # fmt: skip


def _env(run_dir, argv):
    env = {"device_name": "AMD EPYC", "cpu_family_model": "25/17", "cpu_capability": "AVX512",
           "torch": "2.14.1", "git_commit": "0123456789abcdef", "argv": argv}  # fmt: skip
    (run_dir / "env.json").write_text(json.dumps(env))


def test_the_page_holds_each_studys_own_table_command_and_machine(make_study, tmp_path):
    a = make_study(FINALS, name="a")
    b = make_study({**FINALS, ("plain", 64): [(0.0, 0.02), (0.0, 0.02)]}, name="b")
    _env(a / "runs" / "plain-64-s1", ["/somewhere/.venv/bin/reslab", "degradation", "--name", "a"])
    out = tmp_path / "docs" / "results.md"
    assert cli.main(["report", str(tmp_path / "runs"), "--results", str(out)]) == 0
    page = out.read_text()
    # the study's own terminal table, computed from its folder: the numbers cannot drift
    assert format_table(write_summary(a)) in page and format_table(write_summary(b)) in page
    assert page.index("degradation/a") < page.index("degradation/b")
    assert "- command: `reslab degradation --name a`" in page
    assert "AMD EPYC (family/model 25/17), AVX512, torch 2.14.1" in page
    assert "- verdict: **shown**" in page and "- verdict: **not_shown**" in page
    assert "reslab commit: 0123456789" in page


def test_no_study_no_page(tmp_path):
    out = tmp_path / "results.md"
    out.write_text("kept")
    assert cli.main(["report", str(tmp_path), "--results", str(out)]) == 2
    assert out.read_text() == "kept"


def test_a_study_folder_alone_makes_a_page(make_study, tmp_path):
    a = make_study(FINALS, name="a")
    page = write_results(a, tmp_path / "one.md").read_text()
    assert "## `degradation`: a" in page and "- command: unknown" in page


def test_a_study_without_runs_of_its_own_gives_the_provenance_its_command_left(tmp_path):
    """A study measured from another study's runs (the landscape study reuses the main job's) has no
    run folder to read: the env.json its command wrote in the study folder names command and machine."""
    import shutil
    from pathlib import Path

    folder = tmp_path / "runs" / "gradients" / "toy"
    shutil.copytree(
        Path(__file__).parents[1] / "fixtures" / "studies-e7ce78a" / "gradients" / "toy", folder
    )
    shutil.rmtree(folder / "runs")
    _env(folder, ["/x/bin/reslab", "landscape", "--seeds", "0"])
    env = json.loads((folder / "env.json").read_text())
    (folder / "env.json").write_text(json.dumps(env | {"date": "2026-12-05T10:11:12+00:00"}))
    page = write_results(tmp_path / "runs", tmp_path / "results.md").read_text()
    assert "- command: `reslab landscape --seeds 0`" in page
    assert (
        "- machine: AMD EPYC (family/model 25/17), AVX512, torch 2.14.1; date: 2026-12-05" in page
    )


def test_the_date_is_the_newest_runs_not_the_last_report_rebuild(make_study, tmp_path):
    """`reslab report` rewrites the study's own summary.json; the date stays its runs' (mtime)."""
    import os

    a = make_study(FINALS, name="a")
    _env(a / "runs" / "plain-64-s1", ["reslab", "degradation", "--name", "a"])
    day = 1_700_000_000  # 2023-11-14 UTC
    for run in (a / "runs").iterdir():
        os.utime(run / "summary.json", (day, day))
    for _ in range(2):  # the page, and the page again after the report was rebuilt
        cli.main(["report", str(a)])
        page = write_results(a, tmp_path / "results.md").read_text()
        assert "; date: 2023-11-14" in page
