"""Side names: "a" and "b" only, everywhere a side is named."""

import pytest
import torch

from simexplain import zoo
from simexplain.errors import SimexplainError
from simexplain.explainer import Explainer
from simexplain.sides import check_side, other_side, pick
from simexplain.toy import tiny_cnn


def test_the_helpers():
    assert [check_side("a"), check_side("b")] == ["a", "b"]
    assert other_side("a") == "b" and other_side("b") == "a"
    assert pick("a", 1, 2) == 1 and pick("b", 1, 2) == 2
    for bad in ("c", "A", "", None, 0):
        with pytest.raises(SimexplainError, match="side must be 'a' or 'b'"):
            pick(bad, 1, 2)


def test_a_misspelt_side_is_an_error_not_the_other_image():
    explainer = Explainer(tiny_cnn(), "features")
    with pytest.raises(SimexplainError, match="got 'c'"):
        explainer.stream("c")
    with pytest.raises(SimexplainError, match="got 'c'"):
        explainer.prepare(torch.rand(1, 3, 32, 32), "c")
    result = explainer.explain(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32))
    with pytest.raises(SimexplainError, match="got 'c'"):
        result.point_map("c", (3, 3))
    with pytest.raises(SimexplainError, match="got 'B'"):
        zoo.model("fmnist-sketch", side="B")
