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


@pytest.mark.slow
def test_landscape_report_renders_with_all_figures(tmp_path, browser):
    """The landscape study's page, from a folder of constructed surfaces (a bowl around every
    residual net, a bowl with ripples growing with depth around the plain ones): all four figures
    decode, and the page leads with the verdict its rule computes from those numbers."""
    from reslab.studies.landscape import SURFACES
    from reslab.studies.landscape.report import build_report as landscape_report
    from reslab.training import runs

    xs = np.linspace(-1, 1, 7)
    a, b = np.meshgrid(xs, xs)
    nets = []
    for depth in (4, 16, 64):
        for arch in ("plain", "residual"):
            ripple = (
                0.25 * (1 + np.sin(6 * a) * np.cos(6 * b)) * depth / 64 if arch == "plain" else 0
            )
            loss = 0.05 + a**2 + b**2 + ripple - ripple * (a == 0) * (b == 0)  # centre: 0.05
            ratio = 0.02 + (0.5 * depth / 64 if arch == "plain" else 0)
            nets += [{"arch": arch, "depth": depth, "seed": seed, "run_dir": f"runs/{arch}-{depth}-s{seed}",
                      "final_train_error": 0.0, "loss": loss.tolist(), "error": (loss / 10).tolist(),
                      "lambda_max": 10.0, "lambda_min": -10.0 * ratio, "images": 100}
                     for seed in (0, 1)]  # fmt: skip
    folder = tmp_path / "landscape" / "toy"
    folder.mkdir(parents=True)
    runs.write_json(folder / runs.STUDY, {"study": "landscape", "depths": [4, 16, 64]})
    runs.write_json(folder / SURFACES, {"xs": xs.tolist(), "nets": nets, "lost": []})
    report = landscape_report(folder)
    loaded, total, dom = browser.figures(report)
    assert total == 4 and loaded == 4
    assert runs.read_json(folder / runs.SUMMARY)["verdict"]["status"] == "shown"
    assert "Loss landscapes of plain and residual twins" in dom and ">shown<" in dom.lower()
