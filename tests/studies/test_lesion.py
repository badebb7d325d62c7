"""The lesion study: a deleted residual block is exactly its shortcut path (checked against forwards
written out by hand), a deleted plain block passes its input on, and the study runs end to end."""

import json

import pytest
import torch
import torch.nn.functional as F

from reslab.cli import main as cli
from reslab.models import create_model
from reslab.report import build_any
from reslab.studies.lesion import block_shapes, lesioned, make_config, random_sets, run


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matrices on a shared 2-core machine: a second thread only contends for the cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


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
    model = _eval_model(
        "preact_resnet-8", in_chans=3
    )  # shortcut B: 1x1 conv + BN where shape changes
    x = torch.randn(4, 3, 16, 16)
    with lesioned(model, [2]):
        got = model(x)
    h = model.layer2(model.layer1(model.conv1(x)))
    b = model.layer3[0]
    pre = F.relu(F.batch_norm(h, b.bn1.running_mean, b.bn1.running_var, b.bn1.weight, b.bn1.bias))
    proj, bn = b.downsample
    h = F.batch_norm(
        F.conv2d(pre, proj.weight, stride=2), bn.running_mean, bn.running_var, bn.weight, bn.bias
    )  # no activation after the addition in a pre-activation unit
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
    shapes = block_shapes(create_model("plain-8"), torch.randn(2, 3, 16, 16))
    assert [i != o for i, o in shapes] == [False, True, True]


def test_random_sets_are_distinct_and_reproducible():
    sets = random_sets(list(range(10)), [1, 3, 9, 10, 11], samples=5, seed=0)
    assert set(sets) == {1, 3, 9, 10}  # 11 > 10 blocks: left out
    assert sets[10] == [list(range(10))] and len(sets[9]) == 5
    for k, ss in sets.items():
        assert all(len(s) == k == len(set(s)) for s in ss)
        assert len({tuple(s) for s in ss}) == len(ss)
    assert sets == random_sets(list(range(10)), [1, 3, 9, 10, 11], samples=5, seed=0)
    assert len(random_sets([0, 1, 2], [1], samples=50, seed=0)[1]) == 3  # all there are


TOY = dict(residual="resmlp-8", plain="plainmlp-8", width=16, seeds=(0,), iters=40, samples=2)
TOY |= dict(jobs=1, num_threads=1, train=dict(log_every=10, eval_every=20))


def test_toy_study_end_to_end_and_from_run(tmp_path):
    summary = run(make_config("digits", out=str(tmp_path), name="toy", **TOY))
    study = tmp_path / "toy"
    for f in (
        "study.json",
        "lesions.json",
        "summary.json",
        "single.png",
        "multi.png",
        "report.html",
    ):
        assert (study / f).is_file(), f
    nets = json.loads((study / "lesions.json").read_text())["nets"]
    assert sorted(n["arch"] for n in nets) == ["plain", "residual"]
    for n in nets:  # the intact net evaluated here reproduces the training engine's own test error
        assert n["intact_error"] == pytest.approx(n["trained_test_error"], abs=1e-12)
        assert n["blocks"] == 3 and all(s["error"] is not None for s in n["single"])
        assert [m["k"] for m in n["multi"]] == [1, 2, 3] and len(n["multi"][-1]["errors"]) == 1
    assert summary["verdict"]["status"] in ("shown", "not_shown", "plain_robust_too")
    assert "residual net" in summary["verdict"]["text"]

    # the same weights through the CLI's --from path, then `reslab report` rebuilds it from the folder
    res = str(study / next(n["run_dir"] for n in nets if n["arch"] == "residual"))
    out = str(tmp_path / "from")
    args = ["lesion", "--from", res, "--samples", "1", "--ks", "1", "--num-threads", "1"]
    assert cli([*args, "--out", out]) == 0
    again = json.loads((tmp_path / "from" / "from-runs" / "lesions.json").read_text())["nets"]
    assert again[0]["single"] == next(n for n in nets if n["arch"] == "residual")["single"]
    assert build_any(tmp_path / "from" / "from-runs").name == "report.html"


def test_bad_options_fail_before_any_work(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        make_config("digits", runs=(str(tmp_path),), out=str(tmp_path))
    with pytest.raises(ValueError, match="ks"):
        make_config("digits", ks=(0,), out=str(tmp_path))
    with pytest.raises(ValueError, match="depth"):
        make_config("digits", residual="resmlp-7", out=str(tmp_path))
    assert not any(tmp_path.iterdir())
