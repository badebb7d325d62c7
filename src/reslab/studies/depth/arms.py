"""The depth study's arms by name, shared by the study, its report and its figures: the order they
are shown in, which are methods and which controls, what each is in words, and the "+clip" suffix
of an arm trained with gradient clipping. What each arm builds is the study's (`ARM_MODELS` in
`reslab.studies.depth`); why each is there is in its docstring."""

from __future__ import annotations

ARMS = ("plain", "residual", "zeroinit", "nonorm", "rezero", "skipinit", "fixup")  # display order
METHODS = ("rezero", "skipinit", "fixup")  # the norm-free methods the verdict judges
CONTROLS = ("nonorm", "plain")  # what must fail where the methods learn
CLIP = "+clip"
LABELS = {
    "plain": "plain, batch norm, He init",
    "residual": "residual, batch norm, He init (plain's twin)",
    "zeroinit": "residual, batch norm, zero-init branches (extra arm)",
    "nonorm": "residual, no norm, He init (negative control)",
    "rezero": "ReZero, no norm (x + alpha F(x), alpha = 0)",
    "skipinit": "SkipInit, no norm (the same network as ReZero here)",
    "fixup": "Fixup, no norm (scalar biases, rescaled init)",
}


def split_arm(arm: str) -> tuple[str, bool]:
    """(the arm without "+clip", whether it is clipped): split_arm("rezero+clip") == ("rezero", True)."""
    base = arm.removesuffix(CLIP)
    return base, base != arm


def is_arm(arm: str) -> bool:
    """Whether `arm` names an arm: one of ARMS, with or without "+clip"."""
    return split_arm(arm)[0] in ARMS


def arm_order(arm: str) -> tuple[int, bool]:
    """Sort key: the order of ARMS, each arm's +clip twin right after it."""
    base, clipped = split_arm(arm)
    return ARMS.index(base), clipped


def label(arm: str, grad_clip: float | None = None, lr_scales: dict | None = None) -> str:
    """What the arm is, in words; a clipped arm names its clip, an arm with learning-rate multipliers
    for some parameters (the engine's `lr_scales`) names them."""
    base, clipped = split_arm(arm)
    text = LABELS[base]
    if lr_scales:
        scales = ", ".join(f'"{k}" {v:g} x lr' for k, v in lr_scales.items())
        text += f"; parameters whose name holds {scales}"
    clip = f" + gradient norm clipped at {grad_clip:g}" if grad_clip else " + clipping"
    return text + (clip if clipped or grad_clip else "")
