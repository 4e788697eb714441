"""Gallery-wide audits of where similarity comes from (`simexplain audit`).

    >>> from simexplain.audit import audit
    >>> result = audit("my-index", k=5, regions={"corner": (0, 0, 0.15, 0.15)})
    >>> result.region_shares["corner"].mean(), [f.sentence for f in result.findings]
    >>> result.write_report("audit-report")

`run.audit` explains each query against its top-k hits, or given pairs (`pairs=`), from the
index's explain cache when it has one, and streams them into an `result.Audit`: shares of the
score per named region and pair, mean maps, recurring cross-view patterns, ranked pairs and
`findings` (regions where similarity concentrates far above their area, found without being
named); `report` writes the HTML report. `method="occlusion"` audits each cell's erase drop
instead of the decomposition's maps (docs/audit.md, "By occlusion"). The module itself is
callable too:
`simexplain.audit(index, ...)`.
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any

from ..lazy_names import lazy_names

if TYPE_CHECKING:  # what type checkers see; at run time: __getattr__ (light for the CLI)
    from .findings import Finding
    from .regions import parse_region_spec
    from .result import Audit, PairRecord
    from .run import audit

# imported on first use: the command line reads its options from `commands` without torch
_LAZY = {"audit": "run", "Audit": "result", "PairRecord": "result", "Finding": "findings",
         "parse_region_spec": "regions"}
__all__ = ["audit", "Audit", "Finding", "PairRecord", "parse_region_spec"]
__getattr__, __dir__ = lazy_names(__name__, _LAZY)


class _CallableModule(types.ModuleType):
    """`simexplain.audit(...)` is `simexplain.audit.audit(...)`, whichever of the two the name
    `simexplain.audit` holds (the function, or this package once it is imported)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Audit:
        from .run import audit
        return audit(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
