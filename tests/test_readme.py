"""The Python tour (docs/guide.md, linked from the README) runs as written: its ```python blocks, in
order, in one namespace, in an empty folder, offline. A `print(...)  # text` line must print that
text, so outputs stay true."""

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "docs" / "guide.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)


@pytest.mark.slow
def test_readme_python_tour_runs(tmp_path, monkeypatch, capsys):
    from reslab.models import registry

    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 6  # build + convert, weights, train + study, own model, features, export
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # tiny_mlp stays here
    monkeypatch.setenv("RESLAB_DATA", str(tmp_path / "data"))  # nothing outside the temp folder
    threads = torch.get_num_threads()
    namespace: dict = {"__name__": "__readme__"}
    try:
        for i, code in enumerate(blocks):
            exec(compile(code, f"README.md python block {i + 1}", "exec"), namespace)
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    promised = re.findall(r"^[ \t]*print\(.*\)[ \t]+#[ \t]*(.+?)[ \t]*$", "\n".join(blocks), re.M)
    assert promised, "the tour shows no outputs"
    for text in promised:
        assert text in out, f"README promises {text!r}; the tour printed:\n{out[-2000:]}"
    # the files the tour says it writes, it writes
    written = ["resnet20.safetensors", "resnet20.onnx", "resmlp4.pt2", "resnet18-torchvision.pth"]
    written += ["runs/degradation/tour/report.html", "runs/resmlp-4-digits-s0/model.safetensors"]
    written += [
        "runs/ResidualSequential-digits-s0/metrics.csv",
        "runs/tiny_mlp-digits-s0/config.json",
    ]
    for f in written:
        assert (tmp_path / f).is_file(), f
