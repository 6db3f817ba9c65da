"""The package's import graph, read from the source: no cycle anywhere, and nothing in `contsup.method` above it.

Every import counts: at a module's top level, under `TYPE_CHECKING` (a cycle there is still a circle a reader
walks) and inside a function (it runs when the function is called; a lazy import that closes a circle only
hides it). `from a import b` depends on the module `a.b` when there is one, else on `a`; importing `a.b.c`
runs the package `a.b` first, so it depends on that package too (the root `contsup`, which gathers the public
names, left out; a package's own modules import their siblings without it).
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


def parents(name: str) -> list[str]:
    """The packages that importing `name` runs first, below the root: contsup.a.b.c -> contsup.a, contsup.a.b."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(2, len(parts))]


def import_graph(root: Path = SRC / "contsup") -> dict[str, set[str]]:
    """Every contsup module -> the contsup modules it imports."""
    modules = {module_name(p, root.parent): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
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
        deps |= {p for d in deps for p in parents(d) if not (name + ".").startswith(p + ".")}
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
    """The checks above can fail: a planted cycle, one closed by an import inside a function, one through a
    package's `__init__`, and a planted upward import are all found."""
    pkg = tmp_path / "contsup"
    (pkg / "method").mkdir(parents=True)
    (pkg / "train").mkdir()
    for f in ("__init__.py", "checks.py", "method/__init__.py", "method/a.py", "method/b.py", "train/__init__.py",
              "train/loop.py", "train/schedule.py"):
        (pkg / f).write_text("")
    (pkg / "method/a.py").write_text("from contsup.method import b\n")
    (pkg / "method/b.py").write_text("if TYPE_CHECKING:\n    from contsup.method.a import X\nfrom .. import checks\n")
    graph = import_graph(pkg)
    assert find_cycle(graph) in (["contsup.method.a", "contsup.method.b", "contsup.method.a"],
                                 ["contsup.method.b", "contsup.method.a", "contsup.method.b"])
    assert "contsup.checks" in graph["contsup.method.b"]
    (pkg / "method/b.py").write_text("def f():\n    from contsup.method.a import X\n")  # lazy: still a circle
    assert find_cycle(import_graph(pkg)) is not None
    (pkg / "method/b.py").write_text("")
    assert find_cycle(import_graph(pkg)) is None
    # checks -> train.schedule runs train/__init__ -> train.loop -> checks: the circle of a partial module
    (pkg / "train/__init__.py").write_text("from contsup.train.loop import fit\n")
    (pkg / "train/loop.py").write_text("from contsup.checks import check\n")
    (pkg / "checks.py").write_text("def check():\n    from contsup.train.schedule import lr\n")
    assert find_cycle(import_graph(pkg)) == ["contsup.checks", "contsup.train", "contsup.train.loop", "contsup.checks"]
