"""What a user waits for: the default `reslab train` command end to end, against the pipeline most
people copy doing the same training steps plus one final evaluation of both sets.

reslab:    `reslab train --model resnet20 --data cifar10 --batch-size 128` with `--iters 60` or
           `--epochs 1`, as a user types it: a new process that imports, loads the data, trains,
           scores its curve points (1,000 test images each) and its final evaluation (the 50,000
           training and 10,000 test images), writes checkpoints and its run folder.
reference: a new process too (`bench_pipeline.py`'s pipeline): torchvision CIFAR10 on the same
           files + PIL RandomCrop(32, padding=4) + RandomHorizontalFlip + ToTensor + Normalize +
           DataLoader (2 workers), the same ResNet-20, fp32, NCHW, SGD, the same steps of batch
           128, then one evaluation (eval mode, no_grad, DataLoader of batch 128) of the training
           and test sets.
Both are timed by the wall clock from process start to exit, alternating, best of --repeats; the
ratio reference / reslab above 1 means reslab is faster. reslab's summary.json splits its time into
training, curve points, final evaluation and checkpoints.

--eval times evaluation alone: ResNet-20 on 2,048 CIFAR-10 test images, the model as it is (before)
against the fast path (batch norm folded), both at the training batch of 128 (the engine's default),
in reslab's precision and in fp32, against the arithmetic limit: the net's multiply-adds at this
machine's matrix-product rate in that precision (one thread's best 2048^3 product, times the
threads: a busy core elsewhere does not lower the limit).

--also SRC also times `reslab train` from another source tree (the `src/` folder of an older
commit, e.g. from `git archive`), in the same run: before and after.

    python benchmarks/bench_end_to_end.py --eval --repeats 2
    python benchmarks/bench_end_to_end.py --runs 60 epoch --also /tmp/reslab-base/src

An AVX2 CPU's kernels on an AVX-512 machine, as a stand-in (not its clock or caches): cap PyTorch,
oneDNN and MKL at AVX2 and give reslab the precision it picks on AVX2 (fp32), since its bf16 check
reads the CPU itself:

    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 \
        python benchmarks/bench_end_to_end.py --runs 60 --reslab-arg=--amp=off

This is a benchmark, not a test: on a shared machine, say how busy it was (printed: load average).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from bench_pipeline import BATCH, default_data_dir, make_model, reference_loader

STEPS_60 = 60


def reference_run(data_dir: Path, steps: int, workers: int) -> None:
    """The reference pipeline in this process: `steps` training steps, then one evaluation of the
    training and test sets; prints its parts as JSON."""
    from torchvision import transforms
    from torchvision.datasets import CIFAR10

    t0 = time.perf_counter()
    loader = reference_loader(data_dir, workers)
    model, opt = make_model(channels_last=False)
    done = 0
    while done < steps:
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
            if done == steps:
                break
    t1 = time.perf_counter()
    tf = transforms.Compose(
        [
            transforms.ToTensor(),
            transforms.Normalize((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
        ]
    )

    class AnyCopy(CIFAR10):  # as bench_pipeline: the shared copy's md5s differ from the release
        def _check_integrity(self) -> bool:
            return True

    model.eval()
    errors = {}
    for split in ("train", "test"):
        ds = AnyCopy(str(data_dir), train=split == "train", transform=tf, download=False)
        dl = torch.utils.data.DataLoader(ds, BATCH, num_workers=workers)
        wrong = 0
        with torch.no_grad():
            for x, y in dl:
                wrong += (model(x).argmax(1) != y).sum().item()
        errors[split] = wrong / len(ds)
    print(json.dumps({"train_s": t1 - t0, "eval_s": time.perf_counter() - t1, **errors}))


def timed(cmd: list[str], env: dict | None = None) -> tuple[float, str]:
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return time.perf_counter() - t, out.stdout


def reslab_cmd(run: str, data_dir: Path, out: Path, name: str, extra: list[str]) -> list[str]:
    length = ["--iters", str(STEPS_60)] if run == "60" else ["--epochs", "1"]
    return [
        sys.executable, "-m", "reslab", "train", "--model", "resnet20", "--data", "cifar10",
        *length, "--batch-size", str(BATCH), "--data-dir", str(data_dir), "--out", str(out),
        "--name", name, "--no-progress", *extra,
    ]  # fmt: skip


def end_to_end(args: argparse.Namespace) -> None:
    steps = {"60": STEPS_60, "epoch": 50000 // BATCH}
    trees = {"reslab": None, **({"reslab (--also)": args.also} if args.also else {})}
    for run in args.runs:
        best: dict[str, float] = {}  # label -> best wall time
        parts: dict[str, dict] = {}
        for r in range(args.repeats):
            order = [*trees, "reference"]
            for label in order if r % 2 == 0 else order[::-1]:  # ABBA: a drifting load evens out
                with tempfile.TemporaryDirectory() as tmp:
                    if label == "reference":
                        cmd = [sys.executable, __file__, "--reference-run", str(steps[run])]
                        wall, out = timed([*cmd, "--data-dir", str(args.data_dir)])
                        result = json.loads(out.splitlines()[-1])
                    else:
                        src = trees[label]
                        env = {**os.environ, "PYTHONPATH": str(src)} if src else None
                        cmd = reslab_cmd(run, args.data_dir, Path(tmp), "run", args.reslab_arg)
                        wall, _ = timed(cmd, env)
                        result = json.loads((Path(tmp) / "run" / "summary.json").read_text())
                if wall < best.get(label, float("inf")):
                    best[label], parts[label] = wall, result
            print(
                f"  [{run}: repeat {r + 1} done, load average {os.getloadavg()[0]:.1f}]", flush=True
            )
        what = f"{steps[run]} steps" + (" (one epoch)" if run == "epoch" else "")
        print(f"\n{what} of batch {BATCH} + final evaluation of both sets, best of {args.repeats}:")
        for label, wall in best.items():
            s = parts[label]
            if label == "reference":
                split = f"training {s['train_s']:.0f} s, final evaluation {s['eval_s']:.0f} s"
            elif "curve_eval_s" not in s:  # an older reslab: training time only
                split = f"training {s['time_s']:.0f} s, {s['amp']}; evaluations not timed apart"
            else:
                split = (
                    f"training {s['time_s']:.0f} s, curve points {s['curve_eval_s']:.0f} s "
                    f"({s['curve_eval_s'] / wall:.1%} of the wall time), final evaluation "
                    f"{s['final_eval_s']:.0f} s, {s['amp']}"
                )
            ratio = best["reference"] / wall
            print(f"  {label:18s} {wall:6.0f} s  {ratio:5.2f}x reference   ({split})")


def eval_throughput(args: argparse.Namespace) -> None:
    from reslab.data import load_dataset
    from reslab.models import count_macs, create_model
    from reslab.training import precision
    from reslab.training.evaluation import evaluate

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the shared copy's md5s differ (see its README)
        test = load_dataset("cifar10", "test", root=args.data_dir, download=False)
    test = test.subset(torch.arange(2048))
    macs = count_macs(create_model("resnet20", num_classes=10), (3, 32, 32))
    auto = precision.choose("auto", "auto", "cpu", conv=True)
    print(f"\nEvaluation of ResNet-20 on {len(test)} CIFAR-10 test images, {macs / 1e6:.1f} M "
          f"multiply-adds an image, best of {args.repeats}:")  # fmt: skip
    for prec in {auto.name: auto, "fp32": precision.choose("off", "auto", "cpu", True)}.values():
        dtype = torch.bfloat16 if prec.amp else torch.float32
        a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
        threads, gemm = torch.get_num_threads(), []
        torch.set_num_threads(1)
        for _ in range(5):
            t = time.perf_counter()
            a @ b
            gemm.append(2 * 2048**3 / (time.perf_counter() - t))
        torch.set_num_threads(threads)
        peak = max(gemm) * threads
        limit = peak / (2 * macs)  # images/s if every multiply-add ran at the GEMM rate
        model = create_model("resnet20", num_classes=10).to(memory_format=torch.channels_last)
        paths = {
            "before (as is, batch 128)": (128, False),
            "after (folded, batch 128)": (128, True),
        }
        best = dict.fromkeys(paths, 0.0)
        for _ in range(args.repeats):
            for label, (batch, fold) in paths.items():
                kw = dict(autocast=lambda p=prec: p.autocast("cpu"), channels_last=True, fold=fold)
                evaluate(model, test.subset(torch.arange(batch)), batch, **kw)  # set-up, trace
                t = time.perf_counter()
                evaluate(model, test, batch, **kw)
                best[label] = max(best[label], len(test) / (time.perf_counter() - t))
        print(f"  {prec.name}, channels_last: limit {limit:6.0f} images/s "
              f"({peak / 1e9:.0f} GFLOP/s: {threads} x one thread's matrix product)")  # fmt: skip
        for label, ips in best.items():
            print(f"    {label:28s} {ips:6.0f} images/s  {ips / limit:5.1%} of the limit")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--data-dir", type=Path, default=default_data_dir(), help="holds cifar-10-batches-py/"
    )
    p.add_argument("--runs", nargs="*", default=["60", "epoch"], choices=["60", "epoch"],
                   help="run lengths to time end to end: 60 steps, one epoch")  # fmt: skip
    p.add_argument("--repeats", type=int, default=1, help="alternate the pipelines this often")
    p.add_argument("--eval", action="store_true", help="also time evaluation alone")
    p.add_argument("--threads", type=int, default=0, help="torch threads for --eval (0: default)")
    p.add_argument("--also", type=Path, help="also time `reslab train` from this source tree")
    p.add_argument("--reference-run", type=int, metavar="STEPS", help=argparse.SUPPRESS)
    p.add_argument("--workers", type=int, default=2, help="reference DataLoader workers")
    p.add_argument("--reslab-arg", action="append", default=[], metavar="ARG",
                   help="pass ARG on to `reslab train`, e.g. --reslab-arg=--amp=off")  # fmt: skip
    args = p.parse_args()
    if args.reference_run:
        return reference_run(args.data_dir, args.reference_run, args.workers)
    from reslab.training import precision

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"{precision.cpu_name()} ({precision.native_bf16('cpu')[1]}), "
          f"load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    if args.eval:
        threads = torch.get_num_threads()
        torch.set_num_threads(
            args.threads or threads
        )  # one thread: less at the mercy of a busy machine
        eval_throughput(args)
        torch.set_num_threads(threads)
    end_to_end(args)
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
