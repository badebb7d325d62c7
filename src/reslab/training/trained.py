"""Trained runs loaded back and evaluated: `load_run` (the model of a run folder or weights file, with
the input normalisation it was trained with, and the run's config) and `evaluate_weights`, what
`reslab eval` runs."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from reslab.data import ImageData, Normalization, load_dataset, subtract_mean_image
from reslab.training import distributed, runs
from reslab.training.build import load_trained
from reslab.training.config import TrainConfig, check_model_args
from reslab.training.evaluation import evaluate

if TYPE_CHECKING:
    from reslab.models.registry import Model


def load_run(path: str | os.PathLike) -> tuple[Model, TrainConfig | None]:
    """The trained model of a run folder (`runs/NAME`, as `reslab train` leaves it) and its config.

    The model is built as its weights file records it (name, classes, input size, options:
    `reslab.models.weights.create_saved`), loaded, in eval mode on the CPU; `model.normalization` is
    the input normalisation it was trained with, which `evaluate(model, data)` applies: recorded in
    the weights file, or for a run from before reslab recorded it, recomputed from the run's config
    and data. `path` may also be a weights file: its run folder's config comes with it when it is
    one's model.safetensors, else the config is None."""
    from reslab.models.weights import saved_settings

    path = Path(path)
    weights = path / runs.WEIGHTS if path.is_dir() else path
    if path.is_dir() and not weights.is_file():
        raise FileNotFoundError(
            f"{path} holds no {runs.WEIGHTS}: not a run folder, or its run has not finished"
        )
    run_dir = weights.parent if weights.name == runs.WEIGHTS else None
    cfg = None
    if run_dir is not None and (run_dir / runs.CONFIG).is_file():
        cfg = TrainConfig.from_dict(runs.read_config(run_dir))
    if cfg is not None and saved_settings(weights)[0] is None:  # train(cfg, model=your_module)
        raise ValueError(
            f"{run_dir} holds the weights of a {cfg.model} trained with train(cfg, model=...), "
            f"which reslab cannot rebuild: build that module again and load them with "
            f"reslab.load_weights(module, {str(weights)!r})"
        )
    return load_trained(weights, cfg), cfg


def evaluate_weights(
    model: str | None = None,
    weights: str | None = None,
    data: str | None = None,
    data_dir: str | None = None,
    split: str = "test",
    batch_size: int = 256,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    device: str = "auto",
    num_threads: int = 0,
    model_kwargs: dict | None = None,
    amp: str = "auto",
    channels_last: str = "auto",
    normalize: str | None = None,
    run: str | None = None,
) -> dict:
    """Evaluate a run (`run`: a run folder or a weights file) or `weights` (a file in any format
    `load_weights` reads) on the `split` of `data`; what `reslab eval` prints.

    A run folder, or a reslab file that records its model and input normalisation (as every run
    trained by reslab saves it), needs nothing else: the model, sizes, options, normalisation and
    dataset come from it (`load_run`). A `model`, `model_kwargs`, `normalize` or `mean`/`std` that
    contradicts what it records is ignored with a warning: the weights fit only the model and the
    inputs they were trained with. Other files (torchvision's, runs saved before reslab recorded the
    normalisation) take the `model` and the normalisation given: per channel by `mean`/`std`
    (default: the dataset's), or `normalize="pixel-mean"` (the mean image of the whole training
    split). `amp` and `channels_last` follow the training rule (`reslab.training.precision.choose`)."""
    from reslab.models import create_model, load_weights
    from reslab.models.weights import saved_settings
    from reslab.training import precision

    if not (isinstance(num_threads, int) and num_threads >= 0):
        raise ValueError(f"num_threads must be an integer >= 0, got {num_threads!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for name, v in (("mean", mean), ("std", std)):
        if v is not None and not all(math.isfinite(x) for x in v):
            raise ValueError(f"--{name} values must be finite numbers, got {list(v)}")
    if std is not None and not all(x > 0 for x in std):
        raise ValueError(f"--std values must be > 0, got {list(std)}")
    if normalize not in (None, "channel", "pixel-mean"):
        raise ValueError(f"normalize must be channel or pixel-mean, got {normalize!r}")
    if normalize == "pixel-mean" and (mean is not None or std is not None):
        raise ValueError("--normalize pixel-mean takes no --mean/--std (it uses the mean image)")
    if run is not None and weights is not None:
        raise ValueError("give a run folder or --weights FILE, not both")
    if run is None and weights is None:
        raise ValueError("give a run folder (reslab eval runs/NAME) or --weights FILE")
    check_model_args(model_kwargs or {})
    d = distributed.setup(device)  # a bad device fails before any data is read
    source = run if run is not None else weights
    assert source is not None  # one of them: checked above
    if not Path(source).exists():  # so does a missing run or weights file
        raise FileNotFoundError(f"no such {'run folder or ' if run else ''}weights file: {source}")
    if weights is not None and Path(weights).is_dir():
        raise IsADirectoryError(
            f"{weights} is a folder, not a weights file; give {Path(weights) / runs.WEIGHTS}, "
            f"or the run folder itself: reslab eval {weights}"
        )
    recorded = Path(source).is_dir() or saved_settings(source)[0] is not None
    if not recorded and model is None:
        raise ValueError(f"{source} does not record its model; give it with --model")
    if num_threads:
        torch.set_num_threads(num_threads)

    net: Model | None
    if recorded:
        net, cfg = load_run(source)
        _warn_if_contradicted(source, net, model, model_kwargs or {})
        stored = net.normalization
        data = data or (cfg.data if cfg else stored.data if stored else "digits")
        data_dir = data_dir or (cfg.data_dir if cfg else None)
    else:
        net = stored = None
        data = data or "digits"
    ds = load_dataset(data, split, root=data_dir)
    if stored is not None:
        assert net is not None  # what `stored` came with
        _warn_if_renormalized(source, stored, normalize, mean, std)
        _check_fits(source, net, ds)
        ds = stored.apply(ds)
    else:
        if normalize == "pixel-mean":
            train = ds if split == "train" else load_dataset(data, "train", root=data_dir)
            ds = subtract_mean_image(train, ds)[1]
        for name, v in (("mean", mean), ("std", std)):
            if v is not None and len(v) != ds.images.shape[1]:
                raise ValueError(
                    f"--{name} needs {ds.images.shape[1]} values (one per channel), got {len(v)}"
                )
        ds = replace(ds, mean=tuple(mean) if mean else ds.mean, std=tuple(std) if std else ds.std)
    if net is None:
        assert model is not None  # checked above: a file that does not record its model
        _, c, h, w = ds.images.shape
        net = create_model(
            model, num_classes=len(ds.classes), in_chans=c, img_size=(h, w), **(model_kwargs or {})
        )
        load_weights(net, source)
    elif stored is None:
        _check_fits(source, net, ds)
    prec = precision.choose(amp, channels_last, d.device, precision.has_conv(net))
    net.to(d.device)  # in place, as Module.to
    if prec.channels_last:
        net.to(memory_format=torch.channels_last)

    def autocast():
        return prec.autocast(d.device)

    return {
        **evaluate(net, ds, batch_size, d, autocast, prec.channels_last, ds.mean, ds.std),
        "model": net.model_name,
        "data": data,
        "normalization": "pixel-mean" if isinstance(ds.mean, torch.Tensor) else "channel",
        "precision": prec.to_dict(),
    }


_WHY = "the weights fit only the model and inputs they were trained with"


def _warn_if_contradicted(source, net: Model, model: str | None, model_kwargs: dict) -> None:
    """A warning for a --model or --model-arg that differs from what the weights file records."""
    name = net.model_name
    if model is not None and model != name:
        warnings.warn(
            f"{source} holds a {name}; evaluating it, not --model {model} ({_WHY})", stacklevel=3
        )
    recorded = {k: v for k, v in net.default_cfg.items() if k in model_kwargs}
    given = {k: v for k, v in model_kwargs.items() if k != "grad_checkpoint"}
    differ = {k: v for k, v in given.items() if recorded.get(k, _UNSET) != v}
    if differ:
        args = " ".join(f"{k}={v}" for k, v in differ.items())
        built = ", ".join(f"{k}={v!r}" for k, v in recorded.items()) or "its default options"
        warnings.warn(
            f"{source} holds a {name} built with {built}; evaluating it, not --model-arg {args} "
            f"({_WHY})",
            stacklevel=3,
        )


_UNSET = object()


def _warn_if_renormalized(source, stored: Normalization, normalize: str | None, mean, std) -> None:
    """A warning for --normalize, --mean or --std that differ from the normalisation recorded."""
    asked = []
    if normalize is not None and normalize != stored.kind:
        asked.append(f"--normalize {normalize}")
    for flag, given, have in (("--mean", mean, stored.mean), ("--std", std, stored.std)):
        same = (
            given is not None
            and not isinstance(have, torch.Tensor)
            and len(given) == len(have)
            and all(math.isclose(a, b, rel_tol=1e-6) for a, b in zip(given, have, strict=True))
        )
        if given is not None and not same:
            asked.append(f"{flag} {' '.join(f'{v:g}' for v in given)}")
    if asked:
        warnings.warn(
            f"{source} was trained with {stored.describe()} normalisation; evaluating with it, "
            f"not {', '.join(asked)} ({_WHY})",
            stacklevel=3,
        )


def _check_fits(source, net: Model, data: ImageData) -> None:
    """A one-line ValueError when `data` has other classes or images than the model was built for
    (conv nets take any height and width)."""
    from reslab.training.precision import has_conv

    c, h, w = net.default_cfg["input_size"]
    classes = net.default_cfg["num_classes"]
    _, dc, dh, dw = data.images.shape
    if (len(data.classes), dc) != (classes, c) or ((dh, dw) != (h, w) and not has_conv(net)):
        raise ValueError(
            f"{source} holds a {net.model_name} for {c}x{h}x{w} images of {classes} classes; "
            f"{data.name} has {dc}x{dh}x{dw} images of {len(data.classes)}: give the --data it "
            "was trained on"
        )
