"""Feature extraction as timm does it: `forward_intermediates`, `create_model(features_only=True)`.

Every model's feature points are its stem and the output of each stage (timm's `feature_info`:
channels and reduction = input size / feature size, one dict per point). `level="block"` gives the stem and
every block instead, so block inputs (a[l] in a[l+2] = g(z[l+2] + a[l])) are plain tensors of the
autograd graph: studies take gradients with respect to them without hooks. A residual MLP has no
stages; each block is a feature point at both levels.

`Backbone` is the base of the model families (`ResNet`, `ResidualMLP`): it runs a family's stem,
units and head for `forward`, `forward_features` and `forward_intermediates`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from reslab.models.blocks import ResidualBlock, check_choice
from reslab.models.recompute import GradCheckpointing, run_blocks

if TYPE_CHECKING:
    from reslab.data.normalization import Normalization

Indices = int | Sequence[int] | None
LEVELS = ("stage", "block")


def take_indices(num: int, indices: Indices) -> list[int]:
    """timm's rule for choosing among `num` feature points: None -> all, an int n -> the last n,
    a sequence -> those points (negative ones count from the end). Sorted, in forward order."""
    if indices is None:
        return list(range(num))
    if isinstance(indices, int):
        if not 0 <= indices <= num:
            raise ValueError(
                f"indices={indices}: take the last n of {num} feature points, 0 <= n <= {num}"
            )
        return list(range(num - indices, num))
    taken = [i + num if i < 0 else i for i in indices]
    bad = [i for i, t in zip(indices, taken, strict=True) if not 0 <= t < num]
    if bad:
        raise ValueError(
            f"indices {bad} out of range: the model has {num} feature points (0..{num - 1})"
        )
    return sorted(set(taken))


def collect(
    x: torch.Tensor,
    units: Sequence[nn.Module],
    take: Sequence[int],
    stop_early: bool,
    segments: int = 0,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Run `x` through `units` in order; return the last output and the feature points in `take`
    (point 0 is `x` itself, point i the output of unit i). `stop_early`: skip units past the last
    point taken (the returned output is then that point's). `segments`: when no point is taken,
    checkpoint the units in that many segments (`reslab.models.recompute`)."""
    if segments and not take:
        return run_blocks(units, x, segments), []
    wanted = set(take)
    feats = [x] if 0 in wanted else []
    last = max(take, default=0) if stop_early else len(units)
    for i, unit in enumerate(units[:last], 1):
        x = unit(x)
        if i in wanted:
            feats.append(x)
    return x, feats


class FeatureInfo(list):
    """Feature points as dicts `num_chs`, `reduction`, `module`, with timm's accessors."""

    def channels(self) -> list[int]:
        """Channels (features for an MLP) of each point."""
        return [f["num_chs"] for f in self]

    def reduction(self) -> list[int]:
        """Input size / feature size of each point (1 for an MLP)."""
        return [f["reduction"] for f in self]

    def module_name(self) -> list[str]:
        """Name of the module whose output each point is."""
        return [f["module"] for f in self]


class Backbone(GradCheckpointing, nn.Module):
    """Base of the model families (`ResNet`, `ResidualMLP`): a stem, blocks, a head, and timm's
    feature API over them. A family defines `forward_stem`, `units`, `forward_head` and, where a
    norm follows the last block (pre-activation nets), `final_norm`."""

    model_name: str  # set by `create_model`, as default_cfg
    default_cfg: dict[str, Any]
    normalization: Normalization | None  # the input normalisation `load_weights` reads from a file
    feature_info: FeatureInfo
    fc: nn.Linear  # the classifier

    def residual_blocks(self) -> list[ResidualBlock]:
        """All blocks, in forward order."""
        return [m for m in self.modules() if isinstance(m, ResidualBlock)]

    def forward_stem(self, x: torch.Tensor, level: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(feature point 0 at `level`, the first unit's input)."""
        raise NotImplementedError

    def units(self, level: str) -> list[nn.Module]:
        """What runs after the stem, in order: the stages (level="stage") or the blocks."""
        raise NotImplementedError

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        """What follows the last unit before the head; nothing but in pre-activation nets."""
        return x

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits from the last feature map."""
        raise NotImplementedError

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Indices = None,
        *,
        level: str = "stage",
        norm: bool = False,
        intermediates_only: bool = False,
    ) -> tuple[torch.Tensor, list[torch.Tensor]] | list[torch.Tensor]:
        """(features, intermediates) as timm: `features` is `forward_features(x)`, ready for
        `forward_head`; `intermediates` are the feature points chosen by `indices` (see
        `take_indices`), each (B, C_i, H_i, W_i) ((B, width) in an MLP). level="stage": the stem
        and each stage (`feature_info`); level="block": the stem (a ResNet's after the max-pool)
        and each block: point l is the input of block l + 1. An MLP's stages are its blocks.
        norm: pass the last stage's point through the final norm (pre-activation nets' norm+ReLU).
        intermediates_only: return just the list, and skip the units after the last point taken.
        """
        check_choice("level", level, LEVELS)
        units = self.units(level)
        take = take_indices(len(units) + 1, indices)
        stem, x = self.forward_stem(x, level)
        segments = self.grad_checkpoint if level == "block" else 0
        x, feats = collect(x, units, [i for i in take if i], intermediates_only, segments)
        feats = [stem, *feats] if 0 in take else feats
        normed = norm and len(units) in take
        if normed or not intermediates_only:
            x = self.final_norm(x)
            if normed:
                feats[-1] = x
        return feats if intermediates_only else (x, feats)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # -> (B, F, h, w) or (B, width)
        """The last unit's output after the final norm, the head's input. With grad checkpointing
        on, the blocks run in checkpointed segments."""
        level = "block" if self.grad_checkpoint else "stage"
        return self.forward_intermediates(x, indices=(), level=level)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, num_classes)
        """Class logits."""
        return self.forward_head(self.forward_features(x))


class FeatureExtractor(nn.Module):
    """A model whose forward returns the list of its features at `out_indices` (stem = 0, stages
    1..K), as timm's `features_only=True`; `feature_info` describes the points returned.

    Pre-activation nets return their last stage after the final norm+ReLU (timm's `norm`). The
    classifier stays in `self.model`, unused, so weights files load into it unchanged:
    `load_weights(extractor.model, "resnet50.pth")`.
    """

    model_name: str  # set by `create_model`, as default_cfg
    default_cfg: dict[str, Any]
    normalization: Normalization | None  # the input normalisation `load_weights` reads from a file

    def __init__(self, model: Backbone, out_indices: Indices = None) -> None:
        super().__init__()
        self.model = model
        self.out_indices = take_indices(len(model.feature_info), out_indices)
        self.feature_info = FeatureInfo(model.feature_info[i] for i in self.out_indices)

    def residual_blocks(self) -> list[ResidualBlock]:
        """The wrapped model's blocks, in forward order."""
        return self.model.residual_blocks()

    def forward(
        self, x: torch.Tensor
    ) -> list[torch.Tensor]:  # (B, C, H, W) -> [(B, C_i, H_i, W_i)]
        """The features at `out_indices`, in forward order."""
        return cast(  # intermediates_only=True: the list alone
            list[torch.Tensor],
            self.model.forward_intermediates(
                x, self.out_indices, norm=True, intermediates_only=True
            ),
        )
