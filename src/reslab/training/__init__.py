"""Training: configuration, the loop, checkpoints, run logs and torchrun support."""

from reslab.training.config import PRESETS, TrainConfig, resolve
from reslab.training.loop import Diverged, evaluate, train

__all__ = ["PRESETS", "TrainConfig", "resolve", "train", "evaluate", "Diverged"]
