"""The landscape study's verdict: does the plain nets' non-convexity grow with depth, and the
residual nets' not? Declared on 2026-12-07 before the default grid was measured; the toy grid (2 and
6 layers, 30 iterations) had run once, while its tests were being written, and the rule was not
changed after it. Tested on constructed rows in tests/studies/test_landscape_study.py (Li et al. give
the measure as maps, Fig. 7, not as numbers a test could hold).

The measure is Li et al. 2018's (§6, Fig. 7): |lambda_min / lambda_max| of the Hessian of the
training loss at the trained weights, per net: near 0 at a convex minimum, larger where the surface
curves down as much as up. For each arm, the nets of the deepest depth are compared with those of
the shallowest (`stats.compare`: the mean difference against max(2 x pooled seed std, FLOOR)).
"""

from __future__ import annotations

from reslab.studies import stats
from reslab.training import runs

FLOOR = 0.05  # the smallest rise of |lambda_min / lambda_max| the rule calls real
RULE = (
    "shown when the plain nets' mean |lambda_min/lambda_max| at the deepest depth is above the "
    "shallowest's by more than max(2 x pooled seed std, {floor}) and the residual nets' is not; "
    "residual_too when both rise; not_shown when the plain nets' does not; insufficient with fewer "
    "than two depths measured in an arm. Nets that diverged in training have no surface: they are "
    "named, not scored"
)


def ratio(lambda_max: float, lambda_min: float) -> float | None:
    """|lambda_min / lambda_max|, or None when lambda_max is not positive (no minimum to speak of)."""
    if lambda_max is None or lambda_min is None or not lambda_max > 0:
        return None
    return abs(lambda_min / lambda_max)


def rows(nets: list[dict]) -> list[dict]:
    """One row per (arch, depth): the per-seed ratios, their mean and std, shallowest first."""
    grouped: dict[tuple[str, int], list] = {}
    for n in nets:
        grouped.setdefault((n["arch"], n["depth"]), []).append(n)
    out = []
    for (arch, depth), group in sorted(grouped.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        ratios = [ratio(n["lambda_max"], n["lambda_min"]) for n in group]
        mean, std = stats.mean_std(ratios)
        out.append(
            {"arch": arch, "depth": depth, "seeds": [n["seed"] for n in group], "ratios": ratios,
             "mean": mean, "std": std}
        )  # fmt: skip
    return out


def verdict(table: list[dict]) -> runs.Verdict:
    """The rule (module docstring) on the rows of `rows`."""
    thresholds = {"floor": FLOOR}
    rule = RULE.format(**thresholds)
    arms = {a: [r for r in table if r["arch"] == a] for a in ("plain", "residual")}
    if any(len(rs) < 2 for rs in arms.values()):
        return runs.Verdict("insufficient", {}, thresholds, rule, "fewer than two depths per arm")
    numbers = {}
    for arch, rs in arms.items():
        shallow, deep = rs[0], rs[-1]
        c = stats.compare(shallow["ratios"], deep["ratios"], floor=FLOOR)
        numbers[arch] = {"shallow": shallow["depth"], "deep": deep["depth"], **c}
    plain, residual = numbers["plain"]["higher"], numbers["residual"]["higher"]
    status = "not_shown" if not plain else "residual_too" if residual else "shown"

    def says(arch: str) -> str:
        n = numbers[arch]
        rise = "rises" if n["higher"] else "does not rise"
        return (
            f"{arch}: |λmin/λmax| {n['mean_a']:.3f} at {n['shallow']} layers, {n['mean_b']:.3f} at "
            f"{n['deep']} ({rise}; tolerance {n['tolerance']:.3f})"
        )

    return runs.Verdict(status, numbers, thresholds, rule, f"{says('plain')}; {says('residual')}")
