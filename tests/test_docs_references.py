"""What the docs cite exists: every relative link (and its #anchor) in the Markdown and the notebook,
every repository path named in any source or doc file, every dotted `reslab.` name.

A file or module renamed without its citations fails here, not in a reader's browser.
"""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
NOTEBOOK = ROOT / "docs" / "tutorial.ipynb"
SOURCES = (
    [
        p
        for folder in ("src", "tests", "benchmarks", "docs", ".ci")
        for p in sorted((ROOT / folder).rglob("*"))
        if p.suffix in {".py", ".md", ".ipynb", ".toml", ""} and p.is_file()
    ]
    + DOCS[:2]
    + [ROOT / "pyproject.toml"]
)
# What docs/adding-a-study.md and its test create: the walk-through's new study, not in the tree.
NEW_IN_THE_WALKTHROUGH = "studies/width"

LINK = re.compile(r"\]\(([^)\s]+)\)")
PATH = re.compile(r"(?<![\w/.-])((?:src|tests|docs|benchmarks|\.ci)/[\w./-]*\w)")
DOTTED = re.compile(r"(?<![\w.\"'])(reslab(?:\.\w+)+)")


def markdown(path: Path) -> str:
    if path.suffix == ".ipynb":
        cells = json.loads(path.read_text())["cells"]
        return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    return path.read_text()


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(h) for h in re.findall(r"^#+ (.+)$", markdown(path), flags=re.M)}


@pytest.mark.parametrize("doc", [*DOCS, NOTEBOOK], ids=lambda p: p.name)
def test_every_relative_link_and_anchor_exists(doc):
    broken = []
    for target in LINK.findall(markdown(doc)):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        path = (doc.parent / file).resolve() if file else doc
        if not path.exists():
            broken.append(f"{target} (no file {path.relative_to(ROOT)})")
        elif anchor and path.suffix in {".md", ".ipynb"} and anchor not in anchors(path):
            broken.append(f"{target} (no heading #{anchor} in {path.name})")
    assert not broken, f"{doc.name} links to what does not exist: {broken}"


def test_every_repository_path_named_in_the_tree_exists():
    missing = sorted(
        f"{p.relative_to(ROOT)}: {cited}"
        for p in SOURCES
        for cited in set(PATH.findall(p.read_text(errors="replace")))
        if not (ROOT / cited.rstrip(".")).exists() and NEW_IN_THE_WALKTHROUGH not in cited
    )
    assert not missing, "cited paths that do not exist:\n" + "\n".join(missing)


def resolves(name: str) -> bool:
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def test_every_dotted_reslab_name_resolves():
    wrong = sorted(
        f"{p.relative_to(ROOT)}: {name}"
        for p in SOURCES
        for name in set(DOTTED.findall(p.read_text(errors="replace")))
        if NEW_IN_THE_WALKTHROUGH.replace("/", ".") not in name and not resolves(name)
    )
    assert not wrong, "names that no module or attribute has:\n" + "\n".join(wrong)


def test_the_checks_catch_what_they_are_for(tmp_path):
    """The three checks on made-up text: a missing file, a missing heading, a renamed module."""
    assert slug("`degradation`: degradation/lr0.02") == "degradation-degradationlr002"
    assert slug("Speed on your CPU") == "speed-on-your-cpu"
    missing = "tests" + "/report/test_nothing.py"  # split, or this file would cite it
    assert PATH.findall(f"see {missing}.") == [missing] and not (ROOT / missing).exists()
    assert resolves("reslab.training.build.build_run")
    assert not resolves("reslab.training.no_such_module")
    assert not resolves("reslab.studies.base.no_such_name")
    doc = tmp_path / "a.md"
    doc.write_text("# Title\n[ok](#title) [bad](#nothing)\n")
    assert anchors(doc) == {"title"}
