"""Names resolve to the right architectures, and bad names or options say what is allowed."""

import dataclasses

import pytest
import torch
import torchvision
from torch import nn

from reslab.models import create_model, is_residual, list_models, registry, twin
from reslab.models.blocks import BasicBlock, Bottleneck, PreActBasicBlock, PreActBottleneck

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def meta(name: str, **kw) -> nn.Module:
    with torch.device("meta"):
        return create_model(name, **kw)


def _natural(name):  # timm's order: resnet18 before resnet101
    head = name.rstrip("0123456789")
    return head, int(name[len(head) :])


def test_registered_names():
    cifar = [20, 32, 44, 56, 110, 1202]
    imagenet = [18, 34, 50, 101, 152]
    expected = [f"{p}{d}" for p in ("resnet", "plain") for d in cifar + imagenet]
    expected += [f"{p}{d}" for p in ("preact_resnet", "preact_plain") for d in (110, 164, 1001)]
    expected += [f"{p}{d}" for p in ("resmlp", "plainmlp") for d in (4, 16, 64)]
    assert list_models() == sorted(expected, key=_natural)
    assert list_models("preact_*") == sorted(
        (n for n in expected if n.startswith("preact_")), key=_natural
    )
    assert list_models("resnet1?") == ["resnet18"]
    assert list_models("nothing*") == []


@pytest.mark.parametrize(
    "name, family, depth, blocks, block_type",
    [
        ("resnet-74", "cifar", 74, 36, BasicBlock),
        ("plain-302", "cifar", 302, 150, BasicBlock),
        ("resnet-50", "cifar", 50, 24, BasicBlock),  # the dashed form is always the CIFAR family
        ("resnet50", "imagenet", 50, 16, Bottleneck),
        ("plain152", "imagenet", 152, 50, Bottleneck),
        ("preact_resnet110", "preact", 110, 54, PreActBasicBlock),
        ("preact_resnet-20", "preact", 20, 9, PreActBasicBlock),  # 6n+2 and 9n+2: basic below 164
        ("preact_resnet-29", "preact", 29, 9, PreActBottleneck),  # only 9n+2
        ("preact_plain164", "preact", 164, 54, PreActBottleneck),
        ("preact_resnet1001", "preact", 1001, 333, PreActBottleneck),
        ("resnet-164", "cifar", 164, 54, Bottleneck),  # He et al. 2016's original ResNet-164
        ("plain-29", "cifar", 29, 9, Bottleneck),  # only 9n+2
        ("resmlp-10", "mlp", 10, 4, nn.Module),
        ("plainmlp-2", "mlp", 2, 0, nn.Module),
    ],
)
def test_names_resolve(name, family, depth, blocks, block_type):
    model = create_model(name)  # on the CPU: faster than the meta device for small nets
    cfg = model.default_cfg
    assert (model.model_name, cfg["name"], cfg["family"], cfg["depth"]) == (
        name,
        name,
        family,
        depth,
    )
    assert cfg["residual"] == ("plain" not in name)
    assert len(model.residual_blocks()) == blocks
    assert all(isinstance(b, block_type) for b in model.residual_blocks())
    # depth counts weight layers on the main path: stem, branch layers, classifier
    projections = {id(b.downsample[0]) for b in model.residual_blocks() if b.projects}
    layers = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    main_path = [m for m in layers if id(m) not in projections]
    assert len(main_path) == depth


def test_any_depth_equals_registered_depth():
    a, b = meta("resnet56"), meta("resnet-56")
    assert {k: v.shape for k, v in a.state_dict().items()} == {
        k: v.shape for k, v in b.state_dict().items()
    }


def test_preact_block_override():
    assert isinstance(meta("preact_resnet-20", block="bottleneck").layer1[0], PreActBottleneck)
    assert isinstance(meta("resnet-20", block="bottleneck").layer1[0], Bottleneck)
    assert isinstance(meta("resnet-164", block="basic").layer1[0], BasicBlock)
    with pytest.raises(ValueError, match="9n\\+2 for bottlenecks"):
        create_model("preact_resnet-29", block="basic")


def test_classes_channels_and_image_size():
    model = meta("resnet20", num_classes=100, in_chans=1)
    assert model.conv1.in_channels == 1 and model.fc.out_features == 100
    assert model.default_cfg["input_size"] == (1, 32, 32)
    mlp = meta("resmlp4", in_chans=1, img_size=28, width=32)
    assert mlp.stem[0].in_features == 784 and mlp.fc.in_features == 32
    assert meta("resmlp4", img_size=(28, 32)).stem[0].in_features == 3 * 28 * 32
    assert meta("resnet50").default_cfg["input_size"] == (3, 224, 224)
    assert meta("plain20").default_cfg["shortcut"] == "none"


@pytest.mark.parametrize(
    "name, message",
    [
        (
            "resnet-21",
            "resnet-21: CIFAR ResNet depth must be 6n+2 for basic blocks (8, 14, 20, ...) or 9n+2",
        ),
        ("plain-2", "plain-2: CIFAR ResNet depth must be 6n+2"),
        (
            "preact_resnet-23",
            "preact_resnet-23: pre-activation ResNet depth must be 6n+2 for basic",
        ),
        ("resmlp-7", "resmlp-7: residual MLP depth (weight layers = 2 * blocks + 2) must be even"),
        ("resnet21", "unknown model 'resnet21'; did you mean resnet32 or resnet20"),
        ("vgg16", "list them with `reslab models` or reslab.list_models() (any depth: resnet-N"),
        ("resnet-", "unknown model 'resnet-'"),
    ],
)
def test_bad_names(name, message):
    with pytest.raises(ValueError) as err:
        create_model(name)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_bad_overrides():
    with pytest.raises(
        ValueError, match="resnet20: unknown option\\(s\\) \\['widht'\\]; allowed: shortcut"
    ):
        create_model("resnet20", widht=8)
    with pytest.raises(ValueError, match="unknown option"):
        create_model("resnet20", width=8)  # width is an MLP option
    with pytest.raises(ValueError, match="plain20 is a plain net"):
        create_model("plain20", shortcut="B")
    assert create_model("plain20", shortcut="none").residual_blocks()[0].shortcut == "none"


@pytest.mark.parametrize("depth", [18, 50])
def test_torchvision_weights_load_by_name_and_give_the_same_output(depth):
    torch.manual_seed(0)
    reference = getattr(torchvision.models, f"resnet{depth}")(weights=None).eval()
    with torch.no_grad():  # non-trivial running statistics, so that batch norm is really compared
        for m in reference.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    model = create_model(f"resnet{depth}", num_classes=1000).eval()
    model.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x))


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
def test_imagenet_names_and_shapes_match_torchvision(depth):
    with torch.device("meta"):
        reference = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    shapes = {k: v.shape for k, v in reference.state_dict().items()}
    assert {
        k: v.shape for k, v in meta(f"resnet{depth}", num_classes=1000).state_dict().items()
    } == shapes
    plain = {k: v.shape for k, v in meta(f"plain{depth}", num_classes=1000).state_dict().items()}
    assert plain == {k: v for k, v in shapes.items() if ".downsample." not in k}


# ---- plain/residual twins ---------------------------------------------------------------------

# the 1202- and 1001-layer nets are their families' classes at depth (see test_models.py); the
# shape comparison below leaves them out to keep the suite quick, the naming checks do not
SHALLOW = [n for n in list_models() if not n.endswith(("1202", "1001"))]


def shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_twin_names():
    assert twin("resnet-20", False) == "plain-20" and twin("plain-20", True) == "resnet-20"
    assert twin("plainmlp-64", True) == "resmlp-64" and twin("resmlp64", False) == "plainmlp64"
    assert twin("preact_resnet-110", False) == "preact_plain-110"
    assert twin("resnet18", False) == "plain18"  # the ImageNet family's plain twin
    assert twin("resnet-50", False) == "plain-50"  # the dashed form is the CIFAR family
    assert twin("resnet-110+gate-shortcut", False) == "plain-110+gate-shortcut"
    assert twin("resnet20", True) == "resnet20" and twin("plain20", False) == "plain20"
    with pytest.raises(ValueError, match="unknown model 'vgg16'"):
        twin("vgg16", False)


@pytest.mark.parametrize(
    "name", [*list_models(), "resnet-74", "preact_plain-29", "resmlp-1000", "resnet-8+identity"]
)
def test_twin_is_an_involution_and_agrees_with_is_residual(name):
    residual = is_residual(name)
    assert residual == ("plain" not in name)
    assert twin(name, residual) == name
    other = twin(name, not residual)
    assert other != name and is_residual(other) == (not residual)
    assert twin(other, residual) == name
    assert ("-" in other) == ("-" in name) and other.partition("+")[2] == name.partition("+")[2]
    if "-" not in name and "+" not in name:
        assert other in list_models()


@pytest.mark.parametrize("name", SHALLOW)
def test_twins_have_the_same_parameters_but_the_projections(name):
    """Plain is the same class with the shortcut off: the same parameter names and shapes, less
    the projection shortcuts' (".downsample." keys: option B/C nets; none in option A nets)."""
    with torch.device("meta"):
        model = create_model(name)
        res, plain = create_model(twin(name, True)), create_model(twin(name, False))
    assert type(res) is type(plain) is type(model)
    assert [type(b) for b in res.residual_blocks()] == [type(b) for b in plain.residual_blocks()]
    assert shapes(model) == shapes(res if is_residual(name) else plain)
    assert is_residual(res) and not is_residual(plain)
    res_shapes, plain_shapes = shapes(res), shapes(plain)
    assert plain_shapes == {k: v for k, v in res_shapes.items() if ".downsample." not in k}
    projections = any(b.projects for b in res.residual_blocks())
    assert (len(res_shapes) > len(plain_shapes)) == projections
    # option B by default in ImageNet nets and CIFAR bottleneck nets; option A in CIFAR basic nets
    bottleneck = res.residual_blocks()[0].expansion == 4
    assert projections == (res.default_cfg["family"] == "imagenet" or bottleneck)


def test_family_without_a_plain_twin(monkeypatch):
    fam = dataclasses.replace(registry.FAMILIES[-1], plain=None)
    monkeypatch.setitem(registry._REGISTRY, "resmlp4", (fam, 4, True))
    assert twin("resmlp4", True) == "resmlp4"
    with pytest.raises(ValueError, match="resmlp4: the mlp family has no plain twin"):
        twin("resmlp4", False)


def test_is_residual_of_built_models():
    assert is_residual(create_model("resnet-8")) and not is_residual(create_model("plain-8"))
    assert is_residual(create_model("resnet-8+gate-shortcut"))
    assert is_residual(create_model("resnet-8", features_only=True))  # no residual_blocks()
    assert not is_residual(create_model("plain-8", features_only=True))
    assert not is_residual(nn.Sequential(nn.Linear(2, 2)))
