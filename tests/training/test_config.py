import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from reslab.training import PRESETS, TrainConfig, resolve, runs
from reslab.training.build import load_data
from reslab.training.optim import lr_at, warmup_ends
from reslab.training.presets import PRESET_HELP
from reslab.training.resume import existing_run

FIXTURES = Path(__file__).parents[1] / "fixtures" / "studies-e7ce78a"


def test_paper_preset_is_he_et_al_recipe():
    cfg = resolve("paper", model="resnet110")
    assert (cfg.lr, cfg.momentum, cfg.weight_decay, cfg.batch_size, cfg.iters) == (
        0.1,
        0.9,
        1e-4,
        128,
        64000,
    )
    assert (cfg.normalize, cfg.amp, cfg.augment) == ("pixel-mean", "off", "on")
    # 0.01 for 110 layers "until the training error is below 80% (about 400 iterations)" (He et
    # al. 2015 §4.2): the condition ends it (here at step 350), with a cap at 2,000 iterations
    assert (cfg.warmup_lr, cfg.warmup_until_error, cfg.warmup_iters) == (0.01, 0.8, 2000)
    assert [lr_at(s, cfg.iters, cfg) for s in (0, 1999)] == [0.01, 0.01]  # never ended: the cap
    assert lr_at(2000, cfg.iters, cfg) == 0.1
    assert [lr_at(s, cfg.iters, cfg, warmup_end=350) for s in (349, 350)] == [0.01, 0.1]
    for model in ("resnet-110+gate-shortcut", "plain1202", "preact_resnet1001"):
        assert resolve("paper", model=model).warmup_until_error == 0.8, model
    assert resolve("paper", model="resnet20").warmup_iters == 0


@pytest.mark.parametrize(
    "step, error, ends", [(300, 0.79, 300), (300, 0.80, None), (300, 0.5, 300)]
)
def test_the_warm_up_ends_at_the_first_training_line_below_its_error(step, error, ends):
    cfg = resolve("paper", model="resnet110")
    assert warmup_ends(step, error, cfg) == ends
    assert warmup_ends(step, 0.0, resolve("paper", model="resnet110", warmup_until_error=0)) is None


@pytest.mark.parametrize("model", ["resnet110", "resnet20"])  # with and without the warm-up
def test_paper_lr_drops_at_32k_and_48k_counted_from_the_first_step(model):
    """ "divide it by 10 at 32k and 48k iterations" (He et al. 2015 §4.2): the same iterations with
    the 400-step warm-up, which once pushed the drops to 32,200 and 48,100."""
    cfg = resolve("paper", model=model)
    lrs = [lr_at(s, cfg.iters, cfg) for s in (31999, 32000, 47999, 48000, 63999)]
    assert lrs == pytest.approx([0.1, 0.01, 0.01, 0.001, 0.001], rel=1e-12)


def test_paper_preset_computes_in_fp32_where_bf16_is_native(monkeypatch):
    from reslab.training import precision

    monkeypatch.setattr(precision, "native_bf16", lambda device="cpu": (True, "native bf16 (test)"))
    assert precision.choose("auto", "auto", "cpu", conv=True).name == "bf16"  # reslab's own pick
    assert precision.choose(resolve("paper").amp, "auto", "cpu", conv=True).name == "fp32"


def test_paper_preset_subtracts_the_mean_image_of_the_images_trained_on():
    cfg = resolve("paper", data="digits", val_size=300, train_subset=1000)
    train, test, val = load_data(cfg)
    # independent: numpy's mean over the very images trained on (after the val split and subset)
    want = train.images.numpy().astype(np.float64).mean(axis=0) / 255.0  # (1, 8, 8)
    assert len(train) == 1000 and train.mean.shape == (1, 8, 8) and train.std == (1.0,)
    torch.testing.assert_close(train.mean.double(), torch.from_numpy(want), rtol=0, atol=1e-7)
    assert test.mean is train.mean and val.mean is train.mean
    assert isinstance(load_data(TrainConfig(data="digits"))[0].mean, tuple)  # default: per channel


def test_runs_written_before_normalize_read_as_per_channel(tmp_path):
    old = json.loads((FIXTURES / "lesion/toy/runs/residual-s0/config.json").read_text())
    assert "normalize" not in old  # written before the option existed
    assert TrainConfig.from_dict(old).normalize == "channel"
    run_dir = tmp_path / "old"
    run_dir.mkdir()
    (run_dir / runs.CONFIG).write_text(json.dumps(old))
    again = TrainConfig.from_dict(old | {"resume": True})
    assert existing_run(run_dir, again) is None  # resumable: an absent key is its default
    with pytest.raises(ValueError, match=r"differs in \['normalize'\]"):
        existing_run(
            run_dir, TrainConfig.from_dict(old | {"resume": True, "normalize": "pixel-mean"})
        )


def test_every_preset_has_help_and_the_paper_says_how_to_split_its_batch():
    assert set(PRESET_HELP) == set(PRESETS)
    assert (
        "torchrun --nproc_per_node 2" in PRESET_HELP["paper"]
        and "64 images" in PRESET_HELP["paper"]
    )


def test_explicit_options_beat_preset():
    cfg = resolve("paper", epochs=2.0, lr=0.05)
    assert cfg.iters == 0 and cfg.epochs == 2.0 and cfg.lr == 0.05
    assert set(PRESETS) >= {"paper", "cpu"}


def test_onecycle_and_cosine_shapes():
    cfg = TrainConfig(schedule="onecycle", lr=0.1, iters=1000)
    lrs = [lr_at(s, 1000, cfg) for s in range(1000)]
    peak = max(range(1000), key=lrs.__getitem__)
    assert abs(peak - 300) <= 1 and lrs[peak] == pytest.approx(0.1, rel=1e-4)
    assert lrs[0] == pytest.approx(0.004) and lrs[-1] < 1e-4
    cos = TrainConfig(schedule="cosine", lr=0.2, iters=100)
    assert lr_at(50, 100, cos) == pytest.approx(0.1)
    assert lr_at(0, 100, cos) == pytest.approx(0.2) and lr_at(99, 100, cos) == pytest.approx(
        0.2 * 0.5 * (1 + math.cos(math.pi * 0.99))
    )


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(schedule="linear"), "schedule must be one of"),
        (dict(batch_size=0), "batch_size must be an integer from 1 to 1,048,576, got 0"),
        (dict(milestones=(0.8, 0.5)), "milestones"),
        (dict(iters=0, epochs=0), "run length"),
        (dict(name="a/b"), "one folder name"),
        (dict(device="tpu"), "device must be"),
        (dict(normalize="pixel"), "normalize must be one of channel, pixel-mean"),
    ],
)
def test_bad_values_are_one_line_errors(bad, message):
    with pytest.raises(ValueError, match=message) as err:
        TrainConfig(**bad)
    assert "\n" not in str(err.value)


def test_round_trip_through_dict():
    cfg = resolve("cpu", model="plain20", model_kwargs={"norm": "group"})
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown config keys"):
        TrainConfig.from_dict({"lrate": 1})
