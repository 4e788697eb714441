"""What every part of the retrieval needs and nothing else: its optional dependencies (FAISS,
pyarrow, Ray) imported with a one-line error naming what to install, reading FAISS files, file
hashing and the record of a skipped gallery file. It imports no retrieval module but
`manifest` (the damaged-file error)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import SimexplainError, first_line
from ..files import file_sha256  # noqa: F401 - re-exported: the retrieval's file hashing
from .manifest import damaged

if TYPE_CHECKING:
    import numpy as np

ENGINES = ("local", "ray")  # one process, or a Ray Data pipeline (`ray_engine`)


def require(module: str, *parts: str, install: str) -> Any:
    """The optional dependency `module` (with its submodules `parts` imported too), or a
    SimexplainError saying `install` when it is missing."""
    try:
        found = import_module(module)
        for part in parts:
            import_module(f"{module}.{part}")
    except ImportError:
        raise SimexplainError(install) from None
    return found


def require_faiss() -> Any:  # the faiss module (it has no type stubs)
    return require("faiss", install="retrieval needs FAISS: pip install faiss-cpu (or the "
                                    "'retrieval' extra of simexplain)")


def read_faiss_files(folder: Path, names: Sequence[str]) -> list:
    """The FAISS structures stored in `folder` under `names`; one that FAISS cannot read is
    reported as a damaged index file, in one line."""
    faiss = require_faiss()
    structures = []
    for name in names:
        try:
            structures.append(faiss.read_index(str(folder / name)))
        except RuntimeError as exc:
            raise damaged(folder / name, "cannot read the FAISS index "
                          f"({first_line(exc, empty='unreadable')})") from None
    return structures


def finite_rows(embeddings: np.ndarray, start: int, stop: int) -> bool:
    """No NaN or infinity in rows [start, stop), read a block at a time."""
    import numpy as np  # here: the command line imports this module for its help alone
    return all(np.isfinite(embeddings[i:min(stop, i + 65536)]).all()
               for i in range(start, stop, 65536))


@dataclass
class Skipped:
    """A gallery file that could not be indexed, and why."""

    path: str
    reason: str

    def to_dict(self) -> dict:
        return {"path": self.path, "reason": self.reason}
