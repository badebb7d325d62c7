"""The training loop: `train(config)` runs one run folder from start (or checkpoint) to summary.

The loop is written out in full, nanoGPT style: data, model, optimizer, then one explicit loop that
steps, logs, evaluates and checkpoints. The learning rate and the data order are pure functions of the
step, so resuming needs only the weights, the optimizer state and the step count; a run killed at any
moment and resumed with `--deterministic` ends with bit-identical weights.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from reslab import limits
from reslab.data import (
    ImageData,
    Loader,
    Normalization,
    load_dataset,
    subtract_mean_image,
    train_val_split,
)
from reslab.models import create_model, create_saved, load_weights, save_weights
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
    try:
        with runs.lock(Path(cfg.out) / cfg.run_name, active=d.is_main):
            return _train(cfg, d, model)
    finally:
        distributed.teardown(d)


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
    done = _existing_run(run_dir, cfg)
    distributed.barrier(d)  # every rank has looked before the logging rank writes anything
    if done is not None:
        return TrainResult(done, run_dir, lambda: load_trained(run_dir / runs.WEIGHTS, cfg, given))
    _set_determinism(cfg)
    torch.manual_seed(cfg.seed)

    train_data, test_data, val_data = load_data(cfg)
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
        model = _check_module(given, train_data, cfg.grad_checkpoint)
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
    splits = {"test": _first(test_data, cfg.eval_limit), "val": _first(val_data, cfg.eval_limit)}
    splits = {k: v for k, v in splits.items() if v is not None}
    curve = {k: curve_subset(len(v), cfg.eval_subset) for k, v in splits.items()}
    on_curve = {k: v if curve[k] is None else v.subset(curve[k]) for k, v in splits.items()}
    train_split = _first(train_data, cfg.eval_limit)
    sizes = {"train": len(train_data), "test": len(test_data), "val": len(val_data or ())}
    eval_every = eval_plan(cfg, total, sizes)[0]
    ckpt_every = cfg.checkpoint_every or eval_every

    step, resume_from, warmup_end = _resume(run_dir, cfg, model, optimizer, d.is_main, total)
    if d.is_main:
        _keep_earlier_summary(run_dir, step, total)
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
    model.normalization = Normalization(cfg.data, train_data.mean, train_data.std)
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


def _first(data: ImageData | None, limit: int) -> ImageData | None:
    """The first `limit` images of `data` (all when `limit` is 0): `--eval-limit`."""
    if data is None or not limit or len(data) <= limit:
        return data
    return data.subset(torch.arange(limit))


def load_trained(
    weights: Path, cfg: TrainConfig | None, model: nn.Module | None = None
) -> nn.Module:
    """The trained model of a weights file, in eval mode: `model` with the weights loaded into it,
    else the model the file records (`create_saved`). Its `normalization` is the input
    normalisation the file records, else (a run saved before reslab recorded it) recomputed from
    `cfg`'s data."""
    model = create_saved(weights) if model is None else load_weights(model, weights)
    if model.normalization is None and cfg is not None:
        train_data = load_data(cfg)[0]
        model.normalization = Normalization(cfg.data, train_data.mean, train_data.std)
    return model.eval()


def _check_module(model: nn.Module, data: ImageData, grad_checkpoint: int) -> nn.Module:
    """A one-line ValueError unless `model` takes `data`'s images and gives one logit per class (two
    images through it in eval mode, which changes no running statistics)."""
    if grad_checkpoint:
        model.set_grad_checkpointing(grad_checkpoint)  # type: ignore[operator]
    p = next(model.parameters(), None)
    x = data.images[:2].float().to(p.device if p is not None else "cpu")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except RuntimeError as err:
        shape = "x".join(map(str, data.images.shape[1:]))
        raise ValueError(
            f"{type(model).__name__} cannot take {data.name}'s {shape} images (C x H x W): "
            f"{' '.join(str(err).split())[:200]}"
        ) from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.shape != (len(x), len(data.classes)):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(
            f"{type(model).__name__} gives {got} for 2 images; training on {data.name} needs "
            f"logits of shape (2, {len(data.classes)}), one per class"
        )
    return model


def _wrap(model: nn.Module, cfg: TrainConfig, d: distributed.Dist) -> nn.Module:
    """`model` in DistributedDataParallel under torchrun, and compiled with --compile."""
    net: nn.Module = model
    if d.world_size > 1:
        net = DistributedDataParallel(
            model, device_ids=[d.device.index] if d.device.type == "cuda" else None
        )
    if cfg.compile:
        net = torch.compile(net)
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
        lo, end, up = cfg.lr / 25, cfg.lr / 25e4, 0.3
        if t < up:
            return lo + (cfg.lr - lo) * 0.5 * (1 - math.cos(math.pi * t / up))
        return end + (cfg.lr - end) * 0.5 * (1 + math.cos(math.pi * (t - up) / (1 - up)))
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
        train_data, test_data, val_data = subtract_mean_image(train_data, test_data, val_data)
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
        for bad, err in damaged if main else []:
            aside = set_aside(bad)
            warnings.warn(
                f"--resume: {err}; moved {bad.name} aside to {aside} and resumed from {path.name}",
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


def _keep_earlier_summary(run_dir: Path, step: int, total: int) -> None:
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


def _existing_run(run_dir: Path, cfg: TrainConfig) -> dict | None:
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
