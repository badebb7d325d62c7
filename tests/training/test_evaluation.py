"""`evaluate_weights` normalises as the weights were trained: a pixel-mean run evaluates to its own
final test numbers, from the normalisation its weights file records (tests/test_load_run.py: run
folders, contradicting flags, older files)."""

from __future__ import annotations

import pytest

from reslab.training import TrainConfig, train
from reslab.training.trained import evaluate_weights


def test_pixel_mean_weights_evaluate_to_the_runs_own_test_numbers(tmp_path):
    cfg = TrainConfig(
        model="resmlp-4", data="digits", iters=40, batch_size=64, eval_every=40, log_every=10,
        normalize="pixel-mean", out=str(tmp_path), name="pm", progress=False, num_threads=1,
    )  # fmt: skip
    s = train(cfg)
    weights = str(tmp_path / "pm" / "model.safetensors")
    r = evaluate_weights("resmlp-4", weights, num_threads=1)  # no flag: the file records it
    assert r["normalization"] == "pixel-mean"
    assert r["loss"] == pytest.approx(s["final_test_loss"], rel=1e-5)
    assert r["error"] == pytest.approx(s["final_test_error"])
    with pytest.raises(ValueError, match="takes no --mean"):
        evaluate_weights("resmlp-4", weights, normalize="pixel-mean", mean=[0.5])
    with pytest.raises(ValueError, match="channel or pixel-mean"):
        evaluate_weights("resmlp-4", weights, normalize="per-pixel")
