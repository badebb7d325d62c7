"""The lesion study: a deleted residual block is exactly its shortcut path (checked against forwards
written out by hand), a deleted plain block passes its input on, the verdict and the smoothness rule
on constructed numbers (some shaped like Veit et al.'s Fig. 5(a)), and what is specific to it end to
end: the intact net reproduces the engine's test error, `--from`
lesions existing run folders, and a net that diverged in training is named, not lesioned.
(Every study's toy run, report rebuild, bad options and --help: tests/studies/test_every_study.py.)"""

import math
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reslab.cli import main as cli
from reslab.models import create_model
from reslab.studies import build_report
from reslab.studies.lesion import LESIONS, STUDY, make_config, run
from reslab.studies.lesion.measure import changes_shape, lesioned, random_sets
from reslab.studies.lesion.report import format_table
from reslab.studies.lesion.rule import diverged_name, smoothness, smoothness_verdict, verdict
from reslab.training import runs

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _eval_model(name, **kw):
    torch.manual_seed(0)
    model = create_model(name, **kw)
    for m in model.modules():  # trained-looking norms, so a wrong path cannot hide behind BN(0) = 0
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


@torch.no_grad()
def test_deleted_mlp_block_is_its_identity_shortcut():
    model = _eval_model("resmlp-10", in_chans=1, img_size=8, width=16)
    x = torch.randn(5, 1, 8, 8)
    blocks = model.residual_blocks()
    for j in range(len(blocks)):
        h = model.stem(x.flatten(1))  # (B, 16), non-negative after the stem's ReLU
        for i, b in enumerate(blocks):
            # block j deleted: relu(0 + h) = h, the identity shortcut and the ReLU after the addition
            h = torch.relu(h) if i == j else b(h)
        expected = model.fc(h)
        with lesioned(model, [j]):
            got = model(x)
        assert torch.equal(got, expected)
        assert not torch.allclose(got, model(x))  # the deletion changed something
    assert isinstance(model.layers[0], type(blocks[0]))  # restored


@torch.no_grad()
def test_deleted_downsampling_block_keeps_option_a_subsampling():
    model = _eval_model("resnet-8", in_chans=3)  # one basic block per stage, option A shortcuts
    x = torch.randn(4, 3, 16, 16)
    with lesioned(model, [1]):  # layer2.0: 16 -> 32 channels, stride 2
        got = model(x)
    h = model.relu(model.bn1(model.conv1(x)))
    h = model.layer1(h)  # (4, 16, 16, 16)
    sub = h[:, :, ::2, ::2]  # (4, 16, 8, 8); 8 zero channels on each side, written out by hand
    zeros = torch.zeros(4, 8, 8, 8)
    h = torch.relu(torch.cat([zeros, sub, zeros], 1))  # (4, 32, 8, 8)
    h = model.layer3(h)
    expected = model.fc(h.mean((2, 3)))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


@torch.no_grad()
def test_deleted_preact_projection_block_keeps_its_projection():
    # bottleneck units (9n+2): a bare 1x1 projection where the shape changes, fed relu(bn1(x)) in a
    # stage's first unit (resnet-pre-act.lua)
    model = _eval_model("preact_resnet-11", in_chans=3)
    x = torch.randn(4, 3, 16, 16)
    with lesioned(model, [2]):  # layer3.0: 128 -> 256 channels, stride 2
        got = model(x)
    h = model.layer2(model.layer1(model.conv1(x)))
    b = model.layer3[0]
    pre = F.relu(F.batch_norm(h, b.bn1.running_mean, b.bn1.running_var, b.bn1.weight, b.bn1.bias))
    (proj,) = b.downsample
    h = F.conv2d(pre, proj.weight, stride=2)  # no activation after the addition in a pre-act unit
    h = F.relu(model.bn_final(h))
    torch.testing.assert_close(got, model.fc(h.mean((2, 3))), rtol=0, atol=1e-5)


@torch.no_grad()
def test_plain_deletion_passes_input_on_only_where_shape_is_kept():
    model = _eval_model("plainmlp-8", in_chans=1, img_size=8, width=16)
    x = torch.randn(3, 1, 8, 8)
    with lesioned(model, [0, 2]):
        got = model(x)
    expected = model.fc(model.layers[1](model.stem(x.flatten(1))))
    assert torch.equal(got, expected)
    assert changes_shape(create_model("plain-8"), torch.randn(2, 3, 16, 16)) == [False, True, True]


def test_a_block_index_outside_the_model_is_refused_and_nothing_is_swapped():
    model = _eval_model("resmlp-6", in_chans=1, img_size=8, width=16)
    blocks = model.residual_blocks()
    for bad in (-1, len(blocks)):  # -1 would silently delete the last block
        with pytest.raises(ValueError, match="out of range"), lesioned(model, [0, bad]):
            pass
    assert model.residual_blocks() == blocks


def test_random_sets_are_distinct_and_reproducible():
    sets = random_sets(list(range(10)), [1, 3, 9, 10, 11], samples=5, seed=0)
    assert set(sets) == {1, 3, 9, 10}  # 11 > 10 blocks: left out
    assert sets[10] == [list(range(10))] and len(sets[9]) == 5
    for k, ss in sets.items():
        assert all(len(s) == k == len(set(s)) for s in ss)
        assert len({tuple(s) for s in ss}) == len(ss)
    assert sets == random_sets(list(range(10)), [1, 3, 9, 10, 11], samples=5, seed=0)
    assert len(random_sets([0, 1, 2], [1], samples=50, seed=0)[1]) == 3  # all there are


def _net(arch, single, intact=0.1, model="m"):
    """A lesioned net as lesions.json holds it: 10 classes (chance error 0.9), these single errors."""
    return {
        "arch": arch, "model": model, "blocks": len(single), "intact_error": intact,
        "num_classes": 10, "single": [{"block": i, "error": e} for i, e in enumerate(single)],
        "multi": [{"k": 2, "errors": [intact + 0.4]}],
    }  # fmt: skip


@pytest.mark.parametrize(
    "nets, status",
    [
        ([_net("residual", [0.12, 0.14]), _net("plain", [0.9, 0.8])], "shown"),
        ([_net("residual", [0.3, 0.4]), _net("plain", [0.9, 0.8])], "not_shown"),
        ([_net("residual", [0.12, 0.14]), _net("plain", [0.2, 0.3])], "plain_robust_too"),
        ([_net("residual", [0.12, 0.14])], "residual_robust"),
        ([_net("plain", [0.9, 0.8])], "insufficient"),
        ([_net("residual", [None]), _net("plain", [0.9])], "insufficient"),
    ],
)
def test_verdict_on_constructed_numbers(nets, status):
    v = verdict(nets)
    assert v.status == status
    if v.numbers["residual"] and v.numbers["residual"]["single_damage_median"] is not None:
        # damage = (e - intact) / (chance - intact): (0.13 - 0.1) / 0.8 for the robust residual net
        median = sorted(s["error"] for s in nets[0]["single"])
        expected = ((median[0] + median[1]) / 2 - 0.1) / 0.8
        assert v.numbers["residual"]["single_damage_median"] == pytest.approx(expected)
        assert v.numbers["residual"]["k_half"] == 2  # mean damage at k=2 is 0.5


def test_verdict_says_when_the_arms_differ_in_more_than_their_shortcuts():
    recipe = {"lr": 0.1, "warmup_iters": 400}
    res = _net("residual", [0.12] * 54) | {"recipe": recipe}
    plain = _net("plain", [0.9] * 9) | {"recipe": recipe | {"warmup_iters": 0}}
    v = verdict([res, plain])
    assert v.status == "shown"  # the rule does not change, the numbers say what it rests on
    assert v.numbers["unlike"]["blocks"] == {"residual": [54], "plain": [9]}
    assert v.numbers["unlike"]["recipe"] == {"warmup_iters": {"residual": [400], "plain": [0]}}
    twins = verdict([res, _net("plain", [0.9] * 54) | {"recipe": recipe}])
    assert twins.numbers["unlike"]["blocks"] == {}
    assert twins.numbers["unlike"]["recipe"] == {} and twins.numbers["unlike"]["recipe_known"]
    older = verdict([_net("residual", [0.12] * 3), _net("plain", [0.9] * 3)])  # no recipes
    assert older.numbers["unlike"] == {"blocks": {}, "recipe": {}, "recipe_known": False}


def test_default_trains_the_pair_with_the_papers_recipe_scaled():
    cfg = make_config("digits")
    c = cfg.run_config("residual", 0)
    assert (c.lr, c.weight_decay, c.iters, c.schedule) == (0.1, 1e-4, 1980, "step")
    assert (c.warmup_iters, c.milestones) == (99, (0.5, 0.75))


def test_paper_preset_gives_both_arms_one_recipe():
    from reslab.studies.base import recipe

    cfg = make_config("paper")
    res, plain = (cfg.run_config(a, 0) for a in ("residual", "plain"))
    assert (res.model, plain.model) == ("resnet-110", "plain-20")
    assert recipe(res) == recipe(plain) and res.warmup_lr == 0.01
    assert (res.warmup_until_error, plain.warmup_until_error) == (0.8, 0.8)


def _curve_net(arch, curve, spread=0.0, sets=20):
    """A lesioned net whose intact error is curve[0] and whose `sets` random sets of k deleted blocks
    have errors curve[k] + offsets spread evenly over [-spread, spread] (mean curve[k])."""
    offsets = np.linspace(-spread, spread, sets) if sets > 1 else np.zeros(1)
    return {
        "arch": arch, "model": "m", "blocks": len(curve) - 1, "intact_error": curve[0],
        "num_classes": 10, "single": [{"block": 0, "error": curve[1]}],
        "multi": [{"k": k, "errors": (e + offsets).tolist()} for k, e in enumerate(curve[1:], 1)],
    }  # fmt: skip


def _veit_curve(e20):
    """Test error after deleting k = 0..20 of ResNet-110's 54 blocks, shaped like Veit et al. 2016
    Fig. 5(a). Anchors from the paper's text: "deleting 10 blocks ... error remains around 0.2"
    (§4.2) and "for the removal of 20 modules, we observe a severe drop in performance" (§6), here
    `e20`; intact 6.43%, ResNet-110 on CIFAR-10 in He et al. 2015 Table 6 (Veit et al. give no
    number in the text). Between them the error grows exponentially, e0 + a (exp(b k) - 1), rising
    ever faster as the figure does; the figure's own points were not readable from any source."""
    e0, e10 = 0.0643, 0.20
    growth = (e20 - e0) / (e10 - e0) - 1  # = exp(10 b), from the two anchors
    b, a = math.log(growth) / 10, (e10 - e0) / (growth - 1)
    return [e0 + a * (math.exp(b * k) - 1) for k in range(21)]


@pytest.mark.parametrize(
    "e20", [0.35, 0.55, 0.8]
)  # "a severe drop": read as anything in this range
def test_veit_fig5a_shaped_curve_is_smooth(e20):
    curve = _veit_curve(e20)
    assert curve[10] == pytest.approx(0.20) and curve[20] == pytest.approx(e20)
    spreads = [0.3 * (e - curve[0]) for e in curve]  # error bars that widen with k, as in Fig. 5(a)
    net = _curve_net("residual", curve)
    for m, sp in zip(net["multi"], spreads[1:], strict=True):
        m["errors"] = (np.array(m["errors"]) + np.linspace(-sp, sp, 20)).tolist()
    s = smoothness([net])
    assert s["status"] == "smooth" and s["ks"] == list(range(1, 21))
    # by hand: the steepest step of a convex curve is its last, 19 -> 20, per block of the rise
    share = (curve[20] - curve[19]) / (curve[20] - curve[0])
    assert (s["steepest"]["from"], s["steepest"]["to"]) == (19, 20)
    assert s["steepest"]["share_per_block"] == pytest.approx(share) and share < 0.2
    # measured only at some ks (the study's --ks), the same curve is still smooth
    sparse = _curve_net("residual", curve)
    sparse["multi"] = [m for m in sparse["multi"] if m["k"] in (1, 2, 5, 10, 15, 20)]
    assert smoothness([sparse])["status"] == "smooth"


def test_a_cliff_is_not_smooth():
    """Flat, then one deleted block takes the error to chance: the step 4 -> 5 carries 0.79 of the
    whole rise of 0.83 (95%), where the rule allows half."""
    cliff = [0.07, 0.07, 0.08, 0.08, 0.09, 0.88, 0.89, 0.90, 0.90]
    s = smoothness([_curve_net("residual", cliff, spread=0.01)])
    assert s["status"] == "cliff" and (s["steepest"]["from"], s["steepest"]["to"]) == (4, 5)
    assert s["steepest"]["share_per_block"] == pytest.approx(0.79 / 0.83)
    plain = smoothness([_curve_net("plain", [0.07, 0.9, 0.9, 0.9, 0.9])], "plain")
    assert plain["status"] == "cliff" and plain["steepest"]["share_per_block"] == pytest.approx(1.0)


def test_a_fall_beyond_the_spread_is_not_smooth_and_one_within_it_is_forgiven():
    falls = [0.07, 0.10, 0.15, 0.30, 0.20, 0.35, 0.45]  # 10 pp down from k = 3 to 4
    s = smoothness([_curve_net("residual", falls, spread=0.01)])
    # tolerance by hand: se = std(20 evenly spread over +-0.01, ddof=1) / sqrt(20) at both ks
    se = np.std(np.linspace(-0.01, 0.01, 20), ddof=1) / math.sqrt(20)
    assert s["worst_fall"]["tolerance"] == pytest.approx(max(2 * math.sqrt(2) * se, 0.005))
    assert s["status"] == "not_monotone" and (s["worst_fall"]["from"], s["worst_fall"]["to"]) == (
        3,
        4,
    )
    assert s["worst_fall"]["fall"] == pytest.approx(0.10)
    # a 0.3 pp dip is below the 0.5 pp floor: forgiven
    dip = [0.07, 0.08, 0.10, 0.097, 0.13, 0.16, 0.20]
    assert smoothness([_curve_net("residual", dip)])["status"] == "smooth"


def test_the_seed_spread_widens_the_tolerance():
    """A 3 pp fall of the mean is noise between two seeds 10 pp apart, and real for one net."""
    a = [0.07, 0.10, 0.20, 0.30, 0.26, 0.40, 0.60]
    b = [0.07, 0.08, 0.12, 0.20, 0.18, 0.30, 0.50]  # mean at k = 3 -> 4: 0.25 -> 0.22
    two = [_curve_net("residual", a, sets=1), _curve_net("residual", b, sets=1)]
    s = smoothness(two)
    se3 = np.std([0.30, 0.20], ddof=1) / math.sqrt(2)  # 0.05; at k = 4, 0.04 / sqrt(2)
    se4 = np.std([0.26, 0.18], ddof=1) / math.sqrt(2)
    assert 0.03 < 2 * math.hypot(se3, se4)  # by hand: the fall is inside the seeds' band (12.8 pp)
    assert s["status"] == "smooth"
    one = [0.07, 0.09, 0.16, 0.25, 0.22, 0.35, 0.55]  # the same means, one net, no spread
    s = smoothness([_curve_net("residual", one, sets=1)])
    assert s["status"] == "not_monotone" and s["worst_fall"]["tolerance"] == 0.005  # the floor
    assert (s["worst_fall"]["from"], s["worst_fall"]["to"]) == (3, 4)


@pytest.mark.parametrize(
    "nets, status",
    [
        ([_curve_net("residual", [0.07, 0.071, 0.07, 0.072, 0.071])], "no_rise"),
        ([_curve_net("residual", [0.07, 0.071, 0.07, 0.072, 0.069])], "no_rise"),  # ends lower
        ([_curve_net("residual", [0.07, 0.1, 0.2, 0.4])], "insufficient"),  # 3 ks, 4 needed
        ([_curve_net("plain", [0.07, 0.9, 0.9, 0.9, 0.9])], "insufficient"),  # no residual net
    ],
)
def test_smoothness_cannot_judge_a_flat_or_short_curve(nets, status):
    assert smoothness(nets)["status"] == smoothness_verdict(nets).status == status


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """The toy study folder (a trained plain/residual pair, lesioned) and its summary."""
    out = tmp_path_factory.mktemp("lesion")
    return out / "toy", run(make_config("digits", out=str(out), name="toy", **STUDY.toy))


def test_toy_lesions_every_block_of_both_nets(toy):
    study, summary = toy
    nets = runs.read_json(study / LESIONS)["nets"]
    assert sorted(n["arch"] for n in nets) == ["plain", "residual"]
    for n in nets:  # the intact net evaluated here reproduces the training engine's own test error
        assert n["intact_error"] == pytest.approx(n["trained_test_error"], abs=1e-12)
        assert n["blocks"] == 3 and all(s["error"] is not None for s in n["single"])
        assert [m["k"] for m in n["multi"]] == [1, 2, 3] and len(n["multi"][-1]["errors"]) == 1
    assert summary["verdict"]["status"] in ("shown", "not_shown", "plain_robust_too")
    residual = summary["verdict"]["residual"]  # judged on every block of the residual net
    assert residual["deletable"] == residual["blocks"] == 3 and summary["diverged"] == []
    assert summary["verdict"]["unlike"] == {"blocks": {}, "recipe": {}, "recipe_known": True}
    assert all(n["recipe"]["lr"] == summary["recipe"]["lr"] for n in nets)
    smooth = summary["smoothness"]  # ks 1..3 of 3 blocks: too few to judge a shape
    assert smooth["status"] == "insufficient" and smooth["residual"]["ks"] == [1, 2, 3]
    assert smooth["thresholds"]["min_ks"] == 4
    assert smooth["text"] in (study / runs.REPORT).read_text().replace("&#x27;", "'")
    assert "smoothness: insufficient" in format_table(summary)


def test_from_runs_lesions_the_same_weights(toy, tmp_path):
    study, _ = toy
    nets = runs.read_json(study / LESIONS)["nets"]
    res = str(study / next(n["run_dir"] for n in nets if n["arch"] == "residual"))
    args = ["lesion", "--from", res, "--samples", "1", "--ks", "1", "--num-threads", "1"]
    assert cli([*args, "--out", str(tmp_path)]) == 0
    folder = tmp_path / "from-runs"  # the default name when run folders are given
    again = runs.read_json(folder / LESIONS)["nets"]
    assert again[0]["single"] == next(n for n in nets if n["arch"] == "residual")["single"]
    assert build_report(folder) == folder / runs.REPORT


def test_diverged_net_is_named_and_not_lesioned(toy, tmp_path):
    """The one divergence policy: the study goes on, the diverged net is recorded and named."""
    study, first = toy
    folder = tmp_path / "div"
    shutil.copytree(study / runs.RUNS / "residual-s0", folder / runs.RUNS / "residual-s0")
    plain = folder / runs.RUNS / "plain-s0"
    shutil.copytree(study / runs.RUNS / "plain-s0", plain)
    (plain / runs.WEIGHTS).unlink()
    diverged = {"name": "plain-s0", "model": "plainmlp-8", "status": "diverged", "steps": 30}
    runs.write_json(
        plain / runs.SUMMARY, diverged | {"diverged_at_step": 30, "last_finite_loss": 2.5}
    )
    for run_dir in folder.glob(f"{runs.RUNS}/*"):  # the copies resume in their new place
        config = runs.read_config(run_dir) | {"out": str(folder / runs.RUNS)}
        runs.write_json(run_dir / runs.CONFIG, config)
    summary = run(make_config("digits", out=str(tmp_path), name="div", **STUDY.toy))
    assert [n["arch"] for n in summary["nets"]] == ["residual"]
    d = summary["diverged"]
    assert d == [dict(run_dir="runs/plain-s0", model="plainmlp-8", arch="plain", seed=0, step=30,
                      last_finite_loss=2.5)]  # fmt: skip
    robust = first["verdict"]["status"] != "not_shown"
    assert summary["verdict"]["status"] == ("residual_robust" if robust else "not_shown")
    assert summary["verdict"]["residual"] == first["verdict"]["residual"]
    assert diverged_name(d[0]) in summary["verdict"]["text"]  # named, with its step and loss
    assert "plain-s0" in (folder / runs.REPORT).read_text()


def test_bad_options_fail_before_any_work(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        make_config("digits", runs=(str(tmp_path),), out=str(tmp_path))
    with pytest.raises(ValueError, match="ks"):
        make_config("digits", ks=(0,), out=str(tmp_path))
    with pytest.raises(ValueError, match="depth"):
        make_config("digits", residual="resmlp-7", out=str(tmp_path))
    assert not any(tmp_path.iterdir())
    for preset in ("cpu", "paper"):  # CIFAR nets take no width: the presets must not pass one
        assert make_config(preset, out=str(tmp_path)).width == 0
