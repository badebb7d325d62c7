"""Evaluation: loss, top-1 and top-5 error of a model on a whole dataset, in eval mode."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from reslab.data import ImageData, Loader, load_dataset, subtract_mean_image
from reslab.training import distributed
from reslab.training.config import check_model_args


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    data: ImageData,
    batch_size: int,
    d: distributed.Dist,
    autocast: Callable = contextlib.nullcontext,
    channels_last: bool = False,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> dict:
    """Mean loss, top-1 and top-5 error of `model` on all of `data` (no augmentation), over all ranks.

    `mean`/`std` normalise the pixels (default: the dataset's own statistics)."""
    was_training = model.training
    model.eval()
    loader = Loader(
        data,
        batch_size,
        train=False,
        augment=False,
        device=d.device,
        channels_last=channels_last,
        rank=d.rank,
        world_size=d.world_size,
        mean=mean,
        std=std,
    )
    sums = torch.zeros(
        4, device=d.device, dtype=torch.float64
    )  # loss, top-1 errors, top-5 errors, n
    for x, y in loader.epoch(0):
        with autocast():
            logits = model(x).float()  # (B, classes)
        top5 = (logits.topk(min(5, logits.shape[1]), dim=1).indices == y[:, None]).any(1)
        sums += torch.stack(
            [
                F.cross_entropy(logits, y, reduction="sum"),
                (logits.argmax(1) != y).sum(),
                (~top5).sum(),
                torch.tensor(len(y), device=d.device),
            ]
        ).double()
    sums = distributed.all_sum(sums, d).tolist()
    model.train(was_training)
    n = max(sums[3], 1)
    return {"loss": sums[0] / n, "error": sums[1] / n, "top5_error": sums[2] / n, "n": int(sums[3])}


def evaluate_weights(
    model: str,
    weights: str,
    data: str = "digits",
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
    normalize: str = "channel",
) -> dict:
    """Build `model`, load `weights` (any format `load_weights` reads) and evaluate it on `data`.

    Weights trained with other normalisation constants take them through `mean`/`std`; weights
    trained with `normalize="pixel-mean"` need it here too (the mean image of the whole training
    split). `amp` and `channels_last` follow the training rule (`reslab.training.precision.choose`)."""
    from reslab.models import create_model, load_weights
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
    if normalize not in ("channel", "pixel-mean"):
        raise ValueError(f"normalize must be channel or pixel-mean, got {normalize!r}")
    if normalize == "pixel-mean" and (mean is not None or std is not None):
        raise ValueError("--normalize pixel-mean takes no --mean/--std (it uses the mean image)")
    check_model_args(model_kwargs or {})
    d = distributed.setup(device)  # a bad device fails before any data is read
    if not Path(weights).exists():  # so does a missing weights file
        raise FileNotFoundError(f"no such weights file: {weights}")
    if num_threads:
        torch.set_num_threads(num_threads)
    ds = load_dataset(data, split, root=data_dir)
    if normalize == "pixel-mean":
        train = ds if split == "train" else load_dataset(data, "train", root=data_dir)
        ds = subtract_mean_image(train, ds)[1]
    for name, v in (("mean", mean), ("std", std)):
        if v is not None and len(v) != ds.images.shape[1]:
            raise ValueError(
                f"--{name} needs {ds.images.shape[1]} values (one per channel), got {len(v)}"
            )
    _, c, h, w = ds.images.shape
    net = create_model(
        model, num_classes=len(ds.classes), in_chans=c, img_size=(h, w), **(model_kwargs or {})
    )
    load_weights(net, weights)
    prec = precision.choose(amp, channels_last, d.device, precision.has_conv(net))
    net = net.to(
        d.device, memory_format=torch.channels_last if prec.channels_last else torch.preserve_format
    )
    return {
        **evaluate(
            net,
            ds,
            batch_size,
            d,
            lambda: prec.autocast(d.device),
            prec.channels_last,
            mean=mean or ds.mean,
            std=std or ds.std,
        ),
        "precision": prec.to_dict(),
    }
