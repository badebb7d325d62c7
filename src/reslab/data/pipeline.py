"""Batched tensor data pipeline: the whole dataset stays one uint8 tensor on the device.

Augmentation is the CIFAR recipe of He et al. 2015, §4.2: pad 4 pixels with zeros, take a random
32x32 crop, flip horizontally with probability 1/2; then normalise by the per-channel mean/std.
With a mean image instead (`subtract_mean_image`, He et al.'s "per-pixel mean subtracted") the order
is the paper's: subtract the mean where each pixel came from, then pad with 0 (the mean) and crop.
It runs on whole batches (one gather from the padded batch, one multiply-add), on CPU or GPU,
with no per-image Python and no PIL (the idea of KellerJordan/cifar10-airbench).

Everything random about an epoch (the order and each position's crop offsets and flip) is drawn
from a generator seeded by (seed, epoch) alone, so batch b of epoch e is a pure function of
(seed, epoch, b): resuming is `loader.epoch(e, start=b)`. `batch_size` is the GLOBAL batch;
rank r of `world_size` W takes the r-th contiguous slice of every global batch, and the random
draws are made for the whole global batch, so W ranks together see exactly what one rank sees.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from reslab.data.datasets import ImageData


@dataclass(frozen=True)
class EpochPlan:
    """The random draws of one epoch, one entry per position in the epoch's order."""

    order: torch.Tensor  # int64 (N,) image index at each position
    dy: torch.Tensor  # int64 (N,) crop offsets in [0, 2 * pad], in the padded image
    dx: torch.Tensor  # int64 (N,)
    flip: torch.Tensor  # bool (N,)


def epoch_plan(seed: int, epoch: int, n: int, *, shuffle: bool, pad: int, flip: bool) -> EpochPlan:
    """Draw an epoch's order and augmentation parameters from a generator seeded by (seed, epoch)."""
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed and epoch must be >= 0, got seed={seed}, epoch={epoch}")
    # SeedSequence mixes (seed, epoch) so nearby epochs/seeds give unrelated streams
    state = np.random.SeedSequence([seed, epoch]).generate_state(2, np.uint32)
    g = torch.Generator().manual_seed((int(state[0]) << 31) ^ int(state[1]))
    order = torch.randperm(n, generator=g) if shuffle else torch.arange(n)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    flips = (
        torch.randint(0, 2, (n,), generator=g).bool() if flip else torch.zeros(n, dtype=torch.bool)
    )
    return EpochPlan(order, dy, dx, flips)


def crop_flip(
    x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor, pad: int
) -> torch.Tensor:
    """Zero-pad by `pad`, crop back to (H, W) at offsets (dy, dx), then mirror where `flip`.

    x: (B, C, H, W) any dtype; dy, dx: (B,) int in [0, 2 * pad]; flip: (B,) bool.
    Image i is `hflip(crop(pad(x[i]), top=dy[i], left=dx[i]))` if flip[i], as torchvision's
    RandomCrop(padding=pad) followed by RandomHorizontalFlip.
    """
    b, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))  # (B, C, H + 2p, W + 2p), zeros outside
    j = torch.arange(w, device=x.device)
    cols = dx[:, None] + torch.where(flip[:, None], w - 1 - j, j)  # (B, W) source column
    rows = dy[:, None] + torch.arange(h, device=x.device)  # (B, H) source row
    src = rows[:, :, None] * (w + 2 * pad) + cols[:, None, :]  # (B, H, W) flat index into padded
    hw_pad = (h + 2 * pad) * (w + 2 * pad)
    out = torch.gather(xp.view(b, c, hw_pad), 2, src.view(b, 1, h * w).expand(b, c, h * w))
    return out.view(b, c, h, w)


class Loader:
    """Batches of normalised float32 images from an `ImageData`, augmented on the device.

    Args:
        data: the dataset split (uint8 images are moved to `device` once).
        batch_size: the GLOBAL batch size, split across `world_size` ranks (must divide evenly).
        train: shuffle each epoch (and default drop_last=True); eval keeps the dataset order.
        augment: random `pad`-pixel crop and (if `flip`) horizontal flip.
        seed: with the epoch, determines order and augmentation.
        device: where batches are made and returned.
        channels_last: return x in torch.channels_last memory format.
        drop_last: drop the final partial batch (default: `train`).
        rank, world_size: this process' slice of each global batch.
        mean, std: per-channel normalisation in [0, 1] pixel units (default: data.mean/std); `mean`
            may be a mean image (C, H, W) instead, subtracted before the crop.
    """

    def __init__(
        self,
        data: ImageData,
        batch_size: int,
        *,
        train: bool,
        augment: bool,
        seed: int = 0,
        device: str | torch.device = "cpu",
        channels_last: bool = False,
        drop_last: bool | None = None,
        rank: int = 0,
        world_size: int = 1,
        mean: Sequence[float] | torch.Tensor | None = None,
        std: Sequence[float] | None = None,
        pad: int = 4,
        flip: bool = True,
    ) -> None:
        if (
            batch_size < 1
            or world_size < 1
            or not 0 <= rank < world_size
            or batch_size % world_size
        ):
            raise ValueError(
                f"need batch_size >= 1 divisible by world_size >= 1 and 0 <= rank < world_size, "
                f"got batch_size={batch_size}, rank={rank}, world_size={world_size}"
            )
        if seed < 0 or pad < 0:
            raise ValueError(f"seed and pad must be >= 0, got seed={seed}, pad={pad}")
        mean = data.mean if mean is None else mean
        std = data.std if std is None else std
        c = data.images.shape[1]
        self.mean_image = isinstance(mean, torch.Tensor)
        if isinstance(mean, torch.Tensor) and mean.shape != data.images.shape[1:]:
            raise ValueError(
                f"a mean image must be (C, H, W) = {tuple(data.images.shape[1:])}, "
                f"got {tuple(mean.shape)}"
            )
        if len(mean) != c or len(std) != c or min(std) <= 0:
            raise ValueError(f"mean/std need {c} values with std > 0, got mean={mean}, std={std}")
        self.device = torch.device(device)
        self.images = data.images.to(self.device)  # uint8 (N, C, H, W), stays there
        self.labels = data.labels.to(self.device)
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.train, self.augment, self.seed, self.pad, self.flip = train, augment, seed, pad, flip
        self.channels_last = channels_last
        self.drop_last = train if drop_last is None else drop_last
        # (x / 255 - mean) / std == x * scale + shift, one fused pass from uint8 to float32
        std_t = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, c, 1, 1)
        mean_t = torch.as_tensor(mean, dtype=torch.float32).to(self.device)
        self.scale = 1.0 / (255.0 * std_t)
        self.shift = -(mean_t if self.mean_image else mean_t.view(1, c, 1, 1)) / std_t

    def __len__(self) -> int:
        n, b = len(self.labels), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def plan(self, epoch: int) -> EpochPlan:
        """This epoch's order and augmentation draws (on CPU; identical on every rank)."""
        return epoch_plan(
            self.seed, epoch, len(self.labels), shuffle=self.train, pad=self.pad, flip=self.flip
        )

    def rank_slice(self, batch: int) -> slice:
        """Positions in the epoch order that this rank gets for global batch `batch`."""
        lo, hi = batch * self.batch_size, min((batch + 1) * self.batch_size, len(self.labels))
        n, w, r = hi - lo, self.world_size, self.rank  # contiguous parts, sizes differ by <= 1
        return slice(lo + r * (n // w) + min(r, n % w), lo + (r + 1) * (n // w) + min(r + 1, n % w))

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (x float32 (B, C, H, W) normalised, y int64 (B,)) for batches start..len-1."""
        if not 0 <= start <= len(self):
            raise ValueError(f"start must be in [0, {len(self)}], got {start}")
        p = self.plan(epoch)
        order = p.order.to(self.device)
        if self.augment:
            dy, dx, flip = (t.to(self.device) for t in (p.dy, p.dx, p.flip))
        for b in range(start, len(self)):
            s = self.rank_slice(b)
            idx = order[s]
            x = self.images.index_select(0, idx)  # (B, C, H, W) uint8
            if self.augment and self.mean_image:  # mean image off where each pixel came from, pad 0
                x = crop_flip((x * self.scale).add_(self.shift), dy[s], dx[s], flip[s], self.pad)
            elif self.augment:  # pad black, as torchvision's RandomCrop(padding), then normalise
                x = (crop_flip(x, dy[s], dx[s], flip[s], self.pad) * self.scale).add_(self.shift)
            else:
                x = (x * self.scale).add_(self.shift)  # float32; uint8 * float promotes
            if self.channels_last:  # after normalising: broadcasting (1, C, 1, 1) is slow in NHWC
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.labels[idx]
