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

Downloads, md5 checks and the not-found message of the official files live in `official.py`.
`mean`/`std` are per-channel statistics of the TRAINING split (the published values for the four
standard sets), so train and test normalise alike. `subtract_mean_image` swaps them for the mean
image of a training split and std 1: the "per-pixel mean subtracted" of He et al. 2015, §4.2.
`train_val_split` holds out a seeded validation set, e.g. the 45k/5k CIFAR split of He et al. 2015,
§4.2.
"""

from __future__ import annotations

import os
import re
import stat
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from reslab import limits
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
    size = (int(m[2]), int(m[3] or m[2])) if m[2] else None
    if size is not None and not all(1 <= s <= limits.MAX_SIDE for s in size):
        raise ValueError(
            f"imagefolder size {m[2]}{'x' + m[3] if m[3] else ''} in {spec!r}: each side must be "
            f"1 to {limits.MAX_SIDE} pixels"
        )
    return Path(m[1]).expanduser(), size


def _decode_image(path: str, size: tuple[int, int] | None) -> np.ndarray:
    """One image as uint8 (H, W, 3), resized to `size` (H, W) if given. One-line ValueError for an
    image of more than PIL's `Image.MAX_IMAGE_PIXELS` (PIL only warns up to twice that: a
    decompression bomb), for a file PIL cannot decode (truncated, damaged, not an image) and for a
    bit depth reslab does not convert (`_to_rgb8`)."""
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():  # reslab says it below, in one line
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)  # reads the header only
        with img:
            shape = f"{img.width}x{img.height}"
            if limit is None or img.width * img.height <= limit:
                img = _to_rgb8(img, path)
                if size is not None and img.size != (size[1], size[0]):
                    img = img.resize((size[1], size[0]), Image.BILINEAR)
                return np.asarray(img)
    except Image.DecompressionBombError as e:  # above twice the limit PIL opens nothing
        pixels = re.search(r"\((\d+) pixels\)", str(e))
        shape = pixels[1] if pixels else f"more than {2 * limit}"
    except (OSError, SyntaxError, EOFError, ValueError) as e:
        if isinstance(e, OSError) and e.errno is not None:
            raise  # not found, no permission, ...: the file system's own one line
        if isinstance(e, ValueError) and str(e).startswith(f"{path}: "):
            raise  # _to_rgb8's own
        raise ValueError(f"{path} is not a readable image (truncated or damaged)") from None
    raise ValueError(
        f"{path}: image of {shape} pixels is larger than reslab decodes (limit {limit} pixels)"
    )


def _to_rgb8(img, path: str):
    """`img` as 8-bit RGB. PIL's own convert("RGB") saturates 16-bit greyscale (I;16: every value
    above 255 becomes 255), so those are scaled here, 0..65535 -> 0..255; 16-bit colour PNGs PIL
    already reads as 8-bit RGB. 32-bit integer and float images have no one scale: refused."""
    from PIL import Image

    if img.mode.startswith("I;16"):
        wide = np.asarray(img).astype(np.uint32)  # (H, W), the file's byte order read by numpy
        return Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8)).convert("RGB")
    if img.mode in ("I", "F"):
        kind = "32-bit integer" if img.mode == "I" else "floating-point"
        raise ValueError(
            f"{path}: a {kind} image; reslab reads 8- and 16-bit images: convert it to 8 bits"
        )
    return img.convert("RGB")


def _image_files(folder: Path, classes: tuple[str, ...], root: Path) -> list[tuple[str, int]]:
    """(file, label) of each image under `folder/<class>/`, in torchvision's order (classes, then
    folders and file names, sorted). Only regular files count, each once: the walk never follows a
    link to a folder (no loops), nor a link to a file outside `root`; a file reached twice (a link,
    a hard link) is read once, and refused when the two are in different classes. What is passed
    over is said in one warning; an unreadable folder is an error, not a silent gap."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    root, present = Path(os.path.realpath(root)), set(_class_folders(folder))
    samples, seen, skipped = [], {}, {}

    def skip(why: str, path: str) -> None:
        skipped.setdefault(why, []).append(path)

    def fail(err: OSError) -> None:
        raise err

    for label, name in enumerate(classes):
        if name not in present:  # a class with no folder in this split (test/ may lack one)
            continue
        for top, dirs, files in sorted(os.walk(folder / name, onerror=fail)):
            for d in dirs:
                if os.path.islink(os.path.join(top, d)):
                    skip("links to folders", os.path.join(top, d))
            for file in sorted(files):
                path = os.path.join(top, file)
                if not file.lower().endswith(IMG_EXTENSIONS):
                    continue
                # realpath, not resolve(): a link to itself is passed over, not an error
                if os.path.islink(path) and not Path(os.path.realpath(path)).is_relative_to(root):
                    skip(f"links out of {root}", path)
                    continue
                try:
                    st = os.stat(path)
                except OSError:  # a link to nothing, or to itself
                    skip("broken links", path)
                    continue
                if not stat.S_ISREG(st.st_mode):
                    skip("not regular files", path)
                    continue
                first = seen.setdefault((st.st_dev, st.st_ino), (path, name))
                if first[0] != path:
                    if first[1] != name:
                        raise ValueError(
                            f"imagefolder {folder}: {path} (class {name}) and {first[0]} (class "
                            f"{first[1]}) are the same file; an image belongs to one class"
                        )
                    skip("files already read through another name", path)
                    continue
                samples.append((path, label))
    if skipped:
        counts = ", ".join(f"{len(paths)} {why}" for why, paths in skipped.items())
        example = next(iter(skipped.values()))[0]
        warnings.warn(
            f"imagefolder {folder}: passed over {counts} (e.g. {example}); reslab reads each "
            "regular file once and follows no link to a folder or out of the dataset folder",
            stacklevel=3,
        )
    return samples


def _class_folders(folder: Path) -> list[str]:
    """The class folders of a split: its sub-folders, links to folders aside (never followed)."""
    return sorted(e.name for e in os.scandir(folder) if e.is_dir(follow_symlinks=False))


def _decode_folder(
    folder: Path, classes: tuple[str, ...], size: tuple[int, int] | None, root: Path
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode `<folder>/<class>/<image>` with PIL (at load time only) into uint8 (N, 3, H, W)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    samples = _image_files(folder, classes, root)
    if not samples:
        raise FileNotFoundError(f"no images ({', '.join(IMG_EXTENSIONS)}) in {folder}/<class>/")
    arrays = []
    for path, _ in samples:
        arrays.append(_decode_image(path, size))  # (H, W, 3)
        if len(arrays) == 1:  # all share its size: the whole split's bytes are known now
            limits.check_memory(len(samples) * arrays[0].nbytes, f"imagefolder {folder}")
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
    if folders["train"] is None or folders[split] is None:
        raise FileNotFoundError(
            f"imagefolder {path}: expected {path}/train/<class>/<image> and {path}/test/<class>/<image> (or val/)"
        )
    classes = tuple(_class_folders(folders["train"]))
    extra = sorted(set(_class_folders(folders["test"])) - set(classes)) if folders["test"] else []
    if extra:
        raise ValueError(
            f"imagefolder {path}: {folders['test'].name}/ has classes that train/ lacks: "
            f"{', '.join(extra)}; a net trained on train/ cannot predict them"
        )
    images, labels = _decode_folder(folders[split], classes, size, path)
    train = images if split == "train" else _decode_folder(folders["train"], classes, size, path)[0]
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
