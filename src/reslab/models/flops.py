"""Parameter and multiply-accumulate (MAC) counts, and the model table `reslab models` prints.

MACs come from `torch.utils.flop_counter.FlopCounterMode`, which counts 2 FLOPs per multiply-add of
convolutions and matrix products; norms, activations and pooling are not counted, as in the
published figures (He et al. 2015, Table 1; torchvision's "GFLOPS", which are MACs).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared tensors counted once)."""
    params = {id(p): p for p in model.parameters() if p.requires_grad or not trainable_only}
    return sum(p.numel() for p in params.values())


def count_macs(model: nn.Module, input_size: Sequence[int] | None = None) -> int:
    """MACs of one forward pass on one example of shape `input_size` (C, H, W).

    Default: `model.default_cfg["input_size"]`. Runs in eval mode without gradients, on the
    model's device (build the model under `torch.device("meta")` to count without computing).
    """
    if input_size is None:
        input_size = model.default_cfg["input_size"]
    device = next(model.parameters()).device
    x = torch.zeros(1, *input_size, device=device)  # (1, C, H, W)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


def model_table(names: Sequence[str]) -> list[dict]:
    """One row per model name: name, family, depth, residual, params, MACs (at its default input
    size), input_size. Models are built on the meta device, so even ResNet-1202 takes a moment."""
    from reslab.models.registry import create_model

    rows = []
    for name in names:
        with torch.device("meta"):
            model = create_model(name)
        cfg = model.default_cfg
        rows.append(
            dict(
                name=name,
                family=cfg["family"],
                depth=cfg["depth"],
                residual=cfg["residual"],
                params=count_params(model),
                macs=count_macs(model),
                input_size=cfg["input_size"],
            )
        )
    return rows
