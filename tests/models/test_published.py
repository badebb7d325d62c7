"""Architectures as published: reslab's nets against the authors' code, re-implemented here layer by
layer from the official sources and run on the same weights, and parameter counts from the official
layer lists (not from reslab's code).

- Pre-activation ResNets: KaimingHe/resnet-1k-layers, resnet-pre-act.lua (bottlenecks: ResNet-164,
  ResNet-1001), and facebook/fb.resnet.torch models/preresnet.lua in its "both_preact" version
  (basic blocks: ResNet-110).
- Fixup: hongyi-zhang/Fixup, cifar/models/fixup_resnet_cifar.py and
  imagenet/models/fixup_resnet_imagenet.py.
- ReZero: tbachlechner/ReZero-examples, "ReZNet-6x_faster_ResNet_training_via_ReZero.ipynb" (the
  authors' ResNet: the ReLU moves onto the branch, x + alpha * relu(F(x))).

Where the zero channels of an option-A shortcut go is a convention: fb.resnet.torch and Fixup's
CIFAR code append them, akamaster/pytorch_resnet_cifar10 (whose CIFAR ResNets reslab reproduces,
and which the ReZero notebook copies) splits them over both sides. References that use option A
take reslab's placement, so that they check what the shortcut is fed, not where its zeros sit.
"""

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reslab.models import count_params, create_model
from reslab.models.blocks import PadShortcut
from reslab.models.scaled import Bias, Scale
from reslab.models.variants import VARIANTS, Unit

relu = torch.relu


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def meta(name: str, **kw) -> nn.Module:
    with torch.device("meta"):
        return create_model(name, **kw)


@torch.no_grad()
def randomize_(model: nn.Module, seed: int = 1) -> nn.Module:
    """Every parameter and norm statistic random (Fixup and ReZero start with zeros and ones that
    would hide a misplaced bias or multiplier), small enough to keep deep nets finite."""
    torch.manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):  # He-like scale, halved
            m.weight.normal_(0, 0.5 * (2 / m.weight[0].numel()) ** 0.5)
            if m.bias is not None:
                m.bias.uniform_(-0.3, 0.3)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.weight.uniform_(0.5, 1.5)
            m.bias.uniform_(-0.3, 0.3)
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 1.5)
        elif isinstance(m, Scale):  # ReZero's alpha, Fixup's multiplier
            m.alpha.uniform_(0.5, 1.5)
        elif isinstance(m, Bias):  # Fixup's scalar biases
            m.bias.uniform_(-0.3, 0.3)
    return model


def assert_same_outputs(model: nn.Module, ref: nn.Module, x: torch.Tensor) -> None:
    """The two nets compute the same outputs in eval mode and in train mode (batch statistics)."""
    for train in (False, True):
        model.train(train), ref.train(train)
        torch.testing.assert_close(model(x), ref(x), rtol=1e-5, atol=1e-5)


def split_pad(x: torch.Tensor, c_out: int) -> torch.Tensor:
    """Option A's zero channels, split over both sides (reslab and akamaster; see the docstring)."""
    pad = c_out - x.shape[1]
    return F.pad(x, (0, 0, 0, 0, pad // 2, pad - pad // 2))


# ---- parameter counts from the official layer lists --------------------------------------------


def lua_preact_bottleneck_net(depth: int) -> list[tuple]:
    """The layers with parameters of resnet-pre-act.lua's CIFAR-10 model, in the Lua's order:
    ("conv", c_in, c_out, k) (cudnn >= 4: ConvInit removes the conv biases), ("bn", c),
    ("linear", c_in, c_out)."""
    n = (depth - 2) // 9
    stages = (16, 64, 128, 256)

    def bottleneck(n_in: int, n_out: int) -> list[tuple]:
        mid = n_out // 4
        layers = [("bn", n_in), ("conv", n_in, mid, 1)]  # "common BN, ReLU" or the convs' own
        layers += [("bn", mid), ("conv", mid, mid, 3), ("bn", mid), ("conv", mid, n_out, 1)]
        return layers + ([("conv", n_in, n_out, 1)] if n_in != n_out else [])  # the shortcut

    layers = [("conv", 3, 16, 3)]
    for i in range(3):
        layers += bottleneck(stages[i], stages[i + 1])
        layers += [
            layer for _ in range(n - 1) for layer in bottleneck(stages[i + 1], stages[i + 1])
        ]
    return layers + [("bn", 256), ("linear", 256, 10)]


def fb_preact_basic_net(depth: int) -> list[tuple]:
    """The same for fb.resnet.torch's preresnet.lua, CIFAR-10, basic blocks, option A (no
    shortcut parameters): each unit is BN, conv3x3, BN, conv3x3; a final BN and the classifier."""
    n = (depth - 2) // 6
    layers, c_in = [("conv", 3, 16, 3)], 16
    for c in (16, 32, 64):
        for _ in range(n):
            layers += [("bn", c_in), ("conv", c_in, c, 3), ("bn", c), ("conv", c, c, 3)]
            c_in = c
    return layers + [("bn", 64), ("linear", 64, 10)]


def count(layers: list[tuple], norms: bool = True) -> int:
    sizes = {
        "conv": lambda c_in, c_out, k: c_in * c_out * k * k,
        "bn": lambda c: 2 * c if norms else 0,  # weight and bias
        "linear": lambda c_in, c_out: c_in * c_out + c_out,
    }
    return sum(sizes[kind](*args) for kind, *args in layers)


def test_preact_resnet164_params_match_the_official_layer_list():
    official = count(lua_preact_bottleneck_net(164))
    assert official == 1_703_258  # agrees with an independent hand count
    assert count_params(meta("preact_resnet164")) == official
    assert count_params(meta("resnet-164+full-preact")) == official


def test_preact_resnet110_params_match_the_official_layer_list():
    official = count(fb_preact_basic_net(110))
    assert official == 1_727_962  # the post-activation ResNet-110's count too (option A both)
    assert count_params(meta("preact_resnet110")) == official
    assert count_params(meta("resnet-110+full-preact")) == official


@pytest.mark.slow
def test_preact_resnet1001_params_match_the_official_layer_list():
    """He et al. 2016 print 10.2M for ResNet-1001: that is the conv and fc weights alone
    (10,178,490); with the BN scales and shifts the net has 10,327,706 parameters."""
    layers = lua_preact_bottleneck_net(1001)
    assert count(layers) == 10_327_706 == count_params(meta("preact_resnet1001"))
    assert round(count(layers, norms=False) / 1e5) == 102


def test_original_resnet164_params_by_hand():
    """The post-activation ResNet-164 (He et al. 2016, Table 2, "original"): a stem BN(16) and
    no final BN; per unit BN(mid), BN(mid), BN(4 mid) after its convs; projections with a BN."""
    pre = count(lua_preact_bottleneck_net(164))
    # move the BNs: the pre-act unit's BN(c_in) becomes a BN(4 mid) after its last conv (equal but
    # in each stage's first unit: 16->64, 64->128, 128->256 channels), stem BN(16) for final BN(256)
    moved = 2 * ((64 - 16) + (128 - 64) + (256 - 128)) + 2 * 16 - 2 * 256
    projection_norms = 2 * (64 + 128 + 256)
    assert count_params(meta("resnet-164")) == pre + moved + projection_norms == 1_704_154


# ---- pre-activation: resnet-pre-act.lua, layer by layer -----------------------------------------


class LuaPreActBottleneck(nn.Module):
    """resnet-pre-act.lua's `bottleneck(nInputPlane, nOutputPlane, stride)`."""

    def __init__(self, n_in: int, n_out: int, stride: int) -> None:
        super().__init__()
        mid = n_out // 4
        self.both = n_in != n_out  # "Residual Units for increasing dimensions"
        self.common = nn.Sequential(nn.BatchNorm2d(n_in), nn.ReLU()) if self.both else None
        convs = [] if self.both else [nn.BatchNorm2d(n_in), nn.ReLU()]
        convs += [nn.Conv2d(n_in, mid, 1, stride, 0, bias=False)]
        convs += [nn.BatchNorm2d(mid), nn.ReLU(), nn.Conv2d(mid, mid, 3, 1, 1, bias=False)]
        convs += [nn.BatchNorm2d(mid), nn.ReLU(), nn.Conv2d(mid, n_out, 1, 1, 0, bias=False)]
        self.convs = nn.Sequential(*convs)
        self.shortcut = nn.Conv2d(n_in, n_out, 1, stride, bias=False) if self.both else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.both:
            x = self.common(x)
            return self.convs(x) + self.shortcut(x)
        return self.convs(x) + x

    def weighted(self) -> list[nn.Module]:
        first = [self.common[0]] if self.both else []
        return first + [m for m in self.convs if list(m.parameters())] + [self.shortcut] * self.both


class LuaPreActResNet(nn.Module):
    """resnet-pre-act.lua's CIFAR-10 model (depth 9n+2)."""

    def __init__(self, depth: int, num_classes: int = 10) -> None:
        super().__init__()
        n, stages = (depth - 2) // 9, (16, 64, 128, 256)
        self.conv = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        units = []
        for i in range(3):
            units.append(LuaPreActBottleneck(stages[i], stages[i + 1], 1 if i == 0 else 2))
            units += [LuaPreActBottleneck(stages[i + 1], stages[i + 1], 1) for _ in range(n - 1)]
        self.units = nn.Sequential(*units)
        self.bn, self.fc = nn.BatchNorm2d(256), nn.Linear(256, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = relu(self.bn(self.units(self.conv(x))))
        return self.fc(F.avg_pool2d(x, x.shape[-1]).flatten(1))  # Avg(8, 8): the whole map

    def weighted(self) -> list[nn.Module]:
        return [self.conv, *(m for u in self.units for m in u.weighted()), self.bn, self.fc]


class FbPreActBasic(nn.Module):
    """preresnet.lua's `basicblock(n, stride, type)` (both_preact version), shortcut A or B."""

    def __init__(self, n_in: int, n: int, stride: int, both: bool, shortcut: str) -> None:
        super().__init__()
        self.both, self.n = both, n
        self.pre = nn.Sequential(nn.BatchNorm2d(n_in), nn.ReLU()) if both else None
        s = [] if both else [nn.BatchNorm2d(n_in), nn.ReLU()]
        s += [nn.Conv2d(n_in, n, 3, stride, 1, bias=False), nn.BatchNorm2d(n), nn.ReLU()]
        self.s = nn.Sequential(*s, nn.Conv2d(n, n, 3, 1, 1, bias=False))
        conv = shortcut == "B" and n_in != n  # useConv: a bare 1x1 convolution
        self.proj = nn.Conv2d(n_in, n, 1, stride, bias=False) if conv else None
        self.stride = stride

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.proj is not None:
            return self.proj(x)
        if x.shape[1] != self.n:  # SpatialAveragePooling(1, 1, stride, stride) + zero channels
            return split_pad(F.avg_pool2d(x, 1, self.stride), self.n)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.both:
            x = self.pre(x)
        return self.s(x) + self.shortcut(x)

    def weighted(self) -> list[nn.Module]:
        first = [self.pre[0]] if self.both else []
        return first + [m for m in self.s if list(m.parameters())] + ([self.proj] * bool(self.proj))


class FbPreActResNet(nn.Module):
    """preresnet.lua's CIFAR-10 model (both_preact version): a bare conv, then `layer` for 16, 32
    and 64 features, each starting with a both_preact block; a final BN + ReLU."""

    def __init__(self, depth: int, shortcut: str, num_classes: int = 10) -> None:
        super().__init__()
        n, c_in = (depth - 2) // 6, 16
        self.conv = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        units = []
        for i, c in enumerate((16, 32, 64)):
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                units.append(FbPreActBasic(c_in, c, stride, j == 0, shortcut))
                c_in = c
        self.units = nn.Sequential(*units)
        self.bn, self.fc = nn.BatchNorm2d(64), nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = relu(self.bn(self.units(self.conv(x))))
        return self.fc(F.avg_pool2d(x, x.shape[-1]).flatten(1))

    def weighted(self) -> list[nn.Module]:
        return [self.conv, *(m for u in self.units for m in u.weighted()), self.bn, self.fc]


def reslab_preact_weighted(model: nn.Module) -> list[nn.Module]:
    """reslab's pre-activation net's layers with parameters, in forward order."""
    layers = [model.conv1]
    for b in model.residual_blocks():
        for norm, layer in zip(b.branch_norms(), b.branch_layers(), strict=True):
            layers += [norm, layer]
        layers += [b.downsample[0]] if b.projects else []
    return layers + [model.bn_final, model.fc]


def copy_weights_(dst: list[nn.Module], src: list[nn.Module]) -> None:
    """Load each module of `src` into the module of `dst` at the same place (types must agree)."""
    assert len(dst) == len(src)
    for d, s in zip(dst, src, strict=True):
        assert type(d) is type(s), (d, s)
        d.load_state_dict(s.state_dict())


@pytest.mark.parametrize(
    "name, kw, reference",
    [
        ("preact_resnet-20", dict(block="bottleneck"), lambda: LuaPreActResNet(20)),
        ("preact_resnet-14", {}, lambda: FbPreActResNet(14, "A")),  # default: option A
        ("preact_resnet-14", dict(shortcut="B"), lambda: FbPreActResNet(14, "B")),
    ],
)
@torch.no_grad()
def test_preact_nets_compute_the_official_model(name, kw, reference):
    torch.manual_seed(0)
    model = randomize_(create_model(name, **kw))
    ref = reference()
    copy_weights_(ref.weighted(), reslab_preact_weighted(model))
    x = torch.randn(4, 3, 16, 16)
    assert_same_outputs(model, ref, x)


def test_preact_structure():
    """Which units pre-activate both paths, where bottlenecks stride, what the shortcuts are."""
    for name in ("preact_resnet-20", "preact_resnet-29"):  # basic (option A), bottleneck (B)
        model = meta(name)
        assert isinstance(model.bn1, nn.Identity)  # a bare conv stem
        stages = [model.layer1, model.layer2, model.layer3]
        assert [b.both_preact for s in stages for b in s] == [
            i == 0 for s in stages for i in range(3)
        ]
    basic, bottleneck = meta("preact_resnet-20"), meta("preact_resnet-29")
    assert isinstance(basic.layer2[0].downsample, PadShortcut) and not basic.layer2[0].projects
    assert [len(s[0].downsample) for s in (bottleneck.layer1, bottleneck.layer2)] == [1, 1]
    assert (bottleneck.layer2[0].conv1.stride, bottleneck.layer2[0].conv2.stride) == (
        (2, 2),
        (1, 1),
    )
    v15 = meta("preact_resnet-29", stride_in_1x1=False).layer2[0]
    assert (v15.conv1.stride, v15.conv2.stride) == ((1, 1), (2, 2))
    assert meta("resnet-29").layer2[0].conv1.stride == (2, 2)  # CIFAR bottlenecks: the paper's v1
    assert meta("resnet50").layer2[0].conv2.stride == (2, 2)  # ImageNet: torchvision's v1.5


# ---- Table 2 variants on the pre-activation nets -------------------------------------------------


@pytest.mark.parametrize("base, kw", [("resnet-14", {}), ("resnet-20", dict(block="bottleneck"))])
@torch.no_grad()
def test_full_preact_variant_is_the_preact_net(base, kw):
    """ "<base>+full-preact" is `preact_resnet` with the same weights: the stem's BN + ReLU is the
    first unit's pre-activation (not applied twice), stage starts pre-activate both paths, the last
    unit's extra BN + ReLU is the final norm."""
    torch.manual_seed(0)
    variant = randomize_(create_model(f"{base}+full-preact", **kw))
    preact = create_model("preact_" + base, **kw)
    units = variant.residual_blocks()
    assert [u.position for u in units[:2]] == ["after-stem", "inner"]
    assert isinstance(units[0].bn1, nn.Identity)  # no second BN + ReLU in the first unit
    last = [n for n, m in variant.named_modules() if m is units[-1]][0]
    state = {}
    for k, v in variant.state_dict().items():
        if k.startswith("bn1."):  # the stem's BN: the first unit's pre-activation
            k = "layer1.0." + k
        k = k.replace(f"{last}.final.0.", "bn_final.")
        state[k] = v
    preact.load_state_dict(state)  # strict: the same parameters, under the preact net's names
    x = torch.randn(4, 3, 16, 16)
    assert_same_outputs(variant, preact, x)


@torch.no_grad()
def test_relu_preact_units_by_position():
    """(d) x + BN(W2 relu(BN(W1 relu(x)))): the first unit's relu(x) is the stem's ReLU, a
    stage's first unit feeds relu(x) to both paths (option A here)."""
    model = randomize_(create_model("resnet-8+relu-preact")).eval()
    first, stage, last = model.residual_blocks()
    bn = lambda n, y: F.batch_norm(y, n.running_mean, n.running_var, n.weight, n.bias)  # noqa: E731
    f = lambda u, y: bn(u.bn2, u.conv2(relu(bn(u.bn1, u.conv1(y)))))  # noqa: E731
    x = torch.randn(2, 16, 8, 8)  # signed, so that a ReLU shows
    torch.testing.assert_close(first(x), x + f(first, x))
    x = torch.randn(2, 16, 8, 8)
    torch.testing.assert_close(stage(x), split_pad(relu(x)[:, :, ::2, ::2], 32) + f(stage, relu(x)))
    x = torch.randn(2, 32, 4, 4)
    y = split_pad(relu(x)[:, :, ::2, ::2], 64) + f(last, relu(x))
    torch.testing.assert_close(last(x), relu(bn(last.final[0], y)))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_builds_on_bottlenecks(variant):
    """He et al. 2016's Table 2 is on ResNet-164 as much as ResNet-110; Table 1 merges apply too."""
    torch.manual_seed(0)
    model = create_model(f"resnet-11+{variant}")  # one bottleneck per stage
    assert all(isinstance(u, Unit) for u in model.residual_blocks())
    y = model(torch.randn(2, 3, 8, 8))
    y.square().mean().backward()
    assert y.shape == (2, 10) and all(p.grad is not None for p in model.parameters())
    assert meta(f"resnet-164+{variant}").fc.in_features == 256  # and at the paper's depth


# ---- Fixup: hongyi-zhang/Fixup -------------------------------------------------------------------


class FixupBasicBlockRef(nn.Module):
    """Fixup's `FixupBasicBlock` (both files): the downsample sees x + bias1a, the identity x."""

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None):
        super().__init__()
        self.bias1a = nn.Parameter(torch.zeros(1))
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bias1b = nn.Parameter(torch.zeros(1))
        self.bias2a = nn.Parameter(torch.zeros(1))
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.scale = nn.Parameter(torch.ones(1))
        self.bias2b = nn.Parameter(torch.zeros(1))
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = relu(self.conv1(x + self.bias1a) + self.bias1b)
        out = self.conv2(out + self.bias2a) * self.scale + self.bias2b
        identity = x if self.downsample is None else self.downsample(x + self.bias1a)
        return relu(out + identity)


class FixupBottleneckRef(nn.Module):
    """Fixup's `FixupBottleneck` (ImageNet): stride on the 3x3, downsample on x + bias1a."""

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None):
        super().__init__()
        for name in ("bias1a", "bias1b", "bias2a", "bias2b", "bias3a", "bias3b"):
            setattr(self, name, nn.Parameter(torch.zeros(1)))
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.scale = nn.Parameter(torch.ones(1))
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = relu(self.conv1(x + self.bias1a) + self.bias1b)
        out = relu(self.conv2(out + self.bias2a) + self.bias2b)
        out = self.conv3(out + self.bias3a) * self.scale + self.bias3b
        identity = x if self.downsample is None else self.downsample(x + self.bias1a)
        return relu(out + identity)


class OptionA(nn.Module):
    """Fixup CIFAR's downsample, AvgPool2d(1, stride) and zero channels (placed as reslab's)."""

    def __init__(self, stride: int, c_out: int) -> None:
        super().__init__()
        self.stride, self.c_out = stride, c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return split_pad(F.avg_pool2d(x, 1, self.stride), self.c_out)


class FixupResNetRef(nn.Module):
    """Fixup's `FixupResNet`: conv1, relu(x + bias1), [max-pool], stages, pooling, fc(x + bias2).
    imagenet: the ImageNet file (7x7 stem, 1x1 conv downsample); else the CIFAR file (option A)."""

    def __init__(self, block: type, layers: list[int], imagenet: bool, num_classes: int = 10):
        super().__init__()
        widths = (64, 128, 256, 512) if imagenet else (16, 32, 64)
        self.inplanes = widths[0]
        if imagenet:
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        else:
            self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bias1 = nn.Parameter(torch.zeros(1))
        self.maxpool = nn.MaxPool2d(3, 2, 1) if imagenet else nn.Identity()
        expansion = 4 if block is FixupBottleneckRef else 1
        for i, (planes, n) in enumerate(zip(widths, layers, strict=True)):
            stride = 1 if i == 0 else 2
            downsample = None
            if imagenet and (stride != 1 or self.inplanes != planes * expansion):
                downsample = nn.Conv2d(self.inplanes, planes * expansion, 1, stride, bias=False)
            elif not imagenet and stride != 1:
                downsample = OptionA(stride, planes)
            blocks = [block(self.inplanes, planes, stride, downsample)]
            self.inplanes = planes * expansion
            blocks += [block(self.inplanes, planes, 1, None) for _ in range(n - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.stages = len(layers)
        self.bias2 = nn.Parameter(torch.zeros(1))
        self.fc = nn.Linear(self.inplanes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(relu(self.conv1(x) + self.bias1))
        for i in range(self.stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1) + self.bias2)


def fixup_key(key: str) -> str:
    """reslab's parameter name -> Fixup's: scalar biases and the multiplier are bare Parameters
    there, the downsample a bare conv."""
    key = re.sub(r"(bias\d[ab]?)\.bias$", r"\1", key)
    return key.replace("scale.alpha", "scale").replace("downsample.0.", "downsample.")


@pytest.mark.parametrize(
    "name, reference, size",
    [
        ("resnet18", lambda: FixupResNetRef(FixupBasicBlockRef, [2, 2, 2, 2], True), 64),
        ("resnet50", lambda: FixupResNetRef(FixupBottleneckRef, [3, 4, 6, 3], True), 64),
        ("resnet-14", lambda: FixupResNetRef(FixupBasicBlockRef, [2, 2, 2], False), 16),
    ],
)
@torch.no_grad()
def test_fixup_nets_compute_the_official_model(name, reference, size):
    torch.manual_seed(0)
    model = randomize_(create_model(name, num_classes=10, branch_scale="fixup"))
    assert isinstance(model.bias1, Bias) and isinstance(model.bias2, Bias)
    ref = reference()
    ref.load_state_dict({fixup_key(k): v for k, v in model.state_dict().items()})  # strict
    x = torch.randn(2, 3, size, size)
    torch.testing.assert_close(model(x), ref(x), rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_fixup_shortcut_paths():
    """Deleting a Fixup block's branch leaves relu(h(x + bias1a)) for a downsampling shortcut and
    relu(x) for an identity one (Fixup never adds bias1a to the identity)."""
    for shortcut in ("A", "B"):
        model = randomize_(create_model("resnet-14", branch_scale="fixup", shortcut=shortcut))
        down, same = model.layer2[0], model.layer2[1]
        assert down.bias1a.bias.item() != 0 and same.bias1a.bias.item() != 0
        x = torch.randn(2, 16, 8, 8)
        expected = relu(down.downsample(x + down.bias1a.bias))
        torch.testing.assert_close(down.shortcut_path(x), expected)
        x = torch.randn(2, 32, 4, 4)
        torch.testing.assert_close(same.shortcut_path(x), relu(x))


@torch.no_grad()
def test_fixup_mlp_by_hand():
    """The MLP's Fixup form mirrors the ResNets': bias-free Linears with scalar biases, a scalar
    bias before the stem's ReLU and one before the classifier."""
    torch.manual_seed(0)
    model = create_model("resmlp-6", img_size=4, width=8, branch_scale="fixup")
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [m.bias is not None for m in linears] == [False] * 5 + [True]  # only the classifier's
    assert count_params(model) == 48 * 8 + 4 * 8 * 8 + 8 * 10 + 10 + 1 + 2 * (4 + 1) + 1
    randomize_(model)
    x = torch.randn(3, 3, 4, 4)
    h = relu(x.flatten(1) @ model.stem[0].weight.T + model.stem[2].bias)
    for b in model.layers:
        out = relu((h + b.bias1a.bias) @ b.fc1.weight.T + b.bias1b.bias)
        out = ((out + b.bias2a.bias) @ b.fc2.weight.T) * b.scale.alpha + b.bias2b.bias
        h = relu(out + h)
    expected = (h + model.bias2.bias) @ model.fc.weight.T + model.fc.bias
    torch.testing.assert_close(model(x), expected)


# ---- ReZero: the authors' ResNet (ReZero-examples, "ReZNet" notebook) --------------------------


class ReZeroBlockRef(nn.Module):
    """The notebook's `BasicBlock(in_planes, planes, stride, option='A', rezero=True)`."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.resweight = nn.Parameter(torch.Tensor([0]))
        self.pad = planes // 4 if stride != 1 or in_planes != planes else None

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad is None:
            return x
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad), "constant", 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.resweight * F.relu(out) + self.shortcut(x)  # the skip is after the ReLU


class ReZeroResNetRef(nn.Module):
    """The notebook's `ResNet(BasicBlock, num_blocks, rezero=True)`."""

    def __init__(self, n: int, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        in_planes = 16
        for i, planes in enumerate((16, 32, 64)):
            strides = [1 if i == 0 else 2] + [1] * (n - 1)
            blocks = []
            for s in strides:
                blocks.append(ReZeroBlockRef(in_planes, planes, s))
                in_planes = planes
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.linear = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.avg_pool2d(out, out.size()[3])
        return self.linear(out.view(out.size(0), -1))


@torch.no_grad()
def test_rezero_resnet_computes_the_authors_model():
    torch.manual_seed(0)
    model = randomize_(create_model("resnet-14", branch_scale="rezero"))
    assert all(isinstance(b.scale, Scale) for b in model.residual_blocks())
    ref = ReZeroResNetRef(2)
    state = {k.replace("scale.alpha", "resweight"): v for k, v in model.state_dict().items()}
    ref.load_state_dict({re.sub(r"^fc\.", "linear.", k): v for k, v in state.items()})  # strict
    x = torch.randn(4, 3, 16, 16)
    assert_same_outputs(model, ref, x)


@torch.no_grad()
def test_rezero_mlp_and_bottleneck_by_hand():
    """The same form in the other post-activation blocks: x + alpha * relu(F(x)), nothing after."""
    torch.manual_seed(0)
    mlp = randomize_(create_model("resmlp-4", img_size=4, width=8, branch_scale="rezero")).eval()
    b = mlp.layers[0]
    bn = lambda n, y: F.batch_norm(y, n.running_mean, n.running_var, n.weight, n.bias)  # noqa: E731
    h = torch.randn(3, 8)  # signed: a ReLU after the sum would show
    f = bn(b.bn2, relu(bn(b.bn1, h @ b.fc1.weight.T)) @ b.fc2.weight.T)
    torch.testing.assert_close(b(h), h + b.scale.alpha * relu(f))
    net = randomize_(create_model("resnet-11", branch_scale="rezero")).eval()
    b = net.layer2[0]  # bottleneck 64 -> 128 channels, option B projection
    x = torch.randn(2, 64, 8, 8)
    f = bn(b.bn1, b.conv1(x))
    f = bn(b.bn3, b.conv3(relu(bn(b.bn2, b.conv2(relu(f))))))
    torch.testing.assert_close(b(x), b.downsample(x) + b.scale.alpha * relu(f))
