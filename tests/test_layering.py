"""The package layering of DESIGN.md, checked on the source: every import of our own packages (at module level or
inside a function) is an edge of a module graph that must have no cycle and must point the documented way.

    harness       -> model, search_spaces, experiments, leaderboard
    leaderboard   -> nothing of ours, except its chat page (leaderboard.dashboard_chat), which uses model,
                     leaderboard.ingest, which reads run dirs through the torch-free model.run_dir, and the
                     benchmark page, which finds reports where model.home says
    search_spaces -> model.config (to validate knobs)
    experiments   -> model.config (to validate a recipe's overrides)
    model         -> nothing of ours
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import deque
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("model", "harness", "leaderboard", "search_spaces", "experiments")

# Per package: the modules of OTHER packages it may import, as (importing module or "*", imported module or
# package prefix). Imports inside one's own package are always allowed (cycles are checked separately).
ALLOWED: dict[str, list[tuple[str, str]]] = {
    "model": [],
    "search_spaces": [("*", "model.config")],
    "experiments": [("*", "model.config")],
    "leaderboard": [("leaderboard.dashboard_chat", "model"), ("leaderboard.ingest", "model.run_dir"),
                    ("leaderboard.dashboard_benchmark", "model.home")],
    "harness": [("*", "model"), ("*", "search_spaces"), ("*", "experiments"), ("*", "leaderboard")],
}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def our_modules(root: Path) -> dict[str, Path]:
    return {module_name(p, root): p for pkg in PACKAGES for p in sorted((root / pkg).rglob("*.py"))}


def import_graph(root: Path) -> dict[str, dict[str, int]]:
    """module -> {imported module of ours: first line number}, every import statement anywhere in the file.

    `import a.b.c` and `from a.b import c` point at the deepest of a.b.c / a.b / a that is one of our modules, so
    `from model import config` is an edge to model.config, not to the package. A module importing itself (the
    `if __name__ == "__main__"` re-import of a CLI module) is not an edge.
    """
    modules = our_modules(root)

    def resolve(dotted: str) -> str | None:
        parts = dotted.split(".")
        for n in range(len(parts), 0, -1):
            if ".".join(parts[:n]) in modules:
                return ".".join(parts[:n])
        return None

    graph: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        edges: dict[str, int] = {}
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: resolved against this module's package
                    package = name.split(".") if is_package else name.split(".")[:-1]
                    package = package[:len(package) - (node.level - 1)]
                    base = ".".join([*package, *([base] if base else [])])
                targets = [f"{base}.{alias.name}" for alias in node.names]
            for target in targets:
                resolved = resolve(target)
                if resolved is not None and resolved != name:
                    edges.setdefault(resolved, node.lineno)
        graph[name] = edges
    return graph


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle (as a closed path a -> ... -> a) for each strongly connected component with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def strongconnect(v: str) -> None:  # Tarjan; the graph is a few hundred modules, recursion is fine
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)

    cycles = []
    for component in components:
        members, start = set(component), component[0]
        # Breadth-first from start inside the component until an edge leads back to start: a shortest cycle.
        parent: dict[str, str] = {}
        todo, last = deque([start]), None
        while last is None:
            v = todo.popleft()
            for w in sorted(graph[v]):
                if w == start:
                    last = v
                    break
                if w in members and w not in parent:
                    parent[w] = v
                    todo.append(w)
        path = [last]
        while path[-1] != start:
            path.append(parent[path[-1]])
        cycles.append([*reversed(path), start])
    return cycles


def layering_violations(graph: dict[str, dict[str, int]], root: Path) -> list[str]:
    violations = []
    for module, edges in sorted(graph.items()):
        package = module.split(".")[0]
        for target, line in sorted(edges.items()):
            target_package = target.split(".")[0]
            if target_package == package:
                continue
            allowed = any(src in ("*", module) and (target == dst or target.startswith(dst + "."))
                          for src, dst in ALLOWED[package])
            if not allowed:
                path = our_modules(root)[module].relative_to(root)
                violations.append(f"{path}:{line}: {module} imports {target} ({package} -> {target_package})")
    return violations


def _describe(graph: dict[str, dict[str, int]], cycle: list[str]) -> str:
    return " -> ".join(f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:])) + f" -> {cycle[-1]}"


def test_no_import_cycle():
    graph = import_graph(REPO_ROOT)
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(_describe(graph, c) for c in cycles)


def test_package_dependency_direction():
    graph = import_graph(REPO_ROOT)
    violations = layering_violations(graph, REPO_ROOT)
    assert not violations, "imports against DESIGN.md's dependency direction:\n" + "\n".join(violations)


def test_the_views_need_neither_streamlit_nor_torch():
    """leaderboard.views is shared by the dashboard and `harness.chat --best`: importing it (and what it imports)
    loads neither Streamlit nor torch."""
    code = "import sys, leaderboard.views; print(sorted({'streamlit', 'torch'} & set(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr


def test_the_checker_sees_every_kind_of_import(tmp_path):
    """The checks themselves: a cycle through a function-level and a relative import, and a layering breach, are
    found in a small fake tree (so the two tests above cannot pass by seeing no edges)."""
    for pkg in PACKAGES:
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "model" / "a.py").write_text("from model.b import x\n")
    (tmp_path / "model" / "b.py").write_text("def f():\n    from . import a\n")
    (tmp_path / "model" / "c.py").write_text("import harness.d\nif __name__ == '__main__':\n    from model.c import f\n")
    (tmp_path / "harness" / "d.py").write_text("from model import c\nfrom search_spaces import e\n")
    (tmp_path / "search_spaces" / "e.py").write_text("import numpy\nfrom model.config import X\n")
    (tmp_path / "model" / "config.py").write_text("")
    graph = import_graph(tmp_path)
    assert graph["model.a"] == {"model.b": 1} and graph["model.b"] == {"model.a": 2}
    assert graph["search_spaces.e"] == {"model.config": 2}
    assert sorted(map(tuple, find_cycles(graph))) == [("harness.d", "model.c", "harness.d"),
                                                      ("model.a", "model.b", "model.a")]
    assert layering_violations(graph, tmp_path) == ["model/c.py:1: model.c imports harness.d (model -> harness)"]
    # ... and the real tree has edges of every allowed kind, so a parser that found nothing would fail here.
    real = import_graph(REPO_ROOT)
    assert "model.config" in real["search_spaces.knobs"]
    assert any(t.startswith("model.") for t in real["leaderboard.dashboard_chat"])
    assert any(t.startswith("leaderboard") for m, e in real.items() if m.startswith("harness.") for t in e)
