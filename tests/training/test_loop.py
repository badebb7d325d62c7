"""A tiny model trains for real on the built-in digits data; run folders hold what they promise."""

import json
import math
import resource

import pytest
from safetensors.torch import load_file

from reslab.training import Diverged, TrainConfig, train


def _cfg(tmp_path, **kw):
    base = dict(
        model="resmlp-4",
        data="digits",
        iters=300,
        lr=0.05,
        weight_decay=0.0,
        batch_size=64,
        schedule="constant",
        log_every=25,
        eval_every=100,
        out=str(tmp_path),
        progress=False,
        num_threads=1,
    )
    return TrainConfig(**{**base, **kw})


def test_tiny_model_learns_digits_and_writes_run_folder(tmp_path):
    s = train(_cfg(tmp_path, name="run"))
    run = tmp_path / "run"
    # 10 classes: chance is 90% error; a real training run gets far below it
    assert s["status"] == "completed" and s["steps"] == 300
    assert s["final_train_error"] < 0.05 and s["final_test_error"] < 0.15
    # peak resident memory of this very process, as the OS reports it (KiB on Linux)
    assert 0.05 < s["peak_memory_gib"] <= resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train_lines = [x for x in lines if x["kind"] == "train"]
    assert [x["step"] for x in train_lines] == list(range(25, 301, 25))
    assert train_lines[0]["train_error"] > train_lines[-1]["train_error"]
    assert [x["step"] for x in lines if x["kind"] == "eval"] == [100, 200, 300]
    final = [x for x in lines if x["kind"] == "final"][0]
    assert final["train_error"] == pytest.approx(s["final_train_error"])
    assert json.loads((run / "config.json").read_text())["model"] == "resmlp-4"
    assert "torch" in json.loads((run / "env.json").read_text())
    assert list(run.glob("events.out.tfevents.*")), "TensorBoard event file"
    assert set(load_file(run / "model.safetensors")) == set(
        load_file(sorted((run / "checkpoints").glob("step-*"))[-1] / "model.safetensors")
    )


def test_existing_run_is_not_overwritten(tmp_path):
    train(_cfg(tmp_path, name="keep", iters=30))
    before = (tmp_path / "keep" / "model.safetensors").read_bytes()
    with pytest.raises(FileExistsError, match="--resume"):
        train(_cfg(tmp_path, name="keep", iters=30))
    with pytest.raises(ValueError, match="differs in"):
        train(_cfg(tmp_path, name="keep", iters=30, lr=0.5, resume=True))
    assert (tmp_path / "keep" / "model.safetensors").read_bytes() == before
    again = train(_cfg(tmp_path, name="keep", iters=30, resume=True))  # finished: nothing to do
    assert again["steps"] == 30


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    cfg = _cfg(
        tmp_path, name="boom", lr=1e6, iters=200, log_every=1, checkpoint_every=1, eval_every=1000
    )
    with pytest.raises(Diverged, match="not finite"):
        train(cfg)
    ckpts = sorted((tmp_path / "boom" / "checkpoints").glob("step-*"))
    for ck in ckpts:  # every checkpoint that exists holds finite weights
        assert all(t.isfinite().all() for t in load_file(ck / "model.safetensors").values())
    assert json.loads((tmp_path / "boom" / "summary.json").read_text())["status"] == "diverged"


def test_divergence_is_recorded_with_its_step_and_last_finite_loss(tmp_path):
    """summary.json of a diverged run names the first step whose loss was not finite and the last
    finite loss before it; logged every step, that is the last train line. Logged every 10 steps, the
    run stops at the line (`steps`) but still names the same step and loss."""
    kw = dict(model="plainmlp-8", lr=1e4, iters=50, eval_every=1000)
    with pytest.raises(Diverged, match=r"loss is not finite at step \d+") as err:
        train(_cfg(tmp_path, name="every", log_every=1, **kw))
    s = json.loads((tmp_path / "every" / "summary.json").read_text())
    lines = [json.loads(x) for x in (tmp_path / "every" / "metrics.jsonl").read_text().splitlines()]
    last = [x for x in lines if x["kind"] == "train"][-1]
    assert s["name"] == "every" and s["status"] == "diverged"
    assert s["model"] == "plainmlp-8" and s["data"] == "digits"
    assert s["diverged_at_step"] == s["steps"] == last["step"] + 1 > 1
    assert math.isfinite(s["last_finite_loss"]) and s["last_finite_loss"] == last["train_loss"]
    assert f"step {s['diverged_at_step']} " in str(err.value)
    assert err.value.step == s["diverged_at_step"]
    assert err.value.last_finite_loss == s["last_finite_loss"]

    with pytest.raises(Diverged):
        train(_cfg(tmp_path, name="tenth", log_every=10, **kw))
    t = json.loads((tmp_path / "tenth" / "summary.json").read_text())
    assert t["steps"] == 10 > t["diverged_at_step"] == s["diverged_at_step"]
    assert t["last_finite_loss"] == s["last_finite_loss"]


@pytest.mark.filterwarnings("ignore:activation checkpointing on the C library")
def test_grad_checkpointing_trains_the_same_weights(tmp_path):
    """--grad-checkpoint changes memory, not the computation: a conv net with batch norm ends with
    the same weights and running statistics after 20 steps."""
    kw = dict(model="resnet-14", iters=20, eval_every=20, amp="off", channels_last="off")
    a = train(_cfg(tmp_path, name="normal", **kw))
    b = train(_cfg(tmp_path, name="ckpt", grad_checkpoint=2, **kw))
    assert a["final_train_error"] == b["final_train_error"]
    wa, wb = (
        load_file(tmp_path / "normal" / "model.safetensors"),
        load_file(tmp_path / "ckpt" / "model.safetensors"),
    )
    assert set(wa) == set(wb)
    for k in wa:
        assert (wa[k] - wb[k]).abs().max() <= 1e-5, k


def test_eval_limit_evaluates_the_first_n_images(tmp_path):
    s = train(_cfg(tmp_path, name="lim", iters=10, eval_every=10, eval_limit=40))
    # errors over 40 images are multiples of 1/40 (the full test set has 355 images)
    for key in ("final_train_error", "final_test_error"):
        assert (s[key] * 40) == pytest.approx(round(s[key] * 40), abs=1e-9), key


def test_a_conditional_warm_up_ends_where_the_error_falls_and_resumes_exactly(tmp_path):
    """--warmup-until-error: lr stays at warmup_lr up to the first training line whose error is
    below the bound, then follows the schedule; a run resumed after that point (its later files
    removed, as a kill leaves them) continues at the same lr and ends with the same weights."""
    cfg = _cfg(tmp_path, name="w", iters=60, log_every=5, eval_every=20, lr=0.2, warmup_lr=0.01,
               warmup_iters=50, warmup_until_error=0.5, deterministic=True)  # fmt: skip
    train(cfg)
    run = tmp_path / "w"
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train_lines = [x for x in lines if x["kind"] == "train"]
    end = next(x["step"] for x in train_lines if x["train_error"] < 0.5)
    assert 5 <= end < 50  # the condition, not the cap, ended it
    # a line's lr is that of its last step: warm-up through `end`, the schedule after it
    assert all(x["lr"] == (0.01 if x["step"] <= end else 0.2) for x in train_lines)
    trainer = json.loads((run / "checkpoints" / "step-00000040" / "trainer.json").read_text())
    assert trainer["warmup_end"] == end
    # resume from step 40 (after the warm-up ended): same lr from there, same final weights
    for p in ("model.safetensors", "summary.json"):
        (run / p).rename(tmp_path / p)
    for later in sorted((run / "checkpoints").iterdir())[2:]:
        for f in later.iterdir():
            f.unlink()
        later.rmdir()
    train(TrainConfig(**{**cfg.to_dict(), "resume": True}))
    again, first = load_file(run / "model.safetensors"), load_file(tmp_path / "model.safetensors")
    assert all((again[k] == first[k]).all() for k in first)


def test_lr_scales_train_fixups_scalars_at_a_tenth_as_the_official_code():
    """hongyi-zhang/Fixup cifar_train.py: SGD groups of the parameters whose names hold "bias" and
    "scale" at base_lr/10, the others at base_lr, weight decay in every group. reslab's groups,
    with the loop's per-step lr, update every parameter as that optimizer does."""
    import torch
    import torch.nn.functional as F

    from reslab.models import create_model
    from reslab.training import resolve
    from reslab.training.optim import make_optimizer, param_groups

    def net():
        torch.manual_seed(0)
        return create_model("resmlp-10", branch_scale="fixup", num_classes=10, in_chans=1,
                            img_size=(8, 8))  # fmt: skip

    ours, theirs = net(), net()
    cfg = resolve(None, lr=0.1, weight_decay=1e-4, lr_scales={"bias": 0.1, "scale": 0.1})
    groups = param_groups(ours, cfg.weight_decay, cfg.lr_scales)
    named = dict(ours.named_parameters())
    tenth = {n for n in named if "bias" in n or "scale" in n}
    assert tenth and tenth == {n for n, p in named.items() if any(p is q for g in groups
                                                         if g["lr_scale"] == 0.1 for q in g["params"])}  # fmt: skip
    opt = make_optimizer(cfg, ours, torch.device("cpu"))
    ref = torch.optim.SGD(
        [{"params": [p for n, p in theirs.named_parameters() if n in tenth], "lr": 0.01},
         {"params": [p for n, p in theirs.named_parameters() if n not in tenth]}],
        lr=0.1, momentum=0.9, weight_decay=1e-4,
    )  # fmt: skip
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))
    for _ in range(3):
        for group in opt.param_groups:  # as the loop sets it
            group["lr"] = cfg.lr * group["lr_scale"]
        for model, o in ((ours, opt), (theirs, ref)):
            o.zero_grad()
            F.cross_entropy(model(x), y).backward()
            o.step()
    for (n, a), b in zip(ours.named_parameters(), theirs.parameters(), strict=True):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7), n
    assert resolve(None, lr_scales={}).lr_scales == {}
    with pytest.raises(ValueError, match="finite multiplier > 0"):
        resolve(None, lr_scales={"bias": 0})
