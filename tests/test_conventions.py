"""What timm and torchvision users expect on the first day (issue 28, items 6 and 8): a model list
that is instant and sorted naturally, a hint for a typo, a bare `reslab` that helps, files a group
can read, no lock left in a finished run, tab completion, the licence the metadata names."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

import reslab
from reslab import cli
from reslab.models import create_model, list_models, model_table
from reslab.models.flops import stored_table
from reslab.training import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]


def test_models_sort_naturally_as_timm():
    names = list_models("resnet*")
    assert names.index("resnet18") < names.index("resnet20") < names.index("resnet101")
    assert names.index("resnet110") < names.index("resnet1202")


def test_a_typo_gets_a_suggestion():
    with pytest.raises(ValueError, match="did you mean resnet20"):
        create_model("renset20")


@pytest.mark.slow
def test_the_stored_model_table_is_what_the_models_compute():
    """`reslab models` reads the table instead of building ResNet-1202: it must be what building
    every registered model gives (regenerate with reslab.models.flops.write_table())."""
    assert stored_table() == model_table(list_models())


def test_models_json_and_table(capsys):
    assert cli.main(["models", "resnet2*", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["resnet20"] and rows[0]["params"] == 269_722
    assert rows[0]["input_size"] == [3, 32, 32]


def test_bare_reslab_shows_the_help(capsys):
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: reslab") and "degradation" in out


def test_weights_are_readable_by_the_group_and_no_lock_stays(tmp_path):
    old = os.umask(0o022)
    try:
        train(TrainConfig(model="resmlp-4", iters=3, out=str(tmp_path), name="r", progress=False))
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "r" / "model.safetensors").stat().st_mode)
    assert mode == 0o644, oct(mode)
    assert not (tmp_path / "r" / ".lock").exists()


def test_tab_completion_and_typing_marker():
    assert {"create_model", "train", "load_run", "run_study"} <= set(dir(reslab))
    assert (Path(reslab.__file__).parent / "py.typed").is_file()


def test_the_licence_the_metadata_names_is_there():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License")
    if sys.version_info >= (3, 11):
        import tomllib

        meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
        assert meta["project"]["license"]["text"] == "MIT"
