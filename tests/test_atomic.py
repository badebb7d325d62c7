"""Every file reslab writes is atomic (issue 23, cause 1): on a real disk that fills up, each writer
fails with one line naming its path, the file it was replacing keeps its bytes, and no temporary
file is left. The writers are the ones `src/` uses; `test_every_writer_goes_through_atomic` keeps
new ones from writing around `reslab.atomic`."""

from __future__ import annotations

import ast
import errno
from pathlib import Path

import pytest
import torch

from reslab import atomic
from reslab.cli import main

DIGITS_NET = dict(num_classes=10, in_chans=1, img_size=8)
SRC = Path(__file__).parents[1] / "src" / "reslab"


def _fill(disk: Path, leave: int = 8192) -> None:
    """Fill `disk` until `leave` bytes are free."""
    import shutil

    free = shutil.disk_usage(disk).free
    (disk / "filler").write_bytes(b"\0" * max(free - leave, 0))


def _json(path: Path, big: bool) -> None:
    from reslab.training import runs

    runs.write_json(path, {"x": "a" * (100_000 if big else 10)})


def _weights(path: Path, big: bool) -> None:
    from reslab.models import create_model, save_weights

    save_weights(create_model("resmlp-4" if big else "resmlp-2", **DIGITS_NET), path)


def _figure(path: Path, big: bool) -> None:
    from reslab.report import figures

    fig, (ax,) = figures.figure()
    n = 20_000 if big else 2
    ax.scatter(torch.rand(n), torch.rand(n), c=torch.rand(n))  # noise: a PNG that compresses badly
    figures.save(fig, path)


def _page(path: Path, big: bool) -> None:
    from reslab.report.html import Page

    page = Page("t")
    page.blocks.append("<p>" + "x" * (100_000 if big else 10) + "</p>")
    page.write(path)


@pytest.mark.parametrize("write", [_json, _weights, _figure, _page])
def test_a_full_disk_keeps_the_old_file(write, small_disk):
    path = small_disk / "out.file"
    write(path, big=False)
    before = path.read_bytes()
    _fill(small_disk)
    with pytest.raises(atomic.WriteFailed) as info:
        write(path, big=True)
    assert str(info.value) == (
        f"could not write {path}: No space left on device (the file there before is unchanged); "
        "free space and rerun"
    )
    assert info.value.errno == errno.ENOSPC
    assert path.read_bytes() == before
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler", "out.file"]


@pytest.mark.parametrize("suffix", [".pt2", ".onnx"])
def test_export_onto_a_full_disk_is_one_line_and_keeps_the_previous_export(
    suffix, small_disk, capsys
):
    """torch's zip writer used to abort the process with a C++ stack trace, leaving half a file."""
    out = small_disk / f"m{suffix}"
    argv = ["export", "--model", "resmlp-2", "--num-classes", "10", "--in-chans", "1"]
    assert main([*argv, "--img-size", "8", "--out", str(out)]) == 0
    before = out.read_bytes()
    _fill(small_disk)
    capsys.readouterr()
    assert main([*argv, "--img-size", "8", "--model-arg", "width=128", "--out", str(out)]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert err == [
        f"reslab export: error: could not write {out}: No space left on device (the file there "
        "before is unchanged); free space and rerun"
    ]
    assert out.read_bytes() == before
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler", out.name]


def test_a_failed_write_that_is_not_io_passes_unchanged_and_leaves_nothing(tmp_path):
    (tmp_path / "f").write_text("old")
    with pytest.raises(ZeroDivisionError), atomic.replacing(tmp_path / "f") as tmp:
        tmp.write_text("half")
        raise ZeroDivisionError  # a bug in the writer stays a bug, not a "could not write"
    assert (tmp_path / "f").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_a_new_file_gets_the_mode_open_would_give_and_sidecars_move_with_it(tmp_path):
    import os

    mask = os.umask(0o022)
    try:
        with atomic.replacing(tmp_path / "m.onnx") as tmp:
            tmp.write_text("graph")
            (tmp.parent / "m.onnx.data").write_text("weights")  # ONNX external data
    finally:
        os.umask(mask)
    assert (tmp_path / "m.onnx").stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]


def test_a_write_into_a_file_as_folder_is_one_line(tmp_path):
    (tmp_path / "a").write_text("x")
    with pytest.raises(atomic.WriteFailed, match=f"^could not write {tmp_path}/a/b: "):
        atomic.write_text(tmp_path / "a" / "b", "y")
    assert (tmp_path / "a").read_text() == "x"


# calls that write a file, by name; `open` only with a mode that writes
_WRITERS = {"write_text", "write_bytes", "savefig", "save_file", "save"}
_MOVES = {"os.replace", "os.rename", "shutil.move", "shutil.copy", "shutil.copyfile"}
_ATOMIC = ("atomic.", "runs.write_json", "runs.write_text", "figures.save")  # built on atomic
# (file, call): writes that are not a file's content: serializers into memory, a lock, a move
_NOT_CONTENT = {
    ("models/weights.py", "safetensors.torch.save"),  # to bytes, then atomic.write_bytes
    ("export.py", "torch.export.save"),  # into a BytesIO, then atomic.write_bytes
    ("export.py", "program.save"),  # _save_onnx: to the temporary path atomic.replacing gave
    ("training/runs.py", "open"),  # the .lock file flock holds: it has no content
    ("training/checkpoint.py", "os.rename"),  # set_aside: a damaged checkpoint renamed, kept whole
}


def _writes(tree: ast.AST) -> list[ast.Call]:
    """The calls in `tree` that write a file, outside `with atomic.replacing(...)` blocks."""
    found = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.With) and any(
            ast.unparse(item.context_expr).startswith("atomic.replacing(") for item in node.items
        ):
            return
        if isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            short = name.rsplit(".", 1)[-1]
            mode = node.args[1] if name == "open" and len(node.args) > 1 else None
            writes_mode = isinstance(mode, ast.Constant) and set(str(mode.value)) & set("wax+")
            writer = "." in name and short in _WRITERS and not name.startswith(_ATOMIC)
            if writer or name in _MOVES or (name == "open" and writes_mode):
                found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def test_every_writer_goes_through_atomic():
    """A call in `src/` that writes a file is `atomic.*` (or `runs.write_json`, built on it), or sits
    inside an `atomic.replacing` block, or is one of the few that write no file's content."""
    bypass = []
    for file in sorted(SRC.rglob("*.py")):
        rel = str(file.relative_to(SRC))
        if rel == "atomic.py":
            continue
        for call in _writes(ast.parse(file.read_text())):
            name = ast.unparse(call.func)
            if (rel, name) not in _NOT_CONTENT:
                bypass.append(f"{rel}:{call.lineno}: {ast.unparse(call)[:100]}")
    assert not bypass, "writes that bypass reslab.atomic:\n" + "\n".join(bypass)
