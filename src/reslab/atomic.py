"""Every file reslab writes goes through `replacing`: the new content is written in full beside its
destination (a hidden temporary folder in the same folder, so on the same disk), flushed to disk,
then renamed over the destination in one step. A reader never sees half a file, and a failure (a
full disk, a kill, a writer that raises) leaves the file that was there as it was, with one line
naming the path. The file gets the permissions a plain open() would give it.

`write_bytes` and `write_text` cover whole files; `append_text` adds to a log (metrics.jsonl), where
a failure names the file too.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


class WriteFailed(OSError):
    """A file could not be written (a full disk, no permission); the one already there is unchanged.
    `path`, `reason` ("No space left on device") and `errno` say which and why."""

    def __init__(self, message: str, path: Path, reason: str, code: int | None):
        super().__init__(message)
        self.path, self.reason, self.errno = path, reason, code


@contextlib.contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path with `path`'s name to write the new file to; when the block ends
    without error, the file (and any files written beside it, such as ONNX external data) replace
    what `path`'s folder held under those names. A folder may be written instead of a file (a
    checkpoint); it replaces a folder of the same name, which is removed just before. An I/O failure inside the block (OSError, or a
    library's error carrying one) becomes a one-line `WriteFailed` naming `path`; any other error
    passes unchanged. Either way the temporary files are removed and `path` keeps its old bytes."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        prefix = f".{path.name[:200]}."  # a long name stays a legal name with the suffixes
        folder = Path(tempfile.mkdtemp(dir=path.parent, prefix=prefix, suffix=".tmp"))
    except OSError as err:
        raise _failed(path, err) from None
    try:
        tmp = folder / path.name
        try:
            yield tmp
            written = sorted(folder.iterdir(), key=lambda f: f == tmp)  # the named file last
            for f in written:
                for inner in sorted(f.rglob("*")) if f.is_dir() else ():
                    _fsync(inner)
                _fsync(f)
            for f in written:
                if f.is_dir() and (path.parent / f.name).is_dir():
                    shutil.rmtree(path.parent / f.name)
                os.replace(f, path.parent / f.name)
            _fsync(path.parent)
        except Exception as err:
            if io_reason(err) is None:
                raise
            raise _failed(path, err) from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Replace `path` with `data` atomically; returns the path."""
    with replacing(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Replace `path` with `text` (UTF-8) atomically; returns the path."""
    return write_bytes(path, text.encode("utf-8"))


def append_text(path: str | os.PathLike, text: str) -> None:
    """Add `text` to the end of `path` (a log); a failure is one line naming the file."""
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(text)
    except OSError as err:
        raise _failed(Path(path), err, appending=True) from None


def io_reason(err: BaseException) -> str | None:
    """Why an I/O operation failed ("No space left on device"), or None when `err` is not an I/O
    failure. Reads OSError, and the I/O errors that safetensors reports in its own type
    ("Error while serializing: I/O error: No space left on device (os error 28)")."""
    if isinstance(err, OSError):
        return err.strerror or str(err) or type(err).__name__
    m = re.search(r"I/O error: (.*) \(os error (\d+)\)", str(err))
    return m[1] if m else None


def io_errno(err: BaseException) -> int | None:
    """The errno of an I/O failure `io_reason` reads (ENOSPC for a full disk), else None."""
    if isinstance(err, OSError):
        return err.errno
    m = re.search(r"\(os error (\d+)\)", str(err))
    return int(m[1]) if m else None


def _failed(path: Path, err: BaseException, appending: bool = False) -> WriteFailed:
    code = io_errno(err)
    if appending:
        left = "what it held before is kept"
    elif path.exists():
        left = "the file there before is unchanged"
    else:
        left = "nothing was written"
    reason = io_reason(err) or str(err)
    hint = "; free space and rerun" if code in (errno.ENOSPC, errno.EDQUOT) else ""
    return WriteFailed(f"could not write {path}: {reason} ({left}){hint}", path, reason, code)


def _fsync(path: Path) -> None:
    """Flush a file or folder to disk (a folder: so that the rename in it is durable too)."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if path.is_dir() else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
