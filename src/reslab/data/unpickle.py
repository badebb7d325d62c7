"""A restricted unpickler for the CIFAR python batches.

The official CIFAR-10/100 files are Python-2 protocol-2 pickles of dicts holding a numpy uint8
array, lists of ints and byte strings. `pickle.load` on an untrusted file can run any code (a
`__reduce__` may name `os.system`), so `load_pickle` only resolves the few globals those files
need: numpy's array reconstruction (`_reconstruct`, `ndarray`, `dtype`) and, for copies re-saved
from Python 3 with protocol 2, `_codecs.encode(str, "latin1")` and `bytes`. Anything else raises
`pickle.UnpicklingError` before it is called.
"""

from __future__ import annotations

import codecs
import io
import pickle
from pathlib import Path

import numpy as np

try:  # numpy >= 2
    from numpy._core import multiarray as _multiarray
except ImportError:  # numpy 1.x
    from numpy.core import multiarray as _multiarray


def _latin1_encode(obj: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    # Python 3 pickles bytes at protocol 2 as `_codecs.encode(text, "latin1")`; allow only that,
    # so no other codec (zlib, rot13, ...) can be reached through the file.
    if codecs.lookup(encoding).name != "iso8859-1" or not isinstance(obj, str):
        raise pickle.UnpicklingError(
            f"only _codecs.encode(str, 'latin1') is allowed, got {encoding!r}"
        )
    return obj.encode("latin1", errors)


# (module, name) as written in the file -> the object it may resolve to
ALLOWED_GLOBALS: dict[tuple[str, str], object] = {
    ("numpy.core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
    ("__builtin__", "bytes"): bytes,
    ("builtins", "bytes"): bytes,
}


class RestrictedUnpickler(pickle.Unpickler):
    """`pickle.Unpickler` that resolves only `ALLOWED_GLOBALS` and refuses everything else."""

    def find_class(self, module: str, name: str) -> object:
        obj = ALLOWED_GLOBALS.get((module, name))
        if obj is None:
            raise pickle.UnpicklingError(
                f"global '{module}.{name}' is not allowed (only numpy array reconstruction)"
            )
        return obj

    def persistent_load(self, pid: object) -> object:
        raise pickle.UnpicklingError("persistent ids are not allowed")


def load_pickle(path: str | Path) -> object:
    """Unpickle `path` with `RestrictedUnpickler` (byte-string keys, as in the official files).

    Raises ValueError naming the file when it is not a pickle, is truncated, or asks for a
    global outside `ALLOWED_GLOBALS`.
    """
    data = Path(path).read_bytes()
    try:
        return RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as e:  # UnpicklingError, EOFError, ValueError, ... from a malformed file
        raise ValueError(f"{path}: not a valid CIFAR pickle ({type(e).__name__}: {e})") from e
