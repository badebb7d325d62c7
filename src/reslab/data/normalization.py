"""How a model's inputs were normalised in training, recorded with its weights.

Training feeds (x / 255 - mean) / std with the statistics of its training split: per channel, or
(`--normalize pixel-mean`, He et al. 2015 §4.2: "the per-pixel mean subtracted") the mean image with
std 1. The weights fit only inputs normalised the same way, so `save_weights` and ONNX export record
it and `load_run`, `load_weights` and `reslab eval` read it back.

As metadata (str -> str: a safetensors header, ONNX metadata_props) it is one JSON object under the
key "normalization": {"data": "cifar10", "kind": "channel", "mean": [...], "std": [...]}, or
{"data": ..., "kind": "pixel-mean", "std": [1.0, ...], "shape": [C, H, W], "mean_image": "<base64>"}
where the base64 holds the mean image's float32 little-endian bytes, row-major (C, H, W).
The mean image sits in the metadata, not among the file's tensors: the tensors stay exactly the
model's state dict (so a strict loader, an older reslab's or safetensors.torch.load_model, still loads
the file), and the one encoding serves both formats (ONNX metadata holds only strings). Base64 is
bit-exact at 4/3 of the raw size: 16 KB for CIFAR's 3 x 32 x 32.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np
import torch

from reslab.data.datasets import ImageData

KEY = "normalization"  # the metadata key


@dataclass(frozen=True)
class Normalization:
    """The input normalisation a model was trained with."""

    data: str  # the dataset whose training split gave the statistics
    # per channel in [0, 1] pixel units, or a mean image float32 (C, H, W) ("pixel-mean", std 1)
    mean: tuple[float, ...] | torch.Tensor
    std: tuple[float, ...]

    @property
    def kind(self) -> str:
        """ "pixel-mean" or "channel", as TrainConfig.normalize names them."""
        return "pixel-mean" if isinstance(self.mean, torch.Tensor) else "channel"

    def describe(self) -> str:
        """A few words for a message: 'pixel-mean (the mean image of digits)'."""
        if isinstance(self.mean, torch.Tensor):  # kind "pixel-mean"
            return f"pixel-mean (the mean image of {self.data})"
        return f"channel (mean {_few(self.mean)}, std {_few(self.std)})"

    def apply(self, data: ImageData) -> ImageData:
        """`data` to be normalised with these statistics (ImageData checks that they fit it)."""
        return replace(data, mean=self.mean, std=self.std)

    def to_metadata(self) -> dict[str, str]:
        """{"normalization": JSON}, for a safetensors header or ONNX metadata_props."""
        d: dict = {"data": self.data, "kind": self.kind, "std": [float(v) for v in self.std]}
        if isinstance(self.mean, torch.Tensor):
            image = self.mean.detach().to("cpu", torch.float32).contiguous()
            d["shape"] = list(image.shape)
            d["mean_image"] = base64.b64encode(image.numpy().astype("<f4").tobytes()).decode()
        else:
            d["mean"] = [float(v) for v in self.mean]
        return {KEY: json.dumps(d, sort_keys=True)}

    @classmethod
    def from_metadata(cls, meta: Mapping[str, str], origin: str) -> Normalization | None:
        """The normalisation recorded in `meta` (None where it records none); a one-line ValueError
        naming `origin` when the record is malformed."""
        if KEY not in meta:
            return None
        try:
            return _decode(meta[KEY])
        except ValueError as e:
            raise ValueError(f"{origin}: metadata {KEY} {e}") from None


def _decode(text: str) -> Normalization:
    try:
        d = json.loads(text)
    except (ValueError, RecursionError):
        raise ValueError("is not valid JSON") from None
    if not isinstance(d, dict):
        raise ValueError(f"should be a JSON object, got {type(d).__name__}")
    if not isinstance(d.get("data"), str):
        raise ValueError(f"needs the dataset name as 'data', got {reprlib.repr(d.get('data'))}")
    std = _numbers(d.get("std"), "std")
    if not all(v > 0 for v in std):
        raise ValueError(f"std must be > 0, got {list(std)}")
    if d.get("kind") == "channel":
        mean = _numbers(d.get("mean"), "mean")
        if len(mean) != len(std):
            raise ValueError(f"has {len(mean)} means for {len(std)} stds")
        return Normalization(d["data"], mean, std)
    if d.get("kind") != "pixel-mean":
        raise ValueError(f"kind must be channel or pixel-mean, got {reprlib.repr(d.get('kind'))}")
    shape = d.get("shape")
    if not (
        isinstance(shape, list)
        and len(shape) == 3
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in shape)
        and shape[0] == len(std)
    ):
        raise ValueError(
            f"shape must be [C, H, W] with C = {len(std)} (one std a channel), got {reprlib.repr(shape)}"
        )
    try:
        raw = base64.b64decode(str(d.get("mean_image")), validate=True)
    except binascii.Error:
        raise ValueError("mean_image is not base64") from None
    if len(raw) != 4 * math.prod(shape):
        want = 4 * math.prod(shape)
        raise ValueError(f"mean_image holds {len(raw)} bytes, not the {want} of {shape}")
    image = torch.from_numpy(np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(shape))
    if not torch.isfinite(image).all():
        raise ValueError("mean_image has values that are not finite")
    return Normalization(d["data"], image, std)


def _numbers(v: object, name: str) -> tuple[float, ...]:
    if not (
        isinstance(v, list)
        and v
        and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v
        )
    ):
        raise ValueError(f"{name} must be a list of finite numbers, got {reprlib.repr(v)}")
    return tuple(float(x) for x in v)


def _few(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"
