"""The landscape study's measurements: every trained twin's loss surface and Hessian extremes.

For each net that did not diverge: the first `subset` images of its training split, normalised as it
was trained; the two directions drawn with `direction_seed` (`reslab.landscape.directions`: the same
Gaussian draws for a plain net and its residual twin, filter-normalised to each); the loss and top-1
error on the (points x points) grid over [-span, span]^2 in eval mode; and the largest and smallest
Hessian eigenvalue at the trained weights (`reslab.landscape.hessian_extremes`). All of it goes to
`<study>/landscape.json`; a net that diverged in training has no weights to draw and is listed apart.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reslab import landscape
from reslab.studies.landscape import SURFACES
from reslab.training import runs


def after_training(cfg: Any, folder: Path, configs: list, trained: list, jobs: int) -> None:
    """Measure every completed net, `jobs` at a time (one process each, cores // jobs threads: a
    small net's forward pass is slower on two threads than on one), into landscape.json."""
    xs = np.linspace(-cfg.span, cfg.span, cfg.points)
    threads = max(1, (os.cpu_count() or 1) // max(1, jobs))
    cells, todo, lost = [], [], []
    for c in configs:
        run_dir = Path(c.out) / c.run_name
        cell = dict(runs.parse_cell(c.run_name, ("arch", "depth")) or {}, run_dir=str(run_dir))
        summary = runs.read_summary(run_dir) or {}
        if summary.get("status") == "completed":
            cells.append(cell | {"final_train_error": summary.get("final_train_error")})
            todo.append((run_dir, xs, cfg.subset, cfg.hessian_images, cfg.direction_seed, threads))
        else:
            lost.append(cell | {"status": summary.get("status", "missing")})
    context = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(max(1, jobs), mp_context=context) as pool:
        for cell, net in zip(cells, pool.map(_measure, todo), strict=True):
            cell.update(net)
            centre = net["loss"][len(xs) // 2][len(xs) // 2]
            lams = f"λmax {net['lambda_max']:.3g}, λmin {net['lambda_min']:.3g}"
            line = f"{Path(cell['run_dir']).name:<16} centre loss {centre:.3g}, {lams}"
            print(f"  {line} [{net['seconds']:.0f} s]", flush=True)
    runs.write_json(folder / SURFACES, {"xs": xs.tolist(), "nets": cells, "lost": lost})


def _measure(args: tuple) -> dict:
    """One net's grid (loss and error, rows along the second direction) on the first `subset`
    training images, and its Hessian extremes on the first `hessian` of them, timed."""
    run_dir, xs, subset, hessian, direction_seed, threads = args
    torch.set_num_threads(threads)
    t = time.perf_counter()
    model, images, labels = load(run_dir, subset)
    d1, d2 = landscape.directions(model, seed=direction_seed)
    grid = landscape.surface(model, d1, d2, images, labels, xs.tolist(), xs.tolist())
    lmax, lmin = landscape.hessian_extremes(model, images[:hessian], labels[:hessian])
    return {
        "loss": grid["loss"].tolist(),
        "error": grid["error"].tolist(),
        "lambda_max": lmax,
        "lambda_min": lmin,
        "images": len(labels),
        "seconds": time.perf_counter() - t,
    }


def load(run_dir: Path, subset: int) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """A run's trained model (eval mode, CPU) and the first `subset` images of its training split,
    normalised as the model was trained, with their labels."""
    from reslab.data import Loader
    from reslab.training.build import load_data
    from reslab.training.trained import load_run

    model, cfg = load_run(run_dir)
    if cfg is None:
        raise ValueError(f"{run_dir}: no config.json; the landscape needs the run's data")
    train_data = load_data(cfg)[0]
    train_data = train_data.subset(torch.arange(min(subset, len(train_data))))
    normalization = getattr(model, "normalization", None)
    if normalization is not None:
        train_data = normalization.apply(train_data)
    loader = Loader(train_data, 1024, train=False, augment=False, device=torch.device("cpu"))
    xs, ys = zip(*loader.epoch(0), strict=True)
    return model.eval(), torch.cat(xs), torch.cat(ys)
