"""Does reslab's speed cost accuracy? Train the same model twice, bf16 autocast + channels_last (the
defaults on CPU) and fp32 NCHW, same seed and data order, and plot both loss and error curves.

    python benchmarks/precision_curves.py --data-dir ../shared/data --iters 600 --out docs/precision.png

Prints the final numbers of both runs and their difference; the figure shows whether the curves track.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from reslab.report.figures import figure, percent_axis, save, smooth, style
from reslab.training import TrainConfig, train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--data", default="cifar10")
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--iters", type=int, default=600)
    p.add_argument("--out", default="docs/precision.png")
    args = p.parse_args()

    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, amp, cl in (
            ("bf16 + channels_last", "bf16", "on"),
            ("fp32, NCHW", "off", "off"),
        ):
            cfg = TrainConfig(
                model=args.model,
                data=args.data,
                data_dir=args.data_dir,
                iters=args.iters,
                schedule="onecycle",
                lr=0.1,
                log_every=10,
                eval_every=args.iters // 4,
                amp=amp,
                channels_last=cl,
                out=tmp,
                name=amp,
                seed=0,
            )
            t0 = time.perf_counter()
            summary = train(cfg)
            lines = [
                json.loads(x) for x in (Path(tmp) / amp / "metrics.jsonl").read_text().splitlines()
            ]
            runs[label] = (
                summary,
                [x for x in lines if x["kind"] == "train"],
                [x for x in lines if x["kind"] == "eval"],
            )
            print(
                f"{label:<22} {time.perf_counter() - t0:6.0f} s  final train loss "
                f"{summary['final_train_loss']:.4f}  train error {summary['final_train_error']:.2%}  "
                f"test error {summary['final_test_error']:.2%}"
            )

    (a, *_), (b, *_) = runs.values()
    print(
        f"difference (bf16 - fp32): train error {a['final_train_error'] - b['final_train_error']:+.2%}, "
        f"test error {a['final_test_error'] - b['final_test_error']:+.2%}"
    )
    with style():
        fig, (ax_loss, ax_err) = figure(2, width=11, height=4)
        for (label, (_, tr, ev)), color in zip(runs.items(), ("#c0392b", "#2c3e50"), strict=True):
            steps = [x["step"] for x in tr]
            ax_loss.plot(steps, smooth([x["train_loss"] for x in tr], 5), color=color, label=label)
            ax_err.plot(
                steps,
                smooth([100 * x["train_error"] for x in tr], 5),
                color=color,
                lw=1,
                label=f"{label}, train",
            )
            ax_err.plot(
                [x["step"] for x in ev],
                [100 * x["test_error"] for x in ev],
                "o-",
                color=color,
                lw=2,
                label=f"{label}, test",
            )
        ax_loss.set(
            xlabel="iterations", ylabel="training loss", title=f"{args.model} on {args.data}: loss"
        )
        ax_err.set(xlabel="iterations", title="error")
        percent_axis(ax_err, "error")
        ax_loss.legend()
        ax_err.legend()
        save(fig, args.out)
    print(f"figure: {args.out}")


if __name__ == "__main__":
    main()
