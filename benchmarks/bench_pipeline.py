"""One CIFAR-10 training epoch of ResNet-20: reslab's pipeline against the one most people copy.

reslab:    load_dataset + Loader (whole dataset one uint8 tensor, batched crop/flip/normalise on
           tensors) + create_model("resnet20") + the precision and layout reslab picks on this
           machine (`reslab.training.precision`: bf16 + channels_last where the CPU computes bf16,
           fp32 + channels_last where it does not).
reference: torchvision CIFAR10 on the same files + PIL RandomCrop(32, padding=4) +
           RandomHorizontalFlip + ToTensor + Normalize + DataLoader, fp32, NCHW.
Same model, same SGD, batch 128, same run. Prints images/s of both and the ratio, the data
pipelines alone, and (--ablate) what each lever contributes on this machine: the tensor data
pipeline, channels_last, bf16 (where native) and torch.compile.

    python benchmarks/bench_pipeline.py --batches 50 --repeats 3 --ablate

This is a benchmark, not a test: on a shared machine, run it when nobody else is measuring.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from reslab.data import Loader, load_dataset
from reslab.data.integrity import data_root
from reslab.models import create_model
from reslab.training import precision

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


def train_images_per_s(
    batches, n: int, warmup: int, prec: precision.Precision, compile: bool = False
) -> float:
    """Train on `warmup` then `n` batches from the iterator `batches`; images/s over the `n`."""
    model, opt = make_model(prec.channels_last)
    net = torch.compile(model) if compile else model
    t0, seen = 0.0, 0
    for i, (x, y) in enumerate(batches):
        if i == warmup:
            t0, seen = time.perf_counter(), 0
        if i == warmup + n:
            break
        with prec.autocast("cpu"):
            logits = net(x)  # (B, 10)
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen += len(y)
    return seen / (time.perf_counter() - t0)


def setting(amp: str, channels_last: bool) -> precision.Precision:
    """A fixed precision/layout for the ablation (the same rule, forced; no emulation warning)."""
    return precision.choose(amp, "on" if channels_last else "off", "cpu", conv=True, warn=False)


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
        help="also time each lever alone: the data pipeline, channels_last, bf16 (where the CPU "
        "computes it natively, or with --bf16), torch.compile of the model",
    )
    p.add_argument("--bf16", action="store_true", help="ablate bf16 even where it is emulated")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    native, evidence = precision.native_bf16("cpu")
    auto = precision.choose("auto", "auto", "cpu", conv=True)
    print(
        f"torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} CPUs, "
        f"CPU {precision.cpu_name()} ({evidence}), data {args.data_dir}\n"
        f"reslab's automatic choice here: {auto.describe()}"
    )

    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the shared copy's md5s differ (see its README)
        data = load_dataset("cifar10", "train", root=args.data_dir, download=False)
    print(f"load_dataset('cifar10'): {time.perf_counter() - t:.2f}s for {len(data)} images")

    def reslab_loader(channels_last: bool = True) -> Loader:
        return Loader(data, BATCH, train=True, augment=True, seed=0, channels_last=channels_last)

    def ours(prec: precision.Precision, compile: bool = False):
        batches = reslab_batches(reslab_loader(prec.channels_last))
        return lambda: train_images_per_s(batches, n, w, prec, compile)

    ref = reference_loader(args.data_dir, args.workers)
    n, w = args.batches, args.warmup
    fp32 = setting("off", False)
    runs = {
        f"reslab (Loader, {auto.name}, {'channels_last' if auto.channels_last else 'NCHW'})": ours(auto),
        f"reference (PIL + DataLoader x{args.workers}, fp32, NCHW)": lambda: train_images_per_s(reference_batches(ref), n, w, fp32),
    }  # fmt: skip
    if args.ablate:
        levers = [("off", False), ("off", True)]
        if native or args.bf16:
            levers += [("bf16", False), ("bf16", True)]
        for amp, cl in levers:
            prec = setting(amp, cl)
            runs[f"reslab data, {prec.name}, {'channels_last' if cl else 'NCHW'}"] = ours(prec)
        runs[f"reslab data, {auto.name}, channels_last, torch.compile"] = ours(auto, compile=True)
    best = {k: 0.0 for k in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            best[name] = max(best[name], run())
    print(f"\nResNet-20 training, batch {BATCH}, {n} timed batches (best of {args.repeats}):")
    ref_ips = list(best.values())[1]
    for name, ips in best.items():
        print(f"  {name:58s} {ips:8.0f} images/s  {ips / ref_ips:5.2f}x reference")
    if args.ablate and not (native or args.bf16):
        print("  (bf16 not timed: emulated on this CPU; --bf16 times it, `reslab info` too)")
    names = list(best)
    print(f"  speed-up reslab / reference: {best[names[0]] / best[names[1]]:.2f}x")

    m = max(n, 100)
    ours = data_only(reslab_batches(reslab_loader()), m, w)
    theirs = data_only(reference_batches(ref), m, w)
    print(f"\nData pipeline alone ({m} batches): reslab {ours:.0f} images/s ({BATCH / ours * 1e3:.3f} ms/batch), "
          f"reference {theirs:.0f} images/s ({BATCH / theirs * 1e3:.2f} ms/batch)")  # fmt: skip


if __name__ == "__main__":
    main()
