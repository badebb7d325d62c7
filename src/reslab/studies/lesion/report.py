"""Report for the lesion study (Veit, Wilber and Belongie 2016, "Residual Networks Behave Like
Ensembles of Relatively Shallow Networks", §4.1-4.2: Figure 3, single deletions on CIFAR-10, and
Figure 5(a), several blocks deleted at once): deleting one block of a residual net barely changes
its test error, deleting one layer of a plain net destroys it, and the residual net's error rises
smoothly as more blocks are deleted. (Their Figure 4 is single deletion on ImageNet, not run here.)

Works from the study folder alone: `lesions.json` (written by `reslab.studies.lesion`: every measured
error, and the nets that diverged in training) and `study.json`. `build_report(study_dir)` writes
summary.json, single.png (error per deleted block), multi.png (error against the number of deleted
blocks) and report.html.

Verdict rule. For a net with intact test error e0 and chance error c = 1 - 1/classes, deleting blocks
that give error e does damage (e - e0) / (c - e0): 0 is harmless, 1 is as bad as guessing. Per arch,
over every net and every deletable block:
    robust  = median single-deletion damage <= ROBUST (0.1)
    broken  = median single-deletion damage >= BROKEN (0.5)
Status: "shown" (residual robust, plain broken), "not_shown" (residual not robust), "plain_robust_too"
(both robust-ish: plain not broken), "residual_robust" (no plain net measured), "insufficient" (no
residual net, or nothing deletable). Like for like: when the residual and the plain nets differ in
more than their shortcuts (in number of blocks, or in training recipe: any run config setting but
the model and seed, as recorded in lesions.json), the verdict text says in what (`unlike`); Veit et al.
themselves set ResNet-110 against a 15-layer VGG. The multi-deletion curve is summarised by k_half, the smallest
number of deleted blocks at which the mean damage reaches 0.5. A net that diverged in training has no
finite weights: it is not lesioned, so it counts for no arch, and the report names it (cell, step,
last finite loss).

Smoothness rule (summary.json "smoothness", judged on the residual nets; the plain nets' curve is
judged alike for contrast). Veit et al. §4.2: "deleting increasing numbers of residual modules
increases error smoothly" (Fig. 5(a)). The curve is m(k): the mean test error over every random set
of k deleted blocks of every net, with m(0) the mean intact error, at k = 0 and every measured k.
Its spread se(k) is the standard error of that mean (sample std of the pooled errors / sqrt(count),
0 for one value), so the scatter between random sets and between seeds both count. Points a < b
differ beyond the spread when |m(b) - m(a)| > tol(a, b) = max(2 sqrt(se(a)^2 + se(b)^2), FLOOR),
FLOOR = 0.005 (0.5 pp). In this order:
    insufficient  fewer than MIN_KS (4) measured k besides k = 0: too few points to tell a curve
                  from a step
    no_rise       m(k_max) - m(0) <= tol(0, k_max): nothing rises, so there is no shape to judge
    not_monotone  some step falls beyond the spread: m(b) < m(a) - tol(a, b)
    cliff         some step carries more than CLIFF (half) of the whole rise per deleted block:
                  (m(b) - m(a)) / (b - a) > CLIFF * (m(k_max) - m(0))
    smooth        otherwise: non-decreasing within the spread, and no single deleted block makes
                  most of the rise
Why these margins: an ensemble of many paths loses members a few at a time, so its error climbs in
many comparable steps, while a chain breaks at one threshold (a plain net reaches chance at k = 1).
A straight rise over n steps gives each step 1/n of it; a curve shaped like Veit et al.'s Fig. 5(a)
(6.4% intact, about 20% at k = 10, "a severe drop in performance" by k = 20, rising ever faster)
gives its steepest step about a tenth; a step carrying more than half is a threshold, not a slope,
and four steps are the fewest for which "half" tells the two apart. The falls forgiven are noise:
each k draws its own random sets, so neighbouring means scatter by their standard errors (2 of them
is a two-sided 95% band), and never by less than 0.5 pp (one test image of 355 on `digits` is 0.28
pp).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from reslab.report import figures
from reslab.report.html import Page, fmt_mean_std, fmt_pct, join_values
from reslab.studies.stats import mean_std
from reslab.training import runs

ARCHS = ("plain", "residual")
LESIONS = "lesions.json"  # what the study measured: {"nets": [...], "diverged": [...]}
ROBUST, BROKEN = 0.1, 0.5
MIN_KS, FLOOR, CLIFF = 4, 0.005, 0.5  # the smoothness rule (module docstring)
SMOOTH_RULE = (
    f"m(k) = mean error over the random sets of k deleted blocks (k = 0: intact); smooth if at "
    f"least {MIN_KS} ks are measured, m rises by more than tol = max(2 * combined standard error, "
    f"{FLOOR}), no step falls by more than tol, and no step carries more than {CLIFF:.0%} of the "
    "whole rise per deleted block"
)
_LABELS = {
    "shown": ("ensemble-like: shown", "good"),
    "not_shown": ("residual net is fragile", "warn"),
    "plain_robust_too": ("plain net is robust too", "warn"),
    "residual_robust": ("residual robust (no plain net)", "neutral"),
    "insufficient": ("insufficient measurements", "neutral"),
}
_SMOOTH_HEADS = {
    "smooth": "Smooth",
    "cliff": "Not smooth, a cliff",
    "not_monotone": "Not smooth, the error falls",
    "no_rise": "No rise to judge",
    "insufficient": "Cannot judge the shape",
}


def _read(study_dir: Path) -> tuple[dict, list[dict], list[dict]]:
    """(study.json, the lesioned nets, the diverged nets); none yet while the study is training."""
    path, study = study_dir / LESIONS, study_dir / runs.STUDY
    if not path.is_file() and not study.is_file():
        raise FileNotFoundError(
            f"not a lesion study folder (no {runs.STUDY}, no {LESIONS}): {study_dir}"
        )
    lesions = runs.read_json(path) if path.is_file() else {}
    record = runs.read_json(study) if study.is_file() else {}
    return record, lesions.get("nets", []), lesions.get("diverged", [])


def _damage(net: dict, error: float) -> float:
    chance = 1 - 1 / net["num_classes"]
    span = chance - net["intact_error"]
    return (error - net["intact_error"]) / span if span > 0 else math.inf


def arch_stats(nets: list[dict], arch: str) -> dict | None:
    """Single- and multi-deletion statistics of all nets of one arch, or None if there are none."""
    nets = [n for n in nets if n["arch"] == arch]
    if not nets:
        return None
    single = [(n, s) for n in nets for s in n["single"] if s["error"] is not None]
    damage = [_damage(n, s["error"]) for n, s in single]
    rise = [s["error"] - n["intact_error"] for n, s in single]
    worst = max(single, key=lambda ns: ns[1]["error"], default=(None, None))[1]
    by_k: dict[int, list[tuple[float, float]]] = {}
    for n in nets:
        for m in n["multi"]:
            by_k.setdefault(m["k"], []).extend((e, _damage(n, e)) for e in m["errors"])
    multi = [
        {
            "k": k,
            "n": len(v),
            "error_mean": float(np.mean([e for e, _ in v])),
            "error_std": float(np.std([e for e, _ in v])),
            "damage_mean": float(np.mean([d for _, d in v])),
        }
        for k, v in sorted(by_k.items())
    ]
    k_half = next((m["k"] for m in multi if m["damage_mean"] >= 0.5), None)
    return {
        "arch": arch,
        "nets": len(nets),
        "models": sorted({n["model"] for n in nets}),
        "blocks": max(n["blocks"] for n in nets),
        "deletable": len({s["block"] for _, s in single}),
        "intact_error_mean": float(np.mean([n["intact_error"] for n in nets])),
        "single_error_median": float(np.median([s["error"] for _, s in single]))
        if single
        else None,
        "single_error_max": worst["error"] if worst else None,
        "worst_block": worst["block"] if worst else None,
        "single_rise_median": float(np.median(rise)) if rise else None,
        "single_damage_median": float(np.median(damage)) if damage else None,
        "multi": multi,
        "k_half": k_half,
        "max_k": multi[-1]["k"] if multi else None,
    }


def verdict(nets: list[dict], diverged: Sequence[dict] = ()) -> dict:
    """Judge the study from the measured errors only (rule in the module docstring); the nets that
    diverged in training are named in the text."""
    res, plain = arch_stats(nets, "residual"), arch_stats(nets, "plain")
    if res is None or res["single_damage_median"] is None:
        status = "insufficient"
    elif res["single_damage_median"] > ROBUST:
        status = "not_shown"
    elif plain is None or plain["single_damage_median"] is None:
        status = "residual_robust"
    else:
        status = "shown" if plain["single_damage_median"] >= BROKEN else "plain_robust_too"
    unlike = unlike_arms(nets)
    return {
        "status": status,
        "text": _sentence(status, res, plain) + _unlike_clause(unlike) + _diverged_clause(diverged),
        "unlike": unlike,
        "rule": f"damage = (error - intact) / (chance - intact); residual robust if median single-"
        f"deletion damage <= {ROBUST}; plain broken if >= {BROKEN}",
        "robust": ROBUST,
        "broken": BROKEN,
        "residual": res,
        "plain": plain,
    }


def unlike_arms(nets: list[dict]) -> dict:
    """What, besides the shortcuts, differs between the residual and the plain nets: {"blocks":
    {arch: [counts]}} where their block counts differ, {"recipe": {setting: {arch: [values]}}} for
    every training setting (run config less model and seed) the arms do not share. Nets recorded
    without a recipe (older folders) leave the recipe unknown ("recipe_known": False)."""
    by = {a: [n for n in nets if n["arch"] == a] for a in ARCHS}
    out: dict = {"blocks": {}, "recipe": {}, "recipe_known": True}
    if not all(by.values()):
        return out
    blocks = {a: sorted({n["blocks"] for n in ns}) for a, ns in by.items()}
    if blocks["plain"] != blocks["residual"]:
        out["blocks"] = blocks
    if not all("recipe" in n for n in nets):
        return out | {"recipe_known": False}
    keys = sorted({k for n in nets for k in n["recipe"]})
    for k in keys:
        values = {a: _distinct(n["recipe"].get(k) for n in ns) for a, ns in by.items()}
        if values["plain"] != values["residual"]:
            out["recipe"][k] = values
    return out


def _distinct(values) -> list:
    seen = []
    for v in values:
        if v not in seen:
            seen.append(v)
    return seen


def _unlike_clause(u: dict) -> str:
    parts = []
    if u["blocks"]:
        b = u["blocks"]
        parts.append(
            f"depth ({join_values(b['residual'])} residual blocks against {join_values(b['plain'])} "
            "plain blocks)"
        )
    if u["recipe"]:
        settings = "; ".join(
            f"{k}: residual {join_values(v['residual'])}, plain {join_values(v['plain'])}"
            for k, v in u["recipe"].items()
        )
        parts.append(f"training recipe ({settings})")
    if not parts:
        return ""
    return (
        f" Not like for like: the residual and plain nets differ in {' and '.join(parts)}, not "
        "in their shortcuts alone."
    )


def error_curve(nets: list[dict], arch: str) -> list[tuple[int, float, float]]:
    """(k, mean error, its standard error) of one arch, from k = 0 (the intact nets) over every
    measured k; the errors of every random set of every net are pooled."""
    by_k = {0: [n["intact_error"] for n in nets if n["arch"] == arch]}
    if not by_k[0]:
        return []
    for n in (n for n in nets if n["arch"] == arch):
        for m in n["multi"]:
            by_k.setdefault(m["k"], []).extend(m["errors"])
    return [
        (k, float(np.mean(v)), float(np.std(v, ddof=1) / math.sqrt(len(v))) if len(v) > 1 else 0.0)
        for k, v in sorted(by_k.items())
    ]


def smoothness(nets: list[dict], arch: str = "residual") -> dict:
    """Judge the shape of one arch's multi-deletion curve by the smoothness rule (module docstring).

    "steepest" is the step with the largest rise per deleted block; "worst_fall" the step closest to
    failing the fall test (its fall minus its tolerance is the largest)."""
    pts = error_curve(nets, arch)
    out: dict[str, Any] = {"arch": arch, "ks": [k for k, _, _ in pts[1:]], "rise": None}
    out["steepest"] = None
    out |= {"worst_fall": None, "status": "insufficient"}
    if len(pts) - 1 < MIN_KS:
        return out

    def tol(a: tuple, b: tuple) -> float:
        return max(2 * math.hypot(a[2], b[2]), FLOOR)

    (_, m0, _), (k1, m1, _) = pts[0], pts[-1]
    steps = list(itertools.pairwise(pts))
    a, b = max(steps, key=lambda ab: (ab[1][1] - ab[0][1]) / (ab[1][0] - ab[0][0]))
    rise = m1 - m0
    share = (b[1] - a[1]) / (b[0] - a[0]) / rise if rise > 0 else None
    fa, fb = max(steps, key=lambda ab: ab[0][1] - ab[1][1] - tol(*ab))  # closest to failing
    out |= {
        "intact": m0,
        "k_max": k1,
        "error_at_k_max": m1,
        "rise": rise,
        "rise_tolerance": tol(pts[0], pts[-1]),
        "steepest": {"from": a[0], "to": b[0], "rise": b[1] - a[1], "share_per_block": share},
        "worst_fall": {"from": fa[0], "to": fb[0], "fall": fa[1] - fb[1], "tolerance": tol(fa, fb)},
    }
    if rise <= tol(pts[0], pts[-1]):
        out["status"] = "no_rise"
    elif fa[1] - fb[1] > tol(fa, fb):
        out["status"] = "not_monotone"
    elif share is not None and share > CLIFF:  # share is a number: rise > tolerance > 0
        out["status"] = "cliff"
    else:
        out["status"] = "smooth"
    return out


def _smooth_clause(s: dict) -> str:
    arch, st = s["arch"], s["status"]
    if st == "insufficient":
        return f"the {arch} error is measured at {len(s['ks'])} values of k, {MIN_KS} needed"
    span = f"{fmt_pct(s['intact'])} intact to {fmt_pct(s['error_at_k_max'])} at k = {s['k_max']}"
    step = s["steepest"]
    steepest = (
        f"its steepest step (k = {step['from']} → {step['to']}) carries "
        f"{step['share_per_block']:.0%} of the rise per deleted block (limit {CLIFF:.0%})"
    )
    if st == "no_rise":
        return (
            f"the {arch} error goes from {span}, within the spread "
            f"(tolerance {100 * s['rise_tolerance']:.2f} pp)"
        )
    if st == "not_monotone":
        f = s["worst_fall"]
        return (
            f"the {arch} error falls by {100 * f['fall']:.2f} pp from k = {f['from']} to {f['to']}, "
            f"beyond the spread (tolerance {100 * f['tolerance']:.2f} pp)"
        )
    return f"the {arch} error rises from {span}; {steepest}"


def smoothness_verdict(nets: list[dict]) -> dict:
    """summary.json's "smoothness": the residual curve's status, and the plain curve's for contrast."""
    res, plain = smoothness(nets, "residual"), smoothness(nets, "plain")
    text = f"{_SMOOTH_HEADS[res['status']]} (Veit et al. Fig. 5(a)): {_smooth_clause(res)}."
    if plain["ks"]:
        text += f" Plain net: {plain['status'].replace('_', ' ')}, {_smooth_clause(plain)}."
    return {
        "status": res["status"],
        "text": text,
        "rule": SMOOTH_RULE,
        "min_ks": MIN_KS,
        "floor": FLOOR,
        "cliff": CLIFF,
        "residual": res,
        "plain": plain,
    }


def _single_clause(arch: str, s: dict) -> str:
    return (
        f"deleting one block of the {arch} net moves its test error from {fmt_pct(s['intact_error_mean'])} "
        f"to a median {fmt_pct(s['single_error_median'])} (worst {fmt_pct(s['single_error_max'])}, "
        f"block {s['worst_block'] + 1}; median damage {s['single_damage_median']:.2f} of the way to chance)"
    )


def _k_clause(arch: str, s: dict) -> str:
    if not s["multi"]:
        return ""
    if s["k_half"] is None:
        return (
            f"the {arch} net stays below half-way to chance even with {s['max_k']} blocks deleted"
        )
    return (
        f"the {arch} net reaches half-way to chance at k = {s['k_half']} of {s['deletable']} blocks"
    )


def _sentence(status: str, res: dict | None, plain: dict | None) -> str:
    if status == "insufficient":
        return "Cannot judge: no residual net with a deletable block was lesioned (yet)."
    assert res is not None  # judged: a residual net was lesioned
    parts = [_single_clause("residual", res)]
    if plain is not None and plain["single_damage_median"] is not None:
        parts.append(_single_clause("plain", plain))
    ks = "; ".join(
        c for c in (_k_clause("residual", res), plain and _k_clause("plain", plain)) if c
    )
    head = {
        "shown": "Ensemble-like behaviour shown: ",
        "not_shown": "Not shown, the residual net depends on single blocks: ",
        "plain_robust_too": "Residual robust, but so is the plain net: ",
        "residual_robust": "Residual net robust (no plain net to compare): ",
    }[status]
    return head + "; ".join(parts) + (f". Deleting random sets of k blocks, {ks}." if ks else ".")


def _diverged_name(d: dict) -> str:
    loss = d.get("last_finite_loss")
    last = f", last finite loss {loss:.4g}" if isinstance(loss, (int, float)) else ""
    return f"{Path(d['run_dir']).name} ({d['model']}, diverged at step {d['step']}{last})"


def _diverged_clause(diverged: Sequence[dict]) -> str:
    names = "; ".join(map(_diverged_name, diverged))
    return f" Not lesioned, diverged in training: {names}." if diverged else ""


# ---------------------------------------------------------------------------------------- summary


def write_summary(study_dir: str | Path) -> dict:
    """Judge lesions.json and write `<study_dir>/summary.json`; returns the summary dict."""
    study_dir = Path(study_dir)
    study, nets, diverged = _read(study_dir)
    summary: dict[str, Any] = {"study": "lesion"}
    summary.update({k: v for k, v in study.items() if k not in ("study", "verdict")})
    summary["nets"] = [
        {k: n[k] for k in ("run_dir", "model", "arch", "seed", "data", "blocks", "intact_error")}
        | {"trained_test_error": n.get("trained_test_error"), "test_images": n["test_images"]}
        for n in nets
    ]
    summary["diverged"] = diverged
    summary["verdict"] = verdict(nets, diverged)
    summary["smoothness"] = smoothness_verdict(nets)
    runs.write_json(study_dir / runs.SUMMARY, summary, strict=True)
    return summary


# ---------------------------------------------------------------------------------------- figures


def _chance(ax, nets: list[dict]) -> None:
    chance = 100 * (1 - 1 / nets[0]["num_classes"])
    ax.axhline(chance, color="#8a8f98", lw=1, ls=":", label="chance")


def plot_single(nets: list[dict], path: str | Path) -> Path:
    """Test error with each single block deleted (Veit et al. Fig. 3), plain vs residual; dashed lines:
    the intact nets; shaded: blocks that change the shape (not deletable in a plain net)."""
    with figures.style():
        fig, (ax,) = figures.figure(1, width=7.0, height=3.8)
        shaded = set()
        for arch in ARCHS:
            group = [n for n in nets if n["arch"] == arch]
            c = figures.ARCH_COLORS[arch]
            for j, n in enumerate(group):
                x = [s["block"] + 1 for s in n["single"]]
                y = [np.nan if s["error"] is None else 100 * s["error"] for s in n["single"]]
                label = f"{arch} ({n['model']}), one block deleted" if j == 0 else None
                lw, alpha = (1.8, 1.0) if len(group) == 1 else (1.0, 0.6)
                ax.plot(x, y, color=c, marker="o", ms=3, lw=lw, alpha=alpha, label=label)
                ax.axhline(100 * n["intact_error"], color=c, lw=1, ls="--", alpha=0.7)
                shaded |= {s["block"] + 1 for s in n["single"] if s["changes_shape"]}
        for b in sorted(shaded):
            ax.axvspan(b - 0.4, b + 0.4, color="#d9dde3", alpha=0.6, lw=0)
        if nets:
            _chance(ax, nets)
        ax.set_xlabel("deleted block")
        figures.percent_axis(ax, "test error")
        ax.set_ylim(bottom=0)
        if nets:
            ax.legend(loc="center right")
        ax.set_title("deleting one block at test time")
        return figures.save(fig, path)


def plot_multi(nets: list[dict], path: str | Path) -> Path:
    """Test error against the number of blocks deleted together (Veit et al. Fig. 5(a)): every random
    set as a faint dot, the mean ± std over sets and nets as a line and band; k = 0 is the intact net."""
    with figures.style():
        fig, (ax,) = figures.figure(1, width=6.0, height=3.8)
        for arch in ARCHS:
            s = arch_stats(nets, arch)
            if s is None:
                continue
            c = figures.ARCH_COLORS[arch]
            for n in (n for n in nets if n["arch"] == arch):
                for m in n["multi"]:
                    ax.scatter([m["k"]] * len(m["errors"]), 100 * np.array(m["errors"]),
                               color=c, s=6, alpha=0.2, lw=0)  # fmt: skip
            k = np.array([0] + [m["k"] for m in s["multi"]])
            mean = 100 * np.array([s["intact_error_mean"]] + [m["error_mean"] for m in s["multi"]])
            std = 100 * np.array([0.0] + [m["error_std"] for m in s["multi"]])
            ax.plot(
                k, mean, color=c, lw=2, marker="o", ms=3, label=f"{arch} ({', '.join(s['models'])})"
            )
            ax.fill_between(k, mean - std, mean + std, color=c, alpha=0.15, lw=0)
        if nets:
            _chance(ax, nets)
        ax.set_xlabel("number of blocks deleted (k)")
        figures.percent_axis(ax, "test error")
        ax.set_ylim(bottom=0)
        if nets:
            ax.legend(loc="lower right")
        ax.set_title("deleting random sets of k blocks")
        return figures.save(fig, path)


# ---------------------------------------------------------------------------------------- text + html


def _note(arch: str, s: dict | None) -> str:
    if s is None:
        return f"{arch}: no net lesioned"
    if s["single_damage_median"] is None:
        return f"{arch}: no deletable block"
    k = f"k_half = {s['k_half']}" if s["k_half"] is not None else f"k_half > {s['max_k']}"
    return (
        f"{arch}: intact {fmt_pct(s['intact_error_mean'])}, one block deleted: median "
        f"{fmt_pct(s['single_error_median'])} (rise {100 * s['single_rise_median']:+.2f} pp, damage "
        f"{s['single_damage_median']:.2f}), worst {fmt_pct(s['single_error_max'])}; {k}"
    )


def _per_block_rows(nets: list[dict]) -> list[list]:
    n_blocks = max((n["blocks"] for n in nets), default=0)
    rows = []
    for b in range(n_blocks):
        row: list = [b + 1]
        shape = any(s["changes_shape"] for n in nets for s in n["single"] if s["block"] == b)
        row.append("yes" if shape else "")
        for arch in ARCHS:
            errs = [
                s["error"]
                for n in nets
                if n["arch"] == arch
                for s in n["single"]
                if s["block"] == b and s["error"] is not None
            ]
            row.append(fmt_mean_std(*mean_std(errs)) if errs else "—")
        rows.append(row)
    return rows


def _what_was_run(nets: list[dict], diverged: list[dict]) -> str:
    images = nets[0]["test_images"] if nets else 0
    left_out = (
        f" {len(diverged)} more diverged in training and were not lesioned." if diverged else ""
    )
    return (
        f"{len(nets)} trained net(s) were evaluated on the test set ({images} images) intact, with "
        "every single block deleted, and with random sets of k blocks deleted together. Deleting a "
        "residual block keeps its shortcut (identity, or the option-A subsampling / projection where "
        "the shape changes, as Veit et al. keep the downsampling projection); deleting a plain block "
        f"passes its input to the next block, which is possible only where the shape is kept.{left_out}"
    )


def _write_html(
    study_dir: Path, summary: dict, nets: list[dict], single: Path, multi: Path
) -> Path:
    v, diverged = summary["verdict"], summary.get("diverged", [])
    label, tone = _LABELS[v["status"]]
    page = Page(
        "Lesion study: residual networks behave like ensembles",
        f"{study_dir.name} · {', '.join(sorted({n['data'] for n in nets}))} · Veit et al. 2016, Figures 3 and 5(a)",
    )
    smooth = summary["smoothness"]["text"]
    page.verdict(label, v["text"], tone, [*(_note(a, v[a]) for a in ("residual", "plain")), smooth])
    page.heading("Deleting one block").figure(
        single,
        "Test error with one block deleted, per block (solid) and of the intact net (dashed); red: plain, "
        "blue: residual. Grey bands: blocks that change the shape, which a plain net cannot skip.",
    )
    page.heading("Deleting several blocks").figure(
        multi,
        "Test error against the number of blocks deleted at once: dots are single random sets, lines the "
        "mean and bands ± one std over sets (and nets). Veit et al. see the residual error rise smoothly "
        f"(Fig. 5(a)); here: {summary['smoothness']['status'].replace('_', ' ')}.",
        max_width=760,
    )
    rows = [
        [n["model"], n["arch"], n["seed"], n["blocks"], fmt_pct(n["intact_error"]),
         fmt_pct(n.get("trained_test_error")), n["run_dir"]]
        for n in nets
    ] + [
        [d["model"], d["arch"], d["seed"], "—", "not lesioned", _diverged_name(d), d["run_dir"]]
        for d in diverged
    ]  # fmt: skip
    page.heading("Nets").table(
        ["model", "arch", "seed", "blocks", "intact error", "trained test error", "run"],
        rows,
        "Intact error is measured here in fp32; the trained test error is the training run's own. "
        "A net that diverged in training has no finite weights and is not lesioned.",
    )
    page.heading("Test error per deleted block").table(
        ["block", "changes shape", "plain", "residual"],
        _per_block_rows(nets),
        "Mean ± std over nets of an arch; — where the block cannot be deleted or no such net was run.",
    )
    page.heading("How the verdict is decided").paragraph(
        f"Damage = (error − intact error) / (chance error − intact error). The residual net counts as robust "
        f"if the median single-deletion damage is at most {ROBUST}; the plain net as broken if it is at "
        f"least {BROKEN}. Ensemble-like behaviour is shown when the residual net is robust and the plain "
        "net broken. k_half is the smallest number of deleted blocks whose mean damage reaches 0.5. "
        f"Smoothness of the multi-deletion curve: {SMOOTH_RULE}.",
        small=True,
    )
    skip = ("verdict", "smoothness", "nets", "diverged", "train", "recipe")
    recipe = summary.get("recipe") if isinstance(summary.get("recipe"), dict) else None
    page.setup(
        _what_was_run(nets, diverged), {k: x for k, x in summary.items() if k not in skip}, recipe
    )
    return page.write(study_dir / runs.REPORT)


def format_table(summary: dict) -> str:
    """The nets and the verdict as plain text, for the terminal."""
    v = summary["verdict"]
    head = f"{'model':<16}{'arch':<10}{'seed':>5}{'blocks':>8}  {'intact':>8}"
    lines = [head, "-" * len(head)]
    for n in summary["nets"]:
        lines.append(
            f"{n['model']:<16}{n['arch']:<10}{n['seed']:>5}{n['blocks']:>8}  {fmt_pct(n['intact_error']):>8}"
        )
    for d in summary.get("diverged", []):
        lines.append(f"{d['model']:<16}{d['arch']:<10}{d['seed']:>5}{'—':>8}  {_diverged_name(d)}")
    lines += ["", f"verdict: {v['status']}"]
    lines += [f"  {_note(a, v[a])}" for a in ("residual", "plain")]
    lines.append(v["text"])
    if "smoothness" in summary:  # absent from summaries written before it was judged
        lines += [
            "",
            f"smoothness: {summary['smoothness']['status']}",
            summary["smoothness"]["text"],
        ]
    return "\n".join(lines)


def build_report(study_dir: str | Path) -> Path:
    """Write summary.json, single.png, multi.png and report.html into `study_dir`; returns the report."""
    study_dir = Path(study_dir)
    summary = write_summary(study_dir)
    _, nets, _ = _read(study_dir)
    single = plot_single(nets, study_dir / "single.png")
    multi = plot_multi(nets, study_dir / "multi.png")
    return _write_html(study_dir, summary, nets, single, multi)
