"""Checkpoints: weights and optimizer state in safetensors, trainer state in JSON, written atomically.

A checkpoint is a folder `checkpoints/step-00001234/` holding `model.safetensors`,
`optimizer.safetensors` and `trainer.json`. It is written under a temporary name, every file is
fsynced, and only then renamed into place, so a kill at any moment leaves the previous checkpoint
whole. The newest complete folder is the one to resume from; older ones are pruned after a new one lands.
A write that fails (a full disk) removes its temporary folder and leaves the checkpoints already there
as they were. A folder that does not read back whole raises `DamagedCheckpoint` naming the file;
`set_aside` renames such a folder `damaged-step-...`, out of the way of pruning and of later saves.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from reslab import atomic
from reslab.models.weights import mismatches
from reslab.training.runs import read_json

KEEP = 2  # the newest checkpoint and the one before it
MODEL, OPTIMIZER, TRAINER = "model.safetensors", "optimizer.safetensors", "trainer.json"
_STEP = re.compile(r"step-(\d+)")


class DamagedCheckpoint(ValueError):
    """A checkpoint file that is missing, truncated or garbled; the message names the file."""


def save_checkpoint(
    ckpt_root: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    trainer_state: dict,
) -> Path:
    """Write checkpoint `step` under `ckpt_root` atomically and prune old ones; returns its folder.

    A write that fails (a full disk) removes its temporary folder and raises a one-line OSError
    naming the checkpoint that is still intact."""
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step-{step:08d}"
    try:  # a previous attempt at this very step that completed is replaced
        with atomic.replacing(final) as tmp:
            tmp.mkdir()
            tensors, groups = _flatten_optimizer(optimizer)
            save_file(_contiguous(model.state_dict()), tmp / MODEL)
            save_file(tensors, tmp / OPTIMIZER)  # a full disk: SafetensorError, read by atomic
            state = dict(trainer_state, step=step, param_groups=groups)
            (tmp / TRAINER).write_text(json.dumps(state))
    except atomic.WriteFailed as err:
        raise _write_failed(ckpt_root, final.name, err) from None
    for old in list_checkpoints(ckpt_root)[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    # Temporary folders of killed writes. No live writer can own one: training holds the run
    # folder's lock (reslab.training.runs.lock) and only the logging rank saves.
    for stale in ckpt_root.glob(".step-*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    return final


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    """Complete checkpoint folders, oldest first."""
    if not ckpt_root.is_dir():
        return []
    done = [p for p in ckpt_root.iterdir() if _STEP.fullmatch(p.name) and (p / TRAINER).is_file()]
    return sorted(done, key=lambda p: int(p.name.removeprefix("step-")))  # names _STEP matched


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Restore model and optimizer in place from a checkpoint folder; returns the trainer state.

    Raises DamagedCheckpoint when a file does not read back whole (nothing is restored then),
    and a ValueError naming the keys or shapes that differ when the weights are another model's."""
    try:
        state = read_json(path / TRAINER)
    except (OSError, ValueError) as err:
        raise DamagedCheckpoint(str(err)) from None
    if not (
        isinstance(state, dict)
        and isinstance(state.get("step"), int)
        and isinstance(state.get("param_groups"), list)
    ):
        raise DamagedCheckpoint(f"{path / TRAINER} holds no trainer state (step, param_groups)")
    weights, optim_tensors = _read_tensors(path / MODEL), _read_tensors(path / OPTIMIZER)
    try:
        optim_state = _unflatten_optimizer(optim_tensors, state.pop("param_groups"))
    except ValueError as err:
        raise DamagedCheckpoint(f"{path / OPTIMIZER} holds unknown keys ({err})") from None
    _check_fits(path, weights, model.state_dict())
    try:  # checks the groups against the optimizer's before it changes anything
        optimizer.load_state_dict(optim_state)
    except (KeyError, TypeError, ValueError) as err:
        raise DamagedCheckpoint(
            f"{path / TRAINER}: its optimizer state does not fit ({err})"
        ) from None
    _lay_out_like_params(optimizer)
    model.load_state_dict(weights)  # copies into the parameters, which keep their layout
    return state


def set_aside(path: Path) -> Path:
    """Rename a damaged checkpoint folder `damaged-step-...` (kept, never pruned); returns the new path."""
    aside, n = path.with_name(f"damaged-{path.name}"), 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"damaged-{path.name}-{n}")
    os.rename(path, aside)
    return aside


def _write_failed(ckpt_root: Path, name: str, err: atomic.WriteFailed) -> OSError:
    """The one-line error of a checkpoint that could not be written, saying what is left."""
    code, reason = err.errno, err.reason
    kept = list_checkpoints(ckpt_root)
    left = (
        f"the previous checkpoint ({kept[-1].name}) is intact" if kept else "no checkpoint is kept"
    )
    fix = "free space" if code in (errno.ENOSPC, errno.EDQUOT) else "fix that"
    out = OSError(
        f"could not write checkpoint {name} in {ckpt_root}: {reason}; {left}, "
        f"{fix} and rerun with --resume"
    )
    out.errno = code
    return out


def _read_tensors(file: Path) -> dict:
    try:
        return load_file(file)
    except (OSError, SafetensorError) as err:
        raise DamagedCheckpoint(f"{file} cannot be read ({err})") from None


def _check_fits(path: Path, weights: dict, expected: dict) -> None:
    """A one-line ValueError when `weights` are not the state dict of the model that has `expected`."""
    problems = mismatches(weights, expected, "checkpoint")
    if problems:
        detail = "; ".join(problems)
        raise ValueError(f"checkpoint {path} holds weights for a different model ({detail})")


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


def _lay_out_like_params(optimizer: torch.optim.Optimizer) -> None:
    """Give each state tensor shaped like its parameter the parameter's memory layout.

    A live optimizer makes its buffers like the gradient (`empty_like`, `clone`), which takes the
    parameter's strides; `Optimizer.load_state_dict` keeps the checkpoint's contiguous (NCHW) ones.
    For channels_last conv weights the two differ, and the fused CPU SGD kernel walks param, grad
    and momentum buffer as flat memory: each weight would be updated with another one's momentum."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            st = optimizer.state.get(p, {})
            for key, value in st.items():
                if torch.is_tensor(value) and value.shape == p.shape:
                    st[key] = torch.empty_like(p, dtype=value.dtype).copy_(value)


def _contiguous(sd: dict) -> dict:
    return {k: v.detach().contiguous() for k, v in sd.items()}
