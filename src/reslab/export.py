"""Export a model for other runtimes: ONNX (onnxruntime, TensorRT, ...) and torch.export (.pt2).

Both go through a `torch.export.export` trace of the model in eval mode on an example input of the
model's `default_cfg["input_size"]`. The batch dimension stays dynamic (named "batch"); for conv
nets height and width stay dynamic too (torch.export decides: an MLP's flatten fixes them). ONNX
export needs the `onnxscript` package (`pip install 'reslab[export]'`); the file holds the weights,
and its metadata_props what a reslab .safetensors file records (model, sizes, input normalisation).
Sizes read from a weights file's metadata are checked as typed ones are, and bounded: the example
input to 2**28 elements (typed sizes too), the model the metadata describes to 2**31 parameters.
"""

from __future__ import annotations

import importlib.util
import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.export import Dim

from reslab import atomic, limits

FORMATS = {"onnx": ".onnx", "torch-export": ".pt2"}  # format -> file suffix
_ONNX_MAX_BYTES = 2**31 - 2**26  # protobuf's 2 GB limit, with room for the graph
_MAX_INPUT = 2**28  # elements of the example input, batch included (1 GiB in fp32)


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
        num_classes, input size and model options it was saved with, unless given here, and the
        input normalisation it was trained with, which an ONNX file records in its metadata_props
        (`read_onnx_metadata`) as a safetensors file does.
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
    was_training = model.training
    model.eval()
    try:
        if format == "torch-export":
            # into memory first: torch's zip writer aborts the process when the disk fills up
            buffer = io.BytesIO()
            torch.export.save(torch.export.export(model, (x,), dynamic_shapes=shapes), buffer)
            atomic.write_bytes(path, buffer.getvalue())
        else:
            with atomic.replacing(path) as tmp:
                _save_onnx(model, x, shapes, tmp, opset)
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
    then its weights loaded (`create_saved`); what is typed wins over the file."""
    from reslab.models import create_model
    from reslab.models.weights import create_saved, saved_settings

    given: dict[str, Any] = {"num_classes": num_classes, "in_chans": in_chans, "img_size": img_size}
    typed = {k: v for k, v in given.items() if v is not None} | overrides
    if weights is None:
        defaults: dict[str, Any] = {"in_chans": 3}
        typed = defaults | typed
        limits.check_model(lambda: create_model(name, **typed), name, training=False)
        return create_model(name, **typed)
    saved = saved_settings(weights)[1]
    if "img_size" in saved:  # the example input the file asks for is bounded as a typed one
        try:
            _check_input([saved["in_chans"], *saved["img_size"]], "input_size")
        except ValueError as e:
            raise ValueError(f"{weights} metadata: {e}") from None
    return create_saved(weights, name, **typed)


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
    "output1", ... for a list of features), the weights inside the file when they fit, and in
    metadata_props what `save_weights` records (`reslab.models.weights.metadata`: the model, its
    sizes and options, the input normalisation it was trained with; `read_onnx_metadata` reads it)."""
    from reslab.models.weights import metadata

    with torch.no_grad():
        out = model(x)
    n = 1 if isinstance(out, torch.Tensor) else len(out)
    size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    program = torch.onnx.export(
        model,
        (x,),
        input_names=["input"],
        output_names=["output"] if n == 1 else [f"output{i}" for i in range(n)],
        dynamic_shapes=shapes,
        opset_version=opset,
        verbose=False,
    )
    assert program is not None  # the dynamo exporter returns its program
    program.model.metadata_props.update(metadata(model))
    program.save(path, external_data=size > _ONNX_MAX_BYTES)


def read_onnx_metadata(path: str | os.PathLike) -> dict:
    """The reslab metadata of an ONNX file `export_model` wrote, decoded as `read_metadata` decodes
    a safetensors file's ({} for an ONNX file without it). onnxruntime users have the same strings in
    `InferenceSession(path).get_modelmeta().custom_metadata_map`."""
    import onnx

    from reslab.models.weights import decode_metadata

    model = onnx.load(str(path), load_external_data=False)
    return decode_metadata({p.key: p.value for p in model.metadata_props}, str(path))
