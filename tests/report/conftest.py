"""Fake but real-format degradation study folders (CONTRACT: study.json + runs/<arch>-<depth>-s<seed>/ with
config.json, metrics.jsonl, summary.json), written with constructed numbers so no test trains anything."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

RECIPE = {"lr": 0.1, "batch_size": 128, "weight_decay": 0.0001, "momentum": 0.9}


def write_run(
    run_dir: Path, model: str, seed: int, train_err: float, test_err: float, iters: int,
    late: float | None = None, n_train: int = 1442,
) -> None:  # fmt: skip
    """One finished train run whose curves decay from ~90% error to the given final errors. With
    `late`, its evaluations also score the training set (the engine's eval_train), which then ends at
    `train_err` and was `late` at 90% of the run (a straight line over the last 20%)."""
    run_dir.mkdir(parents=True)
    lines = []
    for step in range(10, iters + 1, 10):
        decay = math.exp(-step / (iters / 5))
        err = train_err + (0.9 - train_err) * decay + 0.01 * math.sin(step + seed)
        lines.append(
            {
                "kind": "train",
                "step": step,
                "epoch": step / 50,
                "train_loss": 2 * err,
                "train_error": err,
                "lr": 0.1,
                "images_per_s": 1000.0,
                "time": step / 100,
            }
        )
        if step % 50 == 0 or (late is not None and step % 20 == 0):  # 20: one at 90%
            test = test_err + (0.9 - test_err) * decay
            lines.append(
                {
                    "kind": "eval",
                    "step": step,
                    "epoch": step / 50,
                    "test_loss": 2 * test,
                    "test_error": test,
                    "time": step / 100,
                }
            )
            if late is not None:
                t = max(0.0, step / iters - 0.8) / 0.1  # 0 up to 80%, 1 at 90%, 2 at the end
                fit = late + (train_err - late) * (t - 1)
                lines[-1].update(train_eval_error=max(0.0, fit), train_eval_n=n_train)
    lines.append(
        {
            "kind": "final",
            "step": iters,
            "train_loss": 2 * train_err,
            "train_error": train_err,
            "test_loss": 2 * test_err,
            "test_error": test_err,
            "test_top5_error": test_err / 4,
        }
    )
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(ln) + "\n" for ln in lines))
    (run_dir / "config.json").write_text(json.dumps({"model": model, "seed": seed, "iters": iters}))
    summary = {
        "name": run_dir.name, "model": model, "data": "digits", "params": 1000 * int(model.split("-")[-1]),
        "steps": iters, "status": "completed", "final_train_loss": 2 * train_err,
        "final_train_error": train_err, "final_test_loss": 2 * test_err, "final_test_error": test_err,
        "final_test_top5_error": test_err / 4, "time_s": 1.0, "images_per_s": 1000.0,
    }  # fmt: skip
    (run_dir / "summary.json").write_text(json.dumps(summary))


def write_study(
    root: Path, finals: dict[tuple[str, int], list[tuple]], iters: int = 200,
    name: str = "toy", with_kind: bool = True, fit_gate: float | None = None,
) -> Path:  # fmt: skip
    """A study folder under root/runs/degradation/<name>; finals[(arch, depth)] = [(train, test) or
    (train, test, late) per seed] (late: the training error at 90% of the run, see write_run)."""
    study_dir = root / "runs" / "degradation" / name
    study_dir.mkdir(parents=True)
    seeds = sorted({s for v in finals.values() for s in range(len(v))})
    study = {
        "data": "digits", "family": "cifar", "depths": sorted({d for _, d in finals}),
        "archs": sorted({a for a, _ in finals}), "seeds": seeds, "iters": iters, "recipe": RECIPE,
    }  # fmt: skip
    if with_kind:
        study = {"study": "degradation", **study}
    if fit_gate is not None:
        study["fit_gate"] = fit_gate
    (study_dir / "study.json").write_text(json.dumps(study))
    for (arch, depth), per_seed in finals.items():
        model = f"{'plain' if arch == 'plain' else 'resnet'}-{depth}"
        for seed, (train, test, *late) in enumerate(per_seed):
            write_run(
                study_dir / "runs" / f"{arch}-{depth}-s{seed}", model, seed, train, test, iters,
                *late,
            )  # fmt: skip
    return study_dir


# plain degrades with depth, residual improves: the paper's Figure 6 pattern
DEGRADES = {
    ("plain", 8): [(0.050, 0.080), (0.054, 0.083), (0.052, 0.081)],
    ("plain", 20): [(0.081, 0.110), (0.085, 0.112), (0.079, 0.108)],
    ("plain", 56): [(0.140, 0.170), (0.150, 0.176), (0.145, 0.171)],
    ("residual", 8): [(0.050, 0.080), (0.053, 0.082), (0.051, 0.080)],
    ("residual", 20): [(0.035, 0.070), (0.038, 0.071), (0.036, 0.069)],
    ("residual", 56): [(0.020, 0.060), (0.024, 0.062), (0.022, 0.061)],
}


@pytest.fixture
def degrades() -> dict:
    return DEGRADES


@pytest.fixture
def study_dir(tmp_path: Path) -> Path:
    return write_study(tmp_path, DEGRADES)


@pytest.fixture
def make_study(tmp_path: Path):
    """write_study bound to this test's tmp_path: make_study(finals, **kw) -> study folder."""
    return lambda finals, **kw: write_study(tmp_path, finals, **kw)
