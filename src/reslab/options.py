"""Command-line options derived from typed dataclasses: one `--option` per field, help text from the
field's metadata, so an option is declared once, next to the code that uses it. The CLI and every
study build their parsers from this module, and read `--config FILE` with it: a JSON (or, with
PyYAML installed, YAML) mapping of the same options, checked against the same fields.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import math
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def add_dataclass_options(
    parser: argparse._ActionsContainer,
    cls: type,
    exclude: Sequence[str] = (),
    only: Sequence[str] | None = None,
    shown: Mapping[str, Any] | None = None,
    required: Sequence[str] = (),
) -> None:
    """One `--option` per dataclass field (those in `only`, less `exclude`), help from its metadata;
    unset options stay absent. `shown`: the default to print for a field where the command's
    differs from the dataclass's (a study's preset, `reslab eval`'s own), a value or a text."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in exclude or (only is not None and f.name not in only):
            continue
        flag = "--" + f.metadata.get("cli", f.name).replace("_", "-")
        kind = _base_type(hints[f.name])
        factory = f.default_factory  # a function, or MISSING where the field has a default
        default = factory() if callable(factory) else f.default
        default = (shown or {}).get(f.name, default)
        text = default if isinstance(default, Text) else repr(default)
        help_ = f.metadata.get("help", "")
        if "(default:" not in help_:  # a help that says its default in words keeps them
            help_ += f" (default: {text})"
        common: dict[str, Any] = dict(dest=f.name, default=argparse.SUPPRESS, help=help_)
        if f.name in required:
            common = dict(dest=f.name, required=True, help=f.metadata.get("help", ""))
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


class Text(str):
    """A default shown as words, not as a value: `shown={"data": Text("the run's")}`."""


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The options in a config file: a JSON object, or a YAML mapping (.yaml/.yml, with PyYAML
    installed: `pip install reslab[yaml]`). Keys are option names as fields or flags spell them
    (`batch_size` or `batch-size`, `model_kwargs` or `model-arg`); a one-line error otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--config: no such file: {path}")
    text = path.read_text(errors="replace")
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ValueError(
                f"--config {path}: YAML needs PyYAML (pip install 'reslab[yaml]'); or write it "
                "as JSON"
            ) from None
        try:
            values = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ValueError(
                f"--config {path} is not valid YAML: {' '.join(str(e).split())}"
            ) from None
    else:
        try:
            values = json.loads(text)
        except ValueError as e:
            raise ValueError(f"--config {path} is not valid JSON: {e}") from None
    if not isinstance(values, dict):
        raise ValueError(
            f"--config {path} should hold a mapping of options, got {type(values).__name__}"
        )
    return {str(k).replace("-", "_"): v for k, v in values.items()}


def check_options(
    values: Mapping[str, Any], cls: type, origin: str, fields: Sequence[str] | None = None
) -> dict[str, Any]:
    """`values` keyed by field name (a flag's name, such as model_arg, becomes its field's), each of
    its field's type (an int where a float goes; a list where a tuple goes); a one-line ValueError
    naming `origin` otherwise. `fields`: the ones allowed (default: all of `cls`)."""
    hints = typing.get_type_hints(cls)
    by_flag = {f.metadata.get("cli", f.name): f.name for f in dataclasses.fields(cls)}
    allowed = list(fields) if fields is not None else [f.name for f in dataclasses.fields(cls)]
    out = {}
    for key, value in values.items():
        name = by_flag.get(key, key)
        if name not in allowed:
            raise ValueError(f"{origin}: unknown option {key!r}; allowed: {', '.join(allowed)}")
        hint = hints[name]
        optional = type(None) in typing.get_args(hint)
        if not (value is None and optional) and not _of_type(value, _base_type(hint), hint):
            raise ValueError(f"{origin}: {key} must be {_type_name(hint)}, got {value!r}")
        out[name] = tuple(value) if isinstance(value, list) else value
    return out


def _of_type(value: Any, kind: type, hint: Any) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return (
            isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        )
    if kind is tuple:
        item = typing.get_args(hint)[0] if typing.get_args(hint) else object
        return isinstance(value, (list, tuple)) and all(
            _of_type(v, _base_type(item), item) for v in value
        )
    if kind is dict:
        return isinstance(value, dict) and all(isinstance(k, str) for k in value)
    return isinstance(value, kind)


def _type_name(hint: Any) -> str:
    kind = _base_type(hint)
    names: dict[type, str] = {
        bool: "true or false",
        int: "an integer",
        float: "a number",
        str: "a string",
        tuple: "a list",
        dict: "a mapping",
    }
    return names.get(kind, kind.__name__)


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
