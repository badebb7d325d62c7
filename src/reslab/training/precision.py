"""Precision and memory layout, chosen for the machine a run is on: the one rule that training,
evaluation, the studies, the benchmarks and `reslab info` share.

bf16 autocast pays only where the hardware computes bf16. On an x86 CPU that means AVX512-BF16 or AMX;
without them PyTorch emulates bf16 and a ResNet-20 training step is about 10x *slower* than fp32
(2-core AMD EPYC Zen 3, AVX2, `reslab info`: fp32 channels_last 272 images/s, bf16 channels_last 25).
oneDNN's answer as PyTorch asks it, `torch.ops.mkldnn._is_mkldnn_bf16_supported()`, says only that
bf16 *runs*: on x86 it is AVX512-BW/VL/DQ, true on every AVX-512 CPU, where bf16 without AVX512-BF16
is still emulated (3-4x slower than fp32, as onnxruntime's own test notes say). So the test here is
the CPU's bf16 instructions (`torch.cpu._is_avx512_bf16_supported`, `_is_amx_tile_supported`); on
ARM, oneDNN's check is the CPU's BF16 extension itself. On CUDA: bf16 where the GPU computes it
(Ampere and later). channels_last is as fast or faster for conv nets on CPUs of both kinds (AVX2,
fp32: 1.1x) and on GPUs under bf16, so "auto" turns it on for conv nets on CPU and CUDA.
"""

from __future__ import annotations

import contextlib
import platform
import sys
import warnings
from dataclasses import dataclass

import torch

from reslab.training.config import AMP_MODES, SWITCHES


@dataclass(frozen=True)
class Precision:
    """What a run computes in: autocast dtype (None: fp32) and memory layout, with the reason."""

    amp: torch.dtype | None
    channels_last: bool
    reason: str
    conv: bool = True  # False: a net without convolutions, for which layout means nothing

    @property
    def name(self) -> str:
        """ "bf16" or "fp32"."""
        return "bf16" if self.amp == torch.bfloat16 else "fp32"

    def autocast(self, device: torch.device | str):
        """A context manager for the forward pass: autocast to `amp`, or nothing for fp32."""
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(torch.device(device).type, dtype=self.amp)

    def describe(self) -> str:
        """One line, e.g. "fp32, channels_last: no native bf16 here (AVX2, no AVX512-BF16 or AMX)"."""
        layout = ", channels_last" if self.channels_last else ", NCHW" if self.conv else ""
        return f"{self.name}{layout}: {self.reason}"

    def to_dict(self) -> dict:
        return {"amp": self.name, "channels_last": self.channels_last, "reason": self.reason}


def native_bf16(device: torch.device | str = "cpu") -> tuple[bool, str]:
    """Whether `device` computes bf16 in hardware, and the evidence, e.g. (False, "AVX2, no AVX512-BF16/AMX")."""
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return True, f"{name} computes bf16"
        return False, f"{name} has no native bf16"
    if device.type != "cpu":
        return False, f"bf16 autocast is not used on {device.type}"
    cap = torch.backends.cpu.get_cpu_capability()
    if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686"):
        if torch.cpu._is_amx_tile_supported():
            return True, f"{cap} with AMX"
        if torch.cpu._is_avx512_bf16_supported():
            return True, f"{cap} with AVX512-BF16"
        return False, f"{cap}, no AVX512-BF16 or AMX"
    if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return True, f"{platform.machine()} with BF16 instructions"
    return False, f"{platform.machine()} without BF16 instructions"


_warned: set[str] = set()


def choose(
    amp: str, channels_last: str, device: torch.device | str, conv: bool, warn: bool = True
) -> Precision:
    """The precision and layout for a model on `device`.

    amp: "auto" (bf16 where the hardware computes it; fully connected nets stay fp32 on a CPU, where
    their small matrices gain nothing), "bf16" (always; warns once where it is emulated), or "off".
    channels_last: "auto" (conv nets on CPU and CUDA), "on" or "off"; never for nets without convs.
    conv: whether the model has 2-d convolutions (`has_conv`). warn: False for measurements that
    ask for emulated bf16 on purpose (`reslab info`, the benchmarks)."""
    if amp not in AMP_MODES:
        raise ValueError(f"amp must be one of {', '.join(AMP_MODES)}, got {amp!r}")
    if channels_last not in SWITCHES:
        raise ValueError(
            f"channels_last must be one of {', '.join(SWITCHES)}, got {channels_last!r}"
        )
    device = torch.device(device)
    native, evidence = native_bf16(device) if amp != "off" else (False, "")
    if amp == "off":
        dtype, reason = None, "as asked (--amp off)"
    elif amp == "bf16":
        dtype, reason = torch.bfloat16, f"as asked (--amp bf16); {evidence}"
        if warn and not native and device.type == "cpu":
            _warn_once(
                "emulated-bf16",
                f"--amp bf16 on a CPU without native bf16 ({evidence}): bf16 is emulated and "
                "several times slower than fp32; --amp auto picks fp32 here",
            )
    elif not native:
        dtype, reason = None, f"no native bf16 here ({evidence})"
    elif device.type == "cpu" and not conv:
        dtype, reason = None, f"fully connected nets gain nothing from bf16 on a CPU ({evidence})"
    else:
        dtype, reason = torch.bfloat16, f"native bf16 here ({evidence})"
    cl = conv and (
        channels_last == "on" or (channels_last == "auto" and device.type in ("cpu", "cuda"))
    )
    return Precision(dtype, cl, reason, conv)


_announced: set[str] = set()


def announce(prec: Precision) -> None:
    """Print the choice on stderr, once per process and choice (a study's runs share one line)."""
    line = prec.describe()
    if line not in _announced:
        _announced.add(line)
        print(f"reslab: computing in {line}", file=sys.stderr, flush=True)


def cpu_name() -> str:
    """The CPU's model name ("AMD EPYC 7B13", "Apple M2"), or the platform's processor string."""
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8", errors="replace"):
            if line.startswith(("model name", "Model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if sys.platform == "darwin":
        import subprocess

        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True
            )
            if out.stdout.strip():
                return out.stdout.strip()
    return platform.processor() or platform.machine()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, stacklevel=3)


def has_conv(model: torch.nn.Module) -> bool:
    """Whether `model` holds 2-d convolutions (the layers channels_last and bf16 speed up)."""
    return any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
