"""The depth study: each arm's nets and recipe, a diverged run recorded and named without stopping the
study (and not retried), a rerun that adds cells only, one-line errors for options only this study
has, and a 1,000-layer norm-free residual MLP that learns at once."""

import json
import time

import pytest
import torch
from torch.nn import functional as F

from reslab.cli import main as cli
from reslab.data import load_dataset
from reslab.models import create_model
from reslab.studies.depth import ARM_MODELS, PRESETS, make_config, run


@pytest.mark.slow
def test_study_records_arms_and_divergence_and_a_rerun_adds_cells_only(tmp_path, capsys, browser):
    # Without gradient clipping a 200-layer plain net with batch norm meets exploding gradients and
    # its loss is NaN at the second step; the other cells train. Two processes, as the default.
    options = dict(out=str(tmp_path), name="div", arms=("plain", "rezero"), iters=6, width=8)
    options |= dict(jobs=2, train=dict(grad_clip=0.0, eval_every=3))
    summary = run(make_config("digits", depths=(4, 200), **options))
    study = tmp_path / "div"
    by = {(r["arm"], r["depth"]): r for r in summary["runs"]}
    assert set(by) == {(a, d) for a in ("plain", "rezero") for d in (4, 200)}
    for (arm, _), r in by.items():
        config = json.loads((study / r["run_dir"] / "config.json").read_text())
        assert config["model_kwargs"] == {"width": 8, **ARM_MODELS[arm][1]}
        assert config["grad_clip"] == 0.0 and r["start_steps"] == 1 and r["start_loss"] > 0
    bad = by[("plain", 200)]
    assert bad["status"] == "diverged" and bad["diverged_at"] == 2
    assert bad["last_finite_step"] == 1 and bad["last_finite_loss"] > 0
    assert bad["final_train_loss"] is None
    for cell in (("plain", 4), ("rezero", 4), ("rezero", 200)):
        assert by[cell]["status"] == "completed" and by[cell]["iters"] == 6, cell
    assert summary["verdict"]["deep"] == 200
    out = capsys.readouterr().out
    assert out.count("plain-200-s0") == 1 and "diverged at step 2" in out
    loaded, total, dom = browser.figures(study / "report.html")
    assert loaded == total == 2
    assert "diverged at step 2 (last finite loss" in dom
    assert summary["verdict"]["text"] in dom.replace("&amp;", "&")

    # a rerun keeps the diverged run and the finished ones as they are and adds the new cell only
    runs = study / "runs"
    before = {p.name: (p / "summary.json").stat().st_mtime_ns for p in runs.iterdir()}
    again = run(make_config("digits", depths=(4, 8), **{**options, "arms": ("rezero",)}))
    assert {p.name: (p / "summary.json").stat().st_mtime_ns for p in runs.iterdir()} == {
        **before,
        "rezero-8-s0": (runs / "rezero-8-s0" / "summary.json").stat().st_mtime_ns,
    }
    record = json.loads((study / "study.json").read_text())
    assert record["depths"] == [4, 8, 200] and record["arms"] == ["plain", "rezero"]
    assert record["arm_models"]["plain"] == {"model": "plainmlp-D", "width": 8}
    assert len(again["runs"]) == 5


@pytest.mark.parametrize(
    "args, message",
    [
        (["--depths", "3"], "depth"),
        (["--arms", "plain", "batchnorm"], "arms must be among"),
        (["--family", "cifar", "--width", "8"], "width is an option of the mlp family"),
        (["--family", "cifar", "--width", "0", "--depths", "10"], "6n+2"),
    ],
)
def test_bad_options_are_one_line_errors(args, message, tmp_path, capsys):
    assert cli(["depth", *args, "--out", str(tmp_path)]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and message in err[0], err
    assert not any(tmp_path.iterdir())  # nothing written, nothing trained


def test_preset_recipe_is_the_engines_digits_recipe_with_clipping():
    cfg = make_config("digits", depths=(10,))
    c = cfg.run_config("fixup", 10, 0)
    assert (c.model, c.model_kwargs) == (
        "resmlp-10",
        {"norm": "none", "branch_scale": "fixup", "width": 32},
    )
    assert (c.lr, c.momentum, c.batch_size, c.schedule) == (0.02, 0.9, 128, "constant")
    assert (c.iters, c.grad_clip, c.log_every) == (60, PRESETS["digits"]["train"]["grad_clip"], 1)
    assert cfg.cells()[0][0] == "fixup"  # the longest runs first


@pytest.mark.slow
@pytest.mark.parametrize("scale", ["rezero", "fixup"])
def test_thousand_layer_norm_free_mlp_learns_in_seconds(scale):
    d = load_dataset("digits", "train")
    x = (d.images[:128].float() / 255 - d.mean[0]) / d.std[0]  # (128, 1, 8, 8)
    y = d.labels[:128]
    t0 = time.perf_counter()
    torch.manual_seed(0)
    model = create_model(
        "resmlp-1000", in_chans=1, img_size=8, width=32, norm="none", branch_scale=scale
    )
    recipe = make_config("digits", depths=(10,)).run_config(scale, 10, 0)  # the study's
    opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum)
    losses = []
    for _ in range(10):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        opt.step()
        losses.append(loss.item())
    assert all(map(torch.isfinite, torch.tensor(losses)))
    assert sum(losses[-3:]) < 0.9 * sum(losses[:3]), losses  # falling beyond step noise
    assert time.perf_counter() - t0 < 30  # about 2 s on one core
