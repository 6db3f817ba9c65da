"""The package's import graph, read from the source: no cycle anywhere, and nothing in `contsup.method` above it.

Every import at a module's top level counts, those under `TYPE_CHECKING` too (a cycle there is still a circle
a reader walks); an import inside a function runs when it is called and is left out. `from a import b` depends
on the module `a.b` when there is one, else on `a`.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
# What the method may build on: the base of the package and the models (docs/method.md, the code's layout).
METHOD_MAY_IMPORT = ("contsup.errors", "contsup.registry", "contsup.config", "contsup.memory", "contsup.models",
                     "contsup.method")


def module_name(path: Path, src: Path) -> str:
    """contsup/method/heads/__init__.py -> contsup.method.heads."""
    parts = path.relative_to(src).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def top_level(body: list[ast.stmt]) -> list[ast.stmt]:
    """The statements of a module body, with those of its `if`, `try` and `with` blocks, not of its functions."""
    out = []
    for node in body:
        out.append(node)
        if isinstance(node, (ast.If, ast.Try, ast.With)):
            inner = [*node.body, *getattr(node, "orelse", []), *getattr(node, "finalbody", []),
                     *(s for h in getattr(node, "handlers", []) for s in h.body)]
            out += top_level(inner)
    return out


def import_graph(root: Path = SRC / "contsup") -> dict[str, set[str]]:
    """Every contsup module -> the contsup modules it imports."""
    modules = {module_name(p, root.parent): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in top_level(ast.parse(path.read_text(), str(path)).body):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{anchor}.{base}" if base else anchor
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    deps.add(sub if sub in modules else base)
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path a -> b -> ... -> a, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return [*path[path.index(dep):], dep]
            if dep not in state and (found := visit(dep)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_method_imports_nothing_above_it():
    upward = {(m, d) for m, deps in import_graph().items() if m.startswith("contsup.method")
              for d in deps if not d.startswith(METHOD_MAY_IMPORT)}
    assert not upward, sorted(upward)


def test_the_walk_sees_cycles_and_upward_imports(tmp_path):
    """The checks above can fail: a planted cycle and a planted upward import are both found."""
    pkg = tmp_path / "contsup"
    (pkg / "method").mkdir(parents=True)
    for f in ("__init__.py", "checks.py", "method/__init__.py", "method/a.py", "method/b.py"):
        (pkg / f).write_text("")
    (pkg / "method/a.py").write_text("from contsup.method import b\n")
    (pkg / "method/b.py").write_text("if TYPE_CHECKING:\n    from contsup.method.a import X\nfrom .. import checks\n")
    graph = import_graph(pkg)
    assert find_cycle(graph) in (["contsup.method.a", "contsup.method.b", "contsup.method.a"],
                                 ["contsup.method.b", "contsup.method.a", "contsup.method.b"])
    assert "contsup.checks" in graph["contsup.method.b"]
