"""Convolutional ResNets and their plain twins (a plain net is the same class with shortcut="none").

- CIFAR ResNets (He et al. 2015, "Deep Residual Learning for Image Recognition", §4.2): 3x3 stem,
  three stages of n basic blocks with 16/32/64 channels, depth 6n+2, option A shortcuts. Or
  bottlenecks (depth 9n+2, 16/32/64 planes x4, option B, the paper's stride on the first 1x1), by
  default from depth 164 up (`cifar_stages`): the "original" ResNet-164 of He et al. 2016, Table 2.
- ImageNet ResNets (He et al. 2015, Table 1): exactly torchvision's architecture and parameter
  names (7x7 stem + max-pool, four stages 64..512, projection shortcuts "B", bottleneck "v1.5").
- Pre-activation CIFAR ResNets (He et al. 2016, "Identity Mappings in Deep Residual Networks", §4
  and appendix), as the authors' code (KaimingHe/resnet-1k-layers, resnet-pre-act.lua): a bare
  3x3 conv stem; the first unit of each stage pre-activates both paths (so the first activation
  comes right after conv1, before the split); bare 1x1 conv projections; bottlenecks (9n+2) stride
  their first 1x1; a final norm+ReLU before pooling. Basic-block nets (6n+2, ResNet-110) use
  option A shortcuts, as the CIFAR nets of He et al. 2015.
- Fixup (Zhang et al. 2019, as hongyi-zhang/Fixup): scalar biases after the stem's conv (before
  its ReLU) and before the classifier, `bias1` and `bias2`, on top of the blocks' own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from reslab.models.blocks import (
    BasicBlock,
    Bottleneck,
    PreActBasicBlock,
    PreActBottleneck,
    ResidualBlock,
    check_choice,
    norm_layer,
    resolve_norm,
)
from reslab.models.features import Backbone, FeatureInfo
from reslab.models.scaled import Bias, init_residual_branches, scaled


class ResNet(Backbone):
    """A stem, stages of residual (or plain) blocks, global average pooling and a linear classifier.

    Args:
        block: block class (`BasicBlock`, `Bottleneck`, `PreActBasicBlock`, `PreActBottleneck`).
        layers: number of blocks per stage.
        widths: block `planes` per stage (the stem has widths[0] channels).
        num_classes, in_chans: classifier outputs and input channels.
        stem: "imagenet" (7x7/2 conv + 3x3/2 max-pool) or "cifar" (3x3 conv).
        shortcut: "A" | "B" | "C" | "none" (plain), see `reslab.models.blocks`.
        norm: "batch" | "group" | "none"; None picks "none" for skipinit/fixup, else "batch".
        branch_scale: "none" | "rezero" | "skipinit" | "fixup", see `reslab.models.blocks`.
        zero_init_residual: zero the last norm weight of every branch (last conv if norm="none").
        stride_in_1x1: bottlenecks put the stride on the first 1x1 conv (original "v1").
    """

    def __init__(
        self,
        block: type[ResidualBlock],
        layers: Sequence[int],
        widths: Sequence[int],
        *,
        num_classes: int = 1000,
        in_chans: int = 3,
        stem: str = "imagenet",
        shortcut: str = "B",
        norm: str | None = None,
        branch_scale: str = "none",
        zero_init_residual: bool = False,
        stride_in_1x1: bool = False,
    ) -> None:
        super().__init__()
        check_choice("stem", stem, ("imagenet", "cifar"))
        norm = resolve_norm(shortcut, norm, branch_scale, zero_init_residual)
        self.preact = block.preact
        c = widths[0]
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_chans, c, 7, 2, padding=3, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_chans, c, 3, 1, padding=1, bias=False)
        # pre-activation nets: the first block's norm+ReLU is the stem's, so the stem is a bare conv
        self.bn1 = nn.Identity() if self.preact else norm_layer(norm, c)
        self.bias1 = Bias() if branch_scale == "fixup" else nn.Identity()  # Fixup: before the ReLU
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, padding=1) if stem == "imagenet" else nn.Identity()
        kw = dict(shortcut=shortcut, norm=norm, stride_in_1x1=stride_in_1x1)
        self.num_stages = len(layers)
        reduction = 2 if stem == "imagenet" else 1
        # timm's feature points: the stem (before the max-pool), then each stage
        stem_out = ("bias1" if branch_scale == "fixup" else "conv1") if self.preact else "relu"
        self.feature_info = FeatureInfo([dict(num_chs=c, reduction=reduction, module=stem_out)])
        reduction *= 2 if stem == "imagenet" else 1  # max-pool
        for i, (n, planes) in enumerate(zip(layers, widths, strict=True)):
            stride = 1 if i == 0 else 2
            # resnet-pre-act.lua: a stage's first unit pre-activates both paths ("both_preact")
            first = dict(both_preact=True) if self.preact else {}
            blocks = [scaled(block(c, planes, stride, **kw, **first), branch_scale)]
            c = planes * block.expansion
            blocks += [scaled(block(c, planes, 1, **kw), branch_scale) for _ in range(n - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            reduction *= stride
            self.feature_info.append(dict(num_chs=c, reduction=reduction, module=f"layer{i + 1}"))
        if self.preact:  # He et al. 2016: the last block's output is not normalised; do it here
            self.bn_final = norm_layer(norm, c)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.bias2 = Bias() if branch_scale == "fixup" else nn.Identity()  # Fixup: before the fc
        self.fc = nn.Linear(c, num_classes)
        self.num_features = c

        for m in self.modules():  # torchvision's init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        init_residual_branches(
            self, zero_init_residual=zero_init_residual, branch_scale=branch_scale
        )

    def forward_stem(self, x: torch.Tensor, level: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(feature point 0: the stem's output, before the max-pool at level="stage"; the first
        block's input), each (B, C, H/r, W/r)."""
        x = self.bias1(self.bn1(self.conv1(x)))
        if not self.preact:
            x = self.relu(x)
        pooled = self.maxpool(x)
        return (pooled if level == "block" else x), pooled

    def units(self, level: str) -> list[nn.Module]:
        stages = [getattr(self, f"layer{i + 1}") for i in range(self.num_stages)]
        return stages if level == "stage" else [b for s in stages for b in s]

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        """He et al. 2016: pre-activation nets normalise the last block's output (norm + ReLU)."""
        return self.relu(self.bn_final(x)) if self.preact else x

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:  # (B, F, h, w) -> (B, num_classes)
        """Global average pooling and the linear classifier (Fixup: a scalar bias before it)."""
        return self.fc(self.bias2(torch.flatten(self.avgpool(x), 1)))


def cifar_stages(depth: int, block: str | None, what: str) -> tuple[str, int]:
    """(block kind, blocks per stage) of a three-stage CIFAR net of `depth` layers.

    block: "basic" (depth 6n+2) or "bottleneck" (depth 9n+2). None follows He et al. 2016:
    bottlenecks from depth 164 up (ResNet-164, -1001), basic blocks below (ResNet-110); a depth
    that fits only one of the two forms uses that one.
    """
    fits = {
        "basic": depth >= 8 and (depth - 2) % 6 == 0,
        "bottleneck": depth >= 11 and (depth - 2) % 9 == 0,
    }
    if block is None:
        block = (
            "bottleneck" if fits["bottleneck"] and (depth >= 164 or not fits["basic"]) else "basic"
        )
    check_choice("block", block, tuple(fits))
    if not fits[block]:
        raise ValueError(
            f"{what} depth must be 6n+2 for basic blocks (8, 14, 20, ...) "
            "or 9n+2 for bottlenecks (11, 20, 29, ...)"
        )
    return block, (depth - 2) // (6 if block == "basic" else 9)


def cifar_resnet(
    depth: int,
    num_classes: int = 10,
    in_chans: int = 3,
    img_size: object = None,
    *,
    block: str | None = None,
    shortcut: str | None = None,
    stride_in_1x1: bool = True,
    preact: bool = False,
    **kwargs: Any,
) -> ResNet:
    """CIFAR ResNet-`depth` (He et al. 2015, §4.2), 16/32/64 planes per stage; `img_size` ignored.

    block: see `cifar_stages` (basic blocks up to ResNet-110 and for ResNet-1202; bottlenecks for
    ResNet-164, the "original" unit of He et al. 2016, Table 2). shortcut: None picks "A" for basic
    blocks (§4.2) and "B" for bottlenecks (whose first unit widens 16 -> 64 channels).
    stride_in_1x1: bottlenecks stride their first 1x1 conv, as the paper ("v1").
    preact: full pre-activation units (`preact_resnet`).
    """
    block, n = cifar_stages(depth, block, "pre-activation ResNet" if preact else "CIFAR ResNet")
    basic, bottleneck = (PreActBasicBlock, PreActBottleneck) if preact else (BasicBlock, Bottleneck)
    return ResNet(
        basic if block == "basic" else bottleneck,
        [n] * 3,
        (16, 32, 64),
        num_classes=num_classes,
        in_chans=in_chans,
        stem="cifar",
        shortcut=shortcut or ("A" if block == "basic" else "B"),
        stride_in_1x1=stride_in_1x1,
        **kwargs,
    )


IMAGENET_LAYERS = {  # He et al. 2015, Table 1
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}


def imagenet_resnet(
    depth: int,
    num_classes: int = 1000,
    in_chans: int = 3,
    img_size: object = None,
    *,
    shortcut: str = "B",
    **kwargs: Any,
) -> ResNet:
    """ImageNet ResNet-`depth` as torchvision (depth in 18, 34, 50, 101, 152); `img_size` ignored."""
    if depth not in IMAGENET_LAYERS:
        raise ValueError(
            f"ImageNet ResNet depth must be one of {', '.join(map(str, IMAGENET_LAYERS))}"
        )
    block, layers = IMAGENET_LAYERS[depth]
    return ResNet(
        block,
        layers,
        (64, 128, 256, 512),
        num_classes=num_classes,
        in_chans=in_chans,
        stem="imagenet",
        shortcut=shortcut,
        **kwargs,
    )


def preact_resnet(
    depth: int, num_classes: int = 10, in_chans: int = 3, img_size: object = None, **kwargs: Any
) -> ResNet:
    """Pre-activation CIFAR ResNet-`depth` (He et al. 2016): `cifar_resnet` with full
    pre-activation units, 16/32/64 planes per stage; `img_size` is ignored.

    The same options and defaults: block (bottlenecks from depth 164 up), shortcut (None: "A" for
    basic blocks, as ResNet-110 and the CIFAR nets of He et al. 2015; "B" for bottlenecks, a bare
    1x1 conv where the shape changes, resnet-pre-act.lua), stride_in_1x1 (bottlenecks stride
    their first 1x1 conv, as resnet-pre-act.lua).
    """
    return cifar_resnet(depth, num_classes, in_chans, img_size, preact=True, **kwargs)
