"""Datasets as uint8 tensors in memory, read from their original on-disk formats.

`load_dataset(name, split)` returns an `ImageData` (images uint8 (N, C, H, W), labels int64 (N,)).
Names and where their files go under the data root (`root`, else `$RESLAB_DATA`, else
`~/.cache/reslab`):

- `cifar10`, `cifar100`: `<root>/cifar-10-batches-py/`, `<root>/cifar-100-python/` (official
  python pickles; CIFAR-100 with its 100 fine labels)
- `mnist`, `fashion-mnist`: `<root>/MNIST/raw/`, `<root>/FashionMNIST/raw/` (official idx files,
  `.gz` or uncompressed: torchvision's layout, so an existing torchvision download is reused)
- `digits`: scikit-learn's bundled 8x8 digits (offline), 0..16 scaled to 0..255. It has no test
  set, so a fixed split holds out floor(20%) of each class (numpy `default_rng(0)`): 1442/355.
- `imagefolder:<path>[@S | @HxW]` (or an existing `<path>`): `<path>/train/<class>/<image>` and
  `<path>/test/<class>/<image>` (`val/` accepted for test), decoded once with PIL to RGB uint8.
  All images must share one size unless `@S` (S x S) or `@HxW` resizes them (bilinear).
  Class names come from `train/`; a class folder in `test/` that `train/` lacks is refused. Only
  regular files are read, each once (a file reached twice, by a link or a hard link, counts once);
  links to folders are never followed, nor links that lead out of `<path>`: what is passed over is
  said in one warning. 16-bit images are scaled to 8 bits (65535 -> 255); 32-bit and float images
  are refused.

Downloads, md5 checks and the not-found message of the official files live in `official.py`; the
image folders' walk and decoding in `imagefolder.py`.
`mean`/`std` are per-channel statistics of the TRAINING split (the published values for the four
standard sets), so train and test normalise alike. `subtract_mean_image` swaps them for the mean
image of a training split and std 1: the "per-pixel mean subtracted" of He et al. 2015, §4.2.
`train_val_split` holds out a seeded validation set, e.g. the 45k/5k CIFAR split of He et al. 2015,
§4.2.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import overload

import numpy as np
import torch

from reslab.data.imagefolder import parse_imagefolder, read_imagefolder
from reslab.data.integrity import data_root
from reslab.data.official import RELEASES, read_release

SPLITS = ("train", "test")


@dataclass(frozen=True, eq=False)
class ImageData:
    """A whole dataset split in memory."""

    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor  # int64 (N,)
    classes: tuple[str, ...]
    # per channel in [0, 1] pixel units (training split), or a mean image float32 (C, H, W)
    mean: tuple[float, ...] | torch.Tensor
    std: tuple[float, ...]
    name: str

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(
                f"images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.shape != self.images.shape[:1]:
            raise ValueError(
                f"labels must be int64 ({len(self.images)},), got {self.labels.dtype} {tuple(self.labels.shape)}"
            )
        c = self.images.shape[1]
        if len(self.mean) != c or len(self.std) != c:
            raise ValueError(
                f"mean/std need {c} values (one per channel), got {len(self.mean)}/{len(self.std)}"
            )
        if isinstance(self.mean, torch.Tensor) and self.mean.shape != self.images.shape[1:]:
            raise ValueError(
                f"a mean image must be (C, H, W) = {tuple(self.images.shape[1:])}, "
                f"got {tuple(self.mean.shape)}"
            )

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, index: torch.Tensor) -> ImageData:
        """The images at `index` (same classes, mean, std and name)."""
        return replace(self, images=self.images[index], labels=self.labels[index])


@dataclass(frozen=True)
class DatasetInfo:
    """What `DATASETS` knows about a named dataset."""

    num_classes: int
    shape: tuple[int, int, int]  # (C, H, W)
    sizes: tuple[int, int]  # (train, test) images
    description: str


DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo(10, (3, 32, 32), (50000, 10000), "CIFAR-10 (Krizhevsky 2009)"),
    "cifar100": DatasetInfo(100, (3, 32, 32), (50000, 10000), "CIFAR-100, fine labels"),
    "mnist": DatasetInfo(10, (1, 28, 28), (60000, 10000), "MNIST (LeCun et al. 1998)"),
    "fashion-mnist": DatasetInfo(
        10, (1, 28, 28), (60000, 10000), "Fashion-MNIST (Xiao et al. 2017)"
    ),
    "digits": DatasetInfo(10, (1, 8, 8), (1442, 355), "scikit-learn 8x8 digits, fixed 80/20 split"),
}


def _load_digits(split: str) -> ImageData:
    """scikit-learn's 8x8 digits with the fixed split described in the module docstring."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)  # (1797, 64) floats in 0..16, labels 0..9
    images = torch.from_numpy(np.rint(x * (255 / 16)).astype(np.uint8)).view(-1, 1, 8, 8)
    rng = np.random.default_rng(0)
    test = [rng.permutation(np.flatnonzero(y == c))[: np.sum(y == c) // 5] for c in range(10)]
    is_test = torch.zeros(len(y), dtype=torch.bool)
    is_test[torch.from_numpy(np.concatenate(test))] = True
    train = images[~is_test].float() / 255
    keep = is_test if split == "test" else ~is_test
    labels = torch.from_numpy(y.astype(np.int64))[keep]
    classes = tuple(str(i) for i in range(10))
    return ImageData(
        images[keep], labels, classes, (train.mean().item(),), (train.std().item(),), "digits"
    )


def load_dataset(
    name: str, split: str = "train", root: str | Path | None = None, download: bool = True
) -> ImageData:
    """Load one split of a dataset as uint8 tensors (names and layouts: see the module docstring).

    `root` is the data root for the official sets (default `$RESLAB_DATA` or `~/.cache/reslab`);
    `download` fetches missing official files, else a one-line FileNotFoundError says what to place.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    spec = name.split(":", 1)[1] if name.startswith("imagefolder:") else None
    if spec is None and name not in DATASETS and parse_imagefolder(name)[0].is_dir():
        spec = name  # a bare folder path
    if spec is not None:
        return ImageData(*read_imagefolder(spec, split), f"imagefolder:{spec}")
    if name == "digits":
        return _load_digits(split)
    if name in RELEASES:
        images, labels, classes = read_release(name, split, data_root(root), download)
        return ImageData(images, labels, classes, RELEASES[name].mean, RELEASES[name].std, name)
    raise ValueError(
        f"unknown dataset {name!r}; choose from {sorted(DATASETS)} or imagefolder:<path>"
    )


def mean_image(data: ImageData, chunk: int = 1024) -> torch.Tensor:
    """The mean of `data`'s images, pixel by pixel: float32 (C, H, W) in [0, 1] pixel units.

    Summed exactly in int64, `chunk` images at a time (CIFAR's 50,000 images in float64 would take
    1.2 GB at once)."""
    if len(data) == 0:
        raise ValueError("the mean image of an empty dataset is undefined; give at least one image")
    total = torch.zeros(data.images.shape[1:], dtype=torch.int64)
    for i in range(0, len(data), chunk):
        total += data.images[i : i + chunk].sum(0, dtype=torch.int64)
    return (total.double() / (255.0 * len(data))).float()


@overload
def subtract_mean_image(train: ImageData, /) -> tuple[ImageData]: ...
@overload
def subtract_mean_image(train: ImageData, test: ImageData, /) -> tuple[ImageData, ImageData]: ...
@overload
def subtract_mean_image(
    train: ImageData, test: ImageData, val: ImageData | None, /
) -> tuple[ImageData, ImageData, ImageData | None]: ...
def subtract_mean_image(
    train: ImageData, *others: ImageData | None
) -> tuple[ImageData | None, ...]:
    """`train` and `others` (None stays None) normalised by the mean image of `train` and std 1.

    He et al. 2015, §4.2: "The network inputs are 32x32 images, with the per-pixel mean
    subtracted"; the mean is the training split's, so test and validation images are shifted alike.
    The `Loader` subtracts it where each pixel came from, then pads and crops: padded pixels are 0,
    the mean."""
    mean = mean_image(train)
    ones = (1.0,) * train.images.shape[1]
    return tuple(None if d is None else replace(d, mean=mean, std=ones) for d in (train, *others))


def train_val_split(
    data: ImageData, val_size: int, seed: int, stratify: bool = False
) -> tuple[ImageData, ImageData]:
    """Hold out `val_size` images chosen by `seed` (5000 of CIFAR's 50000: He et al. 2015, §4.2).

    With `stratify`, each class gives a share proportional to its size (largest remainders get
    the rounding). Both parts keep the original order, classes, mean/std and name.
    """
    n = len(data)
    if not 0 < val_size < n:
        raise ValueError(f"val_size must be in [1, {n - 1}] for {n} images, got {val_size}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    if stratify:  # per class: the first take[c] of its images in the seeded order
        counts = torch.bincount(data.labels, minlength=data.num_classes)
        exact = counts.double() * val_size / n
        take = exact.floor().long()
        short = val_size - int(take.sum())
        take[torch.argsort(exact - take, descending=True, stable=True)[:short]] += 1
        shuffled = data.labels[perm]
        val = torch.cat([perm[shuffled == c][: take[c]] for c in range(len(counts))])
    else:
        val = perm[:val_size]
    is_val = torch.zeros(n, dtype=torch.bool)
    is_val[val] = True
    return data.subset(~is_val), data.subset(is_val)
