"""Evaluation: loss, top-1 and top-5 error of a model on a whole dataset, in eval mode."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from reslab.data import ImageData, Loader, load_dataset
from reslab.training import distributed


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    data: ImageData | str,
    batch_size: int = 256,
    d: distributed.Dist | None = None,
    autocast: Callable = contextlib.nullcontext,
    channels_last: bool = False,
    mean: Sequence[float] | torch.Tensor | None = None,
    std: Sequence[float] | None = None,
) -> dict:
    """Mean loss, top-1 and top-5 error of `model` on all of `data` (no augmentation), over all ranks:
    {"loss", "error", "top5_error", "n"}.

    `data`: an ImageData, or a dataset name for its test split. `mean`/`std` normalise the pixels;
    by default as `model.normalization` records the model was trained (`load_run` and `load_weights`
    set it from a reslab file), else with `data`'s own statistics. `d`: the device and ranks
    (default: this process alone, on the model's device)."""
    if isinstance(data, str):
        data = load_dataset(data, "test")
    recorded = getattr(model, "normalization", None)
    if mean is None and std is None and recorded is not None:
        data = recorded.apply(data)
    if d is None:
        p = next(model.parameters(), None)
        d = distributed.Dist(0, 1, p.device if p is not None else torch.device("cpu"))
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
