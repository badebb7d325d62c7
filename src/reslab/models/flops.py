"""Parameter and multiply-accumulate (MAC) counts, and the model table `reslab models` prints.

MACs come from `torch.utils.flop_counter.FlopCounterMode`, which counts 2 FLOPs per multiply-add of
convolutions and matrix products; norms, activations and pooling are not counted, as in the
published figures (He et al. 2015, Table 1; torchvision's "GFLOPS", which are MACs).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

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
        cfg = getattr(model, "default_cfg", None)  # set by create_model
        if cfg is None:
            raise ValueError(f"{type(model).__name__} has no default_cfg; pass input_size")
        input_size = cfg["input_size"]
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


# The registered models' rows, computed once by `write_table` and stored beside this module, as
# torchvision stores each model's parameter count and GFLOPS with its weights: `reslab models` reads
# it without building ResNet-1202, and tests/models/test_flops.py checks it against `model_table`.
TABLE = Path(__file__).with_name("table.json")


def stored_table() -> list[dict]:
    """The stored rows of every registered model (see `write_table`), in registry order."""
    rows = json.loads(TABLE.read_text())
    return [dict(r, input_size=tuple(r["input_size"])) for r in rows]


def write_table(path: Path = TABLE) -> Path:
    """Compute `model_table` of every registered model and store it (after changing a model:
    `python -c "from reslab.models.flops import write_table; write_table()"`)."""
    from reslab import atomic
    from reslab.models.registry import list_models

    return atomic.write_text(path, json.dumps(model_table(list_models()), indent=1) + "\n")
