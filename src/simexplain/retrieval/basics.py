"""What every part of the retrieval needs and nothing else: FAISS (an optional dependency),
file hashing and the record of a skipped gallery file. A leaf: it imports no retrieval module."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import SimexplainError
from ..files import file_sha256  # noqa: F401 - re-exported: the retrieval's file hashing

if TYPE_CHECKING:
    import numpy as np

ENGINES = ("local", "ray")  # one process, or a Ray Data pipeline (`ray_engine`)


def require_faiss() -> Any:  # the faiss module (it has no type stubs)
    try:
        import faiss
    except ImportError:
        raise SimexplainError("retrieval needs FAISS: pip install faiss-cpu "
                              "(or the 'retrieval' extra of simexplain)") from None
    return faiss


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
