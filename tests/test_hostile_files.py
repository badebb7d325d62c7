"""Hostile or damaged files (issue "Nothing lost, nothing silent"): truncated safetensors, torn or
code-running pickles, weights metadata that asks for tens of GB, JSON files of the wrong shape,
metrics that are not UTF-8. Each gets one line naming the file, nothing runs, and the input files
keep their bytes. The files are made here with safetensors, torch.save, pickle and json."""

from __future__ import annotations

import json
import os
import pickle
import re
import struct
from pathlib import Path

import pytest
import safetensors.torch
import torch

from reslab.cli import main
from reslab.models import create_model, load_weights, read_metadata, save_weights
from reslab.studies import records
from reslab.training import runs
from reslab.training.tracking import RunLog

# digits: 1 channel of 8x8, 10 classes; the same net `reslab train --model resmlp-4` trains there
DIGITS_NET = dict(num_classes=10, in_chans=1, img_size=8)


def _one_line_error(capsys, argv, expected) -> str:
    assert main(argv) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and expected in err[0] and "Traceback" not in err[0], err
    return err[0]


def _snapshot(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> bytes:
    """The bytes of a run's model.safetensors: resmlp-4 shaped for digits (untrained)."""
    path = tmp_path_factory.mktemp("w") / runs.WEIGHTS
    return save_weights(create_model("resmlp-4", **DIGITS_NET), path).read_bytes()


def _run_folder(folder: Path, weights: bytes) -> Path:
    """A run folder as `reslab train` leaves it, as far as `reslab lesion --from` reads it."""
    from reslab.training.config import TrainConfig

    folder.mkdir(parents=True)
    runs.write_json(folder / runs.CONFIG, TrainConfig(model="resmlp-4", data="digits").to_dict())
    runs.write_json(folder / runs.SUMMARY, {"status": "completed"})
    (folder / runs.WEIGHTS).write_bytes(weights)
    return folder


# ------------------------------------------------------------------------- 1 damaged safetensors


def _header_length(w: bytes) -> int:
    return struct.unpack("<Q", w[:8])[0]


DAMAGED = {
    "cut at 20000 bytes": lambda w: w[:20000],
    "cut at 10 bytes": lambda w: w[:10],
    "huge header length": lambda w: struct.pack("<Q", 2**40) + w[8:],
    "header not JSON": lambda w: w[:8] + b"x" * _header_length(w) + w[8 + _header_length(w) :],
}
NOT_READABLE = "is not a readable safetensors file (truncated or damaged: "


@pytest.mark.parametrize("damage", DAMAGED)
def test_damaged_safetensors_is_one_line_everywhere(damage, weights, tmp_path, capsys):
    run = _run_folder(tmp_path / "run", DAMAGED[damage](weights))
    path = run / runs.WEIGHTS
    before = _snapshot(run)
    with pytest.raises(ValueError, match="^" + re.escape(f"{path} {NOT_READABLE}")):
        load_weights(create_model("resmlp-4", **DIGITS_NET), path)
    with pytest.raises(ValueError, match="truncated or damaged"):
        read_metadata(path)
    if damage.startswith("cut"):  # a truncated file is told by its first bytes, not by its name
        other_name = tmp_path / "w.bin"
        other_name.write_bytes(path.read_bytes())
        with pytest.raises(ValueError, match="^" + re.escape(f"{other_name} {NOT_READABLE}")):
            load_weights(create_model("resmlp-4", **DIGITS_NET), other_name)
    for argv in (
        ["eval", "--model", "resmlp-4", "--weights", str(path)],
        ["export", "--model", "resmlp-4", "--weights", str(path), "--out", str(tmp_path / "m.pt2")],
        ["lesion", "--from", str(run), "--out", str(tmp_path / "out")],
    ):
        line = _one_line_error(capsys, argv, f"{path} {NOT_READABLE}")
        assert "SafetensorError" not in line
    assert _snapshot(run) == before
    assert not (tmp_path / "m.pt2").exists()
    assert not any((tmp_path / "out").iterdir()), "the refused study left its folder behind"


# ------------------------------------------------------------------------- 2, 3 pickles


class Runs:
    """Unpickling this calls `fn(*args)`: code chosen by whoever wrote the file."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _torch_zip(path, obj):
    torch.save(obj, path)


def _torch_legacy(path, obj):
    torch.save(obj, path, _use_new_zipfile_serialization=False)


def _pickle(path, obj, protocol=None):
    path.write_bytes(pickle.dumps(obj, protocol=protocol))


WRITERS = {
    "torch.save": _torch_zip,
    "torch.save legacy": _torch_legacy,
    "pickle": _pickle,
    "pickle protocol 0": lambda path, obj: _pickle(path, obj, 0),
}


@pytest.mark.parametrize("writer", ["torch.save", "torch.save legacy"])
def test_truncated_torch_save_file(writer, tmp_path, capsys):
    path = tmp_path / "w.pth"
    WRITERS[writer](path, create_model("resmlp-4", **DIGITS_NET).state_dict())
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    before = path.read_bytes()
    expected = f"{path} is a truncated or damaged torch.save file"
    with pytest.raises(ValueError) as e:
        load_weights(create_model("resmlp-4", **DIGITS_NET), path)
    assert str(e.value) == expected
    _one_line_error(capsys, ["eval", "--model", "resmlp-4", "--weights", str(path)], expected)
    assert path.read_bytes() == before


def _calls(marker: Path) -> dict:
    """Payloads that would leave `marker` (or print) if run, with the call the message must name."""
    return {
        "print": (Runs(print, "pwned"), "builtins.print"),
        "open": (Runs(open, str(marker), "w"), f"{open.__module__}.open"),
        "os.system": (Runs(os.system, f"touch {marker}"), f"{os.system.__module__}.system"),
    }


@pytest.mark.parametrize("writer", WRITERS)
@pytest.mark.parametrize("call", ["print", "open", "os.system"])
def test_code_in_a_pickle_is_named_and_never_run(writer, call, tmp_path, capsys):
    marker = tmp_path / "pwned"
    payload, name = _calls(marker)[call]
    path = tmp_path / "w.pth"
    WRITERS[writer](path, {"fc.weight": torch.zeros(1), "payload": payload})
    before = path.read_bytes()
    expected = (
        f"{path} asks to run code when loaded (it calls {name}); "
        "reslab loads weights only and will not run it"
    )
    with pytest.raises(ValueError) as e:
        load_weights(create_model("resmlp-4", **DIGITS_NET), path)
    assert str(e.value) == expected  # and no word of torch's advice to load it unsafely
    _one_line_error(capsys, ["eval", "--model", "resmlp-4", "--weights", str(path)], expected)
    assert not marker.exists() and "pwned" not in capsys.readouterr().out
    assert path.read_bytes() == before


def test_the_code_pickles_are_real(tmp_path, capfd):
    """The payloads above do run when a file is loaded without weights_only."""
    marker = tmp_path / "pwned"
    for writer in ("torch.save", "pickle"):
        for call, (payload, _) in _calls(marker).items():
            path = tmp_path / f"{call}.pth"
            WRITERS[writer](path, payload)
            if writer == "torch.save":
                torch.load(path, weights_only=False)
            else:
                pickle.loads(path.read_bytes())
            assert marker.exists() or "pwned" in capfd.readouterr().out
            marker.unlink(missing_ok=True)


def test_the_call_is_named_whatever_torch_says(tmp_path, monkeypatch):
    """The call is read from the pickle itself (pickletools), so another torch wording still names
    it; a refusal of a global that neither names is still said in reslab's words."""
    hostile, plain = tmp_path / "hostile.pth", tmp_path / "plain.pth"
    torch.save({"payload": Runs(print, "pwned")}, hostile)
    torch.save(create_model("resmlp-4").state_dict(), plain)

    def refuse(*args, **kwargs):
        raise pickle.UnpicklingError("Weights only load failed: a new wording for a global")

    monkeypatch.setattr(torch, "load", refuse)
    with pytest.raises(ValueError) as e:
        load_weights(create_model("resmlp-4"), hostile)
    assert f"{hostile} asks to run code when loaded (it calls builtins.print); " in str(e.value)
    with pytest.raises(ValueError) as e:
        load_weights(create_model("resmlp-4"), plain)
    assert str(e.value) == (
        f"{plain} asks to run code when loaded; reslab loads weights only and will not run it"
    )


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"", "is empty"),
        (b"not a weights file at all", "is not a safetensors or torch.save file"),
        (pickle.dumps([1, 2, 3], protocol=4), "holds a pickle that reslab cannot read as weights"),
    ],
    ids=["empty", "text", "pickle protocol 4"],
)
def test_other_files_that_are_not_weights(content, expected, tmp_path):
    path = tmp_path / "w.pth"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="^" + re.escape(f"{path} {expected}")):
        load_weights(create_model("resmlp-4"), path)
    assert path.read_bytes() == content


# ------------------------------------------------------------------------- 4 API misuse


def test_load_weights_arguments_the_wrong_way(weights, tmp_path, capsys):
    run = _run_folder(tmp_path / "run", weights)
    model = create_model("resmlp-4", **DIGITS_NET)
    with pytest.raises(ValueError) as e:
        load_weights("resmlp-4", run / runs.WEIGHTS)
    assert str(e.value) == (
        "load_weights takes the model (an nn.Module) first, got str 'resmlp-4'; "
        "build it with create_model('resmlp-4')"
    )
    with pytest.raises(ValueError, match="takes the model .* got str '.*model.safetensors'$"):
        load_weights(str(run / runs.WEIGHTS), model)  # swapped: no create_model hint for a path
    with pytest.raises(IsADirectoryError) as e:
        load_weights(model, run)
    assert str(e.value) == f"{run} is a folder, not a weights file; give {run / runs.WEIGHTS}"
    (tmp_path / "empty").mkdir()
    with pytest.raises(IsADirectoryError, match="empty is a folder, not a weights file; give a"):
        load_weights(model, tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="no such file: .*nope.safetensors"):
        load_weights(model, tmp_path / "nope.safetensors")
    eval_ = ["eval", "--model", "resmlp-4", "--weights"]
    _one_line_error(capsys, [*eval_, str(run)], f"give {run / runs.WEIGHTS}")
    _one_line_error(capsys, [*eval_, str(tmp_path / "nope.pth")], "no such weights file")
    load_weights(model, run / runs.WEIGHTS)  # the file itself loads


# ------------------------------------------------------------------------- 5 export metadata


def _with_metadata(weights: bytes, path: Path, default_cfg) -> Path:
    """`weights` with its default_cfg metadata replaced (a dict is merged into the saved one)."""
    tensors = safetensors.torch.load(weights)
    meta = json.loads(weights[8 : 8 + _header_length(weights)])["__metadata__"]
    if isinstance(default_cfg, dict):
        default_cfg = json.dumps(json.loads(meta["default_cfg"]) | default_cfg)
    safetensors.torch.save_file(tensors, path, metadata={**meta, "default_cfg": default_cfg})
    return path


@pytest.mark.parametrize(
    "default_cfg, expected",
    [
        (dict(input_size=[1, 100000, 100000]), "metadata: resmlp-4: img_size must be N or (H, W)"),
        (dict(width=65536), "parameters, more than the 2,147,483,648 reslab builds"),
        (dict(num_classes=10**9), "num_classes must be an integer from 1 to 1,000,000, got 10"),
        (
            dict(num_classes=0),
            "metadata: resmlp-4: num_classes must be an integer from 1 to 1,000,000",
        ),
        (dict(input_size=[1, 0, 8]), "metadata: resmlp-4: img_size must be"),
        (dict(input_size=[1, 8]), "metadata: input_size should be [C, H, W]"),
        (dict(width="wide"), "metadata: resmlp-4: width must be an integer from 1 to 65,536"),
        (dict(zero_init_residual="no"), "zero_init_residual must be True or False"),
        (dict(shortcut="Z"), "shortcut='Z'"),
        ("{not json", "metadata default_cfg is not valid JSON"),
        ("[1, 2]", "metadata default_cfg should be a JSON object, got list"),
    ],
)
def test_export_checks_what_a_weights_file_asks_for(
    default_cfg, expected, weights, tmp_path, capsys
):
    path = _with_metadata(weights, tmp_path / "w.safetensors", default_cfg)
    before = path.read_bytes()
    out = tmp_path / "m.pt2"
    argv = ["export", "--model", "resmlp-4", "--weights", str(path), "--out", str(out)]
    line = _one_line_error(capsys, argv, expected)
    assert str(path) in line
    assert path.read_bytes() == before and not out.exists()


def test_export_bounds_a_typed_example_input(tmp_path, capsys):
    out = str(tmp_path / "m.pt2")
    argv = ["export", "--model", "resnet20", "--img-size", "8000", "--in-chans", "8", "--out", out]
    _one_line_error(capsys, argv, "input size [8, 8000, 8000] asks for an example input of")
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------------- 6 JSON files


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"[1, 2]", "should hold a JSON object, got list"),
        (b'"a study"', "should hold a JSON object, got string"),
        (b"3", "should hold a JSON object, got number"),
        (b"null", "should hold a JSON object, got null"),
        (b"{garbage", "is not valid JSON"),
        (b"\xff\xfe{}", "is not valid JSON"),
        (b"[" * 100_000, "is not valid JSON"),
    ],
)
def test_json_files_of_the_wrong_shape(content, expected, weights, tmp_path, capsys):
    study = tmp_path / "out" / "n"
    study.mkdir(parents=True)
    (study / runs.STUDY).write_bytes(content)
    with pytest.raises(ValueError, match="^" + re.escape(f"{study / runs.STUDY} {expected}")):
        records.read_study(study, "lesion")
    run = _run_folder(tmp_path / "run", weights)
    lesion = ["lesion", "--from", str(run), "--out", str(tmp_path / "out"), "--name", "n"]
    _one_line_error(capsys, lesion, f"{study / runs.STUDY} {expected}")  # resuming that study
    _one_line_error(capsys, ["report", str(study)], f"{study / runs.STUDY} {expected}")
    (run / runs.CONFIG).write_bytes(content)
    before = _snapshot(tmp_path)
    lesion[-1] = "m"
    _one_line_error(capsys, lesion, f"{run / runs.CONFIG} {expected}")
    assert _snapshot(tmp_path) == before | _snapshot(tmp_path / "out" / "m")  # only its study.json


def test_read_json_names_a_file_of_the_wrong_shape(tmp_path):
    path = tmp_path / "trainer.json"
    path.write_text("[]")
    with pytest.raises(ValueError) as e:
        runs.read_json(path)
    assert str(e.value) == f"{path} should hold a JSON object, got list"


# ------------------------------------------------------------------------- 7 metrics not UTF-8


def _metrics(steps) -> list[bytes]:
    return [json.dumps({"kind": "train", "step": s, "train_loss": 1.0}).encode() for s in steps]


def test_metrics_that_are_not_utf8_stop_the_reader_and_the_resume(tmp_path):
    lines = _metrics([1, 2, 3, 4])
    content = b"\n".join([lines[0], b'{"kind": "tr\xff\xfe', *lines[1:]]) + b"\n"
    path = tmp_path / runs.METRICS
    path.write_bytes(content)
    for read in (runs.read_metrics, lambda folder: RunLog(folder, resume_step=3)):
        with pytest.raises(ValueError) as e:
            read(tmp_path)
        assert str(e.value) == f"{path} line 2 is not UTF-8 text"
    assert path.read_bytes() == content  # the resume that stopped kept every line


def test_a_torn_last_line_that_is_not_utf8_is_dropped(tmp_path):
    lines = _metrics([1, 2, 3, 4])
    path = tmp_path / runs.METRICS
    path.write_bytes(b"\n".join(lines) + b'\n{"kind": "train", "st\xe2\x82')  # killed mid-write
    assert runs.read_metrics(tmp_path) == [json.loads(x) for x in lines]
    RunLog(tmp_path, resume_step=3)
    assert path.read_bytes() == b"\n".join(lines[:3]) + b"\n"
