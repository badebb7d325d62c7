"""Data: dataset formats -> uint8 tensors in memory; batched tensor augmentation; the Loader."""

from reslab.data.datasets import (
    DATASETS,
    DatasetInfo,
    ImageData,
    load_dataset,
    mean_image,
    subtract_mean_image,
    train_val_split,
)
from reslab.data.normalization import Normalization
from reslab.data.pipeline import EpochPlan, Loader, crop_flip, epoch_plan

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "EpochPlan",
    "ImageData",
    "Loader",
    "Normalization",
    "crop_flip",
    "epoch_plan",
    "load_dataset",
    "mean_image",
    "subtract_mean_image",
    "train_val_split",
]
