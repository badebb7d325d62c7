"""The degradation study end to end at toy size, and resuming an interrupted study."""

import json
import signal
import subprocess
import sys
import time

import pytest

from reslab.studies.degradation import make_config, run

TOY = dict(
    depths=(2, 4),
    seeds=(0, 1),
    iters=30,
    width=16,
    jobs=1,
    train=dict(log_every=5, eval_every=10, num_threads=1),
)


def test_toy_study_writes_everything(tmp_path, capsys, browser):
    arms = ("plain", "residual", "zeroinit")  # the default's two judged arms and the extra one
    summary = run(make_config("digits", out=str(tmp_path), name="toy", archs=arms, **TOY))
    study = tmp_path / "toy"
    for f in ("study.json", "summary.json", "curves.png", "depth.png", "report.html"):
        assert (study / f).is_file(), f
    runs = summary["runs"]
    assert len(runs) == 12
    assert {(r["arch"], r["depth"], r["seed"]) for r in runs} == {
        (a, d, s) for a in ("plain", "residual", "zeroinit") for d in (2, 4) for s in (0, 1)
    }
    for r in runs:
        assert 0 <= r["final_train_error"] <= 1 and 0 <= r["final_test_error"] <= 1
        assert r["iters"] == 30 and r["params"] > 0
        assert (study / r["run_dir"] / "summary.json").is_file()
    assert isinstance(summary["verdict"], dict) and summary["verdict"]
    out = capsys.readouterr().out
    assert "report.html" in out and "plain" in out
    loaded, total, dom = browser.figures(study / "report.html")
    assert loaded == total == 2
    page = dom.replace("&amp;", "&")  # the verdict's sentence, then its facts as notes
    assert all(line in page for line in summary["verdict"]["text"].splitlines())


def test_judged_arms_differ_only_in_the_shortcuts():
    """Like for like: a plain cell and its residual twin share the recipe, seed and init; only the
    zeroinit arm zero-initialises its branches."""
    cfg = make_config("digits", depths=(4, 16), seeds=(3,), archs=("plain", "residual", "zeroinit"))
    plain, residual, zero = (cfg.run_config(a, 16, 3).to_dict() for a in cfg.archs)
    assert cfg.archs == ("plain", "residual", "zeroinit")
    differ = {k for k in plain if plain[k] != residual[k]}
    assert differ == {"model", "name"} and (plain["model"], residual["model"]) == (
        "plainmlp-16",
        "resmlp-16",
    )
    assert {k for k in residual if residual[k] != zero[k]} == {"model_kwargs", "name"}
    assert zero["model_kwargs"] == dict(residual["model_kwargs"], zero_init_residual=True)
    with pytest.raises(ValueError, match="zeroinit arm"):
        make_config("digits", residual_args={"zero_init_residual": True})


def test_bad_depth_fails_before_training(tmp_path):
    with pytest.raises(ValueError, match="depth"):
        make_config("digits", depths=(3,), out=str(tmp_path))
    assert not any(tmp_path.iterdir())


def test_changed_recipe_refuses_to_mix_with_existing_study(tmp_path):
    run(
        make_config("digits", out=str(tmp_path), name="s", **{**TOY, "depths": (2,), "seeds": (0,)})
    )
    with pytest.raises(ValueError, match="other settings"):
        run(
            make_config(
                "digits",
                out=str(tmp_path),
                name="s",
                **{**TOY, "depths": (2,), "seeds": (0,), "train": dict(TOY["train"], lr=0.5)},
            )
        )


@pytest.mark.slow
def test_rerun_after_interrupt_resumes(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "reslab",
        "degradation",
        "--depths",
        "2",
        "4",
        "--seeds",
        "0",
        "--iters",
        "600",
        "--width",
        "16",
        "--jobs",
        "1",
        "--log-every",
        "10",
        "--eval-every",
        "50",
        "--num-threads",
        "1",
        "--out",
        str(tmp_path),
        "--name",
        "r",
    ]
    runs = tmp_path / "r" / "runs"
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    # wait until one run is finished and the next has a checkpoint, then kill the study
    while time.time() < deadline and proc.poll() is None:
        done = list(runs.glob("*/summary.json"))
        started = [
            p
            for p in runs.glob("*/checkpoints/step-*")
            if not (p.parents[1] / "summary.json").exists()
        ]
        if done and started:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the study finished before it could be interrupted"
    finished = {p.parent.name: p.read_bytes() for p in runs.glob("*/summary.json")}
    assert finished
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    for name, before in finished.items():  # finished runs were skipped, not retrained
        assert (runs / name / "summary.json").read_bytes() == before
    resumed = [
        json.loads(p.read_text())
        for p in runs.glob("*/summary.json")
        if p.parent.name not in finished
    ]
    assert any(s.get("resumed_from") for s in resumed), (
        "the interrupted run continued from its checkpoint"
    )
    assert (tmp_path / "r" / "report.html").is_file()
