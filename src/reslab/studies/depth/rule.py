"""The depth study's verdict, a pure function of its rows (one per run, `report.write_summary`):
which arms learn at the deepest depth D (judged against the shallowest, d), and why those that
diverged did. `RULE` states it, with its threshold; `verdict` returns the numbers it rests on.

History. Issue 6 declared "learned: final <= 0.5 x start; shown: every norm-free arm learned at D,
the plain net failed at D and learned at d", with the gradient clipped at 1 in the recipe. Its runs
had measured a 10,000-layer batch-norm residual net at He init starting at loss 55 and staying at
chance, which "half its start" would call learning. Issue 13 revised the rule with that number in
view and declared its statuses before any run of the new arms: learning is also judged against
chance (ln K, K classes from the replayed first step; a folder without replays is judged on its
start alone); the recipe lost its clipping (the +clip arms); the negative control joined plain, and
a method that learns where a control learns too is "not attributable" (D does not need it); the
controls must learn at d, so that their failure at D is depth's, not the recipe's; a diverged seed
counts against its arm.
"""

from __future__ import annotations

import math
from itertools import groupby
from typing import Any

from reslab.report.html import fmt_num
from reslab.studies.depth import CLIP, CONTROLS, METHODS, arm_order
from reslab.studies.stats import mean_std
from reslab.training.runs import Verdict

LEARNED = 0.5
RULE = (
    f"learned: finished and final training loss <= {LEARNED:g} x the smaller of its starting loss "
    "and ln(classes), the loss of a uniform guess (every seed); shown: at the deepest depth every "
    "method (rezero, skipinit, fixup) learned without clipping while the negative control (nonorm) "
    "and the plain net failed (a diverged run fails), and both learned at the shallowest depth; "
    "shown with clipping: the same, but some method learned only with gradient clipping; not "
    "attributable: a control learned too; partly shown: a method learned, but not all of the "
    "above holds; not shown: no method learned; the batch-norm residual arms are shown, not judged"
)
# the verdict's first sentence, per status
LEADS = {
    "insufficient": "Cannot judge: the verdict needs a method arm (rezero, skipinit or fixup), the "
    "negative control (nonorm) and the plain net at the deepest depth ({deep}).",
    "shown": "Shown. Every norm-free method learned without clipping; the control and plain did "
    "not.",
    "shown_with_clipping": "Shown with gradient clipping: {clipped} learned only with clipping; "
    "the control and plain failed.",
    "not_shown": f"Not shown. No method got down to {LEARNED:g} times its starting loss (or "
    "chance), with or without clipping.",
    "not_attributable": "Not attributable to the method: a control learned at this depth as well.",
    "partly_shown": "Partly shown: {missing}.",
}
CONTROL_ARMS = tuple(c + s for c in CONTROLS for s in ("", CLIP))  # with and without clipping
# the numbers averaged over the seeds of an (arm, depth) group
MEANS: tuple[str, ...] = ("start_loss", "final_train_loss", "end_batch_loss", "final_train_error")
MEANS += ("final_test_error", "first_grad_norm", "time_s")
# why a run diverged, from its replayed first step
WHY = {
    "not_replayed": "; its first step was not replayed.",
    "forward": ": its loss is not finite at the first step, before any update: the forward pass "
    "overflows fp32.",
    "gradient": ": an overflow of its first gradient. Replayed, the first loss is {loss:.3g} but "
    "{bad:,} of {entries:,} gradient entries are not finite in fp32, so the first update writes "
    "NaN into the weights (clipping cannot help: an infinite norm scales the gradient to NaN).",
    "exploding": ": an exploding first gradient. Replayed, the first loss is {loss:.3g} and the "
    "gradient is finite but its norm is {norm:.3g} before clipping; the first update is that times "
    "the learning rate, and the loss after it is not finite.",
    "later": ", after a finite first step (loss {loss:.3g}, gradient norm {norm:.3g} before "
    "clipping): not an overflow at init.",
}


def learned(run: dict) -> bool:
    """Finished with a final training loss at most LEARNED times its starting loss and, where the
    number of classes K is known, at most LEARNED times ln K (the loss of a uniform guess)."""
    start, final, classes = run["start_loss"], run["final_train_loss"], run.get("classes")
    if run["status"] != "completed" or None in (start, final):
        return False
    return final <= LEARNED * (min(start, math.log(classes)) if classes else start)


def group_runs(runs: list[dict]) -> list[dict]:
    """Per (arm, depth), in arm order: seeds, diverged seeds, means, whether all/no seed learned."""
    groups = []
    ordered = sorted(runs, key=lambda r: (arm_order(r["arm"]), r["depth"]))
    for (arm, depth), same in groupby(ordered, key=lambda r: (r["arm"], r["depth"])):
        rs = list(same)
        ok, diverged = [learned(r) for r in rs], [r for r in rs if r["status"] == "diverged"]
        groups.append(
            {
                "arm": arm,
                "depth": depth,
                "model": next((r["model"] for r in rs if r["model"]), None),
                "params": next((r["params"] for r in rs if r["params"]), None),
                "grad_clip": next((r["grad_clip"] for r in rs if r["grad_clip"]), 0.0),
                "lr_scales": rs[0]["lr_scales"],
                "seeds": [r["seed"] for r in rs],
                "diverged": [r["seed"] for r in diverged],
                "diverged_at": [r["diverged_at"] for r in diverged],
                **{k: mean_std([r[k] for r in rs])[0] for k in MEANS},
                "first_grad_overflow": [r["seed"] for r in rs if r["first_grad_nonfinite"]],
                "learned": all(ok),
                "failed": not any(ok),
            }
        )
    return groups


def describe(g: dict) -> str:
    """'2.44 → 0.21', '2.3 → 0.5, seed(s) 1 diverged' or 'diverged at step 2'."""
    if len(g["diverged"]) == len(g["seeds"]):
        return f"diverged at step {', '.join(map(str, g['diverged_at']))}"
    text = f"{fmt_num(g['start_loss'])} → {fmt_num(g['final_train_loss'])}"
    if g["diverged"]:
        text += f", seed(s) {', '.join(map(str, g['diverged']))} diverged"
    return text


def verdict(runs: list[dict]) -> Verdict:
    """Judge the study from the measured numbers only (`RULE`). Numbers: the deepest and shallowest
    depth, the step budget (the most steps a completed run took), the seeds, the groups, why runs
    diverged, the checks the status rests on, the methods that needed clipping and those that
    failed with and without it ("unrescued")."""
    groups = group_runs(runs)
    at = {(g["arm"], g["depth"]): g for g in groups}
    deep, shallow = max((d for _, d in at), default=None), min((d for _, d in at), default=None)
    steps = max((r["iters"] or 0 for r in runs if r["status"] == "completed"), default=0) or None
    seeds = sorted({r["seed"] for r in runs})
    n: dict[str, Any] = dict(deep=deep, shallow=shallow, steps=steps, seeds=seeds, groups=groups)
    n["diverged_notes"] = diverged_notes(runs, deep)
    methods = [m for m in METHODS if (m, deep) in at or (m + CLIP, deep) in at]
    if not methods or any((c, deep) not in at for c in CONTROLS):
        text = LEADS["insufficient"].format(deep=deep or "none")
        return Verdict("insufficient", {**n, "checks": {}}, {"ratio": LEARNED}, RULE, text)

    def ok(arm: str, depth: int | None = deep) -> bool | None:
        return at[(arm, depth)]["learned"] if (arm, depth) in at else None

    n["checks"] = checks = {
        "methods_learned": {m: ok(m) for m in methods},
        "methods_learned_with_clipping": {m: ok(m + CLIP) for m in methods},
        "controls_failed": {c: at[(c, deep)]["failed"] for c in CONTROL_ARMS if (c, deep) in at},
        "controls_learned_shallow": {
            c: ok(c, shallow) if shallow != deep else None for c in CONTROLS
        },
    }
    n["needed_clipping"] = [m for m in methods if not ok(m) and ok(m + CLIP)]
    n["unrescued"] = [m for m in methods if not ok(m) and not ok(m + CLIP)]
    if len(n["unrescued"]) == len(methods):
        status = "not_shown"
    elif not all(checks["controls_failed"].values()):
        status = "not_attributable"
    elif n["unrescued"] or not all(checks["controls_learned_shallow"].values()):
        status = "partly_shown"
    else:
        status = "shown_with_clipping" if n["needed_clipping"] else "shown"
    return Verdict(status, n, {"ratio": LEARNED}, RULE, _text(status, at, n))


def _text(status: str, at: dict, n: dict) -> str:
    """The verdict's sentence: its lead (`LEADS`), each arm's losses at the deepest depth and the
    controls' at the shallowest (`describe`), and the budget every "learned" is relative to."""
    deep, shallow, checks = n["deep"], n["shallow"], n["checks"]

    def join(arms, depth: int = deep) -> str:
        return ", ".join(f"{a} {describe(at[(a, depth)])}" for a in arms if (a, depth) in at)

    methods = list(checks["methods_learned"])
    bare, clipped = join(methods), [m + CLIP for m in methods if (m + CLIP, deep) in at]
    run = f"without clipping: {bare}" if bare else "no method arm without clipping"
    if clipped:
        clip = at[(clipped[0], deep)]["grad_clip"]
        run += f"; with gradient clipping (at {clip:g}): {join(clipped)}"
    ctrl = join(CONTROL_ARMS)
    low = join(CONTROLS, shallow) if shallow != deep else ""
    if low:
        ctrl += f"; at {shallow} layers {low}"
    bn = join(("residual", "zeroinit"))
    unrescued = ", ".join(n["unrescued"])
    missing = [f"{unrescued} failed with and without clipping"] if unrescued else []
    if shallow == deep:
        missing.append("no shallower depth to show that the controls can learn")
    elif bad := [c for c, ok in checks["controls_learned_shallow"].items() if not ok]:
        missing.append(f"{', '.join(bad)} did not learn at {shallow} layers either")
    clipped_only, seeds = ", ".join(n["needed_clipping"]), len(n["seeds"])
    lead = LEADS[status].format(clipped=clipped_only, missing="; ".join(missing))
    return (
        f"{lead} At {deep} layers (training loss start → final, mean over seeds) — methods {run}; "
        f"negative control and plain net: {ctrl}."
        + (f" Batch-norm residual nets (not judged): {bn}." if bn else "")
        + f" Every run had a budget of {n['steps']} training steps (a diverged run stops earlier), "
        f"{seeds} seed{'s' if seeds != 1 else ''} per arm and depth; an arm learned only if every "
        "seed did: a longer budget may let an arm that failed here learn."
    )


def diverged_notes(runs: list[dict], depth: int | None) -> list[str]:
    """Why each run at `depth` diverged (`WHY`), from its replayed first step."""
    notes = []
    for r in (r for r in runs if r["depth"] == depth and r["status"] == "diverged"):
        loss, bad = r["first_loss"], r["first_grad_nonfinite"]
        if loss is None:
            why = "not_replayed" if bad is None else "forward"
        else:
            why = "gradient" if bad else "exploding" if r["diverged_at"] <= 2 else "later"
        text = WHY[why].format(
            loss=loss, bad=bad, entries=r["first_grad_entries"], norm=r["first_grad_norm"]
        )
        who = f"{r['arm']}-{r['depth']} (seed {r['seed']}) diverged at step {r['diverged_at']}"
        notes.append(who + text)
    return notes
