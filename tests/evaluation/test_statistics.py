"""Bootstrap intervals, paired differences and rank correlation."""

import numpy as np
import pytest

from simexplain.evaluation.common import (bootstrap_ci, paired_difference, resolve_methods,
                                          spearman)
from simexplain.errors import SimexplainError


def test_bootstrap_ci_contains_the_mean():
    rng = np.random.default_rng(0)
    for n in (5, 30, 200):
        values = rng.normal(3.0, 1.0, size=n)
        ci = bootstrap_ci(values, seed=1)
        assert ci["n"] == n
        assert ci["lo"] <= ci["mean"] <= ci["hi"]
        assert ci["mean"] == pytest.approx(values.mean())
    wide = bootstrap_ci(rng.normal(size=10), seed=0)
    narrow = bootstrap_ci(rng.normal(size=1000), seed=0)
    assert narrow["hi"] - narrow["lo"] < wide["hi"] - wide["lo"]


def test_bootstrap_ci_is_seeded_and_skips_nan():
    values = [1.0, 0.0, 1.0, np.nan, 1.0]
    assert bootstrap_ci(values, seed=3) == bootstrap_ci(values, seed=3)
    ci = bootstrap_ci(values)
    assert ci["n"] == 4 and ci["mean"] == 0.75
    assert bootstrap_ci([np.nan])["n"] == 0
    assert bootstrap_ci([2.0]) == {"mean": 2.0, "lo": 2.0, "hi": 2.0, "n": 1}


def test_weighted_bootstrap_is_a_ratio():
    # per-pair hit rates with point counts: pooled rate = 7 / 10
    ci = bootstrap_ci([1.0, 0.5, 0.25], weights=[4, 2, 4], seed=0)
    assert ci["mean"] == pytest.approx((4 + 1 + 1) / 10)
    assert ci["lo"] <= ci["mean"] <= ci["hi"]


def test_paired_difference():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    d = paired_difference(x + 1, x)
    assert d["mean"] == d["lo"] == d["hi"] == 1.0
    with pytest.raises(SimexplainError):
        paired_difference([1, 2], [1, 2, 3])


def test_spearman():
    x = np.arange(10.0)
    assert spearman(x, x ** 3) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)
    assert spearman(x, np.zeros(10)) == 0.0  # a constant map has no ranks
    ties = np.array([0, 0, 1, 1.0])
    assert spearman(ties, ties) == pytest.approx(1.0)


def test_resolve_methods():
    assert resolve_methods(None, ("a", "b")) == ["a", "b"]
    assert resolve_methods(["b", "all"], ("a", "b")) == ["b", "a"]
    with pytest.raises(SimexplainError):
        resolve_methods(["c"], ("a", "b"))
