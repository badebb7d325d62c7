"""Peak resident memory and step time of CPU training with and without activation checkpointing.

1. One training step of ResNet-1202 on CIFAR-sized input (batch 128, fp32 by default), normal and
   checkpointed, on each malloc found: the C library's (glibc), glibc forced onto mmap for large
   blocks (MALLOC_MMAP_THRESHOLD_=65536), tcmalloc and jemalloc (see reslab.training.allocator).
   Every configuration runs in a fresh process; "peak" is that process's peak resident set (VmHWM,
   model and optimizer included); "step" is the median of the steps after the first (the first
   also pays for faulting in fresh pages, reported as "first").
2. Peak memory against depth: CIFAR ResNets 20 to 1202 and residual MLPs 10 to 10,000 layers,
   normal and checkpointed, as a figure (--figure).

    python benchmarks/bench_memory.py                       # both parts, about 15 min on 2 cores
    python benchmarks/bench_memory.py --part step --steps 4
    python benchmarks/bench_memory.py --part depth --figure docs/memory.png

Run it on an otherwise idle machine: two processes sharing two cores distort every timing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

MALLOCS = {  # label -> (allocator, extra environment)
    "glibc": ("system", {}),
    "glibc-mmap": ("system", {"MALLOC_MMAP_THRESHOLD_": "65536"}),
    "tcmalloc": ("tcmalloc", {}),
    "jemalloc": ("jemalloc", {}),
}
CIFAR_DEPTHS = (20, 56, 110, 218, 434, 650, 866, 1202)
MLP_DEPTHS = (10, 100, 1000, 3000, 10000)


def worker(model: str, segments: int, batch: int, steps: int, amp: str, mlp_width: int) -> dict:
    """One process: build, then time `steps` SGD steps; returns peak resident GiB and timings."""
    import torch
    import torch.nn.functional as F

    from reslab.models import create_model
    from reslab.training import precision
    from reslab.training.allocator import current

    torch.set_flush_denormal(True)  # as the engine: deep plain nets otherwise crawl on denormals
    torch.manual_seed(0)
    mlp = model.startswith(("resmlp", "plainmlp"))
    kw = dict(width=mlp_width, img_size=32) if mlp else {}
    net = create_model(model, grad_checkpoint=segments, **kw).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    # the engine's rule (warns when bf16 is emulated on this CPU); layout as the model is built
    prec = precision.choose("bf16" if amp == "bf16" else "off", "off", "cpu", conv=not mlp)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        with prec.autocast("cpu"):
            loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    status = open("/proc/self/status").read()
    peak = int(re.search(r"VmHWM:\s+(\d+)", status)[1]) / 2**20
    return dict(
        model=model,
        segments=net.grad_checkpoint,
        malloc=current(),
        peak_gib=peak,
        first_s=times[0],
        step_s=statistics.median(times[1:]) if len(times) > 1 else times[0],
        loss=float(loss),
    )


def measure(model: str, checkpoint: bool, malloc: str, args: argparse.Namespace) -> dict | None:
    """`worker` in a fresh process on `malloc`; None when that malloc is not installed."""
    from reslab.training.allocator import preload_env

    name, extra = MALLOCS[malloc]
    try:
        env = preload_env(name)
    except ValueError:
        return None
    env.update(extra, OMP_NUM_THREADS=str(args.threads))
    cmd = [sys.executable, __file__, "--worker", model, str(int(checkpoint)), str(args.batch),
           str(args.steps), args.amp, str(args.mlp_width)]  # fmt: skip
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-2000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["label"] = malloc
    return result


def part_step(args: argparse.Namespace) -> list[dict]:
    print(f"\n## one training step of {args.model}, batch {args.batch}, {args.amp}, "
          f"{args.threads} threads ({args.steps} steps per process)\n")  # fmt: skip
    print(f"{'malloc':<11} {'path':<13} {'peak GiB':>9} {'first s':>8} {'step s':>7} "
          f"{'peak/normal':>12} {'step/normal':>12} {'step/glibc normal':>18}")  # fmt: skip
    rows, base = [], None
    for malloc in args.mallocs:
        normal = measure(args.model, False, malloc, args)
        if normal is None:
            print(f"{malloc:<11} (not installed; see reslab.training.allocator.INSTALL)")
            continue
        base = base or normal
        ckpt = measure(args.model, True, malloc, args)
        for r in (normal, ckpt):
            path = f"ckpt x{r['segments']}" if r["segments"] else "normal"
            print(f"{malloc:<11} {path:<13} {r['peak_gib']:9.2f} {r['first_s']:8.1f} "
                  f"{r['step_s']:7.2f} {r['peak_gib'] / normal['peak_gib']:12.2f} "
                  f"{r['step_s'] / normal['step_s']:12.2f} {r['step_s'] / base['step_s']:18.2f}",
                  flush=True)  # fmt: skip
            rows.append(r)
    return rows


def part_depth(args: argparse.Namespace) -> list[dict]:
    print(f"\n## peak resident GiB against depth (batch {args.batch}, {args.amp})\n")
    lines = [("normal", False, args.mallocs[0]), ("checkpointed", True, args.mallocs[0])]
    lines += [("checkpointed", True, m) for m in args.mallocs[1:2]]
    rows = []
    for family, depths in (("resnet-{}", args.cifar_depths), ("resmlp-{}", args.mlp_depths)):
        for depth in depths:
            cells = []
            for label, ckpt, malloc in lines:
                r = measure(family.format(depth), ckpt, malloc, args)
                if r is None:
                    continue
                r.update(depth=depth, family=family.split("-")[0], line=f"{label} ({malloc})")
                rows.append(r)
                cells.append(f"{r['line']} {r['peak_gib']:.2f}")
            print(f"{family.format(depth):<14} " + "   ".join(cells), flush=True)
    return rows


def figure(rows: list[dict], path: str) -> None:
    from reslab.report.figures import figure as new_figure
    from reslab.report.figures import save, style

    with style():
        fig, axes = new_figure(2, width=5.5, height=4)
        _draw(axes, rows)
        save(fig, path)
    print(f"figure: {path}")


def _draw(axes, rows: list[dict]) -> None:
    from reslab.report.figures import depth_axis

    for ax, family, title in zip(axes, ("resnet", "resmlp"), ("CIFAR ResNet", "residual MLP (width 64)"), strict=True):  # fmt: skip
        for line in dict.fromkeys(r["line"] for r in rows):
            pts = sorted((r["depth"], r["peak_gib"]) for r in rows if r["line"] == line and r["family"] == family)  # fmt: skip
            ax.plot(*zip(*pts, strict=True), marker="o", label=line)
        depth_axis(ax, [r["depth"] for r in rows if r["family"] == family])
        ax.set(xlabel="depth (weight layers)", ylabel="peak resident memory (GiB)",
               title=f"{title}: one training step")  # fmt: skip
        ax.set_ylim(bottom=0)
        ax.legend()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--part", choices=("step", "depth", "both"), default="both")
    p.add_argument("--model", default="resnet1202")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--amp", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--mlp-width", type=int, default=64)
    p.add_argument("--cifar-depths", type=int, nargs="+", default=CIFAR_DEPTHS)
    p.add_argument("--mlp-depths", type=int, nargs="+", default=MLP_DEPTHS)
    p.add_argument("--mallocs", nargs="+", default=list(MALLOCS), choices=list(MALLOCS))
    p.add_argument("--figure", default=None, help="write the depth figure here (PNG)")
    p.add_argument("--json", default=None, help="write every measurement here")
    p.add_argument("--worker", nargs=6, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        model, seg, batch, steps, amp, width = args.worker
        print(json.dumps(worker(model, int(seg), int(batch), int(steps), amp, int(width))))
        return
    rows = []
    if args.part in ("step", "both"):
        rows += part_step(args)
    if args.part in ("depth", "both"):
        depth_args = argparse.Namespace(**{**vars(args), "steps": 1})
        depth_args.mallocs = [m for m in args.mallocs if m != "glibc-mmap"]
        depth = part_depth(depth_args)
        rows += depth
        if args.figure:
            figure(depth, args.figure)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
