"""Training: configuration, the loop, checkpoints, run folders, run logs and torchrun support.

Names are imported on first use, so that `reslab.training.runs` (the run-folder contract, which the
report toolkit reads) does not pull in torch."""

from __future__ import annotations

import importlib

_API = {
    "PRESETS": "reslab.training.presets",
    "TrainConfig": "reslab.training.config",
    "resolve": "reslab.training.config",
    "train": "reslab.training.loop",
    "TrainResult": "reslab.training.loop",
    "evaluate": "reslab.training.evaluation",
    "load_run": "reslab.training.trained",
    "Diverged": "reslab.training.loop",
}

__all__ = list(_API)


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'reslab.training' has no attribute {name!r}")
