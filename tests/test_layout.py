"""The house rules of docs/design.md §6, checked on the source: no import circles (imports made
inside functions count too), the engine's three parts stay siblings, only values/kv.py touches
transformers' cache internals, environment variables are read only in env.py, and no module
grows past the size a reader can hold."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vas_proxy"
MAX_LINES = 400


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(name: str) -> str | None:
    """The package module an import names (a name inside a module resolves to the module)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> set[str]:
    path = MODULES[module]
    is_pkg = path.name == "__init__.py"
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                root = base[:len(base) - node.level + 1]
                prefix = ".".join(root + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            # `from pkg import x`: x when it is a module, else the module that defines it
            names = [f"{prefix}.{a.name}" for a in node.names]
        for n in names:
            target = _resolve(n) if n.startswith("vas_proxy") else None
            if target and target != module:
                out.add(target)
    return out


def _graph() -> dict[str, set[str]]:
    graph = {}
    for m in MODULES:
        deps = _imports(m)
        if MODULES[m].name == "__init__.py":  # a package may re-export its own submodules
            deps = {d for d in deps if not d.startswith(m + ".")}
        graph[m] = deps
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state and (found := visit(d)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_cycle_finder_finds_a_cycle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_circles():
    cycle = _find_cycle(_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


@pytest.mark.parametrize("part", ["vas_proxy.sampling", "vas_proxy.values",
                                  "vas_proxy.upstream"])
def test_engine_parts_are_siblings(part):
    """sampling, values and upstream never import one another (nor anything above them)."""
    graph = _graph()
    others = {"vas_proxy.sampling", "vas_proxy.values", "vas_proxy.upstream", "vas_proxy.engine",
              "vas_proxy.service", "vas_proxy.runtime"} - {part}
    mine = [m for m in graph if m == part or m.startswith(part + ".")]
    bad = {(m, d) for m in mine for d in graph[m]
           if any(d == o or d.startswith(o + ".") for o in others)}
    assert not bad, bad


def _code_names(path: Path) -> set[str]:
    """Identifiers, attribute names and imported module names used in code (not docstrings)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Name):
            out.add(node.id)
        elif isinstance(node, ast.Attribute):
            out.add(node.attr)
        elif isinstance(node, ast.ImportFrom):
            out.update((node.module or "").split("."))
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(p for a in node.names for p in a.name.split("."))
    return out


def test_only_kv_touches_transformers_cache_internals():
    internals = {"DynamicCache", "DynamicLayer", "cache_utils"}
    assert internals & _code_names(MODULES["vas_proxy.values.kv"])  # the check can see them
    hits = {name: sorted(internals & _code_names(path)) for name, path in MODULES.items()
            if name != "vas_proxy.values.kv" and internals & _code_names(path)}
    assert not hits, hits


def test_environment_is_read_only_in_env():
    hits = [name for name, path in MODULES.items()
            if name != "vas_proxy.env" and ("os.environ" in path.read_text()
                                            or "os.getenv" in path.read_text())]
    assert not hits, hits


def test_no_module_over_the_limit():
    long = {name: n for name, path in MODULES.items()
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, long
