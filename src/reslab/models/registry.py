"""Model registry (timm style): `create_model(name, **overrides)` and `list_models(pattern)`.

A name is a family prefix and a depth. Each family registers a few depths by name ("resnet56",
"plain56") and, where any depth is allowed, accepts "<prefix>-<depth>" ("resnet-74", "plain-302").
"<name>+<variant>" is that net with its units made a variant of He et al. 2016 (`variants.apply`).
The plain twin of every residual net is the same builder with shortcut="none"; this module is the
one home of plain/residual naming: `twin(name, residual)` and `is_residual(name_or_model)`.
`@register_model` adds a model of your own from user code, as timm's decorator does.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from reslab.limits import MAX_SIDE
from reslab.models import variants
from reslab.models.blocks import ResidualBlock
from reslab.models.features import FeatureExtractor, Indices
from reslab.models.mlp import ResidualMLP, residual_mlp
from reslab.models.resnet import ResNet, cifar_resnet, imagenet_resnet, preact_resnet

Model = ResNet | ResidualMLP | FeatureExtractor  # what `create_model` builds


@dataclass(frozen=True)
class Family:
    """One model family and how its names are formed."""

    name: str  # short family name shown by `reslab models`
    residual: str  # name prefix of the residual nets
    plain: str | None  # name prefix of the plain twins; None: the family has none
    depths: tuple[int, ...]  # depths registered by name (prefix + depth)
    build: Callable[
        ..., ResNet | ResidualMLP
    ]  # build(depth, num_classes, in_chans, [img_size], **overrides)
    img_size: int  # default input resolution
    num_classes: int  # default number of classes (ImageNet: 1000, as torchvision)
    options: tuple[str, ...]  # keyword overrides accepted by `create_model`
    any_depth: bool = True  # whether "<prefix>-<depth>" is accepted


_BRANCH = ("shortcut", "norm", "branch_scale", "zero_init_residual")
_CONV = (*_BRANCH, "stride_in_1x1")
FAMILIES = (
    Family("cifar", "resnet", "plain", (20, 32, 44, 56, 110, 1202), cifar_resnet, 32, 10,
           (*_CONV, "block")),
    Family("imagenet", "resnet", "plain", (18, 34, 50, 101, 152), imagenet_resnet, 224, 1000, _CONV,
           any_depth=False),
    Family("preact", "preact_resnet", "preact_plain", (110, 164, 1001), preact_resnet, 32, 10,
           (*_CONV, "block")),
    Family("mlp", "resmlp", "plainmlp", (4, 16, 64), residual_mlp, 32, 10, (*_BRANCH, "width")),
)  # fmt: skip

# name -> (family, depth, residual?)
_REGISTRY = {
    f"{prefix}{d}": (fam, d, prefix == fam.residual)
    for fam in FAMILIES
    for prefix in (fam.residual, fam.plain)
    if prefix
    for d in fam.depths
}
_ANY_DEPTH = {p: fam for fam in FAMILIES if fam.any_depth for p in (fam.residual, fam.plain) if p}


def _natural(name: str) -> tuple[str, int]:
    """Sort key in timm's order: a name's prefix, then its depth as a number (resnet18 < resnet101)."""
    head = name.rstrip("0123456789")
    return head, int(name[len(head) :] or 0)


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching the fnmatch `pattern`, in natural order (resnet18 before
    resnet101). Any-depth forms such as "resnet-74", "preact_plain-164" and "resmlp-1000" are
    accepted by `create_model` too."""
    return sorted((n for n in _REGISTRY if fnmatch.fnmatch(n, pattern)), key=_natural)


MAX_DEPTH = 20_000  # layers: twice the deepest net a study builds (the depth study's 10,000)
# sizes a model may be asked for (the memory they need is checked before building: reslab.limits)
MAX_CLASSES, MAX_CHANS, MAX_WIDTH = 1_000_000, 4096, 65536


def resolve(name: str) -> tuple[Family, int, bool]:
    """(family, depth, residual?) of a model name; ValueError for an unknown name or a depth over
    MAX_DEPTH (a net of two billion layers would take hours to build before failing)."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    m = re.fullmatch(r"([a-z_]+)-(\d+)", name)
    if m and m[1] in _ANY_DEPTH:
        fam = _ANY_DEPTH[m[1]]
        if int(m[2]) > MAX_DEPTH:
            raise ValueError(
                f"{name}: depth {int(m[2]):,} is more than the {MAX_DEPTH:,} reslab builds"
            )
        return fam, int(m[2]), m[1] == fam.residual
    close = difflib.get_close_matches(name, _REGISTRY, n=2)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    raise ValueError(
        f"unknown model {name!r}; {hint}list them with `reslab models` or reslab.list_models() "
        f"(any depth: {', '.join(p + '-N' for p in _ANY_DEPTH)})"
    )


def twin(name: str, residual: bool) -> str:
    """The name of the residual (residual=True) or plain (False) twin of model `name`, in the same
    form ("resnet-20" -> "plain-20", "resnet18" -> "plain18") and keeping a "+variant" suffix;
    `name` itself where it already is that kind. ValueError for a family without a plain twin."""
    base, plus, variant = name.partition("+")
    fam, depth, _ = resolve(base)
    prefix = fam.residual if residual else fam.plain
    if prefix is None:
        raise ValueError(f"{name}: the {fam.name} family has no plain twin")
    sep = "" if base in _REGISTRY else "-"
    return f"{prefix}{sep}{depth}{plus}{variant}"


def is_residual(name_or_model: str | nn.Module) -> bool:
    """Whether a model name is a residual net (not a plain twin), or whether a built model has a
    block with a shortcut (any of its `residual_blocks()`, or its `ResidualBlock`s if it has no
    such method)."""
    if isinstance(name_or_model, str):
        return resolve(name_or_model.partition("+")[0])[2]
    model = name_or_model
    residual_blocks = getattr(model, "residual_blocks", None)  # a reslab model's, or none
    if residual_blocks is not None:
        blocks = residual_blocks()
    else:
        blocks = [m for m in model.modules() if isinstance(m, ResidualBlock)]
    return any(b.shortcut != "none" for b in blocks)


USER = "user"  # the family of the models registered from user code
_SIZES = ("num_classes", "in_chans", "img_size")


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a model builder under its function's name, from your own code (timm's decorator):

        @reslab.register_model
        def tiny_mlp(num_classes=10, in_chans=3, img_size=32, width=32):
            ...
            return module

    `create_model("tiny_mlp", ...)`, `list_models()`, `train(TrainConfig(model="tiny_mlp"))` and
    `load_run` then know it (in this process). The builder is called with the sizes the data gives,
    `num_classes`, `in_chans` and `img_size` (an int or (H, W)), as keywords, and with the
    `create_model` overrides: its other named parameters (`model_kwargs` in a TrainConfig).
    Registering the same name again replaces it (a notebook cell run twice); a built-in name is
    refused. The registry knows nothing of its shortcuts: `is_residual(model)` on a built model
    tells."""
    name = getattr(fn, "__name__", "")
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
        raise ValueError(f"register_model: a model name is lowercase a-z, 0-9 and _, got {name!r}")
    if name in _REGISTRY and _REGISTRY[name][0].name != USER:
        raise ValueError(f"register_model: {name!r} is a built-in model name; pick another")
    params = inspect.signature(fn).parameters
    missing = [k for k in _SIZES if k not in params]
    if missing:
        raise ValueError(
            f"register_model: {name} must take {', '.join(_SIZES)} (it lacks {', '.join(missing)})"
        )
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    classes, size = params["num_classes"].default, params["img_size"].default
    if size is inspect.Parameter.empty:
        size = 32

    def build(depth, num_classes, in_chans, img_size, **overrides):
        size_ = size if img_size is None else img_size
        return fn(num_classes=num_classes, in_chans=in_chans, img_size=size_, **overrides)

    family = Family(
        name=USER,
        residual=name,
        plain=None,
        depths=(),
        build=build,
        img_size=size,
        num_classes=classes if _is_int(classes) else 10,
        options=tuple(k for k, p in params.items() if k not in _SIZES and p.kind in named),
        any_depth=False,
    )
    _REGISTRY[name] = (family, 0, False)
    return fn


# Options whose type a value must have (the others are names, checked by the model itself).
_BOOL_OPTIONS = ("zero_init_residual", "stride_in_1x1")
_INT_OPTIONS = ("width",)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_sizes(name: str, num_classes: Any, in_chans: Any, img_size: Any) -> None:
    """Sizes are whole numbers in a sane range, whether typed by a user or read from a file."""
    if num_classes is not None and not (_is_int(num_classes) and 1 <= num_classes <= MAX_CLASSES):
        raise ValueError(
            f"{name}: num_classes must be an integer from 1 to {MAX_CLASSES:,}, got {num_classes!r}"
        )
    if not (_is_int(in_chans) and 1 <= in_chans <= MAX_CHANS):
        raise ValueError(
            f"{name}: in_chans must be an integer from 1 to {MAX_CHANS:,}, got {in_chans!r}"
        )
    sizes = img_size if isinstance(img_size, (tuple, list)) else (img_size,)
    if img_size is not None and not (
        len(sizes) in (1, 2) and all(_is_int(v) and 1 <= v <= MAX_SIDE for v in sizes)
    ):
        raise ValueError(
            f"{name}: img_size must be N or (H, W), integers from 1 to {MAX_SIDE:,}, "
            f"got {img_size!r}"
        )


def _check_types(name: str, overrides: dict) -> None:
    for key in _BOOL_OPTIONS:
        if key in overrides and not isinstance(overrides[key], bool):
            raise ValueError(f"{name}: {key} must be True or False, got {overrides[key]!r}")
    for key in _INT_OPTIONS:
        if key in overrides and not (_is_int(overrides[key]) and 1 <= overrides[key] <= MAX_WIDTH):
            raise ValueError(
                f"{name}: {key} must be an integer from 1 to {MAX_WIDTH:,}, got {overrides[key]!r}"
            )


def create_model(
    name: str,
    num_classes: int | None = None,
    in_chans: int = 3,
    img_size: int | tuple[int, int] | None = None,
    features_only: bool = False,
    out_indices: Indices = None,
    **overrides: Any,
) -> Model:
    """Build a model by name, e.g. create_model("resnet-74", shortcut="B", norm="group").

    `num_classes` defaults to the family's dataset: 1000 for the ImageNet family (as torchvision),
    10 otherwise. `img_size` sets the flattened input of the MLP family; conv nets take any size. Overrides
    are the keyword arguments of the family builder (`cifar_resnet`, `imagenet_resnet`,
    `preact_resnet`, `residual_mlp`) and of the model class: shortcut, norm, branch_scale,
    zero_init_residual, stride_in_1x1, block (CIFAR, pre-act: "basic" | "bottleneck"), width (MLP).
    The model gets `model_name` and `default_cfg` (name, family, depth, input_size, overrides).
    `features_only=True` returns a `FeatureExtractor` (timm's semantics): its forward gives the list
    of the stem's and each stage's outputs chosen by `out_indices` (default: all), described by its
    `feature_info`.
    A name "<base>+<variant>" builds <base>, with its defaults, options and `features_only`, and
    makes its units a shortcut/activation variant of He et al. 2016 (see `reslab.models.variants`),
    e.g. "resnet-110+gate-shortcut".
    `grad_checkpoint` (every family): True recomputes activations in the backward pass in about
    sqrt(blocks) segments, an int N >= 2 in N segments (see `reslab.models.recompute`); the same as
    calling `model.set_grad_checkpointing(...)` afterwards.
    """
    if not isinstance(name, str):
        raise ValueError(f"model name must be a string such as 'resnet20', got {name!r}")
    _check_sizes(name, num_classes, in_chans, img_size)
    _check_types(name, overrides)
    base, plus, variant = name.partition("+")
    fam, depth, residual = resolve(base)
    if plus:
        overrides = variants.base_overrides(variant, overrides)
        if not residual:
            raise ValueError(f"{name}: variants need a residual base net; try {twin(name, True)!r}")
    num_classes = num_classes or fam.num_classes
    grad_checkpoint = overrides.pop("grad_checkpoint", False)
    unknown = sorted(set(overrides) - set(fam.options))
    if unknown:
        raise ValueError(f"{name}: unknown option(s) {unknown}; allowed: {', '.join(fam.options)}")
    if not residual and fam.name != USER:
        if overrides.get("shortcut", "none") != "none":
            raise ValueError(f"{name} is a plain net; pick its residual twin to choose a shortcut")
        overrides["shortcut"] = "none"
    try:
        model = fam.build(depth, num_classes, in_chans, img_size, **overrides)
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None
    try:
        if grad_checkpoint or hasattr(model, "set_grad_checkpointing"):
            model.set_grad_checkpointing(grad_checkpoint)
    except (ValueError, AttributeError) as e:
        raise ValueError(f"{name}: {e}") from None
    if plus:
        try:
            variants.apply(model, variant)
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
    size = img_size or fam.img_size
    h, w = (size, size) if isinstance(size, int) else size
    model.model_name = name
    model.default_cfg = dict(
        name=name,
        family=fam.name,
        depth=depth,
        residual=residual,
        num_classes=num_classes,
        input_size=(in_chans, h, w),
        **overrides,
        **({"variant": variant} if plus else {}),
    )
    if features_only:
        extractor = FeatureExtractor(model, out_indices)
        extractor.model_name = name
        extractor.default_cfg = dict(model.default_cfg, features_only=True, out_indices=out_indices)
        return extractor
    if out_indices is not None:
        raise ValueError("out_indices chooses the features of features_only=True; pass both")
    return model
