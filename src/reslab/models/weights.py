"""Weight import and export: reslab safetensors files, torchvision ResNet state dicts, and checkpoints
of akamaster/pytorch_resnet_cifar10 (the CIFAR ResNet-20..1202 of He et al. 2015 §4.2).

Formats `load_weights` reads (told apart by the file's first bytes and by the keys):
- reslab `.safetensors` written by `save_weights` (metadata: reslab version, model name and config,
  and for a trained run the input normalisation, `reslab.data.normalization`): `create_saved` builds
  the model it records, and `load_weights` gives the model its `normalization`;
- torchvision ResNet `.pth` (torch.save(model.state_dict())): reslab's conv nets use torchvision's
  parameter names, so the keys load as they are;
- akamaster `.th` ({'state_dict': ..., 'best_prec1': ..., ['epoch': ...]}): keys prefixed `module.`
  (nn.DataParallel), tensors saved on CUDA, head named `linear` (reslab: `fc`), option-B shortcuts
  `shortcut.0/1` (reslab: `downsample.0/1`), and `compressible_conv1` etc. in later versions.
Any other mapping of tensors with reslab names (bare, or under 'state_dict' / 'model', with a
`module.` or `_orig_mod.` prefix) loads too. Pickle files are read with
torch.load(weights_only=True, map_location="cpu"): no code runs, and GPU-saved files load on a CPU.
A file that cannot be read (damaged, truncated, or a pickle that asks to run code) is one ValueError
naming it; when torch refuses a pickle, pickletools (which runs nothing) says which call it asks for
(`reslab.models.weightfiles`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import reprlib
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import safetensors
import safetensors.torch
import torch
from torch import Tensor, nn

from reslab import __version__, atomic, limits
from reslab.models.weightfiles import is_safetensors, refused, safetensors_errors

M = TypeVar("M", bound=nn.Module)

if TYPE_CHECKING:
    from reslab.data.normalization import Normalization
    from reslab.models.registry import Model

# Other projects' names -> reslab's, tried on keys the model does not have.
_RENAMES = [
    (re.compile(r"^linear\."), "fc."),  # akamaster head
    (re.compile(r"compressible_"), ""),  # akamaster, later versions
    (re.compile(r"\.shortcut\.([01])\."), r".downsample.\1."),  # akamaster option B
]
_PREFIXES = ("module.", "_orig_mod.")  # nn.DataParallel / DDP, torch.compile


def load_weights(
    model: M, source: str | os.PathLike | Mapping[str, Tensor], strict: bool = True
) -> M:
    """Load `source` (a weights file or a state dict) into `model` in place and return `model`.

    From a file, `model.normalization` becomes the input normalisation the file records (a
    `reslab.data.Normalization`; None where it records none): what `reslab.evaluate` and export use.
    Raises ValueError naming the offending keys when the weights do not fit: missing or unexpected
    keys (only if strict) and shape mismatches (always), with the model a reslab file records and
    how to build it; and one naming the file when it cannot be read (FileNotFoundError /
    IsADirectoryError for a missing file or a folder).
    """
    if not isinstance(model, nn.Module):
        hint = f"; build it with create_model({model!r})" if _is_model_name(model) else ""
        shown = repr(model) if isinstance(model, (str, os.PathLike)) else reprlib.repr(model)
        raise ValueError(
            f"load_weights takes the model (an nn.Module) first, got {type(model).__name__} "
            f"{shown}{hint}"
        )
    state, origin, meta = _read(source)
    expected = model.state_dict()
    state = _rename(state, expected)
    for key, value in expected.items():  # files from before PyTorch 0.4.1 have no BN step counter
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = value
    problems = mismatches(state, expected, "file", strict)
    if problems:
        name = getattr(model, "model_name", type(model).__name__)
        raise ValueError(
            f"load_weights: {origin} does not fit {name}: "
            + "; ".join(problems)
            + _hint(source, meta)
        )
    model.load_state_dict(state, strict=strict)
    if isinstance(source, (str, os.PathLike)):
        model.normalization = meta.get("normalization")  # type: ignore[assignment]  # ours, on any nn.Module
    return model


def _hint(source, meta: dict) -> str:
    """'; it holds create_model('resmlp-4', num_classes=10, ...): build that, or ...' for a file
    that records its model ("" for others)."""
    try:
        name, kwargs = _settings(meta, str(source))
    except ValueError:
        return ""
    if name is None:
        return ""
    args = ", ".join([repr(name), *(f"{k}={v!r}" for k, v in kwargs.items())])
    return (
        f"; it holds create_model({args}): build that, or load model and settings with "
        f"reslab.load_run({str(source)!r})"
    )


def create_saved(path: str | os.PathLike, name: str | None = None, **given: Any) -> Model:
    """The model a reslab weights file records, built and loaded: `create_model(name, ...)` with the
    classes, input size and model options the file was saved with (`given` keyword arguments win over
    them), then `load_weights`. `name` defaults to the recorded one and must match it when both exist;
    a file that records none (torchvision's, akamaster's) needs `name` and the sizes in `given`.
    The model is first built on the meta device, so that metadata asking for more than 2**31
    parameters is refused before any memory is taken."""
    from reslab.models.registry import create_model

    saved_name, saved = saved_settings(path)
    if saved_name is not None and name not in (None, saved_name):
        raise ValueError(f"{path} holds a {saved_name}, not a {name}")
    name = name or saved_name
    if name is None:
        raise ValueError(
            f"{path} does not record its model (not a reslab .safetensors file); build it with "
            "create_model(name, ...) and load it with load_weights"
        )
    kwargs = {"in_chans": 3} | saved | given
    if saved:  # settings from a file: build on the meta device first, so no memory is taken yet
        asked = f"{path} metadata: " + ", ".join(f"{k}={v!r}" for k, v in saved.items())
        try:
            n = limits.model_size(lambda: create_model(name, **kwargs))[0]
        except ValueError as e:
            raise ValueError(f"{e} ({asked})") from None
        if n > _MAX_PARAMS:
            raise ValueError(
                f"{name} would have {n:,} parameters, more than the {_MAX_PARAMS:,} reslab builds "
                f"from a file ({asked})"
            )
    return load_weights(create_model(name, **kwargs), path)


_MAX_PARAMS = 2**31  # parameters and buffers of the model a file's metadata asks for (8 GiB fp32)


def saved_settings(path: str | os.PathLike) -> tuple[str | None, dict]:
    """(model name, `create_model` keyword arguments: num_classes, in_chans, img_size and the model
    options) that a reslab .safetensors file was saved with; (None, {}) for other files. Checked as
    create_model checks typed ones, with a one-line ValueError naming the file."""
    path = Path(path)
    if not (path.is_file() and (path.suffix == ".safetensors" or is_safetensors(path))):
        return None, {}
    return _settings(read_metadata(path), str(path))


def _settings(meta: dict, origin: str) -> tuple[str | None, dict]:
    from reslab.models.registry import _check_sizes, _check_types, resolve

    cfg = meta.get("default_cfg") or {}
    name = cfg.get("name", meta.get("model_name"))
    if not cfg or name is None:  # a file that does not say how its model was built
        return None, {}
    try:
        if not isinstance(name, str):
            raise ValueError(f"the model name should be a string, got {reprlib.repr(name)}")
        saved = {k: v for k, v in cfg.items() if k in resolve(name.partition("+")[0])[0].options}
        if "num_classes" in cfg:
            saved["num_classes"] = cfg["num_classes"]
        if "input_size" in cfg:
            size = cfg["input_size"]
            if not (isinstance(size, list) and len(size) == 3):
                raise ValueError(f"input_size should be [C, H, W], got {reprlib.repr(size)}")
            saved["in_chans"], saved["img_size"] = size[0], tuple(size[1:])
        _check_sizes(
            name, saved.get("num_classes"), saved.get("in_chans", 3), saved.get("img_size")
        )
        _check_types(name, saved)
    except ValueError as e:
        raise ValueError(f"{origin} metadata: {e}") from None
    return name, saved


def mismatches(state: Mapping, expected: Mapping, source: str, strict: bool = True) -> list[str]:
    """What keeps `state` from loading into a model whose state dict is `expected`, as short
    phrases (shapes, then missing and unexpected keys when `strict`); [] when it fits."""
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    dtypes = [  # a float parameter from bool, int8 or complex values would load as garbage
        f"{k} {str(state[k].dtype).removeprefix('torch.')} vs {str(v.dtype).removeprefix('torch.')}"
        for k, v in expected.items()
        if k in state and _kind(state[k].dtype) != _kind(v.dtype)
    ]
    problems = [
        _few(f"shape mismatches, {source} vs model,", shapes),
        _few(f"dtype mismatches, {source} vs model,", dtypes),
    ]
    if strict:
        problems += [
            _few("missing keys", [k for k in expected if k not in state]),
            _few("unexpected keys", [k for k in state if k not in expected]),
        ]
    return [p for p in problems if p]


def _kind(dtype: torch.dtype) -> str:
    """What values a dtype holds, as far as loading goes: any float loads into a float parameter
    (load_state_dict casts), any whole number into an integer buffer; bool and complex only into
    their own kind."""
    if dtype == torch.bool:
        return "bool"
    if dtype.is_complex:
        return "complex"
    return "float" if dtype.is_floating_point else "integer"


def save_weights(
    model: nn.Module, path: str | os.PathLike, normalization: Normalization | None = None
) -> Path:
    """Write `model`'s state dict to a safetensors file, atomically (`reslab.atomic`).

    The metadata (`metadata(model)`) records the model's name, classes, input size and options, and
    `normalization`, the input normalisation it was trained with (default: `model.normalization`,
    which `load_weights` sets), so that `reslab.load_run` and `reslab eval` need the file alone."""
    path = Path(path)
    tensors = {
        k: v.detach().to("cpu", memory_format=torch.contiguous_format, copy=True)
        for k, v in model.state_dict().items()
    }
    data = safetensors.torch.save(tensors, metadata=metadata(model, normalization))
    return atomic.write_bytes(path, data)


def metadata(model: nn.Module, normalization: Normalization | None = None) -> dict[str, str]:
    """What reslab records with a model's weights, as str -> str (a safetensors header; ONNX
    metadata_props): format, reslab_version, model_name, default_cfg (JSON: name, classes, input
    size, options) and normalization (see `reslab.data.normalization`; default `model.normalization`).
    `decode_metadata` reads it back."""
    meta = {"format": "reslab", "reslab_version": __version__}
    if getattr(model, "model_name", None) is not None:
        meta["model_name"] = str(model.model_name)
    cfg = getattr(model, "default_cfg", None)
    if cfg is not None:
        dataclass = dataclasses.is_dataclass(cfg) and not isinstance(cfg, type)
        cfg = dataclasses.asdict(cfg) if dataclass else cfg
        meta["default_cfg"] = json.dumps(cfg, default=str, sort_keys=True)
    if normalization is None:
        normalization = getattr(model, "normalization", None)
    if normalization is not None:
        meta |= normalization.to_metadata()
    return meta


def decode_metadata(meta: Mapping[str, str], origin: str) -> dict:
    """`metadata(...)` read back: default_cfg as a dict, normalization as a `Normalization`; a
    one-line ValueError naming `origin` for a malformed entry."""
    from reslab.data.normalization import KEY, Normalization

    out: dict[str, Any] = dict(meta)
    if "default_cfg" in out:
        try:
            out["default_cfg"] = json.loads(out["default_cfg"])
        except (ValueError, RecursionError):
            raise ValueError(f"{origin}: metadata default_cfg is not valid JSON") from None
        if not isinstance(out["default_cfg"], dict):
            got = type(out["default_cfg"]).__name__
            raise ValueError(f"{origin}: metadata default_cfg should be a JSON object, got {got}")
    if KEY in out:
        out[KEY] = Normalization.from_metadata(meta, origin)
    return out


def read_metadata(path: str | os.PathLike) -> dict:
    """Metadata of a file written by `save_weights`: model_name, default_cfg (a dict),
    reslab_version and, for a trained run, normalization (see `decode_metadata`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such weights file: {path}")
    with safetensors_errors(path), safetensors.safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
    return decode_metadata(meta, str(path))


def _read(source) -> tuple[dict[str, Tensor], str, dict]:
    """The state dict in `source`, a short description of where it came from, and its metadata
    (`read_metadata`; {} but for a safetensors file)."""
    meta: dict = {}
    obj: object
    if isinstance(source, Mapping):
        obj, origin = source, "the state dict"
    elif isinstance(source, (str, os.PathLike)):
        obj, origin, meta = _read_file(Path(source))
    else:
        raise ValueError(
            f"load_weights: source must be a path or a state dict, got {type(source).__name__}"
        )

    for key in ("state_dict", "model"):  # training checkpoints wrap the state dict
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not obj:
        raise ValueError(f"load_weights: {origin} holds no state dict (got {type(obj).__name__})")
    not_tensors = [str(k) for k, v in obj.items() if not isinstance(v, Tensor)]
    if not_tensors:
        raise ValueError(
            f"load_weights: {origin} is not a state dict: {_few('entries are not tensors', not_tensors)}"
        )
    problems = [  # legal in a torch.save file, but no model's state dict
        _few("keys are not strings", [reprlib.repr(k) for k in obj if not isinstance(k, str)]),
        _few("tensors are sparse", [str(k) for k, v in obj.items() if v.layout != torch.strided]),
        _few("tensors hold no data (meta)", [str(k) for k, v in obj.items() if v.is_meta]),
    ]
    if any(problems):
        raise ValueError(
            f"load_weights: {origin} is not a state dict: " + "; ".join(p for p in problems if p)
        )
    return dict(obj), origin, meta


def _read_file(path: Path) -> tuple[object, str, dict]:
    """What a weights file holds (safetensors, or torch.load with weights_only=True), its origin and
    its metadata (`read_metadata`; {} but for safetensors)."""
    if path.is_dir():
        from reslab.training import runs

        inside = path / runs.WEIGHTS
        hint = inside if inside.is_file() else "a weights file (.safetensors, .pth) inside it"
        raise IsADirectoryError(f"{path} is a folder, not a weights file; give {hint}")
    if not path.is_file():
        raise FileNotFoundError(f"load_weights: no such file: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty, not a weights file")
    if path.suffix == ".safetensors" or is_safetensors(path):
        with safetensors_errors(path):
            obj = safetensors.torch.load_file(path, device="cpu")
        meta = read_metadata(path)
        name = meta.get("model_name")
        return obj, f"{path} ({name})" if name else str(path), meta
    try:
        with warnings.catch_warnings():  # its note on the pickle protocol: `refused` says more
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            warnings.filterwarnings("ignore", message="Validating sparse tensor")  # refused below
            return torch.load(path, map_location="cpu", weights_only=True), str(path), {}
    except Exception as e:  # a damaged file fails in many ways: RuntimeError, OSError, EOFError...
        raise refused(path, e) from None


def _rename(state: dict[str, Tensor], expected: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Strip wrapper prefixes and map other projects' names to reslab's where the model wants them."""
    for prefix in _PREFIXES:
        if all(k.startswith(prefix) for k in state) and not any(
            k.startswith(prefix) for k in expected
        ):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    renamed = {}
    for key, value in state.items():
        new = key
        for pattern, repl in _RENAMES:
            new = pattern.sub(repl, new)
        renamed[new if key not in expected and new in expected else key] = value
    return renamed


def _is_model_name(x: object) -> bool:
    from reslab.models.registry import resolve

    try:
        return isinstance(x, str) and bool(resolve(x.partition("+")[0]))
    except ValueError:
        return False


def _few(what: str, keys: list[str], shown: int = 4) -> str:
    """'3 missing keys (a, b, c)' with at most `shown` keys spelled out."""
    if not keys:
        return ""
    more = ", ..." if len(keys) > shown else ""
    return f"{len(keys)} {what} ({', '.join(keys[:shown])}{more})"
