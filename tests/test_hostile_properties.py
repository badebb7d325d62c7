"""The hostile tests as properties (issue 23, "How to work"): hypothesis generates the input, and
each property holds for every example: exit 2 (never 1, "a bug in reslab"), one line, no traceback,
and every file that existed before keeps its bytes. Generated: JSON documents and fields in a run's
config.json, metrics lines, safetensors and torch.save contents, image folders.

Small on purpose (a modest number of examples each, derandomized so that CI sees the same ones);
`HYPOTHESIS_PROFILE=thorough pytest tests/test_hostile_properties.py` tries many more."""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from reslab.cli import describe_error, main
from reslab.training import runs
from reslab.training.config import TrainConfig

settings.register_profile(
    "small",
    max_examples=15,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.register_profile("thorough", parent=settings.get_profile("small"), max_examples=300)
small = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "small"))

DIGITS_NET = dict(num_classes=10, in_chans=1, img_size=8)
RESUME = ["train", "--model", "resmlp-4", "--iters", "4", "--eval-every", "2", "--no-progress"]

# any JSON document: what a hand edit, a bad disk or a hostile user can leave in a file
json_leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=False)  # training flushes them
    | st.text(max_size=8)
)
json_values = st.recursive(
    json_leaves,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


def files(folder: Path) -> dict[str, bytes]:
    """The bytes of every regular file under `folder` (links, FIFOs and the empty lock aside)."""
    out = {}
    for top, _, names in os.walk(folder):
        for name in names:
            p = Path(top) / name
            if name != runs.LOCK and stat.S_ISREG(p.lstat().st_mode):
                out[str(p.relative_to(folder))] = p.read_bytes()
    return out


def refused(capsys, argv: list[str]) -> str:
    """Run `argv`: exit 2, one line on stderr, no traceback, not called a bug; returns the line."""
    capsys.readouterr()
    status = main(argv)
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert status == 2, (status, err)
    assert len(err) == 1 and "Traceback" not in err[0] and "bug in reslab" not in err[0], err
    return err[0]


@contextmanager
def scratch() -> Iterator[Path]:
    """A fresh folder per example (pytest's tmp_path is one per test, shared by its examples)."""
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory) -> Path:
    """A run folder as a kill at step 4 leaves it: config, metrics, checkpoints, no summary."""
    out = tmp_path_factory.mktemp("killed")
    assert main([*RESUME, "--out", str(out), "--name", "r"]) == 0
    (out / "r" / runs.SUMMARY).unlink()
    (out / "r" / runs.WEIGHTS).unlink()
    return out / "r"


def resume(run: Path) -> list[str]:
    return [*RESUME, "--out", str(run.parent), "--name", run.name, "--resume"]


# ------------------------------------------------------------------------- config.json

# the fields a resume compares (where the run lives and how it shows progress are not compared)
COMPARED = sorted(
    set(TrainConfig().to_dict())
    - {"out", "name", "resume", "progress", "device", "num_threads", "compile"}
)


@small
@given(field=st.sampled_from(COMPARED), value=json_values)
def test_any_config_field_stops_a_resume_in_one_line(killed_run, capsys, field, value):
    cfg = json.loads((killed_run / runs.CONFIG).read_text())
    assume(json.dumps(value) != json.dumps(cfg[field]))
    with scratch() as tmp:
        run = shutil.copytree(killed_run, tmp / "r")
        (run / runs.CONFIG).write_text(json.dumps({**cfg, field: value}))
        before = files(run)
        refused(capsys, resume(run))
        assert files(run) == before


@small
@given(document=json_values)
def test_any_config_document_stops_a_resume_in_one_line(killed_run, capsys, document):
    with scratch() as tmp:
        run = shutil.copytree(killed_run, tmp / "r")
        (run / runs.CONFIG).write_text(json.dumps(document))
        before = files(run)
        refused(capsys, resume(run))
        assert files(run) == before


# ------------------------------------------------------------------------- metrics.jsonl

metric_lines = st.one_of(
    json_values.map(json.dumps),
    st.fixed_dictionaries(
        {"kind": json_values, "step": json_values}, optional={"x": json_values}
    ).map(json.dumps),
    st.text(max_size=30).filter(lambda t: "\n" not in t and "\r" not in t),
)


@small
@given(line=metric_lines)
def test_any_bad_metrics_line_stops_a_resume_and_changes_nothing(killed_run, capsys, line):
    assume(line.strip() and runs.metric_record(line) is None)
    with scratch() as tmp:
        run = shutil.copytree(killed_run, tmp / "r")
        lines = (run / runs.METRICS).read_text().splitlines()
        (run / runs.METRICS).write_text("\n".join([lines[0], line, *lines[1:]]) + "\n")
        before = files(run)
        assert "line 2 is not a metrics record" in refused(capsys, resume(run))
        assert files(run) == before


# ------------------------------------------------------------------------- weights files


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    from reslab.models import create_model

    return create_model("resmlp-4", **DIGITS_NET).state_dict()


DTYPES = [torch.bool, torch.int8, torch.uint8, torch.int32, torch.int64, torch.complex64]
MUTATIONS = st.one_of(
    st.tuples(st.just("drop"), st.integers(0, 19)),
    st.tuples(st.just("extra"), st.text(min_size=1, max_size=12)),
    st.tuples(st.just("dtype"), st.integers(0, 19), st.sampled_from(DTYPES)),
    st.tuples(st.just("shape"), st.integers(0, 19), st.lists(st.integers(0, 5), max_size=3)),
    st.tuples(st.just("default_cfg"), json_values.map(json.dumps) | st.text(max_size=10)),
    st.tuples(st.just("normalization"), json_values.map(json.dumps) | st.text(max_size=10)),
)


def _mutate(state: dict, mutations: list) -> tuple[dict, dict]:
    """A state dict and metadata that `mutations` made unfit for resmlp-4 on digits."""
    tensors, meta = dict(state), {}
    for m in mutations:
        keys = sorted(tensors)
        if m[0] == "drop" and keys:
            tensors.pop(keys[m[1] % len(keys)])
        elif m[0] == "extra" and m[1] not in tensors:
            tensors[m[1]] = torch.zeros(2)
        elif m[0] == "dtype" and keys:
            key = keys[m[1] % len(keys)]
            if tensors[key].is_floating_point():
                tensors[key] = tensors[key].to(m[2])
        elif m[0] == "shape" and keys:
            key = keys[m[1] % len(keys)]
            if list(tensors[key].shape) != m[2]:
                tensors[key] = torch.zeros(m[2])
        elif m[0] in ("default_cfg", "normalization"):
            meta[m[0]] = m[1]
    return tensors, meta


def _fits(tensors: dict, state: dict) -> bool:
    """Whether `tensors` load into the model of `state` (the mutations of the tensors missed)."""
    from reslab.models.weights import _kind

    optional = {k for k in state if k.endswith("num_batches_tracked")}  # files before PyTorch 0.4.1
    same = tensors.keys() - optional == state.keys() - optional and all(
        tensors[k].shape == v.shape and _kind(tensors[k].dtype) == _kind(v.dtype)
        for k, v in state.items()
        if k in tensors
    )
    return same


@small
@given(mutations=st.lists(MUTATIONS, min_size=1, max_size=3))
def test_any_unfit_safetensors_file_is_refused_by_eval(state, capsys, mutations):
    """Unfit tensors are refused; odd metadata is refused or, where it is legal ("{}" records no
    model), the file evaluates: never a traceback, never "a bug"."""
    import safetensors.torch

    tensors, meta = _mutate(state, mutations)
    with scratch() as tmp:
        path = tmp / "w.safetensors"
        safetensors.torch.save_file(tensors, path, metadata=meta)
        before = path.read_bytes()
        argv = ["eval", "--weights", str(path), "--model", "resmlp-4", "--data", "digits"]
        if _fits(tensors, state):
            capsys.readouterr()
            status = main(argv)
            err = capsys.readouterr().err
            assert status in (0, 2) and "Traceback" not in err and "bug in reslab" not in err, err
        else:
            refused(capsys, argv)
        assert path.read_bytes() == before


pth_keys = st.one_of(
    st.text(max_size=10), st.integers(), st.tuples(st.integers()), st.booleans(), st.none()
)
pth_values = st.one_of(
    st.sampled_from(DTYPES + [torch.float32, torch.float16]).map(lambda d: torch.zeros(3, dtype=d)),
    st.just(torch.zeros(3).to_sparse()),
    st.just(torch.zeros(3, device="meta")),
    json_leaves,
)


@small
@given(contents=st.dictionaries(pth_keys, pth_values, max_size=4))
def test_any_odd_torch_save_file_is_refused_by_eval(capsys, contents):
    with scratch() as tmp:
        path = tmp / "w.pth"
        torch.save(contents, path)
        before = path.read_bytes()
        argv = ["eval", "--weights", str(path), "--model", "resmlp-4", "--data", "digits"]
        refused(capsys, argv)
        assert path.read_bytes() == before


# ------------------------------------------------------------------------- image folders

ENTRY = st.tuples(
    st.sampled_from(["train", "test"]),
    st.sampled_from(["a", "b", "c"]),
    st.sampled_from(["0.png", "1.png", "2.JPG", "x.bmp", "n.txt", "sub/3.png"]),
    st.sampled_from(
        [
            "rgb",
            "rgb",
            "grey16",
            "float",
            "garbage",
            "empty",
            "fifo",
            "link-in",
            "link-out",
            "link-up",
            "link-self",
            "hardlink",
            "folder",
        ]
    ),  # fmt: skip
    st.integers(1, 5),
)


def _make(root: Path, entries: list) -> None:
    from PIL import Image

    (root.parent / "outside.png").write_bytes(b"")
    made: list[Path] = []
    for split, cls, name, kind, side in entries:
        path = root / split / cls / name
        if path.exists() or path.is_symlink():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if kind == "rgb":
            Image.fromarray(np.full((side, side, 3), side * 40, np.uint8)).save(path, format="PNG")
        elif kind == "grey16":
            Image.fromarray(np.full((side, side), 4000 * side, np.uint16)).save(path, format="PNG")
        elif kind == "float":
            Image.fromarray(np.full((side, side), 0.5, np.float32)).save(path, format="TIFF")
        elif kind == "garbage":
            path.write_bytes(b"\x89PNG not really" * side)
        elif kind == "empty":
            path.write_bytes(b"")
        elif kind == "fifo":
            os.mkfifo(path)
        elif kind == "link-in" and made:
            os.symlink(made[side % len(made)], path)
        elif kind == "link-out":
            os.symlink(root.parent / "outside.png", path)
        elif kind == "link-up":
            os.symlink("..", path)
        elif kind == "link-self":
            os.symlink(path.name, path)
        elif kind == "hardlink" and made:
            os.link(made[side % len(made)], path)
        elif kind == "folder":
            path.mkdir()
        if path.is_file() and not path.is_symlink():
            made.append(path)


@small
@given(entries=st.lists(ENTRY, min_size=1, max_size=8), split=st.sampled_from(["train", "test"]))
def test_any_image_folder_loads_each_file_once_or_says_why_in_one_line(entries, split):
    import warnings

    from reslab.data import load_dataset

    with scratch() as tmp:
        root = tmp / "data"
        _make(root, entries)
        before = files(tmp)
        try:
            with warnings.catch_warnings():  # what is passed over: test_imagefolder_walk
                warnings.simplefilter("ignore")
                data = load_dataset(f"imagefolder:{root}@4", split)
        except Exception as err:  # the property: never an error the CLI calls a bug
            status, message = describe_error(err)
            assert status == 2 and "\n" not in message, message
        else:
            regular = {
                os.stat(p).st_ino
                for p in (root / split).rglob("*")
                if p.is_file() and not p.is_symlink()
            }
            assert len(data) <= len(regular) and data.images.shape[1:] == (3, 4, 4)
        assert files(tmp) == before
