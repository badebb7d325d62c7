"""The identity study's three parts (package docstring), each a function of the study config that
returns its results: `structure` (check 1), `fit` (check 2, the measurement), `append` (check 3)."""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from reslab.data import Loader, load_dataset
from reslab.models import append_blocks, create_model, load_weights, to_plain
from reslab.models.registry import Model
from reslab.models.scaled import ScaledBlock
from reslab.studies.base import model_name
from reslab.studies.identity import FAMILY_SHAPE, METHODS, RESULTS, VARIANTS
from reslab.training import runs
from reslab.training.build import build_run
from reslab.training.config import TrainConfig


@torch.no_grad()
def zero_branches(model: Model, method: str) -> Model:
    """Zero the residual branch of every block of `model` in place and return the model: "norm"
    zeroes the last norm's gamma and beta, "weights" the last weight layer (in a net without norms),
    "rezero"/"skipinit" the branch scale alpha (Bachlechner et al. 2020; De & Smith 2020)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    for block in model.residual_blocks():
        norm = block.branch_norms()[-1]
        if method == "norm":
            params = [getattr(norm, "weight", None), getattr(norm, "bias", None)]
            if None in params:
                raise ValueError("method 'norm' needs affine norms in the branch; use 'weights'")
        elif method == "weights":
            if not isinstance(norm, nn.Identity):
                raise ValueError("method 'weights' is exact only in nets built with norm='none'")
            layer = block.branch_layers()[-1]
            params = [layer.weight, layer.bias]
        elif isinstance(block, ScaledBlock):  # ReZero, SkipInit and Fixup blocks
            params = [block.scale.alpha]
        else:
            raise ValueError(f"method {method!r} needs a net built with branch_scale={method!r}")
        for p in params:
            if p is not None:
                p.zero_()
    return model


def _block_io(model: Model, x: torch.Tensor) -> tuple[list, torch.Tensor]:
    """[(block, input, output)] for every block, and the logits, of one forward pass."""
    seen = []
    hooks = [
        b.register_forward_hook(lambda m, args, out: seen.append((m, args[0], out)))
        for b in model.residual_blocks()
    ]
    logits = model(x)
    for h in hooks:
        h.remove()
    return seen, logits


def _is_identity(block: nn.Module) -> bool:
    """Whether the block's shortcut carries its input itself: no shortcut module, and not a
    pre-activation unit whose shortcut sees relu(bn1(x)) (`both_preact`, a stage's first unit)."""
    return block.downsample is None and not block.both_preact


@torch.no_grad()
def structural_check(model: Model, x: torch.Tensor) -> dict:
    """Run `x` through `model` (branches zeroed) and its plain twin, in eval and train mode, and count
    exact (torch.equal) equalities: a block whose shortcut is the identity must output its input, any
    other block without a projection (option A, `both_preact`) its own `shortcut_path`, the plain
    twin zero after every block, so the same logits for every input."""
    modes = {}
    for mode in ("eval", "train"):
        seen, _ = _block_io(copy.deepcopy(model).train(mode == "train"), x)
        plain, logits = _block_io(to_plain(model).train(mode == "train"), x)
        ident = [(a, o) for b, a, o in seen if _is_identity(b)]
        shaped = [(b, a, o) for b, a, o in seen if not _is_identity(b) and not b.projects]
        modes[mode] = {
            "blocks": len(seen),
            "identity_blocks": len(ident),
            "identity_exact": sum(torch.equal(o, a) for a, o in ident),
            "max_abs_diff": max((float((o - a).abs().max()) for a, o in ident), default=0.0),
            "shape_blocks": len(shaped),
            "shape_exact": sum(torch.equal(o, b.shortcut_path(a)) for b, a, o in shaped),
            "projection_blocks": sum(b.projects for b, _, _ in seen),
            "plain_zero_blocks": sum(not o.any().item() for *_, o in plain),
            "plain_constant_output": torch.equal(logits, logits[:1].expand_as(logits)),
            "residual_norms": [float(o.flatten(1).norm(dim=1).mean()) for *_, o in seen],
            "plain_norms": [float(o.flatten(1).norm(dim=1).mean()) for *_, o in plain],
        }
    out: dict = {"modes": modes}
    first = next(((b, a) for b, a, _ in seen if _is_identity(b)), None)
    if first is not None:  # a signed input: the block gives g(a), which is a only where a >= 0
        block, a = first[0].eval(), torch.randn_like(first[1])
        o, relu = block(a), block.relu_after_add
        out["signed_input"] = {
            "g": "relu" if relu else "identity",
            "equals_input": torch.equal(o, a),
            "equals_g_of_input": torch.equal(o, a.relu() if relu else a),
        }
    return out


def build(cfg, arch: str, depth: int, num_classes: int, chw: Sequence[int], **kw) -> Model:
    """A plain or residual net of the study's family (its overrides, then `kw`) for (C, H, W)."""
    name, (c, h, w) = model_name(cfg.family, arch, depth), chw
    return create_model(name, num_classes, c, (h, w), **cfg.model_kwargs(), **kw)


def structure(cfg, x: torch.Tensor, num_classes: int) -> dict:
    """Check 1 for every method, on freshly built nets of depth `check_depth`."""
    results = {}
    for method in cfg.methods:
        torch.manual_seed(cfg.seed)
        kw = METHODS[method]
        model = build(cfg, "residual", cfg.check_depth, num_classes, x.shape[1:], **kw)
        results[method] = {"overrides": kw} | structural_check(zero_branches(model, method), x)
    return {"depth": cfg.check_depth, "model": model.model_name, "methods": results}


def identity_stack(arch: str, depth: int, cfg) -> nn.Sequential:
    """The blocks of a `depth`-layer plain or residual MLP (stem and classifier left out), built from
    seed `cfg.seed`: plain and residual twins share parameter names, so they start from the same
    weights (He normal, BN weight 1 and bias 0)."""
    torch.manual_seed(cfg.seed)
    name = model_name("mlp", arch, depth + 2)
    return nn.Sequential(*create_model(name, 1, 1, 1, width=cfg.fit_width).residual_blocks())


def same_init(depth: int, cfg) -> bool:
    a, b = (identity_stack(arch, depth, cfg).state_dict() for arch in ("plain", "residual"))
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def fit_identity(
    arch: str, depth: int, cfg, x: torch.Tensor, x_test: torch.Tensor, weight_decay: float = 0.0
) -> dict:
    """Train a stack of `depth` weight layers to output its input with Adam (AdamW with
    `weight_decay`) and a cosine schedule. Loss = mean squared error / mean square of the data; the
    final one on `x_test`, with batch statistics over the whole held-out set (as in training)."""
    stack = identity_stack(arch, depth, cfg).to(x.device).train()  # (B, width) -> (B, width)
    opt = torch.optim.AdamW(stack.parameters(), lr=cfg.fit_lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.fit_steps)
    gen = torch.Generator().manual_seed(cfg.seed)
    scale, losses = x.pow(2).mean(), []
    for _ in range(cfg.fit_steps):
        xb = x[torch.randint(0, len(x), (cfg.fit_batch,), generator=gen).to(x.device)]
        loss = F.mse_loss(stack(xb), xb) / scale
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    with torch.no_grad():
        final = (F.mse_loss(stack(x_test), x_test) / x_test.pow(2).mean()).item()
    every, last = max(1, cfg.fit_steps // 50), losses[-max(1, cfg.fit_steps // 20) :]
    return {
        "arch": arch,
        "arm": arch if not weight_decay else f"{arch}, weight decay {weight_decay:g}",
        "weight_decay": weight_decay,
        "depth": depth,
        "blocks": len(stack),
        "final_loss": final,
        "train_loss": sum(last) / len(last),
        "curve": [
            [s + 1, v] for s, v in enumerate(losses) if s % every == 0 or s == len(losses) - 1
        ],
    }


def fit(cfg, device: torch.device) -> dict:
    """The measurement, for every depth: plain and residual stacks from the same initial weights, on
    the same random data and batches, without weight decay, and with `fit_weight_decay` if > 0."""
    gen = torch.Generator().manual_seed(cfg.seed)
    x, x_test = torch.randn(2, cfg.fit_samples, cfg.fit_width, generator=gen).abs().to(device)
    results = [
        fit_identity(arch, depth, cfg, x, x_test, wd)
        for wd in dict.fromkeys((0.0, cfg.fit_weight_decay))  # 0 once when there is no decay
        for depth in cfg.fit_depths
        for arch in ("plain", "residual")
    ]
    keys = ("fit_width", "fit_samples", "fit_steps", "fit_batch", "fit_lr", "fit_weight_decay")
    return {k: getattr(cfg, k) for k in keys} | {
        "same_init": {str(d): same_init(d, cfg) for d in cfg.fit_depths},
        "results": results,
    }


def fresh_blocks(cfg, arch: str, k: int, like: Model, **kw) -> list:
    """k new blocks shaped like the last stage of `like`: the last k blocks of a new net of the
    family with k + 1 blocks per stage (so none of them changes shape)."""
    depth, spec = 2 * FAMILY_SHAPE[cfg.family][0] * (k + 1) + 2, like.default_cfg
    net = build(cfg, arch, depth, spec["num_classes"], spec["input_size"], **kw)
    return net.residual_blocks()[-k:]


@torch.no_grad()
def append(cfg, base_cfg: TrainConfig, trained: dict, device: torch.device) -> dict:
    """Check 3: append k blocks of each variant to the trained net of `base_cfg` (its summary
    `trained`) and evaluate on the test set before any further training."""
    base, train_data, test_data, _ = build_run(base_cfg)
    load_weights(base, Path(base_cfg.out) / base_cfg.run_name / runs.WEIGHTS)
    base = base.to(device).eval()
    mean, std = train_data.mean, train_data.std
    test = Loader(test_data, 500, train=False, augment=False, device=device, mean=mean, std=std)
    y = test_data.labels.to(device)  # an eval Loader keeps the dataset's order
    ref = torch.cat([base(x) for x, _ in test.epoch(0)])
    results = []
    for variant, (arch, kw) in VARIANTS.items():
        for k in cfg.append:
            torch.manual_seed(cfg.seed + k)
            model = append_blocks(base, fresh_blocks(cfg, arch, k, base, **kw)).to(device).eval()
            logits = torch.cat([model(x) for x, _ in test.epoch(0)])
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
        "base_run": (Path(runs.RUNS) / base_cfg.run_name).as_posix(),
        "base_iters": trained.get("steps"),
        "base_blocks": len(base.residual_blocks()),
        "base_test_error": (ref.argmax(1) != y).float().mean().item(),
        "base_train_error": trained.get("final_train_error"),
        "test_images": len(y),
        "chance_error": 1 - 1 / len(train_data.classes),
        "results": results,
    }


def after_training(cfg, folder: Path, configs: list[TrainConfig], trained: list, jobs: int) -> None:
    """The three parts, into `<folder>/results/<part>.json`; check 3 only where the training of its
    net completed (the report names a diverged one)."""
    t0 = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    threads = cfg.train.get("num_threads") or (1 if device.type == "cpu" else 0)
    if threads:  # the stacks of check 2 are small: one thread beats two contending for the cores
        torch.set_num_threads(threads)
    data = load_dataset(cfg.data, "train", root=cfg.data_dir)
    x, _ = next(iter(Loader(data, 64, train=False, augment=False, device=device).epoch(0)))
    (folder / RESULTS).mkdir(exist_ok=True)
    runs.write_json(folder / RESULTS / "structure.json", structure(cfg, x, len(data.classes)))
    _say(f"1 structure (construction): {len(cfg.methods)} ways of zeroing the branches", t0)
    runs.write_json(folder / RESULTS / "fit.json", fit(cfg, device))
    _say(f"2 measurement, learning the identity: depths {list(cfg.fit_depths)}", t0)
    if trained[0]["status"] == "completed":
        append_results = append(cfg, configs[0], trained[0], device)
        runs.write_json(folder / RESULTS / "append.json", append_results)
        _say(f"3 append blocks (construction): k = {list(cfg.append)}", t0)


def _say(what: str, t0: float) -> None:
    print(f"  {what}  [{time.perf_counter() - t0:4.0f} s]", flush=True)
