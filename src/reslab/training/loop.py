"""The training loop: `train(config)` runs one run folder from start (or checkpoint) to summary.

The loop is written out in full, nanoGPT style: data, model, optimizer, then one explicit loop that
steps, logs, evaluates and checkpoints. The learning rate and the data order are pure functions of the
step, so resuming needs only the weights, the optimizer state and the step count; a run killed at any
moment and resumed with `--deterministic` ends with bit-identical weights.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import overload

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from reslab import limits
from reslab.data import ImageData, Loader, Normalization
from reslab.models import save_weights
from reslab.training import allocator, distributed, precision, runs, trackers
from reslab.training.bookkeeping import (
    Clock,
    Diverged,
    Progress,
    StepStats,
    checkpoint,
    completed_summary,
    diverged_summary,
    log_eval,
    log_final,
    log_train,
)
from reslab.training.build import augment_on, build_model, check_module, load_data, load_trained
from reslab.training.config import TrainConfig
from reslab.training.evaluation import curve_subset, eval_plan, evaluate
from reslab.training.optim import lr_at, make_optimizer, warmup_ends
from reslab.training.resume import existing_run, keep_earlier_summary, resume
from reslab.training.runs import write_json
from reslab.training.tracking import RunLog, provenance


class TrainResult(dict):
    """What `train` returns: the run's summary, a dict as summary.json holds it
    (`result["final_test_error"]`), with the trained model as `result.model` (in eval mode, with the
    input normalisation it was trained with as `model.normalization`, so that
    `reslab.evaluate(result.model, data)` scores it as the run did) and the run folder as
    `result.run_dir`. For a run that had finished before the call, the model is loaded from its
    folder on first use. It pickles as the plain summary (a study's workers send back only that)."""

    def __init__(self, summary: dict, run_dir: Path, load: Callable[[], nn.Module]):
        super().__init__(summary)
        self.run_dir = run_dir
        self._load: Callable[[], nn.Module] | None = load
        self._model: nn.Module | None = None

    @property
    def model(self) -> nn.Module:
        if self._model is None and self._load is not None:
            self._model, self._load = self._load(), None
        assert self._model is not None
        return self._model

    def __reduce__(self):
        return dict, (dict(self),)


def train(cfg: TrainConfig, model: nn.Module | None = None) -> TrainResult:
    """Train `cfg.model` on `cfg.data`; writes `cfg.out/cfg.run_name/` and returns its summary, with
    the trained model as `.model` (`TrainResult`).

    `model`: train this module instead of building `cfg.model`, in place, as Lightning's
    `Trainer.fit(model)` does: any nn.Module that maps a batch of images (B, C, H, W), normalised
    as `cfg.normalize` says, to logits (B, classes) of the data's classes (a reslab model, the
    tutorial's `to_residual(nn.Sequential(...))`, or a model of your own). The run records it as
    `model.model_name` if it has one, else by its class name (`cfg.model` is replaced by that);
    `load_run` rebuilds only registered models, so load a custom module's weights back with
    `load_weights(module, run_dir / "model.safetensors")`."""
    if not isinstance(cfg, TrainConfig):
        raise TypeError(
            f"train() takes a TrainConfig, got {type(cfg).__name__}; build one with "
            "TrainConfig.from_dict(d) or reslab.training.resolve(preset, **options)"
        )
    if model is not None:
        cfg = _for_module(cfg, model)
    trackers.check_installed(cfg.log_to)  # a missing MLflow or W&B: one line, before any work
    d = distributed.setup(cfg.device)
    finished = False
    try:
        with runs.lock(Path(cfg.out) / cfg.run_name, active=d.is_main):
            result = _train(cfg, d, model)
        finished = True
        return result
    finally:
        distributed.teardown(d, together=finished)


def _for_module(cfg: TrainConfig, model: nn.Module) -> TrainConfig:
    """`cfg` for training the given `model`: `cfg.model` becomes its name; options that only a
    registry model takes are refused."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"train(cfg, model=...) takes an nn.Module, got {type(model).__name__}")
    if cfg.model_kwargs:
        raise ValueError(
            f"model_kwargs {cfg.model_kwargs} configure a registry model; build your module "
            "with those options instead"
        )
    if cfg.grad_checkpoint and not hasattr(model, "set_grad_checkpointing"):
        raise ValueError(
            f"grad_checkpoint needs a model with set_grad_checkpointing (reslab's models have "
            f"it); {type(model).__name__} has none"
        )
    name = getattr(model, "model_name", None) or type(model).__name__
    return dataclasses.replace(cfg, model=str(name))


def _train(cfg: TrainConfig, d: distributed.Dist, given: nn.Module | None = None) -> TrainResult:
    run_dir = Path(cfg.out) / cfg.run_name
    done = existing_run(run_dir, cfg)
    distributed.barrier(d)  # every rank has looked before the logging rank writes anything
    if done is not None:
        return TrainResult(done, run_dir, lambda: load_trained(run_dir / runs.WEIGHTS, cfg, given))
    _set_determinism(cfg)
    torch.manual_seed(cfg.seed)

    train_data, test_data, val_data = load_data(cfg)
    model: nn.Module  # a registry model, or the module given
    if given is None:
        limits.check_model(  # on the meta device first: a typo such as width=1000000 fails at once
            lambda: build_model(cfg, train_data),
            f"model {cfg.model}",
            tuple(train_data.images.shape[1:]),
            0 if cfg.grad_checkpoint else -(-cfg.batch_size // d.world_size),
            d.device,
        )
        model = build_model(cfg, train_data)
    else:
        model = check_module(given, train_data, cfg.grad_checkpoint)
    model = model.to(d.device)
    _warn_if_fragmenting(cfg, d.device)
    prec = precision.choose(cfg.amp, cfg.channels_last, d.device, precision.has_conv(model))
    channels_last = prec.channels_last
    if d.is_main:
        precision.announce(prec)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(cfg, model, d.device)

    loader = Loader(
        train_data,
        cfg.batch_size,
        train=True,
        augment=augment_on(cfg),
        seed=cfg.seed,
        device=d.device,
        channels_last=channels_last,
        rank=d.rank,
        world_size=d.world_size,
    )
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise ValueError(
            f"batch size {cfg.batch_size} is larger than the training set "
            f"({len(train_data.labels)} images); lower --batch-size"
        )
    total = cfg.iters or max(1, round(cfg.epochs * steps_per_epoch))
    # what curve points score: a fixed subset of test (and val), the whole training set with
    # eval_train; the final evaluation scores whole splits (all within eval_limit)
    limited = {"test": _first(test_data, cfg.eval_limit), "val": _first(val_data, cfg.eval_limit)}
    splits = {k: v for k, v in limited.items() if v is not None}
    curve = {k: curve_subset(len(v), cfg.eval_subset) for k, v in splits.items()}
    on_curve = {k: v if (c := curve[k]) is None else v.subset(c) for k, v in splits.items()}
    train_split = _first(train_data, cfg.eval_limit)
    sizes = {"train": len(train_data), "test": len(test_data), "val": len(val_data or ())}
    eval_every = eval_plan(cfg, total, sizes)[0]
    ckpt_every = cfg.checkpoint_every or eval_every

    step, resume_from, warmup_end = resume(run_dir, cfg, model, optimizer, d.is_main, total)
    if d.is_main:
        keep_earlier_summary(run_dir, step, total)
        run_dir.mkdir(parents=True, exist_ok=True)
    # the metrics first: a line that is not a record stops a resume before anything is rewritten;
    # then the --log-to tracker runs open
    log = RunLog(run_dir, d.is_main, step if cfg.resume else None, cfg.log_to, cfg.to_dict())
    if d.is_main:
        write_json(run_dir / runs.CONFIG, cfg.to_dict())
        write_json(run_dir / runs.ENV, {**provenance(d.device), "precision": prec.to_dict()})

    net = _wrap(model, cfg, d)  # what the steps call: DDP and torch.compile around `model`

    eval_batch = cfg.eval_batch_size or (cfg.batch_size if prec.conv else 1024)
    eval_batch = max(d.world_size, eval_batch - eval_batch % d.world_size)

    def autocast():
        return prec.autocast(d.device)

    def score(data: ImageData, subset: torch.Tensor | None = None) -> dict:
        mean, std = train_data.mean, train_data.std
        return evaluate(model, data, eval_batch, d, autocast, channels_last, mean, std, subset)

    def curve_point() -> dict[str, dict]:
        point = {k: score(v) for k, v in on_curve.items()}
        return {**point, "train_eval": score(train_split)} if cfg.eval_train else point

    progress = Progress(cfg, d, total, step)
    # loss and error since the last train line
    stats = StepStats(min(cfg.log_every, total), d.device, step)
    clock = Clock()
    net.train()
    try:
        while step < total:
            epoch, start = divmod(step, steps_per_epoch)
            for x, y in loader.epoch(epoch, start=start):  # x: (B, C, H, W) normalised, y: (B,)
                lr = lr_at(step, total, cfg, warmup_end)
                for group in optimizer.param_groups:
                    group["lr"] = lr * group.get("lr_scale", 1.0)  # absent: a pre-0.2 checkpoint
                with autocast():
                    logits = net(x)
                    loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip:
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                step += 1
                stats.add(loss, logits, y, lr)

                if step % cfg.log_every == 0 or step == total:
                    line = log_train(
                        log, progress, stats, clock, d, step, step / steps_per_epoch, lr
                    )
                    if warmup_end is None and step < cfg.warmup_iters:
                        warmup_end = warmup_ends(step, line["train_error"], cfg)
                progress.update(1)
                if step % eval_every == 0 and step < total:  # the last point: after the loop
                    with clock.pause("curve_eval_s"):
                        point = curve_point()
                        log_eval(log, point, step, step / steps_per_epoch, clock)
                    progress.eval_line(step, point)
                if step % ckpt_every == 0 or step == total:
                    with clock.pause("checkpoint_s"):
                        trainer = {"warmup_end": warmup_end}  # lr_at's one piece of history
                        checkpoint(run_dir, step, epoch, total, model, optimizer, stats, d, trainer)
                if step >= total:
                    break
    except BaseException as err:  # diverged, a failed save, Ctrl-C: the log keeps what it has
        progress.close()
        log.close(err)
        if isinstance(err, Diverged) and d.is_main:
            write_json(run_dir / runs.SUMMARY, diverged_summary(cfg, step, err))
        raise

    with clock.pause("final_eval_s"):  # whole splits; the last curve point from the same passes
        final_train = score(train_split)
        final_test = score(splits["test"], curve["test"])
        point = {"test": final_test.pop("subset", final_test)}
        if "val" in on_curve:
            point["val"] = score(on_curve["val"])
        if cfg.eval_train:
            point["train_eval"] = final_train
    summary = completed_summary(
        cfg, model, d, prec, step, steps_per_epoch, final_train, final_test, clock, resume_from
    )
    progress.eval_line(step, point)
    progress.close()
    # the weights file records the inputs' normalisation: `reslab eval runs/NAME` needs nothing else
    normalization = Normalization(cfg.data, train_data.mean, train_data.std)
    model.normalization = normalization  # type: ignore[assignment]  # ours, on any nn.Module
    if d.is_main:
        log_eval(log, point, step, step / steps_per_epoch, clock)
        log_final(log, step, final_train, final_test)
        log.hparams(
            cfg.to_dict(),
            {f"final/{k[6:]}": v for k, v in summary.items() if k.startswith("final_")},
        )
        save_weights(model, run_dir / runs.WEIGHTS)
        write_json(run_dir / runs.SUMMARY, summary)
    log.close()
    model.eval()
    return TrainResult(summary, run_dir, lambda: model)


@overload
def _first(data: ImageData, limit: int) -> ImageData: ...
@overload
def _first(data: ImageData | None, limit: int) -> ImageData | None: ...
def _first(data: ImageData | None, limit: int) -> ImageData | None:
    """The first `limit` images of `data` (all when `limit` is 0): `--eval-limit`."""
    if data is None or not limit or len(data) <= limit:
        return data
    return data.subset(torch.arange(limit))


def _wrap(model: nn.Module, cfg: TrainConfig, d: distributed.Dist) -> nn.Module:
    """`model` in DistributedDataParallel under torchrun, and compiled with --compile."""
    net: nn.Module = model
    if d.world_size > 1:
        net = DistributedDataParallel(
            model, device_ids=[d.device.index] if d.device.type == "cuda" else None
        )
    if cfg.compile:
        net = torch.compile(net)  # type: ignore[assignment]  # of a Module: a Module
    return net


def _set_determinism(cfg: TrainConfig) -> None:
    # Deep plain nets' gradients fade into denormal floats, which are ~10x slower on CPUs; treat them as 0.
    torch.set_flush_denormal(True)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=False)
        torch.backends.cudnn.benchmark = False
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True


def _warn_if_fragmenting(cfg: TrainConfig, device: torch.device) -> None:
    if cfg.grad_checkpoint and device.type == "cpu" and allocator.current() == "system":
        warnings.warn(
            "activation checkpointing on the C library's malloc keeps about 3x the live memory "
            f"resident (fragmentation); run with {allocator.ENV}=tcmalloc for the bound "
            "(see reslab.training.allocator)",
            stacklevel=3,
        )
