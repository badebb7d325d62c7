"""Evaluation: loss, top-1 and top-5 error of a model on a dataset, in eval mode, on a fast path.

The fast path folds each batch norm into the convolution or linear layer before it: in eval mode
batch norm is a fixed affine map per channel (Ioffe & Szegedy 2015, §3.1), so
bn(conv(x)) = (g / s) * (W x + b - m) + beta = W' x + b' with W' = (g / s) W and
b' = (g / s)(b - m) + beta (s = sqrt(running_var + eps)). A CIFAR ResNet then runs one conv per
weight layer instead of a conv and a normalisation pass over its output. The folded net is a
`torch.fx` trace of the model that shares every module but the folded pairs; it is traced once per
model structure and its folded weights are recomputed from the live ones at each evaluation. It
computes the same function up to rounding (tests/training/test_evaluation.py: within 1e-4 of the
logits' scale in fp32 over the registry); a model that does not trace, carries hooks, or whose
folded copy disagrees with it on a probe batch is evaluated as it is.

What the training loop evaluates, and when: curve points during training score a fixed subset of
each split (`curve_subset`, `TrainConfig.eval_subset`), no more often than keeps them within
CURVE_BUDGET of the training compute (`curve_every`); the final evaluation scores whole splits, and
`evaluate(..., subset=index)` scores the curve's images in that same pass, so the last curve point
comes free.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import Callable, Sequence
from typing import Any, TypeGuard

import torch
import torch.nn.functional as F
from torch import fx, nn

from reslab.data import ImageData, Loader, load_dataset
from reslab.training import distributed
from reslab.training.config import TrainConfig

CURVE_BUDGET = 0.05  # curve points' share of the training compute, counted in forward passes
STEP_FORWARDS = 3  # a training step costs about three forward passes of its batch (+ backward)
CURVE_SEED = 0  # the curve's images are the same in every run

FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)  # a batch norm after these folds into them
Foldable = nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear
PROBE = 8  # images of the first batch on which a folded net is checked against the model, once
PROBE_TOL = 1e-3  # of the probe logits' largest magnitude, in fp32 (folding itself errs ~1e-6)


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    data: ImageData | str | tuple[torch.Tensor, torch.Tensor],
    batch_size: int = 256,
    d: distributed.Dist | None = None,
    autocast: Callable = contextlib.nullcontext,
    channels_last: bool = False,
    mean: Sequence[float] | torch.Tensor | None = None,
    std: Sequence[float] | None = None,
    subset: torch.Tensor | None = None,
    fold: bool = True,
) -> dict:
    """Mean loss, top-1 and top-5 error of `model` on all of `data` (no augmentation), over all ranks:
    {"loss", "error", "top5_error", "n"}; with `subset` (indices into `data`) the same four over
    those images too, from the same pass, as "subset".

    `data`: a dataset name for its test split, an ImageData, or tensors (images, labels) with
    labels int64 (N,): uint8 images (N, C, H, W) are normalised as an ImageData's, float images are
    taken as already normalised and go into the model as they are. `mean`/`std` normalise the
    pixels; by default as `model.normalization` records the model was trained (`load_run`,
    `load_weights` and `train` set it), else with `data`'s own statistics. `d`: the device and ranks
    (default: this process alone, on the model's device). `fold`: run the net with its batch norms
    folded into the layers before them (module docstring); False runs `model` itself."""
    if isinstance(data, str):
        data = load_dataset(data, "test")
    elif isinstance(data, (tuple, list)):
        data = _from_tensors(data)
    recorded = getattr(model, "normalization", None)
    if mean is None and std is None and recorded is not None and isinstance(data, ImageData):
        data = recorded.apply(data)
    if d is None:
        p = next(model.parameters(), None)
        d = distributed.Dist(0, 1, p.device if p is not None else torch.device("cpu"))
    was_training = model.training
    model.eval()
    if isinstance(data, ImageData):
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
        batches, rank_slice = loader.epoch(0), loader.rank_slice
    else:  # float tensors, already normalised: batches as they are, in this process
        batches, rank_slice = _float_batches(data, batch_size, d.device, channels_last)
    n = len(data) if isinstance(data, ImageData) else len(data[1])
    keep = torch.zeros(n, dtype=torch.float64, device=d.device)  # 1: image in `subset`
    if subset is not None:
        keep[subset.to(d.device)] = 1.0
    # rows: all images, the subset's; columns: loss, top-1 errors, top-5 errors, images
    sums = torch.zeros(2, 4, device=d.device, dtype=torch.float64)
    net = None
    for b, (x, y) in enumerate(batches):  # eval order is the data's: batch b is its slice
        if net is None:
            net = inference_net(model, x) if fold else model
        with autocast():
            logits = net(x).float()  # (B, classes)
        top5 = (logits.topk(min(5, logits.shape[1]), dim=1).indices == y[:, None]).any(1)
        per_image = torch.stack(  # (4, B): loss, top-1 error, top-5 error, 1
            [
                F.cross_entropy(logits, y, reduction="none"),
                (logits.argmax(1) != y).float(),
                (~top5).float(),
                torch.ones_like(y, dtype=torch.float32),
            ]
        ).double()
        sums += torch.stack([per_image, per_image * keep[rank_slice(b)]]).sum(2)
    totals = distributed.all_sum(sums, d).tolist()
    model.train(was_training)
    out = _mean(totals[0])
    if subset is not None:
        out["subset"] = _mean(totals[1])
    return out


def _from_tensors(data) -> ImageData | tuple[torch.Tensor, torch.Tensor]:
    """`evaluate`'s (images, labels): uint8 images as an ImageData (normalised by its own per-channel
    statistics unless the model or the caller says otherwise), float images as they are."""
    if len(data) != 2 or not all(isinstance(t, torch.Tensor) for t in data):
        raise ValueError("evaluate takes tensors as (images, labels), two tensors")
    images, labels = data
    if labels.dtype != torch.int64 or labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(
            f"labels must be int64 (N,) for {len(images)} images, got {labels.dtype} "
            f"{tuple(labels.shape)}"
        )
    if images.dtype == torch.uint8:
        if images.ndim != 4:
            raise ValueError(f"uint8 images must be (N, C, H, W), got {tuple(images.shape)}")
        pixels = images.transpose(0, 1).reshape(images.shape[1], -1).double() / 255  # (C, N*H*W)
        classes = tuple(str(i) for i in range(int(labels.max()) + 1 if len(labels) else 1))
        mean, std = pixels.mean(1), pixels.std(1).clamp_min(1e-6)
        return ImageData(
            images, labels, classes, tuple(mean.tolist()), tuple(std.tolist()), "tensors"
        )
    if not images.is_floating_point():
        raise ValueError(f"images must be uint8 or floating point, got {images.dtype}")
    return images, labels


def _float_batches(data, batch_size: int, device: torch.device, channels_last: bool):
    """(batches of `data`'s float (images, labels) on `device`, batch index -> its slice)."""
    images, labels = data
    layout = torch.channels_last if channels_last and images.ndim == 4 else torch.preserve_format

    def batches():
        for i in range(0, len(labels), batch_size):
            x = images[i : i + batch_size].to(device, torch.float32, memory_format=layout)
            yield x, labels[i : i + batch_size].to(device)

    return batches(), lambda b: slice(b * batch_size, (b + 1) * batch_size)


def _mean(s: list[float]) -> dict:
    n = max(s[3], 1)
    return {"loss": s[0] / n, "error": s[1] / n, "top5_error": s[2] / n, "n": int(s[3])}


def curve_subset(n: int, size: int) -> torch.Tensor | None:
    """Indices (sorted) of the `size` images of a split of `n` that curve points score: the first
    `size` of a permutation seeded CURVE_SEED, the same in every run; None for all (`size` 0 or at
    least `n`)."""
    if not size or size >= n:
        return None
    order = torch.randperm(n, generator=torch.Generator().manual_seed(CURVE_SEED))
    return order[:size].sort().values


def curve_every(total: int, batch_size: int, images_per_point: int) -> int:
    """Steps between curve points of a run of `total` steps of `batch_size` images, when each point
    scores `images_per_point` images: about 20 per run, but no more often than keeps their forward
    passes within CURVE_BUDGET of the training's (STEP_FORWARDS per image trained)."""
    per_step = CURVE_BUDGET * STEP_FORWARDS * batch_size  # images a point may score per step
    return max(1, total // 20, math.ceil(images_per_point / per_step))


def eval_plan(cfg: TrainConfig, total: int, sizes: dict[str, int]) -> tuple[int, int, int]:
    """(steps between curve points, images a point scores, images the final evaluation scores) of
    a run of `total` steps on splits of `sizes` images ("train", "test" and, with a validation set,
    "val"), by the rules of eval_limit, eval_subset, eval_train and eval_every (or `curve_every`).
    The final evaluation scores the whole training and test sets and the validation curve images;
    the last point's test images come free with it."""
    n = {k: min(v, cfg.eval_limit or v) for k, v in sizes.items() if v}
    curve = {k: min(n[k], cfg.eval_subset or n[k]) for k in ("test", "val") if k in n}
    per_point = sum(curve.values()) + (n["train"] if cfg.eval_train else 0)
    every = cfg.eval_every or curve_every(total, cfg.batch_size, per_point)
    return every, per_point, n["train"] + n["test"] + curve.get("val", 0)


def eval_images(cfg: TrainConfig, total: int, sizes: dict[str, int]) -> int:
    """Images a run of `total` steps scores in its curve points and its final evaluation."""
    every, per_point, final = eval_plan(cfg, total, sizes)
    return (total - 1) // every * per_point + final  # the points before the last step, the final


# ------------------------------------------------------------------------------ folded batch norm


class FoldedNet:
    """`model` traced with each (layer, batch norm) pair whose layer output feeds only the norm
    replaced by one layer with a bias; `refresh()` recomputes the folded weights from the live ones."""

    def __init__(self, model: nn.Module) -> None:
        with torch.inference_mode():  # the branch an evaluation takes (no checkpointing, no grads)
            self.net = fx.symbolic_trace(model)
        modules = dict(self.net.named_modules())
        self.pairs: list[tuple[Foldable, nn.modules.batchnorm._BatchNorm, Foldable]] = []
        for node in list(self.net.graph.nodes):
            bn = modules.get(node.target) if node.op == "call_module" else None
            if not (_running_stats(bn) and len(node.args) == 1):
                continue
            prev = node.args[0]
            layer = modules.get(prev.target) if getattr(prev, "op", "") == "call_module" else None
            if not _foldable(layer) or len(prev.users) != 1:
                continue
            folded = _with_bias(layer)
            self.net.add_submodule(f"folded{len(self.pairs)}", folded)
            prev.target = f"folded{len(self.pairs)}"
            node.replace_all_uses_with(prev)
            self.net.graph.erase_node(node)
            self.pairs.append((layer, bn, folded))
        self.net.graph.lint()
        self.net.recompile()
        self.net.delete_all_unused_submodules()  # the folded layers and norms
        self.net.eval()

    @torch.no_grad()
    def refresh(self) -> nn.Module:
        """The folded net, with weights from the model's current ones."""
        for layer, bn, folded in self.pairs:
            var, mean = bn.running_var, bn.running_mean
            assert var is not None and mean is not None  # kept: `_running_stats`
            scale = torch.rsqrt(var + bn.eps)  # (C,)
            if bn.weight is not None:
                scale = scale * bn.weight
            shape = (-1,) + (1,) * (layer.weight.dim() - 1)
            folded.weight.copy_(layer.weight * scale.view(shape).to(layer.weight.dtype))
            bias = -mean if layer.bias is None else layer.bias - mean
            bias = bias * scale
            assert folded.bias is not None  # `_with_bias`
            folded.bias.copy_(bias if bn.bias is None else bias + bn.bias)
        return self.net


def _running_stats(bn: nn.Module | None) -> TypeGuard[nn.modules.batchnorm._BatchNorm]:
    """A batch norm that eval mode runs as a fixed affine map (running statistics kept)."""
    return (
        isinstance(bn, nn.modules.batchnorm._BatchNorm)
        and bn.track_running_stats
        and bn.running_mean is not None
    )


def _hooked(m: nn.Module) -> bool:
    """Whether a forward hook would run on `m` (its own or a global one)."""
    glob = nn.modules.module
    return bool(
        m._forward_hooks
        or m._forward_pre_hooks
        or glob._global_forward_hooks
        or glob._global_forward_pre_hooks
    )


def _foldable(layer: nn.Module | None) -> TypeGuard[Foldable]:
    """A layer of a FOLDABLE type itself (a subclass may have a forward of its own)."""
    return type(layer) in FOLDABLE


def _with_bias(layer: Foldable) -> Foldable:
    """A layer like `layer` (same type, options, device, dtype, memory format) with a bias."""
    w = layer.weight
    new: Foldable
    if isinstance(layer, nn.Linear):
        new = nn.Linear(layer.in_features, layer.out_features, True, w.device, w.dtype)
    else:
        options: dict[str, Any] = dict(  # one entry per spatial dim of this conv
            kernel_size=layer.kernel_size, stride=layer.stride, padding=layer.padding,
            dilation=layer.dilation, groups=layer.groups, padding_mode=layer.padding_mode,
        )  # fmt: skip
        new = type(layer)(
            layer.in_channels, layer.out_channels, bias=True, device=w.device, dtype=w.dtype,
            **options,
        )  # fmt: skip
    if w.dim() == 4 and w.is_contiguous(memory_format=torch.channels_last):
        new.to(memory_format=torch.channels_last)  # in place, as Module.to
    return new.requires_grad_(False)


# model -> (structure, FoldedNet or None): traced once per structure (a lesioned block, a swapped
# module traces anew), refreshed at every evaluation
_folded: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def inference_net(model: nn.Module, probe: torch.Tensor) -> nn.Module:
    """What an evaluation of `model` (in eval mode) runs: its folded net (module docstring), or
    `model` itself where folding does not apply or its folded net disagrees with it on `probe`."""
    structure = tuple((id(m), _hooked(m)) for m in model.modules())
    cached = _folded.get(model)
    if cached is None or cached[0] != structure:
        cached = (structure, _build(model, probe))
        _folded[model] = cached
    return model if cached[1] is None else cached[1].refresh()


def _build(model: nn.Module, probe: torch.Tensor) -> FoldedNet | None:
    if any(map(_hooked, model.modules())) or not any(map(_running_stats, model.modules())):
        return None  # a hook would not be traced; nothing to fold
    try:
        folded = FoldedNet(model)
    except Exception:  # noqa: BLE001 - control flow on values, untraceable modules: run as is
        return None
    if not folded.pairs:
        return None
    x = probe[:PROBE]
    with torch.inference_mode():
        ref, got = model(x).float(), folded.refresh()(x).float()
    if ref.shape != got.shape or not torch.isfinite(ref).all():
        return None
    return folded if (ref - got).abs().max() <= PROBE_TOL * ref.abs().max() + 1e-6 else None
