"""Which malloc this process runs on, and running reslab on tcmalloc or jemalloc instead (Linux).

On the CPU, PyTorch takes every tensor from the C library's malloc. Under activation checkpointing the
backward pass frees and allocates large activations over and over, while small long-lived objects
(gradients, autograd nodes, saved statistics) land in the holes they leave. glibc's malloc then cannot
fit the next large tensor in a hole and grows its heap: one training step of ResNet-1202 (batch 128)
keeps about 1.7 GiB alive but about 5 GiB resident. Forcing large tensors onto mmap
(MALLOC_MMAP_THRESHOLD_=65536) returns the memory, but every new tensor then page-faults from
scratch (about 3x slower). tcmalloc keeps small and large objects in separate spans and reuses freed
pages: the same step peaks at about 1.7 GiB, at glibc's speed or better (benchmarks/bench_memory.py).

A library can only replace malloc before the process starts, so `RESLAB_MALLOC=tcmalloc` (or
`jemalloc`) makes the `reslab` command re-execute itself once with the library in LD_PRELOAD, as
PyTorch's own CPU launcher (`python -m torch.backends.xeon.run_cpu`) does.
"""

from __future__ import annotations

import ctypes.util
import glob
import os
import sys
from pathlib import Path

ENV = "RESLAB_MALLOC"
LIBRARIES = {  # name -> library names (lib<name>.so*), most specific first
    "tcmalloc": ("tcmalloc_minimal", "tcmalloc"),
    "jemalloc": ("jemalloc",),
}
INSTALL = {
    "tcmalloc": "apt install libtcmalloc-minimal4 / dnf install gperftools-libs / conda install gperftools",
    "jemalloc": "apt install libjemalloc2 / dnf install jemalloc / conda install jemalloc",
}
# PyTorch's CPU launcher's setting: big allocations from dedicated extents, no eager returns to the OS
JEMALLOC_CONF = "oversize_threshold:1,background_thread:true,metadata_thp:auto"


def current() -> str:
    """ "tcmalloc", "jemalloc", or "system" (the C library's malloc) for this process."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "system"
    for name, libs in LIBRARIES.items():
        if any(f"/lib{lib}.so" in maps for lib in libs):
            return name
    return "system"


def find(name: str) -> str | None:
    """Path (or soname) of the `name` library, or None. Looks where the dynamic linker looks, then
    in the active conda environment or virtualenv."""
    for lib in LIBRARIES[name]:
        found = ctypes.util.find_library(lib)
        if found:
            return found
        for prefix in filter(None, (os.environ.get("CONDA_PREFIX"), sys.prefix)):
            hits = sorted(glob.glob(os.path.join(prefix, "lib", f"lib{lib}.so*")))
            if hits:
                return hits[0]
    return None


def preload_env(name: str, env: dict[str, str] | None = None) -> dict[str, str]:
    """A copy of `env` (default os.environ) whose processes start on `name` ("system": unchanged).
    ValueError naming what to install when the library is not found."""
    env = dict(os.environ if env is None else env)
    if name == "system":
        return env
    _check(name)
    path = find(name)
    if path is None:
        raise ValueError(f"{ENV}={name}: lib{LIBRARIES[name][0]}.so not found; install it "
                         f"({INSTALL[name]}) or unset {ENV}")  # fmt: skip
    env["LD_PRELOAD"] = ":".join(filter(None, (path, env.get("LD_PRELOAD"))))
    if name == "jemalloc":
        env.setdefault("MALLOC_CONF", JEMALLOC_CONF)
    return env


def use_requested() -> None:
    """If $RESLAB_MALLOC names an allocator this process is not running on, restart the process
    (same interpreter, same command line) with it preloaded. Returns when nothing is to be done."""
    name = os.environ.get(ENV, "").strip() or "system"
    _check(name)
    if name == "system" or current() == name:
        return
    if not sys.platform.startswith("linux"):
        raise ValueError(
            f"{ENV}={name} works on Linux only (it preloads a shared library); unset it"
        )
    if os.environ.get("_RESLAB_MALLOC_TRIED") == name:  # the restart did not load it
        raise ValueError(f"{ENV}={name}: preloading {find(name)} did not take effect; unset {ENV}")
    env = preload_env(name)
    env["_RESLAB_MALLOC_TRIED"] = name
    sys.stdout.flush(), sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def _check(name: str) -> None:
    if name not in ("system", *LIBRARIES):
        raise ValueError(f"{ENV} must be one of system, {', '.join(LIBRARIES)}; got {name!r}")
