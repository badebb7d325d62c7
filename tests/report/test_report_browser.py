"""Open a built degradation report in a real headless browser (Debian's chromium): every embedded figure
must decode, and the rendered page must not be blank. Skipped where chromium is not installed."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.image import imread

from reslab.studies.degradation.report import build_report


@pytest.mark.slow
def test_report_renders_with_all_figures(study_dir, tmp_path, browser):
    report = build_report(study_dir)
    loaded, total, dom = browser.figures(report)
    assert total == 2 and loaded == 2
    assert "Degradation shown" in dom

    shot = tmp_path / "shot.png"
    browser.run("--window-size=1100,2400", f"--screenshot={shot}", report.as_uri())
    pixels = imread(shot)[..., :3]  # (H, W, 3) floats in [0, 1]
    assert pixels.shape[:2] == (2400, 1100)
    # a blank page is one colour; the report has text, coloured curves and tables
    assert pixels.std() > 0.05
    assert len(np.unique((pixels * 255).astype(np.uint8).reshape(-1, 3), axis=0)) > 200
