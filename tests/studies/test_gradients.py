"""The gradients study: its measures against independent computations, its verdict, its judgement of
the two claims (He et al. 2015 vs the study note) and its like-for-like check on constructed numbers,
and what only this study does (init-only measurement of a diverged net, adding depths).
The toy run end to end, the report rebuilt from the folder and the CLI are tested for every study in
test_every_study.py."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reslab import create_model
from reslab.studies.gradients import MEASUREMENTS, STUDY, make_config, run
from reslab.studies.gradients.claims import claims, profile
from reslab.studies.gradients.measure import (
    autocorrelation,
    gradient_norms,
    init_digest,
    line_gradients,
    neighbour_correlation,
)
from reslab.studies.gradients.report import format_table, like_for_like
from reslab.studies.gradients.rule import combine, verdict
from reslab.training import runs


def _tiny(name: str):
    """A tiny net and two random batches; (model, batches, prefix) where prefix(x) is the input of
    the first block, written out by hand from the model's parts."""
    torch.manual_seed(0)
    if "mlp" in name:
        model = create_model(name, num_classes=5, in_chans=1, img_size=4, width=8)
        prefix = lambda x: model.stem(x.flatten(1))  # noqa: E731
        x_shape = (16, 1, 4, 4)
    else:
        model = create_model(name, num_classes=5, in_chans=3)
        prefix = lambda x: torch.relu(model.bn1(model.conv1(x)))  # noqa: E731
        x_shape = (4, 3, 8, 8)
    batches = [(torch.randn(*x_shape), torch.randint(0, 5, (x_shape[0],))) for _ in range(2)]
    return model.train(), batches, prefix


@pytest.mark.parametrize("name", ["plainmlp-6", "resmlp-6", "plain-8", "resnet-8"])
def test_gradient_norms_match_direct_autograd(name):
    model, batches, prefix = _tiny(name)
    got = gradient_norms(model, batches)

    # weight layers: each weight's gradient on its own, from a fresh forward pass
    if "mlp" in name:
        names = ["stem.0", *[f"layers.{i}.fc{j}" for i in range(2) for j in (1, 2)], "fc"]
    else:
        names = ["conv1", *[f"layer{s}.0.conv{j}" for s in (1, 2, 3) for j in (1, 2)], "fc"]
    assert got["weight_names"] == names
    want = []
    for n in names:
        weight = model.get_submodule(n).weight
        norms = [
            torch.autograd.grad(F.cross_entropy(model(x), y), weight)[0].norm() for x, y in batches
        ]
        want.append(torch.stack(norms).mean().item())
    np.testing.assert_allclose(got["weight_norms"], want, rtol=1e-5)

    # block inputs: run the net up to block l without autograd, make that activation a leaf,
    # and differentiate the rest of the forward pass with respect to it
    blocks = model.residual_blocks()
    want = []
    for i in range(len(blocks)):
        norms = []
        for x, y in batches:
            with torch.no_grad():
                a = prefix(x)
                for b in blocks[:i]:
                    a = b(a)
            a.requires_grad_()
            h = a
            for b in blocks[i:]:
                h = b(h)
            loss = F.cross_entropy(model.forward_head(h), y)
            norms.append(torch.autograd.grad(loss, a)[0].norm())
        want.append(torch.stack(norms).mean().item())
    np.testing.assert_allclose(got["block_input_norms"], want, rtol=1e-5)
    assert len(want) == len(blocks) > 0


def test_line_gradients_match_finite_differences():
    torch.manual_seed(0)
    model = create_model("resmlp-6", num_classes=3, in_chans=1, img_size=4, width=8).double()
    model.eval()
    x_a, x_b = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    g, grads = line_gradients(model, x_a, x_b, unit=2, points=9, chunk=4)
    assert g.shape == (9,) and grads.shape == (9, 16)
    h = 1e-6

    def f(t: float) -> float:
        with torch.no_grad():
            return model((x_a + t * (x_b - x_a))[None])[0, 2].item()

    fd = [(f(t + h) - f(t - h)) / (2 * h) for t in np.linspace(0, 1, 9)]
    np.testing.assert_allclose(g.numpy(), fd, rtol=1e-5, atol=1e-8)
    with pytest.raises(ValueError, match="eval mode"):
        line_gradients(model.train(), x_a, x_b, unit=0, points=4)


def test_autocorrelation_against_numpy():
    rng = np.random.default_rng(0)
    white = rng.standard_normal(256)
    brown = np.cumsum(white)  # a random walk: the paper's "brown noise"
    for seq in (white, brown):
        s = seq - seq.mean()
        full = np.correlate(s, s, mode="full")[len(s) - 1 :] / (s @ s)
        np.testing.assert_allclose(autocorrelation(torch.tensor(seq), 10).numpy(), full[:11])
    assert abs(autocorrelation(torch.tensor(white), 1)[1]) < 0.2
    assert autocorrelation(torch.tensor(brown), 1)[1] > 0.9
    assert torch.equal(autocorrelation(torch.ones(8), 3), torch.ones(4, dtype=torch.float64))


def test_neighbour_correlation_against_numpy():
    grads = torch.randn(6, 20, generator=torch.Generator().manual_seed(0))
    want = np.mean([np.corrcoef(grads[i], grads[i + 1])[0, 1] for i in range(5)])
    assert neighbour_correlation(grads) == pytest.approx(want, abs=1e-12)
    row = torch.randn(20)
    assert neighbour_correlation(torch.stack([row, -row, row])) == pytest.approx(-1.0)


@pytest.mark.slow
def test_toy_measures_each_net_and_a_rerun_adds_a_depth(tmp_path):
    toy = {**STUDY.toy, "depths": (2,)}
    summary = run(make_config("digits", out=str(tmp_path), name="toy", **toy))
    study = tmp_path / "toy"
    assert {(n["arch"], n["depth"]) for n in summary["nets"]} == {("plain", 2), ("residual", 2)}
    before = (study / "runs" / "plain-2-s0" / runs.SUMMARY).read_bytes()

    # a rerun may add a depth (finished runs are not retrained), not change the measurement
    again = run(make_config("digits", out=str(tmp_path), name="toy", **{**toy, "depths": (4,)}))
    assert {(n["arch"], n["depth"]) for n in again["nets"]} == {
        (a, d) for a in ("plain", "residual") for d in (2, 4)
    }
    assert runs.read_json(study / runs.STUDY)["depths"] == [2, 4]
    assert (study / "runs" / "plain-2-s0" / runs.SUMMARY).read_bytes() == before
    for n in again["nets"]:
        assert n["train_status"] == "completed" and n["init"] and n["trained"]
        assert -1 <= n["init"]["acf1"] <= 1
        assert runs.is_finished(study / n["run_dir"])
    record = runs.read_json(study / MEASUREMENTS / "residual-4-s0.json")
    assert len(record["phases"]["init"]["weight_norms"]) == 4  # depth = weight layers
    assert len(record["phases"]["init"]["block_input_norms"]) == 1
    assert len(record["phases"]["trained"]["acf"]) == toy["max_lag"] + 1
    # like for like: same seed, recipe and initial weights in both arms, from the records alone
    assert again["like_for_like"]["status"] == "same"
    pairs = [(p["depth"], p["seed"]) for p in again["like_for_like"]["pairs"]]
    assert pairs == [(d, s) for d in (2, 4) for s in toy["seeds"]]
    # one net per arch, depth and seed, each measured on its own seed's batches and lines
    assert len(again["seed_nets"]) == 2 * 2 * len(toy["seeds"]) == len(list(study.glob("m*/*")))
    first = {(n["arch"], n["depth"], n["seed"]): n for n in again["seed_nets"]}
    assert first["plain", 2, 0]["init"]["loss"] != first["plain", 2, 1]["init"]["loss"]
    # the claims read each net's training error from its own run folder
    for n in again["seed_nets"]:
        run_error = runs.read_summary(study / n["run_dir"])["final_train_error"]
        cell = runs.cell_name(n["arch"], n["depth"], seed=n["seed"])
        assert again["claims"]["train_errors"][cell] == run_error
    assert again["claims"]["status"] in (
        "supports_he",
        "supports_note",
        "neither",
        "no_degradation",
    )
    assert f"claims ({again['claims']['status']})" in format_table(again)
    with pytest.raises(ValueError, match="other settings"):
        run(make_config("digits", out=str(tmp_path), name="toy", **{**toy, "iters": 6}))


def test_diverged_net_is_measured_at_init_only_and_named(tmp_path, capsys):
    toy = {**STUDY.toy, "depths": (2,), "archs": ("plain",)}
    toy["train"] = {**toy["train"], "lr": 1e30, "warmup_iters": 0}  # no warm-up at a small lr
    summary = run(make_config("digits", out=str(tmp_path), name="div", **toy))
    (net,) = summary["nets"]
    assert net["train_status"] == "diverged" and net["init"] and net["trained"] is None
    run_summary = runs.read_summary(tmp_path / "div" / net["run_dir"])
    assert run_summary["status"] == "diverged"
    # each seed's net, named with its step and last finite loss
    notes = [runs.diverged_note(d) for d in runs.run_dirs(tmp_path / "div")]
    assert len(notes) == len(STUDY.toy["seeds"]) and summary["verdict"]["diverged_notes"] == notes
    assert summary["verdict"]["status"] == "insufficient"  # as before: no residual net measured


def test_default_measures_three_seeds_after_the_papers_recipe_scaled():
    cfg = make_config("digits")
    assert cfg.seeds == (0, 1, 2) and cfg.iters == 1980
    cells = cfg.cells()
    assert len(cells) == 3 * 3 * 2 and {s for _, _, s in cells} == {0, 1, 2}
    c = cfg.run_config("plain", 128, 2)
    assert (c.seed, c.run_name, c.iters) == (2, "plain-128-s2", 1980)
    assert (c.lr, c.weight_decay, c.schedule, c.milestones) == (0.1, 1e-4, "step", (0.5, 0.75))
    assert (c.warmup_iters, c.warmup_lr) == (99, 0.01)


def test_bad_options_fail_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="depth"):
        make_config("digits", depths=(3,), out=str(tmp_path))
    with pytest.raises(ValueError, match="family"):
        make_config("digits", family="vgg", out=str(tmp_path))
    with pytest.raises(ValueError, match="points"):
        make_config("digits", points=8, max_lag=32, out=str(tmp_path))
    with pytest.raises(ValueError, match="one seed"):
        make_config("digits", seeds=(), out=str(tmp_path))
    assert not any(tmp_path.iterdir())


def _entry(arch, depth, first, last, acf1s=(0.5, 0.5), trained_ratio=None, seed=0):
    init = dict(
        loss=2.3,
        weight_ratio=first / last,
        block_input_ratio=1.0,
        acf1=float(np.mean(acf1s)),
        acf1_std=float(np.std(acf1s, ddof=1)),
        acf1_lines=len(acf1s),
        neighbour_corr=0.5,
    )
    trained = None if trained_ratio is None else dict(init, weight_ratio=trained_ratio)
    return dict(arch=arch, depth=depth, seed=seed, init=init, trained=trained)


def test_verdict_follows_the_numbers():
    shattered = [
        _entry("plain", 8, 1.0, 1.0, [0.90, 0.92]),
        _entry("plain", 64, 1e6, 1.0, [0.01, -0.02]),
        _entry("residual", 8, 1.0, 1.0, [0.95, 0.93]),
        _entry("residual", 64, 3.0, 1.0, [0.80, 0.84]),
    ]
    v = verdict(shattered)
    assert v.status == "shown"
    assert (
        v.numbers["drift"]["plain_orders"] == pytest.approx(6)
        and v.numbers["drift"]["plain_direction"] == "explode"
    )
    assert v.numbers["shattering"]["margin"] == pytest.approx((0.91 + 0.005) - (0.94 - 0.82))
    same = [dict(e, arch=a) for a in ("plain", "residual") for e in shattered[2:]]
    assert verdict(same).status == "not_shown"
    assert verdict(shattered[:2]).status == "insufficient"


@pytest.mark.parametrize(
    "ratio, want",
    [
        (0.0, "vanishing"),  # a first layer with no gradient at all
        (1e-6, "vanishing"),
        (1e-2, "vanishing"),  # exactly two orders below: vanishing
        (0.011, "borderline"),
        (0.099, "borderline"),
        (0.1, "healthy"),  # exactly one order: still healthy
        (1.0, "healthy"),
        (10.0, "healthy"),
        (11.0, "borderline"),
        (99.0, "borderline"),
        (100.0, "exploding"),
        (1e10, "exploding"),
        (math.inf, "exploding"),  # the last layer's gradient exactly zero
        (None, None),
        (math.nan, None),
    ],
)
def test_profile_classes_the_ratio_by_orders_of_magnitude(ratio, want):
    assert profile(ratio) == want


def _plain_pair(deep_init, deep_trained, shallow_error=0.01, deep_error=0.30):
    """Constructed numbers: plain and residual nets at 8 and 64 layers, the 64-layer plain net with
    first/last gradient ratios `deep_init` (at init) and `deep_trained` (after training)."""
    entries = [
        _entry("plain", 8, 1.0, 1.0, trained_ratio=1.2),
        _entry("plain", 64, deep_init, 1.0, trained_ratio=deep_trained),
        _entry("residual", 8, 1.0, 1.0, trained_ratio=1.0),
        _entry("residual", 64, 1.0, 1.0, trained_ratio=1.0),
    ]
    errors = {"plain-8": shallow_error, "plain-64": deep_error, "residual-8": 0.0}
    return entries, errors | {"residual-64": 0.005}


def test_claims_vanishing_profile_sides_with_the_note_but_names_no_cause():
    c = claims(*_plain_pair(1e-4, 1e-3))
    assert c["status"] == "supports_note"
    assert c["degradation"] == dict(
        shallow_depth=8,
        deep_depth=64,
        shallow_error=0.01,
        deep_error=0.30,
        increase=pytest.approx(0.29),
        margin=0.02,
        tolerance=0.02,  # one seed: no spread, the fixed margin alone
        pooled_std=0.0,
        shallow_errors={0: 0.01},
        deep_errors={0: 0.30},
        shown=True,
    )
    assert [c["profile"][p]["profile"] for p in ("init", "trained")] == ["vanishing"] * 2
    assert c["profile"]["init"]["ratio"] == 1e-4 and c["profile"]["trained"]["ratio"] == 1e-3
    # the claim is a co-occurrence, and the text says so: the disclaimer is the behaviour
    assert "do not show that the vanishing causes the degradation" in c["text"]
    assert "梯度消失则是导致网络退化的一个重要因素" in c["note"]["original"]
    assert "healthy norms with BN" in c["he_2015"]["quote"] and "§4.1" in c["he_2015"]["source"]


def test_claims_healthy_profile_sides_with_he_et_al():
    c = claims(*_plain_pair(3.0, 0.2))  # both phases within one order of the last layer
    assert c["status"] == "supports_he" and c["degradation"]["shown"]
    assert [c["profile"][p]["profile"] for p in ("init", "trained")] == ["healthy"] * 2
    assert "not tested here" in c["text"]  # the convergence-rate conjecture is not claimed


@pytest.mark.parametrize(
    "init, trained, want",
    [
        (2.0, 1e-3, "supports_note"),  # healthy at init, vanishing after training
        (1e-3, 2.0, "supports_note"),  # vanishing at init, healthy after training
        (1e4, 1.0, "neither"),  # exploding at init (batch norm), healthy after training
        (1e4, 0.03, "neither"),  # exploding, then borderline: no phase vanishes
        (0.05, 0.05, "neither"),  # borderline throughout: no call either way
    ],
)
def test_claims_mixed_profiles(init, trained, want):
    c = claims(*_plain_pair(init, trained))
    assert c["status"] == want
    calls = [c["profile"][p]["profile"] for p in ("init", "trained")]
    assert ("vanishing" in calls) == (want == "supports_note")  # no phase vanishes: not the note
    if want == "neither":  # ... and not every phase is healthy: not He et al.
        assert calls != ["healthy"] * 2
        assert (calls[0] == "exploding") == (init >= 100)  # the text cites Yang et al. 2019 then


def test_claims_need_degradation_and_two_trained_plain_nets():
    # a vanishing gradient without degradation tests neither claim (increase 1.9 pp < 2 pp)
    c = claims(*_plain_pair(1e-4, 1e-4, shallow_error=0.010, deep_error=0.029))
    assert c["status"] == "no_degradation" and not c["degradation"]["shown"]
    assert claims(*_plain_pair(1e-4, 1e-4), margin=0.5)["status"] == "no_degradation"
    entries, errors = _plain_pair(1e-4, 1e-4)
    assert claims(entries, errors | {"plain-64": None})["status"] == "insufficient"
    # the claims are about plain nets: the residual twins' numbers do not move them
    res = [e for e in entries if e["arch"] == "residual"]
    wild = [dict(e, init=dict(e["init"], weight_ratio=1e-9)) for e in res]
    plain = [e for e in entries if e["arch"] == "plain"]
    assert claims(plain + wild, errors) == claims(entries, errors)


def _seeds(deep_init, deep_errors, deep_trained=None, shallow_errors=(0.01, 0.01, 0.01)):
    """Constructed numbers of three seeds: plain and residual nets at 8 and 64 layers, the 64-layer
    plain net with the first/last gradient ratios `deep_init` (and `deep_trained`) per seed."""
    entries, errors = [], {}
    for seed, ratio in enumerate(deep_init):
        trained = None if deep_trained is None else deep_trained[seed]
        for e in (
            _entry("plain", 8, 1.0, 1.0, trained_ratio=1.0 if trained else None),
            _entry("plain", 64, ratio, 1.0, trained_ratio=trained),
            _entry("residual", 8, 1.0, 1.0),
            _entry("residual", 64, 1.0, 1.0),
        ):
            entries.append(e | {"seed": seed})
        errors |= {f"plain-8-s{seed}": shallow_errors[seed], f"plain-64-s{seed}": deep_errors[seed]}
    return entries, errors


def test_claims_call_a_profile_only_when_every_seed_has_it():
    c = claims(*_seeds([1e-4, 1e-3, 1e-5], [0.9, 0.9, 0.9]))
    assert c["status"] == "supports_note" and c["profile"]["init"]["profile"] == "vanishing"
    assert c["profile"]["init"]["ratio"] == pytest.approx(1e-4)  # the geometric mean
    assert c["profile"]["init"]["ratios"] == {0: 1e-4, 1: 1e-3, 2: 1e-5}
    assert c["profile"]["init"]["profiles"] == {0: "vanishing", 1: "vanishing", 2: "vanishing"}
    assert c["degradation"]["deep_errors"] == {0: 0.9, 1: 0.9, 2: 0.9}
    assert c["degradation"]["deep_error"] == pytest.approx(0.9)
    # one seed of three healthy: no call, so neither claim (loosening "every seed" fails here)
    mixed = claims(*_seeds([1e-4, 1e-4, 0.5], [0.9, 0.9, 0.9]))
    assert mixed["profile"]["init"]["profile"] == "mixed" and mixed["status"] == "neither"
    assert mixed["profile"]["init"]["profiles"] == {0: "vanishing", 1: "vanishing", 2: "healthy"}
    healthy = claims(*_seeds([0.5, 2.0, 3.0], [0.9] * 3, deep_trained=[1.0, 0.3, 5.0]))
    assert healthy["status"] == "supports_he"
    assert claims(*_seeds([0.5, 2.0, 3.0], [0.9] * 3, [1.0, 0.3, 50.0]))["status"] == "neither"


def test_degradation_must_clear_the_spread_over_seeds():
    # mean increase 4 pp, over the fixed 2 pp, but the deep seeds scatter by 6 pp: not shown
    c = claims(*_seeds([1e-4] * 3, [0.01, 0.02, 0.12]))
    d = c["degradation"]
    assert d["increase"] == pytest.approx(0.04) and d["margin"] == 0.02
    pooled = math.sqrt(2 * np.var([0.01, 0.02, 0.12], ddof=1) / 4)
    assert d["pooled_std"] == pytest.approx(pooled) and d["tolerance"] == pytest.approx(2 * pooled)
    assert not d["shown"] and c["status"] == "no_degradation"
    assert d["deep_errors"] == {0: 0.01, 1: 0.02, 2: 0.12}
    tight = claims(*_seeds([1e-4] * 3, [0.05, 0.05, 0.06]))
    assert tight["degradation"]["shown"] and tight["status"] == "supports_note"
    pooled = math.sqrt(np.var([0.05, 0.05, 0.06], ddof=1) / 2)  # 0.8 pp: the fixed 2 pp decides
    assert tight["degradation"]["pooled_std"] == pytest.approx(pooled)
    assert tight["degradation"]["tolerance"] == tight["degradation"]["margin"] == 0.02
    # a seed that did not train to completion leaves its depth's mean, not the depth
    entries, errors = _seeds([1e-4] * 3, [0.05, 0.05, 0.06])
    assert claims(entries, errors | {"plain-64-s2": None})["degradation"]["deep_errors"] == {
        0: 0.05,
        1: 0.05,
    }


def test_drift_is_shown_only_when_every_seed_shows_it():
    entries, _ = _seeds([1e6, 1e6, 3.0], [0.9] * 3)
    v = verdict(entries)
    assert not v.numbers["drift"]["shown"] and v.numbers["drift"]["seeds"] == [0, 1, 2]
    assert v.numbers["drift"]["orders_differences"] == pytest.approx([6, 6, math.log10(3)])
    assert v.numbers["drift"]["plain_ratios"] == [1e6, 1e6, 3.0]
    entries, _ = _seeds([1e6, 1e6, 1e3], [0.9] * 3)
    v = verdict(entries)
    assert v.numbers["drift"]["shown"] and v.numbers["drift"]["plain_ratio"] == pytest.approx(1e5)
    assert v.numbers["drift"]["seeds"] == [0, 1, 2]
    assert v.numbers["drift"]["orders_differences"] == pytest.approx([6, 6, 3])


def test_combine_pools_the_seeds_and_leaves_one_seed_as_it_is():
    one = _entry("plain", 8, 2.0, 1.0)
    assert combine([one]) == [{k: v for k, v in one.items() if k != "seed"}]
    two = [
        _entry("plain", 8, 1e2, 1.0, acf1s=[0.5, 0.7]) | {"seed": 0, "train_status": "completed"},
        _entry("plain", 8, 1e4, 1.0, acf1s=[0.1, 0.3]) | {"seed": 1, "train_status": "diverged"},
    ]
    for e in two:
        e["init"] |= {"first_weight_grad": e["init"]["weight_ratio"], "last_weight_grad": 1.0}
    (c,) = combine([dict(e, model="m", params=1, run_dir="r") for e in two])
    assert c["init"]["weight_ratio"] == pytest.approx(1e3) and c["train_status"] == "diverged"
    assert c["init"]["acf1"] == pytest.approx(0.4) and c["init"]["acf1_lines"] == 4
    assert c["init"]["acf1_std"] == pytest.approx(np.std([0.5, 0.7, 0.1, 0.3], ddof=1))


def test_init_digest_matches_a_tensor_by_tensor_comparison():
    def build(name, **kw):
        torch.manual_seed(0)
        return create_model(name, num_classes=5, in_chans=1, img_size=4, width=8, **kw)

    plain, res, zero = (
        build("plainmlp-6"),
        build("resmlp-6"),
        build("resmlp-6", zero_init_residual=True),
    )
    for other, digest_equal in ((res, True), (zero, False)):
        sa, sb = plain.state_dict(), other.state_dict()
        same = sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
        assert same == digest_equal == (init_digest(plain) == init_digest(other))
    with torch.no_grad():
        res.layers[1].fc2.weight[0, 0] += 1e-6  # one value, one ulp-scale change
    assert init_digest(res) != init_digest(plain)


def _pair_records(tmp_path, digests, seeds=(0, 0), lr=(0.1, 0.1)):
    """Measurement records of a plain and a residual 6-layer net and their run configs on disk."""
    records = []
    for arch, digest, seed, rate in zip(("plain", "residual"), digests, seeds, lr, strict=True):
        run_dir = tmp_path / "runs" / f"{arch}-6-s{seed}"
        run_dir.mkdir(parents=True)
        config = dict(model=f"{arch}-6", model_kwargs={}, seed=seed, lr=rate, name=run_dir.name)
        runs.write_json(run_dir / runs.CONFIG, config)
        record = dict(
            arch=arch, depth=6, seed=0, run_dir=f"runs/{run_dir.name}", init_digest=digest
        )
        records.append(record)
    return records


def test_like_for_like_on_constructed_records(tmp_path):
    same = like_for_like(tmp_path / "a", _pair_records(tmp_path / "a", ("x", "x")), {})
    pair = {"depth": 6, "seed": 0, "same_seed": True, "same_recipe": True, "same_init": True}
    assert same["status"] == "same" and same["pairs"] == [pair] and same["residual_args"] == {}
    differ = like_for_like(tmp_path / "b", _pair_records(tmp_path / "b", ("x", "y")), {})
    assert differ["status"] == "differs" and differ["pairs"] == [pair | {"same_init": False}]
    records = _pair_records(tmp_path / "c", ("x", "x"), seeds=(0, 1), lr=(0.1, 0.2))
    both = like_for_like(tmp_path / "c", records, {})
    assert both["status"] == "differs"
    assert both["pairs"] == [pair | {"same_seed": False, "same_recipe": False}]
    # an option on the residual arm only makes it its own, named arm, even with equal weights
    named = like_for_like(
        tmp_path / "d",
        _pair_records(tmp_path / "d", ("x", "x")),
        {"residual_args": {"zero_init_residual": True}},
    )
    assert named["status"] == "differs" and named["pairs"] == [pair]
    assert named["residual_args"] == {"zero_init_residual": True}
    old = like_for_like(tmp_path / "e", _pair_records(tmp_path / "e", (None, None)), {})
    assert old["status"] == "unknown" and old["pairs"] == [pair | {"same_init": None}]
    assert like_for_like(tmp_path, [], {})["status"] == "unknown"
