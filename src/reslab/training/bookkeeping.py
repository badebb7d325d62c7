"""What the training loop records around its steps: the metric window, the clock, evaluation lines,
checkpoints, divergence, and the run's summary.

Each helper does one piece of bookkeeping so that `reslab.training.loop._train` reads as one explicit
loop. Only the logging process (rank 0) writes files; every collective here is reached by all ranks.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from reslab.models import count_params
from reslab.training import distributed, runs
from reslab.training.checkpoint import save_checkpoint
from reslab.training.config import TrainConfig
from reslab.training.precision import Precision
from reslab.training.runs import Diverged  # noqa: F401  (raised here; lives where no torch is)
from reslab.training.tracking import RunLog


class StepStats:
    """Training loss and error since the last `train` line, summed on the device so that no step waits
    for the host; each step's row is kept too, so a divergence can name its first non-finite step and
    the last finite loss before it."""

    def __init__(self, log_every: int, device: torch.device, step: int):
        self.sums = torch.zeros(3, device=device)  # loss sum, error count, images
        # row i >= 1: step `start + i` as (loss * images, errors, images, loss not finite);
        # row 0: the last step before this window (all zero when there is none)
        self.rows = torch.zeros(log_every + 1, 4, device=device)
        self.lrs = [0.0] * (log_every + 1)
        self.bad = torch.zeros((), dtype=torch.bool, device=device)  # loss or weights not finite
        self.start, self.n = step, 0

    @torch.no_grad()
    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, lr: float) -> None:
        """Count one step: its mean `loss`, `logits` (B, classes) against labels `y` (B,), its `lr`."""
        not_finite = ~torch.isfinite(loss)
        self.bad |= not_finite
        n = torch.tensor(len(y), device=y.device)
        row = torch.stack([loss.detach() * len(y), (logits.argmax(1) != y).sum(), n, not_finite])
        self.sums += row[:3].float()
        self.n += 1
        self.rows[self.n] = row
        self.lrs[self.n] = lr

    def reduce(self, d: distributed.Dist) -> tuple[float, float, float]:
        """(loss sum, errors, images) since the last line, over all ranks; raises Diverged if any
        step's loss was not finite."""
        s = distributed.all_sum(torch.cat([self.sums, self.bad.float()[None]]), d).tolist()
        if s[3] > 0:
            raise self.diverged(d, self.start + self.n)
        return s[0], s[1], s[2]

    def reset(self, step: int) -> None:
        """Start the next window after `step`, the step just logged."""
        self.rows[0] = self.rows[self.n]
        self.lrs[0] = self.lrs[self.n]
        self.sums.zero_()
        self.start, self.n = step, 0

    def check_weights(self, model: nn.Module, d: distributed.Dist, step: int) -> None:
        """Raise Diverged if a loss since the last line, or any weight, is not finite on any rank
        (a finite loss can still be followed by an update to inf)."""
        self.bad |= ~torch.stack([t.isfinite().all() for t in model.state_dict().values()]).all()
        if distributed.all_sum(self.bad.float(), d).item() > 0:
            raise self.diverged(d, step)

    def diverged(self, d: distributed.Dist, step: int) -> Diverged:
        """The Diverged error for a divergence found at `step`, naming where it began."""
        rows = distributed.all_sum(self.rows[: self.n + 1], d).tolist()
        first = next((i for i in range(1, len(rows)) if rows[i][3] > 0), None)
        if first is None:  # every loss was finite: the update of `step` broke the weights
            at, last = step, self._loss(rows[-1])
            what = f"weights are not finite after step {at} (lr {self.lrs[self.n]:g})"
        else:
            at, last = self.start + first, self._loss(rows[first - 1])
            what = f"loss is not finite at step {at} (lr {self.lrs[first]:g})"
        seen = f"last finite loss {last:.4g}" if last is not None else "no finite loss seen"
        return Diverged(f"{what}; {seen}; lower --lr or add --grad-clip", at, last)

    @staticmethod
    def _loss(row: list[float]) -> float | None:
        loss = row[0] / row[2] if row[2] > 0 else math.nan
        return loss if math.isfinite(loss) else None


class Clock:
    """Wall time since the start, and training time between `train` lines less the pauses for
    evaluation and checkpoints; the pauses' seconds by what they were for (`spent`)."""

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.paused = 0.0  # seconds spent evaluating and checkpointing since the last line
        self.train_s = 0.0
        self.images_per_s = 0.0
        self.spent: dict[str, float] = {}  # e.g. {"curve_eval_s": ..., "final_eval_s": ...}

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    @contextmanager
    def pause(self, what: str = "other_s") -> Iterator[None]:
        """Time spent inside does not count as training time; it adds to `spent[what]`."""
        t = time.perf_counter()
        yield
        dt = time.perf_counter() - t
        self.paused += dt
        self.spent[what] = self.spent.get(what, 0.0) + dt

    def lap(self, images: float) -> float:
        """Close a logging interval that trained on `images`; returns the wall time so far."""
        now = time.perf_counter()
        busy = max(now - self.last - self.paused, 1e-9)  # training time only
        self.train_s += busy
        self.images_per_s = images / busy
        return now - self.start

    def restart(self) -> None:
        self.last, self.paused = time.perf_counter(), 0.0


def log_train(
    log: RunLog,
    progress: Progress,
    stats: StepStats,
    clock: Clock,
    d: distributed.Dist,
    step: int,
    epoch: float,
    lr: float,
) -> dict:
    """Write the `train` line for the steps since the last one, show it on the progress bar, and start
    the next window; returns the line's values; raises Diverged if a loss was not finite."""
    loss_sum, errors, images = stats.reduce(d)
    now = clock.lap(images)
    values = dict(
        epoch=epoch,
        train_loss=loss_sum / images,
        train_error=errors / images,
        lr=lr,
        images_per_s=clock.images_per_s,
        time=now,
    )
    log.write("train", step, **values)
    progress.train_line(values)
    stats.reset(step)
    clock.restart()
    return values


def log_eval(log: RunLog, point: dict[str, dict], step: int, epoch: float, clock: Clock) -> None:
    """Write the `eval` line of a curve point: loss, error and n of each split evaluated, keyed
    "test", "val", "train_eval" (top-5 error waits for the final evaluation). `test_n`/`val_n` say
    how many images the point scored (TrainConfig.eval_subset); the training set's are
    `train_eval_*`, apart from the `train` lines' running minibatch numbers."""
    metrics = {
        f"{prefix}_{k}": v
        for prefix, result in point.items()
        for k, v in result.items()
        if k in ("loss", "error", "n")
    }
    log.write("eval", step, epoch=epoch, **metrics, time=clock.elapsed())


def checkpoint(
    run_dir: Path,
    step: int,
    epoch: int,
    total: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    stats: StepStats,
    d: distributed.Dist,
    trainer: dict | None = None,
) -> None:
    """Check that loss and weights are finite (else raise Diverged), then save checkpoint `step` of
    `total` (with the CPU RNG state and the loop's `trainer` values) on rank 0 while the other ranks
    wait."""
    state = {"torch_rng": torch.get_rng_state().tolist(), "epoch": epoch, "total": total}
    state.update(trainer or {})
    stats.check_weights(model, d, step)
    if d.is_main:
        save_checkpoint(run_dir / runs.CHECKPOINTS, step, model, optimizer, state)
    distributed.barrier(d)


def diverged_summary(cfg: TrainConfig, steps: int, err: Diverged) -> dict:
    """summary.json of a run stopped by `err` after `steps` steps."""
    return {
        "name": cfg.run_name,
        "model": cfg.model,
        "data": cfg.data,
        "status": "diverged",
        "steps": steps,
        "diverged_at_step": err.step,
        "last_finite_loss": err.last_finite_loss,
    }


class Progress:
    """What a person watching the run sees, on the logging rank: a tqdm bar on a terminal, showing
    the last training line's loss, error and speed and the last curve point's test error; else (with
    --no-progress, or output that is not a terminal: a Slurm or CI log) one line per evaluation on
    stdout, as timm prints them, unless `cfg.log_lines` is off (studies print their own lines)."""

    def __init__(self, cfg: TrainConfig, d: distributed.Dist, total: int, step: int):
        self.name, self.total = cfg.run_name, total
        bar = cfg.progress and d.is_main and sys.stderr.isatty()
        self.lines = d.is_main and cfg.log_lines and not bar
        self.bar = tqdm(
            total=total,
            initial=step,
            disable=not bar,
            desc=cfg.run_name,
            unit="it",
            dynamic_ncols=True,
            leave=False,
        )
        self.train: dict = {}  # the last training line
        self.test_error: float | None = None  # the last curve point's

    def update(self, steps: int = 1) -> None:
        self.bar.update(steps)

    def train_line(self, values: dict) -> None:
        self.train = values
        self._postfix()

    def eval_line(self, step: int, point: dict[str, dict]) -> None:
        """A curve point (or the final one) was scored: show its test error; print its line."""
        self.test_error = point["test"]["error"]
        self._postfix()
        if self.lines:
            t = self.train
            parts = [f"{self.name}  step {step}/{self.total}"]
            if t:
                parts += [
                    f"lr {t['lr']:.4g}",
                    f"loss {t['train_loss']:.4f}",
                    f"train error {t['train_error']:.2%}",
                ]
            parts.append(f"test error {self.test_error:.2%}")
            if "val" in point:
                parts.append(f"val error {point['val']['error']:.2%}")
            if t:
                parts.append(f"{t['images_per_s']:.0f} img/s")
            print("  ".join(parts), flush=True)

    def _postfix(self) -> None:
        t, shown = self.train, {}
        if t:
            shown = dict(
                loss=f"{t['train_loss']:.3f}",
                err=f"{t['train_error']:.1%}",
                img_s=f"{t['images_per_s']:.0f}",
            )
        if self.test_error is not None:
            shown["test_err"] = f"{self.test_error:.1%}"
        self.bar.set_postfix(shown, refresh=False)

    def close(self) -> None:
        self.bar.close()


def log_final(log: RunLog, step: int, final_train: dict, final_test: dict) -> None:
    """The `final` line: loss and errors on the whole training and test sets."""
    log.write(
        "final",
        step,
        train_loss=final_train["loss"],
        train_error=final_train["error"],
        test_loss=final_test["loss"],
        test_error=final_test["error"],
        test_top5_error=final_test["top5_error"],
    )


def completed_summary(
    cfg: TrainConfig,
    model: nn.Module,
    d: distributed.Dist,
    prec: Precision,
    step: int,
    steps_per_epoch: int,
    final_train: dict,
    final_test: dict,
    clock: Clock,
    resume_from: Path | None,
) -> dict:
    """summary.json of a run that finished its `step` steps."""
    return {
        "name": cfg.run_name,
        "model": cfg.model,
        "data": cfg.data,
        "params": count_params(model),
        "steps": step,
        "epochs": step / steps_per_epoch,
        "status": "completed",
        "final_train_loss": final_train["loss"],
        "final_train_error": final_train["error"],
        "final_test_loss": final_test["loss"],
        "final_test_error": final_test["error"],
        "final_test_top5_error": final_test["top5_error"],
        "time_s": clock.train_s,
        "images_per_s": clock.images_per_s,
        # seconds of the curve points, the final evaluation and the checkpoints (this invocation)
        **{k: clock.spent.get(k, 0.0) for k in ("curve_eval_s", "final_eval_s", "checkpoint_s")},
        "resumed_from": resume_from and resume_from.name,
        "amp": prec.name,
        "channels_last": prec.channels_last,
        "precision_reason": prec.reason,
        "world_size": d.world_size,
        "grad_checkpoint": getattr(model, "grad_checkpoint", 0),
        "peak_memory_gib": peak_memory_gib(d.device),
    }


def peak_memory_gib(device: torch.device) -> float | None:
    """Peak memory of this process so far: the GPU's allocated peak on CUDA, else the peak resident
    set (RSS) of the process (None where the OS does not report it)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / (2**30 if sys.platform == "darwin" else 2**20)
