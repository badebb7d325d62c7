"""The gradients study: its measures against independent computations, its verdict on constructed
numbers, and what only this study does (init-only measurement of a diverged net, adding depths).
The toy run end to end, the report rebuilt from the folder and the CLI are tested for every study in
test_registry.py."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reslab import create_model
from reslab.studies.gradients import STUDY, make_config, run
from reslab.studies.gradients.measure import (
    autocorrelation,
    gradient_norms,
    line_gradients,
    neighbour_correlation,
)
from reslab.studies.gradients.report import MEASUREMENTS, verdict
from reslab.training import runs


def _tiny(name: str):
    """A tiny net and two random batches; (model, batches, prefix) where prefix(x) is the input of
    the first block, written out by hand from the model's parts."""
    torch.manual_seed(0)
    if "mlp" in name:
        model = create_model(name, num_classes=5, in_chans=1, img_size=4, width=8)
        prefix = lambda x: model.stem(x.flatten(1))  # noqa: E731
        x_shape = (16, 1, 4, 4)
    else:
        model = create_model(name, num_classes=5, in_chans=3)
        prefix = lambda x: torch.relu(model.bn1(model.conv1(x)))  # noqa: E731
        x_shape = (4, 3, 8, 8)
    batches = [(torch.randn(*x_shape), torch.randint(0, 5, (x_shape[0],))) for _ in range(2)]
    return model.train(), batches, prefix


@pytest.mark.parametrize("name", ["plainmlp-6", "resmlp-6", "plain-8", "resnet-8"])
def test_gradient_norms_match_direct_autograd(name):
    model, batches, prefix = _tiny(name)
    got = gradient_norms(model, batches)

    # weight layers: each weight's gradient on its own, from a fresh forward pass
    if "mlp" in name:
        names = ["stem.0", *[f"layers.{i}.fc{j}" for i in range(2) for j in (1, 2)], "fc"]
    else:
        names = ["conv1", *[f"layer{s}.0.conv{j}" for s in (1, 2, 3) for j in (1, 2)], "fc"]
    assert got["weight_names"] == names
    want = []
    for n in names:
        weight = model.get_submodule(n).weight
        norms = [
            torch.autograd.grad(F.cross_entropy(model(x), y), weight)[0].norm() for x, y in batches
        ]
        want.append(torch.stack(norms).mean().item())
    np.testing.assert_allclose(got["weight_norms"], want, rtol=1e-5)

    # block inputs: run the net up to block l without autograd, make that activation a leaf,
    # and differentiate the rest of the forward pass with respect to it
    blocks = model.residual_blocks()
    want = []
    for i in range(len(blocks)):
        norms = []
        for x, y in batches:
            with torch.no_grad():
                a = prefix(x)
                for b in blocks[:i]:
                    a = b(a)
            a.requires_grad_()
            h = a
            for b in blocks[i:]:
                h = b(h)
            loss = F.cross_entropy(model.forward_head(h), y)
            norms.append(torch.autograd.grad(loss, a)[0].norm())
        want.append(torch.stack(norms).mean().item())
    np.testing.assert_allclose(got["block_input_norms"], want, rtol=1e-5)
    assert len(want) == len(blocks) > 0


def test_line_gradients_match_finite_differences():
    torch.manual_seed(0)
    model = create_model("resmlp-6", num_classes=3, in_chans=1, img_size=4, width=8).double()
    model.eval()
    x_a, x_b = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    g, grads = line_gradients(model, x_a, x_b, unit=2, points=9, chunk=4)
    assert g.shape == (9,) and grads.shape == (9, 16)
    h = 1e-6

    def f(t: float) -> float:
        with torch.no_grad():
            return model((x_a + t * (x_b - x_a))[None])[0, 2].item()

    fd = [(f(t + h) - f(t - h)) / (2 * h) for t in np.linspace(0, 1, 9)]
    np.testing.assert_allclose(g.numpy(), fd, rtol=1e-5, atol=1e-8)
    with pytest.raises(ValueError, match="eval mode"):
        line_gradients(model.train(), x_a, x_b, unit=0, points=4)


def test_autocorrelation_against_numpy():
    rng = np.random.default_rng(0)
    white = rng.standard_normal(256)
    brown = np.cumsum(white)  # a random walk: the paper's "brown noise"
    for seq in (white, brown):
        s = seq - seq.mean()
        full = np.correlate(s, s, mode="full")[len(s) - 1 :] / (s @ s)
        np.testing.assert_allclose(autocorrelation(torch.tensor(seq), 10).numpy(), full[:11])
    assert abs(autocorrelation(torch.tensor(white), 1)[1]) < 0.2
    assert autocorrelation(torch.tensor(brown), 1)[1] > 0.9
    assert torch.equal(autocorrelation(torch.ones(8), 3), torch.ones(4, dtype=torch.float64))


def test_neighbour_correlation_against_numpy():
    grads = torch.randn(6, 20, generator=torch.Generator().manual_seed(0))
    want = np.mean([np.corrcoef(grads[i], grads[i + 1])[0, 1] for i in range(5)])
    assert neighbour_correlation(grads) == pytest.approx(want, abs=1e-12)
    row = torch.randn(20)
    assert neighbour_correlation(torch.stack([row, -row, row])) == pytest.approx(-1.0)


@pytest.mark.slow
def test_toy_measures_each_net_and_a_rerun_adds_a_depth(tmp_path):
    toy = {**STUDY.toy, "depths": (2,)}
    summary = run(make_config("digits", out=str(tmp_path), name="toy", **toy))
    study = tmp_path / "toy"
    assert {(n["arch"], n["depth"]) for n in summary["nets"]} == {("plain", 2), ("residual", 2)}
    before = (study / "runs" / "plain-2-s0" / runs.SUMMARY).read_bytes()

    # a rerun may add a depth (finished runs are not retrained), not change the measurement
    again = run(make_config("digits", out=str(tmp_path), name="toy", **{**toy, "depths": (4,)}))
    assert {(n["arch"], n["depth"]) for n in again["nets"]} == {
        (a, d) for a in ("plain", "residual") for d in (2, 4)
    }
    assert runs.read_json(study / runs.STUDY)["depths"] == [2, 4]
    assert (study / "runs" / "plain-2-s0" / runs.SUMMARY).read_bytes() == before
    for n in again["nets"]:
        assert n["train_status"] == "completed" and n["init"] and n["trained"]
        assert -1 <= n["init"]["acf1"] <= 1
        assert runs.is_finished(study / n["run_dir"])
    record = runs.read_json(study / MEASUREMENTS / "residual-4.json")
    assert len(record["phases"]["init"]["weight_norms"]) == 4  # depth = weight layers
    assert len(record["phases"]["init"]["block_input_norms"]) == 1
    assert len(record["phases"]["trained"]["acf"]) == toy["max_lag"] + 1
    with pytest.raises(ValueError, match="other settings"):
        run(make_config("digits", out=str(tmp_path), name="toy", **{**toy, "iters": 6}))


def test_diverged_net_is_measured_at_init_only_and_named(tmp_path, capsys):
    toy = {**STUDY.toy, "depths": (2,), "archs": ("plain",)}
    toy["train"] = {**toy["train"], "lr": 1e30}
    summary = run(make_config("digits", out=str(tmp_path), name="div", **toy))
    (net,) = summary["nets"]
    assert net["train_status"] == "diverged" and net["init"] and net["trained"] is None
    run_summary = runs.read_summary(tmp_path / "div" / net["run_dir"])
    assert run_summary["status"] == "diverged"
    named = f"plain-2-s0 at step {run_summary['diverged_at_step']} (last finite loss"
    assert named in summary["verdict"]["text"]
    assert summary["verdict"]["status"] == "insufficient"  # as before: no residual net measured


def test_bad_options_fail_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="depth"):
        make_config("digits", depths=(3,), out=str(tmp_path))
    with pytest.raises(ValueError, match="family"):
        make_config("digits", family="vgg", out=str(tmp_path))
    with pytest.raises(ValueError, match="points"):
        make_config("digits", points=8, max_lag=32, out=str(tmp_path))
    assert not any(tmp_path.iterdir())


def _entry(arch, depth, first, last, acf1s):
    init = dict(
        loss=2.3,
        weight_ratio=first / last,
        block_input_ratio=1.0,
        acf1=float(np.mean(acf1s)),
        acf1_std=float(np.std(acf1s, ddof=1)),
        acf1_lines=len(acf1s),
        neighbour_corr=0.5,
    )
    return dict(arch=arch, depth=depth, init=init, trained=None)


def test_verdict_follows_the_numbers():
    shattered = [
        _entry("plain", 8, 1.0, 1.0, [0.90, 0.92]),
        _entry("plain", 64, 1e6, 1.0, [0.01, -0.02]),
        _entry("residual", 8, 1.0, 1.0, [0.95, 0.93]),
        _entry("residual", 64, 3.0, 1.0, [0.80, 0.84]),
    ]
    v = verdict(shattered)
    assert v["status"] == "shown"
    assert (
        v["drift"]["plain_orders"] == pytest.approx(6)
        and v["drift"]["plain_direction"] == "explode"
    )
    assert v["shattering"]["margin"] == pytest.approx((0.91 + 0.005) - (0.94 - 0.82))
    same = [dict(e, arch=a) for a in ("plain", "residual") for e in shattered[2:]]
    assert verdict(same)["status"] == "not_shown"
    assert verdict(shattered[:2])["status"] == "insufficient"
