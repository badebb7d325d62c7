"""The depth study's verdict, as a pure function of its rows (one per run, `report.collect_runs`):
which arms learn at the deepest depth, and why those that diverged did.

A run "learned" if it finished and final <= LEARNED * min(start, ln K) (LEARNED = 0.5: at most half
its starting loss and at most half the loss of a uniform guess over the data's K classes, so a net
that starts far above chance does not count as learning by falling to chance; K comes from the
replayed first step, and a folder without replays is judged on the starting loss alone); a diverged
run or a non-finite final loss has not. Per (arm, depth): "learned" if every seed learned, "failed"
if no seed did, so a diverged seed always counts against its arm.

Verdict, declared before any numbers, at the deepest depth D and the shallowest d, after the study's
step budget (the steps of its completed runs, which the verdict text states: "learned" means learned
within that many steps). Methods: rezero, skipinit, fixup, each with or without "+clip"; controls:
nonorm and plain, with or without "+clip".
    "insufficient"         no method arm at D, or nonorm or plain missing at D
    "not_shown"            no method arm learned at D, with or without clipping
    "not_attributable"     a method learned at D, but so did (any seed of) a control at D: depth D
                           does not need the method
    "shown"                every method at D learned without clipping, every control at D failed,
                           and nonorm and plain learned at d < D (their failure at D is depth's, not
                           the recipe's)
    "shown_with_clipping"  as "shown", except that some method learned at D only in its +clip arm
                           (or was run only with clipping); those methods are named
    "partly_shown"         otherwise: a method learned at D, but another failed with and without
                           clipping, or nonorm or plain did not learn at d (or there is no d < D)
Every diverged run at D is explained from its first step (`diverged_notes`): a non-finite first loss
is an overflow of the forward pass; a divergence at step 2 after a non-finite first gradient is the
overflow of that gradient (clipping cannot repair it: an inf norm scales the gradient to NaN).
"""

from __future__ import annotations

import math

from reslab.studies.depth.arms import CLIP, CONTROLS, METHODS, arm_order
from reslab.studies.stats import mean_std
from reslab.training.runs import Verdict

LEARNED = 0.5
RULE = (
    "learned: finished and final training loss <= {ratio:g} x the smaller of its starting loss and "
    "ln(classes), the loss of a uniform guess (every seed); shown: at the deepest depth every "
    "method (rezero, skipinit, fixup) learned without clipping while the negative control (nonorm) "
    "and the plain net failed (a diverged run fails), and both learned at the shallowest depth; "
    "shown with clipping: the same, but some method learned only with gradient clipping; not "
    "attributable: a control learned too"
)


def learned(run: dict, ratio: float = LEARNED) -> bool:
    """Finished with a final training loss at most `ratio` times its starting loss and, where the
    number of classes K is known, at most `ratio` times ln K (the loss of a uniform guess)."""
    start, final = run["start_loss"], run["final_train_loss"]
    if run["status"] != "completed" or None in (start, final):
        return False
    classes = run.get("classes")
    return final <= ratio * (min(start, math.log(classes)) if classes else start)


def _mean(values: list) -> float | None:
    return mean_std(values)[0]


def group_runs(runs: list[dict], ratio: float = LEARNED) -> list[dict]:
    """Per (arm, depth): seeds, diverged seeds, means over seeds, and whether every/no seed learned."""
    groups = []
    for arm in sorted({r["arm"] for r in runs}, key=arm_order):
        for depth in sorted({r["depth"] for r in runs if r["arm"] == arm}):
            rs = [r for r in runs if r["arm"] == arm and r["depth"] == depth]
            ok = [learned(r, ratio) for r in rs]
            overflow = [r["seed"] for r in rs if r.get("first_grad_nonfinite")]
            groups.append(
                {
                    "arm": arm,
                    "depth": depth,
                    "model": next((r["model"] for r in rs if r["model"]), None),
                    "params": next((r["params"] for r in rs if r["params"]), None),
                    "grad_clip": next((r["grad_clip"] for r in rs if r.get("grad_clip")), 0.0),
                    "lr_scales": rs[0].get("lr_scales") or {},
                    "seeds": [r["seed"] for r in rs],
                    "diverged": [r["seed"] for r in rs if r["status"] == "diverged"],
                    "diverged_at": [r["diverged_at"] for r in rs if r["status"] == "diverged"],
                    "start_loss": _mean([r["start_loss"] for r in rs]),
                    "final_train_loss": _mean([r["final_train_loss"] for r in rs]),
                    "end_batch_loss": _mean([r["end_batch_loss"] for r in rs]),
                    "final_train_error": _mean([r["final_train_error"] for r in rs]),
                    "final_test_error": _mean([r["final_test_error"] for r in rs]),
                    "first_grad_norm": _mean([r.get("first_grad_norm") for r in rs]),
                    "first_grad_overflow": overflow,
                    "time_s": _mean([r["time_s"] for r in rs]),
                    "learned": all(ok),
                    "failed": not any(ok),
                }
            )
    return groups


def _fmt_loss(x: float | None) -> str:
    return "—" if x is None else f"{x:.3g}"


def describe(g: dict) -> str:
    """'2.44 → 0.21', '2.3 → 0.5, seed(s) 1 diverged' or 'diverged at step 2'."""
    if g["diverged"] and len(g["diverged"]) == len(g["seeds"]):
        return f"diverged at step {', '.join(map(str, g['diverged_at']))}"
    text = f"{_fmt_loss(g['start_loss'])} → {_fmt_loss(g['final_train_loss'])}"
    if g["diverged"]:
        text += f", seed(s) {', '.join(map(str, g['diverged']))} diverged"
    return text


def budget(runs: list[dict]) -> int | None:
    """The study's step budget: the most steps a completed run took (None when none completed)."""
    return max((r["iters"] or 0 for r in runs if r["status"] == "completed"), default=None) or None


def verdict(runs: list[dict], ratio: float = LEARNED) -> Verdict:
    """Judge the study from the measured numbers only (rule in the module docstring). Numbers: the
    deepest and shallowest depth, the step budget, the seeds, the groups, why runs diverged, the
    checks the status rests on, the methods that needed clipping and those that failed with and
    without it ("unrescued")."""
    groups = group_runs(runs, ratio)
    at = {(g["arm"], g["depth"]): g for g in groups}
    depths = sorted({g["depth"] for g in groups})
    deep, shallow = (depths[-1], depths[0]) if depths else (None, None)
    steps = budget(runs)
    seeds = sorted({r["seed"] for r in runs})
    thresholds, rule = {"ratio": ratio}, RULE.format(ratio=ratio)
    out = {"deep": deep, "shallow": shallow, "steps": steps, "seeds": seeds}
    out |= {"groups": groups, "diverged_notes": diverged_notes(runs, deep)}
    methods = [m for m in METHODS if (m, deep) in at or (m + CLIP, deep) in at]
    controls = [c + s for c in CONTROLS for s in ("", CLIP) if (c + s, deep) in at]
    if not methods or any((c, deep) not in at for c in CONTROLS):
        text = (
            "Cannot judge: the verdict needs a method arm (rezero, skipinit or fixup), the negative "
            f"control (nonorm) and the plain net at the deepest depth ({deep or 'none'})."
        )
        return Verdict("insufficient", {**out, "checks": {}}, thresholds, rule, text)
    assert deep is not None and shallow is not None  # some arm ran at the deepest depth

    def ok(arm: str, depth: int) -> bool | None:
        return at[(arm, depth)]["learned"] if (arm, depth) in at else None

    checks = {
        "methods_learned": {m: ok(m, deep) for m in methods},
        "methods_learned_with_clipping": {m: ok(m + CLIP, deep) for m in methods},
        "controls_failed": {c: at[(c, deep)]["failed"] for c in controls},
        "controls_learned_shallow": {
            c: ok(c, shallow) if shallow != deep else None for c in CONTROLS
        },
    }
    needs_clip = [m for m in methods if not ok(m, deep) and ok(m + CLIP, deep)]
    unrescued = [m for m in methods if not ok(m, deep) and not ok(m + CLIP, deep)]
    if len(unrescued) == len(methods):
        status = "not_shown"
    elif not all(checks["controls_failed"].values()):
        status = "not_attributable"
    elif unrescued or not all(checks["controls_learned_shallow"].values()):
        status = "partly_shown"
    else:
        status = "shown_with_clipping" if needs_clip else "shown"
    text = _sentence(status, at, methods, deep, shallow, needs_clip, unrescued, ratio)
    text += f" {_budget_text(steps, seeds)}"
    numbers = {**out, "checks": checks, "needed_clipping": needs_clip, "unrescued": unrescued}
    return Verdict(status, numbers, thresholds, rule, text)


def _budget_text(steps: int | None, seeds: list[int]) -> str:
    """What every "learned" and "failed" of the verdict is relative to: the step budget and seeds."""
    n = len(seeds)
    return (
        f"Every run had a budget of {steps} training steps (a diverged run stops earlier), "
        f"{n} seed{'s' if n != 1 else ''} per arm and depth; an arm learned only if every seed did: "
        "a longer budget may let an arm that failed here learn."
    )


def _join(gs: list[dict]) -> str:
    return ", ".join(f"{g['arm']} {describe(g)}" for g in gs)


def _sentence(
    status: str,
    at: dict,
    methods: list[str],
    deep: int,
    shallow: int,
    needs_clip: list[str],
    unrescued: list[str],
    ratio: float,
) -> str:
    def present(arms) -> list[dict]:
        return [at[(a, deep)] for a in arms if (a, deep) in at]

    bare, clipped = present(methods), present(m + CLIP for m in methods)
    run = f"without clipping: {_join(bare)}" if bare else "no method arm without clipping"
    if clipped:
        run += f"; with gradient clipping (at {clipped[0]['grad_clip']:g}): {_join(clipped)}"
    controls = present(c + s for c in CONTROLS for s in ("", CLIP))
    ctrl = f"negative control and plain net: {_join(controls)}"
    if shallow != deep:
        low = [at[(c, shallow)] for c in CONTROLS if (c, shallow) in at]
        ctrl += f"; at {shallow} layers {_join(low)}" if low else ""
    bn = present(("residual", "zeroinit"))
    tail = f" Batch-norm residual nets (not judged): {_join(bn)}." if bn else ""
    head = (
        f"At {deep} layers (training loss start → final, mean over seeds) — methods {run}; {ctrl}."
    )
    if status == "shown":
        lead = (
            "Shown. Every norm-free method learned without clipping; the control and plain did not."
        )
    elif status == "shown_with_clipping":
        lead = (
            f"Shown with gradient clipping: {', '.join(needs_clip)} learned only with clipping; the "
            "control and plain failed."
        )
    elif status == "not_shown":
        lead = (
            f"Not shown. No method got down to {ratio:g} times its starting loss (or chance), "
            "with or without clipping."
        )
    elif status == "not_attributable":
        lead = "Not attributable to the method: a control learned at this depth as well."
    else:
        missing = [f"{', '.join(unrescued)} failed with and without clipping"] if unrescued else []
        bad = [c for c in CONTROLS if not (at.get((c, shallow)) or {}).get("learned")]
        if shallow == deep:
            missing.append("no shallower depth to show that the controls can learn")
        elif bad:
            missing.append(f"{', '.join(bad)} did not learn at {shallow} layers either")
        lead = f"Partly shown: {'; '.join(missing)}."
    return f"{lead} {head}{tail}"


def diverged_notes(runs: list[dict], depth: int | None) -> list[str]:
    """Why each run at `depth` diverged, from its replayed first step (module docstring)."""
    notes = []
    for r in runs:
        if r["depth"] != depth or r["status"] != "diverged":
            continue
        who = f"{r['arm']}-{r['depth']} (seed {r['seed']}) diverged at step {r['diverged_at']}"
        bad, entries = r.get("first_grad_nonfinite"), r.get("first_grad_entries")
        if r.get("first_loss") is None and bad is None:
            notes.append(f"{who}; its first step was not replayed.")
        elif r.get("first_loss") is None:
            notes.append(
                f"{who}: its loss is not finite at the first step, before any update: the forward "
                "pass overflows fp32."
            )
        elif bad:
            notes.append(
                f"{who}: an overflow of its first gradient. Replayed, the first loss is "
                f"{r['first_loss']:.3g} but {bad:,} of {entries:,} gradient entries are not finite "
                "in fp32, so the first update writes NaN into the weights (clipping cannot help: "
                "an infinite norm scales the gradient to NaN)."
            )
        elif r["diverged_at"] <= 2:
            notes.append(
                f"{who}: an exploding first gradient. Replayed, the first loss is "
                f"{r['first_loss']:.3g} and the gradient is finite but its norm is "
                f"{r['first_grad_norm']:.3g} before clipping; the first update is that times the "
                "learning rate, and the loss after it is not finite."
            )
        else:
            notes.append(
                f"{who}, after a finite first step (loss {r['first_loss']:.3g}, gradient norm "
                f"{r['first_grad_norm']:.3g} before clipping): not an overflow at init."
            )
    return notes
