"""Telling a weights file's format by its first bytes, and saying in one line why one cannot be read:
a damaged safetensors file, or a torch.save/pickle file that torch.load(weights_only=True) refused,
whose pickles pickletools (which runs nothing) reads for the call they ask for.
`reslab.models.weights` reads the files; this module only looks at them when that fails.
"""

from __future__ import annotations

import _compat_pickle
import contextlib
import io
import pickle
import pickletools
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import safetensors
import torch


def is_safetensors(path: Path) -> bool:
    """safetensors: 8-byte little-endian header length (at most 100 MB), then a JSON header. The
    file may be shorter than the header says: a truncated one is told so by safetensors."""
    with open(path, "rb") as f:
        head = f.read(9)
    size = int.from_bytes(head[:8], "little")
    return len(head) == 9 and head[8:9] == b"{" and size <= 100_000_000


@contextlib.contextmanager
def safetensors_errors(path: Path) -> Iterator[None]:
    """SafetensorError (truncated, or a header that is no safetensors header) as one ValueError."""
    try:
        yield
    except safetensors.SafetensorError as e:
        reason = str(e).removeprefix("Error while deserializing header: ")
        raise ValueError(
            f"{path} is not a readable safetensors file (truncated or damaged: {reason})"
        ) from None


# Globals a pickled state dict holds (_codecs.encode: bytes below protocol 3); any other is a call
# that the file asks for.
_TENSOR_GLOBALS = ("torch.", "collections.OrderedDict", "_codecs.encode")
_ZIP = b"PK\x03\x04"  # torch.save since PyTorch 1.6: a zip archive holding <name>/data.pkl
# torch.save files of the legacy format (before 1.6, or _use_new_zipfile_serialization=False) begin so
_LEGACY = pickle.dumps(torch.serialization.MAGIC_NUMBER, protocol=2)


def refused(path: Path, err: Exception) -> ValueError:
    """The one line for a pickle-based file that torch.load(weights_only=True) could not read."""
    names = _pickle_globals(path)
    if names is None:  # a pickle that breaks off or is garbled
        with open(path, "rb") as f:
            head = f.read(4)
        if head == _ZIP or head[:1] == pickle.PROTO:
            return ValueError(f"{path} is a truncated or damaged torch.save file")
        return ValueError(f"{path} is not a safetensors or torch.save file")
    # the first call not to torch, else the one torch names: "Unsupported global: GLOBAL print"
    # (builtins. left out) or "Trying to load unsupported GLOBAL posix.system whose module ..."
    named = re.search(r"GLOBAL ([\w.]+)", str(err))
    calls = [n for n in names if not n.startswith(_TENSOR_GLOBALS)] + ([named[1]] if named else [])
    if calls or "global" in str(err).lower():
        call = ""
        if calls:
            call = f" (it calls {calls[0] if '.' in calls[0] else 'builtins.' + calls[0]})"
        return ValueError(
            f"{path} asks to run code when loaded{call}; reslab loads weights only and will not run it"
        )
    if isinstance(err, pickle.UnpicklingError):
        found = re.search(r"WeightsUnpickler error:\s*([^\n]+)", str(err))
        reason = (found[1] if found else str(err).splitlines()[0]).split(". Please")[0]
        return ValueError(f"{path} holds a pickle that reslab cannot read as weights ({reason})")
    return ValueError(f"{path} is a truncated or damaged torch.save file")


def _pickle_globals(path: Path) -> list[str] | None:
    """The globals (module.name) that the pickles of a torch.save or pickle file import, read by
    pickletools, which runs nothing; None when a pickle breaks off or is garbled. A zip archive holds
    one pickle, a legacy torch.save file five before its raw tensor data, a pickle file any number."""
    try:
        with open(path, "rb") as f:
            if f.read(4) == _ZIP:
                with zipfile.ZipFile(f) as z:
                    data = next(z.read(n) for n in z.namelist() if n.endswith("/data.pkl"))
                return _imports(io.BytesIO(data), pickles=1)
            f.seek(0)
            legacy = f.read(len(_LEGACY))[2:] == _LEGACY[2:]  # whatever the protocol byte
            f.seek(0)
            return _imports(f, pickles=5 if legacy else None)
    except (ValueError, OSError, EOFError, StopIteration, zipfile.BadZipFile):
        return None


_NO_PUSH = {"PROTO", "FRAME", "MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT", "STOP"}


def _imports(f: IO[bytes], pickles: int | None) -> list[str]:
    """module.name of each global in the next `pickles` pickles of `f` (None: all up to its end).
    STACK_GLOBAL takes the two strings pushed last (directly or from the memo)."""
    names: list[str] = []
    done = 0
    # peek (b"" at the end of the file): a file opened "rb", the one caller with pickles=None
    while (done < pickles) if pickles else f.peek(1):  # type: ignore[attr-defined]
        pushed: list[str | None] = []
        memo: dict[int, str | None] = {}
        arg: Any  # str or int, as the opcode takes
        for op, arg, _ in pickletools.genops(f):
            value = None
            if op.name in ("GLOBAL", "INST"):  # arg "module name", maybe a Python 2 module name
                module, name = arg.split(" ", 1)
                names.append(f"{_compat_pickle.IMPORT_MAPPING.get(module, module)}.{name}")
            elif op.name == "STACK_GLOBAL":
                names.append(".".join(str(s) for s in pushed[-2:]))
            elif op.name == "MEMOIZE":
                memo[len(memo)] = pushed[-1] if pushed else None
            elif op.name.endswith("PUT"):
                memo[arg] = pushed[-1] if pushed else None
            elif op.name.endswith("GET"):
                value = memo.get(arg)
            elif isinstance(arg, str):
                value = arg
            if op.name not in _NO_PUSH:
                pushed.append(value)
        done += 1
    return names
