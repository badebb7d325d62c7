"""Weight import and export: reslab safetensors files, torchvision ResNet state dicts, and checkpoints
of akamaster/pytorch_resnet_cifar10 (the CIFAR ResNet-20..1202 of He et al. 2015 §4.2).

Formats `load_weights` reads (told apart by the file's first bytes and by the keys):
- reslab `.safetensors` written by `save_weights` (metadata: reslab version, model name and config);
- torchvision ResNet `.pth` (torch.save(model.state_dict())): reslab's conv nets use torchvision's
  parameter names, so the keys load as they are;
- akamaster `.th` ({'state_dict': ..., 'best_prec1': ..., ['epoch': ...]}): keys prefixed `module.`
  (nn.DataParallel), tensors saved on CUDA, head named `linear` (reslab: `fc`), option-B shortcuts
  `shortcut.0/1` (reslab: `downsample.0/1`), and `compressible_conv1` etc. in later versions.
Any other mapping of tensors with reslab names (bare, or under 'state_dict' / 'model', with a
`module.` or `_orig_mod.` prefix) loads too. Pickle files are read with
torch.load(weights_only=True, map_location="cpu"): no code runs, and GPU-saved files load on a CPU.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path

import safetensors
import safetensors.torch
import torch
from torch import Tensor, nn

from reslab import __version__

# Other projects' names -> reslab's, tried on keys the model does not have.
_RENAMES = [
    (re.compile(r"^linear\."), "fc."),  # akamaster head
    (re.compile(r"compressible_"), ""),  # akamaster, later versions
    (re.compile(r"\.shortcut\.([01])\."), r".downsample.\1."),  # akamaster option B
]
_PREFIXES = ("module.", "_orig_mod.")  # nn.DataParallel / DDP, torch.compile


def load_weights(
    model: nn.Module, source: str | os.PathLike | Mapping[str, Tensor], strict: bool = True
) -> nn.Module:
    """Load `source` (a weights file or a state dict) into `model` in place and return `model`.

    Raises ValueError naming the offending keys when the weights do not fit: missing or unexpected
    keys (only if strict) and shape mismatches (always).
    """
    state, origin = _read(source)
    expected = model.state_dict()
    state = _rename(state, expected)
    for key, value in expected.items():  # files from before PyTorch 0.4.1 have no BN step counter
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = value
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = [_few("shape mismatches, file vs model,", shapes)]
    if strict:
        problems += [_few("missing keys", missing), _few("unexpected keys", unexpected)]
    problems = [p for p in problems if p]
    if problems:
        name = getattr(model, "model_name", type(model).__name__)
        raise ValueError(f"load_weights: {origin} does not fit {name}: " + "; ".join(problems))
    model.load_state_dict(state, strict=strict)
    return model


def save_weights(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write `model`'s state dict to a safetensors file, atomically (temp file, fsync, rename)."""
    path = Path(path)
    tensors = {
        k: v.detach().to("cpu", memory_format=torch.contiguous_format, copy=True)
        for k, v in model.state_dict().items()
    }
    metadata = {"format": "reslab", "reslab_version": __version__}
    if getattr(model, "model_name", None) is not None:
        metadata["model_name"] = str(model.model_name)
    cfg = getattr(model, "default_cfg", None)
    if cfg is not None:
        cfg = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else cfg
        metadata["default_cfg"] = json.dumps(cfg, default=str, sort_keys=True)
    data = safetensors.torch.save(tensors, metadata=metadata)

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


def read_metadata(path: str | os.PathLike) -> dict:
    """Metadata of a file written by `save_weights`: model_name, default_cfg (a dict), reslab_version."""
    with safetensors.safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
    if "default_cfg" in meta:
        meta["default_cfg"] = json.loads(meta["default_cfg"])
    return meta


def _read(source) -> tuple[dict[str, Tensor], str]:
    """The state dict in `source` and a short description of where it came from."""
    if isinstance(source, Mapping):
        obj, origin = source, "the state dict"
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"load_weights: no such file: {path}")
        origin = str(path)
        if _is_safetensors(path):
            obj = safetensors.torch.load_file(path, device="cpu")
            name = read_metadata(path).get("model_name")
            origin += f" ({name})" if name else ""
        else:
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True)
            except pickle.UnpicklingError as e:  # weights_only refused something: say what
                m = re.search(r"WeightsUnpickler error:\s*([^\n]+)", str(e))
                reason = (m[1] if m else str(e).splitlines()[0]).split(". Please")[0]
                if "Unsupported global" in reason:
                    raise ValueError(
                        f"load_weights: refusing {path}: loading it would run code ({reason})"
                    ) from e
                raise ValueError(
                    f"load_weights: {path} is not a safetensors or torch.save file ({reason})"
                ) from e
            except (RuntimeError, EOFError) as e:
                raise ValueError(
                    f"load_weights: {path} is not a safetensors or torch.save file ({e})"
                ) from e
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
    return dict(obj), origin


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


def _is_safetensors(path: Path) -> bool:
    """safetensors: 8-byte little-endian header length, then a JSON header."""
    with open(path, "rb") as f:
        head = f.read(9)
    size = int.from_bytes(head[:8], "little")
    return len(head) == 9 and head[8:9] == b"{" and 8 + size <= path.stat().st_size


def _few(what: str, keys: list[str], shown: int = 4) -> str:
    """'3 missing keys (a, b, c)' with at most `shown` keys spelled out."""
    if not keys:
        return ""
    more = ", ..." if len(keys) > shown else ""
    return f"{len(keys)} {what} ({', '.join(keys[:shown])}{more})"
