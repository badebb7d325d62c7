"""`block.shortcut_path(x)`: what is left of a block when its residual branch is deleted, for every
block kind, against a computation by hand from the block's own weights; and a block whose branch
outputs zero computes exactly its shortcut path. A standard block reads like its equation, and the
scaled blocks (SkipInit, Fixup) with their scalars at 1 and 0 compute exactly their standard block."""

import copy
import inspect

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reslab.models import create_model, to_residual
from reslab.models.blocks import (
    BasicBlock,
    Bottleneck,
    MLPBlock,
    PreActBasicBlock,
    PreActBottleneck,
    ResidualBlock,
)
from reslab.models.scaled import Fixup, ReZero, SkipInit
from reslab.models.variants import VARIANTS

relu = torch.relu


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def randomize_norms_(module: nn.Module) -> nn.Module:
    """Non-trivial eval-mode norms, so that a norm that is or is not applied shows."""
    torch.manual_seed(1)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return module.eval()


def bn(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return F.batch_norm(
        x, norm.running_mean, norm.running_var, norm.weight, norm.bias, eps=norm.eps
    )


def conv_proj(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """W_s x: the 1x1 conv + norm of a projection shortcut, by hand."""
    conv, norm = block.downsample
    return bn(norm, F.conv2d(x, conv.weight, stride=conv.stride))


def bare_proj(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """W_s x: a pre-activation block's projection, a bare 1x1 conv (resnet-pre-act.lua)."""
    (conv,) = block.downsample
    return F.conv2d(x, conv.weight, stride=conv.stride)


def pre(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """relu(bn1(x)): a pre-activation block's pre-activation."""
    return relu(bn(block.bn1, x))


def pad_a(x: torch.Tensor, c_out: int) -> torch.Tensor:
    """Option A by hand: every second pixel, zero channels split over both sides."""
    x = x[:, :, ::2, ::2]
    pad = c_out - x.shape[1]
    zeros = x.new_zeros(x.shape[0], pad // 2, *x.shape[2:])
    more = x.new_zeros(x.shape[0], pad - pad // 2, *x.shape[2:])
    return torch.cat([zeros, x, more], 1)


CONV = {  # name -> (block factory, shortcut path by hand); each test builds its own blocks
    "basic identity": (lambda: BasicBlock(8, 8), lambda b, x: relu(x)),
    "basic A": (lambda: BasicBlock(8, 16, 2, shortcut="A"), lambda b, x: relu(pad_a(x, 16))),
    "basic B": (lambda: BasicBlock(8, 16, 2, shortcut="B"), lambda b, x: relu(conv_proj(b, x))),
    "basic C": (lambda: BasicBlock(8, 8, shortcut="C"), lambda b, x: relu(conv_proj(b, x))),
    # ReZero (Bachlechner et al. 2020): x + alpha * relu(F(x)), nothing after the addition
    "basic rezero": (lambda: ReZero(BasicBlock(8, 8)), lambda b, x: x),
    "bottleneck rezero": (lambda: ReZero(Bottleneck(8, 2)), lambda b, x: x),
    "bottleneck B": (lambda: Bottleneck(8, 4, 2), lambda b, x: relu(conv_proj(b, x))),
    "preact identity": (lambda: PreActBasicBlock(8, 8), lambda b, x: x),
    # a unit that changes shape pre-activates both paths ("both_preact", resnet-pre-act.lua)
    "preact A": (
        lambda: PreActBasicBlock(8, 16, 2, shortcut="A"),
        lambda b, x: pad_a(pre(b, x), 16),
    ),
    "preact B": (
        lambda: PreActBasicBlock(8, 16, 2, shortcut="B"),
        lambda b, x: bare_proj(b, pre(b, x)),
    ),
    "preact bottleneck B": (
        lambda: PreActBottleneck(8, 4, 2, shortcut="B"),
        lambda b, x: bare_proj(b, pre(b, x)),
    ),
    # the first unit of a stage pre-activates both paths even with an identity shortcut
    "preact first unit": (lambda: PreActBasicBlock(8, 8, both_preact=True), pre),
    # fb.resnet.torch's option C: a unit that is not a stage's first projects its raw input
    "preact C": (lambda: PreActBasicBlock(8, 8, shortcut="C"), bare_proj),
    "basic plain": (lambda: BasicBlock(8, 16, 2, shortcut="none"), lambda b, x: x),
    "preact plain": (lambda: PreActBasicBlock(8, 8, shortcut="none"), lambda b, x: x),
    "basic skipinit B": (
        lambda: SkipInit(BasicBlock(8, 16, 2, shortcut="B")),
        lambda b, x: relu(conv_proj(b, x)),
    ),
    "preact rezero first unit": (lambda: ReZero(PreActBasicBlock(8, 8, both_preact=True)), pre),
    "preact bottleneck skipinit": (lambda: SkipInit(PreActBottleneck(8, 2)), lambda b, x: x),
}


def mlp_proj(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    linear, norm = block.downsample
    return bn(norm, x @ linear.weight.T)


MLP = {
    "mlp identity": (lambda: MLPBlock(8), lambda b, x: relu(x)),
    "mlp rezero": (lambda: ReZero(MLPBlock(8)), lambda b, x: x),
    "mlp C": (lambda: MLPBlock(8, shortcut="C"), lambda b, x: relu(mlp_proj(b, x))),
    "mlp plain": (lambda: MLPBlock(8, shortcut="none"), lambda b, x: x),
}


def sequential_blocks() -> list[nn.Module]:
    """`to_residual` blocks: an identity one and a strided projection (1x1 conv, no norm)."""
    torch.manual_seed(0)
    layers = [nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()]
    for c_in, c_out, s in ((8, 8, 1), (8, 8, 1), (8, 16, 2), (16, 16, 1)):
        layers += [nn.Conv2d(c_in, c_out, 3, s, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]
    layers += [nn.Flatten(), nn.Linear(16 * 4 * 4, 3)]
    res = to_residual(nn.Sequential(*layers), example_input=torch.randn(1, 3, 8, 8))
    return randomize_norms_(res).residual_blocks()


@pytest.mark.parametrize("kind", list(CONV) + list(MLP))
@torch.no_grad()
def test_shortcut_path_of_every_block_kind(kind):
    make, by_hand = {**CONV, **MLP}[kind]
    torch.manual_seed(0)
    block = randomize_norms_(make())
    shape = (3, 8) if kind in MLP else (3, 8, 6, 6)
    x = torch.randn(*shape)  # negative values too, so that a ReLU shows
    out = block.shortcut_path(x)
    torch.testing.assert_close(out, by_hand(block, x), rtol=1e-5, atol=1e-6)
    if block.shortcut == "none":
        assert out is x  # a deleted plain block passes its input on


@torch.no_grad()
def test_shortcut_path_of_to_residual_blocks():
    identity, projection = sequential_blocks()
    x = torch.randn(2, 8, 8, 8)
    torch.testing.assert_close(identity.shortcut_path(x), relu(x))
    w = projection.downsample.weight
    torch.testing.assert_close(projection.shortcut_path(x), relu(F.conv2d(x, w, stride=2)))
    x_before = x.clone()
    identity.shortcut_path(x)  # its post ReLU acts in place: the input must survive
    assert torch.equal(x, x_before)
    identity.shortcut = "none"
    assert identity.shortcut_path(x) is x


def unit_model(variant: str) -> nn.Module:
    torch.manual_seed(0)
    model = create_model(f"resmlp-6+{variant}", in_chans=1, img_size=4, width=8)
    return randomize_norms_(model)


def unit_by_hand(variant: str, u: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """He et al. 2016's units (Figs. 2 and 4) with F = 0."""
    post = relu if u.final is None else (lambda y: relu(bn(u.final[0], y)))
    if variant.startswith("gate"):
        g = torch.sigmoid(x @ u.merge_paths.gate.weight.T + u.merge_paths.gate.bias)
    formulas = {
        "identity": lambda: relu(x),
        "scale-both": lambda: relu(0.5 * x),
        "scale-shortcut": lambda: relu(0.5 * x),
        "gate-exclusive": lambda: relu((1 - g) * x),
        "gate-exclusive-b0": lambda: relu((1 - g) * x),
        "gate-shortcut": lambda: relu((1 - g) * x),
        "gate-shortcut-b0": lambda: relu((1 - g) * x),
        "conv-shortcut": lambda: relu(mlp_proj(u, x)),
        "dropout-shortcut": lambda: relu(0.5 * x),  # eval: the expectation of the mask
        "bn-after-add": lambda: relu(bn(u.bn2, x)),
        "relu-before-add": lambda: x,  # x + relu(0), nothing after the addition
        "relu-preact": lambda: x if u.final is None else post(x),
        "full-preact": lambda: x if u.final is None else post(x),
    }
    return formulas[variant]()


@pytest.mark.parametrize("variant", list(VARIANTS))
@torch.no_grad()
def test_shortcut_path_of_variant_units(variant):
    first, last = unit_model(variant).residual_blocks()
    x = torch.randn(5, 8)
    for u in (first, last):
        torch.testing.assert_close(u.shortcut_path(x), unit_by_hand(variant, u, x))


def zero_branch_(block: nn.Module) -> nn.Module:
    """Make F(x) = 0 exactly: zero weight layers, and norms that map 0 to 0 (eval mode)."""
    with torch.no_grad():
        for layer in block.branch_layers():
            layer.weight.zero_()
            if layer.bias is not None:
                layer.bias.zero_()
        for norm in block.branch_norms():
            if isinstance(norm, nn.modules.batchnorm._BatchNorm):
                norm.running_mean.zero_()
                norm.bias.zero_()
    return block


def residual_blocks() -> list[tuple[str, nn.Module]]:
    torch.manual_seed(0)
    blocks = [(k, make()) for k, (make, _) in {**CONV, **MLP}.items() if "plain" not in k]
    blocks += [(f"to_residual {i}", b) for i, b in enumerate(sequential_blocks())]
    for variant in VARIANTS:
        blocks += [(f"{variant} {i}", u) for i, u in enumerate(unit_model(variant).layers)]
    return blocks


@torch.no_grad()
def test_block_with_zeroed_branch_computes_its_shortcut_path():
    for name, block in residual_blocks():
        block = zero_branch_(randomize_norms_(block))
        assert isinstance(block, ResidualBlock) and block.shortcut != "none", name
        first = block.branch_layers()[0]
        if isinstance(first, nn.Linear):
            x = torch.randn(4, first.in_features)
        else:
            x = torch.randn(4, first.in_channels, 6, 6)
        torch.testing.assert_close(block(x.clone()), block.shortcut_path(x), msg=name)


STANDARD = {
    "basic A": lambda: BasicBlock(8, 16, 2, shortcut="A"),
    "basic C": lambda: BasicBlock(8, 8, shortcut="C"),
    "bottleneck B": lambda: Bottleneck(8, 4, 2),
    "preact B": lambda: PreActBasicBlock(8, 16, 2),
    "preact bottleneck": lambda: PreActBottleneck(16, 4),
    "preact bottleneck first unit": lambda: PreActBottleneck(16, 4, both_preact=True),
    "mlp C": lambda: MLPBlock(8, shortcut="C"),
    "basic plain": lambda: BasicBlock(8, 8, shortcut="none"),
}


@pytest.mark.parametrize("kind", list(STANDARD))
def test_a_standard_block_reads_like_its_equation(kind):
    """Its printout holds its layers only and its forward adds the shortcut, with no slot for
    scalars it does not have (those are SkipInit's, ReZero's and Fixup's own blocks)."""
    block = STANDARD[kind]()
    source = inspect.getsource(type(block).forward)
    assert "out = out + self.shortcut_of(" in source
    assert not any(word in source for word in ("bias", "scale", "merge", "finish"))
    names = [name for name, _ in block.named_children()]
    assert not any(name.startswith(("bias", "scale")) for name in names), names
    assert not any(isinstance(m, nn.Identity) for m in block.modules()), block


@pytest.mark.parametrize("kind", list(STANDARD))
@pytest.mark.parametrize("scaling", [SkipInit, Fixup])
@pytest.mark.parametrize("train", [True, False])
def test_scaled_block_with_neutral_scalars_is_its_standard_block(kind, scaling, train):
    """alpha = 1, biases 0: SkipInit and Fixup compute exactly what the block they took over does
    (their branch walks the same layers in the same order), in train and eval mode."""
    torch.manual_seed(0)
    block = randomize_norms_(STANDARD[kind]()).train(train)
    twin = scaling(copy.deepcopy(block)).train(train)
    with torch.no_grad():
        twin.scale.alpha.fill_(1.0)
    # the block's own keys in its own order, after the scalars
    assert [k for k in twin.state_dict() if not k.startswith(("scale.", "bias"))] == list(
        block.state_dict()
    )
    first = block.branch_layers()[0]
    shape = (first.in_features,) if kind.startswith("mlp") else (first.in_channels, 6, 6)
    x = torch.randn(4, *shape)
    assert torch.equal(twin(x.clone()), block(x.clone()))
