"""to_residual / to_plain: grouping, shortcuts and projections, plain twins without any path around
their layers, and weights carried over unchanged."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reslab.models import append_blocks, create_model
from reslab.models.convert import SequentialBlock, to_plain, to_residual


def cbr(c_in: int, c_out: int, stride: int = 1, padding: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, 3, stride, padding, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    ]


def plain_cnn() -> nn.Sequential:
    """stem, two 8-channel conv pairs, one pair 8->16 with stride 2, head (children 0..20)."""
    torch.manual_seed(0)
    layers = [
        *cbr(3, 8),
        *cbr(8, 8),
        *cbr(8, 8),
        *cbr(8, 8),
        *cbr(8, 8),
        *cbr(8, 16, 2),
        *cbr(16, 16),
    ]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5))


def randomize_bn_(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


X = torch.randn(4, 3, 16, 16)


# ---------------------------------------------------------------------------------------------
# grouping


def test_grouping_follows_the_documented_rules():
    seq = plain_cnn()
    res = to_residual(seq, example_input=X)
    assert list(dict(res.named_children())) == [
        "0",
        "1",
        "2",
        "block1",
        "block2",
        "block3",
        "21",
        "22",
        "23",
    ]
    for block, first in zip(res.residual_blocks(), (3, 9, 15), strict=True):
        # branch: conv, bn, relu, conv, bn; post: the relu after the addition
        assert [n for n, _ in block.branch.named_children()] == [str(first + i) for i in range(5)]
        assert [n for n, _ in block.post.named_children()] == [str(first + 5)]
        assert getattr(block.branch, str(first + 4)) is seq[first + 4]
    assert "(block3): SequentialBlock(\n    shortcut='B'" in repr(res)


def test_leftover_layers_stem_and_head():
    seq = nn.Sequential(*[nn.Linear(6, 6) for _ in range(6)])
    names = lambda m: list(dict(m.named_children()))  # noqa: E731
    assert names(to_residual(seq)) == ["0", "block1", "block2", "5"]
    assert names(to_residual(seq, every=3)) == [
        "0",
        "block1",
        "4",
        "5",
    ]  # 4 left over: fewer than 3
    assert names(to_residual(seq, stem=0, head=0)) == ["block1", "block2", "block3"]
    assert names(to_residual(seq, every=1, stem=2, head=0)) == [
        "0",
        "1",
        "block1",
        "block2",
        "block3",
        "block4",
    ]
    # a barrier (shape-changing layer without weights) splits groups
    seq = nn.Sequential(*cbr(3, 4), *cbr(4, 4), nn.MaxPool2d(2), *cbr(4, 4), *cbr(4, 4), *cbr(4, 4))
    assert names(to_residual(seq, example_input=X, head=0)) == [
        "0",
        "1",
        "2",
        "3",
        "4",
        "5",
        "6",
        "block1",
        "13",
        "14",
        "15",
    ]


def test_weights_intact_and_shared():
    seq = randomize_bn_(plain_cnn()).train()
    state = {k: v.clone() for k, v in seq.state_dict().items()}
    res = to_residual(seq, example_input=X)
    assert seq.training and all(m.training for m in seq.modules())  # modes restored
    assert all(torch.equal(v, seq.state_dict()[k]) for k, v in state.items())  # BN stats untouched
    original = {id(p) for p in seq.parameters()}
    new = [p for p in res.parameters() if id(p) not in original]
    assert original <= {id(p) for p in res.parameters()}
    assert [tuple(p.shape) for p in new] == [(16, 8, 1, 1)]  # only block3's projection is new


# ---------------------------------------------------------------------------------------------
# shortcuts


def test_projection_only_where_shapes_change():
    res = to_residual(plain_cnn(), example_input=X)
    b1, b2, b3 = res.residual_blocks()
    assert b1.downsample is None and b2.downsample is None and b3.projects and not b1.projects
    proj = b3.downsample
    assert isinstance(proj, nn.Conv2d) and proj.kernel_size == (1, 1) and proj.stride == (2, 2)
    assert (proj.in_channels, proj.out_channels, proj.bias) == (8, 16, None)
    x = torch.randn(2, 8, 15, 15)  # odd size: a strided 1x1 conv rounds up like the padded 3x3
    assert b3.eval()(x).shape == (2, 16, 8, 8)

    mlp = nn.Sequential(
        nn.Linear(4, 8),
        nn.ReLU(),
        nn.Linear(8, 8),
        nn.ReLU(),
        nn.Linear(8, 12),
        nn.ReLU(),
        nn.Linear(12, 3),
    )
    (block,) = to_residual(mlp).residual_blocks()
    assert isinstance(block.downsample, nn.Linear) and block.downsample.weight.shape == (12, 8)


def block_outputs(model: nn.Module, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    seen = []
    hooks = [
        b.register_forward_hook(lambda m, i, o: seen.append((i[0], o)))
        for b in model.residual_blocks()
    ]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return seen


def test_zeroed_branches_compute_the_identity():
    torch.manual_seed(0)
    seq = nn.Sequential(
        *cbr(3, 8),
        *(m for _ in range(4) for m in cbr(8, 8)),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
    )
    res = to_residual(randomize_bn_(seq), example_input=X).eval()
    assert len(res.residual_blocks()) == 2  # (8 -> 8) x 4 after the stem: two blocks of two
    for block in res.residual_blocks():
        last_norm = block.branch_norms()[-1]
        last_norm.weight.data.zero_()
        last_norm.bias.data.zero_()
    for block_in, block_out in block_outputs(res, X):
        assert torch.equal(block_out, block_in)  # relu(0 + a) = a for a >= 0
    outside = nn.Sequential(*(m for m in res if not isinstance(m, SequentialBlock))).eval()
    with torch.no_grad():
        assert torch.equal(res(X), outside(X))


def test_converted_model_trains():
    torch.manual_seed(0)
    res = to_residual(plain_cnn(), example_input=X)
    x, y = torch.randn(16, 3, 16, 16), torch.randint(0, 5, (16,))
    opt = torch.optim.SGD(res.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for _ in range(20):
        loss = F.cross_entropy(res(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert res.block3.downsample.weight.grad.abs().sum() > 0  # the projection learns too


# ---------------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize(
    "layers, match",
    [
        (
            [*cbr(3, 4), *cbr(4, 4, padding=0), *cbr(4, 4), *cbr(4, 4)],
            r"block1 changes a spatial size 16 -> 14, which no strided 1x1 conv",
        ),
        (
            [
                *cbr(3, 4),
                nn.Conv2d(4, 4, 3, padding=1),
                nn.ReLU(),
                nn.Linear(16, 16),
                nn.ReLU(),
                nn.Linear(16, 2),
            ],
            "mixes Conv2d and Linear",
        ),
    ],
)
def test_unhandled_shapes_raise_one_line(layers, match):
    with pytest.raises(ValueError, match=match) as e:
        to_residual(nn.Sequential(*layers), example_input=X)
    assert "\n" not in str(e.value)


def test_bad_arguments():
    with pytest.raises(ValueError, match="nn.Sequential"):
        to_residual(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="every >= 1"):
        to_residual(nn.Sequential(nn.Linear(2, 2)), every=0)
    with pytest.raises(ValueError, match="fails at layer '3'"):
        to_residual(nn.Sequential(*cbr(3, 4), nn.Linear(5, 5)), example_input=X)
    with pytest.raises(ValueError, match="pass example_input"):
        to_residual(nn.Sequential(nn.Flatten(), nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="no residual blocks"):
        to_plain(nn.Sequential(nn.Linear(2, 2)))


# ---------------------------------------------------------------------------------------------
# plain twins


@pytest.mark.parametrize(
    "name, plain_name, size",
    [
        ("resnet20", "plain20", 16),
        ("resnet18", "plain18", 32),
        ("resmlp-6", "plainmlp-6", 8),
        ("preact_resnet-20", "preact_plain-20", 16),  # its name from the registry's `twin`
    ],
)
def test_to_plain_equals_the_registered_plain_twin(name, plain_name, size):
    torch.manual_seed(0)
    kw = {"img_size": size} if "mlp" in name else {}
    model = randomize_bn_(create_model(name, **kw)).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        before = model(x)
    plain = to_plain(model)
    twin = create_model(plain_name, **kw).eval()
    twin.load_state_dict(plain.state_dict(), strict=True)
    assert plain.model_name == plain_name and plain.default_cfg["residual"] is False
    with torch.no_grad():
        assert torch.equal(plain(x), twin(x))
        assert not torch.allclose(plain(x), before)  # the shortcuts mattered ...
        assert torch.equal(model(x), before)  # ... and the input model still has them


def test_to_plain_of_to_residual_is_the_original_sequential():
    seq = randomize_bn_(plain_cnn()).eval()
    res = to_residual(seq, example_input=X)
    plain = to_plain(res)
    assert all(b.shortcut == "none" and b.downsample is None for b in plain.residual_blocks())
    assert len(plain.state_dict()) == len(seq.state_dict())  # projection dropped
    with torch.no_grad():
        assert torch.equal(plain(X), seq(X))
        assert not torch.allclose(res(X), seq(X))


@pytest.mark.parametrize(
    "make",
    [lambda: create_model("plain20"), lambda: to_plain(to_residual(plain_cnn(), example_input=X))],
)
def test_plain_twin_has_no_path_around_its_layers(make):
    """Switch one block's branch off: a plain net then outputs the same for every input."""
    model = make().eval()
    block = model.residual_blocks()[1]
    block.branch_norms()[-1].weight.data.zero_()
    block.branch_norms()[-1].bias.data.zero_()
    x1, x2 = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        out = model(torch.cat([x1, x2]))
        assert torch.equal(out[:2], out[2:])
        block.shortcut = "B"  # with its shortcut back, the input gets through
        out = model(torch.cat([x1, x2]))
        assert not torch.allclose(out[:2], out[2:])


def test_to_plain_keeps_a_name_the_registry_does_not_know():
    model = create_model("resnet-8")
    model.model_name = "my-net"
    assert to_plain(model).model_name == "my-net"


# ---------------------------------------------------------------------------------------------
# appending blocks


@pytest.mark.parametrize(
    "name, deeper, size", [("resnet-8", "resnet-20", 16), ("resmlp-4", "resmlp-8", 4)]
)
def test_append_blocks_runs_them_after_the_last_block(name, deeper, size):
    torch.manual_seed(0)
    kw = {"img_size": size} if "mlp" in name else {}
    model = randomize_bn_(create_model(name, **kw)).eval()
    extra = create_model(deeper, **kw).residual_blocks()[-2:]  # shaped like the last stage
    for block in extra:  # F = 0 at init, so that each block is the identity on ReLU outputs
        nn.init.zeros_(block.branch_norms()[-1].weight)
    longer = append_blocks(model, extra).eval()
    blocks = longer.residual_blocks()
    assert len(blocks) == len(model.residual_blocks()) + 2 and blocks[-2:] == extra
    last = blocks[-3]  # the copy of the model's last block: same stage, before the new ones
    stage = next(m for m in longer.modules() if isinstance(m, nn.Sequential) and last in list(m))
    assert list(stage)[-2:] == extra
    originals = {id(p) for p in model.parameters()}
    assert not any(id(p) in originals for p in longer.parameters())  # a copy
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(longer(x), model(x))
        nn.init.ones_(extra[0].branch_norms()[-1].weight)
        assert not torch.allclose(longer(x), model(x))  # ... and they do run


def test_append_blocks_needs_a_stage():
    res = to_residual(plain_cnn(), example_input=X)  # its blocks sit in the model itself
    with pytest.raises(ValueError, match="not held in an nn.Sequential stage"):
        append_blocks(res, [])
