"""Activation checkpointing: the same gradients and batch-norm buffers as the normal path, and less
memory saved for the backward pass."""

import copy

import pytest
import torch

from reslab.models import create_model
from reslab.models.recompute import resolve_segments

# one net per family, a variant, a norm-free net, a plain twin (img_size: the MLP's input)
CASES = [
    ("resnet-20", {}, 32),
    ("plain-20", {}, 32),
    ("resnet18", {}, 64),
    ("preact_resnet-29", {}, 32),  # bottlenecks
    ("preact_resnet-20", {"block": "basic"}, 32),
    ("resmlp-10", {}, 8),
    ("resnet-14+gate-shortcut", {}, 32),
    ("resnet-20", {"branch_scale": "fixup"}, 32),
    ("resmlp-10", {"norm": "none", "branch_scale": "rezero"}, 8),
]


def _step(model: torch.nn.Module, x: torch.Tensor) -> None:
    model(x).square().mean().backward()


@pytest.mark.parametrize(("name", "kwargs", "size"), CASES, ids=lambda c: str(c))
@pytest.mark.parametrize("segments", [True, 3])
def test_checkpointed_gradients_and_buffers_equal_the_normal_path(name, kwargs, size, segments):
    torch.manual_seed(0)
    normal = create_model(name, img_size=size, **kwargs)
    ckpt = copy.deepcopy(normal)
    ckpt.set_grad_checkpointing(segments)
    assert ckpt.grad_checkpoint >= 2
    x = torch.randn(8, 3, size, size)
    for _ in range(2):  # the second step sees running statistics updated once by the first
        _step(normal, x)
        _step(ckpt, x)
    for (n, a), b in zip(normal.named_parameters(), ckpt.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-7, msg=n)
    # running statistics count each batch once, although the recomputation sees it again
    for (n, a), b in zip(normal.named_buffers(), ckpt.buffers(), strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=n)
    tracked = [b for n, b in ckpt.named_buffers() if n.endswith("num_batches_tracked")]
    assert all(int(t) == 2 for t in tracked)


def test_create_model_option_and_outputs_without_gradients():
    torch.manual_seed(0)
    model = create_model("resnet-56", grad_checkpoint=True)
    assert model.grad_checkpoint == 6  # ceil(sqrt(27 blocks))
    plain = copy.deepcopy(model)
    plain.set_grad_checkpointing(False)
    x = torch.randn(4, 3, 32, 32)
    model.eval(), plain.eval()
    with torch.no_grad():  # inference never recomputes
        torch.testing.assert_close(model(x), plain(x), rtol=0, atol=0)


def _saved_bytes(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes of the tensors autograd keeps for the backward pass of one forward."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(seen.values())


def test_checkpointing_keeps_far_fewer_activations():
    """ResNet-110 (54 blocks, 8 segments): the forward keeps segment inputs and the last segment only."""
    torch.manual_seed(0)
    model = create_model("resnet-110")
    x = torch.randn(16, 3, 32, 32)
    full = _saved_bytes(model, x)
    model.set_grad_checkpointing(True)
    assert _saved_bytes(model, x) < full / 4


@pytest.mark.parametrize("bad", [-1, 2.5, "yes"])
def test_bad_grad_checkpoint_is_a_one_line_error(bad):
    with pytest.raises(ValueError, match="grad_checkpoint must be") as e:
        create_model("resnet20", grad_checkpoint=bad)
    assert "\n" not in str(e.value)


def test_resolve_segments():
    assert resolve_segments(False, 600) == 0
    assert resolve_segments(True, 600) == 25
    assert resolve_segments(40, 600) == 40
    assert resolve_segments(40, 10) == 10
