"""load_weights / save_weights against files in the real formats: torchvision state dicts saved with
torch.save, akamaster/pytorch_resnet_cifar10 `.th` checkpoints (checked against an independent
re-implementation of that project's ResNet-20), reslab's safetensors, and hostile pickles."""

from __future__ import annotations

import contextlib
import os
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from reslab.models import create_model
from reslab.models.weights import load_weights, read_metadata, save_weights


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights everywhere, including BN affine parameters and running statistics."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.copy_(
                    torch.randn(m.weight.shape, generator=g) * (2 / m.weight[0].numel()) ** 0.5
                )
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.num_batches_tracked.fill_(123)
    return model.eval()


# ---------------------------------------------------------------------------------------------
# torchvision


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"])
def test_torchvision_state_dict_gives_same_outputs(name, tmp_path):
    torch.manual_seed(0)
    reference = randomize_(getattr(torchvision.models, name)(weights=None))
    path = tmp_path / f"{name}.pth"
    torch.save(reference.state_dict(), path)  # how torchvision checkpoints are written

    model = create_model(name, num_classes=1000).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        assert load_weights(model, path) is model
        out, ref = model(x), reference(x)
    assert not torch.allclose(before, ref)  # the comparison below can fail
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(model.layer1[0].bn1.num_batches_tracked, torch.tensor(123))


# ---------------------------------------------------------------------------------------------
# akamaster/pytorch_resnet_cifar10: an independent re-implementation of its resnet.py


class AkaBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int, option: str):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.option, self.planes = option, planes
        self.project = stride != 1 or in_planes != planes
        if self.project and option == "B":
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )
        else:
            self.shortcut = nn.Sequential()

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.project and self.option == "A":  # the reference's LambdaLayer
            p = self.planes // 4
            return F.relu(out + F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, p, p), "constant", 0))
        return F.relu(out + self.shortcut(x))


class AkaResNet(nn.Module):
    def __init__(self, n: int, option: str = "A", num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        planes_in, stages = 16, []
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for s in [stride] + [1] * (n - 1):
                blocks.append(AkaBlock(planes_in, planes, s, option))
                planes_in = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(64, num_classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.avg_pool2d(out, out.size()[3])
        return self.linear(out.view(out.size(0), -1))


@contextlib.contextmanager
def storages_tagged_cuda():
    """Make torch.save record every tensor's location as "cuda:0", as it does on a GPU machine.

    torch.save writes, for each storage, the location tag of the first tagger in
    torch.serialization's package registry that answers; this one answers first.
    """
    entry = (-1000, lambda storage: "cuda:0", lambda storage, location: None)
    torch.serialization._package_registry.insert(0, entry)
    try:
        yield
    finally:
        torch.serialization._package_registry.remove(entry)


def write_aka_checkpoint(path, reference: nn.Module, zipfile: bool, epoch: bool = False) -> None:
    """A `.th` file as trainer.py writes it: DataParallel state dict + best_prec1 (+ epoch)."""
    state = nn.DataParallel(reference).state_dict()  # 'module.'-prefixed keys
    assert isinstance(state, OrderedDict) and "module.linear.weight" in state
    checkpoint = {"state_dict": state, "best_prec1": torch.tensor(91.73)}
    if epoch:
        checkpoint["epoch"] = 161
    with storages_tagged_cuda():
        torch.save(checkpoint, path, _use_new_zipfile_serialization=zipfile)


@pytest.mark.parametrize("zipfile", [True, False], ids=["zip", "legacy"])
@pytest.mark.parametrize("option", ["A", "B"])
def test_akamaster_checkpoint_gives_reference_outputs(option, zipfile, tmp_path):
    torch.manual_seed(0)
    reference = randomize_(AkaResNet(3, option))
    path = tmp_path / "model.th"
    write_aka_checkpoint(path, reference, zipfile, epoch=not zipfile)
    assert b"cuda:0" in path.read_bytes()
    if not torch.cuda.is_available():  # the file really asks for a GPU when loaded naively
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(path, weights_only=True)

    model = load_weights(create_model("resnet20", shortcut=option).eval(), path)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        out, ref = model(x), reference(x)
    # the features agree bit for bit; F.avg_pool2d and nn.AdaptiveAvgPool2d sum in different orders
    assert (out - ref).abs().max() <= 1e-5 * ref.abs().max().clamp(min=1)
    assert all(t.device.type == "cpu" for t in model.state_dict().values())


def test_akamaster_checkpoint_of_other_depth_names_the_keys(tmp_path):
    path = tmp_path / "resnet32.th"
    write_aka_checkpoint(path, AkaResNet(5), zipfile=True)
    with pytest.raises(ValueError) as e:
        load_weights(create_model("resnet20"), path)
    msg = str(e.value)
    assert "\n" not in msg and "resnet20" in msg
    # 2 extra blocks per stage x 3 stages x 12 keys (2 convs, 2 BN with 5 entries each)
    assert "72 unexpected keys (layer1.3.conv1.weight" in msg
    assert "..." in msg


# ---------------------------------------------------------------------------------------------
# reslab's own format


def test_save_load_round_trip_with_metadata(tmp_path):
    torch.manual_seed(0)
    model = randomize_(create_model("resnet20", num_classes=7))
    path = save_weights(model, tmp_path / "sub" / "r20.safetensors")
    meta = read_metadata(path)
    assert meta["format"] == "reslab" and meta["model_name"] == "resnet20"
    assert meta["default_cfg"]["depth"] == 20 and meta["default_cfg"]["num_classes"] == 7
    assert meta["reslab_version"]

    other = create_model("resnet20", num_classes=7).eval()
    load_weights(other, path)
    for (k, a), (_, b) in zip(model.state_dict().items(), other.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), other(x))


def test_save_channels_last_and_state_dict_source(tmp_path):
    model = create_model("resnet18", num_classes=5).to(memory_format=torch.channels_last)
    save_weights(model, tmp_path / "w.safetensors")
    other = load_weights(create_model("resnet18", num_classes=5), tmp_path / "w.safetensors")
    assert torch.equal(other.conv1.weight, model.conv1.weight)
    assert load_weights(create_model("resnet18", num_classes=5), model.state_dict()) is not None


def test_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "w.safetensors"
    old = create_model("resnet20")
    save_weights(old, path)
    before = path.read_bytes()

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        save_weights(create_model("resnet20"), path)
    assert path.read_bytes() == before  # the old file is untouched ...
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "w.safetensors"
    ]  # ... and no temp file is left


# ---------------------------------------------------------------------------------------------
# mismatches and bad files


def test_mismatches_name_the_keys():
    src = create_model("resnet20", num_classes=10).state_dict()
    with pytest.raises(
        ValueError,
        match=r"2 shape mismatches, file vs model, \(fc\.weight \(10, 64\) vs \(100, 64\), fc\.bias",
    ):
        load_weights(create_model("resnet20", num_classes=100), src)
    with pytest.raises(ValueError, match=r"missing keys \(layer1\.3\.conv1\.weight, .*, \.\.\.\)"):
        load_weights(create_model("resnet32"), src)
    with pytest.raises(ValueError, match=r"1 unexpected keys \(extra\)"):
        load_weights(create_model("resnet20"), {**src, "extra": torch.zeros(1)})
    partial = {k: v for k, v in src.items() if k.startswith("layer1")}
    model = load_weights(create_model("resnet20"), partial, strict=False)
    assert torch.equal(model.layer1[0].conv1.weight, src["layer1.0.conv1.weight"])


def test_wrong_architecture_is_refused(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(ValueError, match=r"does not fit resnet34: \d+ missing keys \(layer1\.2\."):
        load_weights(create_model("resnet34", num_classes=1000), path)


class Hostile:
    """Unpickling this calls open(marker, "w"), i.e. runs code from the file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_hostile_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "weights.pth"
    torch.save({"conv1.weight": torch.zeros(1), "payload": Hostile(str(marker))}, path)
    with pytest.raises(ValueError, match="asks to run code when loaded"):
        load_weights(create_model("resnet20"), path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the file is really hostile: an unsafe load runs it
    assert marker.exists()


def test_bad_sources(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_weights(create_model("resnet20"), tmp_path / "nope.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a weights file at all")
    with pytest.raises(ValueError, match="not a safetensors or torch.save file"):
        load_weights(create_model("resnet20"), junk)
    with pytest.raises(ValueError, match="not a state dict"):
        load_weights(create_model("resnet20"), {"conv1.weight": [1, 2]})
    with pytest.raises(ValueError, match="path or a state dict"):
        load_weights(create_model("resnet20"), 42)
