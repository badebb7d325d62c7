"""Residual MLPs of any depth and width, and their plain twins (shortcut="none").

The fully connected form of He et al. 2015's block (§3.2, "the above notations are about
fully-connected layers for simplicity"): flatten, a Linear stem, blocks of two Linears
(`reslab.models.blocks.MLPBlock`), and a Linear classifier. Depth counts weight layers:
depth = 2 * blocks + 2. With branch_scale="rezero"/"skipinit"/"fixup" every block is the identity
at init, which keeps norm-free nets of thousands of layers finite in fp32 and bf16.

Fixup (Zhang et al. 2019) takes the form of its ResNets (hongyi-zhang/Fixup): bias-free Linears, a
scalar bias after the stem's Linear (before its ReLU) and one before the classifier (`bias2`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from reslab.models.blocks import (
    MLPBlock,
    norm_layer,
    resolve_norm,
)
from reslab.models.features import Backbone, FeatureInfo
from reslab.models.scaled import Bias, init_residual_branches, scaled


class ResidualMLP(Backbone):
    """stem (Linear in->width, norm, ReLU) -> `layers` (MLPBlocks) -> fc (Linear width->classes);
    Fixup adds a scalar bias before the stem's ReLU and one before fc.

    Args:
        in_features: flattened input size (C * H * W for images).
        num_blocks: number of two-layer blocks.
        width: hidden width.
        num_classes: classifier outputs.
        shortcut: "B" (identity; "A" is the same here as the width never changes), "C"
            (Linear+norm projection on every block), or "none" (plain).
        norm: "batch" | "group" | "none"; None picks "none" for skipinit/fixup, else "batch".
        branch_scale: "none" | "rezero" | "skipinit" | "fixup", see `reslab.models.blocks`.
        zero_init_residual: zero the last norm weight (or last Linear if norm="none") of each branch.
    """

    def __init__(
        self,
        in_features: int,
        num_blocks: int,
        width: int = 64,
        num_classes: int = 10,
        *,
        shortcut: str = "B",
        norm: str | None = None,
        branch_scale: str = "none",
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        norm = resolve_norm(shortcut, norm, branch_scale, zero_init_residual)
        if width < 1 or num_blocks < 0:
            raise ValueError(f"width must be >= 1 and num_blocks >= 0; got {width}, {num_blocks}")
        fixup = branch_scale == "fixup"
        self.stem = nn.Sequential(
            nn.Linear(in_features, width, bias=norm == "none" and not fixup),
            norm_layer(norm, width, 1),
            Bias() if fixup else nn.Identity(),
            nn.ReLU(),
        )
        # Fixup's scalar biases replace the Linears' own (hongyi-zhang/Fixup's convs have none)
        bias = norm == "none" and not fixup
        blocks = (
            scaled(MLPBlock(width, shortcut=shortcut, norm=norm, bias=bias), branch_scale)
            for _ in range(num_blocks)
        )
        self.layers = nn.Sequential(*blocks)
        self.bias2 = Bias() if fixup else nn.Identity()
        self.fc = nn.Linear(width, num_classes)
        self.num_features = width
        # feature points: the stem, then every block (an MLP has no stages), all `width` wide
        names = ["stem"] + [f"layers.{i}" for i in range(num_blocks)]
        self.feature_info = FeatureInfo(dict(num_chs=width, reduction=1, module=n) for n in names)
        for m in self.modules():  # He init for ReLU nets (fan_in, as for a forward pass)
            if isinstance(m, nn.Linear) and m is not self.fc:
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        init_residual_branches(
            self, zero_init_residual=zero_init_residual, branch_scale=branch_scale
        )

    def forward_stem(self, x: torch.Tensor, level: str) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.stem(torch.flatten(x, 1))  # (B, C, H, W) or (B, F) -> (B, width)
        return x, x

    def units(self, level: str) -> list[nn.Module]:
        return list(self.layers)  # the blocks, at both levels: an MLP has no stages

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:  # (B, width) -> (B, num_classes)
        """The linear classifier (Fixup: a scalar bias before it)."""
        return self.fc(self.bias2(x))


def residual_mlp(
    depth: int,
    num_classes: int = 10,
    in_chans: int = 3,
    img_size: int | tuple[int, int] | None = None,
    *,
    width: int = 64,
    shortcut: str = "B",
    **kwargs: Any,
) -> ResidualMLP:
    """Residual MLP with `depth` weight layers (even, >= 2) on flattened in_chans x img_size images
    (img_size defaults to 32, CIFAR)."""
    if depth < 2 or depth % 2:
        raise ValueError(
            "residual MLP depth (weight layers = 2 * blocks + 2) must be even and >= 2"
        )
    h, w = (img_size, img_size) if isinstance(img_size, int) else (img_size or (32, 32))
    return ResidualMLP(
        in_chans * h * w, (depth - 2) // 2, width, num_classes, shortcut=shortcut, **kwargs
    )
