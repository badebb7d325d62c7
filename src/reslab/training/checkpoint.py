"""Checkpoints: weights and optimizer state in safetensors, trainer state in JSON, written atomically.

A checkpoint is a folder `checkpoints/step-00001234/` holding `model.safetensors`,
`optimizer.safetensors` and `trainer.json`. It is written under a temporary name, every file is
fsynced, and only then renamed into place, so a kill at any moment leaves the previous checkpoint
whole. The newest complete folder is the one to resume from; older ones are pruned after a new one lands.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

KEEP = 2  # the newest checkpoint and the one before it


def save_checkpoint(
    ckpt_root: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    trainer_state: dict,
) -> Path:
    """Write checkpoint `step` under `ckpt_root` atomically and prune old ones; returns its folder."""
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step-{step:08d}"
    tmp = ckpt_root / f".tmp-step-{step:08d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    tensors, groups = _flatten_optimizer(optimizer)
    save_file(_contiguous(model.state_dict()), tmp / "model.safetensors")
    save_file(tensors, tmp / "optimizer.safetensors")
    state = dict(trainer_state, step=step, param_groups=groups)
    (tmp / "trainer.json").write_text(json.dumps(state))
    for f in tmp.iterdir():
        _fsync(f)
    _fsync(tmp)
    if final.exists():  # a previous attempt at this very step completed; replace it
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync(ckpt_root)
    for old in list_checkpoints(ckpt_root)[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in ckpt_root.glob(".tmp-step-*"):
        shutil.rmtree(stale, ignore_errors=True)
    return final


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    """Complete checkpoint folders, oldest first."""
    if not ckpt_root.is_dir():
        return []
    done = [p for p in ckpt_root.glob("step-*") if (p / "trainer.json").is_file()]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Restore model and optimizer in place from a checkpoint folder; returns the trainer state."""
    state = json.loads((path / "trainer.json").read_text())
    model.load_state_dict(load_file(path / "model.safetensors"))
    optimizer.load_state_dict(
        _unflatten_optimizer(load_file(path / "optimizer.safetensors"), state.pop("param_groups"))
    )
    return state


def _flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict, list]:
    sd = optimizer.state_dict()
    tensors = {
        f"{idx}.{key}": value.detach().contiguous()
        for idx, st in sd["state"].items()
        for key, value in st.items()
        if isinstance(value, torch.Tensor)
    }
    return tensors, sd["param_groups"]


def _unflatten_optimizer(tensors: dict, groups: list) -> dict:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": groups}


def _contiguous(sd: dict) -> dict:
    return {k: v.detach().contiguous() for k, v in sd.items()}


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
