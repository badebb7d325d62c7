"""Loss-landscape grids: three ways `reslab.landscape.surface` can score the points of a grid.

`reslab landscape` scores each net at every point w + a d1 + b d2 of a grid. This times, in the same
process, on one thread (the study measures one net per process and core), on the same weights,
directions, images and grid points:

- the functional loop: one `torch.func.functional_call` of the model per point, its weights new
  tensors w + a d1 + b d2 (what `surface` did before; written out here as the reference);
- the in-place loop: each point's weights written in place into a copy of the model, which is then
  called as itself (`surface(..., points_at_once=1)`);
- stacked: K points in one call (`reslab.landscape.stacked_scores`: their weights stacked along a
  new dimension and `torch.vmap` of the model over them, batch norm in eval mode reading its
  shared running statistics; `surface(..., points_at_once=K)`).

On these nets:

- digits: the landscape study's default twins (its `digits` preset: plain and residual MLPs of width
  64, 4 to 64 layers) on its 1,000 scored training images, and on 500, 300 and 200 (its toy size);
- cifar: ResNet-20 and its plain twin (the `cpu` preset's shallower pair) on 256 CIFAR-10 training
  images (random images where the data is not found), a row of 8 grid points.

The nets are at initialisation (the time of a forward pass does not depend on the weights' values).
It prints grid points/s of each (the median of `--repeats` timed grids, after a warm-up): the
functional loop's, the in-place loop's and its ratio to the functional loop, and for each K the
stacked evaluation's and its ratio to the in-place loop (above 1: faster); then the largest
difference of the losses from the functional loop's, relative to the largest loss (within TOLERANCE
in fp32, or the line says so), and of the error rates.

    python benchmarks/bench_landscape.py
    python benchmarks/bench_landscape.py --quick
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call

from reslab import landscape
from reslab.data import Loader, load_dataset
from reslab.data.integrity import data_root
from reslab.models import create_model
from reslab.studies.landscape import STUDY

TOLERANCE = 1e-5  # largest |other - functional| / max loss: float32 rounding, in another order


def default_data_dir() -> Path:
    shared = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
    return shared.resolve() if (shared / "cifar-10-batches-py").is_dir() else data_root()


def scored_images(data: str, n: int, data_dir: Path) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The first `n` training images, normalised as the loader does, with their labels."""
    try:
        split = load_dataset(data, "train", root=data_dir)
    except (OSError, RuntimeError, ValueError) as e:
        if data == "digits":
            raise
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)
        return x, y, f"{n} random images ({data} not found: {e})"
    split = split.subset(torch.arange(min(n, len(split.labels))))
    loader = Loader(split, 1024, train=False, augment=False, device=torch.device("cpu"))
    xs, ys = zip(*loader.epoch(0), strict=True)
    return torch.cat(xs), torch.cat(ys), f"{len(split.labels)} {data} training images"


def twins(preset: str, depths: list[int], images: torch.Tensor):
    """(name, model) of the preset's plain and residual twins at `depths`, as its runs name them."""
    cfg = STUDY.make_config(preset).twins()
    _, c, h, w = images.shape
    for depth in depths:
        for arch in ("plain", "residual"):
            run = cfg.run_config(arch, depth, 0)
            torch.manual_seed(0)
            model = create_model(run.model, num_classes=10, in_chans=c, img_size=(h, w), **run.model_kwargs)  # fmt: skip
            yield run.model, model.eval()


def functional_loop(model, d1, d2, images, labels, xs, ys) -> dict[str, np.ndarray]:
    """The grid one point at a time, through `functional_call` with new weight tensors."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())
    loss, error = np.zeros((len(ys), len(xs))), np.zeros((len(ys), len(xs)))
    with torch.no_grad():
        for j, b in enumerate(ys):
            for i, a in enumerate(xs):
                moved = {k: w + a * d1[k] + b * d2[k] for k, w in params.items()}
                logits = functional_call(model, (moved, buffers), (images,)).float()
                loss[j, i] = F.cross_entropy(logits, labels).item()
                error[j, i] = (logits.argmax(1) != labels).float().mean().item()
    return {"loss": loss, "error": error}


def time_grid(model, d1, d2, images, labels, xs, ys, k: int, repeats: int):
    """(median seconds of CPU time per grid, the last grid's losses and errors), `k` points a call
    (0: the functional loop)."""

    def grid(xs, ys):
        if k == 0:
            return functional_loop(model, d1, d2, images, labels, xs, ys)
        return landscape.surface(model, d1, d2, images, labels, xs, ys, points_at_once=k)

    grid(xs[:1], ys[:1])  # warm-up
    times = []
    for _ in range(repeats):
        t = time.thread_time()
        out = grid(xs, ys)
        times.append(time.thread_time() - t)
    return statistics.median(times), out


def compare(preset, depths, data, n, points, rows, args) -> None:
    images, labels, what = scored_images(data, n, args.data_dir)
    xs = np.linspace(-1, 1, points).tolist()
    ys = xs[:rows]  # rows off the centre: every point is a moved net, in all three ways
    print(f"\n{preset} preset's twins, {what}, {len(xs) * len(ys)} grid points a grid, points/s:")
    head = f"{'net':<14}{'functional':>11}{'in place':>10}{'ratio':>7}" + "".join(
        f"{f'K={k}':>8}{'ratio':>7}" for k in args.ks
    )
    print(f"{head}{'max rel diff':>14}{'max err diff':>14}")
    for name, model in twins(preset, depths, images):
        d1, d2 = landscape.directions(model, seed=0)
        count = len(xs) * len(ys)
        slow, ref = time_grid(model, d1, d2, images, labels, xs, ys, 0, args.repeats)
        loop, got = time_grid(model, d1, d2, images, labels, xs, ys, 1, args.repeats)
        line = f"{name:<14}{count / slow:>11.1f}{count / loop:>10.1f}{slow / loop:>6.2f}x"
        outs = [got]
        for k in args.ks:
            seconds, got = time_grid(model, d1, d2, images, labels, xs, ys, k, args.repeats)
            line += f"{count / seconds:>8.1f}{loop / seconds:>6.2f}x"
            outs.append(got)
        rel = max(np.abs(o["loss"] - ref["loss"]).max() / np.abs(ref["loss"]).max() for o in outs)
        err = max(np.abs(o["error"] - ref["error"]).max() for o in outs)
        flag = "" if rel <= TOLERANCE else f"  ABOVE {TOLERANCE:g}"
        print(f"{line}{rel:>14.1e}{err:>14.4f}{flag}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="4 and 64 layers, 1 row, 1 repeat (1 min)")
    p.add_argument("--depths", type=int, nargs="+", default=[4, 8, 16, 32, 64])
    p.add_argument(
        "--subsets", type=int, nargs="+", default=[1000, 500, 300, 200], help="digits images"
    )
    p.add_argument("--ks", type=int, nargs="+", default=[4, 16], help="grid points a call")
    p.add_argument("--points", type=int, default=21, help="digits grid points per direction")
    p.add_argument("--rows", type=int, default=2, help="digits grid rows timed")
    p.add_argument("--repeats", type=int, default=3, help="timed grids (the median is shown)")
    p.add_argument("--cifar-images", type=int, default=256)
    p.add_argument("--cifar-points", type=int, default=8, help="CIFAR grid points timed (a row)")
    p.add_argument("--data-dir", type=Path, default=default_data_dir())
    args = p.parse_args()
    if args.quick:
        args.depths, args.rows, args.repeats, args.cifar_points = [4, 64], 1, 1, 4

    torch.set_num_threads(1)
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"capability {torch.backends.cpu.get_cpu_capability()}, 1 thread")  # fmt: skip
    for n in args.subsets:
        compare("digits", args.depths, "digits", n, args.points, args.rows, args)
    compare("cpu", [20], "cifar10", args.cifar_images, args.cifar_points, 1, args)


if __name__ == "__main__":
    main()
