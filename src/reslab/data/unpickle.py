"""A restricted unpickler for the CIFAR python batches.

The official CIFAR-10/100 files are Python-2 protocol-2 pickles of dicts holding a numpy uint8
array, lists of ints and byte strings. `pickle.load` on an untrusted file can run any code (a
`__reduce__` may name `os.system`), so `load_pickle` only resolves the few globals those files
need: numpy's array reconstruction (`_reconstruct`, `ndarray`, `dtype`) and, for copies re-saved
from Python 3 with protocol 2, `_codecs.encode(str, "latin1")` and `bytes()`. Each resolves to a
function that accepts only the arguments numpy and pickle write (`_reconstruct(ndarray, (0,), b'b')`,
a plain numeric dtype, ...), never to a class (NEWOBJ could call a class with any arguments).

Refusing code is not enough: a pickle of a few hundred bytes can describe an object exponentially
larger than itself, by storing an object once in the memo and referring to it again and again
(`a = (x, x); b = (a, a); ...`). Hashing such a tuple as a dict key, or turning such a list into an
array, never ends. So before anything is built, `scan` walks the opcodes and follows what each one
would build, counting every object at its full size, with shared parts counted each time they occur.
The work the file causes (every object put into another, every call's arguments) must stay within
`WORK_PER_BYTE` times the file's size plus a fixed allowance; objects nest at most `MAX_DEPTH` deep;
memo indices stay below the number of opcodes; and an object may not change once it is stored in
another (which is how a shared object would grow after it was counted). The official files need
about 3 units of work per byte.
"""

from __future__ import annotations

import codecs
import io
import pickle
import pickletools
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

import numpy as np

try:  # numpy >= 2
    from numpy._core import multiarray as _multiarray
except ImportError:  # numpy 1.x
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]

WORK_PER_BYTE = 8
WORK_ALLOWANCE = 1 << 16
MAX_DEPTH = 32


class Refused(pickle.UnpicklingError):
    """The file asks for something a CIFAR pickle never does."""


class _NdarrayName:
    """What `numpy.ndarray` in a file resolves to: a marker that `_reconstruct` accepts, which
    cannot itself be called (`ndarray(shape)` would allocate any size the file names)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "numpy.ndarray"


_NDARRAY = _NdarrayName()
_DTYPE = re.compile(r"[<>|=]?(b1|[iu][1248]|f[248]|c(8|16))")


def _reconstruct(subtype: object, shape: object, typecode: object) -> np.ndarray:
    # numpy pickles every array as _reconstruct(ndarray, (0,), b'b') and then BUILDs it from its
    # state, where numpy checks that shape x itemsize is the length of the data string.
    if subtype is not _NDARRAY or shape != (0,) or typecode != b"b":
        raise Refused("only numpy's _reconstruct(ndarray, (0,), b'b') is allowed")
    return cast(np.ndarray, _multiarray._reconstruct(np.ndarray, (0,), b"b"))


def _dtype(spec: object, align: object = False, copy: object = True) -> np.dtype:
    # a plain numeric dtype such as 'u1' or '<i8'; never object ('O') or structured dtypes. copy is
    # forced so that BUILD sets the state of a fresh dtype, not numpy's shared one.
    text = spec.decode("latin1") if isinstance(spec, bytes) else spec
    if not isinstance(text, str) or not _DTYPE.fullmatch(text) or not isinstance(align, int):
        raise Refused(f"only plain numeric dtypes ('u1', '<i8', ...) are allowed, got {spec!r}")
    return np.dtype(text, bool(align), True)


def _encode(obj: object, encoding: object) -> bytes:
    # Python 3 pickles bytes at protocol 2 as `_codecs.encode(text, "latin1")`; allow only that,
    # so no other codec (zlib, rot13, ...) can be reached through the file.
    if not isinstance(obj, str) or not isinstance(encoding, str):
        raise Refused("only _codecs.encode(str, 'latin1') is allowed")
    if codecs.lookup(encoding).name != "iso8859-1":
        raise Refused(f"only _codecs.encode(str, 'latin1') is allowed, got {encoding!r}")
    return obj.encode("latin1")


def _bytes(*args: object) -> bytes:
    # Python 3 pickles b"" at protocol 2 as `bytes()`; bytes(n) would allocate n bytes.
    if args:
        raise Refused("only bytes() with no arguments is allowed")
    return b""


# (module, name) as written in the file -> what it resolves to
ALLOWED_GLOBALS: dict[tuple[object, object], object] = {  # (module, name) -> the object
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _encode,
    ("__builtin__", "bytes"): _bytes,
    ("builtins", "bytes"): _bytes,
}


def _resolve(module: object, name: object) -> object:
    obj = ALLOWED_GLOBALS.get((module, name))
    if obj is None:
        raise Refused(f"global '{module}.{name}' is not allowed (only numpy array reconstruction)")
    return obj


class RestrictedUnpickler(pickle.Unpickler):
    """`pickle.Unpickler` that resolves only `ALLOWED_GLOBALS` and refuses everything else."""

    def find_class(self, module: str, name: str) -> object:
        return _resolve(module, name)

    def persistent_load(self, pid: object) -> object:
        raise Refused("persistent ids are not allowed")


class _Node:
    """What `scan` knows of one object: its size with shared parts counted each time they occur,
    how deep it nests, whether it is stored in another object yet, whether it is a global, and
    the text of a str (the names STACK_GLOBAL takes)."""

    __slots__ = ("size", "depth", "stored", "text", "is_global")

    def __init__(self, size: int = 1, depth: int = 0, text: object = None) -> None:
        self.size, self.depth, self.text = size, depth, text
        self.stored = self.is_global = False


# opcodes by what they do to the stack (all others, e.g. NEWOBJ, EXT1, PERSID, are refused)
_LEAVES = {
    "NONE", "NEWTRUE", "NEWFALSE", "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4",
    "FLOAT", "BINFLOAT", "STRING", "BINSTRING", "SHORT_BINSTRING", "BINBYTES", "SHORT_BINBYTES",
    "BINBYTES8", "BYTEARRAY8", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8",
    "EMPTY_LIST", "EMPTY_DICT", "EMPTY_TUPLE", "EMPTY_SET",
}  # fmt: skip
_NEW_FROM_MARK = {"TUPLE", "LIST", "DICT", "FROZENSET"}
_NEW_FROM_TOP = {"TUPLE1": 1, "TUPLE2": 2, "TUPLE3": 3, "REDUCE": 2}
_ADD_FROM_MARK = {"APPENDS", "SETITEMS", "ADDITEMS"}
_ADD_FROM_TOP = {"APPEND": 1, "SETITEM": 2, "BUILD": 1}
_PUT = {"PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"}
_GET = {"GET", "BINGET", "LONG_BINGET"}


def _leaf_size(arg: object) -> int:
    if isinstance(arg, (str, bytes, bytearray)):
        return 1 + len(arg)
    return 1 + (arg.bit_length() // 8 if isinstance(arg, int) else 0)


def scan(data: bytes) -> int:
    """Follow the opcodes of the pickle `data` without building anything; return the work it
    causes (see the module docstring), or raise `Refused` / ValueError saying what is wrong."""
    limit = WORK_PER_BYTE * len(data) + WORK_ALLOWANCE
    stack: list[_Node] = []
    marks: list[int] = []  # stack heights at each MARK
    memo: dict[int, _Node] = {}
    work = 0

    def pop(n: int) -> list[_Node]:
        if len(stack) - n < (marks[-1] if marks else 0):
            raise Refused("stack underflow")
        items = stack[len(stack) - n :]
        del stack[len(stack) - n :]
        return items

    def pop_mark() -> list[_Node]:
        if not marks:
            raise Refused("no MARK before a mark-terminated opcode")
        items = stack[marks[-1] :]
        del stack[marks.pop() :]
        return items

    def store(items: Iterable[_Node]) -> tuple[int, int]:
        """Mark `items` as stored in another object; return their total size and depth."""
        nonlocal work
        size = depth = 0
        for item in items:
            item.stored = True
            size += item.size
            depth = max(depth, item.depth + 1)
        work += size
        if work > limit:
            raise Refused(
                f"it describes objects larger than a {len(data):,}-byte file can hold: over "
                f"{limit:,} items and bytes, counting shared references each time they occur"
            )
        if depth > MAX_DEPTH:
            raise Refused(f"it nests objects more than {MAX_DEPTH} deep")
        return size, depth

    def add(items: list[_Node]) -> None:  # APPEND(S), SETITEM(S), ADDITEMS, BUILD
        (target,) = pop(1)
        if target.is_global:
            raise Refused("it changes a global; only objects it builds may be filled in")
        if target.stored:
            raise Refused("it changes an object after storing it in another one")
        size, depth = store(items)
        target.size, target.depth = target.size + size, max(target.depth, depth)
        stack.append(target)

    arg: Any  # str, int, bytes, ... as the opcode takes
    for count, (op, arg, _) in enumerate(pickletools.genops(data)):
        name = op.name
        if name in _LEAVES:
            stack.append(_Node(_leaf_size(arg), text=arg if isinstance(arg, str) else None))
        elif name in ("GLOBAL", "STACK_GLOBAL"):
            if name == "GLOBAL":
                module, _, attr = arg.partition(" ")
            else:
                module, attr = (n.text for n in pop(2))
            _resolve(module, attr)
            stack.append(_Node())
            stack[-1].is_global = True
        elif name in _NEW_FROM_MARK or name in _NEW_FROM_TOP:
            items = pop_mark() if name in _NEW_FROM_MARK else pop(_NEW_FROM_TOP[name])
            size, depth = store(items)
            stack.append(_Node(1 + size, depth))
        elif name in _ADD_FROM_MARK:
            add(pop_mark())
        elif name in _ADD_FROM_TOP:
            add(pop(_ADD_FROM_TOP[name]))
        elif name in _PUT:
            index = len(memo) if name == "MEMOIZE" else arg
            if not 0 <= index <= count or not stack or len(stack) == (marks[-1] if marks else 0):
                raise Refused(
                    f"memo index {index} at opcode {count} is past the objects built so far"
                )
            memo[index] = stack[-1]
        elif name in _GET:
            if arg not in memo:
                raise Refused(f"memo index {arg} was never stored")
            stack.append(memo[arg])
        elif name == "MARK":
            marks.append(len(stack))
        elif name == "POP" and marks and marks[-1] == len(stack):
            marks.pop()  # as CPython's unpickler: a MARK on top is popped instead of an item
        elif name == "POP":
            pop(1)
        elif name == "POP_MARK":
            pop_mark()
        elif name == "DUP":
            stack.append(pop(1)[0])
            stack.append(stack[-1])
        elif name not in ("PROTO", "FRAME", "STOP"):
            raise Refused(f"opcode {name} is not used by CIFAR files")
    return work


def load_pickle(path: str | Path) -> object:
    """Unpickle `path` with `RestrictedUnpickler` (byte-string keys, as in the official files),
    after `scan` has checked that it causes work in proportion to its size.

    Raises ValueError naming the file when it is not a pickle, is truncated, asks for a global
    outside `ALLOWED_GLOBALS`, or describes objects larger than the file can hold.
    """
    data = Path(path).read_bytes()
    try:
        scan(data)
        return RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Refused as e:
        raise ValueError(f"{path}: not a valid CIFAR pickle ({e})") from e
    except Exception as e:  # UnpicklingError, EOFError, ValueError, ... from a malformed file
        raise ValueError(f"{path}: not a valid CIFAR pickle ({type(e).__name__}: {e})") from e
