"""reslab: residual networks and their plain twins — build them, train them, and run the studies
that show why shortcuts work (He et al. 2015, "Deep Residual Learning for Image Recognition")."""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# Public API, imported on first use so that `import reslab` stays fast.
_API = {
    "create_model": "reslab.models",
    "list_models": "reslab.models",
    "register_model": "reslab.models",
    "count_params": "reslab.models",
    "count_macs": "reslab.models",
    "to_residual": "reslab.models",
    "to_plain": "reslab.models",
    "load_weights": "reslab.models",
    "save_weights": "reslab.models",
    "export_model": "reslab.export",
    "load_dataset": "reslab.data",
    "Loader": "reslab.data",
    "TrainConfig": "reslab.training",
    "train": "reslab.training",
    "TrainResult": "reslab.training",
    "evaluate": "reslab.training",
    "load_run": "reslab.training",
    "run_study": "reslab.studies",
    "list_studies": "reslab.studies",
    "degradation": "reslab.studies.degradation",
}

__all__ = ["__version__", *_API]


def __dir__() -> list[str]:
    """The public API too, for tab completion (it is imported on first use)."""
    return sorted({*globals(), *_API})


def __getattr__(name: str):
    if name in _API:
        module = importlib.import_module(_API[name])
        return module if name == "degradation" else getattr(module, name)
    raise AttributeError(f"module 'reslab' has no attribute {name!r}")
