"""The identity study's rule: pure functions of its results (`results/*.json`) to its `Verdict`.

The measurement (`judge_fit`, the study's status) applies RULE at every depth. FLOOR: a relative loss
of 0.1% (an rms error of about 3% of the data's) is a fit of the identity, below which the arms are
not told apart; FACTOR: a loss at least halved, beyond the changes a seed makes to a stack this size.
The checks of construction (`judge_structure`, `judge_append`; what each requires: the package
docstring) hold by how the blocks are built: they test the code, never the claim.
"""

from __future__ import annotations

from collections.abc import Sequence

from reslab.report.html import fmt_num, fmt_pct
from reslab.studies.identity import PLAIN, ZERO_INIT
from reslab.studies.stats import finite_or_none
from reslab.training.runs import Verdict

FACTOR = 2.0
FLOOR = 1e-3
RULE = (
    "per depth, without weight decay: residual easier if max(plain, {floor:g}) / max(residual, "
    "{floor:g}) >= {factor:g}, plain easier if <= 1/{factor:g}, else tied"
)
CALLS = {"residual": "residual easier", "plain": "plain easier", "tied": "tied"}  # per depth
LABELS = {  # status -> (label, tone), as the page and `reslab report`'s index show it
    "shown": ("residual learns the identity more easily", "good"),
    "partly": ("partly shown", "warn"),
    "not_shown": ("not shown, tied", "warn"),
    "reversed": ("plain learns it more easily", "warn"),
    "insufficient": ("insufficient", "neutral"),
}


def mode_failures(m: dict) -> list[str]:
    """What one mode of a zeroed net (`results/structure.json`) got wrong; [] when all is exact."""
    failures = []
    if m["identity_blocks"] == 0 or m["identity_exact"] != m["identity_blocks"]:
        failures.append(f"{m['identity_exact']}/{m['identity_blocks']} identity blocks exact")
    if m["shape_exact"] != m["shape_blocks"]:
        failures.append(f"{m['shape_exact']}/{m['shape_blocks']} other shortcut blocks exact")
    if m["plain_zero_blocks"] != m["blocks"] or not m["plain_constant_output"]:
        failures.append(f"plain twin {m['plain_zero_blocks']}/{m['blocks']} blocks zero")
    return failures


def judge_structure(structure: dict) -> dict:
    """The zeroed-branch check of construction, over every method and mode."""
    methods = structure["methods"]
    failures = [
        f"{method}/{mode}: {failure}"
        for method, r in methods.items()
        for mode, m in r["modes"].items()
        for failure in mode_failures(m)
    ]
    n = next(iter(methods.values()))["modes"]["eval"]["identity_blocks"]
    text = (
        f"not every zeroed block is exact: {'; '.join(failures)}"
        if failures
        else f"with zeroed branches ({', '.join(methods)}) all {n} identity blocks of "
        f"{structure['model']} output their input exactly and the plain twin outputs zero"
    )
    return {"holds": not failures, "failures": failures, "text": text}


def judge_append(append: dict) -> dict:
    """The appended-blocks check of construction: zero-init residual blocks keep every logit."""
    res = [r for r in append["results"] if r["variant"] == ZERO_INIT]
    plain = [fmt_pct(r["test_error"]) for r in append["results"] if r["variant"] == PLAIN]
    unchanged = bool(res) and all(r["logits_equal"] and r["changed_predictions"] == 0 for r in res)
    text = (
        f"appending k = {', '.join(str(r['k']) for r in res)} zero-init residual blocks to the "
        f"trained {append['base_model']} ({fmt_pct(append['base_test_error'])} test error) "
        f"{'leaves every logit unchanged' if unchanged else 'changes the logits'} (plain blocks at "
        f"their default init, for contrast: {', '.join(plain)}; chance "
        f"{fmt_pct(append['chance_error'])})"
    )
    return {"holds": unchanged, "text": text}


def fit_call(plain: float | None, residual: float | None) -> str:
    """ "residual" or "plain" (the arm that reached a loss FACTOR times lower, losses below FLOOR
    counted as FLOOR) or "tied"; a non-finite loss (None) loses to a finite one."""
    if plain is None or residual is None:
        return "tied" if plain is residual else "residual" if plain is None else "plain"
    ratio = max(plain, FLOOR) / max(residual, FLOOR)
    return "residual" if ratio >= FACTOR else "plain" if ratio <= 1 / FACTOR else "tied"


def judge_fit(fit: dict) -> dict:
    """The measurement, from the arms without weight decay: a row per depth and the status."""
    arms = [r for r in fit["results"] if not r.get("weight_decay")]
    loss = {(r["depth"], r["arch"]): finite_or_none(r["final_loss"]) for r in arms}
    rows = []
    for d in sorted({d for d, arch in loss if arch == "plain" and (d, "residual") in loss}):
        plain, residual = loss[d, "plain"], loss[d, "residual"]
        row = {"depth": d, "plain": plain, "residual": residual, "call": fit_call(plain, residual)}
        rows.append(row | {"same_init": fit.get("same_init", {}).get(str(d))})
    calls = {r["call"] for r in rows}
    unlike = ", ".join(str(r["depth"]) for r in rows if r["same_init"] is False)
    if not rows or unlike:
        status = "insufficient"
    elif "plain" in calls:
        status = "reversed"
    elif calls == {"residual"}:
        status = "shown"
    else:
        status = "partly" if "residual" in calls else "not_shown"
    text = "learning the identity, residual stacks reach relative loss " + ", ".join(
        f"{fmt_num(r['residual'])} vs plain {fmt_num(r['plain'])} ({r['depth']} layers: "
        f"{CALLS[r['call']]})"
        for r in rows
    )
    if unlike:
        text += f"; not like with like: the arms start from other weights at {unlike} layers"
    return {"status": status, "depths": rows, "text": text}


def verdict(results: dict, diverged: Sequence[str] = ()) -> Verdict:
    """The measurement's status and text (numbers: "measurement"), and apart from it the checks of
    construction ("construction": "holds", "broken" or "not run", naming the checks without results
    and the trained net of check 3 that `diverged`)."""
    if "fit" in results:
        fit = judge_fit(results["fit"])
    else:
        fit = {"status": "insufficient", "depths": [], "text": "the measurement has not run yet"}
    judges = {"structure": judge_structure, "append": judge_append}
    parts = {p: judge(results[p]) for p, judge in judges.items() if p in results}
    missing = [p for p in judges if p not in parts]
    if not parts:
        status, lead = "not run", "Checks of construction not run"
    elif all(v["holds"] for v in parts.values()):
        status, lead = "holds", "Checks of construction hold"
    else:
        status, lead = "broken", "A check of construction fails"
    text = f"{lead}: " + "; ".join(v["text"] for v in parts.values())
    text += f" (not run: {', '.join(missing)})." if missing else "."
    if diverged:
        text += f" The training of check 3 diverged: {'; '.join(diverged)}."
    construction = {"status": status, "text": text, **parts, "not_run": missing}
    numbers = {"measurement": fit, "construction": construction | {"diverged_notes": [*diverged]}}
    thresholds = {"floor": FLOOR, "factor": FACTOR}
    text = f"{LABELS[fit['status']][0].capitalize()}: {fit['text']}."
    return Verdict(fit["status"], numbers, thresholds, RULE.format(**thresholds), text)
