"""Feature extraction (timm semantics): `forward_intermediates`, `features_only`, `feature_info`.

References: torchvision's `create_feature_extractor` on torchvision's own ResNets with the same
weights (ImageNet family), and forward hooks on the modules `feature_info` names during the ordinary
forward pass (every family, plain twins included).
"""

import pickle

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torchvision.models.feature_extraction import create_feature_extractor

from reslab.models import create_model, load_weights
from reslab.models.features import take_indices

# every family, its plain twin, each shortcut option, both pre-activation blocks
NAMES = [
    ("resnet-8", {}),  # CIFAR, option A
    ("resnet-14", {"shortcut": "C"}),
    ("plain-8", {}),
    ("resnet18", {}),  # ImageNet, option B
    ("plain18", {}),
    ("preact_resnet-8", {"shortcut": "A"}),
    ("preact_resnet-11", {}),  # bottlenecks
    ("preact_plain-11", {}),
    ("resmlp-6", {}),
    ("plainmlp-6", {}),
]
IDS = [n + "".join(f"-{v}" for v in kw.values()) for n, kw in NAMES]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def build(name: str, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(name, img_size=8, **kw).eval()


def example(model: torch.nn.Module) -> torch.Tensor:
    """2 x 3 x 32 x 32 for ImageNet nets (last stage 1x1), 2 x 3 x 8 x 8 otherwise."""
    size = 32 if model.default_cfg["family"] == "imagenet" else 8
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))


def hooked(model: torch.nn.Module, x: torch.Tensor) -> tuple[list, list, torch.Tensor]:
    """By forward hooks during model(x): the output of each module `feature_info` names (first
    call), each block's input, and the input of the classifier's pooling (or of fc for an MLP)."""
    feats, inputs, head = {}, [], []
    hooks = [
        model.get_submodule(f["module"]).register_forward_hook(
            lambda m, a, out, i=i: feats.setdefault(i, out.clone())
        )
        for i, f in enumerate(model.feature_info)
    ]
    hooks += [
        b.register_forward_pre_hook(lambda m, a: inputs.append(a[0]))
        for b in model.residual_blocks()
    ]
    pool = getattr(model, "avgpool", model.fc)
    hooks.append(pool.register_forward_pre_hook(lambda m, a: head.append(a[0])))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return [feats[i] for i in range(len(feats))], inputs, head[0]


@pytest.mark.parametrize("name, kw", NAMES, ids=IDS)
def test_stage_features_match_hooks(name, kw):
    model = build(name, **kw)
    x = example(model)
    feats, inputs, head_in = hooked(model, x)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        normed = model.forward_intermediates(x, norm=True, intermediates_only=True)
        logits = model.forward_head(final)
    assert len(inter) == len(model.feature_info) == len(feats)
    for i, (a, b) in enumerate(zip(inter, feats, strict=True)):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=f"point {i}")
    torch.testing.assert_close(final, head_in, rtol=0, atol=0)
    torch.testing.assert_close(logits, model(x), rtol=0, atol=0)
    # norm=True: the last point is what the classifier pools (pre-activation nets: after the final
    # norm+ReLU; the other nets have no final norm)
    torch.testing.assert_close(normed[-1], head_in, rtol=0, atol=0)
    # feature_info: channels and reduction = input size / feature size
    h = x.shape[-1]
    for f, t in zip(model.feature_info, inter, strict=True):
        assert t.shape[1] == f["num_chs"]
        assert (t.dim() == 2 and f["reduction"] == 1) or h // t.shape[-1] == f["reduction"]


@pytest.mark.parametrize("name, kw", NAMES, ids=IDS)
def test_block_features_are_block_inputs(name, kw):
    """level="block": point l is the input of block l + 1, so the gradient with respect to a block
    input needs no hooks; it equals the one taken through hooks on the same forward computation."""
    model = build(name, **kw)
    x = example(model)
    _, inputs, _ = hooked(model, x)
    final, inter = model.forward_intermediates(x, level="block")
    blocks = model.residual_blocks()
    assert len(inter) == len(blocks) + 1
    for a, b in zip(inter[:-1], inputs, strict=True):
        torch.testing.assert_close(a.detach(), b, rtol=0, atol=0)

    y = torch.tensor([1, 2])
    grads = torch.autograd.grad(F.cross_entropy(model.forward_head(final), y), inter[:-1])
    taken = []
    hooks = [b.register_forward_pre_hook(lambda m, a: taken.append(a[0])) for b in blocks]
    loss = F.cross_entropy(model(x), y)
    for h in hooks:
        h.remove()
    for a, b in zip(grads, torch.autograd.grad(loss, taken), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("depth", [18, 50])
def test_imagenet_features_match_torchvision(depth):
    """Same weights in torchvision's ResNet: torchvision's feature extractor gives the same maps."""
    torch.manual_seed(0)
    tv = getattr(torchvision.models, f"resnet{depth}")()
    with torch.no_grad():  # non-trivial batch-norm statistics, so eval mode is a real test
        for m in tv.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.normal_(1, 0.1)
                m.bias.normal_(0, 0.1)
    tv.eval()
    nodes = ["relu", "layer1", "layer2", "layer3", "layer4"]
    reference = create_feature_extractor(tv, return_nodes=nodes)
    model = load_weights(create_model(f"resnet{depth}"), tv.state_dict()).eval()
    features = create_model(f"resnet{depth}", features_only=True, out_indices=(0, 2, -1)).eval()
    load_weights(features.model, tv.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = list(reference(x).values())
        final, got = model.forward_intermediates(x)
        picked = features(x)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(final, want[-1], rtol=1e-5, atol=1e-5)
    for a, i in zip(picked, (0, 2, 4), strict=True):
        torch.testing.assert_close(a, want[i], rtol=1e-5, atol=1e-5)
    assert features.feature_info.channels() == {18: [64, 128, 512], 50: [64, 512, 2048]}[depth]
    assert features.feature_info.reduction() == [2, 8, 32]
    assert features.feature_info.module_name() == ["relu", "layer2", "layer4"]


@pytest.mark.parametrize("name, kw", NAMES, ids=IDS)
def test_features_only(name, kw):
    features = build(name, features_only=True, out_indices=(1, -1), **kw)
    model = features.model
    x = example(model)
    feats, _, head_in = hooked(model, x)
    with torch.no_grad():
        out = features(x)
    assert isinstance(out, list) and len(out) == 2
    # timm: pre-activation nets give their last stage after the final norm+ReLU, as pooled
    torch.testing.assert_close(out[0], feats[1], rtol=0, atol=0)
    torch.testing.assert_close(out[1], head_in, rtol=0, atol=0)
    assert features.feature_info.channels() == [t.shape[1] for t in out]
    assert features.feature_info == [model.feature_info[1], model.feature_info[-1]]
    assert features.model_name == name and features.default_cfg["features_only"] is True
    clone = pickle.loads(pickle.dumps(features))
    with torch.no_grad():
        torch.testing.assert_close(clone(x), out)


def test_intermediates_only_stops_early():
    model = build("resnet-8")
    ran = []
    model.layer3.register_forward_hook(lambda *a: ran.append(True))
    feats = model.forward_intermediates(example(model), indices=[1], intermediates_only=True)
    assert len(feats) == 1 and feats[0].shape == (2, 16, 8, 8) and not ran
    model.forward_intermediates(example(model), indices=[1])
    assert ran  # the final features need every stage


def test_take_indices_follows_timm():
    assert take_indices(5, None) == [0, 1, 2, 3, 4]
    assert take_indices(5, 2) == [3, 4]  # an int: the last n
    assert take_indices(5, [-1, 0]) == [0, 4]  # negative from the end, in forward order
    for bad in (6, [5], [-6]):
        with pytest.raises(ValueError, match="feature points"):
            take_indices(5, bad)
    with pytest.raises(ValueError, match="level"):
        build("resnet-8").forward_intermediates(torch.randn(1, 3, 8, 8), level="layer")
    with pytest.raises(ValueError, match="features_only"):
        create_model("resnet-8", out_indices=(1,))
