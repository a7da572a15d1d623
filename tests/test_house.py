"""The shape of the house, checked with `ast` (issue 20): no import cycles among the package's
modules, no module reaching into another's private names, relative imports inside the package,
and rooms small enough to read top to bottom."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "deepfake_detector"
MAX_MODULE_LINES, MAX_FUNCTION_LINES, MAX_PARAMETERS = 600, 70, 10


def modules() -> dict[str, ast.Module]:
    return {path.stem: ast.parse(path.read_text(encoding="utf-8"), str(path))
            for path in sorted(PACKAGE.glob("*.py"))}


def imported_modules(name: str, tree: ast.Module, known: set[str]) -> set[str]:
    """The package's modules that `name` imports, at module level or inside functions: a cycle
    through a function-level import is still a cycle."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 or (node.module or "").startswith("deepfake_detector"):
                base = (node.module or "").removeprefix("deepfake_detector").lstrip(".")
                if base:
                    found.add(base.split(".")[0])
                else:  # from . import x, y
                    found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("deepfake_detector."):
                    found.add(alias.name.split(".")[1])
    return (found & known) - {name, "__init__"}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycles():
    trees = modules()
    graph = {name: imported_modules(name, tree, set(trees)) for name, tree in trees.items()}
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_find_cycle_finds_one():  # the checker itself, on a known cycle and a known tree
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def private_names_used_across(trees: dict[str, ast.Module]) -> list[str]:
    """`from .x import _name` and `x._name` where x is another of the package's modules."""
    found = []
    for name, tree in trees.items():
        module_aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.level or
                                                     (node.module or "").startswith("deepfake_detector")):
                base = (node.module or "").removeprefix("deepfake_detector").lstrip(".")
                for alias in node.names:
                    if not base:  # from . import module
                        module_aliases[alias.asname or alias.name] = alias.name
                    elif alias.name.startswith("_") and not alias.name.startswith("__"):
                        found.append(f"{name}.py imports {base}.{alias.name}")
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in module_aliases and node.attr.startswith("_")
                    and not node.attr.startswith("__")):
                found.append(f"{name}.py uses {module_aliases[node.value.id]}.{node.attr}")
    return found


def test_no_private_names_across_modules():
    assert private_names_used_across(modules()) == []


# Streamlit executes app.py as a script (`streamlit run .../app.py`, serve.py), where a relative
# import has no package to be relative to: the one module that must name the package.
RUN_AS_SCRIPT = {"app"}


def test_imports_inside_the_package_are_relative():
    absolute = [f"{name}.py:{node.lineno}" for name, tree in modules().items()
                if name not in RUN_AS_SCRIPT for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and node.level == 0
                and (node.module or "").startswith("deepfake_detector")]
    assert absolute == []


def test_modules_are_small_enough_to_read():
    sizes = {path.name: len(path.read_text(encoding="utf-8").splitlines())
             for path in PACKAGE.glob("*.py")}
    assert {name: n for name, n in sizes.items() if n > MAX_MODULE_LINES} == {}


def functions():
    for name, tree in modules().items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield f"{name}.py:{node.lineno} {node.name}", node


def test_functions_are_short():
    long = {where: node.end_lineno - node.lineno + 1 for where, node in functions()
            if node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES}
    assert long == {}


@pytest.mark.parametrize("limit", [MAX_PARAMETERS])
def test_functions_take_few_parameters(limit):
    many = {}
    for where, node in functions():
        args = node.args
        count = len(args.posonlyargs) + len(args.args) + len(args.kwonlyargs)
        if count > limit:
            many[where] = count
    assert many == {}
