"""Shortcut and activation variants of the residual unit (He et al. 2016, "Identity Mappings in Deep
Residual Networks": §3.1, Fig. 2 and Table 1; §4.1, Fig. 4, Table 2 and the appendix).

A unit computes x[l+1] = post(merge(h(x[l]), F(x[l]))). `apply(model, variant)` takes a built
post-activation residual net (CIFAR `resnet-N` with basic blocks or, from depth 164, bottlenecks;
ImageNet `resnet18..152`; `resmlp-N`) and swaps every unit for a `Unit` that reuses that unit's own
layers (same names, same initialisation), so the variants of one base differ only where the paper's
figures differ. Formulas for two-layer units; a bottleneck has three weight layers W1, W2, W3 and
the same placements:

shortcut variants (Fig. 2, Table 1; post = ReLU after the addition, as in the paper's §3):
  identity          h(x) + F(x)                      (a) the original unit
  scale-both        0.5 h(x) + 0.5 F(x)              (b) constant scaling of both paths
  scale-shortcut    0.5 h(x) + F(x)                  (b) constant scaling of the shortcut only
  gate-exclusive    (1 - g) h(x) + g F(x)            (c) g = sigmoid(W_g x + b_g), b_g = -6
  gate-exclusive-b0 the same with b_g = 0
  gate-shortcut     (1 - g) h(x) + F(x)              (d) b_g = -6
  gate-shortcut-b0  the same with b_g = 0
  conv-shortcut     W_s x + F(x)                     (e) 1x1 conv + BN on every unit (option "C")
  dropout-shortcut  m h(x) + F(x)                    (f) m ~ Bernoulli(0.5) per element in training,
                    0.5 h(x) at test time: "dropout statistically imposes a scale of lambda with an
                    expectation of 0.5 on the shortcut" (§3.1), so the mask is not rescaled.
activation variants (Fig. 4, Table 2; identity shortcut; `identity` above is the original unit (a)):
  bn-after-add      relu(BN(x + W2 relu(BN(W1 x))))  (b)
  relu-before-add   x + relu(BN(W2 relu(BN(W1 x))))  (c)
  relu-preact       x + BN(W2 relu(BN(W1 relu(x))))  (d) ReLU-only pre-activation
  full-preact       x + W2 relu(BN(W1 relu(BN(x))))  (e) full pre-activation

W_g is a 1x1 conv (a Linear in an MLP) with a bias, initialised like the model's other layers,
then its bias set to b_g. Where a unit changes shape (stage transitions), h is the base net's own
shortcut (option A: subsample and zero channels; B: projection) and the variant acts on it; the gate
sees x with the unit's stride.

Pre-activation units (d, e) follow the authors' code (KaimingHe/resnet-1k-layers,
resnet-pre-act.lua), so that "resnet-N+full-preact" is the net `preact_resnet-N` builds: the first
unit takes the stem's BN + ReLU as its pre-activation ("the first activation right after conv1",
appendix), so it applies none of its own; the first unit of every later stage pre-activates once
and feeds both paths ("both_preact"); full-preact projections are bare 1x1 convs; the last unit
gets an extra BN + ReLU after its addition (§4.1). The registry builds them by name:
`create_model("resmlp-34+gate-shortcut")` builds the base net with `base_overrides` and hands it to
`apply`; this module knows nothing of names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from reslab.models.blocks import (
    BasicBlock,
    Bottleneck,
    MLPBlock,
    ResidualBlock,
    check_choice,
    norm_layer,
)

PLACEMENTS = ("original", "bn-after-add", "relu-before-add", "relu-preact", "full-preact")
PREACT = ("relu-preact", "full-preact")


@dataclass(frozen=True)
class Variant:
    """One row of He et al. 2016's Table 1 or 2: how a unit merges its paths and where it activates."""

    table: int  # 1: shortcut variants (Fig. 2), 2: activation placements (Fig. 4)
    formula: str  # the unit, as printed in reports
    paper: str  # ResNet-110 CIFAR-10 test error (%) in the paper, or "fail"
    shortcut_scale: float = 1.0  # constant scaling of h(x)
    branch_scale: float = 1.0  # constant scaling of F(x)
    gate_bias: float | None = None  # b_g; None: no gate
    exclusive: bool = False  # gate also scales F by g (exclusive gating)
    dropout: float = 0.0  # drop probability on the shortcut
    base_shortcut: str | None = None  # shortcut option of the base net ("C": 1x1 conv everywhere)
    placement: str = "original"


VARIANTS: dict[str, Variant] = {
    "identity": Variant(1, "h(x) + F(x)", "6.61"),
    "scale-both": Variant(1, "0.5 h(x) + 0.5 F(x)", "12.35", shortcut_scale=0.5, branch_scale=0.5),
    "scale-shortcut": Variant(1, "0.5 h(x) + F(x)", "fail", shortcut_scale=0.5),
    "gate-exclusive": Variant(1, "(1-g) h(x) + g F(x), b_g=-6", "8.70", gate_bias=-6.0, exclusive=True),
    "gate-exclusive-b0": Variant(1, "(1-g) h(x) + g F(x), b_g=0", "fail", gate_bias=0.0, exclusive=True),
    "gate-shortcut": Variant(1, "(1-g) h(x) + F(x), b_g=-6", "6.91", gate_bias=-6.0),
    "gate-shortcut-b0": Variant(1, "(1-g) h(x) + F(x), b_g=0", "12.86", gate_bias=0.0),
    "conv-shortcut": Variant(1, "W_s x + F(x), 1x1 conv", "12.22", base_shortcut="C"),
    "dropout-shortcut": Variant(1, "dropout_0.5(h(x)) + F(x)", "fail", dropout=0.5),
    "bn-after-add": Variant(2, "relu(BN(x + F(x)))", "8.17", placement="bn-after-add"),
    "relu-before-add": Variant(2, "x + relu(F(x))", "7.84", placement="relu-before-add"),
    "relu-preact": Variant(2, "x + F(relu(x)), BN kept after W", "6.71", placement="relu-preact"),
    "full-preact": Variant(2, "x + F(x), BN-ReLU before each W", "6.37", placement="full-preact"),
}  # fmt: skip


class ConstantScale(nn.Module):
    """a h + b F (Fig. 2b); a = b = 1 is the plain sum of the original unit."""

    def __init__(self, shortcut: float = 1.0, branch: float = 1.0) -> None:
        super().__init__()
        self.a, self.b = shortcut, branch

    def forward(self, s: torch.Tensor, f: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return (s if self.a == 1 else self.a * s) + (f if self.b == 1 else self.b * f)

    def extra_repr(self) -> str:
        return f"shortcut={self.a}, branch={self.b}"


class Gate(nn.Module):
    """(1 - g) h + g F (exclusive, Fig. 2c) or (1 - g) h + F (shortcut-only, Fig. 2d), with
    g = sigmoid(W_g x + b_g) computed from the unit input x by a 1x1 conv (or a Linear)."""

    def __init__(
        self, c_in: int, c_out: int, stride: int, bias: float, exclusive: bool, conv: bool
    ) -> None:
        super().__init__()
        self.exclusive = exclusive
        self.gate: nn.Conv2d | nn.Linear
        if conv:  # initialised as ResNet's convs, as an MLP's Linears
            self.gate = nn.Conv2d(c_in, c_out, 1, stride, bias=True)
            nn.init.kaiming_normal_(self.gate.weight, mode="fan_out", nonlinearity="relu")
        else:
            self.gate = nn.Linear(c_in, c_out)
            nn.init.kaiming_normal_(self.gate.weight, nonlinearity="relu")
        assert self.gate.bias is not None  # built with one
        nn.init.constant_(self.gate.bias, bias)

    def forward(self, s: torch.Tensor, f: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        g = torch.sigmoid(self.gate(x))  # same shape as s and f
        return (1 - g) * s + (g * f if self.exclusive else f)


class DropShortcut(nn.Module):
    """m h + F with m ~ Bernoulli(1 - p) per element while training, (1 - p) h + F in eval (Fig. 2f)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, s: torch.Tensor, f: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return s * torch.bernoulli(torch.full_like(s, 1 - self.p)) + f
        return (1 - self.p) * s + f

    def extra_repr(self) -> str:
        return f"p={self.p}"


def norm_kind(module: nn.Module) -> str:
    """The `norm` option ("batch" | "group" | "none") that built `module`."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return "batch"
    return "group" if isinstance(module, nn.GroupNorm) else "none"


POSITIONS = ("after-stem", "stage-start", "inner")


class Unit(ResidualBlock):
    """x[l+1] = post(merge(h(x[l]), F(x[l]))): a unit with a chosen merge and activation placement,
    built from an existing `BasicBlock`, `Bottleneck` or `MLPBlock` whose layers it takes over.

    position (pre-activation placements only; see the module docstring): "after-stem" (the net's
    first unit: the stem's BN + ReLU is its pre-activation), "stage-start" (pre-activates once and
    feeds both paths), "inner" (pre-activates the residual path).
    """

    def __init__(
        self, block: ResidualBlock, variant: Variant, last: bool = False, position: str = "inner"
    ) -> None:
        super().__init__()
        check_choice("position", position, POSITIONS)
        if type(block) not in (BasicBlock, Bottleneck, MLPBlock):  # ReZero, ... are other types
            raise ValueError(
                "variants need residual BasicBlocks, Bottlenecks or MLPBlocks without "
                f"branch_scale; got {type(block).__name__}"
            )
        if block.shortcut == "none":
            raise ValueError("variants need residual blocks; got a plain block (shortcut='none')")
        self.shortcut, self.downsample = block.shortcut, block.downsample
        self.placement = variant.placement
        self.preact = variant.placement in PREACT  # no activation after the addition
        self.position = position if self.preact else "inner"
        self.both_preact = self.position == "stage-start"
        self._layers, self._norms = block._layers, block._norms  # conv1.. or fc1..; bn1..
        layers, norms = block.branch_layers(), block.branch_norms()
        for name, layer in zip(self._layers, layers, strict=True):  # the block's names
            setattr(self, name, layer)
        conv = isinstance(layers[0], nn.Conv2d)
        c_in, c_out = layers[0].weight.shape[1], layers[-1].weight.shape[0]  # (out, in, ...)
        stride = math.prod(w.stride[0] for w in layers if isinstance(w, nn.Conv2d))  # MLP: 1
        kind, dims = norm_kind(norms[0]), 2 if conv else 1
        if self.placement == "full-preact":
            # norm i comes before layer i: a new one over the input (none after the stem, whose
            # BN + ReLU is this unit's), then the block's first k-1; its last one is not used
            first = nn.Identity() if position == "after-stem" else norm_layer(kind, c_in, dims)
            norms = [first, *norms[:-1]]
            if isinstance(self.downsample, nn.Sequential):  # a projection: resnet-pre-act.lua
                self.downsample = nn.Sequential(self.downsample[0])  # makes it a bare 1x1 conv
        for name, norm in zip(self._norms, norms, strict=True):
            setattr(self, name, norm)
        self.merge_paths = _merge(variant, c_in, c_out, stride, conv)
        self.relu = nn.ReLU()
        last_act = self.preact and last
        self.final = nn.Sequential(norm_layer(kind, c_out, dims), nn.ReLU()) if last_act else None

    def preactivate(self, x: torch.Tensor) -> torch.Tensor:
        """The pre-activation of the unit input: relu(BN(x)) (full) or relu(x) (ReLU-only)."""
        return self.relu(self.bn1(x)) if self.placement == "full-preact" else self.relu(x)

    def shortcut_input(self, x: torch.Tensor) -> torch.Tensor:
        return self.preactivate(x) if self.both_preact else x

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        """F(x), with the norms and ReLUs where the placement puts them (Fig. 4). A pre-activation
        unit whose input is pre-activated already (`position` not "inner") skips its first one."""
        ws, ns, relu, p = self.branch_layers(), self.branch_norms(), self.relu, self.placement
        skip = self.position != "inner"
        if p == "full-preact":  # W_k relu(BN_k(... W_1 relu(BN_1(x))))
            for i, (w, n) in enumerate(zip(ws, ns, strict=True)):
                x = w(x if i == 0 and skip else relu(n(x)))
            return x
        if p == "relu-preact":  # BN_k(W_k relu(... BN_1(W_1 relu(x))))
            x = x if skip else relu(x)
            for i, (w, n) in enumerate(zip(ws, ns, strict=True)):
                x = n(w(x if i == 0 else relu(x)))
            return x
        for w, n in zip(ws[:-1], ns[:-1], strict=True):
            x = relu(n(w(x)))
        x = ws[-1](x)
        if p == "bn-after-add":
            return x  # its BN comes after the addition
        x = ns[-1](x)
        return relu(x) if p == "relu-before-add" else x

    def post(self, y: torch.Tensor) -> torch.Tensor:
        """What follows the addition: ReLU (a), BN + ReLU (b), nothing (c, d, e; last unit BN + ReLU)."""
        if self.placement == "original":
            return self.relu(y)
        if self.placement == "bn-after-add":
            return self.relu(self.branch_norms()[-1](y))
        return y if self.final is None else self.final(y)

    @property
    def relu_after_add(self) -> bool:
        return self.placement == "original"

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, H, W) -> (B, C_out, H/s, W/s)
        if self.both_preact:  # a stage's first unit pre-activates both paths
            x = self.preactivate(x)
        s = x if self.downsample is None else self.downsample(x)  # h(x)
        return self.post(self.merge_paths(s, self.branch(x), x))

    def shortcut_path(self, x: torch.Tensor) -> torch.Tensor:
        """The unit with F deleted (F = 0): what is left is the shortcut path and the post-activation."""
        x = self.shortcut_input(x)
        s = x if self.downsample is None else self.downsample(x)
        return self.post(self.merge_paths(s, torch.zeros_like(s), x))

    def extra_repr(self) -> str:
        return f"placement={self.placement!r}, position={self.position!r}"


def _merge(v: Variant, c_in: int, c_out: int, stride: int, conv: bool) -> nn.Module:
    if v.gate_bias is not None:
        return Gate(c_in, c_out, stride, v.gate_bias, v.exclusive, conv)
    if v.dropout:
        return DropShortcut(v.dropout)
    return ConstantScale(v.shortcut_scale, v.branch_scale)


def base_overrides(variant: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The `create_model` overrides of the base net of `variant`: `overrides` checked (branch_scale
    and zero_init_residual are refused, they change what F is at init) plus the variant's shortcut."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    v = VARIANTS[variant]
    for key in ("branch_scale", "zero_init_residual"):
        if overrides.get(key) not in (None, False, "none"):
            raise ValueError(f"variants take no {key} (it changes the unit at init); drop it")
    if not v.base_shortcut:
        return dict(overrides)
    if overrides.get("shortcut", v.base_shortcut) != v.base_shortcut:
        raise ValueError(f"{variant} sets shortcut={v.base_shortcut!r}; drop shortcut=")
    return dict(overrides, shortcut=v.base_shortcut)


def apply(model: nn.Module, variant: str) -> nn.Module:
    """`model`, a post-activation residual net built with `base_overrides(variant, ...)`, with every
    unit made the `variant`, in place (the units keep their layers); returns `model`."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    named = [(n, m) for n, m in model.named_modules() if isinstance(m, ResidualBlock)]
    if not any(block.shortcut != "none" for _, block in named):
        base = getattr(model, "model_name", type(model).__name__)
        raise ValueError(f"variants need a residual base net (resnet-N, resmlp-N); got {base!r}")
    for i, (name, block) in enumerate(named):
        # the first unit follows the stem; a stage's first unit is the first child of its stage
        position = "after-stem" if i == 0 else "stage-start" if name.endswith(".0") else "inner"
        unit = Unit(block, VARIANTS[variant], last=i == len(named) - 1, position=position)
        model.set_submodule(name, unit)
    return model
