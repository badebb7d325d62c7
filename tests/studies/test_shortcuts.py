"""Shortcut and activation variants (He et al. 2016, Figs. 2 and 4): each unit computes the paper's
formula (written out here by hand), every variant trains with falling loss, and the study runs end to
end through the training engine."""

import json
import math

import pytest
import torch
from torch.nn import functional as F

from reslab.cli import main as cli
from reslab.data import load_dataset
from reslab.models import create_model, variants
from reslab.studies.shortcuts import make_config, report, run

relu = torch.relu


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matrices on a shared 2-core machine: a second thread only contends for the cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


BASES = {  # name, build options, input
    "resmlp-8": (dict(in_chans=1, img_size=8, width=16), (1, 8, 8)),
    "resnet-8": (dict(in_chans=1), (1, 8, 8)),  # CIFAR units with option-A downsampling
}


def _unit(variant: str):
    torch.manual_seed(0)
    model = create_model(f"resmlp-6+{variant}", in_chans=1, img_size=4, width=8).eval()
    for m in model.modules():  # non-trivial eval-mode norms
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.bias.data.uniform_(-0.3, 0.3)
    return model.layers[-1]  # the last unit (the one with the extra activation in pre-act nets)


def _bn(bn, x):
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, eps=bn.eps)


def _by_hand(variant: str, u, x):
    """The units of He et al. 2016, Fig. 2 (a-f) and Fig. 4 (b-e), from the unit's own weights."""
    W1, W2, b1, b2 = u.fc1.weight, u.fc2.weight, u.bn1, u.bn2
    F_ = _bn(b2, relu(_bn(b1, x @ W1.T)) @ W2.T)  # F(x) of the original unit
    if variant in ("gate-exclusive", "gate-exclusive-b0", "gate-shortcut", "gate-shortcut-b0"):
        g = torch.sigmoid(x @ u.merge_paths.gate.weight.T + u.merge_paths.gate.bias)
    formulas = {
        "identity": lambda: relu(x + F_),
        "scale-both": lambda: relu(0.5 * x + 0.5 * F_),
        "scale-shortcut": lambda: relu(0.5 * x + F_),
        "gate-exclusive": lambda: relu((1 - g) * x + g * F_),
        "gate-exclusive-b0": lambda: relu((1 - g) * x + g * F_),
        "gate-shortcut": lambda: relu((1 - g) * x + F_),
        "gate-shortcut-b0": lambda: relu((1 - g) * x + F_),
        "conv-shortcut": lambda: relu(_bn(u.downsample[1], x @ u.downsample[0].weight.T) + F_),
        "dropout-shortcut": lambda: relu(0.5 * x + F_),  # eval: the expectation of the mask
        "bn-after-add": lambda: relu(_bn(b2, x + relu(_bn(b1, x @ W1.T)) @ W2.T)),
        "relu-before-add": lambda: x + relu(F_),
        "relu-preact": lambda: _final(u, x + _bn(b2, relu(_bn(b1, relu(x) @ W1.T)) @ W2.T)),
        "full-preact": lambda: _final(u, x + relu(_bn(b2, relu(_bn(b1, x)) @ W1.T)) @ W2.T),
    }
    return formulas[variant]()


def _final(u, y):  # the extra BN + ReLU after the last pre-activation unit's addition (§4.1)
    return relu(_bn(u.final[0], y))


@pytest.mark.parametrize("variant", list(variants.VARIANTS))
@torch.no_grad()
def test_unit_computes_the_papers_formula(variant):
    u = _unit(variant)
    x = torch.randn(6, 8)
    torch.testing.assert_close(u(x), _by_hand(variant, u, x), rtol=1e-5, atol=1e-6)
    v = variants.VARIANTS[variant]
    if v.gate_bias is not None:  # the paper's gate-bias init
        assert torch.all(u.merge_paths.gate.bias == v.gate_bias)


def test_identity_variant_is_the_registry_model():
    for base, (kw, shape) in BASES.items():
        torch.manual_seed(0)
        ref = create_model(base, **kw).eval()
        torch.manual_seed(0)
        model = create_model(f"{base}+identity", **kw).eval()
        assert list(model.state_dict()) != [] and set(model.state_dict()) == set(ref.state_dict())
        x = torch.randn(4, *shape)
        torch.testing.assert_close(model(x), ref(x), rtol=0, atol=0)
        assert create_model(f"{base}+identity", **kw).model_name == f"{base}+identity"


def test_dropout_shortcut_drops_half_of_the_shortcut_in_training():
    u = _unit("dropout-shortcut").train()
    x = torch.rand(200, 8) + 0.5
    s = u.merge_paths(x, torch.zeros_like(x), x)  # F = 0: only the masked shortcut is left
    kept = s / x
    assert set(kept.unique().tolist()) <= {0.0, 1.0}
    assert 0.4 < kept.mean().item() < 0.6


@pytest.fixture(scope="module")
def digits_batch():
    d = load_dataset("digits", "train")
    x = (d.images[:64].float() / 255 - d.mean[0]) / d.std[0]  # (64, 1, 8, 8)
    return x, d.labels[:64]


@pytest.mark.parametrize("base", list(BASES))
@pytest.mark.parametrize("variant", list(variants.VARIANTS))
def test_every_variant_trains_with_falling_loss(variant, base, digits_batch):
    x, y = digits_batch
    torch.manual_seed(0)
    model = create_model(f"{base}+{variant}", **BASES[base][0])
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(20):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(map(torch.isfinite, map(torch.tensor, losses)))
    assert sum(losses[-3:]) < 0.95 * sum(losses[:3]), losses  # falling beyond step noise


def test_bad_variants_and_bases_fail_before_training(tmp_path):
    # the variants' own errors are tested in tests/models/test_variants.py
    with pytest.raises(ValueError, match="unknown variant"):
        make_config("digits", variants=("identity", "nope"), out=str(tmp_path))
    with pytest.raises(ValueError, match="residual base net"):
        make_config("digits", base="plainmlp-6", out=str(tmp_path))
    assert not any(tmp_path.iterdir())


TOY = dict(base="resmlp-6", width=8, seeds=(0, 1), iters=12, num_threads=1)
TOY |= dict(train=dict(log_every=4, eval_every=6))


def test_study_trains_each_variant_and_a_rerun_adds_variants_only(tmp_path, capsys):
    chosen = ("identity", "scale-shortcut", "gate-shortcut", "full-preact")
    summary = run(make_config("digits", out=str(tmp_path), name="toy", variants=chosen, **TOY))
    study = tmp_path / "toy"
    for f in ("bars.png", "curves.png"):
        assert (study / f).is_file(), f
    assert {(r["variant"], r["seed"]) for r in summary["runs"]} == {
        (v, s) for v in chosen for s in (0, 1)
    }
    config = json.loads((study / "runs" / "gate-shortcut-s1" / "config.json").read_text())
    assert config["model"] == "resmlp-6+gate-shortcut" and config["seed"] == 1
    assert config["num_threads"] == 1 and config["model_kwargs"] == {"width": 8}
    groups = {g["variant"]: g for g in summary["verdict"]["groups"]}
    assert groups["identity"]["n"] == 2 and groups["full-preact"]["table"] == 2
    assert summary["verdict"]["status"] in ("shown", "identity_not_beaten", "identity_beaten")
    out = capsys.readouterr().out
    assert "Table 1" in out and "Table 2" in out

    # rerunning through the CLI skips the finished runs and adds the new variant only
    before = (study / "runs" / "identity-s0" / "summary.json").read_bytes()
    args = ["shortcuts", "--base", "resmlp-6", "--width", "8", "--seeds", "0", "1", "--iters", "12"]
    args += ["--num-threads", "1", "--log-every", "4", "--eval-every", "6", "--out", str(tmp_path)]
    args += ["--name", "toy", "--variants", "relu-preact", "identity"]
    assert cli(args) == 0
    assert (study / "runs" / "identity-s0" / "summary.json").read_bytes() == before
    assert (study / "runs" / "relu-preact-s1" / "summary.json").is_file()
    record = json.loads((study / "study.json").read_text())
    assert record["variants"] == [*chosen[:3], "relu-preact", "full-preact"]  # the paper's order


def test_diverged_runs_are_recorded_as_failed(tmp_path):
    cfg = make_config(
        "digits", out=str(tmp_path), name="div", variants=("identity", "scale-both"),
        **{**TOY, "seeds": (0,), "train": dict(TOY["train"], lr=1e12)},
    )  # fmt: skip
    summary = run(cfg)
    assert {r["status"] for r in summary["runs"]} == {"diverged"}
    assert summary["verdict"]["status"] == "insufficient"
    page = (tmp_path / "div" / "report.html").read_text()
    assert "identity-s0 at step" in page and "scale-both-s0 at step" in page


def _group(variant: str, errors: list[float | None]) -> dict:
    """A group_runs entry from per-seed test errors (None: that seed diverged)."""
    runs = [
        {"variant": variant, "seed": s, "status": "completed" if e is not None else "diverged",
         "model": None, "params": 1, "iters": 10, "final_train_error": e, "final_train_loss": e,
         "final_test_error": e, "run_dir": f"runs/{variant}-s{s}"}
        for s, e in enumerate(errors)
    ]  # fmt: skip
    return report.group_runs(runs)[0]


@pytest.mark.parametrize(
    "errors, call, margin",
    [
        ([0.20, 0.22, 0.21], "tied", 0.0),  # within max(2 x pooled std, 1 pp)
        ([0.30, 0.32, 0.31], "worse", 0.10),
        ([0.10, 0.12, 0.11], "better", -0.10),
        ([0.10, 0.12, None], "worse", None),  # one seed diverged: worse, whatever the others did
        ([None, None, None], "worse", None),
    ],
)
def test_comparison_with_identity(errors, call, margin):
    identity = _group("identity", [0.20, 0.22, 0.21])
    c = report.compare(identity, _group("gate-shortcut", errors))
    assert c["call"] == call
    assert c["margin"] == pytest.approx(margin, abs=1e-12) if margin is not None else True
    n = sum(e is not None for e in errors)
    std = _group("gate-shortcut", errors)["test_error_std"] or 0.0
    pooled = math.sqrt((2 * 0.01**2 + (n - 1) * std**2) / (2 + max(n - 1, 0)))
    assert c["pooled_std"] == pytest.approx(pooled)
    assert c["tolerance"] == pytest.approx(max(2 * pooled, report.FLOOR))


def test_verdict_statuses_on_constructed_numbers():
    def runs(errors: dict) -> list[dict]:
        return [
            {"variant": v, "seed": s, "status": "completed" if e is not None else "diverged",
             "model": None, "params": 1, "iters": 10, "final_train_error": e,
             "final_train_loss": e, "final_test_error": e, "run_dir": f"runs/{v}-s{s}"}
            for v, es in errors.items() for s, e in enumerate(es)
        ]  # fmt: skip

    ident = {"identity": [0.20, 0.21]}
    assert (
        report.verdict(runs({**ident, "scale-both": [0.4, 0.41], "scale-shortcut": [None, 0.5]}))[
            "status"
        ]
        == "shown"
    )
    assert report.verdict(runs({**ident, "scale-both": [0.2, 0.21]}))["status"] == (
        "identity_not_beaten"
    )
    assert report.verdict(runs({**ident, "scale-both": [0.1, 0.11]}))["status"] == "identity_beaten"
    assert report.verdict(runs({**ident, "full-preact": [0.1, 0.11]}))["status"] == "insufficient"
    assert report.verdict(runs({"identity": [None], "scale-both": [0.1]}))["status"] == (
        "insufficient"
    )
