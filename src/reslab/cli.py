"""The `reslab` command line: it parses and dispatches; each command is a plain Python function.

Training options are derived from `TrainConfig`'s fields (and study options from the study's config),
so an option is declared once, with its help text, next to the code that uses it.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib
import sys
import types
import typing
from collections.abc import Sequence

from reslab.studies import STUDIES
from reslab.training.config import PRESETS, TrainConfig
from reslab.training.loop import Diverged


def add_dataclass_options(
    parser: argparse.ArgumentParser, cls: type, exclude: Sequence[str] = ()
) -> None:
    """One `--option` per dataclass field, help from its metadata; unset options stay absent."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in exclude:
            continue
        flag = "--" + f.metadata.get("cli", f.name).replace("_", "-")
        kind = _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_ = f"{f.metadata.get('help', '')} (default: {default!r})"
        common = dict(dest=f.name, default=argparse.SUPPRESS, help=help_)
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **common)
        elif kind is dict:
            parser.add_argument(flag, action=_KeyValue, metavar="KEY=VALUE", **common)
        elif kind is tuple:
            item = typing.get_args(hints[f.name])[0]
            parser.add_argument(flag, nargs="+", type=_typed(item), metavar="X", **common)
        else:
            parser.add_argument(flag, type=_typed(kind), metavar=f.name.upper(), **common)


def _base_type(hint) -> type:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
        origin = typing.get_origin(hint)
    return origin or hint


def _typed(kind: type):
    def convert(text: str):
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}, got {text!r}") from None

    convert.__name__ = kind.__name__
    return convert


class _KeyValue(argparse.Action):
    """`--model-arg zero_init_residual=True --model-arg width=32` -> {"zero_init_residual": True, "width": 32}."""

    def __call__(self, parser, namespace, value, option_string=None):
        key, sep, raw = value.partition("=")
        if not sep or not key.isidentifier():
            parser.error(f"{option_string} expects KEY=VALUE, got {value!r}")
        try:
            parsed = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            parsed = raw
        setattr(namespace, self.dest, {**getattr(namespace, self.dest, {}), key: parsed})


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="reslab",
        description="Residual networks and their plain twins: "
        "build, train, and run the studies that show why shortcuts work.",
    )
    p.add_argument("--version", action="version", version=f"reslab {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    m = sub.add_parser("models", help="list models with depth, parameters and multiply-adds")
    m.add_argument("pattern", nargs="?", default="*", help="glob over model names, e.g. 'plain*'")

    t = sub.add_parser("train", help="train a model; writes runs/NAME/")
    t.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=argparse.SUPPRESS,
        help="a recipe to start from; explicit options override it",
    )
    add_dataclass_options(t, TrainConfig)

    e = sub.add_parser("eval", help="evaluate weights on a dataset's test split")
    e.add_argument("--model", required=True, help="model name")
    e.add_argument("--weights", required=True, help="weights file in any format load_weights reads")
    e.add_argument("--data", default="digits", help="dataset (default: digits)")
    e.add_argument("--data-dir", default=None, help="data root")
    e.add_argument("--split", default="test", choices=["train", "test"], help="which split")
    e.add_argument("--batch-size", type=int, default=256, help="batch size")
    e.add_argument(
        "--mean", type=float, nargs="+", default=None, help="per-channel normalisation mean"
    )
    e.add_argument(
        "--std", type=float, nargs="+", default=None, help="per-channel normalisation std"
    )
    e.add_argument("--device", default="auto", help="cpu, cuda or auto")
    e.add_argument("--num-threads", type=int, default=0, help="CPU threads (0: default)")
    e.add_argument(
        "--model-arg",
        dest="model_kwargs",
        action=_KeyValue,
        default={},
        metavar="KEY=VALUE",
        help="model overrides, as for train",
    )

    for command, module in STUDIES.items():
        study = importlib.import_module(module)
        study.add_arguments(sub.add_parser(command, help=study.HELP, description=study.HELP))

    r = sub.add_parser("report", help="rebuild a study's figures and report.html from its folder")
    r.add_argument("path", help="a study folder (e.g. runs/degradation/NAME) or a runs root")
    return p


def _version() -> str:
    import reslab

    return reslab.__version__


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    opts = {k: v for k, v in vars(args).items() if k != "command"}
    try:
        if args.command in STUDIES:
            importlib.import_module(STUDIES[args.command]).main(opts)
            return 0
        return COMMANDS[args.command](opts)
    except KeyboardInterrupt:
        print(
            "reslab: interrupted; rerun the same command with --resume to continue", file=sys.stderr
        )
        return 130
    except (ValueError, OSError, Diverged) as err:
        print(f"reslab {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def cmd_models(opts: dict) -> int:
    from reslab.models import list_models, model_table
    from reslab.models.registry import FAMILIES

    names = list_models(opts["pattern"])
    if not names:
        raise ValueError(
            f"no model matches {opts['pattern']!r}; try `reslab models` for the full list"
        )
    order = [f.name for f in FAMILIES]
    rows = sorted(
        model_table(names), key=lambda r: (order.index(r["family"]), not r["residual"], r["depth"])
    )
    print(f"{'model':<20}{'family':<10}{'depth':>6}{'params':>14}{'MACs':>17}  input")
    for r in rows:
        size = "x".join(map(str, r["input_size"]))
        print(
            f"{r['name']:<20}{r['family']:<10}{r['depth']:>6}{r['params']:>14,}{r['macs']:>17,}  {size}"
        )
    print(
        "any depth by name: resnet-N / plain-N (6n+2), preact_resnet-N, resmlp-N (even N >= 2), ..."
    )
    return 0


def cmd_train(opts: dict) -> int:
    from reslab.training import resolve, train

    cfg = resolve(opts.pop("preset", None), **opts)
    s = train(cfg)
    print(
        f"{s['name']}: {s['steps']} steps, train error {s['final_train_error']:.2%}, "
        f"test error {s['final_test_error']:.2%} (top-5 {s['final_test_top5_error']:.2%}) -> "
        f"{cfg.out}/{cfg.run_name}"
    )
    return 0


def cmd_eval(opts: dict) -> int:
    from reslab.training.evaluation import evaluate_weights

    r = evaluate_weights(**opts)
    print(
        f"{opts['model']} on {opts['data']} {opts['split']} ({r['n']} images): loss {r['loss']:.4f}, "
        f"top-1 error {r['error']:.2%}, top-5 error {r['top5_error']:.2%}"
    )
    return 0


def cmd_report(opts: dict) -> int:
    from reslab.report import build_any

    print(build_any(opts["path"]))
    return 0


COMMANDS = {"models": cmd_models, "train": cmd_train, "eval": cmd_eval, "report": cmd_report}
