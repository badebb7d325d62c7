"""`evaluate_weights` normalises as the weights were trained: a pixel-mean run evaluates to its own
final test numbers, from the normalisation its weights file records (tests/test_load_run.py: run
folders, contradicting flags, older files)."""

from __future__ import annotations

import pytest
import torch

from reslab.data import ImageData
from reslab.models import create_model, list_models
from reslab.training import TrainConfig, train
from reslab.training.build import load_data
from reslab.training.evaluation import curve_every, curve_subset, evaluate, inference_net
from reslab.training.runs import read_metrics
from reslab.training.trained import evaluate_weights, load_run


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


# ------------------------------------------------------------------ curve points and the fast path

ALL = [n for n in list_models() if not n.endswith(("1202", "1001"))]  # their siblings: same classes


def _images(n: int, c: int = 3, size: int = 32, classes: int = 10) -> ImageData:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, c, size, size), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, classes, (n,), generator=g)
    return ImageData(images, labels, tuple("abcdefghij")[:classes], (0.5,) * c, (0.25,) * c, "toy")


def _trained_looking(model: torch.nn.Module) -> torch.nn.Module:
    """Batch norms with running statistics and affine parameters away from their initial values, so
    that folding them changes every weight it touches."""
    torch.manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model.eval()


def test_curve_subset_is_fixed_and_declared():
    a, b = curve_subset(10000, 1000), curve_subset(10000, 1000)
    assert torch.equal(a, b)  # the same images at every point and in every run
    assert (
        len(a.unique()) == 1000
        and torch.equal(a, a.sort().values)
        and 0 <= a.min() < a.max() < 10000
    )
    assert torch.equal(
        curve_subset(10000, 500), curve_subset(10000, 1000)[torch.isin(a, curve_subset(10000, 500))]
    )
    assert curve_subset(355, 1000) is None and curve_subset(355, 0) is None  # the whole split


def test_curve_points_are_spaced_by_their_cost():
    # 1,000 images a point, batch 128: one point per 1000 / (0.05 * 3 * 128) = 52.1 steps at most
    assert curve_every(60, 128, 1000) == 53  # a 60-step run: one point in the loop, one at the end
    assert curve_every(1173, 128, 1000) == 58  # 3 CIFAR epochs: about 20 points, as before
    assert curve_every(1980, 128, 355) == 99  # the digits recipe: 20 points
    assert curve_every(1173, 128, 51000) == 2657  # the whole training set at each point: rare
    assert curve_every(5, 128, 10) == 1


def test_curve_points_score_the_subset_and_the_final_evaluation_the_whole_sets(tmp_path):
    """Curve points score the declared subset (test_n, val_n), the final line and the summary the
    whole splits; the last curve point is the subset's score of the final weights, from the same
    pass as the final evaluation."""
    cfg = TrainConfig(
        model="resmlp-4", data="digits", iters=30, batch_size=64, eval_every=10, log_every=10,
        val_size=200, eval_subset=100, out=str(tmp_path), name="sub", progress=False,
        num_threads=1,
    )  # fmt: skip
    s = train(cfg)
    lines = read_metrics(tmp_path / "sub")
    evals = [x for x in lines if x["kind"] == "eval"]
    assert [x["step"] for x in evals] == [10, 20, 30]
    assert all(x["test_n"] == 100 and x["val_n"] == 100 for x in evals)
    assert all(round(x["test_error"] * 100, 9) % 1 == 0 for x in evals)  # errors over 100 images
    assert "train_eval_error" not in evals[0]

    model, _ = load_run(tmp_path / "sub")
    train_data, test_data, _ = load_data(cfg)
    whole = evaluate(model, test_data, mean=train_data.mean, std=train_data.std)
    assert whole["n"] == 355 and s["final_test_error"] == pytest.approx(whole["error"])
    assert s["final_test_loss"] == pytest.approx(whole["loss"], rel=1e-5)
    part = evaluate(
        model, test_data.subset(curve_subset(355, 100)), mean=train_data.mean, std=train_data.std
    )
    assert evals[-1]["test_error"] == pytest.approx(part["error"])
    assert evals[-1]["test_loss"] == pytest.approx(part["loss"], rel=1e-5)
    assert {"curve_eval_s", "final_eval_s", "checkpoint_s"} <= s.keys()


def test_eval_train_scores_the_whole_training_set_at_every_point(tmp_path):
    """The degradation study's convergence gate reads full-set training points: eval_train keeps
    them whole whatever eval_subset says, and the last one is the final training error itself."""
    cfg = TrainConfig(
        model="resmlp-4", data="digits", iters=20, batch_size=64, eval_every=10, log_every=10,
        eval_train=True, eval_subset=50, out=str(tmp_path), name="tr", progress=False,
        num_threads=1,
    )  # fmt: skip
    s = train(cfg)
    evals = [x for x in read_metrics(tmp_path / "tr") if x["kind"] == "eval"]
    assert [x["train_eval_n"] for x in evals] == [1442, 1442] and evals[0]["test_n"] == 50
    assert evals[-1]["train_eval_error"] == s["final_train_error"]


@pytest.mark.parametrize("name", ALL)
def test_folded_evaluation_equals_the_unfused_model(name, one_thread):
    """Every registered net evaluates the same with its batch norms folded (fp32): logits within
    1e-4 of their scale, so the same loss and, away from near-ties, the same predictions."""
    torch.manual_seed(0)
    mlp = "mlp" in name
    data = _images(48, c=1 if mlp else 3, size=8 if mlp else 32)
    model = _trained_looking(
        create_model(
            name, num_classes=10, in_chans=data.images.shape[1], img_size=data.images.shape[2]
        )
    )
    x = (data.images.float() / 255 - 0.5) / 0.25
    with torch.inference_mode():
        net = inference_net(model, x)
        ref, got = model(x), net(x)
    has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert (net is not model) == has_bn, "every net with batch norm after a layer folds"
    if has_bn and not name.startswith("preact"):  # pre-activation: the norms before convs stay
        assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules())
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-4 * ref.abs().max().item())
    a, b = evaluate(model, data, 16, fold=True), evaluate(model, data, 16, fold=False)
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-4) and a["n"] == b["n"] == 48


def test_folded_net_follows_the_live_weights_and_structure(one_thread):
    """Folded weights are recomputed at each evaluation (training changes them); a swapped module
    (a lesioned block) retraces; a hooked model runs as it is, hooks and all."""
    model = _trained_looking(create_model("resnet-8", num_classes=10))
    data = _images(16)
    before = evaluate(model, data, 16)
    with torch.no_grad():
        model.bn1.weight.mul_(3.0)
        model.bn1.running_mean.add_(0.3)
    after, unfused = evaluate(model, data, 16), evaluate(model, data, 16, fold=False)
    assert after["loss"] != pytest.approx(before["loss"], rel=1e-3)
    assert after["loss"] == pytest.approx(unfused["loss"], rel=1e-4)

    block = model.layer2[0]
    model.layer2[0] = _Same(block)
    assert evaluate(model, data, 16)["loss"] == pytest.approx(
        evaluate(model, data, 16, fold=False)["loss"], rel=1e-4
    )
    model.layer2[0] = block

    seen = []
    handle = model.layer1.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    x = (data.images.float() / 255 - 0.5) / 0.25
    assert inference_net(model, x) is model
    evaluate(model, data, 16)
    assert seen, "the hook ran"
    handle.remove()
    assert inference_net(model, x) is not model


class _Same(torch.nn.Module):
    """A block replaced by its shortcut path (what the lesion study swaps in)."""

    def __init__(self, block):
        super().__init__()
        self.block = block

    def forward(self, x):
        return self.block.shortcut_path(x)


def test_a_net_that_does_not_trace_is_evaluated_as_it_is(one_thread):
    class Branchy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = torch.nn.Conv2d(3, 10, 3), torch.nn.BatchNorm2d(10)

        def forward(self, x):
            y = self.bn(self.conv(x)).mean((2, 3))
            return y if y.sum() > 0 else -y  # control flow on values: fx cannot trace it

    model = _trained_looking(Branchy())
    x = torch.randn(4, 3, 8, 8)
    assert inference_net(model, x) is model
