"""Shared test fixtures: a real headless browser (Debian's chromium) to render HTML reports, one
torch thread for the tests of tiny models, and a small real disk that fills up."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--virtual-time-budget=5000",
]  # fmt: skip


class Browser:
    """Runs chromium headless on local files; reports open their figures with a tiny load script."""

    def __init__(self, profile: Path):
        self.profile = profile

    def run(self, *args: str) -> subprocess.CompletedProcess:
        cmd = [CHROMIUM, *FLAGS, f"--user-data-dir={self.profile}", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=90, check=True)

    def figures(self, page: Path) -> tuple[int, int, str]:
        """(figures decoded, figures on the page, rendered DOM) of an HTML report."""
        dom = self.run("--dump-dom", page.as_uri()).stdout
        body = re.search(r"<body[^>]*>", dom)[0]
        loaded = re.search(r'data-figures-loaded="(\d+)"', body)
        total = re.search(r'data-figures-total="(\d+)"', body)
        assert loaded and total, f"the page's load script did not run: {body}"
        return int(loaded[1]), int(total[1]), dom


@pytest.fixture
def browser(tmp_path) -> Browser:
    if CHROMIUM is None:
        pytest.skip("chromium not installed (apt-get install chromium)")
    return Browser(tmp_path / "chromium-profile")


@pytest.fixture
def one_thread():
    """Tiny matrices on a shared 2-core machine: a second thread only contends for the cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def small_disk(tmp_path):
    """A real 256 KiB tmpfs (needs root, or a container that allows mount)."""
    fs = tmp_path / "fs"
    fs.mkdir()
    cmd = ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(fs)]
    if shutil.which("mount") is None or subprocess.run(cmd, capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield fs
    finally:
        subprocess.run(["umount", "--lazy", str(fs)], check=True)  # loaded tensors map its files
