"""The `reslab` command line: it parses and dispatches; each command is a plain Python function
(`reslab.commands`), and an error reaching it becomes one line (`describe_error`).

Training options are derived from `TrainConfig`'s fields (and study options from the study's config;
`eval` and `export` take the TrainConfig fields they share), so an option is declared once, with its
help text, next to the code that uses it. `train` and every study also read `--config FILE` (the same
options as JSON or YAML, under the flags given) and show the resolved recipe with `--print-config`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Sequence

from reslab import studies
from reslab.commands import COMMANDS, study_config, with_config_file
from reslab.options import Text, add_dataclass_options
from reslab.studies import base
from reslab.training import allocator
from reslab.training.config import TrainConfig
from reslab.training.presets import PRESET_HELP, PRESETS
from reslab.training.runs import Diverged


class Parser(argparse.ArgumentParser):
    """argparse, with a usage error in one line (the usage itself is one `--help` away)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    """The `reslab` parser: one subcommand per entry of COMMANDS and per registered study."""
    p = Parser(
        prog="reslab",
        description="Residual networks and their plain twins: "
        "build, train, and run the studies that show why shortcuts work.",
    )
    p.add_argument("--version", action="version", version=f"reslab {_version()}")
    debug = f"show the full traceback of an error instead of one line (or set {DEBUG_ENV}=1)"
    p.add_argument("--debug", action="store_true", help=debug)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    about = "list models with depth, parameters and multiply-adds"
    m = sub.add_parser("models", help=about, description=about)
    m.add_argument("pattern", nargs="?", default="*", help="glob over model names, e.g. 'plain*'")
    m.add_argument("--json", action="store_true", help="print JSON rows instead of the table")

    about = "train a model; writes runs/NAME/ (config, metrics, checkpoints, summary)"
    t = sub.add_parser("train", help="train a model; writes runs/NAME/", description=about)
    t.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=argparse.SUPPRESS,
        help="a recipe to start from; explicit options override it. "
        + "; ".join(f"{k}: {v}" for k, v in PRESET_HELP.items()),
    )
    add_dataclass_options(t, TrainConfig)
    _add_config_options(t)

    about = (
        "evaluate a trained run or a weights file on a dataset's test split: loss, top-1 and top-5 "
        "error. A run folder (or a reslab .safetensors file) records its model, sizes, options, "
        "dataset and input normalisation: it needs no other option, and options that contradict "
        "it are ignored with a warning"
    )
    e = sub.add_parser("eval", help="evaluate a run or weights on a test split", description=about)
    e.add_argument(
        "run", nargs="?", default=None, help="a run folder (runs/NAME) or a reslab weights file"
    )
    e.add_argument(
        "--weights",
        default=None,
        help="weights file in any format load_weights reads (instead of a run folder)",
    )
    e.add_argument(
        "--split", default="test", choices=["train", "test"], help="which split (default: test)"
    )
    e.add_argument(
        "--mean",
        type=float,
        nargs="+",
        default=None,
        help="per-channel normalisation mean (default: the recorded one, else the dataset's)",
    )
    e.add_argument(
        "--std",
        type=float,
        nargs="+",
        default=None,
        help="per-channel normalisation std (default: the recorded one, else the dataset's)",
    )
    add_dataclass_options(e, TrainConfig, only=EVAL_OPTIONS, shown=EVAL_SHOWN)

    x = sub.add_parser(
        "export",
        help="export a model to ONNX or torch.export (.pt2) for other runtimes",
        description="Export a model (random init, or --weights) to ONNX or torch.export (.pt2). "
        "The batch dimension stays dynamic, and height and width too for conv nets.",
    )
    add_dataclass_options(x, TrainConfig, only=("model",), required=("model",))
    x.add_argument(
        "--weights",
        default=None,
        help="weights file in any format load_weights reads; a reslab .safetensors file also "
        "gives the classes, input size and model options it was saved with",
    )
    x.add_argument(
        "--format",
        choices=["onnx", "torch-export"],
        default=None,
        help="onnx or torch-export (default: from the --out suffix, .onnx or .pt2)",
    )
    x.add_argument("--out", required=True, help="output file, e.g. resnet20.onnx or resnet20.pt2")
    x.add_argument(
        "--num-classes", type=int, default=None, help="classifier outputs (default: the model's)"
    )
    x.add_argument("--in-chans", type=int, default=None, help="input channels (default: 3)")
    x.add_argument(
        "--img-size",
        type=int,
        nargs="+",
        default=None,
        metavar="N",
        help="example input size, N or H W (default: the model family's, e.g. 32 or 224)",
    )
    x.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    add_dataclass_options(x, TrainConfig, only=("model_kwargs",), shown={"model_kwargs": {}})

    about = (
        "the machine, the precision and layout reslab picks on it and why, and measured ResNet-20 "
        "training speed in each: paste it into a bug report"
    )
    i = sub.add_parser(
        "info", help="the machine, reslab's precision choice, measured speed", description=about
    )
    i.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    i.add_argument(
        "--seconds",
        type=float,
        default=2.0,
        help="seconds of timed training per setting (default: 2.0; each also takes one untimed step)",
    )
    i.add_argument(
        "--batch-size", type=int, default=32, help="batch size of the timed steps (default: 32)"
    )
    i.add_argument(
        "--no-measure",
        dest="measure_speed",
        action="store_false",
        help="skip the speed measurement (instant)",
    )
    i.add_argument("--json", action="store_true", help="print JSON instead of text")

    for name in studies.NAMES:
        study = studies.get(name)
        parser = sub.add_parser(name, help=study.help, description=study.help)
        base.add_arguments(study, parser)
        _add_config_options(parser)

    about = "rebuild a study's figures and report.html from its folder"
    r = sub.add_parser("report", help=about, description=about)
    r.add_argument("path", help="a study folder (e.g. runs/degradation/NAME) or a runs root")
    r.add_argument(
        "--results",
        metavar="FILE",
        help="also write one Markdown page of every study's command, machine, table and verdict "
        "(docs/results.md is written so)",
    )
    for (
        command
    ) in sub.choices.values():  # `reslab train ... --debug` as well as `reslab --debug train`
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug)
    return p


# The TrainConfig fields `reslab eval` takes, with its own defaults where they differ.
EVAL_OPTIONS: tuple[str, ...] = (
    "model",
    "model_kwargs",
    "data",
    "data_dir",
    "batch_size",
    "normalize",
    "amp",
)
EVAL_OPTIONS += ("channels_last", "device", "num_threads")
EVAL_SHOWN = {
    "model": Text("the one the weights file records"),
    "data": Text("the run's, else digits"),
    "batch_size": 256,
    "normalize": Text(
        "the recorded one; for weights that record none (older runs, other projects'): channel, "
        "or pixel-mean for runs trained so, such as the paper preset's"
    ),
}


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="read options from a JSON or YAML file (YAML needs PyYAML: pip install "
        "'reslab[yaml]'); options given as flags override it. --print-config writes such a file",
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print the resolved configuration as JSON (a file --config reads) and exit",
    )


def _version() -> str:
    import reslab

    return reslab.__version__


def main(argv: Sequence[str] | None = None) -> int:
    """Parse `argv`, run the command, and turn an error into one line: exit status 2 for bad input
    (a file, an option), 1 for anything else. `--debug` or $RESLAB_DEBUG=1 shows the traceback."""
    warnings.formatwarning = _one_line_warning
    try:
        allocator.use_requested()  # may restart the process on tcmalloc/jemalloc
    except ValueError as err:
        print(f"reslab: error: {_one_line(err)}", file=sys.stderr)
        return 2
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # a bare `reslab`: what it can do, as `reslab --help`
        parser.print_help()
        return 0
    debug = args.debug or os.environ.get(DEBUG_ENV, "").strip().lower() in (
        "1",
        "true",
        "yes",
        "on",
    )
    opts = {k: v for k, v in vars(args).items() if k not in ("command", "debug")}
    try:
        if args.command in studies.NAMES:
            study = studies.get(args.command)
            opts = with_config_file(opts, study)
            if opts.pop("print_config", False):
                cfg = base.config_from_options(study, opts)
                print(json.dumps(study_config(cfg), indent=2))
                return 0
            base.main(study, opts)
            return 0
        if args.command == "train":
            opts = with_config_file(opts)
        return COMMANDS[args.command](opts)
    except KeyboardInterrupt:
        print(f"reslab: interrupted{_resume_hint(args.command)}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `reslab models | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as err:
        if debug:
            raise
        status, message = describe_error(err)
        print(f"reslab {args.command}: error: {message}", file=sys.stderr)
        return status


DEBUG_ENV = "RESLAB_DEBUG"


def describe_error(err: BaseException) -> tuple[int, str]:
    """The exit status and one-line message for an error reaching the command line.

    The one place library errors become messages: bad input reslab checks itself raises ValueError
    or OSError with a message naming the file or option; the errors of the libraries reslab reads
    files with are named here; anything else is a bug, shown as such."""
    text = _one_line(err)
    if isinstance(err, (ValueError, OSError, Diverged)):
        return 2, text
    if type(err).__name__ == "CellsFailed":  # some Slurm jobs of a study ended without their run
        return 1, text
    kind = type(err).__name__
    if kind == "SafetensorError":  # safetensors' own type, not a ValueError
        return 2, f"a weights file is not readable safetensors ({text})"
    if kind == "DecompressionBombError":  # PIL's, raised before decoding a huge image
        return 2, f"an image is larger than reslab decodes ({text})"
    if isinstance(err, MemoryError):
        return 2, "out of memory; try a smaller --batch-size, model or dataset"
    if "out of memory" in text.lower():  # torch.OutOfMemoryError (a RuntimeError) on any device
        return 2, f"out of memory on the device ({text[:200]}); try a smaller --batch-size or model"
    return 1, (
        f"{kind}: {text} (this is a bug in reslab: rerun with --debug or {DEBUG_ENV}=1 "
        "for the traceback and report it)"
    )


def _resume_hint(command: str) -> str:
    if command == "train":
        return "; rerun the same command with --resume to continue"
    if command in studies.NAMES:
        return "; rerun the same command to continue (finished runs are kept)"
    return ""


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"reslab: warning: {message}\n"


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__
