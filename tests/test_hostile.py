"""Careless or hostile input gets one line saying what was wrong, and no file already written is
harmed (issue "Nothing lost, nothing silent": the data-loss cases). Each case: the command, the
fragment its one-line error must hold (never a word of the input itself), and the files that must be
unchanged afterwards."""

from __future__ import annotations

import json

import pytest

from reslab.cli import main
from reslab.training import runs
from reslab.training.tracking import RunLog

MINE = "<h1>mine</h1>\n"


def _one_line_error(capsys, argv, expected) -> None:
    assert main(argv) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and expected in err[0] and "Traceback" not in err[0], err


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["train", "--name", "..", "--iters", "1"], "one folder name"),
        (["train", "--name", ".", "--iters", "1"], "one folder name"),
        (["train", "--name", "a/b", "--iters", "1"], "one folder name"),
        (["degradation", "--name", ".."], "one folder name"),
        (["train", "--gamma", "-1", "--iters", "1"], "finite number > 0"),
        (["train", "--gamma", "nan", "--iters", "1"], "finite number > 0"),
        (["train", "--epochs", "inf"], "finite number >= 0"),
    ],
)
def test_bad_names_and_numbers_write_nothing(argv, expected, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "config.json").write_text(MINE)  # what `--name ..` would have overwritten
    _one_line_error(capsys, [*argv, "--out", str(out)], expected)
    assert not any(out.iterdir())
    assert (tmp_path / "config.json").read_text() == MINE


def test_report_refuses_a_folder_without_studies_and_keeps_its_index(tmp_path, capsys):
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text(MINE)
    _one_line_error(capsys, ["report", str(site)], "no study folder")
    assert (site / "index.html").read_text() == MINE


def test_report_index_never_replaces_a_page_reslab_did_not_write(tmp_path, capsys):
    from reslab.report.html import build_index

    (tmp_path / "index.html").write_text(MINE)
    with pytest.raises(FileExistsError, match="not written by reslab"):
        build_index(tmp_path)
    assert (tmp_path / "index.html").read_text() == MINE
    (tmp_path / "index.html").unlink()
    build_index(tmp_path)
    build_index(tmp_path)  # its own page it may rewrite


def test_a_bad_metrics_line_stops_the_resume_and_keeps_the_file(tmp_path):
    lines = [json.dumps({"kind": "train", "step": s, "train_loss": 1.0}) for s in (1, 2, 3, 4)]
    text = "\n".join([lines[0], "{garbage", *lines[1:]]) + "\n"
    (tmp_path / runs.METRICS).write_text(text)
    with pytest.raises(ValueError, match="line 2 is not a metrics record"):
        RunLog(tmp_path, resume_step=3)
    assert (tmp_path / runs.METRICS).read_text() == text
    # a torn last line (killed mid-write) is dropped, and lines past the checkpoint go
    (tmp_path / runs.METRICS).write_text("\n".join(lines) + '\n{"kind": "tr')
    RunLog(tmp_path, resume_step=3)
    assert runs.read_metrics(tmp_path) == [json.loads(x) for x in lines[:3]]


def test_a_run_folder_in_use_is_refused(tmp_path, capsys):
    run_dir = tmp_path / "c1"
    argv = ["train", "--model", "resmlp-4", "--iters", "2", "--out", str(tmp_path), "--name", "c1"]
    with runs.lock(run_dir):  # another process writing this run
        _one_line_error(capsys, [*argv, "--no-progress"], "being written by another reslab process")
    assert [p.name for p in run_dir.iterdir()] == [runs.LOCK]
    assert main([*argv, "--no-progress"]) == 0  # released: the run trains
    assert runs.status(run_dir) == "completed"
