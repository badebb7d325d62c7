"""Exported models compute what the PyTorch model computes.

ONNX files run in onnxruntime (CPU) and agree with PyTorch within 1e-4 for every family, plain twin
and shortcut option, at a batch size and (conv nets) an image size other than the example the export
traced; onnx's checker accepts them. torch.export's .pt2 files, loaded back, give identical outputs.
Weights travel: a torchvision state dict exported through reslab gives torchvision's outputs.
"""

import base64
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torchvision
from torch import nn

from reslab.cli import main
from reslab.data import Normalization
from reslab.export import export_model, read_onnx_metadata
from reslab.models import create_model, read_metadata, save_weights
from reslab.models.blocks import Bottleneck
from reslab.models.registry import resolve
from reslab.models.resnet import ResNet

CASES = [  # every family, a plain twin, each shortcut option, both block kinds, branch scales
    ("resnet-8", {}),  # CIFAR, option A: parameter-free subsample + zero channels
    ("resnet-8", {"shortcut": "B"}),
    ("resnet-8", {"shortcut": "C", "branch_scale": "fixup"}),  # scalar biases/multipliers, no norm
    # ImageNet's ResNet-18 (option B): test_torchvision_weights_through_onnx
    ("bottleneck-imagenet", {}),  # resnet50's stem and blocks at 1 block per stage, small widths
    ("preact_resnet-8", {"shortcut": "A"}),
    ("preact_resnet-8", {"shortcut": "C", "norm": "group"}),
    ("preact_resnet-11", {}),  # pre-activation bottlenecks, option B
    ("resmlp4", {}),  # identity shortcut
    ("resmlp4", {"shortcut": "C", "branch_scale": "rezero"}),
    ("plainmlp4", {}),  # the plain twins are the same classes with the shortcuts off
]
IDS = [n + "".join(f"-{v}" for v in kw.values()) for n, kw in CASES]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def build(name: str, **kw) -> nn.Module:
    """A small model with every parameter and norm statistic away from its init (zero-init scales,
    Fixup's zero layers and unit batch-norm statistics would hide mistakes), in train mode.
    ImageNet nets trace 64 x 64 images (last stage 2 x 2), the others 8 x 8."""
    torch.manual_seed(0)
    if name == "bottleneck-imagenet":
        model = ResNet(Bottleneck, (1, 1, 1, 1), (4, 8, 8, 8), num_classes=5, stem="imagenet")
        model.default_cfg = dict(family="imagenet", input_size=(3, 64, 64))
    else:
        kw = {"num_classes": 5, "img_size": 64 if resolve(name)[0].name == "imagenet" else 8, **kw}
        model = create_model(name, **kw)
    with torch.no_grad():
        for p in model.parameters():
            if p.numel() == 1 or p.std() == 0:  # constant init: ones, zeros, scalar scales
                p.add_(0.2 * torch.randn_like(p))
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model


def inputs(model: nn.Module) -> torch.Tensor:
    """A batch of 3 (the export traced 2), and larger images than traced for the conv nets."""
    c, h, w = model.default_cfg["input_size"]
    grow = 0 if model.default_cfg["family"] == "mlp" else h // 2
    return torch.randn(3, c, h + grow, w + grow, generator=torch.Generator().manual_seed(1))


def run_onnx(path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x.numpy()})[0]


@pytest.mark.slow
@pytest.mark.parametrize("name, kw", CASES, ids=IDS)
def test_onnx_matches_pytorch(name, kw, tmp_path):
    model = build(name, **kw)
    path = export_model(model, tmp_path / "model.onnx")
    assert model.training  # export ran in eval mode and left the mode as it was
    onnx.checker.check_model(str(path), full_check=True)
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # weights inside the file
    x = inputs(model)
    with torch.no_grad():
        want = model.eval()(x).numpy()
    got = run_onnx(path, x)
    assert got.shape == want.shape == (3, 5)
    assert np.abs(got - want).max() < 1e-4


@pytest.mark.parametrize("name, kw", CASES[::2], ids=IDS[::2])  # one of each family
def test_torch_export_round_trip_is_identical(name, kw, tmp_path):
    model = build(name, **kw).eval()
    path = export_model(model, tmp_path / "model.pt2", format="torch-export")
    loaded = torch.export.load(path).module()
    x = inputs(model)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


@pytest.mark.slow
def test_features_export_to_onnx(tmp_path):
    features = create_model("resnet-8", img_size=8, features_only=True, out_indices=(0, 2, 3))
    path = export_model(features.eval(), tmp_path / "features.onnx")
    x = torch.randn(3, 3, 12, 12)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["output0", "output1", "output2"]
    got = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        want = features(x)
    for a, b in zip(got, want, strict=True):
        assert a.shape == b.shape and np.abs(a - b.numpy()).max() < 1e-4


@pytest.mark.slow
def test_torchvision_weights_through_onnx(tmp_path):
    """A torchvision ResNet-18 state dict, exported by name with --weights, runs in onnxruntime
    as torchvision runs it."""
    torch.manual_seed(0)
    tv = torchvision.models.resnet18(num_classes=7)
    with torch.no_grad():
        for m in tv.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    torch.save(tv.state_dict(), tmp_path / "resnet18-tv.pth")
    out = tmp_path / "onnx" / "resnet18.onnx"  # the folder is created
    args = ["export", "--model", "resnet18", "--weights", str(tmp_path / "resnet18-tv.pth")]
    assert main([*args, "--num-classes", "7", "--img-size", "64", "--out", str(out)]) == 0
    x = torch.randn(2, 3, 96, 80)
    with torch.no_grad():
        want = tv.eval()(x).numpy()
    assert np.abs(run_onnx(out, x) - want).max() < 1e-4


def test_reslab_weights_bring_their_settings(tmp_path, capsys):
    """A reslab .safetensors file names its classes, input size and options: exporting it by name
    needs nothing else, and gives that model's outputs."""
    model = build("resmlp-6", num_classes=3, in_chans=1, img_size=(6, 4), width=16, shortcut="C")
    save_weights(model, tmp_path / "w.safetensors")
    out = tmp_path / "m.pt2"
    weights = str(tmp_path / "w.safetensors")
    assert main(["export", "--model", "resmlp-6", "--weights", weights, "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    x = torch.randn(4, 1, 6, 4)
    with torch.no_grad():
        assert torch.equal(torch.export.load(out).module()(x), model.eval()(x))


def test_onnx_metadata_props_carry_the_weights_record(tmp_path):
    """An ONNX export records in metadata_props what the weights file records: the model, its sizes
    and options, and the input normalisation, here a mean image, read back bit for bit, both by
    `read_onnx_metadata` and by plain base64 + numpy from onnxruntime's custom metadata."""
    model = build("resmlp-6", num_classes=3, in_chans=1, img_size=(6, 4), width=16, shortcut="C")
    image = torch.rand(1, 6, 4)
    weights = save_weights(
        model, tmp_path / "w.safetensors", normalization=Normalization("digits", image, (1.0,))
    )
    out = tmp_path / "m.onnx"
    argv = ["export", "--model", "resmlp-6", "--weights", str(weights), "--out", str(out)]
    assert main(argv) == 0
    meta, want = read_onnx_metadata(out), read_metadata(weights)
    assert meta.pop("normalization").mean.equal(want.pop("normalization").mean)
    assert meta == want and meta["default_cfg"]["shortcut"] == "C"
    raw = ort.InferenceSession(str(out)).get_modelmeta().custom_metadata_map
    record = json.loads(raw["normalization"])
    assert record["kind"] == "pixel-mean" and record["data"] == "digits"
    decoded = np.frombuffer(base64.b64decode(record["mean_image"]), "<f4").reshape(record["shape"])
    assert np.array_equal(decoded, image.numpy())
    x = torch.randn(2, 1, 6, 4)  # the graph takes normalised inputs, as the model does
    with torch.no_grad():
        assert np.abs(run_onnx(out, x) - model.eval()(x).numpy()).max() < 1e-4
    plain = tmp_path / "plain.onnx"  # a model with no record: the model's part only
    export_model(create_model("resmlp-4", num_classes=3, img_size=4), plain)
    assert read_onnx_metadata(plain)["default_cfg"]["num_classes"] == 3
    assert "normalization" not in read_onnx_metadata(plain)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--out", "m.tflite"], "cannot tell the export format"),
        (["--out", "m.pt2", "--format", "onnx"], "onnx files end in .onnx"),
        (["--out", "m.onnx", "--weights", "missing.pth"], "no such weights file: missing.pth"),
        (["--out", "taken.txt/m.onnx"], "taken.txt is a file, not a folder"),
        (["--out", "."], "is a folder"),
        (["--out", "m.onnx", "--weights", "w.safetensors"], "holds a resnet-8, not a resnet-14"),
        (["--out", "m.onnx", "--model-arg", "shortcut=D"], "shortcut must be one of"),
        (["--out", "m.onnx", "--img-size", "8", "8", "8"], "--img-size takes N or H W"),
    ],
)
def test_bad_input_is_one_line_error(args, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "taken.txt").write_text("")
    save_weights(create_model("resnet-8"), tmp_path / "w.safetensors")
    assert main(["export", "--model", "resnet-14", *args]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert not list(tmp_path.glob("m.*"))


def test_bad_format_from_python(tmp_path):
    with pytest.raises(ValueError, match="export format must be one of onnx, torch-export"):
        export_model("resnet-8", tmp_path / "m.onnx", format="tflite")
    with pytest.raises(ValueError, match="need a model name"):
        export_model(create_model("resnet-8"), tmp_path / "m.onnx", num_classes=3)


def test_export_help_is_complete(capsys):
    with pytest.raises(SystemExit) as e:
        main(["export", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for option in ("--model", "--weights", "--format", "--out", "--num-classes", "--in-chans",
                   "--img-size", "--opset", "--model-arg", "onnx", "torch-export"):  # fmt: skip
        assert option in out
