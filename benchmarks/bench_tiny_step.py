"""Step time of the digits studies' tiny nets: reslab's training step against a textbook PyTorch step.

The digits studies train many fully connected nets of width 64 and 4 to 64 layers on batches of 128.
Their step time is per-call overhead, not arithmetic (a 128 x 64 x 64 product is 0.5 M multiply-adds),
so what the loop does around the model counts. For each net (plain and residual, 4 / 16 / 64 layers)
this times, on one thread, in the same process and on the same batches:

- reference: the step everyone writes: `loss = F.cross_entropy(model(x), y)`, `zero_grad()`,
  `backward()`, `torch.optim.SGD(...).step()` (PyTorch's default foreach implementation);
- reslab: the engine's step as `reslab.training.loop` runs it (its optimizer, the learning rate set
  at every step, the metric window that every step adds to and every `log_every` steps reads).

It prints ms per step (the median of `--repeats` timed blocks of `--steps` steps) and the ratio
reference / reslab (above 1: reslab is faster). Run it on an otherwise idle machine; the machine and
its CPU are printed first.

    python benchmarks/bench_tiny_step.py
    python benchmarks/bench_tiny_step.py --depths 64 --steps 100 --repeats 5
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torch.nn.functional as F


def build(name: str, seed: int = 0) -> torch.nn.Module:
    from reslab.models import create_model

    torch.manual_seed(seed)
    return create_model(name, num_classes=10, in_chans=1, img_size=(8, 8), width=64).train()


def batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`n` training batches of the built-in digits, through reslab's loader (normalised, 128 each)."""
    from reslab.data import Loader, load_dataset

    data = load_dataset("digits", "train")
    loader = Loader(data, 128, train=True, augment=False, seed=0, device=torch.device("cpu"))
    out: list[tuple[torch.Tensor, torch.Tensor]] = []
    epoch = 0
    while len(out) < n:
        out += list(loader.epoch(epoch))
        epoch += 1
    return out[:n]


def reference_step(model, opt):
    def step(x, y, i):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def reslab_step(model, cfg):
    """The engine's step, as in reslab.training.loop._train (less evaluation and checkpoints)."""
    from reslab.training.bookkeeping import StepStats
    from reslab.training.distributed import Dist
    from reslab.training.optim import lr_at, make_optimizer

    one = Dist(0, 1, torch.device("cpu"))

    opt = make_optimizer(cfg, model, torch.device("cpu"))
    stats = StepStats(cfg.log_every, torch.device("cpu"), 0)

    def step(x, y, i):
        lr = lr_at(i, 1980, cfg)
        for group in opt.param_groups:
            group["lr"] = lr
        logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        stats.add(loss, logits, y, lr)
        if stats.n == cfg.log_every:
            stats.reduce(one)  # the train line's numbers: the one wait for the host per window
            stats.reset(i)

    return step


def time_steps(step, data, steps: int, repeats: int) -> float:
    """Median CPU ms per step over `repeats` blocks of `steps` steps, after a warm-up block.

    CPU time of this single-threaded process, not wall time: on a shared machine other processes
    take the core away, and that time counts against neither step."""
    times = []
    for r in range(repeats + 1):
        t = time.thread_time()
        for i in range(steps):
            x, y = data[(r * steps + i) % len(data)]
            step(x, y, r * steps + i)
        if r:  # the first block warms up allocator and caches
            times.append((time.thread_time() - t) / steps * 1e3)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--depths", type=int, nargs="+", default=[4, 16, 64])
    p.add_argument("--steps", type=int, default=200, help="steps per timed block")
    p.add_argument("--repeats", type=int, default=5, help="timed blocks (the median is shown)")
    args = p.parse_args()

    from reslab.training.config import resolve

    torch.set_num_threads(1)
    torch.set_flush_denormal(True)  # as the engine does
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"capability {torch.backends.cpu.get_cpu_capability()}, 1 thread")  # fmt: skip
    data = batches(64)
    print(f"{'net':<14}{'reference ms':>14}{'reslab ms':>12}{'ratio':>8}")
    for depth in args.depths:
        for arch in ("plainmlp", "resmlp"):
            name = f"{arch}-{depth}"
            cfg = resolve("paper-digits", model=name)
            ref_model, ours_model = build(name), build(name)
            ref_opt = torch.optim.SGD(
                ref_model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4
            )
            ref = time_steps(reference_step(ref_model, ref_opt), data, args.steps, args.repeats)
            ours = time_steps(reslab_step(ours_model, cfg), data, args.steps, args.repeats)
            print(f"{name:<14}{ref:>14.3f}{ours:>12.3f}{ref / ours:>7.2f}x", flush=True)


if __name__ == "__main__":
    main()
