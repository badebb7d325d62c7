"""Command-line options derived from typed dataclasses: one `--option` per field, help text from the
field's metadata, so an option is declared once, next to the code that uses it. The CLI and every
study build their parsers from this module.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import types
import typing
from collections.abc import Sequence
from typing import Any


def add_dataclass_options(
    parser: argparse._ActionsContainer, cls: type, exclude: Sequence[str] = ()
) -> None:
    """One `--option` per dataclass field, help from its metadata; unset options stay absent."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in exclude:
            continue
        flag = "--" + f.metadata.get("cli", f.name).replace("_", "-")
        kind = _base_type(hints[f.name])
        factory = f.default_factory  # a function, or MISSING where the field has a default
        default = factory() if callable(factory) else f.default
        help_ = f"{f.metadata.get('help', '')} (default: {default!r})"
        common: dict[str, Any] = dict(dest=f.name, default=argparse.SUPPRESS, help=help_)
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **common)
        elif kind is dict:
            parser.add_argument(flag, action=KeyValue, metavar="KEY=VALUE", **common)
        elif kind is tuple:
            item = typing.get_args(hints[f.name])[0]
            parser.add_argument(flag, nargs="+", type=_typed(item), metavar="X", **common)
        elif "const" in f.metadata:  # `--flag` alone means `const`
            parser.add_argument(
                flag, nargs="?", const=f.metadata["const"], type=_typed(kind), metavar="N", **common
            )
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


class KeyValue(argparse.Action):
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
