"""What a run folder already holds, before a run starts in it: a finished run is returned, not
overwritten; `--resume` goes on from the newest checkpoint that reads back whole, with the same
config (its length may grow), and sets damaged newer checkpoints aside."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from reslab.training import runs
from reslab.training.checkpoint import (
    TRAINER,
    DamagedCheckpoint,
    list_checkpoints,
    load_checkpoint,
    set_aside,
)
from reslab.training.config import TrainConfig
from reslab.training.optim import lr_at


def resume(
    run_dir: Path,
    cfg: TrainConfig,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    main: bool,
    total: int,
) -> tuple[int, Path | None, int | None]:
    """On --resume, restore the newest checkpoint that reads back whole; returns (step, its folder,
    the step where a conditional warm-up ended or None), or (0, None, None). Newer damaged ones are
    renamed aside (`main` only), with a warning each. A run resumed with another length (`total`
    steps, from --iters or --epochs) goes on with the schedule of the new length, with a warning
    that says how its learning rate moves; one past the new length is refused."""
    root = run_dir / runs.CHECKPOINTS
    damaged: list[tuple[Path, DamagedCheckpoint]] = []
    for path in reversed(list_checkpoints(root) if cfg.resume else []):
        try:
            state = load_checkpoint(path, model, optimizer)
            _restore_rng(path, state)
            warmup_end = state.get("warmup_end")  # absent in checkpoints written before it existed
            if warmup_end is not None and (type(warmup_end) is not int or warmup_end < 0):
                raise DamagedCheckpoint(f"{path / TRAINER} holds warmup_end {warmup_end!r}")
        except DamagedCheckpoint as err:
            damaged.append((path, err))
            continue
        except ValueError as err:  # read back whole, but another model's weights
            raise ValueError(f"--resume: {err}, so --model {cfg.model} cannot resume it") from None
        for bad, why in damaged if main else []:
            aside = set_aside(bad)
            warnings.warn(
                f"--resume: {why}; moved {bad.name} aside to {aside} and resumed from {path.name}",
                stacklevel=4,
            )
        if state["step"] > total:
            raise ValueError(
                f"--resume: {path} is at step {state['step']}, past the {total} steps asked for; "
                "a run can be made longer, not shorter (use another --name)"
            )
        _warn_if_rescheduled(path, state, total, cfg, warmup_end, main)
        return state["step"], path, warmup_end
    if damaged:
        raise ValueError(
            f"--resume: no checkpoint in {root} reads back whole: "
            + "; ".join(str(err) for _, err in damaged)
            + "; they are left as they are (delete them and rerun with --resume to start over)"
        )
    return 0, None, None


def _warn_if_rescheduled(
    path: Path, state: dict, total: int, cfg: TrainConfig, warmup_end: int | None, main: bool
) -> None:
    """A warning when a run resumes with another length than its checkpoint was written for: the
    learning rate is a pure function of (step, total), so the rest of the run follows the schedule
    of the new length, from the checkpoint's step on (timm's --resume with more --epochs does too)."""
    old, step = state.get("total"), state["step"]
    if not main or not isinstance(old, int) or old == total:
        return
    was, now = lr_at(min(step, old - 1), old, cfg, warmup_end), lr_at(step, total, cfg, warmup_end)
    warnings.warn(
        f"--resume: {path.parent.parent.name} was scheduled for {old} steps and goes on to "
        f"{total}: from step {step} the learning rate follows the {cfg.schedule} schedule of "
        f"{total} steps (lr {now:g} now; the {old}-step schedule was at {was:g})",
        stacklevel=5,
    )


def keep_earlier_summary(run_dir: Path, step: int, total: int) -> None:
    """A finished run made longer keeps the summary of its first length beside it, as
    `summary-<steps>.json`: the run is unfinished again until the new summary is written."""
    done = runs.read_summary(run_dir) if step < total else None
    if done and done.get("status") == "completed" and isinstance(done.get("steps"), int):
        summary = run_dir / runs.SUMMARY
        summary.replace(summary.with_name(f"{summary.stem}-{done['steps']}{summary.suffix}"))


def _restore_rng(path: Path, state: dict) -> None:
    try:
        torch.set_rng_state(torch.tensor(state["torch_rng"], dtype=torch.uint8))
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise DamagedCheckpoint(f"{path / TRAINER} holds no CPU RNG state ({err})") from None


def existing_run(run_dir: Path, cfg: TrainConfig) -> dict | None:
    """Refuse to overwrite a run; on --resume return a finished run's summary or check the config."""
    if not run_dir.exists() or all(p.name == runs.LOCK for p in run_dir.iterdir()):
        return None
    if not cfg.resume:
        raise FileExistsError(
            f"run folder {run_dir} already exists; pass --resume to continue it "
            "or --name to start another"
        )
    old = {**TrainConfig().to_dict(), **runs.read_config(run_dir)}  # absent key: its default
    # the run's length may change: a longer run goes on from its last checkpoint (`_resume`)
    longer = (run_dir / runs.CONFIG).exists() and any(
        _same(k, old[k]) != _same(k, getattr(cfg, k)) for k in ("iters", "epochs")
    )
    if (run_dir / runs.CONFIG).exists():
        try:  # its values checked as typed ones, naming the file (a hand-edited "lr": "abc")
            TrainConfig.from_dict({k: v for k, v in old.items() if k in TrainConfig().to_dict()})
        except ValueError as err:
            raise ValueError(f"--resume: {run_dir / runs.CONFIG}: {err}") from None
        # what the run computes, not where it lives: --out and --name found the folder, which may
        # have moved since, and a data path may be spelled another way ($PWD/data or data); its
        # length may grow (a longer run goes on from its last checkpoint)
        volatile = {"resume", "progress", "log_lines", "log_to", "device", "num_threads", "compile"}
        volatile |= {"out", "name", "iters", "epochs"}
        new = cfg.to_dict()
        diff = sorted(
            k
            for k in old
            if k not in volatile and k in new and _same(k, old[k]) != _same(k, new[k])
        )
        if diff:
            raise ValueError(
                f"--resume: config of {run_dir} differs in {diff}; "
                "resume with the same options or use another --name"
            )
    done = runs.read_summary(run_dir)
    if done and done.get("status") == "completed":
        diff = [k for k in ("model", "data") if done.get(k) not in (None, getattr(cfg, k))]
        if diff:  # config.json gone: the summary still says what was trained
            raise ValueError(
                f"--resume: {run_dir} is a finished run of "
                + ", ".join(f"{k} {done[k]!r}" for k in diff)
                + ", not "
                + ", ".join(f"{k} {getattr(cfg, k)!r}" for k in diff)
                + "; use another --name"
            )
        return None if longer else done
    return None


def _same(key: str, v):
    """A config value in the form two spellings of the same setting compare equal in."""
    if isinstance(v, tuple):
        return list(v)
    if key == "data_dir" and isinstance(v, str):
        return str(Path(v).expanduser().resolve())
    if key == "data" and isinstance(v, str):
        kind, colon, spec = v.rpartition(":")
        if (kind == "imagefolder" and colon) or "/" in v:  # a folder path, not a dataset name
            path, at, size = (spec if colon else v).rpartition("@")
            path, size = (path, at + size) if at else (size, "")
            return f"imagefolder:{Path(path).expanduser().resolve()}{size}"
    return v
