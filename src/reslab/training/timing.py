"""How long a training run will take on this machine, timed before it starts: a few training steps
of its model on its data, one evaluation batch, one checkpoint and the loading of its data, scaled
to the run's steps, to the images its evaluations score and to its checkpoints. What
`reslab.launch.grid.Estimate` says before a grid of runs trains.

Not timed: `--compile` (its compile time would cost as much as the measurement saves), and what a
process pays once (importing torch, spawning a study's worker processes).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from reslab.data import ImageData, Loader
from reslab.training import distributed, precision
from reslab.training.build import augment_on, build_model, load_data
from reslab.training.checkpoint import save_checkpoint
from reslab.training.config import TrainConfig
from reslab.training.evaluation import eval_images, eval_plan, evaluate
from reslab.training.optim import make_optimizer

# the config fields that decide how long a step, an evaluated image, a checkpoint (on the disk of
# `out`) or the start-up takes
TIMED = (
    "model", "model_kwargs", "data", "data_dir", "val_size", "train_subset", "normalize",
    "batch_size", "augment", "amp", "channels_last", "grad_checkpoint", "device", "num_threads",
    "eval_batch_size", "out",
)  # fmt: skip


@dataclass(frozen=True)
class Timing:
    """One run's measured parts: `start_s` once per run (loading the data, building the model, the
    first step's and first evaluation's set-up), `step_s` per training step, `eval_image_s` per image
    evaluated, `checkpoint_s` per checkpoint; `sizes` of its splits ("train", "test", "val") and
    its `steps_per_epoch`."""

    start_s: float
    step_s: float
    eval_image_s: float
    sizes: dict[str, int]
    steps_per_epoch: int
    checkpoint_s: float = 0.0

    def predict(self, cfg: TrainConfig) -> float:
        """Seconds a run of `cfg` takes at these speeds: its start-up and its `work`."""
        return self.start_s + self.work(cfg)

    def work(self, cfg: TrainConfig) -> float:
        """Seconds of a run's steps, evaluations and checkpoints (what its summary.json times as
        time_s, curve_eval_s, final_eval_s and checkpoint_s)."""
        total = cfg.iters or max(1, round(cfg.epochs * self.steps_per_epoch))
        ckpt_every = cfg.checkpoint_every or eval_plan(cfg, total, self.sizes)[0]
        checkpoints = -(-total // ckpt_every)  # at each multiple, and at the last step
        return (
            total * self.step_s
            + eval_images(cfg, total, self.sizes) * self.eval_image_s
            + checkpoints * self.checkpoint_s
        )


def timing_key(cfg: TrainConfig) -> str:
    """Runs with equal keys take equal time per step and per evaluated image."""
    return repr([getattr(cfg, k) for k in TIMED])


Loaded = tuple[tuple[ImageData, ImageData, ImageData | None], float]  # load_data(cfg), seconds


def measure(
    cfg: TrainConfig,
    threads: int = 0,
    steps: int = 10,
    budget_s: float = 2.0,
    loaded: dict[str, Loaded] | None = None,
) -> Timing:
    """Time `cfg`'s run on this machine with `threads` CPU threads (0: as now; `cfg.num_threads`
    wins, as in the run): one untimed step, then up to `steps` steps or `budget_s` seconds of them
    (their median), one evaluation batch twice (the second timed). `loaded`: data already loaded by
    earlier measurements, which this one adds to. Changes no global state."""
    old = torch.get_num_threads()
    torch.set_num_threads(cfg.num_threads or threads or old)
    rng = torch.get_rng_state()
    try:
        return _measure(cfg, steps, budget_s, {} if loaded is None else loaded)
    finally:
        torch.set_num_threads(old)
        torch.set_rng_state(rng)


def _measure(cfg: TrainConfig, steps: int, budget_s: float, loaded: dict[str, Loaded]) -> Timing:
    device = distributed.setup(cfg.device).device
    key = repr([cfg.data, cfg.data_dir, cfg.val_size, cfg.train_subset, cfg.normalize, cfg.seed])
    if key not in loaded:  # each run loads its data; the measurements, once
        load_data(cfg)  # the first load imports what a worker process imports once
        t0 = time.perf_counter()
        loaded[key] = (load_data(cfg), time.perf_counter() - t0)
    (train_data, test_data, val_data), load_s = loaded[key]
    t0 = time.perf_counter()
    model = build_model(cfg, train_data).to(device)
    prec = precision.choose(
        cfg.amp, cfg.channels_last, device, precision.has_conv(model), warn=False
    )
    if prec.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(cfg, model, device)
    loader = Loader(
        train_data, cfg.batch_size, train=True, augment=augment_on(cfg), seed=cfg.seed,
        device=device, channels_last=prec.channels_last,
    )  # fmt: skip
    start_s = load_s + time.perf_counter() - t0
    times: list[float] = []
    for x, y in loader.epoch(0):
        t = time.perf_counter()
        with prec.autocast(device):
            loss = F.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        _sync(device)
        times.append(time.perf_counter() - t)
        if len(times) > steps or (len(times) > 3 and sum(times[1:]) > budget_s):
            break
    step_s = statistics.median(times[1:] or times)
    start_s += times[0] - step_s  # the first step's set-up

    batch = cfg.eval_batch_size or (cfg.batch_size if prec.conv else 1024)  # as the loop's
    part = test_data.subset(torch.arange(min(batch, len(test_data))))
    spent = []
    for _ in range(2):  # the first call traces the folded net and sets up its kernels
        t = time.perf_counter()
        evaluate(
            model, part, batch, autocast=lambda: prec.autocast(device),
            channels_last=prec.channels_last, mean=train_data.mean, std=train_data.std,
        )  # fmt: skip
        _sync(device)
        spent.append(time.perf_counter() - t)
    start_s += spent[0] - spent[1]

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)  # where the runs write: the same disk
    with tempfile.TemporaryDirectory(dir=out, prefix=".timing-") as tmp:
        t = time.perf_counter()
        save_checkpoint(Path(tmp), 1, model, optimizer, {"step": 1})
        checkpoint_s = time.perf_counter() - t
    sizes = {"train": len(train_data), "test": len(test_data), "val": len(val_data or ())}
    return Timing(start_s, step_s, spent[1] / len(part), sizes, len(loader), checkpoint_s)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
