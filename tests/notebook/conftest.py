"""Shared fixtures of the notebook tests: a small model whose maps vary over a plain image,
and a pair explained with it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from simexplain.explainer import Explainer
from simexplain.images import Preprocess
from simexplain.toy import HeadModel

SIZE = 64  # the model input's side: an 8x8 feature grid


def flatten_explainer() -> Explainer:
    """A flatten head: each position has weights of its own, so even a plain grey image gets
    a map with one clear maximum (no ties between identical positions)."""
    torch.manual_seed(0)
    model = HeadModel("flatten", dim=32, channels=16, depth=3, grid=SIZE // 8).eval()
    return Explainer(model, "features", similarity="cosine",
                     transform=Preprocess(size=(SIZE, SIZE)), model_name="toy-flatten")


def textured(height: int, width: int, seed: int) -> Image.Image:
    """Smooth random colour blobs: a different map for every part of the image."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, size=(height // 16 + 2, width // 16 + 2, 3)).astype(np.uint8)
    return Image.fromarray(coarse).resize((width, height), Image.BICUBIC)


@pytest.fixture(scope="session")
def explainer() -> Explainer:
    return flatten_explainer()


@pytest.fixture(scope="session")
def pair(explainer):
    """a: a 96x128 textured photo; b: a plain grey 80x80 one (its drawn map colours are the
    map's alone, which the browser test reads back)."""
    grey = Image.new("RGB", (80, 80), (128, 128, 128))
    return explainer.explain(textured(96, 128, seed=1), grey)


@pytest.fixture(scope="session")
def textured_pair(explainer):
    """Both photos textured, of different sizes and aspect ratios."""
    return explainer.explain(textured(96, 128, seed=1), textured(72, 60, seed=2))


class FrontEnd:
    """Sends requests into a widget as the kernel delivers the front end's comm messages, and
    keeps what the widget sends back over its comm."""

    def __init__(self, widget):
        self.widget = widget
        self.sent: list[dict] = []
        widget.comm.send = lambda data=None, metadata=None, buffers=None: self.sent.append(data)
        self.next_id = 0

    def ask(self, content, number: bool = True) -> dict:
        """The widget's one answer to `content` (numbered with a new "id" unless `number` is
        False: the content carries its own)."""
        if number and isinstance(content, dict):
            self.next_id += 1
            content = {**content, "id": self.next_id}
        before = len(self.sent)
        self.widget._handle_msg({"content": {"data": {"method": "custom", "content": content}},
                                 "buffers": []})
        replies = [m["content"] for m in self.sent[before:] if m["method"] == "custom"]
        assert len(replies) == 1, self.sent[before:]
        return replies[0]


@pytest.fixture(scope="session")
def front_end():
    """The FrontEnd class (test modules cannot import this conftest by name)."""
    return FrontEnd
