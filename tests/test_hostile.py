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
        assert [p.name for p in run_dir.iterdir()] == [runs.LOCK]  # the refused run wrote nothing
    assert not run_dir.exists()  # the holder wrote nothing either: the folder it made is gone
    assert main([*argv, "--no-progress"]) == 0  # released: the run trains
    assert runs.status(run_dir) == "completed"


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["train", "--model-arg", "zero_init_residual=false", "--iters", "1"], "True or False"),
        (
            ["train", "--model", "resmlp-4", "--model-arg", "width=abc", "--iters", "1"],
            "integer from 1 to 65,536",
        ),
        (["export", "--model", "resnet20", "--in-chans", "-1"], "integer from 1 to 4,096"),
        (["export", "--model", "resnet20", "--img-size", "0"], "integers from 1 to 8,192"),
        (["eval", "--model", "resmlp-4", "--weights", "w", "--device", "tpu"], "device must be"),
        (["eval", "--model", "resmlp-4", "--weights", "w", "--num-threads", "-1"], "integer >= 0"),
        (["eval", "--model", "resmlp-4", "--weights", "w", "--std", "nan"], "finite numbers"),
        (["eval", "--model", "resmlp-4", "--weights", "w", "--std", "0"], "must be > 0"),
        (["train", "--model-arg", "num_classes=0", "--iters", "1"], "come from the dataset"),
        (["eval", "--model", "resmlp-4", "--weights", "w", "--model-arg", "in_chans=3"], "--data"),
    ],
)
def test_silently_wrong_values_are_refused(argv, expected, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if argv[0] == "export":
        argv = [*argv, "--out", "m.onnx"]
    elif argv[0] == "train":
        argv = [*argv, "--out", "out"]
    _one_line_error(capsys, argv, expected)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        (dict(zero_init_residual="false"), "True or False"),
        (dict(stride_in_1x1="no"), "True or False"),
        (dict(num_classes=0), "num_classes must be"),
        (dict(in_chans=0), "in_chans must be"),
        (dict(img_size=-8), "img_size must be"),
    ],
)
def test_create_model_checks_what_it_is_given(kwargs, expected):
    from reslab.models import create_model

    with pytest.raises(ValueError, match=expected):
        create_model("resnet20", **kwargs)
    with pytest.raises(ValueError, match="must be a string"):
        create_model(None)


def test_to_residual_says_why_it_formed_no_block():
    import torch

    from reslab.models import to_residual

    seq = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    with pytest.raises(ValueError, match="no block of 4 weight layers"):
        to_residual(seq, every=4, example_input=torch.randn(2, 4))
    with pytest.raises(ValueError, match="must be integers"):
        to_residual(seq, every="2", example_input=torch.randn(2, 4))


def test_resume_of_a_finished_run_checks_its_model_without_config_json(tmp_path, capsys):
    argv = ["train", "--model", "resmlp-4", "--iters", "2", "--out", str(tmp_path), "--name", "r"]
    assert main([*argv, "--no-progress"]) == 0
    (tmp_path / "r" / runs.CONFIG).unlink()
    before = {p: p.read_bytes() for p in (tmp_path / "r").rglob("*") if p.is_file()}
    argv[2] = "resmlp-6"
    _one_line_error(capsys, [*argv, "--resume", "--no-progress"], "not model 'resmlp-6'")
    assert {p: p.read_bytes() for p in (tmp_path / "r").rglob("*") if p.is_file()} == before


def test_a_full_disk_while_writing_json_keeps_the_old_file(tmp_path, monkeypatch):
    import errno
    from pathlib import Path

    path = runs.write_json(tmp_path / runs.SUMMARY, {"status": "completed"})
    before = path.read_bytes()

    def full(self, data, *args, **kwargs):
        with open(self, "wb") as f:
            f.write(data[:3])  # part of it lands, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(OSError, match=f"^could not write {path}: No space left"):
        runs.write_json(path, {"status": "diverged"})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [runs.SUMMARY]  # no temp file left


def test_the_lock_holds_across_processes_and_dies_with_its_holder(tmp_path, capsys):
    import signal
    import subprocess
    import sys

    run_dir = tmp_path / "c1"
    ready = tmp_path / "ready"
    holder = subprocess.Popen(  # another process writing this run, as a second `reslab train` would
        [
            sys.executable,
            "-c",
            "import sys, time, pathlib; from reslab.training import runs\n"
            "with runs.lock(sys.argv[1]):\n"
            "    (pathlib.Path(sys.argv[1]) / 'metrics.jsonl').write_text('')\n"
            "    pathlib.Path(sys.argv[2]).touch(); time.sleep(60)",
            str(run_dir),
            str(ready),
        ]
    )
    try:
        while not ready.exists():
            assert holder.poll() is None, "the lock holder died"
        argv = ["train", "--model", "resmlp-4", "--iters", "2", "--out", str(tmp_path)]
        _one_line_error(capsys, [*argv, "--name", "c1", "--no-progress"], "another reslab process")
        assert sorted(p.name for p in run_dir.iterdir()) == [runs.LOCK, runs.METRICS]
        holder.send_signal(signal.SIGKILL)  # killed mid-run: the OS releases its lock
        holder.wait()
        assert main([*argv, "--name", "c1", "--resume", "--no-progress"]) == 0
    finally:
        holder.kill()
    assert runs.status(run_dir) == "completed"
