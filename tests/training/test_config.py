import math

import pytest

from reslab.training import PRESETS, TrainConfig, resolve
from reslab.training.loop import lr_at


def test_paper_preset_is_he_et_al_recipe():
    cfg = resolve("paper", model="resnet110")
    assert (cfg.lr, cfg.momentum, cfg.weight_decay, cfg.batch_size, cfg.iters) == (
        0.1,
        0.9,
        1e-4,
        128,
        64000,
    )
    # lr divided by 10 at 32k and 48k iterations, 0.01 warm-up for 110 layers
    assert [lr_at(s, cfg.iters, cfg) for s in (0, 399)] == [0.01, 0.01]
    assert lr_at(400, cfg.iters, cfg) == 0.1
    assert resolve("paper", model="resnet-110+gate-shortcut").warmup_iters == 400
    assert resolve("paper", model="plain1202").warmup_iters == 400
    # the GPU recipe of the 1,202- and 1,001-layer nets (He et al. 2015 §4.2, 2016 §4)
    assert resolve("paper", model="preact_resnet1001").warmup_iters == 400
    shallow = resolve("paper", model="resnet20")
    assert shallow.warmup_iters == 0
    assert lr_at(31999, 64000, shallow) == 0.1
    assert lr_at(32000, 64000, shallow) == pytest.approx(0.01)
    assert lr_at(48000, 64000, shallow) == pytest.approx(0.001)


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
        (dict(batch_size=0), "batch_size must be >= 1"),
        (dict(milestones=(0.8, 0.5)), "milestones"),
        (dict(iters=0, epochs=0), "run length"),
        (dict(name="a/b"), "one folder name"),
        (dict(device="tpu"), "device must be"),
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
