"""Residual networks and their plain twins: blocks, model families, registry, FLOP/parameter counts."""

from reslab.models.convert import to_plain, to_residual
from reslab.models.flops import count_macs, count_params, model_table
from reslab.models.registry import create_model, list_models
from reslab.models.weights import load_weights, read_metadata, save_weights

__all__ = ["create_model", "list_models", "count_params", "count_macs", "model_table"]
__all__ += ["to_residual", "to_plain", "load_weights", "save_weights", "read_metadata"]
