"""Every registered model keeps its state-dict keys, shapes and order, so weight files, checkpoints
(whose optimizer state follows the parameter order) and torchvision weights keep loading: each model
is compared with a signature stored from the code that wrote them (`state_dict_keys.json`;
`python tests/models/test_state_dict_keys.py` rewrites it, to be done only on purpose)."""

import hashlib
import json
import pathlib

import pytest
import torch

from reslab.models import create_model, list_models

STORED = pathlib.Path(__file__).with_name("state_dict_keys.json")

# every registered name with its defaults, and each option that changes the blocks, on a small net
# of every family (a variant needs a residual base)
OPTIONS = [{"branch_scale": s} for s in ("rezero", "skipinit", "fixup")]
OPTIONS += [{"branch_scale": "fixup", "norm": "batch"}, {"shortcut": "C", "norm": "none"}]
OPTIONS += [{"shortcut": "B", "norm": "group"}, {"zero_init_residual": True}]
SMALL = ["resnet-14", "resnet-11", "preact_resnet-14", "preact_resnet-11", "resnet18", "resmlp-6"]
CASES = [(name, {}) for name in list_models()]
CASES += [(name, kw) for name in SMALL for kw in OPTIONS]
CASES += [(f"resnet-14+{v}", {}) for v in ("gate-shortcut", "conv-shortcut", "full-preact")]
CASES += [("resnet-11+relu-preact", {}), ("resmlp-6+gate-exclusive", {}), ("plain-14", {})]


def case_id(name: str, kw: dict) -> str:
    return name + "".join(f",{k}={v}" for k, v in sorted(kw.items()))


def signature(name: str, kw: dict) -> str:
    """A hash of the model's state-dict keys with their shapes and dtypes, in order."""
    with torch.device("meta"):  # no memory and no init cost, even for resnet1202 and resnet152
        model = create_model(name, **kw)
    lines = [f"{k} {tuple(v.shape)} {v.dtype}" for k, v in model.state_dict().items()]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


@pytest.mark.parametrize("name, kw", CASES, ids=[case_id(*c) for c in CASES])
def test_state_dict_keys_are_the_stored_ones(name, kw):
    stored = json.loads(STORED.read_text())
    assert signature(name, kw) == stored[case_id(name, kw)]


@pytest.mark.parametrize("kw", OPTIONS[:4], ids=[case_id("", kw) for kw in OPTIONS[:4]])
@pytest.mark.parametrize("name", ["resnet-8", "preact_resnet-11", "resmlp-4"])
def test_scaled_weights_round_trip(name, kw, tmp_path):
    """A ReZero, SkipInit or Fixup net saved and built back from its file computes what it did."""
    from reslab.models import create_saved, save_weights

    torch.manual_seed(0)
    model = create_model(name, num_classes=3, in_chans=1, img_size=8, **kw)
    with torch.no_grad():  # scalars away from their init, so that a lost one shows
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    save_weights(model, tmp_path / "model.safetensors")
    loaded = create_saved(tmp_path / "model.safetensors")
    x = torch.randn(2, 1, 8, 8)
    assert type(loaded.residual_blocks()[0]) is type(model.residual_blocks()[0])
    assert torch.equal(loaded.eval()(x), model.eval()(x))


if __name__ == "__main__":  # pragma: no cover
    STORED.write_text(json.dumps({case_id(*c): signature(*c) for c in CASES}, indent=1) + "\n")
