"""The command line: every command parses, runs, and turns bad input into a one-line error."""

import subprocess
import sys

import pytest

from reslab.cli import COMMANDS, build_parser, main
from reslab.studies import NAMES


def _run(*args):
    return subprocess.run(
        [sys.executable, "-m", "reslab", *args], capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("command", [*COMMANDS, *NAMES])
def test_help_is_complete(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage: reslab " + command in out
    if command in ("train", "degradation"):
        for option in (
            "--lr",
            "--batch-size",
            "--seed",
            "--deterministic",
            "--device",
            "--num-threads",
        ):
            assert option in out


def test_models_table(capsys):
    assert main(["models", "resnet2*"]) == 0
    out = capsys.readouterr().out
    assert "resnet20" in out and "269,722" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--model", "resnet21", "--iters", "1"], "unknown model"),
        (["train", "--schedule", "linear"], "schedule must be one of"),
        (["train", "--data", "nosuchdata", "--iters", "1"], "unknown dataset"),
        (["models", "nothing*"], "no model matches"),
        (["degradation", "--depths", "3"], "must be even"),
    ],
)
def test_bad_input_is_one_line_error(args, message, tmp_path):
    r = _run(*args, *(["--out", str(tmp_path)] if args[0] != "models" else []))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and message in lines[0], r.stderr


def test_argparse_rejects_wrong_types():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--lr", "fast"])


@pytest.mark.slow
def test_train_then_eval_round_trip(tmp_path):
    r = _run(
        "train",
        "--model",
        "resmlp-4",
        "--iters",
        "150",
        "--lr",
        "0.05",
        "--out",
        str(tmp_path),
        "--name",
        "t",
        "--no-progress",
        "--num-threads",
        "1",
    )
    assert r.returncode == 0, r.stderr
    assert "test error" in r.stdout
    e = _run(
        "eval",
        "--model",
        "resmlp-4",
        "--weights",
        str(tmp_path / "t" / "model.safetensors"),
        "--data",
        "digits",
        "--num-threads",
        "1",
    )
    assert e.returncode == 0, e.stderr
    err = float(e.stdout.split("top-1 error ")[1].split("%")[0]) / 100
    import json

    summary = json.loads((tmp_path / "t" / "summary.json").read_text())
    assert err == pytest.approx(summary["final_test_error"], abs=1e-4)
