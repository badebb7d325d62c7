"""study.json and a study's summary.json of the wrong shape (issue 23, cause 5, the study side): a
field of the wrong type or a key a report needs left out gives one line naming the file, the field
and what is allowed (exit 2), through `reslab report`, a study's rerun and the Python API, and no
file changes. Built on the old study folders kept in tests/fixtures (real folders, written by
reslab e7ce78a), so the checks also hold for folders written before today's schema."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reslab import run_study, studies
from reslab.cli import main
from reslab.studies.results import write_results
from reslab.training import runs
from test_hostile_properties import json_values, small
from test_hostile_round2 import one_line_error, snapshot

FIXTURES = Path(__file__).parent / "fixtures" / "studies-e7ce78a"


def study_copy(tmp_path: Path, kind: str) -> Path:
    folder = tmp_path / kind / "toy"
    shutil.copytree(FIXTURES / kind / "toy", folder)
    return folder


def edit(path: Path, **changes) -> None:
    """Set (or, with the value `...`, delete) top-level fields of the JSON object in `path`."""
    record = json.loads(path.read_text())
    for key, value in changes.items():
        record.pop(key, None) if value is ... else record.__setitem__(key, value)
    path.write_text(json.dumps(record))


@pytest.mark.parametrize(
    "kind, changes, expected",
    [
        ("degradation", dict(seeds=5), "field 'seeds' should be a list of whole numbers, got 5"),
        ("degradation", dict(runs=[5]), "field 'runs' should be a list of names or objects"),
        ("degradation", dict(depths=["2", 6]), "field 'depths' should be a list of whole numbers"),
        ("degradation", dict(width=True), "field 'width' should be a whole number, got true"),
        ("depth", dict(clip="1.0"), "field 'clip' should be a number, got \"1.0\""),
        ("depth", dict(recipe=[]), "field 'recipe' should be an object, got []"),
        ("lesion", dict(runs=[5]), "field 'runs' should be a list of texts, got [5]"),
        ("gradients", dict(data_dir=3), "field 'data_dir' should be text or null, got 3"),
        ("shortcuts", dict(schema=1, paper_column=...), "has no 'paper_column' field"),
        (
            "identity",
            dict(methods="zero"),
            "field 'methods' should be a list of texts, got \"zero\"",
        ),
    ],
)
def test_a_study_json_of_the_wrong_shape_is_named_by_report(kind, changes, expected, tmp_path, capsys):  # fmt: skip
    folder = study_copy(tmp_path, kind)
    edit(folder / runs.STUDY, **changes)
    before = snapshot(tmp_path)
    line = one_line_error(capsys, ["report", str(folder)])
    assert line.startswith(f"reslab report: error: {folder / runs.STUDY}") and expected in line
    assert snapshot(tmp_path) == before
    with pytest.raises(ValueError, match="should be|has no"):  # the Python API says the same
        studies.build_report(folder)
    assert snapshot(tmp_path) == before


def test_a_rerun_onto_a_bad_study_json_stops_before_training(tmp_path, capsys):
    folder = study_copy(tmp_path, "degradation")
    edit(folder / runs.STUDY, seeds=5)
    before = snapshot(tmp_path)
    argv = ["degradation", "--out", str(tmp_path / "degradation"), "--name", "toy"]
    argv += ["--depths", "2", "--seeds", "0", "--iters", "4", "--width", "8"]
    line = one_line_error(capsys, argv)
    assert f"{folder / runs.STUDY}: field 'seeds' should be a list of whole numbers" in line
    with pytest.raises(ValueError, match="field 'seeds' should be a list of whole numbers"):
        run_study(
            "degradation", out=str(tmp_path / "degradation"), name="toy", depths=(2,), seeds=(0,)
        )
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    "changes, expected",
    [
        (dict(verdict=...), "has no 'verdict' field"),
        (dict(verdict={"status": 5, "text": "t"}), "field 'verdict.status' should be text, got 5"),
        (dict(seeds=5), "field 'seeds' should be a list of whole numbers, got 5"),
        (dict(runs=[5]), "is not a depth summary as reslab writes it"),  # its rows: the report's
    ],
)
def test_a_summary_of_the_wrong_shape_is_named_by_the_results_page(changes, expected, tmp_path):
    folder = study_copy(tmp_path, "depth")
    edit(folder / runs.SUMMARY, **changes)
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match="reslab report") as e:
        write_results(tmp_path, tmp_path / "results.md")
    assert str(e.value).startswith(str(folder / runs.SUMMARY)) and expected in str(e.value)
    assert "\n" not in str(e.value) and snapshot(tmp_path) == before


def test_report_writes_a_bad_summary_anew_from_the_folder(tmp_path, capsys):
    """`reslab report` rebuilds summary.json (the report's own output) before the results page."""
    folder = study_copy(tmp_path, "depth")
    good = json.loads((folder / runs.SUMMARY).read_text())
    edit(folder / runs.SUMMARY, runs=[5])
    assert main(["report", str(folder), "--results", str(tmp_path / "r.md")]) == 0
    cells = sorted((r["depth"], r["seed"], r["final_train_loss"]) for r in good["runs"])
    rebuilt = json.loads((folder / runs.SUMMARY).read_text())["runs"]
    assert sorted((r["depth"], r["seed"], r["final_train_loss"]) for r in rebuilt) == cells


# The degradation study.json's fields and what each may hold, written out independently of
# reslab's own check: a generated value that fits none of these must be refused.
FITS = {
    "depths": lambda v: isinstance(v, list) and all(type(x) is int for x in v),
    "seeds": lambda v: isinstance(v, list) and all(type(x) is int for x in v),
    "archs": lambda v: isinstance(v, list) and all(type(x) is str for x in v),
    "iters": lambda v: type(v) is int,
    "width": lambda v: type(v) is int,
    "fit_gate": lambda v: type(v) in (int, float),
    "family": lambda v: type(v) is str,
    "data_dir": lambda v: v is None or type(v) is str,
    "train": lambda v: isinstance(v, dict),
    "recipe": lambda v: isinstance(v, dict),
    "runs": lambda v: isinstance(v, list) and all(isinstance(x, (str, dict)) for x in v),
}


@small
@given(field=st.sampled_from(sorted(FITS)), value=json_values, data=st.data())
def test_any_misfit_in_a_study_json_is_one_line_and_changes_nothing(field, value, data, tmp_path_factory):  # fmt: skip
    if FITS[field](value):  # make it misfit: wrap it in a list of itself, or put it in a list
        value = data.draw(st.sampled_from([{"v": value}, [value, {"v": 1}], "x"]))
        if FITS[field](value):
            value = 1.5
    tmp_path = tmp_path_factory.mktemp("study")
    folder = study_copy(tmp_path, "degradation")
    edit(folder / runs.STUDY, **{field: value})
    before = snapshot(tmp_path)
    with pytest.raises(ValueError) as e:
        studies.build_report(folder)
    assert str(e.value).startswith(f"{folder / runs.STUDY}: field {field!r} should be")
    assert "\n" not in str(e.value) and snapshot(tmp_path) == before
