"""The landscape study's measurements, into `<study>/landscape.json`: each completed net's loss and
top-1 error over the grid of two random directions through its trained weights (`reslab.landscape`:
the same draws for a plain net and its residual twin, filter-normalised to each), and the extreme
eigenvalues of its Hessian there. The nets that did not complete are listed apart."""

from __future__ import annotations

import os
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reslab import landscape
from reslab.data import Loader
from reslab.launch.grid import worker_pool
from reslab.studies.landscape import SURFACES
from reslab.training import runs
from reslab.training.build import load_data
from reslab.training.trained import load_run


def after_training(cfg: Any, folder: Path, configs: list, trained: list, jobs: int) -> None:
    """Measure every completed net, `jobs` at a time (one process each, cores // jobs threads: a
    small net's forward pass is slower on two threads than on one)."""
    xs = np.linspace(-cfg.span, cfg.span, cfg.points).tolist()
    nets, lost = [], []
    for (arch, depth, seed), c in zip(cfg.cells(), configs, strict=True):
        net = dict(arch=arch, depth=depth, seed=seed, run_dir=str(Path(c.out) / c.run_name))
        summary = runs.read_summary(net["run_dir"]) or {}
        if summary.get("status") == "completed":
            nets.append(net | {"final_train_error": summary.get("final_train_error")})
        else:
            lost.append(net | {"status": summary.get("status", "missing")})
    measure = partial(_measure, cfg=cfg, xs=xs, threads=max(1, (os.cpu_count() or 1) // jobs))
    with worker_pool(jobs) as pool:
        for net, grid in zip(nets, pool.map(measure, [n["run_dir"] for n in nets]), strict=True):
            net.update(grid)
            centre = grid["loss"][len(xs) // 2][len(xs) // 2]
            lams = f"λmax {grid['lambda_max']:.3g}, λmin {grid['lambda_min']:.3g}"
            line = f"{Path(net['run_dir']).name:<16} centre loss {centre:.3g}, {lams}"
            print(f"  {line} [{grid['seconds']:.0f} s]", flush=True)
    runs.write_json(folder / SURFACES, {"xs": xs, "nets": nets, "lost": lost})


def _measure(run_dir: str, cfg: Any, xs: list[float], threads: int) -> dict:
    """One net's grid (loss and error, rows along the second direction) and Hessian extremes."""
    torch.set_num_threads(threads)
    t = time.perf_counter()
    model, run_cfg = load_run(run_dir)
    if run_cfg is None:
        raise ValueError(f"{run_dir}: no config.json; the landscape needs the run's data")
    data = load_data(run_cfg)[0]
    if model.normalization is not None:  # always, for a run with its config
        data = model.normalization.apply(data)
    data = data.subset(torch.arange(len(data))[: cfg.subset])
    loader = Loader(data, len(data), train=False, augment=False, device=torch.device("cpu"))
    images, labels = next(iter(loader.epoch(0)))
    d1, d2 = landscape.directions(model, seed=cfg.direction_seed)
    grid = landscape.surface(model, d1, d2, images, labels, xs, xs)
    n = cfg.hessian_images
    lmax, lmin = landscape.hessian_extremes(model, images[:n], labels[:n])
    seconds = time.perf_counter() - t
    out = {k: v.tolist() for k, v in grid.items()}  # loss, error
    return out | dict(lambda_max=lmax, lambda_min=lmin, images=len(labels), seconds=seconds)
