"""Training configuration: one frozen dataclass, its validation, and `resolve` (defaults < a preset
of `reslab.training.presets` < options).

The paper preset is the CIFAR-10 recipe of He et al. 2015, §4.2: SGD with momentum 0.9, weight
decay 1e-4, batch 128, lr 0.1 divided by 10 at 32k and 48k iterations (counted from the first step,
warm-up included), stop at 64k, lr 0.01 for networks of 110 layers and more until the training error
is below 80%, the per-pixel mean subtracted, and fp32 (2015's GPUs had no bf16). The paper split each
batch of 128 over two GPUs, so its batch norm saw 64 images: one process here normalises over all 128,
`torchrun --nproc_per_node 2 -m reslab train --preset paper` over 64 as the paper. CLI options are
derived from the fields below.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from typing import Any

from reslab.limits import check_int
from reslab.options import _base_type
from reslab.training import trackers
from reslab.training.presets import PRESETS
from reslab.training.runs import check_name

SCHEDULES = ("constant", "step", "cosine", "onecycle")
AMP_MODES = ("auto", "bf16", "off")
SWITCHES = ("auto", "on", "off")
NORMALIZATIONS = ("channel", "pixel-mean")


# Whole-number options and their sane ranges: a typo such as 10**12 iterations between log lines is
# refused before anything is allocated or run. Counts of steps up to a billion; of images up to 2**31.
_STEPS, _IMAGES = 10**9, 2**31
INT_RANGES = {
    "val_size": (0, _IMAGES),
    "train_subset": (0, _IMAGES),
    "iters": (0, _STEPS),
    "batch_size": (1, 2**20),
    "warmup_iters": (0, _STEPS),
    "grad_checkpoint": (0, 100_000),
    "seed": (0, 2**63 - 1),  # what torch.manual_seed and numpy take
    "num_threads": (0, 4096),
    "log_every": (1, _STEPS),
    "eval_every": (0, _STEPS),
    "checkpoint_every": (0, _STEPS),
    "eval_batch_size": (0, 2**20),
    "eval_limit": (0, _IMAGES),
    "eval_subset": (0, _IMAGES),
}
MAX_EPOCHS = 1e6


def _f(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with its CLI help text."""
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run. Two runs with equal configs compute the same thing."""

    model: str = _f(
        "resnet20", "model name (see `reslab models`), e.g. resnet20, plain56, resmlp-16"
    )
    model_kwargs: dict = _f(
        {}, "model overrides as KEY=VALUE (e.g. zero_init_residual=True)", cli="model_arg"
    )
    data: str = _f(
        "digits",
        "dataset: digits (built in), mnist, fashion-mnist, cifar10, cifar100, or a folder path",
    )
    data_dir: str | None = _f(None, "data root (default: ~/.cache/reslab or $RESLAB_DATA)")
    val_size: int = _f(0, "hold out this many training images as a validation set (paper: 5000)")
    train_subset: int = _f(
        0, "train on the first N images of a seeded shuffle of the training set (0: all)"
    )
    iters: int = _f(0, "training iterations (optimizer steps); 0: use --epochs")
    epochs: float = _f(1.0, "training epochs, used when --iters is 0")
    batch_size: int = _f(128, "global batch size (split across processes under torchrun)")
    lr: float = _f(0.1, "peak learning rate")
    momentum: float = _f(0.9, "SGD momentum")
    nesterov: bool = _f(False, "Nesterov momentum")
    weight_decay: float = _f(1e-4, "L2 weight decay")
    schedule: str = _f("step", f"learning-rate schedule: {', '.join(SCHEDULES)}")
    milestones: tuple[float, ...] = _f(
        (0.5, 0.75),
        "step schedule: fractions of the run, counted from its first step (warm-up included), "
        "at which lr drops",
    )
    gamma: float = _f(0.1, "step schedule: lr factor at each milestone")
    warmup_iters: int = _f(0, "iterations at --warmup-lr before the schedule starts")
    warmup_lr: float = _f(0.01, "learning rate during warm-up")
    warmup_until_error: float = _f(
        0.0,
        "end the warm-up at the first training line whose training error is below this; "
        "--warmup-iters stays the cap (0: the whole --warmup-iters; the paper preset: 0.8 for "
        "110+ layers, He et al. 2015 §4.2)",
    )
    lr_scales: dict = _f(
        {},
        "learning-rate multipliers for the parameters whose name contains KEY, KEY=VALUE (the first "
        "key that matches wins; weight decay follows the group's rate). hongyi-zhang/Fixup trains "
        "its scalars and biases at lr/10: bias=0.1 scale=0.1",
        cli="lr_scale",
    )
    label_smoothing: float = _f(0.0, "label smoothing of the cross-entropy loss")
    grad_clip: float = _f(0.0, "clip the global gradient norm to this value (0: off)")
    augment: str = _f("auto", "pad-4 random crop + flip: auto (on for CIFAR-like data), on, off")
    normalize: str = _f(
        "channel",
        "input normalisation, from the training split: channel (subtract the per-channel mean and "
        "divide by the per-channel std; the published values for the standard sets), pixel-mean "
        "(subtract the training images' mean image, no division: He et al. 2015 §4.2)",
    )
    amp: str = _f(
        "auto",
        "mixed precision: auto (bf16 for conv nets where the hardware computes bf16, else fp32; "
        "`reslab info` shows the choice), bf16, off",
    )
    channels_last: str = _f(
        "auto", "channels_last memory format for conv nets: auto (on for CPU and CUDA), on, off"
    )
    compile: bool = _f(False, "torch.compile the model")
    grad_checkpoint: int = _f(
        0,
        "recompute activations in the backward pass to bound memory: 0 off, 1 (or the bare flag) "
        "in about sqrt(blocks) segments, N in N segments; costs about one more forward pass",
        const=1,
    )
    seed: int = _f(0, "random seed (initialisation, data order, augmentation)")
    deterministic: bool = _f(
        False, "bit-reproducible on the same machine (deterministic algorithms)"
    )
    device: str = _f("auto", "cpu, cuda, cuda:N, or auto")
    num_threads: int = _f(0, "CPU threads for PyTorch (0: PyTorch's default)")
    log_every: int = _f(50, "iterations between training-metric lines")
    eval_every: int = _f(
        0,
        "iterations between curve points, the evaluations during training (0: about 20 per run, "
        "but no more often than keeps their cost within a twentieth of the training compute)",
    )
    checkpoint_every: int = _f(0, "iterations between checkpoints (0: at every evaluation)")
    eval_batch_size: int = _f(
        0,
        "evaluation batch size (0: the training batch for conv nets; 1024 for fully connected "
        "nets, whose many small layers cost per call, not per image)",
    )
    eval_train: bool = _f(
        False,
        "also evaluate the whole training set (eval mode) at every curve point, not a subset: the "
        "curve of the training error the final one is measured as (the degradation study's "
        "convergence check)",
    )
    eval_limit: int = _f(
        0,
        "evaluate on the first N images of each split (0: all), the final evaluation too: a "
        "cheaper estimate for huge nets",
    )
    eval_subset: int = _f(
        1000,
        "curve points score this many test (and validation) images, the same ones at every point "
        "and in every run (drawn by a permutation seeded 0); 0: whole splits, as the papers' "
        "curves. The final evaluation scores whole splits. 1,000 of CIFAR's 10,000 put the "
        "standard error of a curve point's error at 0.015 or less (0.009 at an error of 0.1)",
    )
    out: str = _f("runs", "root folder of run folders")
    name: str = _f("", "run folder name (default MODEL-DATA-sSEED)")
    resume: bool = _f(False, "continue the run in runs/NAME from its last checkpoint")
    progress: bool = _f(True, "show a progress bar (on a terminal)")
    log_lines: bool = _f(
        True,
        "when no progress bar shows (--no-progress, or output that is not a terminal), print one "
        "line per evaluation: step, lr, loss, training and test error, images/s",
    )
    log_to: str = _f(
        "",
        "also log the config, metrics, summary and weights to an experiment tracker: mlflow, wandb, "
        "or both as mlflow,wandb (pip install 'reslab[mlflow]' / 'reslab[wandb]'); where is set by "
        "their own variables (MLFLOW_TRACKING_URI, WANDB_MODE, WANDB_PROJECT, ...)",
    )

    def __post_init__(self) -> None:
        _check_types(self)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("amp", self.amp, AMP_MODES)
        _choice("augment", self.augment, SWITCHES)
        _choice("normalize", self.normalize, NORMALIZATIONS)
        _choice("channels_last", self.channels_last, SWITCHES)
        for name, (low, high) in INT_RANGES.items():
            check_int(getattr(self, name), name, low, high)
        if not 0 <= self.warmup_until_error <= 1:
            raise ValueError(
                f"warmup_until_error must be a fraction in [0, 1], got {self.warmup_until_error}"
            )
        for name in ("lr", "weight_decay", "warmup_lr", "grad_clip", "epochs"):
            if not 0 <= getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be a finite number >= 0, got {getattr(self, name)}")
        if self.epochs > MAX_EPOCHS:
            raise ValueError(f"epochs must be at most {MAX_EPOCHS:,.0f}, got {self.epochs}")
        if not 0 < self.gamma < math.inf:
            raise ValueError(f"gamma must be a finite number > 0, got {self.gamma}")
        if self.iters == 0 and self.epochs == 0:
            raise ValueError("give a run length: --iters N or --epochs E (> 0)")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if any(not 0 < m < 1 for m in self.milestones) or list(self.milestones) != sorted(
            self.milestones
        ):
            raise ValueError(
                f"milestones must be increasing fractions in (0, 1), got {self.milestones}"
            )
        for key, value in self.lr_scales.items():
            ok = not isinstance(value, bool) and isinstance(value, (int, float))
            if not key or not ok or not 0 < value < math.inf:
                raise ValueError(
                    f"lr_scales takes NAME_PART=MULTIPLIER with a finite multiplier > 0, "
                    f"got {key}={value!r}"
                )
        if self.name:
            check_name(self.name)
        trackers.parse(self.log_to)
        check_model_args(self.model_kwargs)
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", self.device):
            raise ValueError(f"device must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")

    @property
    def run_name(self) -> str:
        return self.name or f"{self.model}-{_slug(self.data)}-s{self.seed}"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """The config of a dict such as config.json; a key an older run lacks takes its default
        (a run written before `normalize` existed was normalised per channel, the default)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; allowed: {sorted(known)}")
        d = dict(d)
        if isinstance(d.get("milestones"), list):
            d["milestones"] = tuple(d["milestones"])
        return cls(**d)


_KINDS = {  # a field's type -> (the values it takes, how a message names them)
    int: ((int,), "an integer"),
    float: ((int, float), "a number"),
    str: ((str,), "a string"),
    bool: ((bool,), "true or false"),
    dict: ((dict,), "a JSON object of KEY: VALUE"),
    tuple: ((tuple, list), "a list of numbers"),
}


def _check_types(cfg: TrainConfig) -> None:
    """Each field holds a value of its type (a config.json edited by hand, or from a --config file,
    may hold "six" for a number): a one-line ValueError naming the field, before any range check."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if value is None and type(None) in typing.get_args(hints[f.name]):
            continue
        kinds, what = _KINDS[_base_type(hints[f.name])]
        ok = isinstance(value, kinds) and (kinds == (bool,) or not isinstance(value, bool))
        if ok and kinds == (tuple, list):
            ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        if not ok:
            raise ValueError(f"{f.name} must be {what}, got {value!r}")


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")


def _slug(text: str) -> str:
    return re.sub(r"[^\w.-]+", "_", text.rstrip("/").split("/")[-1]) or "data"


def resolve(preset: str | None = None, **options: Any) -> TrainConfig:
    """Build a TrainConfig from defaults < preset < options (the CLI passes only options it was given)."""
    values: dict[str, Any] = {}
    if preset:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
        values.update(PRESETS[preset])
    values.update(options)
    if "epochs" in options and "iters" not in options:
        values["iters"] = 0  # an explicit --epochs beats a preset's iteration count
    if preset == "paper" and _depth(values.get("model", "")) >= 110:
        # "we use 0.01 to warm up the training until the training error is below 80% (about 400
        # iterations), and then go back to 0.1": the condition, checked at every training line,
        # with a cap five times the iterations it took the paper, for a net that never gets there
        warmup = dict(warmup_iters=2000, warmup_lr=0.01, warmup_until_error=0.8)
        values.update({k: v for k, v in warmup.items() if k not in options})  # options win
    return TrainConfig.from_dict(values)


def _depth(model: str) -> int:
    """Depth of a model name as the registry reads it ("resnet-110+gate-shortcut" -> 110); 0 if unknown."""
    from reslab.models.registry import resolve as resolve_name

    try:
        return resolve_name(model.split("+")[0])[1]
    except ValueError:
        return 0


def check_model_args(model_kwargs: dict) -> dict:
    """Model options a user may set for a run: not the sizes the dataset gives the model."""
    sized = sorted({"num_classes", "in_chans", "img_size"} & set(model_kwargs))
    if sized:
        raise ValueError(
            f"model option(s) {sized} come from the dataset (--data); they cannot be set "
            "with --model-arg"
        )
    return model_kwargs
