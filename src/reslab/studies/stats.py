"""Statistics every study's verdict uses: finite-or-none, mean and sample std over seeds, the one
tolerance every rule compares a difference with, and the comparison of two groups of seeds.

The tolerance is `max(K * spread, floor)`, K = 2: a difference counts when it is more than twice
the spread the seeds show (a std, a pooled std or a standard error, as each rule says), and never
less than the rule's floor, the smallest difference it calls real (all there is with one seed).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

K = 2.0  # a difference counts when it is more than K times the seeds' spread


def tolerance(spread: float, floor: float, k: float = K) -> float:
    """The smallest difference a rule calls real: max(k * spread, floor) (module docstring)."""
    return max(k * spread, floor)


def finite_or_none(x: object) -> float | None:
    """`x` as a float when it is a finite number, else None (a diverged run logs NaN or nothing)."""
    try:
        value = float(x)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def finite_tree(obj: Any) -> Any:
    """`obj` (dicts, lists, numbers) with each non-finite float as None: standard JSON."""
    if isinstance(obj, dict):
        return {k: finite_tree(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_tree(v) for v in obj]
    return None if isinstance(obj, float) and not math.isfinite(obj) else obj


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """(mean, sample std) of the finite values; std None with one of them, both None with none."""
    xs = [v for v in (finite_or_none(v) for v in values) if v is not None]
    if not xs:
        return None, None
    std = float(np.std(xs, ddof=1)) if len(xs) > 1 else None
    return float(np.mean(xs)), std


def pooled_std(groups: Sequence[tuple[int, float | None]]) -> float:
    """The df-weighted pooled std of groups given as (n, sample std); 0.0 with n < 2 in each."""
    df = sum(n - 1 for n, _ in groups if n > 0)
    ss = sum((n - 1) * (s or 0.0) ** 2 for n, s in groups if n > 0)
    return math.sqrt(ss / df) if df > 0 else 0.0


def compare(a: Sequence[float | None], b: Sequence[float | None], floor: float) -> dict:
    """Group b against group a, non-finite values left out: b is "higher" when margin = mean(b) -
    mean(a) is above tolerance(pooled std, floor), the pooled std being the usual df-weighted one
    of the two groups' sample stds. With an empty group the means are None and higher is False."""
    (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
    na, nb = (sum(finite_or_none(v) is not None for v in group) for group in (a, b))
    pooled = pooled_std([(na, sa), (nb, sb)])
    tol = tolerance(pooled, floor)
    margin = None if ma is None or mb is None else mb - ma
    higher = margin is not None and margin > tol
    return dict(
        mean_a=ma, mean_b=mb, margin=margin, pooled_std=pooled, tolerance=tol, higher=higher
    )
