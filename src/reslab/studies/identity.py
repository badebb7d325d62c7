"""The identity study: "a block can learn the identity by setting its weights to zero".

He et al. 2015 (§3.1): "if identity mappings are optimal, the solvers may simply drive the weights of
the multiple nonlinear layers toward zero to approach identity mappings"; a residual block computes
a[l+2] = g(z[l+2] + a[l]), so with z[l+2] = 0 it gives g(a[l]) = a[l] for the non-negative a[l] that a
ReLU g leaves behind (and a[l] itself for pre-activation blocks, which have no g after the addition).
Three checks:

1. Structure. Zero every residual branch of a freshly built net and run real images through it:
   "norm" zeroes the last norm's gamma and beta, "weights" the last weight layer (in a net without
   norms), "rezero"/"skipinit" set the branch scale alpha to 0 (Bachlechner et al. 2020; De & Smith
   2020). Every block whose shortcut is the identity must output its input exactly (torch.equal, fp32,
   train and eval mode); a block that changes shape must output g(shortcut(input)). The plain twin
   with the same zeroed weights (`to_plain`) must output exactly zero after every block, so its logits
   are the same for every input.
2. Learning. Stacks of fully connected blocks (`resmlp-N` / `plainmlp-N` blocks, default init) are
   trained to fit the identity map on random non-negative data (|N(0, 1)|); the loss each reaches is
   reported relative to the data's mean square (1 = as bad as outputting zero), on held-out data.
3. Appending. A shallow residual net is trained on the data with the engine (an ordinary run folder);
   then k blocks are appended after its last block: zero-initialised residual blocks
   (zero_init_residual) leave every logit exactly as it was, so the accuracy is unchanged before any
   further training, while plain blocks with the default init (and, for comparison, residual blocks
   with the default init) change the predictions.

Results go to `results/{structure,fit,append}.json`; `reslab.report.identity` turns them into
summary.json (verdict from the numbers), figures and report.html.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from reslab.studies.common import claim_study_dir, study_cli, train_many
from reslab.studies.degradation import FAMILIES
from reslab.studies.gradients import train_recipe
from reslab.training.config import TrainConfig, resolve
from reslab.training.tracking import write_json

# family -> (stages of blocks, overrides every model of it gets); names as in the degradation study
FAMILY_SHAPE: dict[str, tuple[int, dict]] = {
    "mlp": (1, {}),
    "cifar": (3, {}),
    "preact": (3, {"block": "basic"}),
}
METHODS = {  # how a branch is zeroed -> the model overrides it needs
    "norm": {},
    "weights": {"norm": "none"},
    "rezero": {"branch_scale": "rezero"},
    "skipinit": {"branch_scale": "skipinit"},
}


@dataclass(frozen=True)
class IdentityConfig:
    """The three checks: structure (zeroed branches), learning the identity, appending blocks."""

    preset: str = field(default="digits", metadata={"help": "digits, cpu or paper"})
    data: str = field(default="digits", metadata={"help": "dataset (digits is built in)"})
    data_dir: str | None = field(default=None, metadata={"help": "data root"})
    family: str = field(
        default="mlp", metadata={"help": f"model family: {', '.join(FAMILY_SHAPE)}"}
    )
    seed: int = field(default=0, metadata={"help": "seed of weights, data and batches"})
    width: int = field(
        default=0, metadata={"help": "MLP width (0: the model's default; ignored by conv nets)"}
    )
    check_depth: int = field(default=16, metadata={"help": "depth of the nets zeroed in check 1"})
    methods: tuple[str, ...] = field(
        default=tuple(METHODS), metadata={"help": f"branch zeroing: {', '.join(METHODS)}"}
    )
    fit_depths: tuple[int, ...] = field(
        default=(4, 16, 64), metadata={"help": "check 2: weight layers per stack (even)"}
    )
    fit_width: int = field(default=64, metadata={"help": "check 2: width of the stacks"})
    fit_samples: int = field(default=1024, metadata={"help": "check 2: random training vectors"})
    fit_steps: int = field(default=1000, metadata={"help": "check 2: AdamW steps"})
    fit_batch: int = field(default=128, metadata={"help": "check 2: batch size"})
    fit_lr: float = field(default=0.01, metadata={"help": "check 2: peak learning rate (cosine)"})
    fit_weight_decay: float = field(default=0.1, metadata={"help": "check 2: AdamW weight decay"})
    base_depth: int = field(default=4, metadata={"help": "check 3: depth of the trained net"})
    base_iters: int = field(default=300, metadata={"help": "check 3: its training iterations"})
    append: tuple[int, ...] = field(
        default=(1, 4, 16), metadata={"help": "check 3: blocks appended (per stage for conv nets)"}
    )
    out: str = field(default="runs/identity", metadata={"help": "root of study folders"})
    name: str = field(default="", metadata={"help": "study folder name (default: the preset's)"})
    train: dict = field(default_factory=dict, metadata={"help": "TrainConfig overrides (check 3)"})

    OWNED = ("model", "model_kwargs", "data", "data_dir", "iters", "seed", "name", "out", "resume")

    def __post_init__(self) -> None:
        if self.family not in FAMILY_SHAPE:
            raise ValueError(
                f"family must be one of {', '.join(FAMILY_SHAPE)}, got {self.family!r}"
            )
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise ValueError(
                f"methods must be among {', '.join(METHODS)}, got {list(self.methods)}"
            )
        if not self.fit_depths or any(d < 2 or d % 2 for d in self.fit_depths):
            raise ValueError(f"fit_depths must be even and >= 2, got {list(self.fit_depths)}")
        if not self.append or any(k < 1 for k in self.append):
            raise ValueError(f"append must be block counts >= 1, got {list(self.append)}")
        for name in ("fit_width", "fit_samples", "fit_steps", "fit_batch", "base_iters"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.fit_batch > self.fit_samples:
            raise ValueError(f"fit_batch ({self.fit_batch}) must be <= fit_samples")
        with torch.device("meta"):  # fail before any work if a depth is invalid for the family
            for depth in (self.check_depth, self.base_depth):
                self.build("residual", depth, 10, 1, (8, 8))

    def build(self, arch: str, depth: int, num_classes: int, in_chans: int, img_size, **kw):
        """A net of the study's family (plain or residual) with the study's width and overrides."""
        from reslab.models import create_model

        plain, residual = FAMILIES[self.family]
        name = (residual if arch == "residual" else plain).format(depth)
        extra = FAMILY_SHAPE[self.family][1]
        kwargs = dict(extra, **self._width(), **kw)
        return create_model(name, num_classes, in_chans, img_size, **kwargs)

    def _width(self) -> dict:
        return {"width": self.width} if self.width and self.family == "mlp" else {}

    def base_config(self, study_dir: Path) -> TrainConfig:
        """The engine run of check 3: the shallow residual net, trained `base_iters` iterations."""
        residual, extra = FAMILIES[self.family][1], FAMILY_SHAPE[self.family][1]
        options = dict(
            self.train,
            model=residual.format(self.base_depth),
            model_kwargs=dict(extra, **self._width()),
            data=self.data,
            data_dir=self.data_dir,
            seed=self.seed,
            iters=self.base_iters,
            name=f"base-{self.base_depth}-s{self.seed}",
            out=str(study_dir / "runs"),
            resume=True,
        )
        options.setdefault("progress", False)
        return resolve(
            self.train.get("preset"), **{k: v for k, v in options.items() if k != "preset"}
        )


PRESETS: dict[str, dict[str, Any]] = {
    "digits": dict(
        data="digits",
        family="mlp",
        check_depth=16,
        base_depth=4,
        train=dict(
            lr=0.02,
            momentum=0.9,
            weight_decay=0.0,
            batch_size=128,
            schedule="constant",
            augment="off",
            log_every=20,
        ),
    ),
    "cpu": dict(  # CIFAR-10 on a 2-core CPU: a ResNet-20 trained 2 epochs (about 5-10 minutes)
        data="cifar10",
        family="cifar",
        check_depth=20,
        base_depth=20,
        base_iters=780,
        append=(1, 3, 9),
        train=dict(preset="cpu", log_every=20),
    ),
    "paper": dict(  # CIFAR-10, the paper's recipe for ResNet-20, for a GPU
        data="cifar10",
        family="cifar",
        check_depth=56,
        base_depth=20,
        base_iters=64000,
        append=(1, 3, 9, 18),
        fit_depths=(4, 16, 64, 128),
        fit_steps=5000,
        train=dict(preset="paper", log_every=100, eval_every=2000),
    ),
}


def make_config(preset: str = "digits", **options: Any) -> IdentityConfig:
    """defaults < preset < options; `train` overrides are merged, not replaced."""
    if preset not in PRESETS:
        raise ValueError(f"unknown identity preset {preset!r}; choose from {', '.join(PRESETS)}")
    values = dict(PRESETS[preset])
    values["train"] = dict(values.get("train", {}), **options.pop("train", {}))
    values.update(options)
    if not values.get("name"):
        values["name"] = preset if "data" not in options else f"{preset}-{options['data']}"
    return IdentityConfig(
        preset=preset, **{k: (tuple(v) if isinstance(v, list) else v) for k, v in values.items()}
    )


# ---------------------------------------------------------------------------------------------- check 1


@torch.no_grad()
def zero_branches(model: nn.Module, method: str) -> nn.Module:
    """Zero the residual branch of every block of `model` in place (see the module docstring for the
    methods) and return the model."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    for block in model.residual_blocks():
        if method == "norm":
            norm = block.branch_norms()[-1]
            if getattr(norm, "weight", None) is None:
                raise ValueError("method 'norm' needs affine norms in the branch; use 'weights'")
            norm.weight.zero_()
            norm.bias.zero_()
        elif method == "weights":
            if not isinstance(block.branch_norms()[-1], nn.Identity):
                raise ValueError("method 'weights' is exact only in nets built with norm='none'")
            layer = block.branch_layers()[-1]
            layer.weight.zero_()
            if layer.bias is not None:
                layer.bias.zero_()
        else:
            if not hasattr(block.scale, "alpha"):
                raise ValueError(
                    f"method {method!r} needs a net built with branch_scale={method!r}"
                )
            block.scale.alpha.zero_()
    return model


@torch.no_grad()
def _block_io(model: nn.Module, x: torch.Tensor) -> tuple[list, torch.Tensor]:
    """[(block, input, output)] for every block, and the logits, of one forward pass."""
    seen = []
    hooks = [
        b.register_forward_hook(lambda m, args, out: seen.append((m, args[0], out)))
        for b in model.residual_blocks()
    ]
    try:
        logits = model(x)
    finally:
        for h in hooks:
            h.remove()
    return seen, logits


def _g(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The activation after the addition: ReLU for post-activation blocks, none for pre-activation."""
    return x if getattr(block, "preact", False) else F.relu(x)


@torch.no_grad()
def structural_check(model: nn.Module, x: torch.Tensor) -> dict:
    """Run `x` through `model` (branches already zeroed) and its plain twin, in eval and train mode,
    and count exact equalities (see the module docstring)."""
    from reslab.models import to_plain

    out: dict[str, Any] = {"modes": {}}
    for mode in ("eval", "train"):
        res, plain = copy.deepcopy(model).train(mode == "train"), to_plain(model)
        plain.train(mode == "train")
        seen, _ = _block_io(res, x)
        seen_plain, logits_plain = _block_io(plain, x)
        ident = [(b, a, o) for b, a, o in seen if b.downsample is None]
        shaped = [(b, a, o) for b, a, o in seen if b.downsample is not None and not b.projects]
        out["modes"][mode] = {
            "blocks": len(seen),
            "identity_blocks": len(ident),
            "identity_exact": sum(torch.equal(o, a) for _, a, o in ident),
            "max_abs_diff": max((float((o - a).abs().max()) for _, a, o in ident), default=0.0),
            "shape_blocks": len(shaped),
            "shape_exact": sum(torch.equal(o, _g(b, b.downsample(a))) for b, a, o in shaped),
            "projection_blocks": sum(b.projects for b, _, _ in seen),
            "plain_zero_blocks": sum(not o.any().item() for _, _, o in seen_plain),
            "plain_constant_output": torch.equal(
                logits_plain, logits_plain[:1].expand_as(logits_plain)
            ),
            "residual_norms": [_mean_norm(o) for _, _, o in seen],
            "plain_norms": [_mean_norm(o) for _, _, o in seen_plain],
        }
    block = next((b for b, _, _ in seen if b.downsample is None), None)
    if block is not None:  # a signed input: the block gives g(a), which is a only where a >= 0
        a = torch.randn_like(next(a for b, a, _ in seen if b is block))
        o = block.eval()(a)
        out["signed_input"] = {
            "g": "identity" if getattr(block, "preact", False) else "relu",
            "equals_input": torch.equal(o, a),
            "equals_g_of_input": torch.equal(o, _g(block, a)),
        }
    return out


def _mean_norm(t: torch.Tensor) -> float:
    return float(t.flatten(1).norm(dim=1).mean())


def run_structure(cfg: IdentityConfig, x: torch.Tensor, num_classes: int) -> dict:
    """Check 1 for every method, on freshly built nets of depth `check_depth`."""
    results = {}
    for method in cfg.methods:
        torch.manual_seed(cfg.seed)
        _, c, h, w = x.shape
        model = cfg.build("residual", cfg.check_depth, num_classes, c, (h, w), **METHODS[method])
        zero_branches(model, method)
        results[method] = {"overrides": METHODS[method]} | structural_check(model, x)
    return {"depth": cfg.check_depth, "model": model.model_name, "methods": results}


# ---------------------------------------------------------------------------------------------- check 2


def fit_identity(
    arch: str, depth: int, cfg: IdentityConfig, x: torch.Tensor, x_test: torch.Tensor
) -> dict:
    """Train a stack of `depth` weight layers (depth / 2 fully connected blocks) to output its input.

    Loss = mean squared error / mean square of the data; the final one on `x_test`, with batch
    statistics over the whole held-out set (the mode the stack is trained in)."""
    from reslab.models import create_model

    torch.manual_seed(cfg.seed)
    name = ("resmlp-{}" if arch == "residual" else "plainmlp-{}").format(depth + 2)
    blocks = create_model(name, 1, 1, 1, width=cfg.fit_width).residual_blocks()
    stack = nn.Sequential(*blocks).to(x.device).train()  # (B, width) -> (B, width)
    opt = torch.optim.AdamW(stack.parameters(), lr=cfg.fit_lr, weight_decay=cfg.fit_weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.fit_steps)
    gen = torch.Generator().manual_seed(cfg.seed)
    scale = x.pow(2).mean()
    every = max(1, cfg.fit_steps // 50)
    curve, recent = [], []
    for step in range(cfg.fit_steps):
        xb = x[torch.randint(0, len(x), (cfg.fit_batch,), generator=gen).to(x.device)]
        loss = F.mse_loss(stack(xb), xb) / scale
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        recent = (recent + [loss.item()])[-max(1, cfg.fit_steps // 20) :]
        if step % every == 0 or step == cfg.fit_steps - 1:
            curve.append([step + 1, loss.item()])
    with torch.no_grad():
        final = (F.mse_loss(stack(x_test), x_test) / x_test.pow(2).mean()).item()
    return {
        "arch": arch,
        "depth": depth,
        "blocks": len(blocks),
        "final_loss": final,
        "train_loss": sum(recent) / len(recent),
        "curve": curve,
    }


def run_fit(cfg: IdentityConfig, device: torch.device) -> dict:
    """Check 2 for every depth, plain and residual, on the same random data."""
    gen = torch.Generator().manual_seed(cfg.seed)
    x, x_test = torch.randn(2, cfg.fit_samples, cfg.fit_width, generator=gen).abs().to(device)
    results = [
        fit_identity(arch, depth, cfg, x, x_test)
        for depth in cfg.fit_depths
        for arch in ("plain", "residual")
    ]
    keys = ("fit_width", "fit_samples", "fit_steps", "fit_batch", "fit_lr", "fit_weight_decay")
    return {k: getattr(cfg, k) for k in keys} | {"results": results}


# ---------------------------------------------------------------------------------------------- check 3


def append_blocks(model: nn.Module, blocks: list[nn.Module]) -> nn.Module:
    """A copy of `model` with `blocks` run after its last block, in the same stage.

    The models package has no helper for this: the Sequential that holds the last block is replaced
    by one that holds it and then `blocks`, so `residual_blocks()` lists them too."""
    model = copy.deepcopy(model)
    last = model.residual_blocks()[-1]
    for name, module in model.named_modules():
        if isinstance(module, nn.Sequential) and any(c is last for c in module.children()):
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent), attr, nn.Sequential(*module, *blocks))
            return model
    raise ValueError(f"{type(model).__name__}: its last block is not held in an nn.Sequential")


def fresh_blocks(cfg: IdentityConfig, arch: str, k: int, like: nn.Module, **kw) -> list[nn.Module]:
    """k new blocks shaped like the last stage of `like`: the last k blocks of a new net of the
    family with k + 1 blocks per stage (so none of them changes shape)."""
    stages = FAMILY_SHAPE[cfg.family][0]
    c, h, w = like.default_cfg["input_size"]
    net = cfg.build(
        arch, 2 * stages * (k + 1) + 2, like.default_cfg["num_classes"], c, (h, w), **kw
    )
    return net.residual_blocks()[-k:]


@torch.no_grad()
def _logits(model: nn.Module, loader) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    xs = [(model(x), y) for x, y in loader.epoch(0)]
    return torch.cat([a for a, _ in xs]), torch.cat([b for _, b in xs])


VARIANTS = {  # appended blocks -> (arch, overrides)
    "residual, zero-init": ("residual", {"zero_init_residual": True}),
    "plain, default init": ("plain", {}),
    "residual, default init": ("residual", {}),
}


def run_append(cfg: IdentityConfig, study_dir: Path, device: torch.device) -> dict:
    """Check 3: train the shallow net with the engine, then append k blocks of each variant."""
    from reslab.data import Loader
    from reslab.models import load_weights
    from reslab.training.loop import build_model, load_data

    base_cfg = cfg.base_config(study_dir)
    summary = train_many([base_cfg], 1)[0]
    train_data, test_data, _ = load_data(base_cfg)
    base = build_model(base_cfg, train_data)
    load_weights(base, Path(base_cfg.out) / base_cfg.run_name / "model.safetensors")
    base = base.to(device)
    test = Loader(
        test_data, 500, train=False, augment=False, device=device,
        mean=train_data.mean, std=train_data.std,
    )  # fmt: skip
    ref, y = _logits(base, test)
    chance = 1 - 1 / len(train_data.classes)
    results = []
    for variant, (arch, kw) in VARIANTS.items():
        for k in cfg.append:
            torch.manual_seed(cfg.seed + k)
            model = append_blocks(base, fresh_blocks(cfg, arch, k, base, **kw)).to(device)
            logits, _ = _logits(model, test)
            results.append(
                {
                    "variant": variant,
                    "k": k,
                    "blocks": len(model.residual_blocks()),
                    "test_error": (logits.argmax(1) != y).float().mean().item(),
                    "changed_predictions": int((logits.argmax(1) != ref.argmax(1)).sum()),
                    "logits_equal": torch.equal(logits, ref),
                }
            )
    return {
        "base_model": base_cfg.model,
        "base_run": (Path("runs") / base_cfg.run_name).as_posix(),
        "base_iters": summary.get("steps"),
        "base_blocks": len(base.residual_blocks()),
        "base_test_error": (ref.argmax(1) != y).float().mean().item(),
        "base_train_error": summary.get("final_train_error"),
        "test_images": len(y),
        "chance_error": chance,
        "results": results,
    }


# ---------------------------------------------------------------------------------------------- study


def run(cfg: IdentityConfig) -> dict:
    """Run the three checks, write results/*.json, summary.json, figures and report.html."""
    from reslab.data import Loader, load_dataset
    from reslab.report.identity import build_report, format_table

    study_dir = Path(cfg.out) / cfg.name
    claim_study_dir(  # the trained net of check 3 is reused by a rerun: its recipe must match
        study_dir,
        {"study": "identity", **dataclasses.asdict(cfg), "recipe": train_recipe(cfg.train)},
        ("data", "family", "seed", "width", "base_depth", "base_iters", "recipe"),
    )
    (study_dir / "results").mkdir(exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    threads = cfg.train.get("num_threads") or (1 if device.type == "cpu" else 0)
    if threads:  # the stacks of check 2 are small: one thread beats two contending for the cores
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    print(f"identity: {cfg.family} nets on {cfg.data} -> {study_dir}", flush=True)

    data = load_dataset(cfg.data, "train", root=cfg.data_dir)
    x, _ = next(iter(Loader(data, 64, train=False, augment=False, device=device).epoch(0)))
    structure = run_structure(cfg, x, len(data.classes))
    write_json(study_dir / "results" / "structure.json", structure)
    print(f"  1 structure: {len(cfg.methods)} ways of zeroing the branches checked  "
          f"[{time.perf_counter() - t0:4.0f} s]", flush=True)  # fmt: skip
    write_json(study_dir / "results" / "fit.json", run_fit(cfg, device))
    print(f"  2 fit the identity: depths {list(cfg.fit_depths)}  "
          f"[{time.perf_counter() - t0:4.0f} s]", flush=True)  # fmt: skip
    write_json(study_dir / "results" / "append.json", run_append(cfg, study_dir, device))
    print(f"  3 append blocks: k = {list(cfg.append)}  [{time.perf_counter() - t0:4.0f} s]")

    report = build_report(study_dir)
    summary = json.loads((study_dir / "summary.json").read_text())
    print(format_table(summary))
    print(f"report: {report}  ({time.perf_counter() - t0:.0f} s)")
    return summary


HELP = "zeroed residual branches are exact identities; learning and appending them (He et al. 2015)"


add_arguments, main = study_cli(
    IdentityConfig,
    PRESETS,
    make_config,
    run,
    preset_help="cpu: CIFAR-10 on a 2-core CPU; paper: CIFAR-10 with the paper's recipe, for a GPU",
    engine_help="training engine options (for the shallow net of check 3)",
)
