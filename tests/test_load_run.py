"""A trained run loads back from its folder alone, normalised as it was trained (issue 28).

The reference is the training process's own final evaluation (summary.json). The run trains on a
600-image subset with `normalize="pixel-mean"`, so its mean image is not the whole training split's:
only the mean image recorded in the weights file gives back the run's own numbers to 1e-5.
"""

from __future__ import annotations

import json
import shutil
import warnings

import pytest
import safetensors
import safetensors.torch
import torch

import reslab
from reslab.cli import main
from reslab.data import Normalization, load_dataset, mean_image, train_val_split
from reslab.models import create_model, load_weights, read_metadata
from reslab.training import TrainConfig, runs, train
from reslab.training.trained import evaluate_weights

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(run folder, its summary) of a tiny pixel-mean run on a subset of digits."""
    out = tmp_path_factory.mktemp("runs")
    cfg = TrainConfig(
        model="resmlp-4", data="digits", iters=40, batch_size=64, log_every=10, train_subset=600,
        normalize="pixel-mean", out=str(out), name="pm", progress=False, num_threads=1,
    )  # fmt: skip
    return out / "pm", train(cfg)


def _printed(out: str) -> tuple[float, float]:
    """(loss, top-1 error) from a `reslab eval` line."""
    loss = float(out.split("loss ")[1].split(",")[0])
    return loss, float(out.split("top-1 error ")[1].split("%")[0]) / 100


def _without_normalization(src, dst):
    """A copy of weights file `src` as reslab saved it before it recorded the normalisation."""
    with safetensors.safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata())
    del meta["normalization"]
    safetensors.torch.save_file(safetensors.torch.load_file(src), dst, metadata=meta)
    return dst


def test_eval_of_a_run_folder_gives_the_runs_own_numbers(run, tmp_path, capsys):
    run_dir, s = run
    assert main(["eval", str(run_dir), "--num-threads", "1"]) == 0
    out, err = capsys.readouterr()
    assert "resmlp-4 on digits test (355 images, pixel-mean normalisation)" in out
    loss, error = _printed(out)
    assert loss == pytest.approx(s["final_test_loss"], abs=1e-4)
    assert error == pytest.approx(s["final_test_error"], abs=1e-4)
    assert "warning" not in err
    alone = shutil.copy(run_dir / runs.WEIGHTS, tmp_path / "pm.safetensors")  # no config.json
    assert main(["eval", "--weights", str(alone), "--num-threads", "1"]) == 0
    assert _printed(capsys.readouterr().out) == (loss, error)  # the weights file alone is enough


def test_load_run_then_evaluate(run):
    run_dir, s = run
    model, cfg = reslab.load_run(run_dir)
    assert cfg == TrainConfig.from_dict(json.loads((run_dir / runs.CONFIG).read_text()))
    assert not model.training and model.normalization.kind == "pixel-mean"
    r = reslab.evaluate(model, "digits", 128)
    assert r["loss"] == pytest.approx(s["final_test_loss"], rel=1e-5)
    assert r["error"] == pytest.approx(s["final_test_error"])
    assert r["n"] == 355
    # the mean image is the subset's, computed here from the images themselves
    _, subset = train_val_split(load_dataset("digits", "train"), 600, seed=0)
    want = subset.images.double().mean(0) / 255
    assert torch.allclose(model.normalization.mean.double(), want, atol=1e-6)
    assert not torch.allclose(mean_image(load_dataset("digits", "train")).double(), want, atol=1e-3)
    same, same_cfg = reslab.load_run(run_dir / runs.WEIGHTS)  # its weights file: same run
    assert same_cfg == cfg and torch.equal(same.normalization.mean, model.normalization.mean)


def test_contradicting_flags_warn_and_the_recorded_values_are_used(run, capsys):
    run_dir, s = run
    argv = ["eval", str(run_dir), "--normalize", "channel", "--model", "resnet20",
            "--model-arg", "shortcut=C", "--num-threads", "1"]  # fmt: skip
    with pytest.warns(UserWarning) as record:
        assert main(argv) == 0
    out = capsys.readouterr().out
    warned = [str(w.message) for w in record]
    assert len(warned) == 3 and not any("\n" in w for w in warned), warned
    assert "holds a resmlp-4; evaluating it, not --model resnet20" in warned[0]
    assert "built with its default options; evaluating it, not --model-arg shortcut=C" in warned[1]
    assert "trained with pixel-mean" in warned[2] and "not --normalize channel" in warned[2]
    assert _printed(out)[1] == pytest.approx(s["final_test_error"], abs=1e-4)
    with pytest.warns(UserWarning, match=r"evaluating with it, not --mean 0\.5, --std 0\.25"):
        r = evaluate_weights(run=str(run_dir), mean=[0.5], std=[0.25], num_threads=1)
    assert r["loss"] == pytest.approx(s["final_test_loss"], rel=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # flags that agree with the record say nothing
        evaluate_weights(run=str(run_dir), model="resmlp-4", normalize="pixel-mean", num_threads=1)


def test_load_weights_says_how_to_build_the_recorded_model(run):
    weights = run[0] / runs.WEIGHTS
    with pytest.raises(ValueError) as e:
        load_weights(create_model("resmlp-4"), weights)
    assert "\n" not in str(e.value)
    assert str(e.value).endswith(
        "it holds create_model('resmlp-4', num_classes=10, in_chans=1, img_size=(8, 8)): build "
        f"that, or load model and settings with reslab.load_run('{weights}')"
    )
    model = load_weights(create_model("resmlp-4", num_classes=10, in_chans=1, img_size=8), weights)
    assert model.normalization.data == "digits" and model.normalization.std == (1.0,)


def test_older_files_keep_working(run, tmp_path, capsys):
    """Weights saved before reslab recorded the normalisation: a run folder recomputes it from its
    config; a lone file takes --model and --normalize, as before, and is wrong without them."""
    run_dir, s = run
    old_run = shutil.copytree(run_dir, tmp_path / "old")
    _without_normalization(run_dir / runs.WEIGHTS, old_run / runs.WEIGHTS)
    assert "normalization" not in read_metadata(old_run / runs.WEIGHTS)
    assert main(["eval", str(old_run), "--num-threads", "1"]) == 0
    loss, error = _printed(capsys.readouterr().out)
    assert loss == pytest.approx(s["final_test_loss"], abs=1e-4)

    alone = _without_normalization(run_dir / runs.WEIGHTS, tmp_path / "alone.safetensors")
    r = evaluate_weights("resmlp-4", str(alone), num_threads=1)  # nothing recorded: per channel
    assert r["normalization"] == "channel"
    assert r["loss"] != pytest.approx(s["final_test_loss"], rel=1e-2)
    pth = tmp_path / "state.pth"  # no metadata at all, as torchvision's files
    torch.save(safetensors.torch.load_file(alone), pth)
    assert main(["eval", "--weights", str(pth), "--model", "resmlp-4", "--num-threads", "1"]) == 0
    assert _printed(capsys.readouterr().out) == pytest.approx((r["loss"], r["error"]), abs=1e-4)
    assert main(["eval", "--weights", str(pth)]) == 2
    assert "does not record its model; give it with --model" in capsys.readouterr().err


def test_a_folder_without_weights_and_a_bad_record_are_one_line_errors(run, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["eval", str(tmp_path / "empty")]) == 2
    assert "holds no model.safetensors" in capsys.readouterr().err
    assert main(["eval", str(run[0]), "--weights", str(run[0] / runs.WEIGHTS)]) == 2
    assert "not both" in capsys.readouterr().err
    src = run[0] / runs.WEIGHTS
    with safetensors.safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata())
    record = json.loads(meta["normalization"])
    bad = tmp_path / "bad.safetensors"
    for broken, message in [
        (
            {**record, "mean_image": record["mean_image"][:-8]},
            "mean_image holds 252 bytes, not the 256",
        ),
        ({**record, "shape": [3, 8, 8]}, "shape must be [C, H, W] with C = 1"),
        ({**record, "kind": "zca"}, "kind must be channel or pixel-mean, got 'zca'"),
        ({**record, "std": [0]}, "std must be > 0"),
    ]:
        meta["normalization"] = json.dumps(broken)
        safetensors.torch.save_file(safetensors.torch.load_file(src), bad, metadata=meta)
        assert main(["eval", str(bad)]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1
        assert f"{bad}: metadata normalization {message}" in err, err


def test_channel_normalization_round_trips(tmp_path):
    model = create_model("resnet-8", num_classes=3)
    norm = Normalization("cifar10", (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))
    path = reslab.save_weights(model, tmp_path / "w.safetensors", normalization=norm)
    assert read_metadata(path)["normalization"] == norm
    loaded, cfg = reslab.load_run(path)
    assert cfg is None and loaded.normalization == norm
    assert loaded.default_cfg["num_classes"] == 3
