"""The training loop: `train(config)` runs one run folder from start (or checkpoint) to summary.

The loop is written out in full, nanoGPT style: data, model, optimizer, then one explicit loop that
steps, logs, evaluates and checkpoints. The learning rate and the data order are pure functions of the
step, so resuming needs only the weights, the optimizer state and the step count; a run killed at any
moment and resumed with `--deterministic` ends with bit-identical weights.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import overload

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from reslab.data import (
    ImageData,
    Loader,
    Normalization,
    load_dataset,
    subtract_mean_image,
    train_val_split,
)
from reslab.models import create_model, save_weights
from reslab.models.registry import Model
from reslab.training import allocator, distributed, precision, runs
from reslab.training.bookkeeping import (
    Clock,
    Diverged,
    StepStats,
    checkpoint,
    completed_summary,
    diverged_summary,
    log_eval,
    log_final,
    log_train,
    progress_bar,
)
from reslab.training.checkpoint import (
    TRAINER,
    DamagedCheckpoint,
    list_checkpoints,
    load_checkpoint,
    set_aside,
)
from reslab.training.config import TrainConfig
from reslab.training.evaluation import curve_subset, eval_plan, evaluate
from reslab.training.runs import write_json
from reslab.training.tracking import RunLog, provenance

CIFAR_LIKE = ("cifar10", "cifar100")


def train(cfg: TrainConfig) -> dict:
    """Train `cfg.model` on `cfg.data`; writes `cfg.out/cfg.run_name/` and returns its summary."""
    if not isinstance(cfg, TrainConfig):
        raise TypeError(
            f"train() takes a TrainConfig, got {type(cfg).__name__}; build one with "
            "TrainConfig.from_dict(d) or reslab.training.resolve(preset, **options)"
        )
    d = distributed.setup(cfg.device)
    try:
        with runs.lock(Path(cfg.out) / cfg.run_name, active=d.is_main):
            return _train(cfg, d)
    finally:
        distributed.teardown(d)


def _train(cfg: TrainConfig, d: distributed.Dist) -> dict:
    run_dir = Path(cfg.out) / cfg.run_name
    done = _existing_run(run_dir, cfg)
    distributed.barrier(d)  # every rank has looked before the logging rank writes anything
    if done is not None:
        return done
    _set_determinism(cfg)
    torch.manual_seed(cfg.seed)

    train_data, test_data, val_data = load_data(cfg)
    model = build_model(cfg, train_data).to(d.device)
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
    given = {"test": _first(test_data, cfg.eval_limit), "val": _first(val_data, cfg.eval_limit)}
    splits = {k: v for k, v in given.items() if v is not None}
    curve = {k: curve_subset(len(v), cfg.eval_subset) for k, v in splits.items()}
    on_curve = {k: v if (c := curve[k]) is None else v.subset(c) for k, v in splits.items()}
    train_split = _first(train_data, cfg.eval_limit)
    sizes = {"train": len(train_data), "test": len(test_data), "val": len(val_data or ())}
    eval_every = eval_plan(cfg, total, sizes)[0]
    ckpt_every = cfg.checkpoint_every or eval_every

    step, resume_from, warmup_end = _resume(run_dir, cfg, model, optimizer, d.is_main)
    if d.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / runs.CONFIG, cfg.to_dict())
        write_json(run_dir / runs.ENV, {**provenance(d.device), "precision": prec.to_dict()})
    log = RunLog(run_dir, active=d.is_main, resume_step=step if cfg.resume else None)

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

    bar = progress_bar(cfg, d, total, step)
    stats = StepStats(cfg.log_every, d.device, step)  # loss and error since the last train line
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
                    error = log_train(log, bar, stats, clock, d, step, step / steps_per_epoch, lr)
                    if warmup_end is None and step < cfg.warmup_iters:
                        warmup_end = warmup_ends(step, error, cfg)
                bar.update(1)
                if step % eval_every == 0 and step < total:  # the last point: after the loop
                    with clock.pause("curve_eval_s"):
                        log_eval(log, curve_point(), step, step / steps_per_epoch, clock)
                if step % ckpt_every == 0 or step == total:
                    with clock.pause("checkpoint_s"):
                        trainer = {"warmup_end": warmup_end}  # lr_at's one piece of history
                        checkpoint(run_dir, step, epoch, total, model, optimizer, stats, d, trainer)
                if step >= total:
                    break
    except BaseException as err:  # diverged, a failed save, Ctrl-C: the log keeps what it has
        bar.close()
        log.close()
        if isinstance(err, Diverged) and d.is_main:
            write_json(run_dir / runs.SUMMARY, diverged_summary(cfg, step, err))
        raise
    bar.close()

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
    if d.is_main:
        log_eval(log, point, step, step / steps_per_epoch, clock)
        log_final(log, step, final_train, final_test)
        # the file records the inputs' normalisation too: `reslab eval runs/NAME` needs nothing else
        norm = Normalization(cfg.data, train_data.mean, train_data.std)
        save_weights(model, run_dir / runs.WEIGHTS, normalization=norm)
        write_json(run_dir / runs.SUMMARY, summary)
    log.close()
    return summary


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


def make_optimizer(
    cfg: TrainConfig, model: nn.Module, device: torch.device
) -> torch.optim.Optimizer:
    """SGD with momentum over the trainable parameters; the learning rate is set at every step."""
    return torch.optim.SGD(
        param_groups(model, cfg.weight_decay, cfg.lr_scales),
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov,
        # one kernel per step instead of one per op: 2x faster steps for nets of thousands of
        # small tensors (resmlp-10000: 177 vs 361 ms on a 2-core AVX2 EPYC), same update
        fused=device.type in ("cpu", "cuda") or None,
    )


def lr_at(step: int, total: int, cfg: TrainConfig, warmup_end: int | None = None) -> float:
    """Learning rate for optimizer step `step` (0-based) of `total`: warm-up, then the schedule. The
    warm-up lasts `cfg.warmup_iters` steps, or `warmup_end` when `warmup_ends` ended it earlier."""
    end = cfg.warmup_iters if warmup_end is None else min(warmup_end, cfg.warmup_iters)
    if step < end:
        return cfg.warmup_lr
    if cfg.schedule == "step":  # milestones count from step 0, warm-up included: 32k, 48k of 64k
        return cfg.lr * cfg.gamma ** sum(step >= m * total for m in cfg.milestones)
    t = (step - end) / max(1, total - end)  # progress in [0, 1)
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * t))
    if cfg.schedule == "onecycle":  # as torch.optim.lr_scheduler.OneCycleLR: 30% up, cosine down
        lo, last, up = cfg.lr / 25, cfg.lr / 25e4, 0.3
        if t < up:
            return lo + (cfg.lr - lo) * 0.5 * (1 - math.cos(math.pi * t / up))
        return last + (cfg.lr - last) * 0.5 * (1 + math.cos(math.pi * (t - up) / (1 - up)))
    return cfg.lr


def warmup_ends(step: int, train_error: float, cfg: TrainConfig) -> int | None:
    """`step` if the training line just written there ends the warm-up by its condition (He et al.
    2015 §4.2: "until the training error is below 80%"), else None. Every rank sees the same line."""
    return step if 0 < cfg.warmup_until_error and train_error < cfg.warmup_until_error else None


def load_data(cfg: TrainConfig) -> tuple[ImageData, ImageData, ImageData | None]:
    """Training, test and (optional) validation sets as uint8 tensors."""
    train_data = load_dataset(cfg.data, "train", root=cfg.data_dir)
    test_data = load_dataset(cfg.data, "test", root=cfg.data_dir)
    val_data = None
    if cfg.val_size:
        train_data, val_data = train_val_split(train_data, cfg.val_size, seed=cfg.seed)
    if cfg.train_subset and cfg.train_subset < len(train_data.labels):
        _, train_data = train_val_split(train_data, cfg.train_subset, seed=cfg.seed)
    if cfg.normalize == "pixel-mean":  # the mean image of the images trained on (He et al. §4.2)
        shifted = subtract_mean_image(train_data, test_data, val_data)
        train_data, test_data, val_data = shifted  # type: ignore[assignment]  # None stays None
    return train_data, test_data, val_data


def build_model(cfg: TrainConfig, data: ImageData) -> Model:
    """The model named in `cfg`, sized for `data` (classes, channels, image size)."""
    _, c, h, w = data.images.shape
    kwargs = dict(cfg.model_kwargs)
    if cfg.grad_checkpoint:
        kwargs["grad_checkpoint"] = cfg.grad_checkpoint
    return create_model(
        cfg.model, num_classes=len(data.classes), in_chans=c, img_size=(h, w), **kwargs
    )


def augment_on(cfg: TrainConfig) -> bool:
    if cfg.augment == "auto":
        return cfg.data in CIFAR_LIKE
    return cfg.augment == "on"


def param_groups(
    model: nn.Module, weight_decay: float, lr_scales: dict | None = None
) -> list[dict]:
    """The trainable parameters in groups of one learning-rate multiplier (`lr_scale`): a parameter
    takes the value of the first key of `lr_scales` its name contains, else 1 (hongyi-zhang/Fixup's
    cifar_train.py: names holding "bias" or "scale" at lr/10). Groups keep the model's order."""
    groups: dict[float, list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            scale = next((v for k, v in (lr_scales or {}).items() if k in name), 1.0)
            groups.setdefault(float(scale), []).append(p)
    return [
        {"params": ps, "weight_decay": weight_decay, "lr_scale": scale}
        for scale, ps in groups.items()
    ]


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


def _resume(
    run_dir: Path, cfg: TrainConfig, model: nn.Module, optimizer: torch.optim.Optimizer, main: bool
) -> tuple[int, Path | None, int | None]:
    """On --resume, restore the newest checkpoint that reads back whole; returns (step, its folder,
    the step where a conditional warm-up ended or None), or (0, None, None). Newer damaged ones are
    renamed aside (`main` only), with a warning each."""
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
        return state["step"], path, warmup_end
    if damaged:
        raise ValueError(
            f"--resume: no checkpoint in {root} reads back whole: "
            + "; ".join(str(err) for _, err in damaged)
            + "; they are left as they are (delete them and rerun with --resume to start over)"
        )
    return 0, None, None


def _restore_rng(path: Path, state: dict) -> None:
    try:
        torch.set_rng_state(torch.tensor(state["torch_rng"], dtype=torch.uint8))
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise DamagedCheckpoint(f"{path / TRAINER} holds no CPU RNG state ({err})") from None


def _existing_run(run_dir: Path, cfg: TrainConfig) -> dict | None:
    """Refuse to overwrite a run; on --resume return a finished run's summary or check the config."""
    if not run_dir.exists() or all(p.name == runs.LOCK for p in run_dir.iterdir()):
        return None
    if not cfg.resume:
        raise FileExistsError(
            f"run folder {run_dir} already exists; pass --resume to continue it "
            "or --name to start another"
        )
    if (run_dir / runs.CONFIG).exists():
        old = {**TrainConfig().to_dict(), **runs.read_config(run_dir)}  # absent key: its default
        volatile = {"resume", "progress", "device", "num_threads", "compile"}
        diff = sorted(
            k
            for k in old
            if k not in volatile and k in cfg.to_dict() and _norm(old[k]) != _norm(cfg.to_dict()[k])
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
        return done
    return None


def _norm(v):
    return list(v) if isinstance(v, tuple) else v
