"""The depth study end to end at toy size through the CLI, diverged runs recorded without stopping the
study, one-line errors for bad options, and a 1,000-layer norm-free residual MLP that learns at once."""

import json
import time

import pytest
import torch
from torch.nn import functional as F

from reslab.cli import main as cli
from reslab.data import load_dataset
from reslab.models import create_model
from reslab.studies.depth import ARMS, DEFAULT_ARMS, PRESETS, make_config, run

TOY = ["--depths", "4", "6", "--iters", "12", "--width", "8", "--jobs", "1", "--eval-every", "6"]
TOY += ["--num-threads", "1"]


def test_toy_study_end_to_end_through_the_cli(tmp_path, capsys, browser):
    assert cli(["depth", *TOY, "--out", str(tmp_path), "--name", "toy"]) == 0
    study = tmp_path / "toy"
    for f in ("study.json", "summary.json", "depth.png", "curves.png", "report.html"):
        assert (study / f).is_file(), f
    summary = json.loads((study / "summary.json").read_text())
    assert {(r["arm"], r["depth"]) for r in summary["runs"]} == {
        (a, d) for a in DEFAULT_ARMS for d in (4, 6)
    }
    for r in summary["runs"]:
        assert r["status"] == "completed" and r["iters"] == 12 and r["start_steps"] == 1
        assert r["start_loss"] > 0 and r["final_train_loss"] > 0
        config = json.loads((study / r["run_dir"] / "config.json").read_text())
        assert config["model_kwargs"] == {"width": 8, **ARMS[r["arm"]][1]}
        assert config["grad_clip"] == PRESETS["digits"]["train"]["grad_clip"]
    assert summary["verdict"]["status"] in ("shown", "partly_shown", "not_shown")
    assert summary["verdict"]["deep"] == 6
    out = capsys.readouterr().out
    assert "verdict:" in out and "report.html" in out
    loaded, total, dom = browser.figures(study / "report.html")
    assert loaded == total == 2
    assert summary["verdict"]["text"] in dom.replace("&amp;", "&")

    # the report is rebuilt from the folder alone, with the same numbers
    for f in ("summary.json", "depth.png", "curves.png", "report.html"):
        (study / f).unlink()
    assert cli(["report", str(study)]) == 0
    assert json.loads((study / "summary.json").read_text())["runs"] == summary["runs"]

    # a rerun skips the finished runs and adds the new depth only
    before = (study / "runs" / "rezero-4-s0" / "summary.json").read_bytes()
    again = [*TOY[:3], "8", *TOY[3:]]
    assert cli(["depth", *again, "--arms", "rezero", "--out", str(tmp_path), "--name", "toy"]) == 0
    assert (study / "runs" / "rezero-4-s0" / "summary.json").read_bytes() == before
    assert (study / "runs" / "rezero-8-s0" / "summary.json").is_file()
    assert not (study / "runs" / "plain-8-s0").exists()


def test_diverged_runs_are_recorded_and_the_study_goes_on(tmp_path, capsys):
    # Without gradient clipping a 200-layer plain net with batch norm meets exploding gradients and
    # its loss is NaN at the second step; the other cells train. Two processes, as the default.
    cfg = make_config(
        "digits", out=str(tmp_path), name="div", arms=("plain", "rezero"), depths=(4, 200),
        iters=6, width=8, jobs=2, train=dict(grad_clip=0.0, eval_every=3),
    )  # fmt: skip
    summary = run(cfg)
    by = {(r["arm"], r["depth"]): r for r in summary["runs"]}
    assert len(by) == 4
    bad = by[("plain", 200)]
    assert bad["status"] == "diverged" and bad["diverged_at"] == 2
    assert bad["last_finite_step"] == 1 and bad["last_finite_loss"] > 0
    assert bad["final_train_loss"] is None
    for cell in (("plain", 4), ("rezero", 4), ("rezero", 200)):
        assert by[cell]["status"] == "completed", cell
    out = capsys.readouterr().out
    assert out.count("plain-200-s0") == 1 and "diverged at step 2" in out
    assert "diverged at step 2" in (tmp_path / "div" / "report.html").read_text()

    # a diverged run is not retried on a rerun
    path = tmp_path / "div" / "runs" / "plain-200-s0" / "summary.json"
    before = path.stat().st_mtime_ns
    run(cfg)
    assert path.stat().st_mtime_ns == before


@pytest.mark.parametrize(
    "args, message",
    [
        (["--depths", "3"], "depth"),
        (["--arms", "plain", "batchnorm"], "arms must be among"),
        (["--family", "cifar", "--width", "8"], "width is an option of the mlp family"),
        (["--family", "cifar", "--width", "0", "--depths", "10"], "6n+2"),
        (["--preset", "imagenet"], "unknown depth preset"),
    ],
)
def test_bad_options_are_one_line_errors(args, message, tmp_path, capsys):
    assert cli(["depth", *args, "--out", str(tmp_path)]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and message in err[0], err
    assert not any(tmp_path.iterdir())  # nothing written, nothing trained


@pytest.mark.parametrize("scale", ["rezero", "fixup"])
def test_thousand_layer_norm_free_mlp_learns_in_seconds(scale, tmp_path):
    d = load_dataset("digits", "train")
    x = (d.images[:128].float() / 255 - d.mean[0]) / d.std[0]  # (128, 1, 8, 8)
    y = d.labels[:128]
    t0 = time.perf_counter()
    torch.manual_seed(0)
    model = create_model(
        "resmlp-1000", in_chans=1, img_size=8, width=32, norm="none", branch_scale=scale
    )
    recipe = make_config("digits", depths=(10,)).run_config(scale, 10, 0, tmp_path)  # the study's
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
