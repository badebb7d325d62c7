"""Residual networks and their plain twins: blocks, model families, registry, FLOP/parameter counts."""

from reslab.models.flops import count_macs, count_params, model_table
from reslab.models.registry import create_model, list_models

__all__ = ["create_model", "list_models", "count_params", "count_macs", "model_table"]
