"""Feature extraction as timm does it: `forward_intermediates`, `create_model(features_only=True)`.

Every model's feature points are its stem and the output of each stage (timm's `feature_info`:
channels and reduction = input size / feature size, one dict per point). `level="block"` gives the stem and
every block instead, so block inputs (a[l] in a[l+2] = g(z[l+2] + a[l])) are plain tensors of the
autograd graph: studies take gradients with respect to them without hooks. A residual MLP has no
stages; each block is a feature point at both levels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, cast

import torch
from torch import nn

from reslab.models.recompute import run_blocks

if TYPE_CHECKING:
    from reslab.data.normalization import Normalization
    from reslab.models.blocks import ResidualBlock

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


class Backbone(Protocol):
    """What `FeatureExtractor` asks of its model (`ResNet`, `ResidualMLP`: they import this module)."""

    feature_info: FeatureInfo

    def residual_blocks(self) -> list[ResidualBlock]: ...

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Indices = None,
        *,
        level: str = "stage",
        norm: bool = False,
        intermediates_only: bool = False,
    ) -> tuple[torch.Tensor, list[torch.Tensor]] | list[torch.Tensor]: ...


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
