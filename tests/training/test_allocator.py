"""RESLAB_MALLOC: the process restarts on the allocator asked for, or says in one line why not."""

import os
import subprocess
import sys

import pytest

from reslab import cli
from reslab.training import allocator

PROBE = "from reslab.training.allocator import use_requested, current; use_requested(); print(current())"


def _probe(value: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", allocator.ENV)}
    return subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**env, allocator.ENV: value},
        capture_output=True,
        text=True,
    )


@pytest.mark.skipif("LD_PRELOAD" in os.environ, reason="this process runs on a preloaded malloc")
def test_this_process_runs_on_the_system_malloc():
    assert allocator.current() == "system"
    assert _probe("system").stdout.strip() == "system"


@pytest.mark.parametrize("name", list(allocator.LIBRARIES))
def test_restart_on_requested_allocator(name):
    if allocator.find(name) is None:
        pytest.skip(f"{name} is not installed here ({allocator.INSTALL[name]})")
    out = _probe(name)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == name  # read from /proc/self/maps of the restarted process


def test_missing_library_names_what_to_install(monkeypatch):
    monkeypatch.setattr(allocator, "find", lambda name: None)
    with pytest.raises(ValueError, match="not found; install it .*apt install libtcmalloc"):
        allocator.preload_env("tcmalloc")


def test_bad_value_is_a_one_line_cli_error(monkeypatch, capsys):
    monkeypatch.setenv(allocator.ENV, "hoard")
    assert cli.main(["models"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "RESLAB_MALLOC must be one of system, tcmalloc, jemalloc" in err
