"""Export a model for other runtimes: ONNX (onnxruntime, TensorRT, ...) and torch.export (.pt2).

Both go through a `torch.export.export` trace of the model in eval mode on an example input of the
model's `default_cfg["input_size"]`. The batch dimension stays dynamic (named "batch"); for conv
nets height and width stay dynamic too (torch.export decides: an MLP's flatten fixes them). ONNX
export needs the `onnxscript` package (`pip install 'reslab[export]'`); the file holds the weights.
Sizes read from a weights file's metadata are checked as typed ones are, and bounded: the example
input to 2**28 elements (typed sizes too), the model the metadata describes to 2**31 parameters.
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.export import Dim

FORMATS = {"onnx": ".onnx", "torch-export": ".pt2"}  # format -> file suffix
_ONNX_MAX_BYTES = 2**31 - 2**26  # protobuf's 2 GB limit, with room for the graph
_MAX_INPUT = 2**28  # elements of the example input, batch included (1 GiB in fp32)
_MAX_PARAMS = 2**31  # parameters and buffers of the model a file's metadata asks for (8 GiB fp32)


def export_model(
    model: nn.Module | str,
    path: str | os.PathLike,
    format: str | None = None,
    *,
    weights: str | os.PathLike | None = None,
    num_classes: int | None = None,
    in_chans: int | None = None,
    img_size: int | tuple[int, int] | None = None,
    input_size: Sequence[int] | None = None,
    opset: int | None = None,
    **overrides: Any,
) -> Path:
    """Export `model` (a module, or a name for `create_model`) to `path` and return the path.

    format: "onnx" or "torch-export"; None picks it from the suffix (.onnx, .pt2).
    weights: a weights file `load_weights` reads. A reslab .safetensors file also supplies the
        num_classes, input size and model options it was saved with, unless given here.
    num_classes, in_chans, img_size, overrides: as for `create_model` (when `model` is a name).
    input_size: (C, H, W) of the example input; default the model's `default_cfg["input_size"]`.
    opset: ONNX opset version (default: the exporter's recommended one).
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give a file path such as {path / 'model.onnx'}")
    format = _check_format(path, format)
    folder = next(p for p in path.absolute().parents if p.exists())
    if not folder.is_dir():
        raise ValueError(f"cannot write {path}: {folder} is a file, not a folder")
    if weights is not None and not Path(weights).exists():  # a folder: load_weights says more
        raise FileNotFoundError(f"no such weights file: {weights}")
    if format == "onnx" and importlib.util.find_spec("onnxscript") is None:
        raise ValueError("ONNX export needs onnxscript: pip install 'reslab[export]'")
    if isinstance(model, str):
        model = _build(model, weights, num_classes, in_chans, img_size, overrides)
    else:
        if num_classes or in_chans or img_size or overrides:
            raise ValueError("num_classes, in_chans, img_size and model options need a model name")
        if weights is not None:
            from reslab.models import load_weights

            load_weights(model, weights)
    size = input_size or getattr(model, "default_cfg", {}).get("input_size")
    if size is None:
        raise ValueError("give input_size=(C, H, W) for a model without a default_cfg")
    _check_input(size, "input size")
    p = next(model.parameters(), torch.empty(0))
    # (B, C, H, W); batch 2, as torch.export takes sizes 0 and 1 for static ones
    x = torch.randn(2, *size, device=p.device, dtype=p.dtype if p.is_floating_point() else None)

    # the batch stays dynamic; height and width too where the model allows (torch.export decides)
    shapes = ({0: Dim("batch")} | ({2: Dim.AUTO, 3: Dim.AUTO} if x.dim() == 4 else {}),)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    try:
        if format == "torch-export":
            torch.export.save(torch.export.export(model, (x,), dynamic_shapes=shapes), path)
        else:
            _save_onnx(model, x, shapes, path, opset)
    finally:
        model.train(was_training)
    return path


def _check_format(path: Path, format: str | None) -> str:
    """The export format: `format` checked, or the one the suffix of `path` names."""
    by_suffix = {suffix: f for f, suffix in FORMATS.items()}
    if format is None:
        if path.suffix not in by_suffix:
            raise ValueError(
                f"cannot tell the export format from {path.name!r}: name the file *.onnx or "
                "*.pt2, or give the format (onnx or torch-export)"
            )
        return by_suffix[path.suffix]
    if format not in FORMATS:
        raise ValueError(f"export format must be one of {', '.join(FORMATS)}; got {format!r}")
    if path.suffix != FORMATS[format]:
        raise ValueError(f"{format} files end in {FORMATS[format]}; got {path.name!r}")
    return format


def _build(
    name: str,
    weights: str | os.PathLike | None,
    num_classes: int | None,
    in_chans: int | None,
    img_size: int | tuple[int, int] | None,
    overrides: dict,
) -> nn.Module:
    """create_model(name, ...) with the settings a reslab weights file was saved with as defaults,
    then its weights loaded."""
    from reslab.models import create_model, load_weights

    saved = _saved_settings(name, weights)
    typed = {"num_classes": num_classes, "in_chans": in_chans, "img_size": img_size}
    typed = {k: v for k, v in typed.items() if v is not None}
    kwargs = {"in_chans": 3} | saved | typed | overrides  # what is given wins over the file
    if saved:  # settings from a file: build on the meta device first, so no memory is taken yet
        asked = f"{weights} metadata: " + ", ".join(f"{k}={v!r}" for k, v in saved.items())
        try:
            with torch.device("meta"):
                n = sum(t.numel() for t in create_model(name, **kwargs).state_dict().values())
        except ValueError as e:
            raise ValueError(f"{e} ({asked})") from None
        if n > _MAX_PARAMS:
            raise ValueError(
                f"{name} would have {n:,} parameters, more than the {_MAX_PARAMS:,} export builds "
                f"({asked})"
            )
    model = create_model(name, **kwargs)
    if weights is not None:
        load_weights(model, weights)
    return model


def _saved_settings(name: str, weights: str | os.PathLike | None) -> dict:
    """num_classes, in_chans, img_size and the model options a reslab .safetensors file was saved
    with ({} for other files), checked as create_model checks typed ones."""
    from reslab.models import read_metadata
    from reslab.models.registry import _check_sizes, _check_types, resolve

    if weights is None or not str(weights).endswith(".safetensors"):
        return {}
    cfg = read_metadata(weights).get("default_cfg", {})
    if cfg.get("name") not in (None, name):
        raise ValueError(f"{weights} holds a {cfg['name']}, not a {name}")
    saved = {k: v for k, v in cfg.items() if k in resolve(name)[0].options}
    if "num_classes" in cfg:
        saved["num_classes"] = cfg["num_classes"]
    if "input_size" in cfg:
        size = cfg["input_size"]
        if not (isinstance(size, list) and len(size) == 3):
            raise ValueError(f"{weights} metadata: input_size should be [C, H, W], got {size!r}")
        saved["in_chans"], saved["img_size"] = size[0], tuple(size[1:])
    try:
        _check_sizes(
            name, saved.get("num_classes"), saved.get("in_chans", 3), saved.get("img_size")
        )
        _check_types(name, saved)
        if "input_size" in cfg:
            _check_input(cfg["input_size"], "input_size")
    except ValueError as e:
        raise ValueError(f"{weights} metadata: {e}") from None
    return saved


def _check_input(size: Sequence[int], what: str) -> None:
    """The example input (batch 2, *size) is whole numbers >= 1 of at most _MAX_INPUT elements."""
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in size):
        raise ValueError(f"{what} must be integers >= 1, got {list(size)}")
    n = 2 * math.prod(size)
    if n > _MAX_INPUT:
        raise ValueError(
            f"{what} {list(size)} asks for an example input of {n:,} elements (batch 2), more "
            f"than the {_MAX_INPUT:,} export allows"
        )


def _save_onnx(
    model: nn.Module, x: torch.Tensor, shapes: tuple, path: Path, opset: int | None
) -> None:
    """torch.onnx.export (through torch.export) with input "input", output "output" (or "output0",
    "output1", ... for a list of features), and the weights inside the file when they fit."""
    with torch.no_grad():
        out = model(x)
    n = 1 if isinstance(out, torch.Tensor) else len(out)
    size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    torch.onnx.export(
        model,
        (x,),
        path,
        input_names=["input"],
        output_names=["output"] if n == 1 else [f"output{i}" for i in range(n)],
        dynamic_shapes=shapes,
        opset_version=opset,
        external_data=size > _ONNX_MAX_BYTES,
        verbose=False,
    )
