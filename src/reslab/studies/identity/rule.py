"""The identity study's rules, as pure functions of its results (`results/*.json`): the
measurement, whether a residual stack learns the identity more easily than a plain one (`judge_fit`,
the study's status), and the checks of construction (`judge_structure`, `judge_append`).

The measurement (`judge_fit`; the study's status). Per depth, from the held-out relative losses of the
plain and residual stacks trained without weight decay (arms with weight decay are shown, not judged):
    ratio = max(plain, FLOOR) / max(residual, FLOOR)        FLOOR = 1e-3, FACTOR = 2
    residual easier if ratio >= FACTOR, plain easier if ratio <= 1 / FACTOR, else tied.
FLOOR: a relative loss of 0.1% (an rms error of about 3% of the data's) is a fit of the identity;
below it the two arms are not told apart. FACTOR: a loss at least halved, beyond the changes a seed
makes to a stack this size.
Status: "shown" (residual easier at every depth), "partly" (at some depths, plain easier at none),
"not_shown" (tied at every depth), "reversed" (plain easier at some depth), "insufficient" (no depth
with both arms, or the two arms did not start from the same weights: not like with like).

The checks of construction (`judge_structure`, `judge_append`; "holds" or "broken", or "not run"):
they hold by how the blocks are built, so they test the code, never the claim.
  structure  holds when, for every zeroing method and in both eval and train mode, every block with
             an identity shortcut outputs its input exactly (torch.equal), every other block
             without a projection outputs its own shortcut path exactly, every block of the plain
             twin outputs exactly zero and the plain twin's logits are the same for every input.
  append     holds when appended zero-init residual blocks leave every logit equal (hence no
             prediction changed) for every k. The plain and default-init residual blocks appended
             beside them start from another init, so their errors are shown for contrast only.
When the training of check 3 diverged, no blocks are appended (that check is "not run") and the text
names the run, its step and its last finite loss.
"""

from __future__ import annotations

from collections.abc import Sequence

from reslab.report.html import fmt_pct
from reslab.studies.identity import PLAIN, ZERO_INIT
from reslab.studies.stats import finite_or_none
from reslab.training.runs import Verdict

CONSTRUCTION = ("structure", "append")
FACTOR = 2.0
FLOOR = 1e-3
RULE = (
    "per depth, without weight decay: residual easier if max(plain, {floor:g}) / max(residual, "
    "{floor:g}) >= {factor:g}, plain easier if <= 1/{factor:g}, else tied"
)
CALLS = {"residual": "residual easier", "plain": "plain easier", "tied": "tied"}  # per depth


def judge_structure(structure: dict) -> dict:
    """The zeroed-branch check of construction (rule in the module docstring)."""
    failures = []
    for method, r in structure["methods"].items():
        for mode, m in r["modes"].items():
            if m["identity_blocks"] == 0 or m["identity_exact"] != m["identity_blocks"]:
                failures.append(
                    f"{method}/{mode}: {m['identity_exact']}/{m['identity_blocks']} identity blocks exact"
                )
            if m["shape_exact"] != m["shape_blocks"]:
                failures.append(
                    f"{method}/{mode}: {m['shape_exact']}/{m['shape_blocks']} other shortcut blocks exact"
                )
            if m["plain_zero_blocks"] != m["blocks"] or not m["plain_constant_output"]:
                failures.append(
                    f"{method}/{mode}: plain twin {m['plain_zero_blocks']}/{m['blocks']} blocks zero"
                )
    some = next(iter(structure["methods"].values()))["modes"]["eval"]
    text = (
        f"with zeroed branches ({', '.join(structure['methods'])}) all {some['identity_blocks']} identity "
        f"blocks of {structure['model']} output their input exactly and the plain twin outputs zero"
        if not failures
        else f"not every zeroed block is exact: {'; '.join(failures)}"
    )
    return {"holds": not failures, "failures": failures, "text": text}


def judge_append(append: dict) -> dict:
    """The appended-blocks check of construction (rule in the module docstring)."""
    base, chance = append["base_test_error"], append["chance_error"]
    res = [r for r in append["results"] if r["variant"] == ZERO_INIT]
    plain = [r for r in append["results"] if r["variant"] == PLAIN]
    unchanged = bool(res) and all(r["logits_equal"] and r["changed_predictions"] == 0 for r in res)
    ks = ", ".join(str(r["k"]) for r in res)
    text = (
        f"appending k = {ks} zero-init residual blocks to the trained {append['base_model']} "
        f"({fmt_pct(base)} test error) {'leaves every logit unchanged' if unchanged else 'changes the logits'}"
        f" (plain blocks at their default init, for contrast: "
        f"{', '.join(fmt_pct(r['test_error']) for r in plain)}; chance {fmt_pct(chance)})"
    )
    return {"holds": unchanged, "text": text}


def fit_call(plain: float | None, residual: float | None, factor: float = FACTOR) -> str:
    """ "residual" or "plain" (the arm that reached a loss `factor` times lower, losses below FLOOR
    counted as FLOOR) or "tied"; a non-finite loss (None) loses to a finite one."""
    if plain is None or residual is None:
        return "tied" if plain is residual else "residual" if plain is None else "plain"
    ratio = max(plain, FLOOR) / max(residual, FLOOR)
    return "residual" if ratio >= factor else "plain" if ratio <= 1 / factor else "tied"


def judge_fit(fit: dict, factor: float = FACTOR) -> dict:
    """The measurement (rule in the module docstring), from the arms without weight decay."""
    same = fit.get("same_init", {})
    rows = []
    for d in sorted({r["depth"] for r in fit["results"]}):
        loss = {
            r["arch"]: finite_or_none(r["final_loss"])
            for r in fit["results"]
            if r["depth"] == d and not r.get("weight_decay")
        }
        if "plain" in loss and "residual" in loss:
            call = fit_call(loss["plain"], loss["residual"], factor)
            row = {"depth": d, "plain": loss["plain"], "residual": loss["residual"], "call": call}
            rows.append(row | {"same_init": same.get(str(d))})
    calls = [r["call"] for r in rows]
    unlike = [str(r["depth"]) for r in rows if r["same_init"] is False]
    if not rows or unlike:
        status = "insufficient"
    elif "plain" in calls:
        status = "reversed"
    elif all(c == "residual" for c in calls):
        status = "shown"
    else:
        status = "partly" if "residual" in calls else "not_shown"
    text = "learning the identity, residual stacks reach relative loss " + ", ".join(
        f"{_fmt(r['residual'])} vs plain {_fmt(r['plain'])} ({r['depth']} layers: {CALLS[r['call']]})"
        for r in rows
    )
    if unlike:
        text += (
            f"; not like with like: the arms start from other weights at {', '.join(unlike)} layers"
        )
    return {"status": status, "depths": rows, "text": text}


def judge_construction(results: dict) -> dict:
    """Both checks of construction: "holds", "broken", or "not run" when neither has results; the
    checks without results are listed under "not_run"."""
    parts = {p: {"structure": judge_structure, "append": judge_append}[p](results[p])
             for p in CONSTRUCTION if p in results}  # fmt: skip
    status = (
        "not run" if not parts else "holds" if all(v["holds"] for v in parts.values()) else "broken"
    )
    missing = [p for p in CONSTRUCTION if p not in parts]
    lead = {"holds": "Checks of construction hold", "broken": "A check of construction fails",
            "not run": "Checks of construction not run"}[status]  # fmt: skip
    text = f"{lead}: " + "; ".join(v["text"] for v in parts.values())
    text += f" (not run: {', '.join(missing)})." if missing else "."
    return {"status": status, "text": text, **parts, "not_run": missing}


def verdict(results: dict, diverged: Sequence[str] = ()) -> Verdict:
    """The measurement's status and text (numbers: "measurement"), with the checks of construction
    apart ("construction", whose "diverged_notes" and text name a trained net of check 3 that
    diverged: `diverged`)."""
    if "fit" in results:
        fit = judge_fit(results["fit"])
    else:
        fit = {"status": "insufficient", "depths": [], "text": "the measurement has not run yet"}
    lead = {
        "shown": "A residual block learns the identity more easily:",
        "partly": "Partly shown:",
        "not_shown": "Not shown:",
        "reversed": "Reversed, plain stacks learn the identity more easily:",
        "insufficient": "Cannot judge:",
    }[fit["status"]]
    construction = judge_construction(results)
    if diverged:
        note = f" The training of check 3 diverged: {'; '.join(diverged)}."
        construction["text"] += note
    construction["diverged_notes"] = list(diverged)
    thresholds = {"floor": FLOOR, "factor": FACTOR}
    numbers = {"measurement": fit, "construction": construction}
    return Verdict(
        fit["status"], numbers, thresholds, RULE.format(**thresholds), f"{lead} {fit['text']}."
    )


def _fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:.3g}"  # None: non-finite (written as null)
