"""Kill a real training process with SIGKILL and resume it: the weights end bit-identical."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from safetensors.torch import load_file

from reslab.training.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint

ARGS = [
    "train",
    "--model",
    "resmlp-6",
    "--data",
    "digits",
    "--iters",
    "400",
    "--batch-size",
    "32",
    "--lr",
    "0.05",
    "--log-every",
    "5",
    "--checkpoint-every",
    "10",
    "--eval-every",
    "200",
    "--deterministic",
    "--num-threads",
    "1",
    "--no-progress",
    "--seed",
    "3",
]


def _reslab(out, name, *extra, **kw):
    cmd = [sys.executable, "-m", "reslab", *ARGS, "--out", str(out), "--name", name, *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(tmp_path):
    ref = _reslab(tmp_path, "ref")
    victim = _reslab(tmp_path, "victim")
    ckpts = tmp_path / "victim" / "checkpoints"
    deadline = time.time() + 120
    while len(list_checkpoints(ckpts)) < 2 and victim.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)  # mid-run, wherever it is
    victim.wait()
    assert victim.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (tmp_path / "victim" / "summary.json").exists()
    resumed = _reslab(tmp_path, "victim", "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()
    assert ref.wait(timeout=300) == 0, ref.stderr.read().decode()
    a = load_file(tmp_path / "ref" / "model.safetensors")
    b = load_file(tmp_path / "victim" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k  # bit-identical, not merely close
    steps = [
        int(line.split('"step": ')[1].split(",")[0])
        for line in (tmp_path / "victim" / "metrics.jsonl").read_text().splitlines()
        if '"kind": "train"' in line
    ]
    assert steps == list(range(5, 401, 5)), "metrics read as one uninterrupted run"


def test_kill_during_checkpoint_save_leaves_previous_loadable(tmp_path):
    script = textwrap.dedent(f"""
        import os, signal, torch
        from reslab.training import checkpoint
        model = torch.nn.Linear(4, 2)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        model(torch.ones(1, 4)).sum().backward(); opt.step()
        checkpoint.save_checkpoint(__import__("pathlib").Path({str(tmp_path)!r}), 1, model, opt, {{"x": 1}})
        real = checkpoint.save_file
        def dying_save(tensors, path):
            real(tensors, path)
            os.kill(os.getpid(), signal.SIGKILL)  # killed halfway through writing checkpoint 2
        checkpoint.save_file = dying_save
        with torch.no_grad():
            model.weight.add_(1.0)
        checkpoint.save_checkpoint(__import__("pathlib").Path({str(tmp_path)!r}), 2, model, opt, {{"x": 2}})
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000001"]
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    state = load_checkpoint(list_checkpoints(tmp_path)[-1], model, opt)
    assert state["x"] == 1 and state["step"] == 1
    assert opt.state_dict()["state"][0]["momentum_buffer"].abs().sum() > 0
    # the next save cleans the half-written folder away
    save_checkpoint(tmp_path, 3, model, opt, {})
    assert not list(tmp_path.glob(".tmp-*"))
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000001", "step-00000003"]
    assert os.path.exists(tmp_path / "step-00000003" / "optimizer.safetensors")
