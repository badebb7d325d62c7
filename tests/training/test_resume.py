"""Kill a real training process with SIGKILL and resume it: the weights end bit-identical."""

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from reslab.training.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from reslab.training.runs import read_metrics

ARGS = [
    "train",
    "--data",
    "digits",
    "--iters",
    "40",
    "--batch-size",
    "32",
    "--lr",
    "0.05",
    "--log-every",
    "5",
    "--checkpoint-every",
    "10",
    "--eval-every",
    "20",
    "--deterministic",
    "--num-threads",
    "1",
    "--no-progress",
    "--seed",
    "3",
]
# fp32 on any CPU (`--amp auto` picks bf16 where the CPU computes it); the layouts named, not "auto"
CONV = ["--model", "resnet-8", "--amp", "off"]
TORCHRUN = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
WALL_TIME = ("time", "images_per_s")  # the only fields a resumed run may log differently


def _reslab(out, name, *extra, launcher=()):
    cmd = [sys.executable, *launcher, "-m", "reslab", *ARGS, "--out", str(out), "--name", name]
    return subprocess.Popen([*cmd, *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _kill_tree(pid):
    """SIGKILL `pid` and its descendants, as a scheduler kills a job (torchrun's workers run in
    sessions of their own, so killing the launcher alone would leave them training)."""
    tree, i = [pid], 0
    while i < len(tree):
        for kids in Path(f"/proc/{tree[i]}/task").glob("*/children"):
            tree += [int(k) for k in kids.read_text().split()]
        i += 1
    for p in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)


def _metrics(run):
    return [{k: v for k, v in line.items() if k not in WALL_TIME} for line in read_metrics(run)]


@pytest.mark.slow
@pytest.mark.parametrize(
    "launcher, model",
    [
        pytest.param((), [*CONV, "--channels-last", "on"], id="conv-channels-last"),
        pytest.param((), [*CONV, "--channels-last", "off"], id="conv-nchw"),
        pytest.param((), ["--model", "resmlp-4"], id="mlp"),
        pytest.param(
            TORCHRUN,
            [*CONV, "--channels-last", "on"],
            id="torchrun-conv-channels-last",
            marks=pytest.mark.skipif(
                not sys.platform.startswith("linux"), reason="finds torchrun's workers in /proc"
            ),
        ),
    ],
)
def test_sigkill_then_resume_is_bit_identical(tmp_path, launcher, model):
    ref = _reslab(tmp_path, "ref", *model, launcher=launcher)
    victim = _reslab(tmp_path, "victim", *model, launcher=launcher)
    ckpts = tmp_path / "victim" / "checkpoints"
    deadline = time.time() + 300
    while not list_checkpoints(ckpts) and victim.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    _kill_tree(victim.pid)  # mid-run, wherever it is after its first checkpoint
    victim.wait()
    assert victim.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (tmp_path / "victim" / "summary.json").exists()
    resumed = _reslab(tmp_path, "victim", *model, "--resume", launcher=launcher)
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()[-3000:]
    assert ref.wait(timeout=300) == 0, ref.stderr.read().decode()[-3000:]
    a = load_file(tmp_path / "ref" / "model.safetensors")
    b = load_file(tmp_path / "victim" / "model.safetensors")
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]  # bit-identical, not merely close
    assert not differ, f"{len(differ)} of {len(a)} tensors differ: {differ[:5]}"
    assert _metrics(tmp_path / "victim") == _metrics(tmp_path / "ref")


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


def test_checkpoint_restores_optimizer_state_in_the_live_layout(tmp_path):
    def net():  # conv weights whose layouts differ in memory: more than one input channel
        torch.manual_seed(0)
        m = torch.nn.Sequential(
            torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(36, 2)
        )
        m = m.to(memory_format=torch.channels_last)
        return m, torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, fused=True)

    def step(m, opt):
        opt.zero_grad(set_to_none=True)
        m(x).square().sum().backward()
        opt.step()

    x = torch.randn(2, 3, 5, 5).to(memory_format=torch.channels_last)  # conv: (2, 4, 3, 3)
    live, opt = net()
    step(live, opt)
    back, opt_back = net()
    load_checkpoint(save_checkpoint(tmp_path, 1, live, opt, {}), back, opt_back)
    for p, q in zip(live.parameters(), back.parameters(), strict=True):
        assert (
            opt_back.state[q]["momentum_buffer"].stride()
            == opt.state[p]["momentum_buffer"].stride()
        )
    step(live, opt)
    step(back, opt_back)
    for p, q in zip(live.parameters(), back.parameters(), strict=True):
        assert torch.equal(p, q)
