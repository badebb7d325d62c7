"""`reslab info`: the machine, what reslab will compute in on it and why, and a few seconds' measured
training speed of ResNet-20 in each candidate precision and layout — what a bug report needs."""

from __future__ import annotations

import os
import platform
import time

import torch
import torch.nn.functional as F

from reslab.training import precision
from reslab.training.tracking import provenance

# (amp, channels_last) candidates, in the order they are measured and printed
CANDIDATES = (("off", "off"), ("off", "on"), ("bf16", "off"), ("bf16", "on"))


def machine(device: torch.device | str = "cpu") -> dict:
    """The machine as reslab sees it: CPU, instruction sets, threads, malloc, versions, accelerators."""
    device = torch.device(device)
    native, evidence = precision.native_bf16("cpu")
    isa = {
        "avx2": torch.cpu._is_avx2_supported(),
        "avx512": torch.cpu._is_avx512_supported(),
        "avx512_bf16": torch.cpu._is_avx512_bf16_supported(),
        "amx": torch.cpu._is_amx_tile_supported(),
    }
    info = {
        **provenance(device),
        "cpu": precision.cpu_name(),
        "arch": platform.machine(),
        "isa": [k for k, v in isa.items() if v],
        "native_bf16": native,
        "native_bf16_evidence": evidence,
        "onednn_bf16_check": bool(
            torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        ),
        "cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cuda": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available()
        else [],
        "mps": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
    }
    if device.type == "cuda":
        info["device_native_bf16"] = precision.native_bf16(device)
    return info


def measure(
    amp: str,
    channels_last: str,
    device: torch.device | str = "cpu",
    batch_size: int = 32,
    seconds: float = 2.0,
    model: str = "resnet20",
) -> float:
    """Training images/s of `model` on random CIFAR-sized batches: one untimed step, then steps
    until `seconds` have passed (at least one)."""
    from reslab.models import create_model

    device = torch.device(device)
    torch.manual_seed(0)
    net = create_model(model, num_classes=10).to(device)
    prec = precision.choose(amp, channels_last, device, precision.has_conv(net), warn=False)
    fmt = torch.channels_last if prec.channels_last else torch.contiguous_format
    net = net.to(memory_format=fmt).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch_size, 3, 32, 32, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch_size,), device=device)

    def step() -> None:
        with prec.autocast(device):
            loss = F.cross_entropy(net(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    _sync(device)
    n, t0 = 0, time.perf_counter()
    while n == 0 or time.perf_counter() - t0 < seconds:
        step()
        _sync(device)
        n += 1
    return n * batch_size / (time.perf_counter() - t0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def info(
    device: str = "auto", seconds: float = 2.0, batch_size: int = 32, measure_speed: bool = True
) -> dict:
    """Everything `reslab info` prints, as a dict: machine, the automatic choice and its reason for
    conv nets and for MLPs, and (measure_speed) ResNet-20 training images/s per candidate."""
    from reslab.training import distributed

    if not seconds > 0 or batch_size < 1:
        raise ValueError(
            f"--seconds must be > 0 and --batch-size >= 1, got {seconds} and {batch_size}"
        )
    dev = distributed.setup(device).device
    out = {
        "machine": machine(dev),
        "auto_conv": precision.choose("auto", "auto", dev, conv=True).to_dict(),
        "auto_mlp": precision.choose("auto", "auto", dev, conv=False).to_dict(),
    }
    if measure_speed:
        out["speed"] = {
            "model": "resnet20",
            "batch_size": batch_size,
            "images_per_s": {
                _label(a, c): measure(a, c, dev, batch_size, seconds) for a, c in CANDIDATES
            },
        }
    return out


def _label(amp: str, channels_last: str) -> str:
    return f"{'bf16' if amp == 'bf16' else 'fp32'} {'channels_last' if channels_last == 'on' else 'NCHW'}"


def format_info(r: dict) -> str:
    """`info()`'s dict as the lines `reslab info` prints."""
    m = r["machine"]
    lines = [
        f"reslab {m['reslab']}, torch {m['torch']}, Python {m['python']}, {m['platform']}",
        f"CPU: {m['cpu']} ({m['arch']}), {m['cpus']} CPUs ({m['usable_cpus']} usable), "
        f"torch threads {m['threads']}, malloc {m['malloc']}",
        f"CPU instructions: capability {m['cpu_capability']}; {', '.join(m['isa']) or 'none of AVX2/AVX-512'}; "
        f"native bf16: {'yes' if m['native_bf16'] else 'no'} ({m['native_bf16_evidence']}); "
        f"oneDNN bf16 check: {m['onednn_bf16_check']}",
        f"GPU: {', '.join(m['cuda']) or 'no CUDA device'}; MPS: {'yes' if m['mps'] else 'no'}",
        f"device: {m['device']}",
        f"conv nets: {_describe(r['auto_conv'])}",
        f"fully connected nets: {r['auto_mlp']['amp']}: {r['auto_mlp']['reason']}",
    ]
    if "speed" in r:
        s = r["speed"]
        ips = s["images_per_s"]
        best = max(ips.values())
        auto = _label(
            "bf16" if r["auto_conv"]["amp"] == "bf16" else "off",
            "on" if r["auto_conv"]["channels_last"] else "off",
        )
        lines.append(f"ResNet-20 training, batch {s['batch_size']}, measured now:")
        for label, v in ips.items():
            mark = "  <- auto" if label == auto else ""
            lines.append(f"  {label:<20} {v:8.1f} images/s  ({v / best:4.0%} of the best){mark}")
    return "\n".join(lines)


def _describe(d: dict) -> str:
    return f"{d['amp']}, {'channels_last' if d['channels_last'] else 'NCHW'}: {d['reason']}"
