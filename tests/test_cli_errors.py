"""One place turns an exception into the command line's one line (`reslab.cli.describe_error`);
`--debug` (anywhere on the line) or RESLAB_DEBUG=1 shows the traceback instead."""

from __future__ import annotations

import pytest

from reslab import cli


def _fail_with(monkeypatch, err: BaseException) -> None:
    def command(opts):
        raise err

    monkeypatch.setitem(cli.COMMANDS, "models", command)


@pytest.mark.parametrize(
    "err, status, fragment",
    [
        (ValueError("--lr must be > 0"), 2, "--lr must be > 0"),
        (FileNotFoundError(2, "No such file or directory", "w.pt"), 2, "No such file"),
        (MemoryError(), 2, "out of memory"),
        (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), 2, "smaller --batch-size"),
        (TypeError("unsupported operand"), 1, "this is a bug in reslab"),
    ],
)
def test_each_error_is_one_line_with_its_status(err, status, fragment, monkeypatch, capsys):
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    _fail_with(monkeypatch, err)
    assert cli.main(["models"]) == status
    err_lines = capsys.readouterr().err.splitlines()
    assert len(err_lines) == 1 and err_lines[0].startswith("reslab models: error: ")
    assert fragment in err_lines[0] and "Traceback" not in err_lines[0]


def test_library_errors_are_named_not_shown_as_bugs(tmp_path, monkeypatch, capsys):
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = tmp_path / "t.safetensors"
    path.write_bytes(b"\xff" * 16)  # header length larger than the file
    with pytest.raises(SafetensorError) as info:
        load_file(path)
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    _fail_with(monkeypatch, info.value)
    assert cli.main(["models"]) == 2
    assert "not readable safetensors" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--debug", "models"], ["models", "--debug"], ["models"]])
def test_debug_shows_the_traceback(argv, monkeypatch):
    if argv == ["models"]:
        monkeypatch.setenv(cli.DEBUG_ENV, "1")
    _fail_with(monkeypatch, TypeError("unsupported operand"))
    with pytest.raises(TypeError, match="unsupported operand"):
        cli.main(argv)


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["train", "--preset", "nosuch"], "invalid choice: 'nosuch' (choose from"),
        (["train", "--lr", "abc"], "expected float, got 'abc'"),
        (["trian"], "invalid choice: 'trian'"),
    ],
)
def test_a_usage_error_is_one_line_pointing_to_help(argv, fragment, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and fragment in err[0] and err[0].endswith("--help`)"), err
