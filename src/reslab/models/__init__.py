"""Residual networks and their plain twins: blocks, model families, registry, FLOP/parameter counts."""

from reslab.models.convert import append_blocks, to_plain, to_residual
from reslab.models.flops import count_macs, count_params, model_table
from reslab.models.registry import create_model, is_residual, list_models, register_model, twin
from reslab.models.weights import create_saved, load_weights, read_metadata, save_weights

__all__ = [
    "create_model",
    "list_models",
    "register_model",
    "twin",
    "is_residual",
    "count_params",
    "count_macs",
]
__all__ += ["model_table", "to_residual", "to_plain", "append_blocks"]
__all__ += ["load_weights", "save_weights", "read_metadata", "create_saved"]
