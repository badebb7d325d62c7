"""The tutorial notebook, docs/tutorial.ipynb: stored without outputs, written against reslab's public
API only, and run top to bottom (once per test session, in a temporary folder) by a real Jupyter
kernel; its HTML version embeds every figure, loads no script from the network, and shows the
figures in a headless browser (Debian's chromium; skipped where it is not installed)."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

import reslab

NOTEBOOK = Path(__file__).resolve().parents[2] / "docs" / "tutorial.ipynb"
# the studies the notebook runs, each through reslab.run_study as its CLI command does
STUDIES = {"degradation", "gradients", "identity", "lesion", "landscape"}
# nbconvert's lab page less the scripts it fetches from CDNs (require.js, MathJax, mermaid): the
# notebook writes no LaTeX and no diagrams, so the page needs no script at all.
OFFLINE_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
"""
DATA_PNG = re.compile(r'<img[^>]+src="data:image/png;base64,')


def stored() -> dict:
    """The notebook file as plain JSON (the fast tests do without nbformat, which takes seconds to
    import)."""
    return json.loads(NOTEBOOK.read_text(encoding="utf-8"))


def code_cells(nb: dict) -> list[str]:
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


def test_stored_without_outputs():
    nb = stored()
    assert code_cells(nb), "the notebook has no code"
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [], f"cell {i} is stored with outputs; clear them"
            assert cell["execution_count"] is None, f"cell {i} is stored with an execution count"
    assert nb["metadata"]["kernelspec"]["name"] == "python3"


def reslab_uses(source: str) -> tuple[set[str], list[str]]:
    """(names the code takes from `reslab`, imports of reslab's submodules) in one code cell."""
    names, private, aliases = set(), [], set()
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "reslab":
                    aliases.add(alias.asname or "reslab")
                elif alias.name.startswith("reslab."):
                    private.append(f"import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "reslab":
                names.update(alias.name for alias in node.names)
            elif node.module.startswith("reslab."):
                private.append(f"from {node.module} import ...")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id in aliases | {"reslab"}:
                names.add(node.attr)
    return names, private


def test_uses_only_the_public_api():
    used, private = set(), []
    for source in code_cells(stored()):
        names, imports = reslab_uses(source)
        used |= names
        private += imports
    assert not private, f"the notebook imports reslab's internals: {private}"
    assert used, "the notebook does not use reslab"
    assert used <= set(reslab.__all__), (
        f"not in reslab.__all__: {sorted(used - set(reslab.__all__))}"
    )


def test_runs_the_studies_as_the_cli_does():
    called = set()
    for source in code_cells(stored()):
        for node in ast.walk(ast.parse(source)):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "run_study"
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                called.add(node.args[0].value)
    assert called == STUDIES


# ---------------------------------------------------------------------------------- executed once


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """(executed notebook, the folder it ran in): a python3 kernel whose working directory is a
    fresh temporary folder; any failing cell fails every test that uses it."""
    nbclient = pytest.importorskip("nbclient")
    nbformat = pytest.importorskip("nbformat")
    folder = tmp_path_factory.mktemp("tutorial")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RESLAB_DATA", str(folder / "data"))  # nothing outside the temporary folder
        client = nbclient.NotebookClient(
            nb, kernel_name="python3", timeout=600, resources={"metadata": {"path": str(folder)}}
        )
        client.execute()  # raises CellExecutionError, with the cell and its traceback
    return nb, folder


def outputs(nb, kind: str) -> list[dict]:
    """Every display output carrying `kind` (a MIME type), in order."""
    return [
        o
        for cell in nb.cells
        if cell.cell_type == "code"
        for o in cell.outputs
        if o.output_type in ("display_data", "execute_result") and kind in o.data
    ]


@pytest.fixture(scope="module")
def html_page(executed) -> Path:
    """The executed notebook as one self-contained HTML page (figures as data URIs, no scripts)."""
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter
    from traitlets.config import Config

    nb, folder = executed
    config = Config()
    config.CoalesceStreamsPreprocessor.enabled = True  # progress bars collapse to their last state
    exporter = HTMLExporter(
        config=config,
        extra_loaders=[DictLoader({"offline.html.j2": OFFLINE_TEMPLATE})],
        template_file="offline.html.j2",
    )
    html, _ = exporter.from_notebook_node(nb)
    page = folder / "tutorial.html"
    page.write_text(html, encoding="utf-8")
    return page


@pytest.mark.slow
def test_runs_top_to_bottom_into_its_own_folder(executed):
    nb, folder = executed
    assert all(c.execution_count for c in nb.cells if c.cell_type == "code")
    for study in STUDIES:  # every study ran where the notebook says: OUT = runs/tutorial
        assert (folder / "runs" / "tutorial" / study / "tutorial" / "report.html").is_file(), study
    prose = [o.data["text/markdown"] for o in outputs(nb, "text/markdown")]
    assert len(prose) >= 7 and all(len(text) > 80 for text in prose)  # the computed paragraphs
    assert len(outputs(nb, "image/png")) == 6  # section 1's plot and five study figures


@pytest.mark.slow
def test_html_embeds_every_figure_and_loads_nothing(executed, html_page):
    nb, _ = executed
    html = html_page.read_text(encoding="utf-8")
    assert len(DATA_PNG.findall(html)) == len(outputs(nb, "image/png"))
    assert "<script" not in html
    assert "Traceback" not in html
    assert "The cure, measured" in html


@pytest.mark.slow
def test_html_shows_its_figures_in_a_browser(executed, html_page, browser):
    from reslab.report.html import SCRIPT  # the reports' own figure counter

    nb, _ = executed
    page = html_page.with_name("tutorial-counted.html")
    html = html_page.read_text(encoding="utf-8")
    page.write_text(html.replace("</body>", f"<script>{SCRIPT}</script>\n</body>"), "utf-8")
    loaded, total, dom = browser.figures(page)
    assert total == len(outputs(nb, "image/png")) == 6
    assert loaded == total
    assert "Why it works" in dom and "Deleting blocks" in dom
