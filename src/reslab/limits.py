"""Sizes checked before anything is allocated: what a command asks for against what the machine has.

`available_memory` reads what this process may still use (the kernel's MemAvailable, capped by a
cgroup's memory limit in a container); `check_memory` refuses, in one line, a request larger than
that; `model_size` builds a model on the meta device (no memory, no initialisation) to count its
parameters and the activations of one example before the real build.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where it is used: the CLI's option checks need none of it
    import torch
    from torch import nn

MAX_SIDE = 8192  # pixels a side of an image or a model's input


def available_memory() -> int | None:
    """Bytes of memory this process may still allocate, or None where the system does not say."""
    limits = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                limits.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError):
        pass
    try:  # cgroup v2: a container's limit, less what the group already uses
        cap = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = Path("/sys/fs/cgroup/memory.current").read_text().strip()
        if cap != "max":
            limits.append(max(int(cap) - int(used), 0))
    except (OSError, ValueError):
        pass
    if not limits and hasattr(os, "sysconf"):
        try:
            limits.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (OSError, ValueError):
            pass
    return min(limits) if limits else None


def check_memory(nbytes: int, what: str, hint: str = "") -> None:
    """A one-line refusal before allocating: ValueError when `nbytes` exceed the memory available."""
    free = available_memory()
    if free is not None and nbytes > free:
        raise ValueError(
            f"{what} needs {_gib(nbytes)} of memory, more than the {_gib(free)} available"
            + (f"; {hint}" if hint else "")
        )


def model_size(build: Callable[[], nn.Module], input_size=None) -> tuple[int, int]:
    """(parameters, activation elements of one example) of the model `build()` makes, counted on
    the meta device: nothing is allocated or initialised, so a net of billions of parameters costs
    nothing to measure. `input_size` (C, H, W): also run one meta forward pass for the activations
    (0 when not given or when the model cannot run on the meta device)."""
    import torch

    with torch.device("meta"):
        model = build()
    params = sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())
    acts = 0
    if input_size is not None:
        total = []

        def count(_module, _inputs, out):
            if isinstance(out, torch.Tensor):
                total.append(out.numel())

        hooks = [m.register_forward_hook(count) for m in model.modules() if not list(m.children())]
        try:
            with torch.no_grad():
                model.eval()(torch.empty(1, *input_size, device="meta"))
            acts = sum(total)
        except Exception:  # an op without a meta kernel: the parameters alone are still counted
            acts = 0
        finally:
            for h in hooks:
                h.remove()
    return params, acts


def check_model(
    build: Callable[[], nn.Module],
    what: str,
    input_size=None,
    batch: int = 0,
    device: torch.device | str = "cpu",
    training: bool = True,
) -> tuple[int, int]:
    """Refuse, in one line and before the real build, a model that cannot fit: its parameters (4
    bytes each, three times over when training: weights, gradients, momentum) and, for `batch` > 0,
    the activations of `batch` images of `input_size` (C, H, W), against the memory of `device`.
    Returns (parameters, activation elements of one image)."""
    import torch

    params, acts = model_size(build, input_size if batch else None)
    need = 4 * params * (3 if training else 1) + 4 * acts * batch
    free = device_memory(device)
    if free is not None and need > free:
        doing = f"training it at batch {batch}" if training else "building it"
        size = f"{params:,} parameters" + (f" and {acts:,} activations an image" if batch else "")
        hint = "; try a smaller model" + (", --batch-size or --grad-checkpoint" if batch else "")
        raise ValueError(
            f"{what} has {size}: {doing} needs about {_gib(need)}, more than the {_gib(free)} "
            f"{torch.device(device)} has free{hint}"
        )
    return params, acts


def device_memory(device: torch.device | str = "cpu") -> int | None:
    """Free bytes on `device`: a GPU's own memory, else the memory this process may allocate."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return available_memory()


def check_int(value: int, name: str, low: int, high: int) -> int:
    """`value` if it is an integer in [low, high], else a one-line ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer from {low:,} to {high:,}, got {value!r}")
    return value


def _gib(nbytes: float) -> str:
    if nbytes >= 2**30:
        return f"{nbytes / 2**30:,.1f} GiB"
    if nbytes >= 2**20:
        return f"{math.ceil(nbytes / 2**20):,} MiB"
    return f"{nbytes:,} bytes"
