"""Open a built degradation report in a real headless browser (Debian's chromium): every embedded figure
must decode, and the rendered page must not be blank. Skipped where chromium is not installed."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from reslab.report.degradation import build_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--virtual-time-budget=5000",
]  # fmt: skip

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium not installed (apt-get install chromium)"
)


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90, check=True)


def test_report_renders_with_all_figures(study_dir, tmp_path):
    report = build_report(study_dir)
    dom = _chromium(tmp_path, "--dump-dom", report.as_uri()).stdout
    body = re.search(r"<body[^>]*>", dom)[0]
    loaded = re.search(r'data-figures-loaded="(\d+)"', body)
    total = re.search(r'data-figures-total="(\d+)"', body)
    assert loaded and total, f"load script did not run: {body}"
    assert int(total[1]) == 2 and int(loaded[1]) == 2
    assert "Degradation shown" in dom

    shot = tmp_path / "shot.png"
    _chromium(tmp_path, "--window-size=1100,2400", f"--screenshot={shot}", report.as_uri())
    pixels = imread(shot)[..., :3]  # (H, W, 3) floats in [0, 1]
    assert pixels.shape[:2] == (2400, 1100)
    # a blank page is one colour; the report has text, coloured curves and tables
    assert pixels.std() > 0.05
    assert len(np.unique((pixels * 255).astype(np.uint8).reshape(-1, 3), axis=0)) > 200
