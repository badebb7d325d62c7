"""Every registered study, end to end at toy size: it trains, reports, rebuilds the same report from its
folder alone, rejects bad options in one line before writing anything, and documents every option."""

from __future__ import annotations

import csv
import dataclasses
import json

import pytest

import reslab
from reslab.cli import main
from reslab.studies import NAMES, base, build_report, get, list_studies, run_study
from reslab.training import runs
from reslab.training.config import TrainConfig


@pytest.fixture(scope="module", params=NAMES)
def toy(request, tmp_path_factory):
    """(study, its toy study folder, the summary `run_study` returned)."""
    study = get(request.param)
    out = tmp_path_factory.mktemp(study.name)
    summary = run_study(study.name, out=str(out), name="toy", **study.toy)
    return study, out / "toy", summary


def test_registry_is_the_public_list():
    assert list_studies() == list(NAMES) == reslab.list_studies()
    for name in NAMES:
        assert get(name).name == name
    with pytest.raises(ValueError, match="choose from"):
        get("nosuchstudy")


def test_toy_study_writes_its_folder(toy):
    study, folder, summary = toy
    for name in (runs.STUDY, runs.SUMMARY, runs.REPORT, runs.ENV):
        assert (folder / name).is_file(), name
    env = runs.read_json(folder / runs.ENV)  # the study's own provenance, for the results page
    assert env["argv"] and env["device_name"] and env["date"].endswith("+00:00")
    assert runs.read_json(folder / runs.STUDY)["study"] == study.name
    assert summary["verdict"]["status"], summary["verdict"]
    assert json.loads((folder / runs.SUMMARY).read_text()) == summary
    assert '<section class="verdict' in (folder / runs.REPORT).read_text()
    with open(folder / "results.csv", newline="") as f:  # one row per run, for pandas or a sheet
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == [p.name for p in runs.run_dirs(folder)]
    for row in rows:
        s = runs.read_summary(folder / runs.RUNS / row["run"])
        assert row["status"] == s["status"]
        if s["status"] == "completed":
            assert float(row["final_test_error"]) == s["final_test_error"]


def test_report_rebuilds_from_the_folder_alone(toy, tmp_path):
    study, folder, summary = toy
    import shutil

    copy = tmp_path / study.name / "copy"
    shutil.copytree(folder, copy)
    (copy / runs.SUMMARY).unlink()
    (copy / runs.REPORT).unlink()
    assert build_report(copy) == copy / runs.REPORT
    assert runs.read_json(copy / runs.SUMMARY) == summary


def test_rerun_trains_nothing_and_gives_the_same_summary(toy, capsys):
    study, folder, summary = toy
    again = run_study(study.name, out=str(folder.parent), name="toy", **study.toy)
    assert again == summary


def test_page_leads_with_the_verdict_and_ends_with_the_setup(toy):
    _, folder, _ = toy
    page = (folder / runs.REPORT).read_text()
    verdict, setup = page.index('class="verdict'), page.index("<details>")
    first_figure = page.find("<figure>")
    assert verdict < setup and (first_figure == -1 or verdict < first_figure < setup)
    assert page.count("<details>") == 1 and page.index("</details>") > setup


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    "args, expected",
    [(["--preset", "nosuch"], "choose from"), (["--batch-size", "0"], "batch_size must be")],
)
def test_bad_option_is_one_line_before_anything_is_written(name, args, expected, tmp_path, capsys):
    out = tmp_path / "out"
    assert main([name, *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0] and "Traceback" not in err[0], err
    assert not out.exists()


@pytest.mark.parametrize("name", NAMES)
def test_help_lists_every_option(name, capsys):
    study = get(name)
    with pytest.raises(SystemExit) as e:
        main([name, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: reslab {name}" in out and study.help.split(" (")[0] in " ".join(out.split())
    own = [f for f in dataclasses.fields(study.config) if f.name not in ("preset", "train")]
    engine = [f for f in dataclasses.fields(TrainConfig) if f.name not in base.OWNED + study.owns]
    for f in own + engine:
        flag = "--" + f.metadata.get("cli", f.name).replace("_", "-")
        assert flag in out, flag
    for preset in study.presets:
        assert preset in out
