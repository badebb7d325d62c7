"""The lesion study's measurements: delete blocks of a trained net at test time and evaluate it.

A deleted block becomes its `shortcut_path`, as Veit et al. delete one, "leaving the skip connection
(or downsampling projection, if any) untouched" (§4.1); a plain block, which has none, can be deleted
only where it keeps the shape. Then random sets of k deletable blocks are deleted together (`samples`
sets per k), giving test error against k.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from reslab.models import create_model, is_residual
from reslab.models.blocks import ResidualBlock
from reslab.models.registry import Model
from reslab.studies.base import recipe
from reslab.studies.lesion import LESIONS
from reslab.training import distributed, runs
from reslab.training.build import load_data
from reslab.training.evaluation import evaluate
from reslab.training.trained import load_run


class Lesioned(nn.Module):
    """A deleted block: what `block.shortcut_path` leaves of it."""

    def __init__(self, block: ResidualBlock) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block.shortcut_path(x)


@contextlib.contextmanager
def lesioned(model: Model, blocks: Sequence[int]) -> Iterator[Model]:
    """`model` with the blocks at these indices of `model.residual_blocks()` deleted, restored on exit."""
    all_blocks = model.residual_blocks()
    if bad := [i for i in blocks if not 0 <= i < len(all_blocks)]:
        raise ValueError(f"block index {bad[0]} out of range: the model has {len(all_blocks)}")
    chosen = {id(all_blocks[i]) for i in blocks}
    swapped = [(name, m) for name, m in model.named_modules() if id(m) in chosen]
    try:
        for name, block in swapped:
            model.set_submodule(name, Lesioned(block))
        yield model
    finally:
        for name, block in swapped:
            model.set_submodule(name, block)


@torch.no_grad()
def changes_shape(model: Model, x: torch.Tensor) -> list[bool]:
    """Whether each block's output differs in shape from its input (`x`: any batch of inputs)."""
    changes: list[bool] = []
    hooks = [
        b.register_forward_hook(lambda m, a, o: changes.append(a[0].shape != o.shape))
        for b in model.residual_blocks()
    ]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    return changes


def random_sets(eligible: Sequence[int], ks: Sequence[int], samples: int, seed: int) -> dict:
    """k -> `samples` distinct random sets of k blocks from `eligible` (every set, where there are
    fewer); k larger than len(eligible) is left out. The same seed gives the same sets."""
    rng, n = np.random.default_rng(seed), len(eligible)
    sets: dict[int, list[list[int]]] = {}
    for k in (k for k in ks if k <= n):
        if math.comb(n, k) <= samples:
            sets[k] = [list(c) for c in itertools.combinations(eligible, k)]
            continue
        sets[k] = []
        while len(sets[k]) < samples:
            s = sorted(int(i) for i in rng.choice(eligible, size=k, replace=False))
            if s not in sets[k]:
                sets[k].append(s)
    return sets


def measure(run_dir: Path, cfg: Any) -> dict:
    """Test error of the intact net, with each single block deleted, and with random sets of k."""
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    model, tcfg = load_run(run_dir)
    assert tcfg is not None  # LesionConfig checked that every run folder holds its config.json
    train_data, test_data, _ = load_data(tcfg)
    if cfg.test_subset:
        test_data = test_data.subset(torch.arange(min(cfg.test_subset, len(test_data.labels))))
    d = distributed.setup(cfg.device)
    model = model.to(d.device).eval()

    def error(blocks: Sequence[int] = ()) -> float:
        with lesioned(model, blocks):
            r = evaluate(model, test_data, 256, d, mean=train_data.mean, std=train_data.std)
        return r["error"]

    changes = changes_shape(model, test_data.images[:2].to(d.device, torch.float32))
    residual = is_residual(model)
    eligible = [i for i, c in enumerate(changes) if residual or not c]
    intact = error()
    single = [
        {"block": i, "changes_shape": c, "error": error([i]) if i in eligible else None}
        for i, c in enumerate(changes)
    ]
    sets = random_sets(eligible, cfg.ks or range(1, len(eligible) + 1), cfg.samples, seed=0)
    return {
        "model": tcfg.model,
        "recipe": recipe(tcfg),  # how it was trained, less what differs per run (model, seed)
        "arch": "residual" if residual else "plain",
        "seed": tcfg.seed,
        "data": tcfg.data,
        "num_classes": len(test_data.classes),
        "test_images": len(test_data.labels),
        "blocks": len(changes),
        "intact_error": intact,
        "trained_test_error": (runs.read_summary(run_dir) or {}).get("final_test_error"),
        "single": single,
        "multi": [{"k": k, "errors": [error(s) for s in ss], "sets": ss} for k, ss in sets.items()],
    }


def diverged(run_dir: Path) -> dict:
    """What a net that diverged in training leaves to report: where it stopped and its last finite
    loss (None where the run folder predates that record)."""
    summary, config = runs.read_summary(run_dir) or {}, runs.read_config(run_dir)
    model = str(summary.get("model") or config.get("model"))
    with torch.device("meta"):  # plain or residual as built, model_kwargs included
        net = create_model(model, **config.get("model_kwargs", {}))
    return {
        "model": model,
        "arch": "residual" if is_residual(net) else "plain",
        "seed": config.get("seed"),
        "step": summary.get("diverged_at_step", summary.get("steps")),
        "last_finite_loss": summary.get("last_finite_loss"),
    }


def after_training(cfg: Any, folder: Path, configs: list, trained: list, jobs: int) -> None:
    """Lesion every net (the pair trained here, or the runs given with --from) into
    `<folder>/lesions.json`; a net that did not train (diverged, or its Slurm job failed) has no
    finite weights and is listed apart."""
    named = [(f"{runs.RUNS}/{c.run_name}", Path(c.out) / c.run_name) for c in configs]
    nets, lost = [], []
    for name, run_dir in named or [(str(Path(r)), Path(r)) for r in cfg.runs]:
        if runs.status(run_dir) in runs.UNTRAINED:
            lost.append({"run_dir": name} | diverged(run_dir))
            continue
        t = time.perf_counter()
        n = {"run_dir": name} | measure(run_dir, cfg)
        nets.append(n)
        print(
            f"  lesioned {n['model']:<14} s{n['seed']}: intact {n['intact_error']:.2%}, "
            f"{sum(s['error'] is not None for s in n['single'])} single deletions, "
            f"{sum(len(m['errors']) for m in n['multi'])} multi [{time.perf_counter() - t:.0f} s]",
            flush=True,
        )
    runs.write_json(folder / LESIONS, {"nets": nets, "diverged": lost})
