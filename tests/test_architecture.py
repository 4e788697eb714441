"""The import graph of src/simexplain, imports inside functions included: every module sits in a
layer and imports only its own layer and those below, and no modules import each other in a
cycle, directly or through others.

Layers, bottom to top (README "Layout" and docs/development.md):
  core: the engine, its maps, geometry, metrics, similarities, input pipeline and face cropping
  models: the zoo and its command-line options, training, rendering (visualize), data sets, toy
    models
  applications: retrieval, evaluation, the demo, pair reports, notebook display and widget
  web: the web app
  cli: the command line (and `python -m simexplain`)
"""

import ast
from pathlib import Path

import simexplain

ROOT = Path(simexplain.__file__).parent

LAYERS = {
    "core": (),  # every module not named below
    "models": ("zoo", "model_options", "train_options", "training", "visualize", "datasets", "toy"),
    "applications": ("retrieval", "evaluation", "demo", "pair_report", "display", "notebook",
                     "audit"),
    "web": ("web",),
    "cli": ("cli", "__main__"),
}
ORDER = list(LAYERS)

# Jupyter looks for its display methods on the result's own class, so these thin methods of
# core objects import the notebook layer when they are called (and only then): the one
# allowed upward call, each (module, module it imports).
PRESENTATION_HOOKS = {
    ("simexplain.explanation", "simexplain.notebook"),   # PairExplanation.widget()
    ("simexplain.explanation", "simexplain.display"),    # PairExplanation._repr_html_, show()
    ("simexplain.retrieval.index", "simexplain.display"),  # search hits' _repr_html_
}


def module_name(path: Path) -> str:
    parts = ["simexplain", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in ROOT.rglob("*.py")}


def layer(module: str) -> int:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else ""
    for index, name in enumerate(ORDER):
        if top in LAYERS[name]:
            return index
    return 0


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


def graph() -> dict[str, set[str]]:
    """Every import edge (function level included) but the presentation hooks and the
    package's own lazy names (`simexplain/__init__`)."""
    edges = {name: imports(name, top_level_only=False) for name in MODULES}
    for name, targets in edges.items():
        targets -= {target for target in set(targets)
                    if (name, target) in PRESENTATION_HOOKS or target == "simexplain"}
    edges["simexplain"] = set()
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles: each strongly connected group of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(edges[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))
    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_the_module_list_is_complete():
    assert {"simexplain.cli", "simexplain.explainer", "simexplain.zoo",
            "simexplain.geometry", "simexplain.retrieval.kinds"} <= set(MODULES)


def test_no_module_imports_a_higher_layer():
    upward = sorted(f"{name} ({ORDER[layer(name)]}) -> {target} ({ORDER[layer(target)]})"
                    for name, targets in graph().items() for target in targets
                    if layer(target) > layer(name))
    assert upward == []


def test_no_import_cycles_even_inside_functions():
    assert cycles(graph()) == []


def test_the_checks_find_what_they_look_for():
    # the two checks on a made-up graph: an upward edge and a cycle through three modules
    made_up = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert cycles(made_up) == [["a", "b", "c"]]
    assert layer("simexplain.cli.pair") > layer("simexplain.retrieval.index") > layer(
        "simexplain.zoo") > layer("simexplain.head")


def test_type_checking_imports_are_not_import_edges(tmp_path, monkeypatch):
    # annotations only (`if TYPE_CHECKING:`, e.g. the Explainer type of a parameter): never
    # imported at run time, so neither an upward import nor part of a cycle
    fake = tmp_path / "fake.py"
    fake.write_text("from typing import TYPE_CHECKING\n"
                    "import typing\n"
                    "from .maps import Frame\n"
                    "if TYPE_CHECKING:\n"
                    "    from .explainer import Explainer\n"
                    "if typing.TYPE_CHECKING:\n"
                    "    from .cli import main\n"
                    "def f():\n"
                    "    if TYPE_CHECKING:\n"
                    "        from .web import app\n"
                    "    from .zoo import resolve\n")
    monkeypatch.setitem(MODULES, "simexplain.fake", fake)
    assert imports("simexplain.fake", top_level_only=False) == {"simexplain.maps",
                                                                "simexplain.zoo"}
    assert imports("simexplain.fake", top_level_only=True) == {"simexplain.maps"}


def test_presentation_hooks_are_imported_only_when_called():
    for name, target in PRESENTATION_HOOKS:
        if name in MODULES and target in MODULES:
            assert target not in imports(name, top_level_only=True), (name, target)


def test_the_core_does_not_import_rendering():
    core = ("simexplain.explainer", "simexplain.explanation", "simexplain.head",
            "simexplain.adapters", "simexplain.maps")
    for name in core:
        assert "simexplain.visualize" not in imports(name, top_level_only=False), name


LONGEST_FUNCTION = 80  # lines; a longer one is split into named steps


def long_functions(source: str) -> list[tuple[str, int]]:
    """(name, lines) of every function in a module's source longer than LONGEST_FUNCTION."""
    return [(node.name, node.end_lineno - node.lineno + 1) for node in ast.walk(ast.parse(source))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > LONGEST_FUNCTION]


def test_no_function_is_longer_than_80_lines():
    assert long_functions("def f():\n" + "    x = 1\n" * LONGEST_FUNCTION) == [("f", 81)]
    found = {name: long_functions(path.read_text()) for name, path in MODULES.items()}
    assert not {name: found for name, found in found.items() if found}
