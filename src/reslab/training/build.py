"""What a run is built from: its data and its model, as `train` builds them before its first step.

The engine's public entry for code that needs a run's pieces without training it (a study that
replays a run's first step, measures a net at initialisation, or reads a run's data back):
`build_run(cfg)` gives the model and the three splits; `load_data`, `build_model` and `augment_on`
(whether its training batches are augmented) are its parts. Seeding is the caller's: `train` calls
`torch.manual_seed(cfg.seed)` first. `check_module` checks a module given to `train` instead of a
model name, and `load_trained` builds a finished run's model back from its weights file.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, TypeVar, overload

import torch
from torch import nn

from reslab.data import (
    ImageData,
    Normalization,
    load_dataset,
    subtract_mean_image,
    train_val_split,
)
from reslab.models import create_model, create_saved, load_weights
from reslab.models.registry import Model
from reslab.training.config import TrainConfig

CIFAR_LIKE = ("cifar10", "cifar100")
M = TypeVar("M", bound=nn.Module)


class Built(NamedTuple):
    """A run's model (initialised from the torch RNG as it stands) and its splits."""

    model: Model
    train_data: ImageData
    test_data: ImageData
    val_data: ImageData | None


def build_run(cfg: TrainConfig) -> Built:
    """The model and data of run config `cfg`, as `train` builds them before its first step
    (`torch.manual_seed(cfg.seed)` before it gives the run's initial weights)."""
    train_data, test_data, val_data = load_data(cfg)
    return Built(build_model(cfg, train_data), train_data, test_data, val_data)


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
    """Whether the run's training batches are augmented (`--augment`; auto: CIFAR-like data)."""
    if cfg.augment == "auto":
        return cfg.data in CIFAR_LIKE
    return cfg.augment == "on"


def check_module(model: nn.Module, data: ImageData, grad_checkpoint: int) -> nn.Module:
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


@overload
def load_trained(weights: Path, cfg: TrainConfig | None, model: None = None) -> Model: ...
@overload
def load_trained(weights: Path, cfg: TrainConfig | None, model: M) -> M: ...
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
