"""Checkpoints under hostile conditions: a disk that fills up in the middle of a save, a damaged newest
checkpoint on --resume, a checkpoint of another model, and train() given what is not a TrainConfig.
Each ends in one line, and no checkpoint already written loses a byte."""

import errno
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

import reslab
from reslab import cli
from reslab.training import TrainConfig, bookkeeping, checkpoint, train
from reslab.training.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

RUN = dict(
    model="resmlp-4",
    data="digits",
    iters=20,
    batch_size=32,
    lr=0.05,
    schedule="constant",
    log_every=4,
    checkpoint_every=4,
    eval_every=20,
    eval_limit=64,
    num_threads=1,
    progress=False,
)
ARGV = ["train", "--model", "resmlp-4", "--data", "digits", "--iters", "12", "--batch-size", "32",
        "--lr", "0.05", "--schedule", "constant", "--log-every", "4", "--checkpoint-every", "4",
        "--eval-every", "12", "--eval-limit", "64", "--num-threads", "1", "--no-progress"]  # fmt: skip


def _cfg(out: Path, name: str, **kw) -> TrainConfig:
    return TrainConfig(**{**RUN, "out": str(out), "name": name, **kw})


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (temporary folders aside) and its bytes."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.relative_to(folder).parts[0].endswith(".tmp")
    }


class Killed(Exception):
    pass


def _killed_after(monkeypatch, out: Path, name: str, step: int, **kw) -> Path:
    """Train `name` and stop it right after its checkpoint `step` lands, as a kill would."""
    real = bookkeeping.save_checkpoint

    def save_then_die(root, at, *args):
        real(root, at, *args)
        if at == step:
            raise Killed

    with monkeypatch.context() as m:
        m.setattr(bookkeeping, "save_checkpoint", save_then_die)
        with pytest.raises(Killed):
            train(_cfg(out, name, **kw))
    return out / name


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """The final weights of the uninterrupted run."""
    threads = torch.get_num_threads()
    out = tmp_path_factory.mktemp("ref")
    train(_cfg(out, "ref"))
    torch.set_num_threads(threads)
    return load_file(out / "ref" / "model.safetensors")


def _assert_same_weights(run: Path, reference: dict) -> None:
    weights = load_file(run / "model.safetensors")
    assert weights.keys() == reference.keys()
    for k in weights:
        assert torch.equal(weights[k], reference[k]), k  # bit-identical, not merely close


def _train_steps(run: Path) -> list[int]:
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [x["step"] for x in lines if x["kind"] == "train"]


# ------------------------------------------------------------------------------ train(not a config)


@pytest.mark.parametrize("given", [dict(RUN), [("model", "resmlp-4")], "resmlp-4"])
def test_train_takes_only_a_train_config(given, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for fn in (train, reslab.train):
        with pytest.raises(TypeError, match=r"^train\(\) takes a TrainConfig, got \w+; build one"):
            fn(given)
    assert not list(tmp_path.iterdir()), "nothing written"
    # the way the message names builds the config
    assert TrainConfig.from_dict(dict(RUN)) == reslab.training.resolve(**RUN)


# ------------------------------------------------------------------------------ a full disk


def test_a_full_disk_mid_save_keeps_the_previous_checkpoint_and_resumes(
    tmp_path, monkeypatch, capsys, reference
):
    """The second checkpoint's optimizer file hits ENOSPC half written: one line, the temporary folder
    gone, checkpoint 4 byte for byte as it was; freed, --resume ends on the uninterrupted weights."""
    ckpts = tmp_path / "full" / "checkpoints"
    real, calls, seen = checkpoint.save_file, [], {}

    def fills_up(tensors, path):
        calls.append(path)
        if len(calls) < 4:
            return real(tensors, path)
        path.write_bytes(b"\0" * 100)  # the part that fit
        seen.update(before=_snapshot(ckpts), temps=[p.name for p in ckpts.glob(".*.tmp")])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_file", fills_up)
    argv = [*ARGV, "--iters", "20", "--eval-every", "20", "--out", str(tmp_path), "--name", "full"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == (
        f"reslab train: error: could not write checkpoint step-00000008 in {ckpts}: No space left "
        "on device; the previous checkpoint (step-00000004) is intact, free space and rerun with "
        "--resume"
    )
    assert "Traceback" not in err
    assert len(seen["temps"]) == 1 and seen["temps"][0].startswith(".step-00000008.")
    assert _snapshot(ckpts) == seen["before"] and list(seen["before"])  # untouched, not empty
    assert [p.name for p in ckpts.iterdir()] == ["step-00000004"]

    monkeypatch.setattr(checkpoint, "save_file", real)  # space freed
    assert cli.main([*argv, "--resume"]) == 0
    _assert_same_weights(tmp_path / "full", reference)
    assert _train_steps(tmp_path / "full") == [4, 8, 12, 16, 20]


@pytest.mark.parametrize(
    "error, reason, fix",
    [
        (OSError(errno.ENOSPC, "No space left on device"), "No space left on device", "free space"),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), "Disk quota exceeded", "free space"),
        # what safetensors raises when the disk fills up (seen on a full tmpfs)
        (
            SafetensorError(
                "Error while serializing: I/O error: No space left on device (os error 28)"
            ),
            "No space left on device",
            "free space",
        ),
        (OSError(errno.EIO, "Input/output error"), "Input/output error", "fix that"),
    ],
)
@pytest.mark.parametrize("earlier", [True, False])
def test_a_failed_save_says_what_is_left(error, reason, fix, earlier, tmp_path, monkeypatch):
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    if earlier:
        save_checkpoint(tmp_path, 3, model, opt, {})
    before = _snapshot(tmp_path)

    def fails(tensors, path):
        raise error

    monkeypatch.setattr(checkpoint, "save_file", fails)
    left = (
        "the previous checkpoint (step-00000003) is intact" if earlier else "no checkpoint is kept"
    )
    with pytest.raises(OSError) as info:
        save_checkpoint(tmp_path, 5, model, opt, {})
    assert str(info.value) == (
        f"could not write checkpoint step-00000005 in {tmp_path}: {reason}; {left}, {fix} and "
        "rerun with --resume"
    )
    assert _snapshot(tmp_path) == before
    assert [p.name for p in tmp_path.iterdir()] == (["step-00000003"] if earlier else [])


def test_a_really_full_disk_mid_save_keeps_the_previous_checkpoint(small_disk):
    """80 KB of weights and 80 KB of momentum: the first checkpoint fits in 256 KiB, the second
    fills the disk halfway through (safetensors then raises SafetensorError, not OSError)."""
    model = torch.nn.Linear(100, 200)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 100)).sum().backward()
    opt.step()
    save_checkpoint(small_disk, 1, model, opt, {"x": 1})
    before, used = _snapshot(small_disk), shutil.disk_usage(small_disk).used
    with torch.no_grad():
        model.weight.add_(1.0)
    with pytest.raises(OSError, match="^could not write checkpoint step-00000002 in ") as info:
        save_checkpoint(small_disk, 2, model, opt, {"x": 2})
    assert info.value.errno == errno.ENOSPC
    assert str(info.value).endswith(
        ": No space left on device; the previous checkpoint (step-00000001) is intact, "
        "free space and rerun with --resume"
    )
    assert [p.name for p in small_disk.iterdir()] == ["step-00000001"]
    assert _snapshot(small_disk) == before
    assert (
        shutil.disk_usage(small_disk).used == used
    )  # the half-written folder's space is free again
    fresh = torch.nn.Linear(100, 200)
    fresh_opt = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    assert load_checkpoint(small_disk / "step-00000001", fresh, fresh_opt)["x"] == 1
    assert torch.equal(fresh.weight + 1.0, model.weight)


# ------------------------------------------------------------------------------ damaged checkpoints


def _truncate(file: Path) -> None:
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])  # head -c


def _drop_rng(file: Path) -> None:
    state = json.loads(file.read_text())
    del state["torch_rng"]
    file.write_text(json.dumps(state))


DAMAGE = {
    "model-truncated": ("model.safetensors", _truncate, r"model\.safetensors cannot be read"),
    "optimizer-truncated": (
        "optimizer.safetensors",
        _truncate,
        r"optimizer\.safetensors cannot be read",
    ),
    "trainer-garbage": (
        "trainer.json",
        lambda f: f.write_text('{"step": 12, "torch_'),
        r"trainer\.json is not valid JSON",
    ),
    "trainer-no-rng": ("trainer.json", _drop_rng, r"trainer\.json holds no CPU RNG state"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_resume_passes_over_a_damaged_newest_checkpoint(damage, tmp_path, monkeypatch, reference):
    run = _killed_after(monkeypatch, tmp_path, "run", step=12)
    ckpts = run / "checkpoints"
    assert [p.name for p in list_checkpoints(ckpts)] == ["step-00000008", "step-00000012"]
    file, spoil, why = DAMAGE[damage]
    spoil(ckpts / "step-00000012" / file)
    damaged = _snapshot(ckpts / "step-00000012")

    aside = ckpts / "damaged-step-00000012"
    warning = (
        rf"^--resume: {ckpts}/step-00000012/{why}.*; moved step-00000012 aside to {aside} "
        r"and resumed from step-00000008$"
    )
    with pytest.warns(UserWarning, match=warning):
        summary = train(_cfg(tmp_path, "run", resume=True))
    assert summary["resumed_from"] == "step-00000008" and summary["steps"] == 20
    assert _snapshot(aside) == damaged, "the damaged folder is kept as it was"
    assert [p.name for p in list_checkpoints(ckpts)] == ["step-00000016", "step-00000020"]
    assert _train_steps(run) == [4, 8, 12, 16, 20], "metrics read as one run, resumed at step 8"
    _assert_same_weights(run, reference)


def test_resume_with_no_whole_checkpoint_names_each_and_keeps_them(tmp_path, monkeypatch):
    run = _killed_after(monkeypatch, tmp_path, "run", step=12)
    ckpts = run / "checkpoints"
    _truncate(ckpts / "step-00000012" / "model.safetensors")
    (ckpts / "step-00000008" / "trainer.json").write_text("{}")
    before = _snapshot(run)
    with pytest.raises(ValueError) as info:
        train(_cfg(tmp_path, "run", resume=True))
    assert str(info.value) == (
        f"--resume: no checkpoint in {ckpts} reads back whole: {ckpts}/step-00000012/model."
        "safetensors cannot be read (Error while deserializing header: incomplete metadata, file "
        f"not fully covered); {ckpts}/step-00000008/trainer.json holds no trainer state (step, "
        "param_groups); they are left as they are (delete them and rerun with --resume to start "
        "over)"
    )
    assert _snapshot(run) == before  # metrics.jsonl too: nothing truncated


def test_resume_with_another_model_after_config_json_is_gone(tmp_path, monkeypatch):
    run = _killed_after(monkeypatch, tmp_path, "run", step=8, iters=12)
    with pytest.raises(ValueError, match=r"config of .* differs in \['model'\]"):
        train(_cfg(tmp_path, "run", iters=12, resume=True, model="resmlp-6"))
    (run / "config.json").unlink()
    before = _snapshot(run)
    with pytest.raises(ValueError) as info:
        train(_cfg(tmp_path, "run", iters=12, resume=True, model="resmlp-6"))
    message = str(info.value)
    assert message.startswith(
        f"--resume: checkpoint {run}/checkpoints/step-00000008 holds weights for a different model "
        "(12 missing keys (layers.1.fc1.weight, layers.1.bn1.weight, "
    )
    assert message.endswith("), so --model resmlp-6 cannot resume it")
    assert "\n" not in message
    assert _snapshot(run) == before
    with pytest.raises(ValueError, match=r"model, \(stem\.0\.weight \(64, 64\) vs \(8, 64\)"):
        train(_cfg(tmp_path, "run", iters=12, resume=True, model_kwargs={"width": 8}))
