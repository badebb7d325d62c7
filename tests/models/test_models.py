"""Every registered model runs, and every block option does what its paper says.

Parametrized over `list_models()`, so no registered model escapes. Inputs are tiny (2 x 3 x 16 x 16).
"""

import pickle

import pytest
import torch
from torch import nn

from reslab.models import create_model, list_models
from reslab.models.blocks import PadShortcut
from reslab.models.scaled import Bias, Scale

ALL = list_models()


def _depth(name: str) -> int:
    return int("".join(c for c in name if c.isdigit()) or 0)


PLAIN = [n for n in ALL if "plain" in n]
# ResNet-1202 and pre-act ResNet-1001 run forward and backward below; the structural tests use
# their shallower siblings (same classes) to keep the suite quick.
REGULAR = [n for n in ALL if not n.endswith(("1202", "1001"))]


@pytest.fixture(autouse=True)
def fast_cpu():
    """Tiny inputs run best on one thread (two threads on a busy 2-core machine wait on each other
    for every op), and deep plain nets drive gradients into the denormal range, ~10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    yield
    torch.set_flush_denormal(False)
    torch.set_num_threads(threads)


def build(name: str, **kw) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, num_classes=7, img_size=16, **kw)


def example(model: nn.Module, batch: int = 2) -> torch.Tensor:
    """A tiny input: 16x16, or 64x64 for the ImageNet family so that its last stage is 2x2 and
    batch norm there sees more than two values per channel."""
    size = 64 if model.default_cfg["family"] == "imagenet" else 16
    return torch.randn(batch, 3, size, size)


def block_input(block: nn.Module, batch: int = 2) -> torch.Tensor:
    """A non-negative input of the right shape for `block` (a ReLU output, as blocks see)."""
    first = block.branch_layers()[0]
    if isinstance(first, nn.Linear):
        return torch.rand(batch, first.in_features)  # (B, F)
    return torch.rand(batch, first.in_channels, 4, 4)  # (B, C, H, W)


def zero_branch(block: nn.Module) -> None:
    with torch.no_grad():
        for layer in block.branch_layers():
            layer.weight.zero_()
            if layer.bias is not None:
                layer.bias.zero_()


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if _depth(n) >= 100 else n for n in ALL]
)
def test_forward_backward_pickle_bf16(name):
    model = build(name)
    x = example(model)
    y = model(x)
    assert y.shape == (2, 7) and torch.isfinite(y).all()
    y.square().mean().backward()
    # Deep plain nets with batch norm have exploding gradients at init (Yang et al. 2019, "A Mean
    # Field Theory of Batch Normalization"): plain-101 and deeper overflow on this tiny batch.
    finite = name not in PLAIN or model.default_cfg["depth"] <= 56
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all() or not finite, pname

    model.eval()
    clone = pickle.loads(pickle.dumps(model))
    torch.testing.assert_close(clone(x), model(x))
    assert clone.model_name == name and clone.default_cfg["name"] == name

    model = model.to(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        yb = model(x.to(memory_format=torch.channels_last))
    assert yb.shape == (2, 7) and yb.dtype == torch.bfloat16 and torch.isfinite(yb).all()


@pytest.mark.parametrize("name", REGULAR)
def test_api_and_block_structure(name):
    model = build(name)
    blocks = model.residual_blocks()
    assert blocks and blocks == [m for m in model.modules() if hasattr(m, "shortcut")]
    plain = name in PLAIN
    assert all((b.shortcut == "none") == plain for b in blocks)
    if plain:  # no projection modules and no shortcut parameters at all
        assert all(b.downsample is None for b in blocks)
        assert not any("downsample" in k for k in model.state_dict())
    x = example(model)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_head(model.forward_features(x)), model(x))


@pytest.mark.parametrize("name", REGULAR)
def test_zeroed_block_cuts_plain_net_but_not_residual(name):
    """With one block's branch zeroed, a plain net's output no longer depends on its input (no path
    goes around the block), while a residual net's block becomes the identity. Train mode: batch
    norm maps a constant to zero, and (unlike eval mode at init) keeps 1000-layer nets finite."""
    model = build(name)
    blocks = model.residual_blocks()
    block = blocks[len(blocks) // 2]
    while block.downsample is not None or block.both_preact:  # a block whose shortcut is x
        block = blocks[blocks.index(block) + 1]
    zero_branch(block)
    h = block_input(block)
    with torch.no_grad():
        out = block(h)
        y1, y2 = model(example(model)), model(example(model))
    assert torch.isfinite(y1).all() and torch.isfinite(y2).all()
    if name in PLAIN:
        assert torch.count_nonzero(out) == 0
        torch.testing.assert_close(y1, y2)
    else:
        torch.testing.assert_close(out, h)
        assert not torch.allclose(y1, y2)


# ---- shortcuts --------------------------------------------------------------------------------


def test_shortcut_options_on_resnet20():
    """Parameter counts by hand: B adds a 1x1 conv+BN at the two stage changes (16->32, 32->64);
    C adds one to all nine blocks. A and none add nothing."""
    count = {s: sum(p.numel() for p in build("resnet20", shortcut=s).parameters()) for s in "ABC"}
    base = 269_722 - 650 + 7 * 65  # akamaster's count for 10 classes, re-headed for 7
    assert count["A"] == base
    assert count["B"] == base + (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)
    c_extra = 3 * (16 * 16 + 32) + (16 * 32 + 64) + 2 * (32 * 32 + 64)
    c_extra += (32 * 64 + 128) + 2 * (64 * 64 + 128)
    assert count["C"] == base + c_extra
    assert all(
        isinstance(b.downsample, nn.Sequential)
        for b in build("resnet20", shortcut="C").residual_blocks()
    )


def test_option_a_subsamples_and_zero_pads():
    block = build("resnet20").layer2[0]  # 16 -> 32 channels, stride 2
    assert isinstance(block.downsample, PadShortcut)
    zero_branch(block)
    x = torch.rand(2, 16, 8, 8)
    sub = x[:, :, ::2, ::2]
    zeros = torch.zeros(2, 8, 4, 4)
    torch.testing.assert_close(block.eval()(x), torch.cat([zeros, sub, zeros], 1))


def test_option_b_projection_matches_torchvision_downsample():
    block = build("resnet50").layer2[0]
    conv, bn = block.downsample
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride) == (
        256,
        512,
        (1, 1),
        (2, 2),
    )
    assert isinstance(bn, nn.BatchNorm2d) and build("resnet50").layer2[1].downsample is None


def test_preact_projection_sees_preactivated_input():
    block = build("preact_resnet-11").layer1[0].eval()  # bottleneck 16 -> 64 channels
    assert len(block.downsample) == 1  # resnet-pre-act.lua: a bare 1x1 conv, no norm after it
    zero_branch(block)
    x = torch.randn(2, 16, 4, 4)
    with torch.no_grad():
        expected = block.downsample(torch.relu(block.bn1(x)))
        torch.testing.assert_close(block(x), expected)


def test_stride_placement_v15_and_v1():
    v15, v1 = build("resnet50").layer2[0], build("resnet50", stride_in_1x1=True).layer2[0]
    assert (v15.conv1.stride, v15.conv2.stride) == ((1, 1), (2, 2))
    assert (v1.conv1.stride, v1.conv2.stride) == ((2, 2), (1, 1))


# ---- branch options ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["resnet20", "resnet50", "preact_resnet-20", "preact_resnet-11", "resmlp-6"]
)
def test_zero_init_residual_makes_every_block_its_shortcut(name):
    model = build(name, zero_init_residual=True)
    for block in model.residual_blocks():
        assert torch.count_nonzero(block.branch_norms()[-1].weight) == 0
        h = block_input(block, batch=4)
        torch.testing.assert_close(block(h), block.shortcut_path(h))  # even in train mode
        if block.downsample is None and not block.both_preact:  # these are exactly the identity
            torch.testing.assert_close(block(h), h)


def test_zero_init_residual_without_norm_zeroes_last_layer():
    model = build("resmlp-6", zero_init_residual=True, norm="none")
    assert all(torch.count_nonzero(b.fc2.weight) == 0 for b in model.residual_blocks())


@pytest.mark.parametrize("scheme", ["rezero", "skipinit"])
def test_rezero_and_skipinit_start_at_identity(scheme):
    for name in ("resnet-14", "preact_resnet-20", "resmlp-6", "resnet18"):
        model = build(name, branch_scale=scheme)
        has_bn = any(isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d) for m in model.modules())
        assert has_bn == (scheme == "rezero")  # SkipInit defaults to a norm-free net
        for block in model.residual_blocks():
            assert isinstance(block.scale, Scale) and block.scale.alpha.item() == 0.0
            h = block_input(block)
            torch.testing.assert_close(block(h), block.shortcut_path(h))
            if block.downsample is None and not block.both_preact:
                torch.testing.assert_close(block(h), h)


def test_fixup_init():
    """Zhang et al. 2019, §3: L branches of m layers; He init scaled by L^(-1/(2m-2)) on all but
    the last layer, which is zero, like the classifier; scalar biases and multiplier per branch."""
    model = build("resnet-110", branch_scale="fixup")  # L = 54 basic blocks, m = 2
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    blocks = model.residual_blocks()
    assert len(blocks) == 54
    w = torch.cat([b.conv1.weight.flatten() for b in blocks[1:18]])  # 16 -> 16 channels, 3x3
    expected_std = (2 / (16 * 9)) ** 0.5 * 54**-0.5
    assert abs(w.std().item() / expected_std - 1) < 0.03
    assert all(torch.count_nonzero(b.conv2.weight) == 0 for b in blocks)
    assert torch.count_nonzero(model.fc.weight) == 0 and torch.count_nonzero(model.fc.bias) == 0
    assert sum(isinstance(m, Bias) for m in blocks[0].modules()) == 4
    assert all(b.scale.alpha.item() == 1.0 for b in blocks)
    torch.testing.assert_close(model(torch.randn(2, 3, 16, 16)), torch.zeros(2, 7))

    bottleneck = build("preact_resnet-164", branch_scale="fixup")  # L = 54, m = 3: L^(-1/4)
    w = torch.cat([b.conv2.weight.flatten() for b in bottleneck.residual_blocks()[1:18]])
    assert abs(w.std().item() / ((2 / (16 * 9)) ** 0.5 * 54**-0.25) - 1) < 0.03


def test_norm_options():
    group = build("resnet20", norm="group")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in group.modules())
    assert group.layer3[0].bn1.num_groups == 32 and group.layer1[0].bn1.num_groups == 16
    free = build("resnet20", norm="none")
    assert not any(isinstance(m, nn.BatchNorm2d | nn.GroupNorm) for m in free.modules())
    mlp = build("resmlp-6", norm="group", width=64)
    assert isinstance(mlp.layers[0].bn1, nn.GroupNorm)
    for m in (group, free, mlp):
        assert torch.isfinite(m(torch.randn(2, 3, 16, 16))).all()


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(shortcut="D"), "shortcut must be one of 'A', 'B', 'C', 'none'"),
        (dict(norm="layer"), "norm must be one of 'batch', 'group', 'none'"),
        (
            dict(branch_scale="alpha"),
            "branch_scale must be one of 'none', 'rezero', 'skipinit', 'fixup'",
        ),
    ],
)
def test_bad_options_raise_one_line_value_errors(kw, message):
    for name in ("resnet20", "resmlp4", "preact_resnet110"):
        with pytest.raises(ValueError, match=message) as err:
            create_model(name, **kw)
        assert "\n" not in str(err.value)


def test_plain_nets_refuse_options_that_need_a_shortcut():
    for kw in (dict(branch_scale="rezero"), dict(zero_init_residual=True)):
        with pytest.raises(ValueError, match="plain net"):
            create_model("plain20", **kw)


# ---- depth and precision ----------------------------------------------------------------------


def run_deep_mlp(depth: int, scheme: str) -> None:
    """Forward+backward of a norm-free residual MLP in fp32, bf16 autocast and pure bf16."""
    torch.manual_seed(0)
    model = create_model(f"resmlp-{depth}", img_size=4, width=16, branch_scale=scheme, norm="none")
    x = torch.randn(8, 3, 4, 4)
    for dtype, autocast in ((torch.float32, False), (torch.float32, True), (torch.bfloat16, False)):
        model = model.to(dtype)
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            y = model(x.to(dtype))
        y.float().square().mean().backward()
        assert torch.isfinite(y).all(), (scheme, dtype, autocast)
        assert all(torch.isfinite(p.grad).all() for p in model.parameters()), (
            scheme,
            dtype,
            autocast,
        )


@pytest.mark.parametrize("scheme", ["rezero", "skipinit", "fixup"])
def test_deep_norm_free_mlp_is_finite(scheme):
    run_deep_mlp(1002, scheme)


def test_deep_norm_free_mlp_without_a_scheme_blows_up():
    """The contrast that makes the test above meaningful: x + F(x) doubles the variance per block."""
    torch.manual_seed(0)
    model = create_model("resmlp-1002", img_size=4, width=16, norm="none")
    with torch.no_grad():
        y = model(torch.randn(8, 3, 4, 4))
    assert not torch.isfinite(y).all() or y.abs().max() > 1e30


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["rezero", "skipinit", "fixup"])
def test_10000_layer_norm_free_mlp_is_finite(scheme):
    run_deep_mlp(10_002, scheme)


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["fixup"])  # the other schemes: the MLP test above
def test_10000_layer_norm_free_cifar_resnet_is_finite(scheme):
    """ResNet-10004 (5001 basic blocks, no normalisation): the forward pass stays finite and of
    moderate size in fp32, bf16 autocast and pure bf16 (4x4 inputs keep it to seconds)."""
    torch.manual_seed(0)
    model = create_model("resnet-10004", branch_scale=scheme).eval()
    x = torch.randn(4, 3, 4, 4)
    with torch.no_grad():
        for dtype, autocast in (
            (torch.float32, False),
            (torch.float32, True),
            (torch.bfloat16, False),
        ):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                y = model.to(dtype)(x.to(dtype)).float()
            assert torch.isfinite(y).all() and y.abs().max() < 1e3, (scheme, dtype, autocast)


# ---- torch.compile ----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, kw",
    [
        ("resnet-8", {}),  # basic blocks and option A shortcuts, compiled in seconds
        ("resmlp-6", dict(branch_scale="fixup", norm="none")),
    ],
)
def test_torch_compile_matches_eager(name, kw):
    model = build(name, **kw)
    x = torch.randn(4, 3, 16, 16)
    compiled = torch.compile(model)
    y = compiled(x)
    y.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)
