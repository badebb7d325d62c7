"""Two gloo processes under torchrun compute what one process computes with the same global batch."""

import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

COMMON = [
    "train",
    "--model",
    "resmlp-6",
    "--model-arg",
    "norm='none'",
    "--data",
    "digits",
    "--iters",
    "40",
    "--batch-size",
    "64",
    "--lr",
    "0.05",
    "--log-every",
    "10",
    "--eval-every",
    "20",
    "--no-progress",
    "--num-threads",
    "1",
    "--seed",
    "1",
]


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tmp_path):
    one = subprocess.run(
        [sys.executable, "-m", "reslab", *COMMON, "--out", str(tmp_path), "--name", "one"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert one.returncode == 0, one.stderr
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "reslab",
            *COMMON,
            "--out",
            str(tmp_path),
            "--name",
            "two",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    a = load_file(tmp_path / "one" / "model.safetensors")
    b = load_file(tmp_path / "two" / "model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    # one process logged: a single metrics file whose lines are not duplicated
    lines = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    assert sum('"kind": "train"' in x for x in lines) == 4
