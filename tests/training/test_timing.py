"""A run's time, measured before it starts: the parts `timing.measure` times, and the images a run
evaluates (`eval_images`), counted against what a real run logs. No timed assertions."""

from __future__ import annotations

import pytest
import torch

from reslab.training import TrainConfig, train
from reslab.training.evaluation import eval_images
from reslab.training.runs import read_metrics
from reslab.training.timing import measure, timing_key


@pytest.mark.parametrize(
    "kw",
    [dict(iters=70), dict(iters=25, eval_every=10, eval_train=True)],
    ids=["cost-bounded-cadence", "eval-train"],
)
def test_eval_images_counts_what_a_run_scores(tmp_path, kw):
    """Curve points (subset of test and val, the whole training set with eval_train) and the final
    evaluation: the images the loop scores are those `eval_images` prices. 150 + 150 images a
    point, batch 64: a point every ceil(300 / (0.05 * 3 * 64)) = 32 steps by default."""
    cfg = TrainConfig(
        model="resmlp-4", data="digits", batch_size=64, log_every=5, val_size=200,
        eval_subset=150, out=str(tmp_path), name="n", progress=False, num_threads=1, **kw,
    )  # fmt: skip
    train(cfg)
    evals = [x for x in read_metrics(tmp_path / "n") if x["kind"] == "eval"]
    *loop, last = evals
    assert [x["step"] for x in loop] == ([32, 64] if "eval_every" not in kw else [10, 20])
    scored = sum(x["test_n"] + x["val_n"] + x.get("train_eval_n", 0) for x in loop)
    scored += 1242 + 355 + last["val_n"]  # the final evaluation: whole training and test sets
    assert scored == eval_images(cfg, cfg.iters, {"train": 1242, "test": 355, "val": 200})


def test_measure_times_the_parts_of_a_run_and_restores_the_state(tmp_path):
    cfg = TrainConfig(model="resmlp-4", data="digits", batch_size=64, iters=100, out=str(tmp_path))
    threads, rng = torch.get_num_threads(), torch.get_rng_state()
    t = measure(cfg, threads=1, steps=3)
    assert torch.get_num_threads() == threads and torch.equal(torch.get_rng_state(), rng)
    assert t.sizes == {"train": 1442, "test": 355, "val": 0} and t.steps_per_epoch == 1442 // 64
    assert t.step_s > 0 and t.eval_image_s > 0 and t.start_s > 0 and t.checkpoint_s > 0
    assert list(tmp_path.iterdir()) == []  # the timed checkpoint is gone
    assert t.predict(cfg) == t.start_s + t.work(cfg) > 100 * t.step_s + 5 * t.checkpoint_s
    other = TrainConfig(
        model="resmlp-4", data="digits", batch_size=64, iters=5, seed=3, lr=1.0, out=str(tmp_path)
    )
    assert timing_key(other) == timing_key(cfg)  # the same kind of run: timed once
    assert timing_key(TrainConfig(model="resmlp-8", batch_size=64)) != timing_key(cfg)
