"""reslab.landscape against independent computations: filter norms read off the model, the loss of a
linear classifier written out by hand, and the full Hessian of a small net from torch.autograd."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reslab.landscape import directions, hessian_extremes, surface
from reslab.models import create_model


def _twins():
    torch.manual_seed(0)
    plain = create_model("plainmlp-6", num_classes=10, in_chans=1, img_size=8, width=16)
    residual = create_model("resmlp-6", num_classes=10, in_chans=1, img_size=8, width=16)
    return plain, residual


def _data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_directions_are_filter_normalised_and_zero_on_biases_and_norms():
    plain, _ = _twins()
    d1, d2 = directions(plain, seed=3)
    for name, w in plain.named_parameters():
        if w.dim() <= 1:  # biases, batch-norm weights and biases
            assert torch.count_nonzero(d1[name]) == 0 and torch.count_nonzero(d2[name]) == 0
            continue
        for d in (d1, d2):
            torch.testing.assert_close(
                d[name].flatten(1).norm(dim=1), w.detach().flatten(1).norm(dim=1)
            )
    assert not torch.allclose(d1["fc.weight"], d2["fc.weight"])  # two different directions


def test_plain_and_residual_twins_are_cut_along_the_same_directions():
    plain, residual = _twins()
    dp, dr = directions(plain, seed=7)[0], directions(residual, seed=7)[0]
    assert dp.keys() == dr.keys()
    for name, w in plain.named_parameters():
        if w.dim() > 1:  # the same unit vector per filter, scaled to each twin's own filter
            unit = lambda d: d.flatten(1) / d.flatten(1).norm(dim=1, keepdim=True)  # noqa: E731
            torch.testing.assert_close(unit(dp[name]), unit(dr[name]))
    assert not torch.equal(dp["layers.0.fc1.weight"], dr["layers.0.fc1.weight"])  # other norms


def test_the_centre_is_the_model_own_loss_and_the_weights_are_left_alone():
    _, residual = _twins()
    x, y = _data()
    before = {k: v.clone() for k, v in residual.state_dict().items()}
    tensors = dict([*residual.named_parameters(), *residual.named_buffers()])
    d1, d2 = directions(residual)
    grid = surface(residual, d1, d2, x, y, [-0.5, 0.0, 0.5], [-0.5, 0.0, 0.5], batch_size=32)
    assert residual.training  # scored in eval mode on a copy: the caller's mode is kept
    assert all(p.requires_grad for p in residual.parameters())
    for k, v in [*residual.named_parameters(), *residual.named_buffers()]:
        assert v is tensors[k], k  # the caller's own tensors, not replaced
    residual.eval()
    with torch.no_grad():
        own = sum(
            F.cross_entropy(residual(x[i : i + 32]), y[i : i + 32], reduction="sum").item()
            for i in (0, 32)
        ) / len(y)
        wrong = (residual(x).argmax(1) != y).float().mean().item()
    assert grid["loss"][1, 1] == own and grid["error"][1, 1] == wrong
    assert grid["loss"].shape == (3, 3) and np.all(grid["loss"] >= 0)
    assert grid["loss"][0, 0] != own  # off the centre the loss moves
    for k, v in residual.state_dict().items():
        assert torch.equal(v, before[k]), k


def _twin_case(name):
    """A net (resmlp-6 on 8x8 digits-sized inputs, or the conv net plain20 on 12 CIFAR-sized
    images), its data and two directions, the same for every call."""
    torch.manual_seed(0)
    if name == "plain20":
        net = create_model(name, num_classes=10)
        g = torch.Generator().manual_seed(1)
        x, y = torch.randn(12, 3, 32, 32, generator=g), torch.randint(0, 10, (12,), generator=g)
    else:
        net = create_model(name, num_classes=10, in_chans=1, img_size=8, width=16)
        x, y = _data(100)
    return (net, x, y, *directions(net, seed=2))


@pytest.mark.parametrize("name", ["resmlp-6", "plain20"])
def test_points_scored_together_match_the_loop_and_leave_the_centre_exact(name):
    net, x, y, d1, d2 = _twin_case(name)  # plain20: vmap makes each convolution a grouped one
    xs = [-1.0, -0.3, 0.0, 0.6]  # 16 points: 15 moved ones in chunks of 4, 4, 4, 3
    loop = surface(net, d1, d2, x, y, xs, xs, batch_size=40, points_at_once=1)
    together = surface(net, d1, d2, x, y, xs, xs, batch_size=40, points_at_once=4)
    np.testing.assert_allclose(together["loss"], loop["loss"], rtol=1e-5)
    np.testing.assert_array_equal(together["error"], loop["error"])
    assert together["loss"][2, 2] == loop["loss"][2, 2]  # the centre, bit for bit
    (slice_,) = surface(net, d1, None, x, y, xs, batch_size=40, points_at_once=3)["loss"]
    np.testing.assert_allclose(slice_, loop["loss"][2], rtol=1e-5)  # d2 None: the row y = 0


def _functional_loop(net, d1, d2, x, y, xs, batch_size):
    """The grid one point at a time through torch.func.functional_call: w + a d1 + b d2 as new
    tensors, the model's own untouched (surface's loop before it wrote weights in place)."""
    net.eval()
    params = {k: v.detach() for k, v in net.named_parameters()}
    buffers = dict(net.named_buffers())
    loss = np.zeros((len(xs), len(xs)))
    with torch.no_grad():
        for j, b in enumerate(xs):
            for i, a in enumerate(xs):
                moved = {k: w + a * d1[k] + b * d2[k] for k, w in params.items()}
                total = 0.0
                for start in range(0, len(y), batch_size):
                    logits = torch.func.functional_call(net, (moved, buffers), (x[start : start + batch_size],))  # fmt: skip
                    total += F.cross_entropy(logits, y[start : start + batch_size], reduction="sum").item()  # fmt: skip
                loss[j, i] = total / len(y)
    return loss


@pytest.mark.parametrize("name", ["resmlp-6", "plain20"])
def test_weights_written_in_place_match_a_functional_call_loop(name):
    net, x, y, d1, d2 = _twin_case(name)  # plain20: batch norm's running statistics in eval mode
    xs = [-1.0, -0.3, 0.0, 0.6]
    got = surface(net, d1, d2, x, y, xs, xs, batch_size=40, points_at_once=1)["loss"]
    expected = _functional_loop(net, d1, d2, x, y, xs, batch_size=40)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert got[2, 2] == expected[2, 2]  # the centre: the model's own weights, bit for bit


def test_a_slice_of_a_linear_classifier_matches_its_loss_written_out():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    x, y = _data(100, seed=2)
    (d,) = directions(model, n=1)
    xs = [-1.0, -0.25, 0.5, 1.0]
    got = surface(model, d, None, x, y, xs)["loss"][0]
    W, b = model[1].weight.detach(), model[1].bias.detach()
    for a, loss in zip(xs, got, strict=True):  # bias direction is zero: only W moves
        logits = x.flatten(1) @ (W + a * d["1.weight"]).T + b
        expected = (torch.logsumexp(logits, 1) - logits[torch.arange(100), y]).mean().item()
        assert loss == pytest.approx(expected, rel=1e-5)


def test_hessian_extremes_match_the_full_hessian_of_a_small_net():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
    x, y = torch.randn(40, 5), torch.randint(0, 3, (40,))
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss_of(flat):
        params, at = {}, 0
        for name, shape in zip(names, shapes, strict=True):
            params[name] = flat[at : at + shape.numel()].view(shape)
            at += shape.numel()
        return F.cross_entropy(torch.func.functional_call(model, params, (x,)), y)

    eig = torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss_of, flat0))
    lmax, lmin = hessian_extremes(model, x, y, tol=1e-8, maxiter=2000)
    assert lmax == pytest.approx(eig[-1].item(), rel=1e-4, abs=1e-6)
    assert lmin == pytest.approx(eig[0].item(), rel=1e-4, abs=1e-6)
    assert lmin < 0 < lmax  # a tanh net away from a minimum: curvature of both signs
