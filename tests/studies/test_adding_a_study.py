"""docs/adding-a-study.md is true: its two files, written into a package and named in the registry,
make a study that the CLI, `run_study` and `reslab report` serve like the built-in ones."""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import pytest

import reslab.studies
from reslab.cli import main
from reslab.training import runs

DOC = Path(__file__).resolve().parents[2] / "docs" / "adding-a-study.md"


@pytest.fixture
def width_study(tmp_path, monkeypatch):
    blocks = re.findall(r"^```python\n(.*?)^```", DOC.read_text(), re.S | re.M)
    assert len(blocks) == 2, "the doc shows __init__.py and report.py"
    package = tmp_path / "src" / "reslab_width_example"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(blocks[0])
    (package / "report.py").write_text(blocks[1])
    monkeypatch.syspath_prepend(str(package.parent))
    module = importlib.import_module("reslab_width_example")
    # the registry line: the name in NAMES, the package where `get` looks for it
    monkeypatch.setattr(reslab.studies, "NAMES", (*reslab.studies.NAMES, "width"))
    monkeypatch.setitem(sys.modules, "reslab.studies.width", module)
    yield module.STUDY
    sys.modules.pop("reslab_width_example", None)
    sys.modules.pop("reslab_width_example.report", None)


@pytest.mark.slow
def test_the_documented_study_runs_reports_and_rebuilds(width_study, tmp_path, capsys):
    out = tmp_path / "runs"
    summary = reslab.studies.run_study("width", out=str(out), name="toy", **width_study.toy)
    folder = out / "toy"
    assert [r["width"] for r in summary["rows"]] == [4, 32]
    assert summary["verdict"]["status"] in ("wider_trains_better", "not_shown")
    assert {p.name for p in runs.run_dirs(folder)} == {"4-s0", "32-s0"}
    (folder / runs.SUMMARY).unlink()
    assert main(["report", str(folder)]) == 0
    assert runs.read_json(folder / runs.SUMMARY) == summary
    page = (folder / runs.REPORT).read_text()
    assert page.index('class="verdict') < page.index("<details>")


def test_the_documented_study_is_a_command(width_study, capsys):
    with pytest.raises(SystemExit):
        main(["width", "--help"])
    out = capsys.readouterr().out
    for option in ("--widths", "--depth", "--seeds", "--lr", "--batch-size"):
        assert option in out
