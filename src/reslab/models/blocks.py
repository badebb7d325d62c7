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

Learnable scalars on the residual branch (`branch_scale`) are blocks of their own, which take over
a built block's layers under the same names (`scaled(block, branch_scale)`):
  `ReZero`      (Bachlechner et al. 2020, as the authors' ResNet code, ReZero-examples "ReZNet"
                notebook): x + alpha * relu(F(x)), alpha = 0 at init; the ReLU after the addition
                moves onto the branch, so nothing follows the sum. Pre-activation blocks already
                end in a conv: x + alpha * F(x).
  `SkipInit`    (De & Smith 2020): the same scalar at the end of the branch, meant for norm-free
                nets; the ReLU stays after the addition.
  `Fixup`       (Zhang et al. 2019, §3, as hongyi-zhang/Fixup): scalar biases before each layer
                and activation, a scalar multiplier, the init of `init_residual_branches`; an
                identity shortcut carries x, a downsampling shortcut sees x + bias1a as conv1.
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

    A subclass calls `_setup` first (the shortcut's parameters come first, in every stored weight
    file and checkpoint) and names its weight layers and norms in order in `_layers` and `_norms`
    (`branch_layers()`, `branch_norms()`: used for init, zeroed branches and variants).
    """

    preact = False  # pre-activation block: norm-ReLU before each conv, nothing after the addition
    both_preact = False  # the pre-activation relu(bn1(x)) feeds the shortcut too
    expansion = 1
    _layers: tuple[str, ...] = ()
    _norms: tuple[str, ...] = ()
    shortcut: str  # the option: "A" | "B" | "C" | "none" (plain: no addition)
    downsample: nn.Module | None  # the shortcut's module; None: the identity

    def _setup(
        self,
        c_in: int,
        c_out: int,
        stride: int,
        shortcut: str,
        norm: str,
        conv: bool = True,
        bias: bool = False,
    ) -> None:
        check_choice("shortcut", shortcut, SHORTCUTS)
        check_choice("norm", norm, NORMS)
        self.shortcut = shortcut
        self.downsample = make_shortcut(
            shortcut, c_in, c_out, stride, norm, conv, preact=self.preact, bias=bias
        )

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

    def branch_layers(self) -> list[nn.Module]:
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
        self._setup(c_in, planes, stride, shortcut, norm)
        self.conv1, self.bn1 = conv3x3(c_in, planes, stride), norm_layer(norm, planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2, self.bn2 = conv3x3(planes, planes), norm_layer(norm, planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, H, W) -> (B, planes, H/s, W/s)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.shortcut != "none":
            out = out + self.shortcut_of(x)
        return self.relu(out)


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
        self._setup(c_in, c_out, stride, shortcut, norm)
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
        if self.shortcut != "none":
            out = out + self.shortcut_of(x)
        return self.relu(out)


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
        self._setup(c_in, planes, stride, shortcut, norm)
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
        self._setup(c_in, c_out, stride, shortcut, norm)
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
        self._setup(width, width, 1, shortcut, norm, conv=False, bias=bias)
        self.fc1, self.bn1 = nn.Linear(width, width, bias=bias), norm_layer(norm, width, 1)
        self.fc2, self.bn2 = nn.Linear(width, width, bias=bias), norm_layer(norm, width, 1)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, width) -> (B, width)
        out = self.relu(self.bn1(self.fc1(x)))
        out = self.bn2(self.fc2(out))
        if self.shortcut != "none":
            out = out + self.shortcut_of(x)
        return self.relu(out)


STANDARD_BLOCKS = (BasicBlock, Bottleneck, PreActBasicBlock, PreActBottleneck, MLPBlock)


class Bias(nn.Module):
    """A learnable scalar added to the input (Fixup's scalar bias), zero at init."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias


class Scale(nn.Module):
    """A learnable scalar multiplier on a residual branch (ReZero/SkipInit alpha, Fixup scale)."""

    def __init__(self, init: float) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.full((1,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.alpha


class ScaledBlock(ResidualBlock):
    """Base of `ReZero`, `SkipInit` and `Fixup`: a standard block's layers, taken over under their
    own names (so the scaled net holds its standard twin's weights), and a multiplier `scale` on
    the residual branch, `init` at the start."""

    init = 0.0

    def __init__(self, block: ResidualBlock) -> None:
        super().__init__()
        if type(block) not in STANDARD_BLOCKS:
            names = ", ".join(b.__name__ for b in STANDARD_BLOCKS)
            raise ValueError(
                f"{type(self).__name__} scales one of {names}; got {type(block).__name__}"
            )
        self.shortcut, self.preact, self.both_preact = (
            block.shortcut,
            block.preact,
            block.both_preact,
        )
        self._layers, self._norms = block._layers, block._norms
        self.downsample = block.downsample
        self.scale = Scale(self.init)
        self.add_scalars()
        for name, module in block.named_children():
            setattr(self, name, module)  # in the block's order: the order of every weight file

    def add_scalars(self) -> None:
        """Register the scalars that come between the multiplier and the layers (Fixup's biases)."""

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        """F(x), computed as the standard block does: each layer followed by its norm and a ReLU
        but the last (whose ReLU follows the addition); pre-activation: each layer preceded by its
        norm and a ReLU, but the first where `x` is pre-activated already (both_preact)."""
        layers, norms = self.branch_layers(), self.branch_norms()
        if self.preact:
            for i, (layer, norm) in enumerate(zip(layers, norms, strict=True)):
                x = layer(x if i == 0 and self.both_preact else self.relu(norm(x)))
            return x
        for layer, norm in zip(layers[:-1], norms[:-1], strict=True):
            x = self.relu(norm(layer(x)))
        return norms[-1](layers[-1](x))


class ReZero(ScaledBlock):
    """ReZero (Bachlechner et al. 2020): x + alpha * relu(F(x)), nothing after the addition;
    pre-activation: x + alpha * F(x). alpha = 0 at init."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.shortcut_input(x)
        out = self.branch(x)
        out = self.scale(out if self.preact else self.relu(out))
        if self.shortcut != "none":
            out = out + self.shortcut_of(x)
        return out

    @property
    def relu_after_add(self) -> bool:
        return False  # the ReLU is on the branch


class SkipInit(ScaledBlock):
    """SkipInit (De & Smith 2020): relu(alpha * F(x) + x); pre-activation: alpha * F(x) + x.
    alpha = 0 at init."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.shortcut_input(x)
        out = self.scale(self.branch(x))
        if self.shortcut != "none":
            out = out + self.shortcut_of(x)
        return out if self.preact else self.relu(out)


class Fixup(ScaledBlock):
    """Fixup (Zhang et al. 2019, §3; hongyi-zhang/Fixup's FixupBasicBlock and FixupBottleneck): a
    scalar bias before each layer (`bias1a`, `bias2a`, ...) and after each norm, before its ReLU
    (`bias1b`, ...), the multiplier (1 at init) and a last bias at the end of the branch:
    relu(scale * F(x) + bias_b + h(x)). A downsampling shortcut sees x + bias1a, as conv1."""

    init = 1.0

    def add_scalars(self) -> None:
        for i in range(1, len(self._layers) + 1):
            setattr(self, f"bias{i}a", Bias())
            setattr(self, f"bias{i}b", Bias())

    def biases(self, which: str) -> list[nn.Module]:
        return [getattr(self, f"bias{i}{which}") for i in range(1, len(self._layers) + 1)]

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        """F(x) with the biases: post-activation bias_b(norm(layer(bias_a(x)))) then ReLU, but the
        last; pre-activation layer(bias_a(relu(bias_b(norm(x))))), bias_b of the layer before."""
        layers, norms, a, b = self.branch_layers(), self.branch_norms(), *map(self.biases, "ab")
        if self.preact:
            for i, (layer, norm) in enumerate(zip(layers, norms, strict=True)):
                if i > 0:
                    x = self.relu(b[i - 1](norm(x)))
                elif not self.both_preact:
                    x = self.relu(norm(x))
                x = layer(a[i](x))
            return x
        for i, (layer, norm) in enumerate(zip(layers, norms, strict=True)):
            x = norm(layer(a[i](x)))
            if i < len(layers) - 1:
                x = self.relu(b[i](x))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.shortcut_input(x)
        out = self.biases("b")[-1](self.scale(self.branch(x)))
        if self.shortcut != "none":
            out = out + self.shortcut_of(x)
        return out if self.preact else self.relu(out)

    def shortcut_of(self, s: torch.Tensor) -> torch.Tensor:
        return s if self.downsample is None else self.downsample(self.bias1a(s))


def scaled(block: ResidualBlock, branch_scale: str) -> ResidualBlock:
    """`block` with the scalars of `branch_scale` ("none": `block` itself)."""
    check_choice("branch_scale", branch_scale, BRANCH_SCALES)
    scalings = {"rezero": ReZero, "skipinit": SkipInit, "fixup": Fixup}
    return scalings[branch_scale](block) if branch_scale != "none" else block


@torch.no_grad()
def init_residual_branches(
    blocks: Sequence[ResidualBlock], head: nn.Linear, *, zero_init_residual: bool, branch_scale: str
) -> None:
    """Residual-branch init, applied after the usual He init of the whole model.

    zero_init_residual: zero the last norm's weight of each branch (Goyal et al. 2017), or the last
      layer's weight where the block has no norm, so every block starts as its shortcut.
    fixup (Zhang et al. 2019, §3): with L branches of m layers, He-init the first m-1 layers of each
      branch scaled by L^(-1/(2m-2)), zero the last layer, and zero the classifier's weight and bias.
    """
    check_choice("branch_scale", branch_scale, BRANCH_SCALES)
    for block in blocks:
        if zero_init_residual:
            last = block.branch_norms()[-1]
            last = last if getattr(last, "weight", None) is not None else block.branch_layers()[-1]
            nn.init.zeros_(last.weight)
        if branch_scale == "fixup":
            *first, last = block.branch_layers()
            for layer in first:
                nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
                layer.weight.mul_(len(blocks) ** (-1.0 / (2 * len(first))))
            for layer in block.branch_layers():
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)
            nn.init.zeros_(last.weight)
    if branch_scale == "fixup":
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
