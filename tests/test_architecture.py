"""The import graph of src/simexplain: the CLI sits on top (nothing below it imports it) and
modules do not import each other in a cycle at import time."""

import ast
from pathlib import Path

import simexplain

ROOT = Path(simexplain.__file__).parent


def module_name(path: Path) -> str:
    parts = ["simexplain", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in ROOT.rglob("*.py")}


def imports(name: str, top_level_only: bool) -> set[str]:
    """The simexplain modules `name` imports (anywhere, or only when it is imported)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()

    def visit(node, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                    ast.ClassDef, ast.Lambda))
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import) and (top or not top_level_only):
                found.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom) and (top or not top_level_only):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")
                    anchor = anchor[:len(anchor) - child.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                for alias in child.names:
                    sub = f"{base}.{alias.name}"
                    found.add(sub if sub in MODULES else base)
            visit(child, inner)
    visit(tree, True)
    return {m for m in found if m in MODULES and m != name}


def test_the_module_list_is_complete():
    assert {"simexplain.cli", "simexplain.explainer", "simexplain.zoo"} <= set(MODULES)


def test_nothing_below_the_cli_imports_it():
    offenders = {name: sorted(m for m in imports(name, top_level_only=False)
                              if m == "simexplain.cli" or m.startswith("simexplain.cli."))
                 for name in MODULES if not name.startswith("simexplain.cli")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_no_import_cycles_at_module_level():
    graph = {name: imports(name, top_level_only=True) for name in MODULES}
    cycles = []
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def walk(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                walk(nxt)
        stack.pop()
        state[node] = 2
    for name in sorted(graph):
        if name not in state:
            walk(name)
    assert cycles == []



def test_the_core_does_not_import_rendering():
    core = ("simexplain.explainer", "simexplain.explanation", "simexplain.head",
            "simexplain.adapters", "simexplain.maps")
    for name in core:
        assert "simexplain.visualize" not in imports(name, top_level_only=False), name
