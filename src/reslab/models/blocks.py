"""Residual blocks and their plain twins: a[l+2] = g(z[l+2] + a[l]).

- `BasicBlock`, `Bottleneck`: the original post-activation blocks (He et al. 2015, "Deep Residual
  Learning for Image Recognition", §3-4); ReLU after the addition. The bottleneck puts the stride
  on the 3x3 conv as torchvision ("v1.5"); `stride_in_1x1=True` gives the paper's "v1" placement.
- `PreActBasicBlock`, `PreActBottleneck`: full pre-activation (He et al. 2016, "Identity Mappings in
  Deep Residual Networks", Fig. 4e and appendix), as the authors' code (KaimingHe/resnet-1k-layers,
  resnet-pre-act.lua): norm-ReLU before each conv, nothing after the addition. A "both_preact" unit
  (the first of each stage) pre-activates once, before the split, and feeds relu(bn1(x)) to both
  paths; the others pre-activate the residual path only. A projection shortcut is a bare 1x1 conv.
- `MLPBlock`: the fully connected form, relu(norm(fc2(relu(norm(fc1(x))))) + x).

Every block takes the same options:
  shortcut      "A": parameter-free identity; where the shape changes, subsample x[:, :, ::2, ::2]
                     and zero-pad the new channels (He et al. 2015, §4.2, CIFAR).
                "B": identity, projection (1x1 conv + norm; pre-activation: bare 1x1 conv) only
                     where the shape changes.
                "C": projection on every block.
                "none": plain block, no addition and no projection modules.
  norm          "batch" | "group" | "none" (GroupNorm uses gcd(32, channels) groups).

Learnable scalars on the residual branch (ReZero, SkipInit, Fixup) are blocks of their own, which
take over a built block's layers under the same names: `reslab.models.scaled`.
Parameter names follow torchvision (conv1, bn1, ..., downsample.0/1) so torchvision weights load.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

SHORTCUTS = ("A", "B", "C", "none")
NORMS = ("batch", "group", "none")
BRANCH_SCALES = ("none", "rezero", "skipinit", "fixup")
WeightLayer = nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d  # a branch's weight layers


def check_choice(what: str, value: object, allowed: Sequence) -> None:
    """Raise a one-line ValueError unless `value` is one of `allowed`."""
    if value not in allowed:
        raise ValueError(f"{what} must be one of {', '.join(map(repr, allowed))}; got {value!r}")


def resolve_norm(
    shortcut: str, norm: str | None, branch_scale: str, zero_init_residual: bool
) -> str:
    """Validate the options every model shares and return the norm to use: `norm`, or when it is
    None, "none" for SkipInit/Fixup (which replace normalisation) and "batch" otherwise."""
    check_choice("shortcut", shortcut, SHORTCUTS)
    if norm is not None:
        check_choice("norm", norm, NORMS)
    check_choice("branch_scale", branch_scale, BRANCH_SCALES)
    if shortcut == "none" and (branch_scale != "none" or zero_init_residual):
        # both start every block as its shortcut: a plain block would start as zero
        raise ValueError(
            "branch_scale and zero_init_residual need a shortcut; a plain net (shortcut='none') "
            "takes branch_scale='none' and zero_init_residual=False"
        )
    if norm is None:
        return "none" if branch_scale in ("skipinit", "fixup") else "batch"
    return norm


def norm_layer(norm: str, channels: int, dims: int = 2) -> nn.Module:
    """A normalisation layer over `channels` for 2-d feature maps (dims=2) or vectors (dims=1)."""
    check_choice("norm", norm, NORMS)
    if norm == "batch":
        return nn.BatchNorm2d(channels) if dims == 2 else nn.BatchNorm1d(channels)
    if norm == "group":
        return nn.GroupNorm(math.gcd(32, channels), channels)
    return nn.Identity()


def conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride, padding=1, bias=False)


def conv1x1(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 1, stride, bias=False)


class PadShortcut(nn.Module):
    """Option A shortcut: strided subsampling plus zero channels; no parameters (He et al. 2015)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        if c_out < c_in:
            raise ValueError(f"shortcut 'A' cannot reduce channels ({c_in} -> {c_out}); use 'B'")
        self.stride, self.pad = stride, c_out - c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, H, W) -> (B, C_out, H/s, W/s)
        x = x[:, :, :: self.stride, :: self.stride]
        # zero channels on both sides, as the reference CIFAR code (akamaster/pytorch_resnet_cifar10)
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))


def make_shortcut(
    shortcut: str,
    c_in: int,
    c_out: int,
    stride: int,
    norm: str,
    conv: bool = True,
    *,
    preact: bool = False,
    bias: bool = False,
) -> nn.Module | None:
    """The shortcut module for one block, or None for a plain identity (or for no shortcut).

    A projection is a 1x1 conv + norm (a Linear + norm for vectors, with a bias when `bias`);
    `preact`: a bare 1x1 conv, as resnet-pre-act.lua (the sum it adds to is not normalised).
    """
    check_choice("shortcut", shortcut, SHORTCUTS)
    same = stride == 1 and c_in == c_out
    if shortcut == "none" or (same and shortcut in ("A", "B")):
        return None
    if shortcut == "A":
        if not conv:
            raise ValueError("shortcut 'A' needs feature maps; use 'B' for a width change")
        return PadShortcut(c_in, c_out, stride)
    if conv and preact:
        return nn.Sequential(conv1x1(c_in, c_out, stride))
    if conv:
        return nn.Sequential(conv1x1(c_in, c_out, stride), norm_layer(norm, c_out))
    return nn.Sequential(nn.Linear(c_in, c_out, bias=bias), norm_layer(norm, c_out, 1))


class ResidualBlock(nn.Module):
    """Base class of every block: its shortcut h, and what the studies ask of a block.

    A subclass sets `shortcut` and its module `downsample` (`make_shortcut`) first (the shortcut's
    parameters come first, in every stored weight file and checkpoint) and names its weight layers and norms in order in `_layers` and `_norms`
    (`branch_layers()`, `branch_norms()`: used for init, zeroed branches and variants).
    """

    preact = False  # pre-activation block: norm-ReLU before each conv, nothing after the addition
    both_preact = False  # the pre-activation relu(bn1(x)) feeds the shortcut too
    expansion = 1
    _layers: tuple[str, ...] = ()
    _norms: tuple[str, ...] = ()
    shortcut: str  # the option: "A" | "B" | "C" | "none" (plain: no addition)
    downsample: nn.Module | None  # the shortcut's module; None: the identity
    bn1: nn.Module  # the first norm (pre-activation: of the block input)
    relu: nn.Module

    def shortcut_of(self, s: torch.Tensor) -> torch.Tensor:
        """h(s): `s` itself, or the projection / option-A shortcut of `s`."""
        return s if self.downsample is None else self.downsample(s)

    @property
    def relu_after_add(self) -> bool:
        """Whether a ReLU follows the addition: in post-activation blocks."""
        return not self.preact

    @property
    def projects(self) -> bool:
        """Whether the shortcut is a projection (1x1 conv or Linear, with a norm after it in
        post-activation blocks)."""
        return isinstance(self.downsample, nn.Sequential)

    def shortcut_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the shortcut sees: the block input, or its pre-activation in a both_preact unit."""
        return torch.relu(self.bn1(x)) if self.both_preact else x

    def shortcut_path(self, x: torch.Tensor) -> torch.Tensor:
        """What is left of the block when its residual branch is deleted (F = 0): the shortcut h
        (of the pre-activated input in both_preact units), then the ReLU after the addition where
        there is one (`relu_after_add`). A plain block has no path around its branch; deleting it
        passes `x` on unchanged."""
        if self.shortcut == "none":
            return x
        h = self.shortcut_of(self.shortcut_input(x))
        return torch.relu(h) if self.relu_after_add else h  # not in place: h may be x itself

    def branch_layers(self) -> list[WeightLayer]:
        return [getattr(self, n) for n in self._layers]

    def branch_norms(self) -> list[nn.Module]:
        return [getattr(self, n) for n in self._norms]


class BasicBlock(ResidualBlock):
    """Two 3x3 convs: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))."""

    _layers, _norms = ("conv1", "conv2"), ("bn1", "bn2")

    def __init__(
        self,
        c_in: int,
        planes: int,
        stride: int = 1,
        *,
        shortcut: str = "B",
        norm: str = "batch",
        stride_in_1x1: bool = False,
    ) -> None:
        super().__init__()
        self.shortcut = shortcut
        self.downsample = make_shortcut(shortcut, c_in, planes, stride, norm)
        self.conv1, self.bn1 = conv3x3(c_in, planes, stride), norm_layer(norm, planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2, self.bn2 = conv3x3(planes, planes), norm_layer(norm, planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, H, W) -> (B, planes, H/s, W/s)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.shortcut != "none":  # the plain twin has none
            out = out + self.shortcut_of(x)
        return self.relu(out)  # a[l+2] = g(z[l+2] + a[l])


class Bottleneck(ResidualBlock):
    """1x1 reduce, 3x3, 1x1 expand (x4), stride on the 3x3 ("v1.5") unless `stride_in_1x1`."""

    expansion = 4
    _layers, _norms = ("conv1", "conv2", "conv3"), ("bn1", "bn2", "bn3")

    def __init__(
        self,
        c_in: int,
        planes: int,
        stride: int = 1,
        *,
        shortcut: str = "B",
        norm: str = "batch",
        stride_in_1x1: bool = False,
    ) -> None:
        super().__init__()
        c_out = planes * self.expansion
        self.shortcut = shortcut
        self.downsample = make_shortcut(shortcut, c_in, c_out, stride, norm)
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1, self.bn1 = conv1x1(c_in, planes, s1), norm_layer(norm, planes)
        self.conv2, self.bn2 = conv3x3(planes, planes, s3), norm_layer(norm, planes)
        self.conv3, self.bn3 = conv1x1(planes, c_out), norm_layer(norm, c_out)
        self.relu = nn.ReLU(inplace=True)

    def forward(
        self, x: torch.Tensor
    ) -> torch.Tensor:  # (B, C_in, H, W) -> (B, 4*planes, H/s, W/s)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.shortcut != "none":  # the plain twin has none
            out = out + self.shortcut_of(x)
        return self.relu(out)  # a[l+2] = g(z[l+2] + a[l])


class PreActBasicBlock(ResidualBlock):
    """Full pre-activation basic block: conv2(relu(bn2(conv1(relu(bn1(x)))))) + shortcut.

    both_preact: the shortcut sees relu(bn1(x)) too (the first unit of each stage in the reference
    code); None: where the shape changes, as resnet-pre-act.lua.
    """

    preact = True
    _layers, _norms = ("conv1", "conv2"), ("bn1", "bn2")

    def __init__(
        self,
        c_in: int,
        planes: int,
        stride: int = 1,
        *,
        shortcut: str = "B",
        norm: str = "batch",
        stride_in_1x1: bool = False,
        both_preact: bool | None = None,
    ) -> None:
        super().__init__()
        self.shortcut = shortcut
        self.downsample = make_shortcut(shortcut, c_in, planes, stride, norm, preact=True)
        self.both_preact = (stride != 1 or c_in != planes) if both_preact is None else both_preact
        self.bn1, self.conv1 = norm_layer(norm, c_in), conv3x3(c_in, planes, stride)
        self.bn2, self.conv2 = norm_layer(norm, planes), conv3x3(planes, planes)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, H, W) -> (B, planes, H/s, W/s)
        pre = self.relu(self.bn1(x))
        out = self.conv1(pre)
        out = self.conv2(self.relu(self.bn2(out)))
        if self.shortcut != "none":
            out = out + self.shortcut_of(pre if self.both_preact else x)
        return out


class PreActBottleneck(ResidualBlock):
    """Full pre-activation bottleneck: bn-relu-conv1x1, bn-relu-conv3x3, bn-relu-conv1x1 (x4).

    The stride is on the 3x3 conv unless `stride_in_1x1` (resnet-pre-act.lua strides the first 1x1;
    `preact_resnet` builds it so). both_preact: as `PreActBasicBlock`.
    """

    preact = True
    expansion = 4
    _layers, _norms = ("conv1", "conv2", "conv3"), ("bn1", "bn2", "bn3")

    def __init__(
        self,
        c_in: int,
        planes: int,
        stride: int = 1,
        *,
        shortcut: str = "B",
        norm: str = "batch",
        stride_in_1x1: bool = False,
        both_preact: bool | None = None,
    ) -> None:
        super().__init__()
        c_out = planes * self.expansion
        self.shortcut = shortcut
        self.downsample = make_shortcut(shortcut, c_in, c_out, stride, norm, preact=True)
        self.both_preact = (stride != 1 or c_in != c_out) if both_preact is None else both_preact
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.bn1, self.conv1 = norm_layer(norm, c_in), conv1x1(c_in, planes, s1)
        self.bn2, self.conv2 = norm_layer(norm, planes), conv3x3(planes, planes, s3)
        self.bn3, self.conv3 = norm_layer(norm, planes), conv1x1(planes, c_out)
        self.relu = nn.ReLU()

    def forward(
        self, x: torch.Tensor
    ) -> torch.Tensor:  # (B, C_in, H, W) -> (B, 4*planes, H/s, W/s)
        pre = self.relu(self.bn1(x))
        out = self.conv1(pre)
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.relu(self.bn3(out)))
        if self.shortcut != "none":
            out = out + self.shortcut_of(pre if self.both_preact else x)
        return out


class MLPBlock(ResidualBlock):
    """Fully connected residual block: relu(bn2(fc2(relu(bn1(fc1(x))))) + shortcut(x)).

    bias: whether the Linears (and a projection's) carry a bias; None: only where no norm follows
    them (norm="none"). `Fixup` blocks are built without (its scalar biases replace them, as
    Fixup's bias-free convs).
    """

    _layers, _norms = ("fc1", "fc2"), ("bn1", "bn2")

    def __init__(
        self, width: int, *, shortcut: str = "B", norm: str = "batch", bias: bool | None = None
    ) -> None:
        super().__init__()
        bias = norm == "none" if bias is None else bias
        self.shortcut = shortcut
        self.downsample = make_shortcut(shortcut, width, width, 1, norm, conv=False, bias=bias)
        self.fc1, self.bn1 = nn.Linear(width, width, bias=bias), norm_layer(norm, width, 1)
        self.fc2, self.bn2 = nn.Linear(width, width, bias=bias), norm_layer(norm, width, 1)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, width) -> (B, width)
        out = self.relu(self.bn1(self.fc1(x)))
        out = self.bn2(self.fc2(out))
        if self.shortcut != "none":  # the plain twin has none
            out = out + self.shortcut_of(x)
        return self.relu(out)  # a[l+2] = g(z[l+2] + a[l])


STANDARD_BLOCKS = (BasicBlock, Bottleneck, PreActBasicBlock, PreActBottleneck, MLPBlock)
