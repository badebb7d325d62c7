"""Study folders written before the studies moved onto one footing (reslab at commit e7ce78a, each
study's toy run with the old two-file layout, weights and checkpoints left out) still rebuild with
`reslab report`, to the same summary the old code wrote: the same verdicts and numbers."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from reslab.cli import main
from reslab.studies import NAMES
from reslab.training import runs

# keys a study's summary gained on purpose since (named in the commit that added them)
ADDED = {"lesion": {"diverged"}}  # the nets that diverged (none here), named under the one policy
OLD = Path(__file__).resolve().parents[1] / "fixtures" / "studies-e7ce78a"


@pytest.mark.parametrize("name", NAMES)
def test_old_folder_rebuilds_to_the_old_summary(name, tmp_path, capsys):
    old = OLD / name / "toy"
    folder = shutil.copytree(old, tmp_path / name / "toy")
    (folder / runs.SUMMARY).unlink()
    assert main(["report", str(folder)]) == 0
    new, before = runs.read_json(folder / runs.SUMMARY), runs.read_json(old / runs.SUMMARY)
    assert new["verdict"] == before["verdict"]
    assert {k: v for k, v in new.items() if k not in ADDED.get(name, ())} == before
