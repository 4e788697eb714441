"""Every public signature in src/simexplain is annotated: each parameter (but self/cls) and the
return (but __init__'s) of module-level functions and of the methods of public classes whose
names have no leading underscore (and of their __init__). Read with `ast`: nothing is imported.
mypy (`make test`) then checks those signatures against their bodies and callers."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "src" / "simexplain"


def missing_annotations(source: str, module: str) -> list[str]:
    """'module.qualname: what is missing' for each public function of `source` that lacks an
    annotation."""
    found: list[str] = []

    def check(func: ast.FunctionDef | ast.AsyncFunctionDef, qualname: str,
              method: bool) -> None:
        args = func.args
        positional = [*args.posonlyargs, *args.args]
        if method and positional and not any(
                isinstance(d, ast.Name) and d.id == "staticmethod" for d in func.decorator_list):
            positional = positional[1:]  # self / cls
        params = [*positional, *args.kwonlyargs]
        params += [a for a in (args.vararg, args.kwarg) if a is not None]
        gaps = [a.arg for a in params if a.annotation is None]
        if func.returns is None and func.name != "__init__":
            gaps.append("return")
        if gaps:
            found.append(f"{module}.{qualname}: {', '.join(gaps)}")

    def visit(body: list[ast.stmt], prefix: str, in_class: bool) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if not node.name.startswith("_") or (in_class and node.name == "__init__"):
                    check(node, prefix + node.name, in_class)
            elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                visit(node.body, f"{prefix}{node.name}.", True)
            elif isinstance(node, ast.If):  # e.g. `if TYPE_CHECKING:` / version branches
                visit(node.body, prefix, in_class)
                visit(node.orelse, prefix, in_class)

    visit(ast.parse(source).body, "", False)
    return found


def test_every_public_signature_is_annotated():
    missing = []
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if any(p.startswith("_") and p != "__init__" for p in parts):
            continue  # private modules (and __main__)
        module = ".".join(("simexplain", *parts))
        missing += missing_annotations(path.read_text(), module)
    assert missing == []


def test_the_check_finds_what_it_looks_for():
    source = '''
def public(a, b: int) -> int: ...
def _private(a): ...
def annotated(a: int, *args: int, **kw: str) -> None: ...
def no_return(a: int): ...
class Thing:
    def __init__(self, x): ...
    def method(self, y: int) -> int: ...
    @staticmethod
    def static(z) -> None: ...
    @classmethod
    def build(cls) -> "Thing": ...
    def _hidden(self, q): ...
class _Hidden:
    def method(self, y): ...
'''
    assert missing_annotations(source, "m") == [
        "m.public: a", "m.no_return: return", "m.Thing.__init__: x", "m.Thing.static: z"]
