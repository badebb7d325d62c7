"""The training loop: `train(config)` runs one run folder from start (or checkpoint) to summary.

The loop is written out in full, nanoGPT style: data, model, optimizer, then one explicit loop that
steps, logs, evaluates and checkpoints. The learning rate and the data order are pure functions of the
step, so resuming needs only the weights, the optimizer state and the step count; a run killed at any
moment and resumed with `--deterministic` ends with bit-identical weights.
"""

from __future__ import annotations

import json
import math
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from reslab.data import ImageData, Loader, load_dataset, train_val_split
from reslab.models import count_params, create_model, save_weights
from reslab.training import allocator, distributed, precision
from reslab.training.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from reslab.training.config import TrainConfig
from reslab.training.evaluation import evaluate
from reslab.training.tracking import RunLog, provenance, write_json

CIFAR_LIKE = ("cifar10", "cifar100")


class Diverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def train(cfg: TrainConfig) -> dict:
    """Train `cfg.model` on `cfg.data`; writes `cfg.out/cfg.run_name/` and returns its summary."""
    d = distributed.setup(cfg.device)
    try:
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
    if cfg.grad_checkpoint and d.device.type == "cpu" and allocator.current() == "system":
        warnings.warn(
            "activation checkpointing on the C library's malloc keeps about 3x the live memory "
            f"resident (fragmentation); run with {allocator.ENV}=tcmalloc for the bound "
            "(see reslab.training.allocator)",
            stacklevel=2,
        )
    prec = precision.choose(cfg.amp, cfg.channels_last, d.device, precision.has_conv(model))
    channels_last = prec.channels_last
    if d.is_main:
        precision.announce(prec)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(
        _param_groups(model, cfg.weight_decay),
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov,
        # one kernel per step instead of one per op: 2x faster steps for nets of thousands of
        # small tensors (resmlp-10000: 177 vs 361 ms on a 2-core AVX2 EPYC), same update
        fused=d.device.type in ("cpu", "cuda") or None,
    )

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
    eval_every = cfg.eval_every or max(1, total // 20)
    ckpt_every = cfg.checkpoint_every or eval_every

    step, resume_from = 0, None
    ckpts = list_checkpoints(run_dir / "checkpoints") if cfg.resume else []
    if ckpts:
        resume_from = ckpts[-1]
        state = load_checkpoint(resume_from, model, optimizer)
        step = state["step"]
        torch.set_rng_state(torch.tensor(state["torch_rng"], dtype=torch.uint8))
    if d.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / "config.json", cfg.to_dict())
        write_json(run_dir / "env.json", {**provenance(d.device), "precision": prec.to_dict()})
    log = RunLog(run_dir, active=d.is_main, resume_step=step if cfg.resume else None)

    net: nn.Module = model
    if d.world_size > 1:
        net = DistributedDataParallel(
            model, device_ids=[d.device.index] if d.device.type == "cuda" else None
        )
    if cfg.compile:
        net = torch.compile(net)

    eval_batch = cfg.eval_batch_size or (cfg.batch_size if prec.conv else 1024)
    eval_batch = max(d.world_size, eval_batch - eval_batch % d.world_size)

    def autocast():
        return prec.autocast(d.device)

    def run_eval(data: ImageData) -> dict:
        if cfg.eval_limit and len(data) > cfg.eval_limit:
            data = data.subset(torch.arange(cfg.eval_limit))
        return evaluate(
            model, data, eval_batch, d, autocast, channels_last, train_data.mean, train_data.std
        )

    bar = tqdm(
        total=total,
        initial=step,
        disable=not (cfg.progress and d.is_main),
        desc=cfg.run_name,
        unit="it",
        dynamic_ncols=True,
        leave=False,
    )
    stats = torch.zeros(
        3, device=d.device
    )  # loss sum, error count, images, since the last log line
    bad = torch.zeros((), dtype=torch.bool, device=d.device)
    t_train, t_last, t_start = 0.0, time.perf_counter(), time.perf_counter()
    paused = 0.0  # seconds spent evaluating and checkpointing since the last log line
    images_per_s = 0.0
    net.train()
    try:
        while step < total:
            epoch, start = divmod(step, steps_per_epoch)
            for x, y in loader.epoch(epoch, start=start):  # x: (B, C, H, W) normalised, y: (B,)
                lr = lr_at(step, total, cfg)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                with autocast():
                    logits = net(x)
                    loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip:
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                step += 1
                with torch.no_grad():
                    bad |= ~torch.isfinite(loss)
                    stats += torch.stack(
                        [
                            loss.detach() * len(y),
                            (logits.argmax(1) != y).sum(),
                            torch.tensor(len(y), device=d.device),
                        ]
                    ).float()

                if step % cfg.log_every == 0 or step == total:
                    s = distributed.all_sum(torch.cat([stats, bad.float()[None]]), d).tolist()
                    if s[3] > 0:
                        raise Diverged(
                            f"loss is not finite at step {step} (lr {lr:g}); "
                            "lower --lr or add --grad-clip"
                        )
                    now = time.perf_counter()
                    busy = max(now - t_last - paused, 1e-9)  # training time only
                    t_train += busy
                    images_per_s = s[2] / busy
                    log.write(
                        "train",
                        step,
                        epoch=step / steps_per_epoch,
                        train_loss=s[0] / s[2],
                        train_error=s[1] / s[2],
                        lr=lr,
                        images_per_s=images_per_s,
                        time=now - t_start,
                    )
                    bar.set_postfix(
                        loss=f"{s[0] / s[2]:.3f}",
                        err=f"{s[1] / s[2]:.1%}",
                        img_s=f"{images_per_s:.0f}",
                        refresh=False,
                    )
                    stats.zero_()
                    t_last, paused = time.perf_counter(), 0.0
                bar.update(1)
                if step % eval_every == 0 or step == total:
                    t_pause = time.perf_counter()
                    metrics = {
                        f"test_{k}": v for k, v in run_eval(test_data).items() if k != "top5_error"
                    }
                    if val_data is not None:
                        metrics.update(
                            {
                                f"val_{k}": v
                                for k, v in run_eval(val_data).items()
                                if k != "top5_error"
                            }
                        )
                    log.write(
                        "eval",
                        step,
                        epoch=step / steps_per_epoch,
                        **metrics,
                        time=time.perf_counter() - t_start,
                    )
                    paused += time.perf_counter() - t_pause
                if step % ckpt_every == 0 or step == total:
                    t_pause = time.perf_counter()
                    # a finite loss can still be followed by an update to inf: check the weights too
                    bad |= ~torch.stack(
                        [t.isfinite().all() for t in model.state_dict().values()]
                    ).all()
                    if distributed.all_sum(bad.float(), d).item() > 0:
                        raise Diverged(
                            f"loss or weights not finite at step {step}; lower --lr or add --grad-clip"
                        )
                    if d.is_main:
                        save_checkpoint(
                            run_dir / "checkpoints",
                            step,
                            model,
                            optimizer,
                            {
                                "torch_rng": torch.get_rng_state().tolist(),
                                "epoch": epoch,
                                "total": total,
                            },
                        )
                    distributed.barrier(d)
                    paused += time.perf_counter() - t_pause
                if step >= total:
                    break
    except Diverged:
        bar.close()
        log.close()
        if d.is_main:
            write_json(
                run_dir / "summary.json",
                {"name": cfg.run_name, "status": "diverged", "steps": step},
            )
        raise
    bar.close()

    final_train, final_test = run_eval(train_data), run_eval(test_data)
    summary = {
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
        "time_s": t_train,
        "images_per_s": images_per_s,
        "resumed_from": resume_from and resume_from.name,
        "amp": prec.name,
        "channels_last": channels_last,
        "precision_reason": prec.reason,
        "world_size": d.world_size,
        "grad_checkpoint": getattr(model, "grad_checkpoint", 0),
        "peak_memory_gib": peak_memory_gib(d.device),
    }
    if d.is_main:
        log.write(
            "final",
            step,
            train_loss=final_train["loss"],
            train_error=final_train["error"],
            test_loss=final_test["loss"],
            test_error=final_test["error"],
            test_top5_error=final_test["top5_error"],
        )
        save_weights(model, run_dir / "model.safetensors")
        write_json(run_dir / "summary.json", summary)
    log.close()
    return summary


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


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Learning rate for optimizer step `step` (0-based) of `total`: warm-up, then the schedule."""
    if step < cfg.warmup_iters:
        return cfg.warmup_lr
    t = (step - cfg.warmup_iters) / max(1, total - cfg.warmup_iters)  # progress in [0, 1)
    if cfg.schedule == "step":
        return cfg.lr * cfg.gamma ** sum(t >= m for m in cfg.milestones)
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * t))
    if cfg.schedule == "onecycle":  # as torch.optim.lr_scheduler.OneCycleLR: 30% up, cosine down
        lo, end, up = cfg.lr / 25, cfg.lr / 25e4, 0.3
        if t < up:
            return lo + (cfg.lr - lo) * 0.5 * (1 - math.cos(math.pi * t / up))
        return end + (cfg.lr - end) * 0.5 * (1 + math.cos(math.pi * (t - up) / (1 - up)))
    return cfg.lr


def load_data(cfg: TrainConfig) -> tuple[ImageData, ImageData, ImageData | None]:
    """Training, test and (optional) validation sets as uint8 tensors."""
    train_data = load_dataset(cfg.data, "train", root=cfg.data_dir)
    test_data = load_dataset(cfg.data, "test", root=cfg.data_dir)
    val_data = None
    if cfg.val_size:
        train_data, val_data = train_val_split(train_data, cfg.val_size, seed=cfg.seed)
    if cfg.train_subset and cfg.train_subset < len(train_data.labels):
        _, train_data = train_val_split(train_data, cfg.train_subset, seed=cfg.seed)
    return train_data, test_data, val_data


def build_model(cfg: TrainConfig, data: ImageData) -> nn.Module:
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


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    return [
        {"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}
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


def _existing_run(run_dir: Path, cfg: TrainConfig) -> dict | None:
    """Refuse to overwrite a run; on --resume return a finished run's summary or check the config."""
    if not run_dir.exists() or not any(run_dir.iterdir()):
        return None
    if not cfg.resume:
        raise FileExistsError(
            f"run folder {run_dir} already exists; pass --resume to continue it "
            "or --name to start another"
        )
    saved = run_dir / "config.json"
    if saved.exists():
        old = json.loads(saved.read_text())
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
    summary = run_dir / "summary.json"
    if summary.exists():
        done = json.loads(summary.read_text())
        if done.get("status") == "completed":
            return done
    return None


def _norm(v):
    return list(v) if isinstance(v, tuple) else v
