"""`create_model("<base>+<variant>")`: the registry builds the base net, then `variants.apply` swaps its
units; a variant name keeps everything the base name gives (class count, input size, in_chans,
features_only and out_indices), and variants.py never imports the registry.
(The units' formulas are checked in tests/studies/test_shortcuts.py.)"""

import ast
from pathlib import Path

import pytest
import torch
from torch import nn

import reslab.models.variants as variants
from reslab.models import create_model
from reslab.models.variants import Unit

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_variants_never_import_the_registry():
    imported = set()
    for node in ast.walk(ast.parse(Path(variants.__file__).read_text())):
        if isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported |= {f"{node.module}.{a.name}" for a in node.names} | {node.module or ""}
    reslab = {m for m in imported if m.startswith("reslab")}
    assert reslab and all(m.startswith("reslab.models.blocks") for m in reslab), reslab


@pytest.mark.parametrize("base", ["resnet18", "resnet34", "resnet-8", "resmlp-4"])
def test_variant_names_keep_the_family_defaults(base):
    """Bug fixed: "resnet18+identity" had 10 classes where "resnet18" has 1000."""
    with torch.device("meta"):
        ref = create_model(base)
        for variant in ("identity", "gate-shortcut", "full-preact"):
            model = create_model(f"{base}+{variant}")
            assert model.fc.out_features == ref.fc.out_features
            assert all(isinstance(b, Unit) for b in model.residual_blocks())
            cfg = dict(model.default_cfg)
            assert (cfg.pop("name"), cfg.pop("variant")) == (f"{base}+{variant}", variant)
            assert cfg == {k: v for k, v in ref.default_cfg.items() if k != "name"}
    assert ref.fc.out_features == (1000 if base.startswith("resnet") and "-" not in base else 10)


def test_variant_names_take_classes_channels_and_image_size():
    with torch.device("meta"):
        model = create_model("resmlp-4+gate-shortcut", num_classes=3, in_chans=1, img_size=8)
        assert model.stem[0].in_features == 64 and model.fc.out_features == 3
        assert model.default_cfg["input_size"] == (1, 8, 8)
        assert create_model("resnet18+identity").default_cfg["input_size"] == (3, 224, 224)
        assert create_model("resnet-8+conv-shortcut").default_cfg["shortcut"] == "C"


@pytest.mark.parametrize(
    "base, size, out_indices",
    [("resnet-8", 16, None), ("resnet-8", 16, (1, 3)), ("resmlp-6", 8, (-1,))],
)
def test_features_only_on_variant_names(base, size, out_indices):
    """Bug fixed: features_only / out_indices were dropped on "+variant" names. The identity
    variant is the base net (same parameters, same init), so its features are the base's."""
    kw = dict(img_size=size, features_only=True, out_indices=out_indices)
    torch.manual_seed(0)
    ref = create_model(base, **kw).eval()
    torch.manual_seed(0)
    model = create_model(f"{base}+identity", **kw).eval()
    assert isinstance(model, type(ref)) and model.feature_info == ref.feature_info
    assert model.default_cfg["features_only"] and model.default_cfg["out_indices"] == out_indices
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        feats, expected = model(x), ref(x)
    assert len(feats) == len(expected) == len(ref.feature_info)
    for f, e in zip(feats, expected, strict=True):
        torch.testing.assert_close(f, e, rtol=0, atol=0)
    gated = create_model(f"{base}+gate-shortcut", **kw)
    assert [f.shape for f in gated(x)] == [e.shape for e in expected]
    with pytest.raises(ValueError, match="pass both"):
        create_model(f"{base}+identity", out_indices=(1,))


def test_bad_variant_names_fail_with_one_line():
    cases = [
        ("resmlp-6+gated", {}, "unknown variant 'gated'"),
        ("plainmlp-6+identity", {}, "variants need a residual base net; try 'resmlp-6+identity'"),
        (
            "preact_resnet-20+identity",
            {},
            "variants need residual BasicBlocks, Bottlenecks or MLPBlocks without branch_scale; "
            "got PreActBasicBlock",
        ),
        ("resmlp-6+scale-both", {"zero_init_residual": True}, "variants take no zero_init"),
        ("resnet-8+conv-shortcut", {"shortcut": "B"}, "conv-shortcut sets shortcut='C'"),
        ("resnet-8+identity", {"widht": 3}, "unknown option(s) ['widht']"),
    ]
    for name, kw, message in cases:
        with pytest.raises(ValueError) as err:
            create_model(name, **kw)
        assert message in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_apply_refuses_a_plain_net():
    with pytest.raises(ValueError, match="residual base net"):
        variants.apply(create_model("plainmlp-6"), "identity")
    with pytest.raises(ValueError, match="residual base net"):
        variants.apply(nn.Sequential(nn.Linear(2, 2)), "identity")
