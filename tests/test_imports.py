"""No import cycles among reslab's modules, counting every import (module level and inside functions),
and the report toolkit imports no study: checked on the source text with `ast`, nothing is imported."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import reslab

SRC = Path(reslab.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the reslab modules it imports (`from pkg import sub` counts as importing `pkg.sub`)."""
    files = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(
                        package.split(".")[: len(package.split(".")) - node.level + 1] + [base]
                    ).strip(".")
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names
                ]
            else:
                continue
            graph[mod] |= {t for t in targets if t in files and t != mod}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_constructed_cycle():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(g) == [["a", "b", "c"]]


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_report_toolkit_imports_no_study_and_no_torch():
    graph = import_graph()
    for mod in (m for m in graph if m.startswith("reslab.report")):
        assert not any(t.startswith("reslab.studies") for t in graph[mod]), mod
    code = "import sys, reslab.report.html, reslab.report.figures; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_launchers_import_no_study():
    """`reslab.launch` runs TrainConfigs wherever they train; it knows no study's cells or rules."""
    graph = import_graph()
    launch = [m for m in graph if m.startswith("reslab.launch")]
    assert launch
    for mod in launch:
        assert not any(t.startswith("reslab.studies") for t in graph[mod]), mod


def test_the_command_line_help_imports_neither_torch_nor_matplotlib():
    """`reslab --help` builds every command's parser, each study's options shown with its default
    preset's values: none of it needs torch, numpy or matplotlib (3-7 s of imports on a laptop)."""
    code = (
        "import sys; from reslab import cli; cli.build_parser(); "
        "print(sorted(m for m in ('torch', 'numpy', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
