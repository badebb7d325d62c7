"""The landscape study's rule on constructed rows (the rule was declared before any landscape was
measured), and its measurements on a trained toy pair: the grid's centre is each net's own loss."""

import pytest

from reslab.studies.landscape.rule import FLOOR, ratio, rows, verdict


def _nets(arch, depth, ratios, lambda_max=10.0):
    return [
        {"arch": arch, "depth": depth, "seed": s, "lambda_max": lambda_max, "lambda_min": -r * lambda_max}
        for s, r in enumerate(ratios)
    ]  # fmt: skip


def _verdict(plain_shallow, plain_deep, res_shallow, res_deep):
    nets = (
        _nets("plain", 4, plain_shallow) + _nets("plain", 64, plain_deep)
        + _nets("residual", 4, res_shallow) + _nets("residual", 64, res_deep)
    )  # fmt: skip
    return verdict(rows(nets))


def test_the_paper_shape_is_shown_a_rising_residual_arm_is_named_and_flat_plain_is_not_shown():
    # Li et al. 2018, Fig. 7: the plain net's surface turns non-convex with depth, ResNet's does not
    v = _verdict([0.02, 0.03, 0.02], [0.60, 0.45, 0.70], [0.02, 0.02, 0.03], [0.03, 0.02, 0.02])
    assert v.status == "shown"
    assert v.numbers["plain"]["mean_b"] == pytest.approx(0.5833, abs=1e-4)
    assert not v.numbers["residual"]["higher"]
    assert _verdict([0.02] * 3, [0.6] * 3, [0.02] * 3, [0.5] * 3).status == "residual_too"
    assert _verdict([0.02] * 3, [0.03] * 3, [0.02] * 3, [0.02] * 3).status == "not_shown"


def test_the_floor_and_the_seed_spread_bound_what_counts_as_a_rise():
    just_above, just_below = 0.02 + FLOOR + 0.001, 0.02 + FLOOR - 0.001
    assert _verdict([0.02] * 3, [just_above] * 3, [0.02] * 3, [0.02] * 3).status == "shown"
    assert _verdict([0.02] * 3, [just_below] * 3, [0.02] * 3, [0.02] * 3).status == "not_shown"
    # one wild seed widens the tolerance: a mean rise of 0.2 within 2 x pooled std is not a rise
    assert (
        _verdict([0.02, 0.02, 0.02], [0.0, 0.0, 0.6], [0.02] * 3, [0.02] * 3).status == "not_shown"
    )


def test_one_depth_per_arm_is_insufficient_and_a_net_without_a_minimum_has_no_ratio():
    assert verdict(rows(_nets("plain", 4, [0.1]) + _nets("residual", 4, [0.1]))).status == (
        "insufficient"
    )
    assert ratio(-1.0, -2.0) is None and ratio(4.0, -1.0) == 0.25
