"""Learnable scalars on the residual branch, each a block of its own that takes over a built
standard block's layers under the same names (`scaled(block, branch_scale)`), so that a scaled net
holds its standard twin's weights plus the scalars, in the order of every stored weight file:

- `ReZero` (Bachlechner et al. 2020, as the authors' ResNet code, ReZero-examples "ReZNet"
  notebook): x + alpha * relu(F(x)), alpha = 0 at init; the ReLU after the addition moves onto the
  branch, so nothing follows the sum. Pre-activation blocks already end in a conv: x + alpha * F(x).
- `SkipInit` (De & Smith 2020): the same scalar at the end of the branch, meant for norm-free nets;
  the ReLU stays after the addition.
- `Fixup` (Zhang et al. 2019, §3, as hongyi-zhang/Fixup's FixupBasicBlock and FixupBottleneck):
  scalar biases before each layer and activation, a scalar multiplier, the init of
  `init_residual_branches`; an identity shortcut carries x, a downsampling shortcut sees
  x + bias1a, as conv1.

`init_residual_branches` starts every block of a net as its shortcut, by Fixup's init or by zeroing
the last norm of each branch (zero_init_residual, Goyal et al. 2017).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from reslab.models.blocks import BRANCH_SCALES, STANDARD_BLOCKS, ResidualBlock, check_choice

if TYPE_CHECKING:
    from reslab.models.features import Backbone


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
        self.shortcut, self.preact = block.shortcut, block.preact
        self.both_preact = block.both_preact
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
    bias1a: nn.Module

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
        out = self.scale(self.branch(x))
        out = self.biases("b")[-1](out)  # the last bias: bias2b (bias3b in a bottleneck)
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
def init_residual_branches(model: Backbone, *, zero_init_residual: bool, branch_scale: str) -> None:
    """Residual-branch init of `model` (its `residual_blocks()` and its classifier `fc`), applied
    after the usual He init of the whole model.

    zero_init_residual: zero the last norm's weight of each branch (Goyal et al. 2017), or the last
      layer's weight where the block has no norm, so every block starts as its shortcut.
    fixup (Zhang et al. 2019, §3): with L branches of m layers, He-init the first m-1 layers of each
      branch scaled by L^(-1/(2m-2)), zero the last layer, and zero the classifier's weight and bias.
    """
    check_choice("branch_scale", branch_scale, BRANCH_SCALES)
    blocks = model.residual_blocks()
    for block in blocks:
        if zero_init_residual:
            weight = getattr(
                block.branch_norms()[-1], "weight", None
            )  # None: no norm, or not affine
            nn.init.zeros_(block.branch_layers()[-1].weight if weight is None else weight)
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
        nn.init.zeros_(model.fc.weight)
        nn.init.zeros_(model.fc.bias)
