"""The landscape study's CIFAR-10 option on conv twins: `reslab landscape --preset cpu --source
<a degradation study of --data cifar10 --preset cpu>` draws that study's own plain and residual conv
nets (trained a few steps on a tiny CIFAR-10 in its official python-pickle layout), and a --source of
other data than the preset's is refused in one line."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from reslab.cli import main
from reslab.studies import run_study
from reslab.studies.landscape import SURFACES
from reslab.training import runs
from reslab.training.build import load_data
from reslab.training.evaluation import evaluate
from reslab.training.trained import load_run

sys.path.insert(0, str(Path(__file__).parents[1] / "data"))
from data_files import write_cifar  # noqa: E402

CELLS = dict(depths=(8,), seeds=(0,), iters=2, jobs=1, train=dict(batch_size=10, eval_every=2))


@pytest.fixture(scope="module")
def cifar_study(tmp_path_factory):
    """(data root, a `degradation --preset cpu` study folder of plain-8 and resnet-8, seed 0)."""
    root = tmp_path_factory.mktemp("cifar")
    write_cifar(root / "data", "cifar10", n=4)  # 20 training images, 4 test images
    run_study("degradation", "cpu", data_dir=str(root / "data"), out=str(root / "degradation"),
              name="c", **CELLS)  # fmt: skip
    return root, root / "degradation" / "c"


@pytest.mark.slow
def test_the_cpu_preset_draws_the_conv_twins_of_a_cifar_degradation_study(cifar_study):
    root, source = cifar_study
    summary = run_study(
        "landscape", "cpu", data_dir=str(root / "data"), source=str(source),
        out=str(root / "landscape"), name="c", points=3, subset=16, hessian_images=8, **CELLS,
    )  # fmt: skip
    folder = root / "landscape" / "c"
    assert runs.read_json(folder / runs.STUDY)["reused"] == 2  # both twins, none trained here
    assert not (folder / runs.RUNS).exists()
    nets = runs.read_json(folder / SURFACES)["nets"]
    assert sorted((n["arch"], n["run_dir"]) for n in nets) == [
        ("plain", str(source / "runs" / "plain-8-s0")),
        ("residual", str(source / "runs" / "residual-8-s0")),
    ]
    for n in nets:  # the centre of the grid is the conv net's own loss on the same 16 images
        model, cfg = load_run(n["run_dir"])
        first = load_data(cfg)[0].subset(torch.arange(16))  # evaluate normalises them as trained
        assert first.images.shape == (16, 3, 32, 32)
        assert any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
        assert np.asarray(n["loss"]).shape == (3, 3)
        assert n["loss"][1][1] == pytest.approx(
            evaluate(model, first, fold=False)["loss"], rel=1e-5
        )
    assert {r["arch"] for r in summary["rows"]} == {"plain", "residual"}


@pytest.mark.slow
def test_a_source_of_other_data_is_refused_in_one_line(cifar_study, tmp_path, capsys):
    root, source = cifar_study
    argv = ["landscape", "--source", str(source), "--out", str(tmp_path), "--depths", "8"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds nets trained on cifar10 (preset cpu)" in err[0]
    assert "pass --preset cpu" in err[0] and not any(tmp_path.iterdir())
