"""The identity study: zeroed branches are exact identities (fp32, torch.equal), appended zero-init
blocks keep every logit, the verdict on constructed numbers, and what the toy study must show. The
toy run end to end, the report rebuilt from the folder and the CLI are tested for every study in
test_registry.py."""

import pytest
import torch

from reslab import create_model
from reslab.models import append_blocks, to_plain
from reslab.studies.identity import STUDY, make_config, run
from reslab.studies.identity.measure import fresh_blocks, structural_check, zero_branches
from reslab.studies.identity.report import PLAIN, ZERO_INIT, judge_append
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


CASES = [  # (model, overrides, zeroing method, input shape)
    ("resmlp-8", {}, "norm", (32, 1, 8, 8)),
    ("resmlp-8", {"branch_scale": "rezero"}, "rezero", (32, 1, 8, 8)),
    ("resmlp-8", {"norm": "none"}, "weights", (32, 1, 8, 8)),
    ("resnet-14", {}, "norm", (4, 3, 8, 8)),  # option A: two blocks change shape
    ("resnet-8", {"branch_scale": "skipinit"}, "skipinit", (4, 3, 8, 8)),
    ("preact_resnet-14", {}, "norm", (4, 3, 8, 8)),  # signed block inputs, no ReLU after the sum
]


@pytest.mark.parametrize("name,overrides,method,shape", CASES)
def test_zeroed_branches_are_exact_identities_and_plain_twin_outputs_zero(
    name, overrides, method, shape
):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_chans=shape[1], img_size=shape[2], **overrides)
    x = torch.randn(shape)
    with torch.no_grad():  # ReZero/SkipInit start at alpha = 0: switch the branches on first
        for b in model.residual_blocks():
            if hasattr(b.scale, "alpha"):
                b.scale.alpha.fill_(0.5)
    for mode in (True, False):  # train mode (batch statistics), then eval mode
        model.train(mode)
        seen, _ = _io(model, x)
        assert not all(torch.equal(o, a) for b, a, o in seen if b.downsample is None)  # not trivial
    zero_branches(model, method)
    for mode in (True, False):
        model.train(mode)
        seen, _ = _io(model, x)
        identity = [(a, o) for b, a, o in seen if b.downsample is None]
        assert identity and all(torch.equal(o, a) for a, o in identity)
        for b, a, o in seen:
            if b.downsample is not None and not b.projects:  # option A: g(subsample + zero pad)
                assert torch.equal(o, torch.relu(b.downsample(a)))
        plain = to_plain(model).train(mode)
        seen, logits = _io(plain, x)
        assert all(torch.equal(o, torch.zeros_like(o)) for _, _, o in seen)
        assert torch.equal(logits, logits[:1].expand_as(logits))  # the same output for every input
    result = structural_check(model, x)
    for m in result["modes"].values():
        assert m["identity_exact"] == m["identity_blocks"] > 0 and m["max_abs_diff"] == 0
        assert m["shape_exact"] == m["shape_blocks"]
        assert m["plain_zero_blocks"] == m["blocks"] and m["plain_constant_output"]
    signed = result["signed_input"]  # a[l+2] = g(a[l]): equal to a[l] only for non-negative a[l]
    assert signed["equals_g_of_input"]
    assert signed["equals_input"] == name.startswith("preact")


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
    assert v["structure"]["shown"] and v["append"]["unchanged"]
    assert v["status"] in ("shown", "partly") and v["text"]
    assert {(r["arch"], r["depth"]) for r in summary["fit_results"]} == {
        (a, d) for a in ("plain", "residual") for d in (2, 4)
    }
    zero = [r for r in summary["append_results"] if r["variant"] == ZERO_INIT]
    assert [r["k"] for r in zero] == [1, 2] and all(r["changed_predictions"] == 0 for r in zero)
    assert runs.status(tmp_path / "toy" / "runs" / "base-4-s0") == "completed"


def test_diverged_training_appends_nothing_and_is_named(tmp_path):
    toy = {**STUDY.toy, "fit_depths": (2,), "methods": ("norm",)}
    toy["train"] = {**toy["train"], "lr": 1e30}
    summary = run(make_config("digits", out=str(tmp_path), name="div", **toy))
    run_summary = runs.read_summary(tmp_path / "div" / "runs" / "base-4-s0")
    assert run_summary["status"] == "diverged"
    v = summary["verdict"]
    assert "append" not in v and summary["append_results"] == []
    assert v["status"] == "partly" and "Not run yet: append." in v["text"]
    assert f"base-4-s0 at step {run_summary['diverged_at_step']} (last finite loss" in v["text"]


def test_bad_options_fail_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="fit_depths"):
        make_config("digits", fit_depths=(3,), out=str(tmp_path))
    with pytest.raises(ValueError, match="methods"):
        make_config("digits", methods=("half",), out=str(tmp_path))
    with pytest.raises(ValueError, match="depth"):
        make_config("digits", base_depth=5, out=str(tmp_path))
    assert not any(tmp_path.iterdir())


def test_append_verdict_follows_the_numbers():
    def result(variant, error, changed):
        return dict(variant=variant, k=1, test_error=error, changed_predictions=changed,
                    logits_equal=changed == 0)  # fmt: skip

    base = dict(base_model="resmlp-4", base_test_error=0.05, chance_error=0.9)
    ok = [result(ZERO_INIT, 0.05, 0), result(PLAIN, 0.8, 300)]
    assert judge_append(dict(base, results=ok))["shown"]
    moved = [result(ZERO_INIT, 0.05, 1), result(PLAIN, 0.8, 300)]
    assert not judge_append(dict(base, results=moved))["unchanged"]
    mild = [result(ZERO_INIT, 0.05, 0), result(PLAIN, 0.4, 100)]
    assert not judge_append(dict(base, results=mild))["destroyed"]  # below half way to chance
