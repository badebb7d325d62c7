"""`--config FILE` and `--print-config` (issue 28): a recipe replays from a file, flags override it,
what a command would run is printed before it runs, and a study's help shows its preset's values."""

from __future__ import annotations

import json

import pytest

from reslab.cli import main
from reslab.training import TrainConfig, resolve


def _printed(capsys, *args: str) -> dict:
    assert main([*args, "--print-config"]) == 0
    return json.loads(capsys.readouterr().out)


def test_train_print_config_is_the_resolved_recipe_and_replays(tmp_path, capsys):
    cfg = _printed(capsys, "train", "--preset", "paper", "--model", "resnet110", "--lr", "0.05")
    want = resolve("paper", model="resnet110", lr=0.05)
    assert TrainConfig.from_dict(cfg) == want
    assert cfg["warmup_until_error"] == 0.8 and cfg["iters"] == 64000  # the preset's, resolved
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(cfg))
    assert _printed(capsys, "train", "--config", str(path)) == cfg  # replayed as it was
    again = _printed(capsys, "train", "--config", str(path), "--seed", "3", "--model-arg", "x=1")
    assert again == {**cfg, "seed": 3, "model_kwargs": {"x": 1}}  # the flags win
    assert not list(tmp_path.glob("runs"))  # nothing ran


def test_a_run_folders_config_json_is_a_config_file(tmp_path, capsys):
    run = tmp_path / "config.json"
    run.write_text(json.dumps(TrainConfig(model="resmlp-4", iters=7, name="r").to_dict()))
    cfg = _printed(capsys, "train", "--config", str(run), "--name", "again")
    assert (cfg["model"], cfg["iters"], cfg["name"]) == ("resmlp-4", 7, "again")


def test_yaml_and_flag_spellings(tmp_path, capsys):
    pytest.importorskip("yaml")
    path = tmp_path / "c.yaml"
    path.write_text("model: resmlp-4\nbatch-size: 32\nmodel-arg: {width: 16}\nmilestones: [0.3]\n")
    cfg = _printed(capsys, "train", "--config", str(path))
    assert (cfg["batch_size"], cfg["model_kwargs"], cfg["milestones"]) == (32, {"width": 16}, [0.3])


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"lrr": 0.1}', "unknown option 'lrr'"),
        ('{"lr": "fast"}', "lr must be a number, got 'fast'"),
        ('{"deterministic": 1}', "deterministic must be true or false"),
        ('{"preset": "fast"}', "unknown preset 'fast'"),
        ("[1, 2]", "should hold a mapping of options, got list"),
        ("{", "is not valid JSON"),
    ],
)
def test_a_bad_config_file_is_one_line(text, message, tmp_path, capsys):
    path = tmp_path / "bad.json"
    path.write_text(text)
    assert main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert main(["train", "--config", str(tmp_path / "none.json")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_study_print_config_replays_and_takes_engine_options(tmp_path, capsys):
    cfg = _printed(capsys, "degradation", "--depths", "2", "4", "--lr", "0.05")
    assert cfg["depths"] == [2, 4] and cfg["train"]["lr"] == 0.05
    assert cfg["train"]["iters"] == 1980 and cfg["train"]["warmup_iters"] == 99  # paper-digits
    assert "model" not in cfg["train"] and "seed" not in cfg["train"]  # each cell sets them
    path = tmp_path / "study.json"
    path.write_text(json.dumps(cfg))
    assert _printed(capsys, "degradation", "--config", str(path)) == cfg
    flat = tmp_path / "flat.json"  # study and engine options side by side, as flags give them
    flat.write_text('{"seeds": [5], "weight-decay": 0.0, "train": {"momentum": 0.5}}')
    got = _printed(capsys, "degradation", "--config", str(flat), "--momentum", "0.8")
    assert (got["seeds"], got["train"]["weight_decay"], got["train"]["momentum"]) == ([5], 0, 0.8)
    bad = tmp_path / "bad.json"
    bad.write_text('{"model": "resnet20"}')  # a study sets each run's model itself
    assert main(["degradation", "--config", str(bad)]) == 2
    assert "unknown option 'model'" in capsys.readouterr().err


def test_study_help_shows_the_presets_values_not_the_engines(capsys):
    with pytest.raises(SystemExit):
        main(["degradation", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert (
        "--warmup-iters WARMUP_ITERS iterations at --warmup-lr before the schedule starts (default: 99)"
        in out
    )
    assert "(default: 'paper-digits')" not in out  # the engine preset is resolved, not named
    assert (
        "--augment AUGMENT pad-4 random crop + flip: auto (on for CIFAR-like data), on, off (default: 'off')"
        in out
    )
