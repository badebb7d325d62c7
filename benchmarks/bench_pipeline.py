"""One CIFAR-10 training epoch of ResNet-20: reslab's pipeline against the one most people copy.

reslab:    load_dataset + Loader (whole dataset one uint8 tensor, batched crop/flip/normalise on
           tensors) + create_model("resnet20") + bf16 autocast + channels_last.
reference: torchvision CIFAR10 on the same files + PIL RandomCrop(32, padding=4) +
           RandomHorizontalFlip + ToTensor + Normalize + DataLoader, fp32, NCHW.
Same model, same SGD, batch 128, same run. Prints images/s of both and the ratio, the data
pipelines alone, and (--ablate) what bf16 and channels_last each contribute on this machine.

    python benchmarks/bench_pipeline.py --batches 50 --repeats 3 --ablate

This is a benchmark, not a test: on a shared machine, run it when nobody else is measuring.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from reslab.data import Loader, load_dataset
from reslab.data.integrity import data_root
from reslab.models import create_model

BATCH = 128


def default_data_dir() -> Path:
    shared = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
    return shared.resolve() if (shared / "cifar-10-batches-py").is_dir() else data_root()


def make_model(channels_last: bool) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    return model.train(), opt


def train_images_per_s(batches, n: int, warmup: int, channels_last: bool, bf16: bool) -> float:
    """Train on `warmup` then `n` batches from the iterator `batches`; images/s over the `n`."""
    model, opt = make_model(channels_last)
    amp = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    t0, seen = 0.0, 0
    for i, (x, y) in enumerate(batches):
        if i == warmup:
            t0, seen = time.perf_counter(), 0
        if i == warmup + n:
            break
        with amp:
            logits = model(x)  # (B, 10)
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen += len(y)
    return seen / (time.perf_counter() - t0)


def reslab_batches(loader: Loader):
    for epoch in range(1000):
        yield from loader.epoch(epoch)


def reference_loader(data_dir: Path, workers: int):
    from torchvision import transforms
    from torchvision.datasets import CIFAR10

    class CIFAR10AnyCopy(CIFAR10):
        # torchvision >= 0.20 checks the official md5s on every load and refuses a modified copy
        # (like ../shared/data); reslab loads it with a warning. Same files for both pipelines.
        def _check_integrity(self) -> bool:
            return True

    tf = transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
        ]
    )
    ds = CIFAR10AnyCopy(str(data_dir), train=True, transform=tf, download=False)
    return torch.utils.data.DataLoader(
        ds, BATCH, shuffle=True, drop_last=True, num_workers=workers, persistent_workers=workers > 0
    )


def reference_batches(loader):
    while True:
        yield from loader


def data_only(batches, n: int, warmup: int) -> float:
    """images/s of a data pipeline alone."""
    t0, seen = 0.0, 0
    for i, (_, y) in enumerate(batches):
        if i == warmup:
            t0, seen = time.perf_counter(), 0
        if i == warmup + n:
            break
        seen += len(y)
    return seen / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--data-dir", type=Path, default=default_data_dir(), help="holds cifar-10-batches-py/"
    )
    p.add_argument(
        "--batches", type=int, default=390, help="timed batches per pipeline (390 = one epoch)"
    )
    p.add_argument("--warmup", type=int, default=5, help="untimed batches first")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
    p.add_argument("--workers", type=int, default=2, help="reference DataLoader workers")
    p.add_argument(
        "--repeats", type=int, default=1, help="alternate the pipelines this often; report the best"
    )
    p.add_argument(
        "--ablate",
        action="store_true",
        help="also time fp32/bf16 x NCHW/channels_last (reslab data)",
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} CPUs, data {args.data_dir}"
    )

    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the shared copy's md5s differ (see its README)
        data = load_dataset("cifar10", "train", root=args.data_dir, download=False)
    print(f"load_dataset('cifar10'): {time.perf_counter() - t:.2f}s for {len(data)} images")

    def reslab_loader(channels_last: bool = True) -> Loader:
        return Loader(data, BATCH, train=True, augment=True, seed=0, channels_last=channels_last)

    ref = reference_loader(args.data_dir, args.workers)
    n, w = args.batches, args.warmup
    runs = {
        "reslab (Loader, bf16, channels_last)": lambda: train_images_per_s(reslab_batches(reslab_loader()), n, w, True, True),
        f"reference (PIL + DataLoader x{args.workers}, fp32, NCHW)": lambda: train_images_per_s(reference_batches(ref), n, w, False, False),
    }  # fmt: skip
    if args.ablate:
        for bf16 in (False, True):
            for cl in (False, True):
                name = f"reslab data, {'bf16' if bf16 else 'fp32'}, {'channels_last' if cl else 'NCHW'}"
                runs[name] = lambda bf16=bf16, cl=cl: train_images_per_s(
                    reslab_batches(reslab_loader(cl)), n, w, cl, bf16
                )
    best = {k: 0.0 for k in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            best[name] = max(best[name], run())
    print(f"\nResNet-20 training, batch {BATCH}, {n} timed batches (best of {args.repeats}):")
    for name, ips in best.items():
        print(f"  {name:55s} {ips:8.0f} images/s")
    names = list(best)
    print(f"  speed-up reslab / reference: {best[names[0]] / best[names[1]]:.2f}x")

    m = max(n, 100)
    ours = data_only(reslab_batches(reslab_loader()), m, w)
    theirs = data_only(reference_batches(ref), m, w)
    print(f"\nData pipeline alone ({m} batches): reslab {ours:.0f} images/s ({BATCH / ours * 1e3:.3f} ms/batch), "
          f"reference {theirs:.0f} images/s ({BATCH / theirs * 1e3:.2f} ms/batch)")  # fmt: skip


if __name__ == "__main__":
    main()
