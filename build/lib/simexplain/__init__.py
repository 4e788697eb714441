"""simexplain: visual explanations for deep metric learning models.

    >>> from simexplain import Explainer
    >>> explainer = Explainer(model, layer="features", similarity="cosine")
    >>> result = explainer.explain("a.jpg", "b.jpg")
    >>> result.score, result.overall_a, result.point_map("a", (112, 112))
"""

from .errors import DatasetMissing, ImageError, LayerError, ModelError, SimexplainError
from .explainer import Explainer
from .explanation import PairExplanation
from .images import Preprocess
from .methods import METHODS, get_method

__version__ = "0.1.0"
__all__ = [
    "Explainer", "PairExplanation", "Preprocess", "METHODS", "get_method",
    "SimexplainError", "LayerError", "ImageError", "ModelError", "DatasetMissing",
]
