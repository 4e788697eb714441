"""Package names imported from their modules on first use (PEP 562), so that importing a
package, or one light module in it, does not load the heavy ones (torch, FAISS)."""

from __future__ import annotations

import sys
from importlib import import_module
from collections.abc import Callable


def lazy_names(package: str, names: dict[str, str]
               ) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """`__getattr__` and `__dir__` for `package` (its __name__), where `names` maps each lazy
    name to the module of the package that defines it."""
    def __getattr__(name: str) -> object:
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(f"{package}.{names[name]}"), name)
        setattr(sys.modules[package], name, value)  # once: later lookups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(names))
    return __getattr__, __dir__
