"""The depth study's one measurement besides training: each run's first step, replayed, to tell why
a run diverged where it did (an overflow at init, or an instability later).

The replay is the engine's first step (`reslab.training.loop`): the same seed, model builder and
first mini-batch of the same loader, in train mode, in fp32 with denormals flushed as the engine
does. The gradient's global L2 norm (before any clipping) is summed in float64, so that a norm
beyond fp32's range (3.4e38) is still a number; an entry not finite in fp32 is an overflow of the
backward pass, which no clipping can repair.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from reslab.data import Loader
from reslab.studies.depth import first_step_path
from reslab.training import runs
from reslab.training.build import augment_on, build_run
from reslab.training.config import TrainConfig


def after_training(cfg, folder: Path, configs: list[TrainConfig], trained: list, jobs: int) -> None:
    """Replay the first step of every run not replayed yet into the study folder, each with the
    threads its run had (the engine's num_threads, else cores // jobs as `grid.train_grid` gives
    them): a deep plain net amplifies rounding, so another summation order gives another loss."""
    todo = [c for c in configs if not first_step_path(folder, c.run_name).exists()]
    t0, threads = time.perf_counter(), torch.get_num_threads()
    try:
        for c in todo:
            torch.set_num_threads(c.num_threads or max(1, (os.cpu_count() or 1) // jobs))
            path = first_step_path(folder, c.run_name)
            path.parent.mkdir(exist_ok=True)
            runs.write_json(path, first_step(c), strict=True)
    finally:
        torch.set_num_threads(threads)
    if todo:
        seconds = time.perf_counter() - t0
        print(f"  first steps replayed: {len(todo)} runs  [{seconds:.0f} s]", flush=True)


def first_step(c: TrainConfig) -> dict:
    """The loss, gradient norm (None where not finite), non-finite and total gradient entries of run
    config `c`'s first step, and the number of classes (ln classes: the loss of a uniform guess)."""
    torch.set_flush_denormal(True)  # as the engine does for every run
    torch.manual_seed(c.seed)
    model, train_data, _, _ = build_run(c)  # initialised as the engine's, from the same seed
    model.train()
    loader = Loader(train_data, c.batch_size, train=True, augment=augment_on(c), seed=c.seed)
    x, y = next(iter(loader.epoch(0)))  # (B, C, H, W), (B,)
    loss = F.cross_entropy(model(x).float(), y, label_smoothing=c.label_smoothing)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    nonfinite = sum(int((~g.isfinite()).sum()) for g in grads)
    norm = math.sqrt(sum(float(g.double().square().sum()) for g in grads))
    return {
        "loss": loss.item() if math.isfinite(loss.item()) else None,
        "grad_norm": None if nonfinite else norm,
        "grad_nonfinite": nonfinite,
        "grad_entries": sum(g.numel() for g in grads),
        "classes": len(train_data.classes),
    }
