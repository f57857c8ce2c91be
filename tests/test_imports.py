"""The package's import graph (every ``import`` statement, those inside functions included, read
with ``ast``) has no circles, and each part imports only from the parts below it:

    testbeds -> models -> methods -> engine -> executors -> grader, integrity -> researchers -> dashboard -> cli
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "w2slab"
LAYERS = [("paths", "cliutil", "processes"), ("testbeds",), ("models",), ("methods",), ("engine",), ("executors",), ("grader", "integrity"),
          ("researchers",), ("dashboard",), ("cli", "__main__", "__init__")]
"""Bottom to top; a module may import from its own layer and those below."""
ALLOWED_UPWARD = {
    ("w2slab.grader.app", "w2slab.dashboard.views"): "the app factory mounts the dashboard pages",
    ("w2slab.engine.runner", "w2slab.executors"): "the runner hands (method x seed) jobs to the chosen executor",
    ("w2slab.integrity.audit", "w2slab.researchers.sandbox"): "audits re-run submitted code in the researchers' sandbox "
                                                               "(the sandbox could move below both)",
    ("w2slab.integrity.redteam", "w2slab.researchers.sandbox"): "the red team attacks the researchers' warm sandbox "
                                                                 "too",
    ("w2slab.researchers.zygote", "w2slab.cli"): "the warm sandbox's process runs the CLI in each child it forks, "
                                                 "as `python -m w2slab` would",
}
"""Upward imports that are part of the design, with the reason."""


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if "data" not in p.relative_to(PACKAGE).parts[:-1]}


def _resolve(name: str) -> str | None:
    """The package module that ``import name`` loads (the longest known prefix)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def imports_of(module: str) -> set[str]:
    """The package modules ``module`` imports at run time, anywhere in its body."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "w2slab" and (target := _resolve(a.name)):
                    out.add(target)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            if base.split(".")[0] == "w2slab":
                for a in node.names:
                    target = _resolve(f"{base}.{a.name}")  # a submodule, or a name defined in ``base``
                    if target:
                        out.add(target)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    out.discard(module)
    return out


@functools.cache
def graph() -> dict[str, set[str]]:
    return {m: imports_of(m) for m in MODULES}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(g[v]):
            if w not in index:
                strong(w)
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

    for v in sorted(g):
        if v not in index:
            strong(v)
    return out


def layer(module: str) -> int:
    part = module.split(".")[1] if "." in module else "__init__"
    for i, names in enumerate(LAYERS):
        if part in names:
            return i
    raise AssertionError(f"{module}: not in any layer of {LAYERS}; add its package to LAYERS in {__file__}")


def test_graph_reads_every_module() -> None:
    g = graph()
    assert "w2slab.grader.app" in g and "w2slab.dashboard.views" in g["w2slab.grader.app"]
    assert "w2slab.grader.queries" in g["w2slab.dashboard.views"]


def test_no_import_circles() -> None:
    found = cycles(graph())
    assert not found, "import circles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_layers_import_downward_only() -> None:
    bad = [f"{m} (layer {LAYERS[layer(m)]}) imports {t} (layer {LAYERS[layer(t)]})"
           for m, targets in graph().items() for t in sorted(targets)
           if layer(t) > layer(m) and (m, t) not in ALLOWED_UPWARD]
    assert not bad, "upward imports:\n" + "\n".join(bad)
