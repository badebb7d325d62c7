"""Training presets: partial configs that `reslab.training.resolve` applies before explicit options,
with one line of help each (`reslab train --preset`)."""

from __future__ import annotations

from typing import Any

# The paper's warm-up for very deep
# nets (110+ layers, He et al. 2015 §4.2) depends on the model, so it is resolved in `resolve`.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": dict(
        lr=0.1,
        momentum=0.9,
        weight_decay=1e-4,
        batch_size=128,
        iters=64000,
        schedule="step",
        milestones=(0.5, 0.75),  # 32k and 48k of 64k
        gamma=0.1,
        augment="on",
        normalize="pixel-mean",
        amp="off",  # fp32 even where bf16 is native: the paper's numbers are fp32 numbers
    ),
    "cpu": dict(
        lr=0.1,
        momentum=0.9,
        weight_decay=1e-4,
        batch_size=128,
        epochs=3.0,
        schedule="onecycle",
        augment="on",
    ),
    # ResNet-1202 / pre-activation ResNet-1001 on CIFAR-10 on a laptop CPU: a short one-cycle run with
    # activation checkpointing; 1,000 evaluation images keep the evaluations from dominating. The
    # residual branches start at zero (Goyal et al. 2017): at He init the 1202-layer net's logits start
    # so large that the loss climbs above 20 in the first steps, which a short run cannot recover from.
    "cpu-deep": dict(
        model_kwargs={"zero_init_residual": True},
        lr=0.1,
        momentum=0.9,
        weight_decay=1e-4,
        batch_size=64,
        iters=120,
        schedule="onecycle",
        augment="on",
        grad_checkpoint=1,
        eval_limit=1000,
        eval_every=60,
        log_every=5,
    ),
    # He et al. 2015 §4.2 scaled to the 8x8 digits (1,442 training images: 11 batches of 128 an
    # epoch): SGD, momentum 0.9, weight decay 1e-4, batch 128, lr 0.1 divided by 10 at 50% and 75% of
    # the run (the paper's 32k and 48k of 64k), 180 epochs (the paper's 64k iterations are ~182
    # epochs of its 45k training images). The warm-up at lr 0.01 covers the first 5% of the run for
    # every net: the paper warmed up only ResNet-110, "until the training error is below 80%"; one
    # fixed length for every arm and depth keeps the arms alike.
    "paper-digits": dict(
        lr=0.1,
        momentum=0.9,
        weight_decay=1e-4,
        batch_size=128,
        iters=1980,
        schedule="step",
        milestones=(0.5, 0.75),
        gamma=0.1,
        warmup_iters=99,
        warmup_lr=0.01,
        augment="off",
        eval_every=99,
        log_every=33,
    ),
    "digits": dict(
        lr=0.02,
        momentum=0.9,
        weight_decay=0.0,
        batch_size=128,
        epochs=60.0,
        schedule="constant",
        augment="off",
        log_every=10,
    ),
}


# One line per preset, for the help of `reslab train --preset`.
PRESET_HELP: dict[str, str] = {
    "paper": "He et al. 2015 §4.2 CIFAR recipe (64k iterations of batch 128, lr 0.1 / 10 at 32k "
    "and 48k, per-pixel mean, fp32); the paper split each batch of 128 over two GPUs, so batch "
    "norm saw 64 images: `torchrun --nproc_per_node 2 -m reslab train --preset paper` does too",
    "cpu": "3 one-cycle epochs for a CPU",
    "cpu-deep": "120 one-cycle iterations of a 1,000-layer net with activation checkpointing",
    "paper-digits": "He et al. 2015 §4.2 scaled to the built-in digits: 1,980 iterations (180 "
    "epochs) of batch 128, lr 0.1 after 99 at 0.01, / 10 at half and three quarters of the run, "
    "weight decay 1e-4",
    "digits": "60 epochs at constant lr on the built-in 8x8 digits",
}
