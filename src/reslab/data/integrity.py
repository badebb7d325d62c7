"""Where datasets live, how they are fetched, and how their files are checked against the official md5s.

- `data_root`: `root` argument, else `$RESLAB_DATA`, else `~/.cache/reslab`.
- `verify_md5`: compares files with the official checksums and warns ONCE per load, naming every file
  that differs (a modified copy still loads: a warning, not an error). Hashing CIFAR-10's 155 MB
  of batches takes ~0.17 s, more than reading them (loading the train split: 0.33 s hashed, 0.14 s
  cached), so each result is remembered for the process and in `.reslab-md5.json` next to the
  data (unless that folder is read-only), keyed by (file name, size, mtime_ns).
- `fetch`: download with torchvision's utilities; any failure becomes the dataset's one-line
  "place these files there" error.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import warnings
from collections.abc import Callable
from pathlib import Path

from reslab import atomic

CACHE_NAME = ".reslab-md5.json"
_memo: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> md5, for this process


def data_root(root: str | Path | None = None) -> Path:
    """The data folder: `root`, else `$RESLAB_DATA`, else `~/.cache/reslab`."""
    if root is None:
        root = os.environ.get("RESLAB_DATA") or "~/.cache/reslab"
    return Path(root).expanduser()


def _read_cache(folder: Path) -> dict:
    try:
        cache = json.loads((folder / CACHE_NAME).read_text())
        return cache if isinstance(cache, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(folder: Path, cache: dict) -> None:
    # best effort: a read-only data folder means hashing once per process. Check the mode bits
    # too, since root may write anywhere but should leave a folder marked read-only alone.
    if not os.access(folder, os.W_OK) or not folder.stat().st_mode & stat.S_IWUSR:
        return
    with contextlib.suppress(OSError):
        atomic.write_text(folder / CACHE_NAME, json.dumps(cache, indent=1, sort_keys=True))


def cached_md5(path: Path, content: Callable[[], bytes] | None = None) -> str:
    """md5 hex digest of `content()` (default: the file's bytes), cached by (path, size, mtime_ns).

    `content` lets a caller hash what it decoded (an idx file's gunzipped bytes) instead of the file.
    """
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key in _memo:
        return _memo[key]
    cache = _read_cache(path.parent)
    entry = cache.get(path.name)
    if isinstance(entry, dict) and (entry.get("size"), entry.get("mtime_ns")) == key[1:]:
        digest = str(entry.get("md5"))
    else:
        digest = hashlib.md5(content() if content else path.read_bytes()).hexdigest()
        cache[path.name] = {"size": key[1], "mtime_ns": key[2], "md5": digest}
        _write_cache(path.parent, cache)
    _memo[key] = digest
    return digest


def verify_md5(
    what: str, expected: dict[Path, tuple[str, Callable[[], bytes] | None]]
) -> list[str]:
    """Check each file against its official md5; warn once naming all that differ; return their names.

    `expected` maps path -> (official md5, optional content getter as in `cached_md5`).
    """
    bad = [p for p, (md5, content) in expected.items() if cached_md5(p, content) != md5]
    if bad:
        folder = bad[0].parent
        names = ", ".join(p.name for p in bad)
        warnings.warn(
            f"{what}: {len(bad)} file(s) in {folder} differ from the official release "
            f"(md5 mismatch: {names}); loading them anyway, results may not match published numbers",
            stacklevel=3,
        )
    return [p.name for p in bad]


def fetch(urls: list[tuple[str, str, str]], folder: Path, extract: bool = False) -> None:
    """Download each (url, filename, md5) into `folder` (extracting archives if `extract`).

    Raises OSError with a one-line reason when a download fails (offline, bad checksum, ...).
    """
    from torchvision.datasets.utils import download_and_extract_archive, download_url

    folder.mkdir(parents=True, exist_ok=True)
    for url, filename, md5 in urls:
        try:
            if extract:
                download_and_extract_archive(url, str(folder), filename=filename, md5=md5)
            else:
                download_url(url, str(folder), filename=filename, md5=md5)
        except Exception as e:  # URLError, RuntimeError (checksum), tarfile errors, ...
            raise OSError(
                f"download of {url} failed: {type(e).__name__}: {e}".replace("\n", " ")
            ) from e
