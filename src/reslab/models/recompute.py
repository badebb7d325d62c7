"""Activation checkpointing over a network's blocks (Chen et al. 2016, "Training Deep Nets with
Sublinear Memory Cost").

The blocks are cut into `segments` runs of consecutive blocks. The forward pass keeps only each
segment's input; the backward pass recomputes one segment at a time, so at most one segment's
activations are alive at once. With about sqrt(blocks) segments, activation memory grows as the
square root of depth instead of linearly, for the price of one more forward pass (the last segment
is not recomputed: its activations are needed first and kept, as `checkpoint_sequential` does).

Batch norm sees the same batch twice (forward and recomputation). The recomputation uses that
batch's statistics, as the forward did, but does not fold them into the running statistics a
second time, so a checkpointed step leaves exactly the buffers of a normal step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def resolve_segments(grad_checkpoint: bool | int, num_blocks: int) -> int:
    """Number of segments for `grad_checkpoint`: False/0 -> 0 (off); True/1 -> ceil(sqrt(blocks));
    N >= 2 -> N (at most one segment per block)."""
    if isinstance(grad_checkpoint, bool):
        grad_checkpoint = int(grad_checkpoint)
    if not isinstance(grad_checkpoint, int) or grad_checkpoint < 0:
        raise ValueError(
            "grad_checkpoint must be False/0 (off), True/1 (sqrt(blocks) segments) or a number of "
            f"segments >= 2; got {grad_checkpoint!r}"
        )
    if grad_checkpoint == 0 or num_blocks == 0:
        return 0
    if grad_checkpoint == 1:
        return math.ceil(math.sqrt(num_blocks))
    return min(grad_checkpoint, num_blocks)


def run_blocks(blocks: Sequence[nn.Module], x: torch.Tensor, segments: int) -> torch.Tensor:
    """x through `blocks` in order; with `segments` > 0 and gradients on, checkpointed per segment."""
    if segments <= 1 or not torch.is_grad_enabled():
        for block in blocks:
            x = block(x)
        return x
    bounds = [round(i * len(blocks) / segments) for i in range(segments + 1)]
    for start, end in zip(bounds[:-2], bounds[1:-1], strict=True):
        x = checkpoint(_once_counted(blocks[start:end]), x, use_reentrant=False)
    for block in blocks[bounds[-2] :]:  # the last segment is needed first: keep it
        x = block(x)
    return x


def _once_counted(blocks: Sequence[nn.Module]) -> Callable[[torch.Tensor], torch.Tensor]:
    """A segment's forward; its second and later calls (the backward pass's recomputation) update
    throw-away copies of the batch-norm buffers, so the running statistics count each batch once."""
    norms = [
        m for b in blocks for m in b.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]
    calls = 0

    def forward(x: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        kept = {}
        if calls > 1:  # swap in copies (not in-place: the originals may be saved for backward)
            for m in norms:
                for name in _BN_BUFFERS:
                    buf = getattr(m, name)
                    if buf is not None:
                        kept[m, name] = buf
                        setattr(m, name, buf.clone())
        try:
            for block in blocks:
                x = block(x)
            return x
        finally:  # also when autograd stops the recomputation early
            for (m, name), buf in kept.items():
                setattr(m, name, buf)

    return forward


_BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


class GradCheckpointing:
    """Mixin for models whose `residual_blocks()` can be checkpointed (timm's method name)."""

    grad_checkpoint: int = 0  # segments of recomputation in training forwards; 0: off

    def residual_blocks(self) -> Sequence[nn.Module]:
        raise NotImplementedError  # the model's blocks, in forward order

    def set_grad_checkpointing(self, enable: bool | int = True) -> None:
        """Recompute activations in the backward pass: True -> about sqrt(blocks) segments, an int
        N >= 2 -> N segments, False -> off. Forward outputs and gradients are unchanged."""
        self.grad_checkpoint = resolve_segments(enable, len(self.residual_blocks()))
