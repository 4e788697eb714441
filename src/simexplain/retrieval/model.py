"""The model of an index: what identifies it (name, layers, similarity, input size, a
fingerprint of its weights), the check that a query model is the same, and what it is given
for an image (face models see the detected face crop: `Explainer.prepare`)."""

from __future__ import annotations


from typing import TYPE_CHECKING
from ..errors import SimexplainError

if TYPE_CHECKING:
    from ..explainer import Explainer

MODEL_KEYS = ("model", "layer", "layer_b", "similarity", "input_size", "keep_aspect",
              "weights_sha256")


class IndexMismatchError(SimexplainError):
    """The model used for a query is not the model the index was built with."""


def model_info(explainer: Explainer, model_name: str | None = None) -> dict:
    """What identifies the gallery model of an explainer: name, layers, similarity, input
    size (of side b) and whether inputs keep their aspect ratio, and a sha256 of its
    weights."""
    stream_b = explainer.stream("b")
    size = getattr(explainer.transform_b, "size", None)
    return {
        "model": model_name if model_name is not None else getattr(explainer, "model_name", None),
        "layer": explainer.stream_a.layer_name,
        "layer_b": stream_b.layer_name,
        "similarity": explainer.similarity.name,
        "input_size": list(size) if size is not None else None,
        "keep_aspect": bool(getattr(explainer.transform_b, "keep_aspect", False)),
        "weights_sha256": weights_fingerprint(explainer),
    }


def weights_fingerprint(explainer: Explainer) -> str:
    """sha256 over the parameters and buffers of the explainer's model(s)."""
    return explainer.weights_sha256()


def check_model(expected: dict, actual: dict, where: str = "the index") -> None:
    """Refuse a query model that differs from the index's (IndexMismatchError)."""
    problems = []
    if expected.get("model") and actual.get("model") and expected["model"] != actual["model"]:
        problems.append(f"model {actual['model']!r} instead of {expected['model']!r}")
    for key, label in (("layer", "layer"), ("layer_b", "gallery layer"),
                       ("similarity", "similarity")):
        if expected.get(key) and actual.get(key) and expected[key] != actual[key]:
            problems.append(f"{label} {actual[key]!r} instead of {expected[key]!r}")
    if (expected.get("input_size") and actual.get("input_size")
            and list(expected["input_size"]) != list(actual["input_size"])):
        problems.append(f"input size {tuple(actual['input_size'])} instead of "
                        f"{tuple(expected['input_size'])}")
    if (expected.get("keep_aspect") is not None and actual.get("keep_aspect") is not None
            and bool(expected["keep_aspect"]) != bool(actual["keep_aspect"])):
        problems.append("inputs " + ("squashed to the input size" if expected["keep_aspect"]
                                     else "keeping their aspect ratio")
                        + " instead of " + ("keeping their aspect ratio" if expected["keep_aspect"]
                                            else "squashed to the input size"))
    if (not problems and expected.get("weights_sha256") and actual.get("weights_sha256")
            and expected["weights_sha256"] != actual["weights_sha256"]):
        problems.append("different weights (the weights fingerprint does not match)")
    if problems:
        raise IndexMismatchError(
            f"the query model does not match {where}: " + "; ".join(problems)
            + f". Use the model the index was built with ({expected.get('model')!r}, layer "
              f"{expected.get('layer')!r}, {expected.get('similarity')}) or rebuild the index.")
