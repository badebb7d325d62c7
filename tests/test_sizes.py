"""Sizes are bounded before anything is allocated (issue 23, cause 3): integer options have sane
ranges, model names a bounded depth, and a model is counted on the meta device (parameters and the
activations of one image) and refused in one line when it cannot fit, instead of trying to allocate
terabytes or building for hours."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from reslab import limits
from reslab.cli import main

TRAIN = ["train", "--model", "resmlp-4", "--iters", "1", "--no-progress"]


@pytest.mark.parametrize(
    "argv, expected",
    [
        (
            [*TRAIN, "--log-every", "1000000000000"],
            "log_every must be an integer from 1 to 1,000,000,000, got 1000000000000",
        ),
        (
            [*TRAIN, "--seed", "9" * 23],
            "seed must be an integer from 0 to 9,223,372,036,854,775,807",
        ),
        ([*TRAIN, "--seed", "-1"], "seed must be an integer from 0 to"),
        ([*TRAIN, "--batch-size", "10000000000"], "batch_size must be an integer from 1 to"),
        ([*TRAIN, "--epochs", "1e12", "--iters", "0"], "epochs must be at most 1,000,000"),
        ([*TRAIN, "--model-arg", "width=1000000"], "width must be an integer from 1 to 65,536"),
        (
            ["train", "--model", "resmlp-2000000000", "--iters", "1"],
            "resmlp-2000000000: depth 2,000,000,000 is more than the 20,000 reslab builds",
        ),
        (
            ["train", "--model", "resmlp-64", "--model-arg", "width=60000", "--iters", "1"],
            # 191 module outputs 60,000 wide (6 in each of 31 blocks, the stem's 4, bias2's 1) + 10
            # logits; 12 bytes a parameter (weights, gradients, momentum) + 4 an activation x 128
            "model resmlp-64 has 223,219,560,073 parameters and 11,460,010 activations an image: "
            "training it at batch 128 needs about 2,500.1 GiB, more than the",
        ),
        (
            ["export", "--model", "resmlp-64", "--model-arg", "width=60000", "--out", "m.pt2"],
            "resmlp-64 has 223,400,040,073 parameters: building it needs about 832.2 GiB",
        ),
        (
            ["export", "--model", "resmlp-4", "--num-classes", "100000000000", "--out", "m.pt2"],
            "num_classes must be an integer from 1 to 1,000,000, got 100000000000",
        ),
    ],
)
def test_sizes_out_of_range_are_one_line_before_anything_is_built(
    argv, expected, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    assert main([*argv, "--out", str(tmp_path / "out")] if argv[0] == "train" else argv) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and expected in err[0] and "bug" not in err[0], err
    assert not any(tmp_path.iterdir())


def test_a_log_window_longer_than_the_run_allocates_only_the_run(tmp_path, monkeypatch):
    """--log-every 10**9 on a 2-step run once sized a (10**9 + 1, 4) tensor: 16 GB."""
    from reslab.training import loop

    sizes = []
    real = loop.StepStats

    def recorded(log_every, device, step):
        sizes.append(log_every)
        return real(log_every, device, step)

    monkeypatch.setattr(loop, "StepStats", recorded)
    argv = [*TRAIN, "--iters", "2", "--log-every", "1000000000", "--out", str(tmp_path)]
    assert main(argv) == 0
    assert sizes == [2]


def test_the_meta_count_matches_an_independent_one():
    net = lambda: nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))  # noqa: E731
    params, acts = limits.model_size(net, (8,))
    assert params == 8 * 16 + 16 + 16 * 4 + 4
    assert acts == 16 + 16 + 4  # the outputs of the three layers for one example
    assert limits.model_size(net) == (params, 0)


def test_a_model_that_fits_passes_and_one_that_does_not_is_refused(monkeypatch):
    from reslab.models import create_model

    build = lambda: create_model("resmlp-4", num_classes=10, in_chans=1, img_size=8)  # noqa: E731
    params, acts = limits.check_model(build, "resmlp-4", (1, 8, 8), batch=128)
    assert params == sum(t.numel() for t in build().state_dict().values()) and acts > 0
    monkeypatch.setattr(limits, "available_memory", lambda: 10_000)
    with pytest.raises(ValueError, match=r"^resmlp-4 has [\d,]+ parameters and [\d,]+ activations"):
        limits.check_model(build, "resmlp-4", (1, 8, 8), batch=128)
    assert torch.get_default_device() == torch.device("cpu")  # the meta device does not leak


def test_available_memory_is_positive_and_below_the_machine():
    import os

    free = limits.available_memory()
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert free is not None and 0 < free <= total
