"""The landscape study's verdict: does the plain nets' non-convexity grow with depth, and the
residual nets' not? Declared on 2026-12-07 before the default grid was measured; the toy grid (2 and
6 layers, 30 iterations) had run once, while its tests were being written, and the rule was not
changed after it. Tested on constructed rows in tests/studies/test_landscape_study.py (Li et al. give
the measure as maps, Fig. 7, not as numbers a test could hold).

The measure is Li et al. 2018's (§6, Fig. 7): |lambda_min / lambda_max| of the Hessian of the
training loss at the trained weights, per net: near 0 at a convex minimum, larger where the surface
curves down as much as up.
"""

from __future__ import annotations

from reslab.studies import stats
from reslab.training import runs

FLOOR = 0.05  # the smallest rise of |lambda_min / lambda_max| the rule calls real
RULE = (
    "shown when the plain nets' mean |lambda_min/lambda_max| at the deepest depth is above the "
    f"shallowest's by more than max(2 x pooled seed std, {FLOOR}) and the residual nets' is not; "
    "residual_too when both rise; not_shown when the plain nets' does not; insufficient with fewer "
    "than two depths measured in an arm. Nets that diverged in training have no surface: they are "
    "named, not scored"
)


def ratio(lambda_max: float | None, lambda_min: float | None) -> float | None:
    """|lambda_min / lambda_max|, or None when lambda_max is not positive (no minimum to speak of)."""
    if lambda_max is None or lambda_min is None or not lambda_max > 0:
        return None
    return abs(lambda_min / lambda_max)


def rows(nets: list[dict]) -> list[dict]:
    """One row per (arch, depth), shallowest first: the per-seed ratios, their mean and std."""
    out = []
    for depth, arch in sorted({(n["depth"], n["arch"]) for n in nets}):
        group = [n for n in nets if (n["arch"], n["depth"]) == (arch, depth)]
        ratios = [ratio(n["lambda_max"], n["lambda_min"]) for n in group]
        mean, std = stats.mean_std(ratios)
        seeds = [n["seed"] for n in group]
        out.append(dict(arch=arch, depth=depth, seeds=seeds, ratios=ratios, mean=mean, std=std))
    return out


def verdict(table: list[dict]) -> runs.Verdict:
    """RULE on the rows of `rows`: each arm's deepest nets against its shallowest."""
    thresholds = {"floor": FLOOR}
    arms = {a: [r for r in table if r["arch"] == a] for a in ("plain", "residual")}
    if any(len(rs) < 2 for rs in arms.values()):
        return runs.Verdict("insufficient", {}, thresholds, RULE, "fewer than two depths per arm")
    numbers = {}
    for arch, rs in arms.items():
        c = stats.compare(rs[0]["ratios"], rs[-1]["ratios"], floor=FLOOR)
        numbers[arch] = {"shallow": rs[0]["depth"], "deep": rs[-1]["depth"], **c}
    plain, residual = numbers["plain"]["higher"], numbers["residual"]["higher"]
    status = "not_shown" if not plain else "residual_too" if residual else "shown"
    text = "; ".join(
        f"{arch}: |λmin/λmax| {n['mean_a']:.3f} at {n['shallow']} layers, {n['mean_b']:.3f} at "
        f"{n['deep']} ({'rises' if n['higher'] else 'does not rise'}; tolerance {n['tolerance']:.3f})"
        for arch, n in numbers.items()
    )
    return runs.Verdict(status, numbers, thresholds, RULE, text)
