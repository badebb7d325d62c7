"""The depth study: each arm's nets and recipe (no clipping, but in the +clip arms), a diverged run
recorded and named without stopping the study (and not retried), a rerun that adds cells only,
one-line errors for options only this study has, the replayed first step checked against the
engine's own first step, and a 1,000-layer norm-free residual MLP that learns at once."""

import dataclasses
import json
import math

import pytest
import torch
from safetensors.torch import load_file
from torch.nn import functional as F

from reslab.cli import main as cli
from reslab.data import Loader, load_dataset
from reslab.models import create_model
from reslab.studies.depth import ARM_MODELS, make_config, measure, run
from reslab.training import train
from reslab.training.build import augment_on, build_model, load_data


@pytest.mark.slow
def test_study_records_arms_and_divergence_and_a_rerun_adds_cells_only(tmp_path, capsys, browser):
    # Without gradient clipping (the recipe) a 200-layer plain net with batch norm meets exploding
    # gradients and its loss is NaN at the second step; the other cells train. Two processes, as the
    # default.
    arms = ("plain", "rezero", "rezero+clip")
    options = dict(out=str(tmp_path), name="div", arms=arms, iters=6, width=8, seeds=(0,))
    options |= dict(jobs=2, train=dict(eval_every=3))
    summary = run(make_config("digits", depths=(4, 200), **options))
    study = tmp_path / "div"
    by = {(r["arm"], r["depth"]): r for r in summary["runs"]}
    assert set(by) == {(a, d) for a in arms for d in (4, 200)}
    for (arm, _), r in by.items():
        config = json.loads((study / r["run_dir"] / "config.json").read_text())
        assert config["model_kwargs"] == {"width": 8, **ARM_MODELS[arm.removesuffix("+clip")][1]}
        assert config["grad_clip"] == (1.0 if arm.endswith("+clip") else 0.0)
        assert r["start_steps"] == 1 and r["start_loss"] > 0
        # the replayed first step is the run's own: the same first loss as the engine logged
        assert r["first_loss"] == pytest.approx(r["start_loss"], rel=1e-6), arm
    bad = by[("plain", 200)]
    assert bad["status"] == "diverged" and bad["diverged_at"] == 2
    assert bad["last_finite_step"] == 1 and bad["last_finite_loss"] > 0
    assert bad["final_train_loss"] is None and bad["first_grad_norm"] > 1e6  # exploding
    for cell in (("plain", 4), ("rezero", 4), ("rezero", 200), ("rezero+clip", 200)):
        assert by[cell]["status"] == "completed" and by[cell]["iters"] == 6, cell
    assert summary["verdict"]["deep"] == 200
    out = capsys.readouterr().out
    assert out.count("plain-200-s0") == 1 and "plain-200 (seed 0) diverged at step 2" in out
    loaded, total, dom = browser.figures(study / "report.html")
    assert loaded == total == 2
    assert "diverged at step 2 (last finite loss" in dom
    assert summary["verdict"]["text"] in dom.replace("&amp;", "&")

    # a rerun keeps the diverged run and the finished ones as they are and adds the new cell only
    runs = study / "runs"
    before = {p.name: (p / "summary.json").stat().st_mtime_ns for p in runs.iterdir()}
    replays = {p.name: p.stat().st_mtime_ns for p in (study / "first_step").iterdir()}
    again = run(make_config("digits", depths=(4, 8), **{**options, "arms": ("rezero",)}))
    assert {p.name: (p / "summary.json").stat().st_mtime_ns for p in runs.iterdir()} == {
        **before,
        "rezero-8-s0": (runs / "rezero-8-s0" / "summary.json").stat().st_mtime_ns,
    }
    now = {p.name: p.stat().st_mtime_ns for p in (study / "first_step").iterdir()}
    assert now.items() >= replays.items() and set(now) - set(replays) == {"rezero-8-s0.json"}
    record = json.loads((study / "study.json").read_text())
    assert record["depths"] == [4, 8, 200] and record["arms"] == list(arms)
    assert record["arm_models"]["plain"] == {"model": "plainmlp-D", "width": 8}
    assert record["recipe"]["grad_clip"] == 0.0 and record["clip"] == 1.0
    assert len(again["runs"]) == 7


@pytest.mark.parametrize(
    "args, message",
    [
        (["--depths", "3"], "depth"),
        (["--arms", "plain", "batchnorm"], "arms must be among"),
        (["--arms", "rezero+clipped"], "each also as <arm>+clip"),
        (["--clip", "0"], "clip must be > 0"),
        (["--family", "cifar", "--width", "8"], "width is an option of the mlp family"),
        (["--family", "cifar", "--width", "0", "--depths", "10"], "6n+2"),
    ],
)
def test_bad_options_are_one_line_errors(args, message, tmp_path, capsys):
    assert cli(["depth", *args, "--out", str(tmp_path)]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and message in err[0], err
    assert not any(tmp_path.iterdir())  # nothing written, nothing trained


def test_recipe_clips_nothing_but_the_clip_arms_and_the_arms_build_what_they_say():
    cfg = make_config("digits", depths=(10,))
    assert {"nonorm", "nonorm+clip", "plain+clip", "zeroinit", "rezero+clip", "fixup+clip"} <= set(
        cfg.arms
    )
    c = cfg.run_config("fixup", 10, 0)
    assert (c.model, c.model_kwargs) == (
        "resmlp-10",
        {"norm": "none", "branch_scale": "fixup", "width": 32},
    )
    assert c.lr_scales == {"bias": 0.1, "scale": 0.1}  # hongyi-zhang/Fixup's lr/10 groups
    assert all(cfg.run_config(a, 10, 0).lr_scales == {} for a in cfg.arms if "fixup" not in a)
    assert (c.lr, c.momentum, c.batch_size, c.schedule) == (0.02, 0.9, 128, "constant")
    assert (c.iters, c.grad_clip, c.log_every) == (60, 0.0, 1)
    clipped = cfg.run_config("fixup+clip", 10, 0)
    assert clipped.grad_clip == cfg.clip == 1.0 and clipped.run_name == "fixup+clip-10-s0"
    assert (clipped.model, clipped.model_kwargs) == (c.model, c.model_kwargs)
    assert cfg.cells()[0][0] == "fixup"  # the longest runs first
    # the arms against the models they build: residual is plain's twin at He init; zeroinit zeroes
    # each branch's last BN weight; nonorm has no norm and no branch scaling
    nets = {}
    for arm in ("plain", "residual", "zeroinit", "nonorm"):
        torch.manual_seed(0)
        nets[arm] = create_model(
            cfg.model_name(arm, 6), in_chans=1, img_size=8, **cfg.model_kwargs(arm)
        )
    norms = {
        a: [type(m).__name__ for m in n.modules() if "Norm" in type(m).__name__]
        for a, n in nets.items()
    }
    assert norms["nonorm"] == [] and len(norms["plain"]) == len(norms["residual"]) > 0
    p, r, z = (dict(nets[a].named_parameters()) for a in ("plain", "residual", "zeroinit"))
    assert p.keys() == r.keys() and all(torch.equal(p[k], r[k]) for k in p)  # same init
    assert all(not z[k].any() for k in z if k.endswith("bn2.weight"))
    assert all(r[k].all() for k in r if k.endswith("bn2.weight"))


def test_default_has_three_seeds_and_fits_a_cpu_while_digits_10k_goes_to_ten_thousand_layers():
    cfg, deep = make_config("digits"), make_config("digits-10k")
    assert cfg.seeds == deep.seeds == (0, 1, 2)
    assert cfg.depths == (10, 100, 1000) and deep.depths == (10, 100, 1000, 10000)
    assert cfg.arms == deep.arms and cfg.run_config("plain", 10, 0) == dataclasses.replace(
        deep.run_config("plain", 10, 0), out=cfg.run_config("plain", 10, 0).out
    )


def test_fixup_scalars_train_at_a_tenth_of_the_rate_as_the_official_code(tmp_path):
    # hongyi-zhang/Fixup cifar_train.py: SGD with the parameters named "bias" or "scale" in groups at
    # base_lr / 10. The study's fixup arm must make the engine's updates those of that optimizer,
    # here replayed step by step from the same init and mini-batches.
    cfg = make_config("digits", depths=(6,), width=8, iters=3, out=str(tmp_path), name="fx")
    c = cfg.run_config("fixup", 6, 0)
    assert train(dataclasses.replace(c, num_threads=1))["status"] == "completed"
    torch.manual_seed(c.seed)  # the engine's init
    train_data, _, _ = load_data(c)
    model = build_model(c, train_data).train()
    named = list(model.named_parameters())
    slow = [p for n, p in named if "bias" in n or "scale" in n]
    assert len(slow) == 2 * 5 + 3  # 4 scalar biases and a multiplier per block, 2 + fc.bias
    opt = torch.optim.SGD(
        [{"params": slow, "lr": c.lr / 10},
         {"params": [p for n, p in named if not ("bias" in n or "scale" in n)]}],
        lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay,
    )  # fmt: skip
    loader = Loader(train_data, c.batch_size, train=True, augment=augment_on(c), seed=c.seed)
    for (x, y), _ in zip(loader.epoch(0), range(c.iters), strict=False):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    engine = load_file(tmp_path / "fx" / "runs" / c.run_name / "model.safetensors")
    assert any(engine[n].ne(0).any() for n, _ in named if n.endswith("bias2b.bias"))  # they moved
    for n, p in named:
        torch.testing.assert_close(engine[n], p.detach(), rtol=1e-5, atol=1e-7, msg=n)


def _one_step_run(tmp_path, arm: str, depth: int):
    """(the run config of a one-step cell, the engine's first-step summary) for a width-8 net."""
    cfg = make_config(
        "digits", out=str(tmp_path), name="one", arms=(arm,), depths=(depth,), width=8, iters=1,
        train=dict(num_threads=1, eval_every=1),
    )  # fmt: skip
    c = cfg.run_config(arm, depth, 0)
    return c, train(c)


def test_first_step_is_the_engines_first_step(tmp_path):
    # The engine's first SGD update (momentum's buffer starts as the gradient, no weight decay) is
    # w1 = w0 - lr * g: its size over lr is the first gradient's norm, which the replay must give.
    c, summary = _one_step_run(tmp_path, "residual", 8)
    assert summary["status"] == "completed" and c.weight_decay == 0.0
    replay = measure.first_step(c)
    run_dir = tmp_path / "one" / "runs" / c.run_name
    first = [
        ln for ln in map(json.loads, (run_dir / "metrics.jsonl").open()) if ln["kind"] == "train"
    ]
    assert replay["loss"] == pytest.approx(first[0]["train_loss"], rel=1e-6)
    torch.manual_seed(c.seed)  # the engine's init, built here without the study's code
    net = create_model(c.model, in_chans=1, img_size=8, **c.model_kwargs)
    w0, w1 = dict(net.named_parameters()), load_file(run_dir / "model.safetensors")
    step = torch.cat([(w0[k].detach() - w1[k]).flatten() for k in w0])  # BN statistics left out
    assert replay["grad_norm"] == pytest.approx(step.double().norm().item() / c.lr, rel=1e-4)
    assert replay["grad_nonfinite"] == 0 and replay["grad_entries"] == len(step)
    assert replay["classes"] == 10


def test_first_step_names_an_overflow():
    # A 600-layer plain net with batch norm: the forward pass is finite (each layer renormalises),
    # the backward pass overflows fp32, as torch's own clipping sees it (an infinite or NaN norm).
    cfg = make_config("digits", depths=(10,), width=8)
    c = cfg.run_config("plain", 600, 0)
    r = measure.first_step(c)
    assert r["loss"] is not None and r["grad_norm"] is None and r["grad_nonfinite"] > 0
    torch.manual_seed(c.seed)
    d = load_dataset("digits", "train")
    model = create_model(c.model, in_chans=1, img_size=8, **c.model_kwargs)
    x = (d.images[:128].float() / 255 - d.mean[0]) / d.std[0]
    F.cross_entropy(model(x), d.labels[:128]).backward()
    assert not math.isfinite(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0).item())
    # a norm-free residual net at He init overflows in its forward pass already
    assert measure.first_step(cfg.run_config("nonorm", 600, 0))["loss"] is None


@pytest.mark.slow
@pytest.mark.parametrize("scale", ["rezero", "fixup"])
def test_thousand_layer_norm_free_mlp_learns_without_clipping(scale):
    d = load_dataset("digits", "train")
    x = (d.images[:128].float() / 255 - d.mean[0]) / d.std[0]  # (128, 1, 8, 8)
    y = d.labels[:128]
    torch.manual_seed(0)
    model = create_model(
        "resmlp-1000", in_chans=1, img_size=8, width=32, norm="none", branch_scale=scale
    )
    recipe = make_config("digits", depths=(10,)).run_config(scale, 10, 0)  # the study's
    assert recipe.grad_clip == 0.0  # no clipping, as the papers
    opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum)
    losses = []
    for _ in range(10):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(map(torch.isfinite, torch.tensor(losses)))
    assert sum(losses[-3:]) < 0.9 * sum(losses[:3]), losses  # falling beyond step noise
