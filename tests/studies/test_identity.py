"""The identity study: its checks of construction (zeroed branches are exact identities in fp32,
appended zero-init blocks keep every logit), its measurement compares like with like (the same
initial weights, no weight decay: decay alone turns a residual stack into the identity), the verdict
on constructed numbers, and what the toy study must show. The toy run end to end, the report rebuilt
from the folder and the CLI are tested for every study in test_every_study.py."""

from unittest.mock import ANY

import pytest
import torch

from reslab import create_model
from reslab.models import append_blocks, to_plain
from reslab.studies.identity import PLAIN, STUDY, ZERO_INIT, make_config, rule, run
from reslab.studies.identity.measure import (
    fresh_blocks,
    identity_stack,
    same_init,
    structural_check,
    zero_branches,
)
from reslab.studies.identity.rule import judge_append, judge_structure
from reslab.training import runs


def _io(model, x):
    """[(block, input, output)] of every block, and the logits, read with forward hooks."""
    seen = []
    hooks = [
        b.register_forward_hook(lambda m, a, o: seen.append((m, a[0].clone(), o.clone())))
        for b in model.residual_blocks()
    ]
    with torch.no_grad():
        logits = model(x)
    for h in hooks:
        h.remove()
    return seen, logits


CASES = [  # (model, overrides, zeroing method, input shape, what follows the addition)
    ("resmlp-8", {}, "norm", (32, 1, 8, 8), "relu"),
    ("resmlp-8", {"branch_scale": "rezero"}, "rezero", (32, 1, 8, 8), "nothing"),  # x + a relu(F)
    ("resmlp-8", {"norm": "none"}, "weights", (32, 1, 8, 8), "relu"),
    ("resnet-14", {}, "norm", (4, 3, 8, 8), "relu"),  # option A: two blocks change shape
    ("resnet-8", {"branch_scale": "skipinit"}, "skipinit", (4, 3, 8, 8), "relu"),
    ("preact_resnet-14", {}, "norm", (4, 3, 8, 8), "nothing"),  # signed block inputs
]


def _shortcut_by_hand(b, a):
    """What a zeroed block gives when its shortcut is not the identity, written out: option A
    subsamples and zero-pads, then the ReLU after the addition; a pre-activation stage's first unit
    (both_preact, resnet-pre-act.lua) feeds relu(bn1(a)) to its shortcut, with nothing after."""
    if b.preact:
        pre = torch.relu(b.bn1(a))
        return pre if b.downsample is None else b.downsample(pre)
    return torch.relu(b.downsample(a))


@pytest.mark.parametrize("name,overrides,method,shape,after", CASES)
def test_zeroed_branches_are_exact_identities_and_plain_twin_outputs_zero(
    name, overrides, method, shape, after
):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_chans=shape[1], img_size=shape[2], **overrides)
    x = torch.randn(shape)
    with torch.no_grad():  # ReZero/SkipInit start at alpha = 0: switch the branches on first
        for b in model.residual_blocks():
            if hasattr(b, "scale"):  # ReZero, SkipInit
                b.scale.alpha.fill_(0.5)
    identity_shortcut = [
        b.downsample is None and not b.both_preact for b in model.residual_blocks()
    ]
    for mode in (True, False):  # train mode (batch statistics), then eval mode
        model.train(mode)
        seen, _ = _io(model, x)
        pairs = zip(seen, identity_shortcut, strict=True)
        assert not all(torch.equal(o, a) for (_, a, o), i in pairs if i)
    zero_branches(model, method)
    for mode in (True, False):
        model.train(mode)
        seen, _ = _io(model, x)
        identity = [(a, o) for (_, a, o), i in zip(seen, identity_shortcut, strict=True) if i]
        assert identity and all(torch.equal(o, a) for a, o in identity)
        for (b, a, o), i in zip(seen, identity_shortcut, strict=True):
            if not i and not b.projects:
                with torch.no_grad():
                    assert torch.equal(o, _shortcut_by_hand(b, a))
        plain = to_plain(model).train(mode)
        seen, logits = _io(plain, x)
        assert all(torch.equal(o, torch.zeros_like(o)) for _, _, o in seen)
        assert torch.equal(logits, logits[:1].expand_as(logits))  # the same output for every input
    result = structural_check(model, x)
    for m in result["modes"].values():
        assert m["identity_exact"] == m["identity_blocks"] == sum(identity_shortcut) > 0
        assert m["max_abs_diff"] == 0 and m["shape_exact"] == m["shape_blocks"]
        assert m["plain_zero_blocks"] == m["blocks"] and m["plain_constant_output"]
    signed = result["signed_input"]  # a[l+2] = g(a[l]): equal to a[l] only for non-negative a[l]
    assert signed["equals_g_of_input"]
    assert signed["g"] == {"relu": "relu", "nothing": "identity"}[after]
    assert signed["equals_input"] == (after == "nothing")


def test_zeroing_method_must_fit_the_model():
    with pytest.raises(ValueError, match="norm='none'"):
        zero_branches(create_model("resmlp-4", in_chans=1, img_size=8), "weights")
    with pytest.raises(ValueError, match="branch_scale"):
        zero_branches(create_model("resmlp-4", in_chans=1, img_size=8), "rezero")
    with pytest.raises(ValueError, match="method must be"):
        zero_branches(create_model("resmlp-4", in_chans=1, img_size=8), "half")


@pytest.mark.parametrize("name,shape", [("resmlp-4", (64, 1, 8, 8)), ("resnet-8", (8, 3, 8, 8))])
def test_appended_zero_init_blocks_keep_every_logit(name, shape):
    torch.manual_seed(0)
    family, depth = ("mlp", 4) if "mlp" in name else ("cifar", 8)
    cfg = make_config("digits", family=family, check_depth=depth, base_depth=depth)
    base = create_model(name, num_classes=10, in_chans=shape[1], img_size=shape[2])
    with torch.no_grad():  # non-trivial batch-norm statistics, as after training
        base.train()(torch.randn(shape) * 2 + 1)
    base.eval()
    x = torch.randn(shape)
    ref = base(x)
    deeper = append_blocks(base, fresh_blocks(cfg, "residual", 3, base, zero_init_residual=True))
    assert len(deeper.residual_blocks()) == len(base.residual_blocks()) + 3
    assert torch.equal(deeper.eval()(x), ref)
    plain = append_blocks(base, fresh_blocks(cfg, "plain", 3, base))
    assert not torch.allclose(plain.eval()(x), ref)
    assert torch.equal(base(x), ref)  # appending copies: the trained net is untouched


def test_toy_study_shows_exact_identities_and_unchanged_logits(tmp_path):
    summary = run(make_config("digits", out=str(tmp_path), name="toy", **STUDY.toy))
    v = summary["verdict"]
    construction = v["construction"]
    assert construction["status"] == "holds"
    assert construction["structure"]["holds"] and construction["append"]["holds"]
    assert v["status"] in ("shown", "partly", "not_shown", "reversed") and v["text"]
    assert {r["depth"]: r["call"] for r in v["measurement"]["depths"]}.keys() == {2, 4}
    assert all(r["same_init"] for r in v["measurement"]["depths"])
    assert {(r["arch"], r["depth"], r["weight_decay"]) for r in summary["fit_results"]} == {
        (a, d, 0.0) for a in ("plain", "residual") for d in (2, 4)
    }
    page = (tmp_path / "toy" / "report.html").read_text()
    measurement, construction = (
        "Measurement: learning the identity</h2>",
        "Checks of construction</h2>",
    )
    assert page.index('class="verdict') < page.index(measurement) < page.index(construction)
    zero = [r for r in summary["append_results"] if r["variant"] == ZERO_INIT]
    assert [r["k"] for r in zero] == [1, 2] and all(r["changed_predictions"] == 0 for r in zero)
    assert runs.status(tmp_path / "toy" / "runs" / "base-4-s0") == "completed"


def test_diverged_training_appends_nothing_and_is_named(tmp_path):
    toy = {**STUDY.toy, "fit_depths": (2,), "methods": ("norm",)}
    toy["train"] = {**toy["train"], "lr": 1e30}
    summary = run(make_config("digits", out=str(tmp_path), name="div", **toy))
    run_summary = runs.read_summary(tmp_path / "div" / "runs" / "base-4-s0")
    assert run_summary["status"] == "diverged"
    construction = summary["verdict"]["construction"]
    assert "append" not in construction and summary["append_results"] == []
    assert construction["status"] == "holds" and construction["not_run"] == ["append"]
    note = runs.diverged_note(tmp_path / "div" / "runs" / "base-4-s0")  # its step and last loss
    assert construction["diverged_notes"] == [note]


def test_bad_options_fail_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="fit_depths"):
        make_config("digits", fit_depths=(3,), out=str(tmp_path))
    with pytest.raises(ValueError, match="methods"):
        make_config("digits", methods=("half",), out=str(tmp_path))
    with pytest.raises(ValueError, match="depth"):
        make_config("digits", base_depth=5, out=str(tmp_path))
    assert not any(tmp_path.iterdir())


def test_append_check_follows_the_numbers():
    def result(variant, error, changed):
        return dict(variant=variant, k=1, test_error=error, changed_predictions=changed,
                    logits_equal=changed == 0)  # fmt: skip

    base = dict(base_model="resmlp-4", base_test_error=0.05, chance_error=0.9)
    ok = [result(ZERO_INIT, 0.05, 0), result(PLAIN, 0.8, 300)]
    assert judge_append(dict(base, results=ok))["holds"]
    moved = [result(ZERO_INIT, 0.05, 1), result(PLAIN, 0.8, 300)]
    assert not judge_append(dict(base, results=moved))["holds"]
    mild = [result(ZERO_INIT, 0.05, 0), result(PLAIN, 0.06, 1)]  # contrast only: not judged
    assert judge_append(dict(base, results=mild))["holds"]


def test_structure_check_follows_the_counts():
    exact = dict(identity_blocks=3, identity_exact=3, shape_blocks=1, shape_exact=1)
    exact |= dict(blocks=4, plain_zero_blocks=4, plain_constant_output=True)

    def results(train):
        return {
            "model": "resmlp-8",
            "methods": {"norm": {"modes": {"eval": exact, "train": train}}},
        }

    assert judge_structure(results(exact)) == {"holds": True, "failures": [], "text": ANY}
    wrongs = [
        dict(identity_exact=2),
        dict(identity_blocks=0, identity_exact=0),
        dict(shape_exact=0),
    ]
    for wrong in wrongs + [dict(plain_zero_blocks=3), dict(plain_constant_output=False)]:
        judged = judge_structure(results(exact | wrong))
        assert not judged["holds"] and len(judged["failures"]) == 1  # one count off, in one mode
        v = rule.verdict({"structure": results(exact | wrong)})
        assert v.numbers["construction"]["status"] == "broken"
        assert v.numbers["construction"]["not_run"] == ["append"]


FIT = make_config("digits", fit_width=8, fit_depths=(2, 4), fit_steps=3, fit_samples=8, fit_batch=8)


def test_plain_and_residual_stacks_start_from_the_same_weights():
    for depth in (2, 4, 8):
        assert same_init(depth, FIT)
        plain, res = identity_stack("plain", depth, FIT), identity_stack("residual", depth, FIT)
        assert len(plain) == len(res) == depth // 2
        x = torch.rand(8, 8)
        with torch.no_grad():  # the same weights, different nets: x + F(x) vs F(x)
            assert not torch.allclose(plain(x), res(x))
    other = make_config("digits", fit_width=8, seed=1)
    a, b = (
        identity_stack("plain", 4, FIT).state_dict(),
        identity_stack("plain", 4, other).state_dict(),
    )
    assert not torch.equal(a["0.fc1.weight"], b["0.fc1.weight"])  # the seed matters


def test_decoupled_weight_decay_alone_makes_a_residual_stack_the_identity_and_a_plain_one_zero():
    """Why the measurement has no weight decay. With zero gradients, one AdamW step of lr x decay = 1
    takes every parameter p to p - lr * decay * p = 0 (Adam's own step is 0 / (0 + eps) = 0): each
    residual block becomes relu(x + 0) = x on non-negative x, each plain block relu(0) = 0."""
    x = torch.rand(16, 8)
    out = {}
    for arch in ("plain", "residual"):
        stack = identity_stack(arch, 4, FIT).train()
        opt = torch.optim.AdamW(stack.parameters(), lr=1.0, weight_decay=1.0)
        for p in stack.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
        with torch.no_grad():
            out[arch] = stack(x)
    assert torch.equal(out["residual"], x) and torch.equal(out["plain"], torch.zeros_like(x))


def _fit(losses: dict, same: bool = True, decayed: dict | None = None) -> dict:
    """fit results from {depth: (plain loss, residual loss)}; `decayed` adds arms with decay 0.1."""
    results = [
        {"arch": arch, "depth": d, "final_loss": pair[i], "weight_decay": wd}
        for wd, table in ((0.0, losses), (0.1, decayed or {}))
        for d, pair in table.items()
        for i, arch in enumerate(("plain", "residual"))
    ]
    return {"results": results, "same_init": {str(d): same for d in losses}}


@pytest.mark.parametrize(
    "losses, status, calls",
    [
        ({4: (0.2, 0.1), 16: (0.5, 0.01)}, "shown", ["residual", "residual"]),  # ratio 2 and 50
        ({4: (0.19, 0.1), 16: (0.5, 0.01)}, "partly", ["tied", "residual"]),  # 1.9: tied
        ({4: (1e-4, 1e-5), 16: (5e-4, 1e-6)}, "not_shown", ["tied", "tied"]),  # both below FLOOR
        ({4: (0.002, 1e-6)}, "shown", ["residual"]),  # 0.002 / max(1e-6, 0.001) = 2
        ({4: (0.2, 0.1), 16: (0.05, 0.1)}, "reversed", ["residual", "plain"]),  # 0.5
        ({4: (None, 0.1)}, "shown", ["residual"]),  # the plain stack diverged (NaN -> null)
        ({}, "insufficient", []),
    ],
)
def test_measurement_statuses_on_constructed_numbers(losses, status, calls):
    m = rule.judge_fit(_fit(losses))
    assert m["status"] == status and [r["call"] for r in m["depths"]] == calls


def test_measurement_ignores_decay_arms_and_needs_like_with_like():
    tied = {4: (0.1, 0.1)}
    assert rule.judge_fit(_fit(tied, decayed={4: (1.0, 1e-6)}))["status"] == "not_shown"
    m = rule.judge_fit(_fit({4: (0.5, 0.01)}, same=False))
    assert m["status"] == "insufficient" and [r["same_init"] for r in m["depths"]] == [False]
