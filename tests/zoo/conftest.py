"""Shared helpers of the zoo tests."""

import pytest


def _run_capturing(model, x, layer_name: str):
    """(embedding, output of the named module) of one forward pass, read by a hook: the
    model's own computation, independent of simexplain's engine."""
    captured = {}
    layer = dict(model.named_modules())[layer_name]
    handle = layer.register_forward_hook(lambda m, i, o: captured.setdefault("out", o))
    try:
        embedding = model(x)
    finally:
        handle.remove()
    return embedding, captured["out"]


@pytest.fixture
def run_capturing():
    """`run_capturing(model, x, layer_name)` -> (embedding, that layer's output)."""
    return _run_capturing
