"""The official releases of CIFAR-10/100 (python pickles) and MNIST/Fashion-MNIST (idx files).

Each `Release` lists its files per split, their official md5s (torchvision's values; for idx files,
the md5 of the uncompressed file, so `.gz` and raw copies check alike), where they go under the
data root, and where to download them. `read_release` returns the split as uint8 tensors, after:

- missing files: download (if allowed), else one-line FileNotFoundError saying what to put where;
- md5 mismatch: one warning naming the files (see `integrity.verify_md5`), then load anyway;
- malformed files (not a pickle, truncated, wrong keys/shape/magic): ValueError naming the file.

Layouts: `<root>/cifar-10-batches-py/`, `<root>/cifar-100-python/` (as in the official tarballs),
`<root>/MNIST/raw/`, `<root>/FashionMNIST/raw/` (torchvision's layout; `.gz` or uncompressed).
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from reslab.data.integrity import fetch, verify_md5
from reslab.data.unpickle import load_pickle


@dataclass(frozen=True)
class Release:
    """One official dataset release and its layout under the data root."""

    title: str
    folder: str  # under the data root
    files: dict[str, tuple[str, ...]]  # split -> file names (CIFAR: meta file last)
    md5: dict[str, str]  # file name -> official md5 (idx: of the uncompressed file)
    archive: bool  # True: urls[0] is one archive that unpacks into `folder` (CIFAR)
    urls: tuple[str, ...]  # the archive, or mirrors that hold each `<file>.gz` (idx)
    url_md5: dict[str, str]  # downloaded file name -> official md5
    place: str  # what to place where, for the not-found message
    classes: tuple[str, ...] = ()  # idx files carry no class names
    mean: tuple[float, ...] = ()  # per channel over the official training split, in [0, 1] units
    std: tuple[float, ...] = ()


_IDX_SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_PLACE = "{train,t10k}-{images-idx3,labels-idx1}-ubyte (.gz or uncompressed)"

RELEASES: dict[str, Release] = {
    "cifar10": Release(
        title="CIFAR-10",
        folder="cifar-10-batches-py",
        files={
            "train": (*(f"data_batch_{i}" for i in range(1, 6)), "batches.meta"),
            "test": ("test_batch", "batches.meta"),
        },
        md5={
            "data_batch_1": "c99cafc152244af753f735de768cd75f",
            "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
            "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
            "data_batch_4": "634d18415352ddfa80567beed471001a",
            "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
            "test_batch": "40351d587109b95175f43aff81a1287e",
            "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
        },
        archive=True,
        urls=("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
        url_md5={"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"},
        place="the official cifar-10-python.tar.gz contents "
        "(cifar-10-batches-py/data_batch_1..5, test_batch, batches.meta) in {root}",
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
    ),
    "cifar100": Release(
        title="CIFAR-100",
        folder="cifar-100-python",
        files={"train": ("train", "meta"), "test": ("test", "meta")},
        md5={
            "train": "16019d7e3df5f24257cddd939b257f8d",
            "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
            "meta": "7973b15100ade9c7d40fb424638fde48",
        },
        archive=True,
        urls=("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",),
        url_md5={"cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85"},
        place="the official cifar-100-python.tar.gz contents (cifar-100-python/train, test, meta) in {root}",
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
    ),
    "mnist": Release(
        title="MNIST",
        folder="MNIST/raw",
        files=_IDX_SPLITS,
        md5={
            "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
            "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
            "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
            "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
        },
        archive=False,
        urls=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        url_md5={
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
        place=f"the official {_IDX_PLACE} files in {{root}}/MNIST/raw",
        classes=tuple(str(i) for i in range(10)),
        mean=(0.1307,),
        std=(0.3081,),
    ),
    "fashion-mnist": Release(
        title="Fashion-MNIST",
        folder="FashionMNIST/raw",
        files=_IDX_SPLITS,
        md5={
            "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
            "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
            "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
            "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
        },
        archive=False,
        urls=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        url_md5={
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
        place=f"the official {_IDX_PLACE} files in {{root}}/FashionMNIST/raw",
        classes=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
        mean=(0.2860,),
        std=(0.3530,),
    ),
}
_CIFAR_KEYS = {
    "cifar10": (b"labels", b"label_names"),
    "cifar100": (b"fine_labels", b"fine_label_names"),
}


def _locate(rel: Release, root: Path, split: str) -> list[Path]:
    """The split's files; an idx file may be stored uncompressed or as `<name>.gz`."""
    folder = root / rel.folder
    if not rel.archive:  # idx files: raw or gzipped
        return [
            folder / n if (folder / n).exists() else folder / f"{n}.gz" for n in rel.files[split]
        ]
    return [folder / n for n in rel.files[split]]


def _download(rel: Release, root: Path, split: str) -> None:
    """Fetch the archive (CIFAR) or the split's `.gz` files from the first mirror that works."""
    if rel.archive:
        ((name, md5),) = rel.url_md5.items()
        return fetch([(rel.urls[0], name, md5)], root, extract=True)
    errors = []
    for mirror in rel.urls:
        gz = [f"{n}.gz" for n in rel.files[split]]
        try:
            return fetch([(mirror + g, g, rel.url_md5[g]) for g in gz], root / rel.folder)
        except OSError as e:
            errors.append(str(e))
    raise OSError("; ".join(errors))


def ensure_files(rel: Release, root: Path, split: str, download: bool) -> list[Path]:
    """The split's file paths; downloads missing ones if `download`, else one-line FileNotFoundError."""
    why = "download=False"
    if download and not all(p.exists() for p in _locate(rel, root, split)):
        try:
            _download(rel, root, split)
        except OSError as e:
            why = str(e)
    paths = _locate(rel, root, split)
    missing = [p.name for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(
            f"{rel.title} not found (missing {', '.join(missing)} in {root / rel.folder}): "
            f"place {rel.place.replace('{root}', str(root))}, or download {rel.urls[0]} [{why}]"
        )
    return paths


def _cifar_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    d = load_pickle(path)
    if not isinstance(d, dict) or b"data" not in d or label_key not in d:
        keys = sorted(d, key=repr) if isinstance(d, dict) else type(d).__name__
        raise ValueError(f"{path}: expected a dict with keys b'data' and {label_key!r}, got {keys}")
    x, labels = d[b"data"], d[label_key]
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072:
        got = f"{x.dtype} {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
        raise ValueError(f"{path}: b'data' must be a uint8 array (N, 3072), got {got}")
    # a flat list of ints (or an array) before numpy reads it: nested lists are never expanded
    flat = isinstance(labels, np.ndarray) or (
        isinstance(labels, list) and all(isinstance(v, int) for v in labels)
    )
    y = np.asarray(labels) if flat else None
    if y is None or y.shape != (len(x),) or y.dtype.kind not in "iu":
        got = (
            f"{y.dtype} {y.shape}"
            if y is not None
            else f"a {type(labels).__name__}, not a list of ints"
        )
        raise ValueError(f"{path}: {label_key!r} must be {len(x)} integers, got {got}")
    return x, y


def _read_cifar(name: str, paths: list[Path]) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    label_key, names_key = _CIFAR_KEYS[name]
    meta = load_pickle(paths[-1])
    names = meta.get(names_key) if isinstance(meta, dict) else None
    if not isinstance(names, list) or not all(isinstance(n, (bytes, str)) for n in names):
        raise ValueError(f"{paths[-1]}: expected a dict with a list of class names {names_key!r}")
    classes = tuple(n.decode("latin1") if isinstance(n, bytes) else n for n in names)
    xs, ys = zip(*(_cifar_batch(p, label_key) for p in paths[:-1]), strict=True)
    x = np.concatenate(xs).reshape(-1, 3, 32, 32)  # each row holds the R, G, B planes, row-major
    return x, np.concatenate(ys), classes


def read_idx(path: Path, ndim: int) -> tuple[np.ndarray, bytes]:
    """Parse a uint8 idx file (magic 00 00 08 <ndim>, big-endian int32 dims); `.gz` is gunzipped.

    Returns (array, the uncompressed bytes). Raises ValueError naming the file if it is malformed.
    """
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise ValueError(f"{path}: not a valid gzip file ({e})") from e
    header = 4 + 4 * ndim
    if len(raw) < header or raw[:3] != b"\x00\x00\x08" or raw[3] != ndim:
        raise ValueError(
            f"{path}: bad idx header {raw[:4].hex()}, expected 000008{ndim:02x} (uint8, {ndim}-d)"
        )
    dims = tuple(int(d) for d in np.frombuffer(raw, ">i4", ndim, 4))
    if len(raw) != header + int(np.prod(dims)):
        raise ValueError(f"{path}: {len(raw) - header} data bytes, but its header says {dims}")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims), raw


def read_release(
    name: str, split: str, root: Path, download: bool
) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """Read one split of `RELEASES[name]`: images uint8 (N, C, H, W), labels int64 (N,), class names."""
    rel = RELEASES[name]
    paths = ensure_files(rel, root, split, download)
    if name in _CIFAR_KEYS:
        verify_md5(rel.title, {p: (rel.md5[p.name], None) for p in paths})
        x, y, classes = _read_cifar(name, paths)
    else:
        (x, x_raw), (y, y_raw) = read_idx(paths[0], 3), read_idx(paths[1], 1)
        md5 = [rel.md5[n] for n in rel.files[split]]
        verify_md5(
            rel.title, {paths[0]: (md5[0], lambda: x_raw), paths[1]: (md5[1], lambda: y_raw)}
        )
        x, classes = np.array(x[:, None]), rel.classes  # (N, 1, 28, 28), writable copy
        if len(x) != len(y):
            raise ValueError(f"{paths[0]} holds {len(x)} images but {paths[1]} {len(y)} labels")
    if len(y) and not 0 <= y.min() <= y.max() < len(classes):
        raise ValueError(
            f"{paths[0].parent}: labels must be in [0, {len(classes)}), got [{y.min()}, {y.max()}]"
        )
    return torch.from_numpy(x), torch.from_numpy(y.astype(np.int64)), classes
