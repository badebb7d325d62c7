"""Plain <-> residual conversion (He et al. 2015, "Deep Residual Learning for Image Recognition").

`to_residual` adds shortcut connections to a user's plain `nn.Sequential`: each group of `every`
weight layers becomes a block y = g(F(x) + x) (§3.2, eq. 1), or y = g(F(x) + W_s x) with a projection
W_s where the block changes the shape (eq. 2, "option B"). `to_plain` removes every shortcut from a
reslab model or a `to_residual` result, giving its plain twin with the same weights (§4.1).
`append_blocks` deepens a model by running extra blocks after its last one.

How `to_residual` groups the layers (their shapes come from running `example_input` through them):
1. Each child of the Sequential is a *weight layer* (nn.Linear, nn.Conv1d/2d/3d), a *norm*
   (BatchNorm*, InstanceNorm*, GroupNorm, LayerNorm, LocalResponseNorm, RMSNorm), *element-wise*
   (any other layer that keeps the shape and holds no weight layer: activations, dropout, ...),
   or a *barrier* (everything else: pooling or flatten that changes the shape, nested containers).
2. The first `stem` and the last `head` weight layers stay outside blocks (He et al. keep conv1 and
   fc outside), and so does every barrier.
3. Between barriers, blocks are formed from the start. A block begins at a weight layer and holds
   `every` weight layers and the layers between them. After its last weight layer, the norms that
   directly follow it end the residual branch F; the rest, up to the next weight layer or barrier
   (the activation g, dropout, ...), is applied after the addition: a[l+2] = g(z[l+2] + a[l])
   for every=2.
   Weight layers left over (fewer than `every` before a barrier or the head) stay as they are.
4. The shortcut is the identity where the block's input and output shapes match; otherwise a bias-free
   1x1 conv of the same kind with the stride that maps input size to output size (a Linear for Linear
   blocks). A block whose size change no strided 1x1 conv gives (say a 3x3 conv without padding), or
   that mixes layer kinds (Conv2d and Linear), raises ValueError.
The layers are reused, not copied: the result shares its weights with `module`.
"""

from __future__ import annotations

import contextlib
import copy
from collections import OrderedDict
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from reslab.models.blocks import STANDARD_BLOCKS, ResidualBlock, WeightLayer
from reslab.models.registry import Model, twin
from reslab.models.scaled import Fixup, ReZero, SkipInit
from reslab.models.variants import Unit

M = TypeVar("M", bound=nn.Module)
_WEIGHT = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORM: tuple[type[nn.Module], ...] = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
_NORM += (nn.LocalResponseNorm, *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()))


class SequentialBlock(ResidualBlock):
    """A `to_residual` block: y = post(branch(x) + shortcut(x)), shortcut x or downsample(x)."""

    def __init__(self, branch: nn.Sequential, post: nn.Sequential, downsample: nn.Module | None):
        super().__init__()
        self.branch = branch  # F: `every` weight layers and what lies between, up to the last norm
        self.downsample = downsample  # W_s, or None for the identity
        self.post = post  # g, applied after the addition
        self.shortcut = "B"  # identity where shapes match, projection where not; "none" = plain

    def forward(self, x: Tensor) -> Tensor:
        out = self.branch(x)
        if self.shortcut != "none":
            out = out + self.shortcut_of(x)
        return self.post(out)

    @property
    def projects(self) -> bool:
        return self.downsample is not None

    @property
    def relu_after_add(self) -> bool:
        """Whether a ReLU is among the layers applied after the addition (g)."""
        return any(isinstance(m, nn.ReLU) for m in self.post)

    def shortcut_path(self, x: Tensor) -> Tensor:
        """The block with its branch deleted: post(shortcut(x)); a plain block passes `x` on."""
        if self.shortcut == "none":
            return x
        h = x if self.downsample is None else self.downsample(x)
        return self.post(h.clone())  # clone: post may act in place, and h may be x itself

    def branch_layers(self) -> list[WeightLayer]:
        return [m for m in self.branch if isinstance(m, _WEIGHT)]

    def branch_norms(self) -> list[nn.Module]:
        return [m for m in self.branch if isinstance(m, _NORM)]

    def extra_repr(self) -> str:
        return f"shortcut={self.shortcut!r}"


class ResidualSequential(nn.Sequential):
    """The result of `to_residual`: a Sequential of outside layers and named `SequentialBlock`s."""

    def residual_blocks(self) -> list[nn.Module]:
        return [m for m in self if isinstance(m, SequentialBlock)]


def to_residual(
    module: nn.Sequential,
    every: int = 2,
    example_input: Tensor | None = None,
    *,
    stem: int = 1,
    head: int = 1,
) -> ResidualSequential:
    """Group `module`'s layers into residual blocks of `every` weight layers (rules: module docstring).

    example_input: a batch shaped like the real input; if None, a (1, C, 32, 32) (conv) or (1, F)
    (Linear) zero batch is built from the first layer. stem / head: how many leading / trailing
    weight layers stay outside blocks.
    """
    if not isinstance(module, nn.Sequential) or len(module) == 0:
        raise ValueError(
            f"to_residual: expected a non-empty nn.Sequential, got {type(module).__name__}"
        )
    counts = {"every": every, "stem": stem, "head": head}
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in counts.values()):
        raise ValueError(f"to_residual: every, stem and head must be integers, got {counts}")
    if every < 1 or stem < 0 or head < 0:
        raise ValueError(
            f"to_residual: need every >= 1, stem >= 0, head >= 0 (got {every}, {stem}, {head})"
        )
    names, layers = zip(*module.named_children(), strict=True)
    shapes = _trace(module, _example(module) if example_input is None else example_input)
    kinds = [_kind(layer, *shape) for layer, shape in zip(layers, shapes, strict=True)]

    starts = {group[0]: group for group in _groups(kinds, every, stem, head)}
    if not starts:
        weights = kinds.count("weight")
        raise ValueError(
            f"to_residual: no block of {every} weight layers can be formed ({weights} weight layers, "
            f"stem {stem}, head {head}); lower every, stem or head"
        )
    out, i = [], 0
    while i < len(layers):
        if i in starts:
            name = f"block{sum(s <= i for s in starts)}"
            block, i = _block(name, starts[i], names, layers, kinds, shapes)
            out.append((name if name not in names else f"{name}_res", block))
        else:
            out.append((names[i], layers[i]))
            i += 1
    return ResidualSequential(OrderedDict(out))


def _groups(kinds: list[str], every: int, stem: int, head: int) -> list[list[int]]:
    """Indices of the weight layers of each block (rules 2 and 3 of the module docstring)."""
    weights = [i for i, kind in enumerate(kinds) if kind == "weight"]
    outside = set(weights[:stem]) | set(weights[len(weights) - head :] if head else [])
    groups: list[list[int]] = []
    current: list[int] = []
    for i, kind in enumerate(kinds):
        if kind == "barrier" or i in outside:
            current = []
        elif kind == "weight":
            current.append(i)
            if len(current) == every:
                groups.append(current)
                current = []
    return groups


def _block(
    name: str, group: list[int], names, layers, kinds, shapes
) -> tuple[SequentialBlock, int]:
    """The block whose weight layers are `group`, and the index of the first layer after it."""
    split = end = group[-1] + 1  # branch = layers[group[0]:split], post = layers[split:end]
    while end < len(layers) and kinds[end] in ("norm", "elementwise"):
        end += 1
    while split < end and kinds[split] == "norm":
        split += 1
    types = sorted({type(layers[j]).__name__ for j in group})
    if len(types) > 1:
        raise ValueError(
            f"to_residual: {name} (layers {', '.join(names[j] for j in group)}) mixes "
            f"{' and '.join(types)}; put a Flatten between them or change every/stem/head"
        )
    start = group[0]
    downsample = _projection(layers[start], shapes[start][0], shapes[split - 1][1], name)
    branch = nn.Sequential(OrderedDict((names[j], layers[j]) for j in range(start, split)))
    post = nn.Sequential(OrderedDict((names[j], layers[j]) for j in range(split, end)))
    return SequentialBlock(branch, post, downsample), end


# blocks whose forward adds the shortcut only while shortcut != "none", so "none" leaves the
# residual branch alone (a `Unit` merges its paths itself)
_PLAIN_BLOCKS = (*STANDARD_BLOCKS, ReZero, SkipInit, Fixup, SequentialBlock)


def to_plain(model: M) -> M:
    """A copy of `model` with every shortcut off (shortcut="none") and no projection modules: each
    block then outputs what its residual branch alone gives. Only blocks whose forward honours
    shortcut="none" (`_PLAIN_BLOCKS`) are converted; any other block is a one-line ValueError."""
    plain: Any = copy.deepcopy(
        model
    )  # any nn.Module; a reslab model's attributes where it has them
    if hasattr(plain, "residual_blocks"):
        blocks = plain.residual_blocks()
    else:
        blocks = [m for m in plain.modules() if isinstance(getattr(m, "shortcut", None), str)]
    if not blocks:
        raise ValueError(
            f"to_plain: {type(model).__name__} has no residual blocks (modules with a `shortcut` attribute)"
        )
    name = getattr(model, "model_name", type(model).__name__)
    for block in blocks:
        if isinstance(block, Unit):
            raise ValueError(
                f"to_plain: {name} has Unit blocks (a shortcut/activation variant of He et al. "
                "2016), which add their shortcut path whatever `shortcut` says, and a variant has "
                "no plain twin; convert its base net instead"
            )
        if type(block) not in _PLAIN_BLOCKS:
            raise ValueError(
                f"to_plain: {type(block).__name__} is not a block whose shortcut to_plain can "
                f"switch off ({', '.join(b.__name__ for b in _PLAIN_BLOCKS)})"
            )
    for block in blocks:
        block.shortcut = "none"
        if isinstance(getattr(block, "downsample", None), nn.Module):
            del block.downsample  # drop the projection's parameters from the state dict
            block.downsample = None
    if isinstance(getattr(plain, "model_name", None), str):  # provenance: the plain twin's name
        with contextlib.suppress(ValueError):  # a name the registry does not know stays as it is
            plain.model_name = twin(plain.model_name, residual=False)
    if isinstance(getattr(plain, "default_cfg", None), dict):
        plain.default_cfg = {**plain.default_cfg, "shortcut": "none", "residual": False}
        if "name" in plain.default_cfg and hasattr(plain, "model_name"):
            plain.default_cfg["name"] = plain.model_name
    return plain


def append_blocks(model: Model, blocks: list[nn.Module]) -> Model:
    """A copy of `model` with `blocks` run after its last block, in the same stage: the
    nn.Sequential that holds the last block is replaced by one that holds it and then `blocks`,
    so `residual_blocks()` lists them too. The blocks themselves are not copied."""
    model = copy.deepcopy(model)
    last = model.residual_blocks()[-1]
    for name, module in model.named_modules():
        if name and isinstance(module, nn.Sequential) and any(c is last for c in module.children()):
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent), attr, nn.Sequential(*module, *blocks))
            return model
    raise ValueError(
        f"{type(model).__name__}: its last block is not held in an nn.Sequential stage"
    )


def _example(module: nn.Sequential) -> Tensor:
    first = module[0]
    if not isinstance(first, _WEIGHT):
        raise ValueError(
            "to_residual: pass example_input (it can only be built when the first layer is a Linear or ConvNd)"
        )
    w = first.weight
    if isinstance(first, nn.Linear):
        return torch.zeros(1, first.in_features, dtype=w.dtype, device=w.device)
    size = (32,) * len(first.kernel_size)
    return torch.zeros(1, first.in_channels, *size, dtype=w.dtype, device=w.device)


def _trace(module: nn.Sequential, x: Tensor) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """(input shape, output shape) of every child, run in eval mode without touching BN statistics."""
    modes = [m.training for m in module.modules()]
    module.eval()
    shapes = []
    try:
        with torch.no_grad():
            for name, layer in module.named_children():
                try:
                    y = layer(x)
                except Exception as e:
                    raise ValueError(
                        f"to_residual: example_input fails at layer {name!r} ({e}); pass an input of the right shape"
                    ) from e
                if not isinstance(y, Tensor):
                    raise ValueError(
                        f"to_residual: layer {name!r} returns {type(y).__name__}, not a Tensor"
                    )
                shapes.append((tuple(x.shape), tuple(y.shape)))
                x = y
    finally:
        for m, mode in zip(module.modules(), modes, strict=True):
            m.training = mode
    return shapes


def _kind(layer: nn.Module, shape_in: tuple[int, ...], shape_out: tuple[int, ...]) -> str:
    if isinstance(layer, _WEIGHT):
        return "weight"
    if isinstance(layer, _NORM):
        return "norm"
    if shape_in == shape_out and not any(isinstance(m, _WEIGHT) for m in layer.modules()):
        return "elementwise"
    return "barrier"


def _projection(
    first: WeightLayer, shape_in: tuple, shape_out: tuple, name: str
) -> nn.Module | None:
    """W_s mapping the block's input shape to its output shape, or None where they match."""
    if shape_in == shape_out:
        return None
    dtype, device = first.weight.dtype, first.weight.device
    if isinstance(first, nn.Linear):
        if shape_in[:-1] != shape_out[:-1]:
            raise ValueError(
                f"to_residual: {name} maps {shape_in} to {shape_out}; a Linear projection only changes the last dim"
            )
        return nn.Linear(shape_in[-1], shape_out[-1], bias=False, dtype=dtype, device=device)
    nd = len(first.kernel_size)  # spatial dims
    strides = tuple(
        _stride(a, b, name) for a, b in zip(shape_in[-nd:], shape_out[-nd:], strict=True)
    )
    return type(first)(
        shape_in[-nd - 1],
        shape_out[-nd - 1],
        1,
        stride=strides,  # type: ignore[arg-type]  # one stride per spatial dim of this conv
        bias=False,
        dtype=dtype,
        device=device,
    )


def _stride(size_in: int, size_out: int, name: str) -> int:
    for s in range(1, size_in + 1):
        if (size_in - 1) // s + 1 == size_out:  # output size of a 1x1 conv with stride s
            return s
    raise ValueError(
        f"to_residual: {name} changes a spatial size {size_in} -> {size_out}, which no strided 1x1 conv does; "
        "pad its convs or keep those layers outside blocks (stem/head)"
    )
