"""simexplain: visual explanations for deep metric learning models.

    >>> from simexplain import Explainer
    >>> explainer = Explainer(model, layer="features", similarity="cosine")
    >>> result = explainer.explain("a.jpg", "b.jpg")
    >>> result.score, result.overall_a, result.point_map("a", (112, 112))
"""

from typing import TYPE_CHECKING

from .errors import DatasetMissing, ImageError, LayerError, ModelError, SimexplainError
from .lazy_names import lazy_names

if TYPE_CHECKING:  # what type checkers and the API reference see; at run time: __getattr__
    from .explainer import Explainer
    from .explanation import PairExplanation
    from .images import Preprocess
    from .methods import METHODS, get_method
    from .audit import Audit, audit

# The rest loads torch: imported on first use, so that the command line and any
# `import simexplain.<light module>` start without it.
_LAZY = {"Explainer": "explainer", "PairExplanation": "explanation", "Preprocess": "images",
         "METHODS": "methods", "get_method": "methods", "audit": "audit", "Audit": "audit"}

__version__ = "0.1.0"
__all__ = [
    "Explainer", "PairExplanation", "Preprocess", "METHODS", "get_method", "audit", "Audit",
    "SimexplainError", "LayerError", "ImageError", "ModelError", "DatasetMissing",
]


__getattr__, __dir__ = lazy_names(__name__, _LAZY)
