"""The precision/layout rule: bf16 only where the hardware computes it, the reason recorded, explicit
choices respected, one warning where bf16 is asked for and emulated. The hardware check is forced
each way, so both branches run on any machine; one test checks it against the CPU's own flags."""

import json
import re
import warnings
from pathlib import Path

import pytest
import torch

from reslab.cli import main
from reslab.training import TrainConfig, precision, train
from reslab.training.trained import evaluate_weights


@pytest.fixture(params=[False, True], ids=["no-native-bf16", "native-bf16"])
def native(request, monkeypatch):
    """Pretend the CPU does (or does not) compute bf16 in hardware; fresh once-only warnings."""
    monkeypatch.setattr(precision, "native_bf16", lambda device="cpu": (request.param, "forced"))
    monkeypatch.setattr(precision, "_warned", set())
    return request.param


def test_auto_picks_bf16_only_where_native(native):
    conv = precision.choose("auto", "auto", "cpu", conv=True)
    assert conv.amp == (torch.bfloat16 if native else None)
    assert conv.name == ("bf16" if native else "fp32") and "forced" in conv.reason
    assert conv.channels_last  # faster for conv nets on CPUs of both kinds
    mlp = precision.choose("auto", "auto", "cpu", conv=False)
    assert mlp.amp is None and not mlp.channels_last  # small matmuls gain nothing from bf16


def test_explicit_choices_are_respected(native):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        off = precision.choose("off", "off", "cpu", conv=True)
        assert off == precision.Precision(None, False, "as asked (--amp off)", conv=True)
        assert off.describe() == "fp32, NCHW: as asked (--amp off)"
        bf16 = precision.choose("bf16", "on", "cpu", conv=False)
    assert bf16.amp == torch.bfloat16 and not bf16.channels_last  # no layout for an MLP
    assert len([w for w in caught if "emulated" in str(w.message)]) == (0 if native else 1)


def test_emulated_bf16_warns_once(native):
    if native:
        pytest.skip("no warning where bf16 is native")
    with pytest.warns(UserWarning, match=r"emulated and several times slower than fp32"):
        precision.choose("bf16", "auto", "cpu", conv=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        precision.choose("bf16", "auto", "cpu", conv=True)  # second time: silent
        precision.choose("bf16", "auto", "cpu", conv=True, warn=False)


def test_bad_choice_is_one_line():
    with pytest.raises(ValueError, match="amp must be one of auto, bf16, off, got 'fp16'"):
        precision.choose("fp16", "auto", "cpu", conv=True)


def test_native_check_agrees_with_the_cpu_flags():
    """Independent of torch: the kernel's list of the CPU's instruction sets."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists() or not re.search(r"^flags\s*:", cpuinfo.read_text(), re.M):
        pytest.skip("no x86 /proc/cpuinfo flags here")
    flags = set(re.search(r"^flags\s*:(.*)$", cpuinfo.read_text(), re.M)[1].split())
    native, evidence = precision.native_bf16("cpu")
    assert native == bool(flags & {"avx512_bf16", "amx_bf16"}), evidence


def _train(tmp_path, name, **kw):
    cfg = TrainConfig(
        model="resnet-8", data="digits", iters=2, batch_size=32, eval_every=2, log_every=1,
        out=str(tmp_path), name=name, progress=False, num_threads=1, **kw,
    )  # fmt: skip
    return train(cfg)


def test_training_and_evaluation_follow_the_rule(native, tmp_path, capsys):
    s = _train(tmp_path, "auto")
    assert s["amp"] == ("bf16" if native else "fp32") and s["channels_last"] is True
    assert s["precision_reason"] == precision.choose("auto", "auto", "cpu", True).reason
    env = json.loads((tmp_path / "auto" / "env.json").read_text())
    assert env["precision"] == {
        "amp": s["amp"],
        "channels_last": True,
        "reason": s["precision_reason"],
    }
    assert f"computing in {s['amp']}, channels_last: " in capsys.readouterr().err
    off = _train(tmp_path, "off", amp="off", channels_last="off")
    assert off["amp"] == "fp32" and off["channels_last"] is False
    r = evaluate_weights("resnet-8", str(tmp_path / "auto" / "model.safetensors"), num_threads=1)
    assert r["precision"]["amp"] == s["amp"]
    fp32 = evaluate_weights("resnet-8", str(tmp_path / "auto" / "model.safetensors"), amp="off")
    assert fp32["precision"]["amp"] == "fp32" and fp32["n"] == r["n"]
    assert fp32["error"] == pytest.approx(r["error"], abs=0.05)  # same weights, other precision


def test_info_command(capsys):
    assert main(["info", "--no-measure"]) == 0
    out = capsys.readouterr().out
    native, evidence = precision.native_bf16("cpu")
    assert torch.__version__ in out and evidence in out
    assert f"native bf16: {'yes' if native else 'no'}" in out
    assert f"conv nets: {precision.choose('auto', 'auto', 'cpu', True).describe()}" in out
    assert main(["info", "--json", "--seconds", "0.01", "--batch-size", "2"]) == 0
    r = json.loads(capsys.readouterr().out)
    ips = r["speed"]["images_per_s"]
    assert list(ips) == ["fp32 NCHW", "fp32 channels_last", "bf16 NCHW", "bf16 channels_last"]
    assert all(v > 0 for v in ips.values())
    assert r["machine"]["cpus"] >= 1 and r["auto_conv"]["amp"] in ("bf16", "fp32")
