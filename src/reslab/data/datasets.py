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
  Class names come from `train/`.

Downloads, md5 checks and the not-found message of the official files live in `official.py`.
`mean`/`std` are per-channel statistics of the TRAINING split (the published values for the four
standard sets), so train and test normalise alike. `subtract_mean_image` swaps them for the mean
image of a training split and std 1: the "per-pixel mean subtracted" of He et al. 2015, §4.2.
`train_val_split` holds out a seeded validation set, e.g. the 45k/5k CIFAR split of He et al. 2015,
§4.2.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

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


def _parse_imagefolder(spec: str) -> tuple[Path, tuple[int, int] | None]:
    """'<path>', '<path>@32' or '<path>@32x48' -> (path, (H, W) or None)."""
    m = re.fullmatch(r"(.+?)(?:@(\d+)(?:x(\d+))?)?", spec)
    if m is None:
        raise ValueError(
            f"bad imagefolder spec {spec!r}; use imagefolder:<path>, <path>@32 or <path>@32x48"
        )
    return Path(m[1]).expanduser(), ((int(m[2]), int(m[3] or m[2])) if m[2] else None)


def _decode_image(path: str, size: tuple[int, int] | None) -> np.ndarray:
    """One image as uint8 (H, W, 3), resized to `size` (H, W) if given. One-line ValueError for an
    image of more than PIL's `Image.MAX_IMAGE_PIXELS` (PIL only warns up to twice that: a
    decompression bomb) and for a file PIL cannot decode (truncated, damaged, not an image)."""
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():  # reslab says it below, in one line
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(path)  # reads the header only
        with img:
            shape = f"{img.width}x{img.height}"
            if limit is None or img.width * img.height <= limit:
                img = img.convert("RGB")
                if size is not None and img.size != (size[1], size[0]):
                    img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
                return np.asarray(img)
    except Image.DecompressionBombError as e:  # above twice the limit PIL opens nothing
        assert limit is not None  # PIL raises it only under a limit
        pixels = re.search(r"\((\d+) pixels\)", str(e))
        shape = pixels[1] if pixels else f"more than {2 * limit}"
    except (OSError, SyntaxError, EOFError, ValueError) as e:
        if isinstance(e, OSError) and e.errno is not None:
            raise  # not found, no permission, ...: the file system's own one line
        raise ValueError(f"{path} is not a readable image (truncated or damaged)") from None
    raise ValueError(
        f"{path}: image of {shape} pixels is larger than reslab decodes (limit {limit} pixels)"
    )


def _decode_folder(
    folder: Path, classes: tuple[str, ...], size: tuple[int, int] | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode `<folder>/<class>/<image>` with PIL (at load time only) into uint8 (N, 3, H, W)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    to_idx = {c: i for i, c in enumerate(classes)}
    samples = make_dataset(str(folder), to_idx, IMG_EXTENSIONS, allow_empty=True)
    if not samples:
        raise FileNotFoundError(f"no images ({', '.join(IMG_EXTENSIONS)}) in {folder}/<class>/")
    arrays = []
    for path, _ in samples:
        arrays.append(_decode_image(path, size))  # (H, W, 3)
        if arrays[-1].shape != arrays[0].shape:
            (h0, w0), (h, w) = arrays[0].shape[:2], arrays[-1].shape[:2]
            raise ValueError(
                f"imagefolder {folder}: {samples[0][0]} is {h0}x{w0} but {path} is {h}x{w}; "
                f"give a size to resize all, e.g. imagefolder:{folder.parent}@{h0}x{w0}"
            )
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W)
    return images, torch.tensor([label for _, label in samples], dtype=torch.int64)


def _load_imagefolder(spec: str, split: str) -> ImageData:
    path, size = _parse_imagefolder(spec)
    candidates = {"train": ["train"], "test": ["test", "val"]}
    folders = {
        s: next((path / d for d in ds if (path / d).is_dir()), None) for s, ds in candidates.items()
    }
    train_dir, split_dir = folders["train"], folders[split]
    if train_dir is None or split_dir is None:
        raise FileNotFoundError(
            f"imagefolder {path}: expected {path}/train/<class>/<image> and {path}/test/<class>/<image> (or val/)"
        )
    classes = tuple(sorted(d.name for d in train_dir.iterdir() if d.is_dir()))
    images, labels = _decode_folder(split_dir, classes, size)
    train = images if split == "train" else _decode_folder(train_dir, classes, size)[0]
    pixels = train.transpose(0, 1).flatten(1).float().div_(255)  # (C, N*H*W) of the training split
    mean, std = tuple(pixels.mean(1).tolist()), tuple(pixels.std(1).tolist())
    return ImageData(images, labels, classes, mean, std, f"imagefolder:{spec}")


def load_dataset(
    name: str, split: str = "train", root: str | Path | None = None, download: bool = True
) -> ImageData:
    """Load one split of a dataset as uint8 tensors (names and layouts: see the module docstring).

    `root` is the data root for the official sets (default `$RESLAB_DATA` or `~/.cache/reslab`);
    `download` fetches missing official files, else a one-line FileNotFoundError says what to place.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if name.startswith("imagefolder:"):
        return _load_imagefolder(name.split(":", 1)[1], split)
    if name not in DATASETS and _parse_imagefolder(name)[0].is_dir():  # a bare folder path
        return _load_imagefolder(name, split)
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
