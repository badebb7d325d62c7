"""The second probe of hostile input (issue 23, causes 4 to 9): weights files with legal but
unexpected contents, JSON read from disk of the wrong shape, messages that do not name the culprit,
the same folder spelled differently, the process pool, and the small ones. Each case: one line,
exit 2, and every file that existed before keeps its bytes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import safetensors.torch
import torch

from reslab.cli import main
from reslab.models import create_model, load_weights
from reslab.training import runs

DIGITS_NET = dict(num_classes=10, in_chans=1, img_size=8)
EVAL = ["eval", "--model", "resmlp-4", "--data", "digits"]


def one_line_error(capsys, argv) -> str:
    """The one line of a refused command (exit 2, no traceback, not called a bug)."""
    capsys.readouterr()
    assert main(argv) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "Traceback" not in err[0] and "bug in reslab" not in err[0], err
    return err[0]


def snapshot(folder: Path) -> dict[Path, bytes]:
    """Every file under `folder` and its bytes (the empty lock an unfinished run keeps aside)."""
    files = sorted(folder.rglob("*"))
    return {p: p.read_bytes() for p in files if p.is_file() and p.name != runs.LOCK}


# ------------------------------------------------------------------ 4 weights: legal, unexpected


@pytest.fixture(scope="module")
def state() -> dict:
    return create_model("resmlp-4", **DIGITS_NET).state_dict()


@pytest.mark.parametrize("dtype", [torch.bool, torch.int8, torch.complex64])
def test_safetensors_of_the_wrong_dtype_are_refused_not_evaluated(dtype, state, tmp_path, capsys):
    path = tmp_path / "w.safetensors"
    safetensors.torch.save_file({k: v.to(dtype) for k, v in state.items()}, path)
    line = one_line_error(capsys, [*EVAL, "--weights", str(path)])
    name = str(dtype).removeprefix("torch.")
    assert f"dtype mismatches, file vs model, (stem.0.weight {name} vs float32" in line


def test_a_half_precision_file_still_loads(state, tmp_path):
    path = tmp_path / "w.safetensors"
    safetensors.torch.save_file(
        {k: v.half() if v.is_floating_point() else v for k, v in state.items()}, path
    )
    load_weights(create_model("resmlp-4", **DIGITS_NET), path)  # load_state_dict casts


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda sd: {0: torch.zeros(1), **sd}, "1 keys are not strings (0)"),
        (lambda sd: {(1, 2): torch.zeros(1), **sd}, "1 keys are not strings ((1, 2))"),
        (lambda sd: {**sd, "x": torch.zeros(3).to_sparse()}, "1 tensors are sparse (x)"),
        (lambda sd: {k: v.to("meta") for k, v in sd.items()}, "tensors hold no data (meta)"),
    ],
    ids=["int-key", "tuple-key", "sparse", "meta"],
)
def test_pth_files_with_odd_keys_or_tensors_are_refused(change, expected, state, tmp_path, capsys):
    path = tmp_path / "w.pth"
    torch.save(change(dict(state)), path)
    before = path.read_bytes()
    line = one_line_error(capsys, [*EVAL, "--weights", str(path)])
    assert f"{path} is not a state dict: " in line and expected in line
    assert path.read_bytes() == before


# ------------------------------------------------------------------ 5 JSON read from disk


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory) -> Path:
    """A run folder as a kill at step 4 of 6 leaves it: checkpoints, metrics, no summary."""
    out = tmp_path_factory.mktemp("killed")
    argv = ["train", "--model", "resmlp-4", "--iters", "4", "--eval-every", "2", "--no-progress"]
    assert main([*argv, "--out", str(out), "--name", "r"]) == 0
    (out / "r" / runs.SUMMARY).unlink()
    (out / "r" / runs.WEIGHTS).unlink()
    return out / "r"


RESUME = ["train", "--model", "resmlp-4", "--iters", "4", "--eval-every", "2", "--no-progress"]


def resume_argv(run: Path) -> list[str]:
    return [*RESUME, "--out", str(run.parent), "--name", run.name, "--resume"]


@pytest.mark.parametrize(
    "line", ["[5]", '{"kind": "train", "step": "six"}', '{"step": 1}', "[" * 100_000, '"text"']
)
def test_a_metrics_line_of_the_wrong_shape_stops_the_resume_and_changes_nothing(
    line, killed_run, tmp_path, capsys
):
    import shutil

    run = shutil.copytree(killed_run, tmp_path / "r")
    lines = (run / runs.METRICS).read_text().splitlines()
    (run / runs.METRICS).write_text("\n".join([lines[0], line, *lines[1:]]) + "\n")
    before = snapshot(run)
    err = one_line_error(capsys, resume_argv(run))
    assert f"{run / runs.METRICS} line 2 is not a metrics record" in err
    assert snapshot(run) == before  # config.json was rewritten before the check


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("lr", "abc", "lr must be a number, got 'abc'"),
        ("iters", "six", "iters must be an integer, got 'six'"),
        ("milestones", 5, "milestones must be a list of numbers, got 5"),
        ("model_kwargs", [5], "model_kwargs must be a JSON object of KEY: VALUE, got [5]"),
        ("seed", 1e300, "seed must be an integer, got 1e+300"),
    ],
)
def test_a_config_field_of_the_wrong_type_is_named(
    field, value, expected, killed_run, tmp_path, capsys
):
    import shutil

    run = shutil.copytree(killed_run, tmp_path / "r")
    cfg = json.loads((run / runs.CONFIG).read_text())
    (run / runs.CONFIG).write_text(json.dumps({**cfg, field: value}))
    before = snapshot(run)
    assert expected in one_line_error(capsys, resume_argv(run))
    assert snapshot(run) == before


# ------------------------------------------------------------------ 7 the same folder, spelled otherwise


def test_resume_with_the_out_folder_spelled_otherwise(killed_run, tmp_path, monkeypatch):
    import shutil

    shutil.copytree(killed_run, tmp_path / "runs" / "r")
    monkeypatch.chdir(tmp_path)
    argv = [*RESUME, "--name", "r", "--resume"]
    assert main([*argv, "--out", f"{tmp_path}/runs/"]) == 0  # written with --out <elsewhere>
    assert runs.status(tmp_path / "runs" / "r") == "completed"


def test_a_moved_run_folder_resumes_where_it_now_is(killed_run, tmp_path):
    import shutil

    moved = shutil.copytree(killed_run, tmp_path / "moved" / "renamed")
    assert main([*RESUME, "--out", str(moved.parent), "--name", "renamed", "--resume"]) == 0
    assert runs.read_config(moved)["out"] == str(moved.parent)
    steps = [m["step"] for m in runs.read_metrics(moved) if m["kind"] == "train"]
    assert steps == sorted(set(steps))  # resumed, not restarted


def test_a_real_difference_is_still_refused(killed_run, tmp_path, capsys):
    import shutil

    run = shutil.copytree(killed_run, tmp_path / "r")
    line = one_line_error(capsys, [*resume_argv(run), "--lr", "0.5"])
    assert f"config of {run} differs in ['lr']" in line


# ------------------------------------------------------------------ 8 the process pool


def test_a_cell_named_twice_is_trained_once(tmp_path):
    argv = ["degradation", "--depths", "2", "2", "--seeds", "0", "--archs", "plain", "residual"]
    argv += ["--iters", "4", "--width", "8", "--jobs", "2", "--log-every", "2", "--eval-every", "2"]
    with pytest.warns(UserWarning, match="^--depths lists a value twice; each is used once$"):
        assert main([*argv, "--num-threads", "1", "--out", str(tmp_path), "--name", "d"]) == 0
    cells = sorted(p.name for p in (tmp_path / "d" / runs.RUNS).iterdir())
    assert cells == ["plain-2-s0", "residual-2-s0"]


def test_train_grid_trains_one_folder_once(tmp_path):
    from reslab.launch.grid import train_grid
    from reslab.training.config import TrainConfig

    cfg = TrainConfig(model="resmlp-2", iters=2, out=str(tmp_path), name="c", progress=False)
    seen = []
    summaries = train_grid([cfg, cfg], jobs=1, on_done=lambda s, t: seen.append(s["name"]))
    assert seen == ["c"] and summaries[0] is summaries[1]


def test_workers_die_with_the_study_process(tmp_path):
    """kill -9 of a study's main process (the OOM killer) once left its workers training on."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = (
        "import os, sys, time\n"
        "from reslab.launch.grid import worker_pool\n"
        "pool = worker_pool(1)\n"
        "print(pool.submit(os.getpid).result(), flush=True)\n"
        "pool.submit(time.sleep, 120)\n"
        "time.sleep(120)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        worker = int(parent.stdout.readline())
        parent.send_signal(signal.SIGKILL)
        parent.wait()

        def alive(pid: int) -> bool:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                return False
            return state != "Z"  # a zombie is dead, waiting for init to reap it

        deadline = time.monotonic() + 20
        while alive(worker) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not alive(worker)
    finally:
        parent.kill()
        if "worker" in locals() and alive(worker):
            os.kill(worker, signal.SIGKILL)


# ------------------------------------------------------------------ 6 messages that name the culprit


def test_a_summary_with_nan_names_the_file_and_the_field(tmp_path):
    path = runs.write_json(tmp_path / runs.SUMMARY, {"ok": 1})
    with pytest.raises(ValueError) as info:
        runs.write_json(path, {"runs": [{"error": 0.1}, {"error": float("nan")}]}, strict=True)
    assert str(info.value) == f"cannot write {path}: runs[1].error is nan, which JSON cannot hold"
    assert json.loads(path.read_text()) == {"ok": 1}


def test_a_huge_seed_names_the_option(tmp_path, capsys):
    argv = [
        "train",
        "--model",
        "resmlp-4",
        "--iters",
        "1",
        "--seed",
        str(2**64),
        "--out",
        str(tmp_path),
    ]
    assert "seed must be an integer from 0 to" in one_line_error(capsys, argv)
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------ 9 the small ones


@pytest.mark.parametrize("where", ["name", "out"])
def test_an_over_long_name_leaves_no_folder_behind(where, tmp_path, capsys):
    long = "a" * 300
    out, name = (tmp_path / "o" / "deep", long) if where == "name" else (tmp_path / "o" / long, "x")
    argv = ["train", "--model", "resmlp-4", "--iters", "1", "--no-progress"]
    line = one_line_error(capsys, [*argv, "--out", str(out), "--name", name])
    assert "at most 255 characters" in line or "File name too long" in line
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "value, on", [("no", False), ("0", False), ("off", False), ("1", True), ("yes", True)]
)
def test_reslab_debug_means_what_it_says(value, on, monkeypatch, capsys):
    monkeypatch.setenv("RESLAB_DEBUG", value)
    argv = ["train", "--model", "nosuch", "--iters", "1"]
    if on:
        with pytest.raises(ValueError, match="unknown model 'nosuch'"):
            main(argv)
    else:
        assert "unknown model 'nosuch'" in one_line_error(capsys, argv)


def test_a_moved_and_renamed_study_folder_is_rerun_without_retraining(tmp_path, monkeypatch):
    """A study folder is relocatable: its cells resume wherever it now is, however --out is typed."""
    monkeypatch.chdir(tmp_path)
    argv = ["degradation", "--depths", "2", "--seeds", "0", "--iters", "4", "--width", "8"]
    argv += ["--jobs", "1", "--log-every", "2", "--eval-every", "2", "--num-threads", "1"]
    assert main([*argv, "--out", "runs", "--name", "d"]) == 0
    (tmp_path / "runs" / "d").rename(tmp_path / "elsewhere")
    cells = tmp_path / "elsewhere" / runs.RUNS
    before = {p: p.read_bytes() for p in cells.rglob(runs.METRICS)}
    assert main([*argv, "--out", str(tmp_path), "--name", "elsewhere"]) == 0
    assert {p: p.read_bytes() for p in cells.rglob(runs.METRICS)} == before  # nothing retrained
