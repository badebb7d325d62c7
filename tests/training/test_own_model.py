"""What timm and Lightning users expect of the engine (issue 28): any nn.Module trains, a model family
registers from user code, `train` gives back the trained model, `evaluate` takes public inputs, a
log without a progress bar gets one line per evaluation, a run can be made longer, and every run
writes its metrics as CSV and its config and final numbers as TensorBoard hparams."""

from __future__ import annotations

import csv
import pickle

import pytest
import torch
from torch import nn

import reslab
from reslab.data import load_dataset
from reslab.models import registry
from reslab.training import TrainConfig, runs, train
from reslab.training.optim import lr_at

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _cfg(tmp_path, **kw) -> TrainConfig:
    base = dict(
        data="digits", iters=20, lr=0.05, batch_size=64, log_every=10, eval_every=10,
        out=str(tmp_path), progress=False, num_threads=1,
    )  # fmt: skip
    return TrainConfig(**{**base, **kw})


def _tutorial_net() -> nn.Module:
    """The tutorial's own plain net (8x8 digits), made residual by to_residual."""
    layers = [nn.Flatten(), nn.Linear(64, 32), nn.ReLU()]
    for _ in range(4):
        layers += [nn.Linear(32, 32), nn.BatchNorm1d(32), nn.ReLU()]
    layers += [nn.Linear(32, 10)]
    return reslab.to_residual(
        nn.Sequential(*layers), every=2, example_input=torch.zeros(2, 1, 8, 8)
    )


def test_any_module_trains_in_place_and_comes_back_with_the_summary(tmp_path):
    torch.manual_seed(0)
    net = _tutorial_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    r = train(_cfg(tmp_path), model=net)
    assert r.model is net and not net.training  # trained in place, as Trainer.fit(model)
    assert any(not torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert r["name"] == "ResidualSequential-digits-s0" and r["status"] == "completed"
    assert runs.read_config(r.run_dir)["model"] == "ResidualSequential"
    # the returned model scores as the run's own final evaluation did, on every public input
    test = load_dataset("digits", "test")
    want = r["final_test_error"]
    assert reslab.evaluate(r.model, "digits")["error"] == pytest.approx(want)
    assert reslab.evaluate(r.model, test, 64)["error"] == pytest.approx(want)
    assert reslab.evaluate(r.model, (test.images, test.labels))["error"] == pytest.approx(want)
    x = (test.images.float() / 255 - torch.tensor(test.mean).view(1, -1, 1, 1)) / torch.tensor(
        test.std
    ).view(1, -1, 1, 1)
    assert reslab.evaluate(r.model, (x, test.labels), 100)["error"] == pytest.approx(want)
    # a summary still: it pickles as the plain dict a study's worker sends back
    assert type(pickle.loads(pickle.dumps(r))) is dict
    # reslab cannot rebuild a custom module: load_run says how to load it instead
    with pytest.raises(ValueError, match=r"reslab.load_weights\(module"):
        reslab.load_run(r.run_dir)
    # a finished run, asked for again: its weights loaded into the module given, nothing trained
    again = train(_cfg(tmp_path, resume=True), model=_tutorial_net())
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in again.model.state_dict().items())


def test_a_module_that_does_not_fit_the_data_is_refused_in_one_line(tmp_path):
    with pytest.raises(ValueError, match=r"cannot take digits's 1x8x8 images"):
        train(_cfg(tmp_path), model=nn.Linear(10, 10))
    with pytest.raises(ValueError, match=r"logits of shape \(2, 10\)"):
        train(_cfg(tmp_path), model=nn.Sequential(nn.Flatten(), nn.Linear(64, 3)))
    with pytest.raises(ValueError, match="model_kwargs"):
        train(_cfg(tmp_path, model_kwargs={"width": 8}), model=_tutorial_net())
    assert not list(tmp_path.iterdir())  # nothing written


def test_evaluate_refuses_tensors_it_cannot_read():
    model = reslab.create_model("resmlp-4", in_chans=1, img_size=8)
    with pytest.raises(ValueError, match="int64"):
        reslab.evaluate(model, (torch.zeros(4, 1, 8, 8), torch.zeros(4)))
    with pytest.raises(ValueError, match="uint8 or floating"):
        reslab.evaluate(model, (torch.zeros(4, 1, 8, 8, dtype=torch.int32), torch.zeros(4).long()))


@pytest.fixture
def user_registry(monkeypatch):
    """The registry as it is, restored after the test (a registered model stays in this process)."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


def test_register_model_adds_a_family_that_trains_and_loads_back(tmp_path, user_registry):
    @reslab.register_model
    def tiny_mlp(num_classes=10, in_chans=3, img_size=32, width=32):
        h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
        return nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_chans * h * w, width),
            nn.ReLU(),
            nn.Linear(width, num_classes),
        )

    assert "tiny_mlp" in reslab.list_models()
    assert reslab.create_model("tiny_mlp", width=8)[1].out_features == 8
    r = train(_cfg(tmp_path, model="tiny_mlp", model_kwargs={"width": 16}))
    model, cfg = reslab.load_run(r.run_dir)  # rebuilt by name, with the run's sizes and options
    assert model[1].in_features == 64 and model[1].out_features == 16 and cfg.model == "tiny_mlp"
    assert reslab.evaluate(model, "digits")["error"] == pytest.approx(r["final_test_error"])
    with pytest.raises(ValueError, match="unknown option"):
        reslab.create_model("tiny_mlp", depth=3)
    with pytest.raises(ValueError, match="lowercase"):
        reslab.register_model(lambda num_classes, in_chans, img_size: None)
    with pytest.raises(ValueError, match="built-in model name"):

        @reslab.register_model
        def resnet20(num_classes, in_chans, img_size): ...

    with pytest.raises(ValueError, match="lacks img_size"):

        @reslab.register_model
        def sizeless(num_classes, in_chans): ...


def test_a_log_without_a_bar_gets_a_line_per_evaluation(tmp_path, capsys):
    train(_cfg(tmp_path, name="a"))
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("a  step")]
    assert [x.split()[2] for x in lines] == ["10/20", "20/20"]  # the curve point, the final one
    assert all(w in lines[-1] for w in ("lr ", "loss ", "train error ", "test error ", " img/s")), (
        lines
    )
    train(_cfg(tmp_path, name="b", log_lines=False))  # what a study asks for
    assert "step" not in capsys.readouterr().out


def test_a_run_resumed_with_more_iterations_goes_on_with_the_longer_schedule(tmp_path):
    cfg = _cfg(tmp_path, name="r", iters=20, schedule="cosine")
    first = train(cfg)
    with pytest.warns(UserWarning, match=r"scheduled for 20 steps and goes on to 40: from step 20"):
        longer = train(_cfg(tmp_path, name="r", iters=40, schedule="cosine", resume=True))
    assert longer["steps"] == 40 and longer["resumed_from"] == "step-00000020"
    assert lr_at(20, 40, cfg) == pytest.approx(0.025)  # half-way down the new cosine
    lines = runs.read_metrics(tmp_path / "r")
    assert [x["step"] for x in lines if x["kind"] == "final"] == [40]  # the old final line is gone
    assert runs.read_config(tmp_path / "r")["iters"] == 40
    assert runs.read_json(tmp_path / "r" / "summary-20.json") == dict(first)  # kept, not lost
    with pytest.raises(ValueError, match="longer, not shorter"):
        train(_cfg(tmp_path, name="r", iters=30, schedule="cosine", resume=True))


def test_metrics_csv_and_tensorboard_hparams(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    r = train(_cfg(tmp_path, model="resmlp-4", name="m"))
    with open(tmp_path / "m" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows == [
        {k: ("" if v is None else str(v)) for k, v in row.items()}
        for row in [dict.fromkeys(rows[0]) | line for line in runs.read_metrics(tmp_path / "m")]
    ]
    assert rows[-1]["kind"] == "final" and float(rows[-1]["test_error"]) == r["final_test_error"]
    events = EventAccumulator(str(tmp_path / "m"))
    events.Reload()
    hparams = events.PluginTagToContent("hparams")
    assert b"weight_decay" in hparams["_hparams_/session_start_info"]  # the config
    assert b"final/test_error" in hparams["_hparams_/experiment"]  # the metrics shown beside it
    assert events.Scalars("final/test_error")[0].value == pytest.approx(r["final_test_error"])


def test_on_a_terminal_the_bar_shows_the_last_test_error_and_no_lines(monkeypatch, capsys):
    import sys

    from reslab.training.bookkeeping import Progress
    from reslab.training.distributed import Dist

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    progress = Progress(TrainConfig(name="t"), Dist(0, 1, torch.device("cpu")), total=10, step=0)
    line = dict(train_loss=0.5, train_error=0.25, lr=0.1, images_per_s=1000.0)
    progress.train_line(line)
    progress.eval_line(5, {"test": {"error": 0.123}})
    assert not progress.bar.disable and "test_err=12.3%" in progress.bar.postfix
    assert "err=25.0%" in progress.bar.postfix
    progress.close()
    assert "step" not in capsys.readouterr().out  # the bar, not lines
