"""Each format is read from tiny files written in the official layout; bad files fail clearly."""

import gzip
import os
import pickle
import warnings

import numpy as np
import pytest
import torch
from data_files import idx_bytes, write_cifar, write_mnist
from PIL import Image

from reslab.data import DATASETS, ImageData, integrity, load_dataset, official, train_val_split


def load_quiet(*args, **kwargs) -> ImageData:
    """Load tiny test files, whose md5s never match the official ones."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "CIFAR|MNIST|Fashion")
        return load_dataset(*args, **kwargs)


@pytest.mark.parametrize("py2", [False, True], ids=["py3-protocol-2", "py2-opcodes"])
def test_cifar10_reads_official_layout(tmp_path, py2):
    want = write_cifar(tmp_path, "cifar10", n=4, py2=py2)
    for split in ("train", "test"):
        d = load_quiet("cifar10", split, root=tmp_path, download=False)
        x, y = want[split]
        assert d.images.dtype == torch.uint8 and d.images.shape == (len(x), 3, 32, 32)
        assert torch.equal(d.images, torch.from_numpy(x)) and d.labels.tolist() == y.tolist()
        assert d.classes[:3] == ("airplane", "automobile", "bird") and len(d.classes) == 10
        assert d.mean == (0.4914, 0.4822, 0.4465) and d.name == "cifar10"
    assert len(load_quiet("cifar10", "train", root=tmp_path, download=False)) == 5 * 4


def test_cifar_pixel_layout_matches_torchvision(tmp_path):
    """Row = R, G, B planes of 32x32: compare with torchvision's own CIFAR10 reader."""
    from torchvision.datasets import CIFAR10

    class AnyCopy(CIFAR10):  # torchvision refuses files whose md5 differs from the official ones
        def _check_integrity(self) -> bool:
            return True

    write_cifar(tmp_path, "cifar10", n=3, py2=True)  # torchvision reads Python 2 str keys
    ours = load_quiet("cifar10", "test", root=tmp_path, download=False)
    tv = AnyCopy(str(tmp_path), train=False, download=False)
    assert torch.equal(ours.images, torch.from_numpy(tv.data).permute(0, 3, 1, 2))
    assert ours.labels.tolist() == tv.targets and list(ours.classes) == tv.classes


def test_cifar100_fine_labels(tmp_path):
    want = write_cifar(tmp_path, "cifar100", n=5)
    d = load_quiet("cifar100", "train", root=tmp_path, download=False)
    assert torch.equal(d.images, torch.from_numpy(want["train"][0]))
    assert d.labels.tolist() == want["train"][1].tolist()
    assert len(d.classes) == 100 and d.classes[7] == "class7"


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_idx_reads_official_layout(tmp_path, gz, name, folder):
    want = write_mnist(tmp_path, folder, n=7, gz=gz)
    for split in ("train", "test"):
        d = load_quiet(name, split, root=tmp_path, download=False)
        assert d.images.shape == (7, 1, 28, 28) and d.images.dtype == torch.uint8
        assert torch.equal(d.images, torch.from_numpy(want[split][0]))
        assert d.labels.tolist() == want[split][1].tolist()
    assert d.classes == (tuple("0123456789") if name == "mnist" else d.classes)
    assert len(d.classes) == 10 and len(d.mean) == 1


def test_idx_matches_torchvision_reader(tmp_path):
    from torchvision.datasets.mnist import read_image_file, read_label_file

    write_mnist(tmp_path, gz=False)
    d = load_quiet("mnist", "train", root=tmp_path, download=False)
    raw = tmp_path / "MNIST" / "raw"
    assert torch.equal(d.images[:, 0], read_image_file(str(raw / "train-images-idx3-ubyte")))
    assert torch.equal(d.labels, read_label_file(str(raw / "train-labels-idx1-ubyte")))


def test_data_root_env(tmp_path, monkeypatch):
    write_mnist(tmp_path)
    monkeypatch.setenv("RESLAB_DATA", str(tmp_path))
    assert len(load_quiet("mnist", "test", download=False)) == 7
    monkeypatch.delenv("RESLAB_DATA")
    assert integrity.data_root() == integrity.Path("~/.cache/reslab").expanduser()


# ---------------------------------------------------------------- missing files and downloads


def test_missing_offline_says_what_to_place_where(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        load_dataset("cifar10", root=tmp_path, download=False)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("CIFAR-10 not found")
    assert f"cifar-10-batches-py/data_batch_1..5, test_batch, batches.meta) in {tmp_path}" in msg
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in msg
    with pytest.raises(FileNotFoundError, match=rf"in {tmp_path}/MNIST/raw, or download https://"):
        load_dataset("mnist", "test", root=tmp_path, download=False)


def test_failed_download_gives_the_same_one_line_error(tmp_path, monkeypatch):
    from torchvision.datasets import utils

    def offline(url, *args, **kwargs):
        raise OSError(f"<urlopen error [Errno -3] Temporary failure in name resolution> {url}")

    monkeypatch.setattr(utils, "download_url", offline)
    monkeypatch.setattr(utils, "download_and_extract_archive", offline)
    with pytest.raises(FileNotFoundError) as e:
        load_dataset("cifar100", root=tmp_path, download=True)
    assert "\n" not in str(e.value) and "cifar-100-python/train, test, meta" in str(e.value)
    assert "download of https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz failed" in str(
        e.value
    )
    with pytest.raises(FileNotFoundError, match="fashion-mnist.s3-website.*failed") as e:
        load_dataset("fashion-mnist", root=tmp_path, download=True)
    assert "\n" not in str(e.value)


def test_partial_copy_names_missing_file(tmp_path):
    write_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing data_batch_3 in"):
        load_dataset("cifar10", root=tmp_path, download=False)
    assert len(load_quiet("cifar10", "test", root=tmp_path, download=False)) == 6


# ---------------------------------------------------------------- checksums


def test_md5_mismatch_warns_once_naming_files(tmp_path):
    write_cifar(tmp_path, py2=True)  # batches.meta is the official file, the batches are not
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        load_dataset("cifar10", "train", root=tmp_path, download=False)
    assert len(w) == 1
    msg = str(w[0].message)
    assert (
        "\n" not in msg
        and "data_batch_1, data_batch_2, data_batch_3, data_batch_4, data_batch_5" in msg
    )
    assert "batches.meta" not in msg and "test_batch" not in msg


def test_matching_md5_is_silent(tmp_path, monkeypatch):
    write_mnist(tmp_path, gz=True)
    raw = tmp_path / "MNIST" / "raw"
    # the official md5 is of the uncompressed file: make the official table match these files
    md5 = {
        f.stem: integrity.hashlib.md5(gzip.decompress(f.read_bytes())).hexdigest()
        for f in raw.iterdir()
    }
    rel = official.RELEASES["mnist"]
    monkeypatch.setitem(
        official.RELEASES, "mnist", official.Release(**{**rel.__dict__, "md5": md5})
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_dataset("mnist", "train", root=tmp_path, download=False)


def test_md5_cached_next_to_data(tmp_path, monkeypatch):
    write_cifar(tmp_path)
    load_quiet("cifar10", "test", root=tmp_path, download=False)
    cache = integrity.json.loads(
        (tmp_path / "cifar-10-batches-py" / integrity.CACHE_NAME).read_text()
    )
    assert set(cache) == {"test_batch", "batches.meta"}
    monkeypatch.setattr(integrity, "_memo", {})  # a new process: only the json remains

    def no_hashing(*a):
        raise AssertionError("hashed again")

    monkeypatch.setattr(integrity.hashlib, "md5", no_hashing)
    load_quiet("cifar10", "test", root=tmp_path, download=False)
    os.utime(tmp_path / "cifar-10-batches-py" / "test_batch", ns=(1, 1))  # touched: hash again
    with pytest.raises(AssertionError, match="hashed again"):
        load_quiet("cifar10", "test", root=tmp_path, download=False)


# ---------------------------------------------------------------- malformed files


def _rewrite_batch(tmp_path, name, obj):
    (tmp_path / "cifar-10-batches-py" / name).write_bytes(pickle.dumps(obj, protocol=2))


@pytest.mark.parametrize(
    "obj,match",
    [
        ({b"labels": [0]}, r"test_batch: expected a dict with keys b'data' and b'labels'"),
        (
            {b"data": np.zeros((2, 1024), np.uint8), b"labels": [0, 1]},
            r"test_batch: b'data' must be a uint8 array \(N, 3072\)",
        ),
        (
            {b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]},
            r"test_batch: b'data' must be a uint8",
        ),
        (
            {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]},
            r"test_batch: b'labels' must be 2 integers",
        ),
        ({b"data": np.zeros((1, 3072), np.uint8), b"labels": [10]}, r"labels must be in \[0, 10\)"),
        ([1, 2, 3], r"test_batch: expected a dict"),
    ],
)
def test_malformed_cifar_named(tmp_path, obj, match):
    write_cifar(tmp_path)
    _rewrite_batch(tmp_path, "test_batch", obj)
    with pytest.raises(ValueError, match=match):
        load_quiet("cifar10", "test", root=tmp_path, download=False)


def test_truncated_cifar_named(tmp_path):
    write_cifar(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ValueError, match=r"data_batch_2: not a valid CIFAR pickle"):
        load_quiet("cifar10", "train", root=tmp_path, download=False)


@pytest.mark.parametrize(
    "mutate,match",
    [
        (
            lambda b: b[:-10],
            r"t10k-images-idx3-ubyte: 6262 data bytes, but its header says \(8, 28, 28\)",
        ),
        (lambda b: b"\x00\x00\x08\x01" + b[4:], r"bad idx header 00000801, expected 00000803"),
        (lambda b: b"\x00\x00\x0d\x03" + b[4:], r"bad idx header 00000d03"),  # float32 type code
        (lambda b: b[:6], r"bad idx header"),
    ],
)
def test_malformed_idx_named(tmp_path, mutate, match):
    write_mnist(tmp_path, n=8, gz=False)
    path = tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    path.write_bytes(mutate(path.read_bytes()))
    with pytest.raises(ValueError, match=match):
        load_quiet("mnist", "test", root=tmp_path, download=False)


def test_bad_gzip_and_count_mismatch_named(tmp_path):
    write_mnist(tmp_path, n=8, gz=True)
    raw = tmp_path / "MNIST" / "raw"
    (raw / "train-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(idx_bytes(np.zeros(5, np.uint8)))[:-20]
    )
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte.gz: not a valid gzip file"):
        load_quiet("mnist", "train", root=tmp_path, download=False)
    (raw / "train-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(idx_bytes(np.zeros(5, np.uint8)))
    )
    with pytest.raises(
        ValueError, match=r"holds 8 images but .*train-labels-idx1-ubyte.gz 5 labels"
    ):
        load_quiet("mnist", "train", root=tmp_path, download=False)


# ---------------------------------------------------------------- digits and image folders


def test_digits_fixed_stratified_split():
    from sklearn.datasets import load_digits

    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert (len(train), len(test)) == DATASETS["digits"].sizes and train.images.shape[1:] == (
        1,
        8,
        8,
    )
    x, y = load_digits(return_X_y=True)
    # every original image lands in exactly one split, scaled 16 -> 255
    pool = {
        (tuple(np.rint(xi * 255 / 16).astype(np.uint8)), int(yi))
        for xi, yi in zip(x, y, strict=True)
    }
    ours = [
        (tuple(im.flatten().tolist()), int(lb))
        for d in (train, test)
        for im, lb in zip(d.images, d.labels, strict=True)
    ]
    assert set(ours) == pool and len(ours) == len(x)
    assert train.images.max() == 255 and test.images.dtype == torch.uint8
    counts = torch.bincount(test.labels, minlength=10)
    assert counts.tolist() == [int(np.sum(y == c)) // 5 for c in range(10)]  # floor(20%) per class
    assert torch.equal(load_dataset("digits", "test").images, test.images)  # fixed
    pixels = train.images.float() / 255
    assert train.mean == test.mean == pytest.approx((pixels.mean().item(),))


def _write_folder(root, sizes):
    for split, classes in sizes.items():
        for c, sz in classes.items():
            (root / split / c).mkdir(parents=True)
            for i, (h, w) in enumerate(sz):
                arr = np.full((h, w, 3), (i * 40, len(c) * 10, 200), np.uint8)
                Image.fromarray(arr).save(root / split / c / f"{i}.png")


def test_imagefolder(tmp_path):
    _write_folder(
        tmp_path, {"train": {"cat": [(6, 5)] * 2, "dog": [(6, 5)]}, "val": {"dog": [(6, 5)]}}
    )
    train = load_dataset(f"imagefolder:{tmp_path}", "train")
    assert train.images.shape == (3, 3, 6, 5) and train.classes == ("cat", "dog")
    assert train.labels.tolist() == [0, 0, 1] and train.images[1, :, 0, 0].tolist() == [40, 30, 200]
    test = load_dataset(str(tmp_path), "test")  # a bare folder path works too; val/ serves as test
    assert test.labels.tolist() == [1] and test.mean == train.mean  # dog keeps index 1
    pixels = train.images.float().div(255).transpose(0, 1).flatten(1)
    assert train.mean == pytest.approx(tuple(pixels.mean(1).tolist()))


def test_imagefolder_sizes(tmp_path):
    _write_folder(tmp_path, {"train": {"a": [(6, 5), (8, 8)]}})
    with pytest.raises(ValueError, match=r"is 6x5 but .*1.png is 8x8; give a size"):
        load_dataset(f"imagefolder:{tmp_path}")
    assert load_dataset(f"imagefolder:{tmp_path}@4").images.shape == (2, 3, 4, 4)
    assert load_dataset(f"imagefolder:{tmp_path}@4x7").images.shape == (2, 3, 4, 7)
    with pytest.raises(FileNotFoundError, match=r"expected .*/train/<class>/<image> and"):
        load_dataset(f"imagefolder:{tmp_path}@4", "test")


def test_unknown_name_and_split():
    with pytest.raises(ValueError, match=r"unknown dataset 'cifar11'; choose from \['cifar10'"):
        load_dataset("cifar11")
    with pytest.raises(ValueError, match=r"split must be one of \('train', 'test'\), got 'val'"):
        load_dataset("digits", "val")


# ---------------------------------------------------------------- train/val split


def _toy(n=1000, classes=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    images = torch.arange(n, dtype=torch.int64).view(n, 1, 1, 1).remainder(256).to(torch.uint8)
    return ImageData(
        images.expand(n, 3, 2, 2).contiguous(),
        labels,
        tuple(map(str, range(classes))),
        (0.5,) * 3,
        (0.25,) * 3,
        "toy",
    )


def test_train_val_split_is_seeded():
    data = _toy()
    train, val = train_val_split(data, 100, seed=3)
    assert (len(train), len(val)) == (900, 100)
    assert (
        train.name == val.name == "toy"
        and train.mean == data.mean
        and train.classes == data.classes
    )
    again = train_val_split(data, 100, seed=3)[1]
    assert torch.equal(again.images, val.images) and torch.equal(again.labels, val.labels)
    assert not torch.equal(train_val_split(data, 100, seed=4)[1].images, val.images)


def test_train_val_split_indices_and_stratification():
    data = _toy(n=1000, classes=4)
    # tag each image by its index so the partition can be checked exactly
    tagged = ImageData(
        torch.stack([torch.arange(1000) // 256, torch.arange(1000) % 256], 1).view(-1, 2, 1, 1).to(torch.uint8),
        data.labels, data.classes, (0.5, 0.5), (0.25, 0.25), "t",
    )  # fmt: skip
    idx = lambda d: (d.images[:, 0, 0, 0].long() * 256 + d.images[:, 1, 0, 0].long()).tolist()  # noqa: E731
    for stratify in (False, True):
        train, val = train_val_split(tagged, 150, seed=0, stratify=stratify)
        assert sorted(idx(train) + idx(val)) == list(range(1000))
        assert idx(train) == sorted(idx(train)) and idx(val) == sorted(
            idx(val)
        )  # original order kept
        assert torch.equal(val.labels, data.labels[idx(val)])
    counts = torch.bincount(data.labels, minlength=4)
    got = torch.bincount(val.labels, minlength=4)
    assert got.sum() == 150 and ((got - counts * 0.15).abs() < 1).all()


def test_train_val_split_cifar_45k_5k_stratified():
    data = ImageData(
        torch.zeros(50000, 1, 1, 1, dtype=torch.uint8),
        torch.arange(50000) % 10,
        tuple("0123456789"),
        (0.5,),
        (0.2,),
        "c",
    )
    train, val = train_val_split(data, 5000, seed=0, stratify=True)
    assert len(train) == 45000 and torch.bincount(val.labels).tolist() == [500] * 10


def test_bad_split_sizes_and_imagedata():
    with pytest.raises(ValueError, match=r"val_size must be in \[1, 999\]"):
        train_val_split(_toy(), 1000, seed=0)
    with pytest.raises(ValueError, match="images must be uint8"):
        ImageData(
            torch.zeros(2, 3, 4, 4),
            torch.zeros(2, dtype=torch.long),
            ("a",),
            (0.5,) * 3,
            (0.2,) * 3,
            "x",
        )
    with pytest.raises(ValueError, match="mean/std need 3 values"):
        ImageData(
            torch.zeros(2, 3, 4, 4, dtype=torch.uint8),
            torch.zeros(2, dtype=torch.long),
            ("a",),
            (0.5,),
            (0.2,),
            "x",
        )


def test_md5_cache_skips_read_only_folder(tmp_path):
    write_cifar(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    folder.chmod(0o555)  # even root leaves a folder marked read-only alone
    try:
        load_quiet("cifar10", "test", root=tmp_path, download=False)
        assert not (folder / integrity.CACHE_NAME).exists()
    finally:
        folder.chmod(0o755)
