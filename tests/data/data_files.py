"""Writers for tiny dataset files in the exact official on-disk formats (no real data needed).

- CIFAR: protocol-2 pickles of dicts with byte-string keys, as Python 3's `pickle.dump(protocol=2)`
  writes them, or (`py2=True`) opcode for opcode as the official Python 2 files are written
  (SHORT_BINSTRING keys, `numpy.core.multiarray._reconstruct`), via `py2_pickle`.
- MNIST/Fashion-MNIST: idx files with the real magic numbers (2051 images, 2049 labels), raw or gzip.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np

# batches.meta of the official cifar-10-python.tar.gz, byte for byte (md5 5ff9c542aee3614f3951f8cda6e48888)
CIFAR10_META = bytes.fromhex(
    "80027d71012855136e756d5f63617365735f7065725f626174636871024d1027550b6c6162656c5f6e616d6573"
    "71035d7104285508616972706c616e657105550a6175746f6d6f62696c65710655046269726471075503636174"
    "710855046465657271095503646f67710a550466726f67710b5505686f727365710c550473686970710d550574"
    "7275636b710e6555076e756d5f766973710f4d000c752e"
)


def _int(o: int) -> bytes:
    if 0 <= o < 256:
        return b"K" + struct.pack("<B", o)
    if 0 <= o < 65536:
        return b"M" + struct.pack("<H", o)
    return b"J" + struct.pack("<i", o)


def _str(o: bytes) -> bytes:  # a Python 2 str
    return (
        b"U" + struct.pack("<B", len(o)) if len(o) < 256 else b"T" + struct.pack("<I", len(o))
    ) + o


def py2_pickle(obj: object) -> bytes:
    """Pickle dicts/lists/ints/bytes/uint8 arrays opcode for opcode as Python 2 wrote CIFAR."""

    def put(o: object) -> bytes:
        if isinstance(o, dict):
            return b"}(" + b"".join(put(k) + put(v) for k, v in o.items()) + b"u"
        if isinstance(o, list):
            return b"](" + b"".join(put(v) for v in o) + b"e"
        if isinstance(o, int):
            return _int(o)
        if isinstance(o, bytes):
            return _str(o)
        if isinstance(o, np.ndarray) and o.dtype == np.uint8:
            # _reconstruct(ndarray, (0,), 'b'), then BUILD (1, shape, dtype('u1'), False, data)
            dtype = b"cnumpy\ndtype\n" + _str(b"u1") + b"K\x00K\x01\x87R"
            dtype += b"(K\x03" + _str(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
            shape = b"(" + b"".join(_int(d) for d in o.shape) + b"t"
            state = b"(K\x01" + shape + dtype + b"\x89" + _str(o.tobytes()) + b"t"
            head = b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + _str(b"b")
            return head + b"\x87R" + state + b"b"
        raise TypeError(f"py2_pickle cannot write {type(o).__name__}")

    return b"\x80\x02" + put(obj) + b"."


def write_cifar(
    root: Path, name: str = "cifar10", n: int = 6, seed: int = 0, py2: bool = False
) -> dict:
    """Write a tiny CIFAR-10/100 in the official layout under `root`; return what it holds.

    Each data file holds `n` random images; returns {"train"/"test": (images (N, 3, 32, 32), labels)}.
    """
    rng = np.random.default_rng(seed)
    dump = py2_pickle if py2 else (lambda o: pickle.dumps(o, protocol=2))
    if name == "cifar10":
        folder, batches, meta = (
            root / "cifar-10-batches-py",
            [f"data_batch_{i}" for i in range(1, 6)],
            "batches.meta",
        )
        label_key, k = b"labels", 10
    else:
        folder, batches, meta = root / "cifar-100-python", ["train"], "meta"
        label_key, k = b"fine_labels", 100
    folder.mkdir(parents=True)
    out = {}
    for split, files in (
        ("train", batches),
        ("test", ["test_batch" if name == "cifar10" else "test"]),
    ):
        xs, ys = [], []
        for i, f in enumerate(files):
            x = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
            y = [int(v) for v in rng.integers(0, k, n)]
            d = {
                b"batch_label": f"batch {i}".encode(),
                label_key: y,
                b"data": x,
                b"filenames": [b"%d.png" % j for j in range(n)],
            }
            if name == "cifar100":
                d[b"coarse_labels"] = [v // 5 for v in y]
            (folder / f).write_bytes(dump(d))
            xs.append(x.reshape(n, 3, 32, 32))
            ys.append(y)
        out[split] = (np.concatenate(xs), np.concatenate(ys))
    if name == "cifar10":
        (folder / meta).write_bytes(
            CIFAR10_META if py2 else dump(pickle.loads(CIFAR10_META, encoding="bytes"))
        )
    else:
        names = {
            b"fine_label_names": [b"class%d" % i for i in range(100)],
            b"coarse_label_names": [b"super%d" % i for i in range(20)],
        }
        (folder / meta).write_bytes(dump(names))
    return out


def idx_bytes(array: np.ndarray) -> bytes:
    """An idx file: magic 0x0000 08 <ndim> (2051 for images, 2049 for labels), big-endian dims, data."""
    head = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return head + array.astype(np.uint8).tobytes()


def write_mnist(
    root: Path, folder: str = "MNIST", n: int = 7, gz: bool = True, seed: int = 0
) -> dict:
    """Write tiny idx files under `root/<folder>/raw` (gzip-compressed if `gz`); return their contents."""
    rng = np.random.default_rng(seed)
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    out = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, n).astype(np.uint8)
        for stem, arr in ((f"{prefix}-images-idx3-ubyte", x), (f"{prefix}-labels-idx1-ubyte", y)):
            data = idx_bytes(arr)
            if gz:
                (raw / f"{stem}.gz").write_bytes(gzip.compress(data))
            else:
                (raw / stem).write_bytes(data)
        out[split] = (x[:, None], y.astype(np.int64))
    return out
