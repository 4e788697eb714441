"""The live point-map widget's kernel side, driven as the front end drives it: custom messages
delivered through the widget's comm, answers read back from it, compared with the pair's own
maps and with the decomposition itself."""

from __future__ import annotations

import io
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import traitlets
from PIL import Image

from simexplain.explanation import DEFAULT_POINT_MAP, POINT_MAP_KINDS, point_map_label
from simexplain.notebook import PointMapWidget
from simexplain.notebook.widget import (SHARED_JS, STATIC, WIDGET_JS, bundle_order, inlined,
                                        module_text)

SRC = Path(__file__).resolve().parents[2] / "src"


def cell_centre(side, r: int, c: int) -> tuple[float, float]:
    """The photo pixel whose feature coordinate is exactly cell (r, c): (row + 0.5) * H / h
    - 0.5 = r, METHOD.md's point map convention (whole-image frames)."""
    (h, w), (rows, cols) = side.image_size, side.grid
    return (r + 0.5) * h / rows - 0.5, (c + 0.5) * w / cols - 0.5


def top3(grid_map: np.ndarray) -> list[list[int]]:
    order = np.argsort(-grid_map.ravel(), kind="stable")[:3]
    return [list(divmod(int(i), grid_map.shape[1])) for i in order]


@pytest.mark.parametrize("kind", list(POINT_MAP_KINDS))
@pytest.mark.parametrize("side", ["a", "b"])
def test_point_answers_are_the_pairs_point_maps(textured_pair, side, kind, front_end):
    widget = PointMapWidget(textured_pair)
    front = front_end(widget)
    here = textured_pair.a if side == "a" else textured_pair.b
    there = textured_pair.b if side == "a" else textured_pair.a
    h, w = here.image_size
    for point in [(0.0, 0.0), (h / 3, w / 2 + 1.7), (h - 1, w - 1), (h, w)]:
        reply = front.ask({"type": "point", "side": side, "row": point[0], "col": point[1],
                           "kind": kind})
        assert reply["type"] == "answer" and reply["id"] == front.next_id
        assert reply["side"] == ("b" if side == "a" else "a")
        assert reply["kind"] == kind and reply["label"] == point_map_label(kind)
        expected = textured_pair.point_map(side, point, kind).numpy()
        drawn = np.array(reply["map"])
        assert drawn.shape == tuple(there.grid)
        np.testing.assert_allclose(drawn, expected, rtol=1e-5, atol=1e-7)
        # rings: the three strongest cells, at their centres in the other photo's pixels
        (th, tw), (rows, cols) = there.image_size, there.grid
        assert [t["cell"] for t in reply["top"]] == top3(expected)
        for ring in reply["top"]:
            r, c = ring["cell"]
            assert ring["row"] == pytest.approx((r + 0.5) * th / rows)
            assert ring["col"] == pytest.approx((c + 0.5) * tw / cols)
            assert ring["value"] == pytest.approx(expected[r, c])
        # the pointed cell, outlined on the pointed image
        (rows, cols) = here.grid
        r, c = min(int(point[0] * rows / h), rows - 1), min(int(point[1] * cols / w), cols - 1)
        assert reply["query_cell"] == pytest.approx(
            [r * h / rows, c * w / cols, (r + 1) * h / rows, (c + 1) * w / cols])
    assert widget.error == ""


def test_a_contribution_map_at_a_cell_centre_is_that_cells_row_of_the_decomposition(
        textured_pair, front_end):
    """Independent of the point-map code: at a cell's centre the bilinear weights are that
    cell alone, so the map is D[p, :], and it sums to the cell's overall value O_a[p]."""
    front = front_end(PointMapWidget(textured_pair))
    pairwise = textured_pair.pairwise.numpy()  # (Ha, Wa, Hb, Wb)
    for r, c in [(0, 0), (3, 5), (7, 7)]:
        row, col = cell_centre(textured_pair.a, r, c)
        reply = front.ask({"type": "point", "side": "a", "row": row, "col": col,
                           "kind": "contribution"})
        np.testing.assert_allclose(reply["map"], pairwise[r, c], rtol=1e-5, atol=1e-9)
        assert np.sum(reply["map"]) == pytest.approx(float(textured_pair.overall_a[r, c]),
                                                     rel=1e-4, abs=1e-8)
    # and from b: column q of D over a's grid
    r, c = 2, 4
    row, col = cell_centre(textured_pair.b, r, c)
    reply = front.ask({"type": "point", "side": "b", "row": row, "col": col,
                       "kind": "contribution"})
    np.testing.assert_allclose(reply["map"], pairwise[:, :, r, c], rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("kind", list(POINT_MAP_KINDS))
def test_region_answers_are_the_pairs_region_maps_and_partial_scores(textured_pair, kind,
                                                                    front_end):
    front = front_end(PointMapWidget(textured_pair))
    box = [10.5, 20.0, 60.25, 97.0]  # (top, left, bottom, right) in a's photo pixels
    reply = front.ask({"type": "region", "side": "a", "box": box, "kind": kind})
    assert reply["type"] == "answer" and reply["side"] == "b" and reply["kind"] == kind
    expected = textured_pair.region_map("a", box, kind).numpy()
    np.testing.assert_allclose(reply["map"], expected, rtol=1e-5, atol=1e-7)
    assert [t["cell"] for t in reply["top"]] == top3(expected)
    assert reply["partial_score"] == pytest.approx(textured_pair.partial_score("a", box))


def test_a_box_on_whole_cells_is_the_sum_of_their_rows(textured_pair, front_end):
    """Independent of the region code: a box made of whole cells weighs each cell 1."""
    front = front_end(PointMapWidget(textured_pair))
    (h, w), (rows, cols) = textured_pair.a.image_size, textured_pair.a.grid
    r0, c0, r1, c1 = 2, 1, 5, 4  # cells [r0, r1) x [c0, c1)
    box = [r0 * h / rows, c0 * w / cols, r1 * h / rows, c1 * w / cols]
    reply = front.ask({"type": "region", "side": "a", "box": box, "kind": "contribution"})
    pairwise = textured_pair.pairwise.numpy()
    np.testing.assert_allclose(reply["map"], pairwise[r0:r1, c0:c1].sum(axis=(0, 1)),
                               rtol=1e-5, atol=1e-9)
    assert reply["partial_score"] == pytest.approx(
        float(textured_pair.overall_a[r0:r1, c0:c1].sum()), rel=1e-9, abs=1e-12)


def test_without_a_kind_the_widgets_kind_is_used(textured_pair, front_end):
    widget = PointMapWidget(textured_pair, kind="match")
    front = front_end(widget)
    reply = front.ask({"type": "point", "side": "a", "row": 30, "col": 40})
    assert reply["kind"] == "match"
    widget.kind = "contribution"  # as the kind menu sets it
    reply = front.ask({"type": "point", "side": "a", "row": 30, "col": 40})
    assert reply["kind"] == "contribution"
    np.testing.assert_allclose(
        reply["map"], textured_pair.point_map("a", (30, 40), "contribution").numpy(), rtol=1e-5,
        atol=1e-9)
    with pytest.raises(traitlets.TraitError, match="unknown point-map kind 'nope'"):
        widget.kind = "nope"
    assert widget.kind == "contribution"


BAD_REQUESTS = [
    ({"type": "point", "side": "a", "row": 500, "col": 10}, "outside the image of size 96x128"),
    ({"type": "point", "side": "a", "row": -1, "col": 10}, "outside the image"),
    ({"type": "point", "side": "c", "row": 1, "col": 1}, "side must be 'a' or 'b', got 'c'"),
    ({"type": "point", "row": 1, "col": 1}, "side must be 'a' or 'b', got None"),
    ({"type": "point", "side": "a", "row": 1, "col": 1, "kind": "nope"},
     "unknown point-map kind 'nope'"),
    ({"type": "zoom", "side": "a"}, "unknown request type 'zoom'"),
    ({"type": "point", "side": "a", "col": 1}, "a point request needs 'row'"),
    ({"type": "point", "side": "a", "row": "top", "col": 1}, "'row' must be a number"),
    ({"type": "point", "side": "a", "row": float("nan"), "col": 1}, "2 finite numbers"),
    ({"type": "region", "side": "b"}, "a region request needs 'box'"),
    ({"type": "region", "side": "b", "box": [10, 10, 5, 20]}, "is empty"),
    ({"type": "region", "side": "b", "box": [1, 2, 3]}, "4 finite numbers"),
    ({"type": "region", "side": "b", "box": "all"}, "4 finite numbers"),
    ({"type": "region", "side": "b", "box": [500, 500, 600, 600]}, "outside the image"),
    (["point", "a"], "a request is a JSON object"),
]


@pytest.mark.parametrize("request_, message", BAD_REQUESTS,
                         ids=[m for _, m in BAD_REQUESTS])
def test_bad_requests_answer_an_error_state_not_an_exception(textured_pair, request_, message,
                                                             front_end):
    widget = PointMapWidget(textured_pair)
    front = front_end(widget)
    reply = front.ask(request_)  # no exception escapes into the comm
    assert reply["type"] == "error", reply
    assert message in reply["message"]
    assert reply["id"] == (front.next_id if isinstance(request_, dict) else None)
    assert widget.error == reply["message"]
    # the error state is synced to the front end, and a good request clears it
    updates = [m["state"] for m in front.sent if m["method"] == "update"]
    assert {"error": reply["message"]} in updates
    good = front.ask({"type": "point", "side": "a", "row": 5, "col": 5})
    assert good["type"] == "answer" and widget.error == ""


def test_a_point_without_contribution_answers_no_map(front_end):
    """Under max pooling a point that is no channel's maximum has no contribution: the
    contribution kind answers "no map" (not an error, not a flat map), the match kinds a map."""
    from simexplain import Explainer
    from simexplain.toy import HeadModel
    torch.manual_seed(0)
    gmp = Explainer(HeadModel("gmp", bias=False).eval(), "features")
    result = gmp.explain(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32))
    empty = int(torch.argmin(result.a.contributions.norm(dim=1)))
    point = (4 * (empty // 8) + 1.5, 4 * (empty % 8) + 1.5)
    front = front_end(PointMapWidget(result))
    reply = front.ask({"type": "point", "side": "a", "row": point[0], "col": point[1],
                       "kind": "contribution"})
    assert reply["type"] == "answer" and reply["no_map"] is True and reply["map"] is None
    assert "no map" in reply["message"]
    reply = front.ask({"type": "point", "side": "a", "row": point[0], "col": point[1]})
    assert reply["no_map"] is False and reply["kind"] == DEFAULT_POINT_MAP


def test_a_face_model_s_images_are_sent_as_the_crops_it_saw():
    """The map views draw the part of each photo the model saw (its `crop`): a face model's
    widget gets the face crops, at their own size below the display size, shrunk above it."""
    from face_stub import face_box, face_explainer, fixed_faces
    photos = [Image.fromarray(np.random.default_rng(n).integers(0, 256, (120, 200, 3),
                                                                dtype=np.uint8))
              for n in range(2)]
    with fixed_faces():
        result = face_explainer().explain(*photos)
    top, left, bottom, right = face_box(120, 200)
    widget = PointMapWidget(result)
    assert widget.sides["a"]["crop"] == [top, left, bottom, right]
    assert widget.sides["a"]["image_size"] == [120, 200]  # points stay in the photo's pixels
    for png, photo in ((widget.image_a, photos[0]), (widget.image_b, photos[1])):
        sent = Image.open(io.BytesIO(png)).convert("RGB")
        assert np.array_equal(np.asarray(sent),
                              np.asarray(photo.crop((left, top, right, bottom))))
    small = Image.open(io.BytesIO(PointMapWidget(result, display_size=50).image_a))
    assert small.size == (50, round(50 * (bottom - top) / (right - left)))


def test_the_images_are_sent_once_as_png_at_display_size(textured_pair):
    widget = PointMapWidget(textured_pair, display_size=64)
    a = Image.open(io.BytesIO(widget.image_a))
    assert a.format == "PNG" and a.size == (64, 48)  # the 128x96 photo, longest side 64
    b = Image.open(io.BytesIO(widget.image_b))
    assert b.size == (round(60 * 64 / 72), 64)  # 60x72, longest side 64, aspect kept
    # small photos keep their own size
    assert Image.open(io.BytesIO(PointMapWidget(textured_pair).image_b)).size == (60, 72)
    # points and boxes are in the photo's own pixels, whatever the display size
    assert widget.sides["a"]["image_size"] == [96, 128]
    assert widget.sides["b"]["image_size"] == [72, 60]
    assert widget.sides["a"]["crop"] == [0, 0, 96, 128]
    assert widget.sides["a"]["grid"] == [8, 8]
    np.testing.assert_allclose(widget.sides["a"]["overall"], textured_pair.overall_a.numpy(),
                               rtol=1e-5, atol=1e-9)
    assert widget.info["score"] == pytest.approx(textured_pair.score)
    assert widget.kinds == [[k, label] for k, label in POINT_MAP_KINDS.items()]
    # the state the front end gets holds each image once, as bytes
    state = widget.get_state()
    assert isinstance(state["image_a"], (bytes, memoryview))


def test_the_front_end_module_holds_the_shared_map_code_once():
    text = module_text()
    own = WIDGET_JS.read_text()
    order = [path.name for path in bundle_order()]
    # every static module the widget needs, each after the modules it imports
    assert order[-1] == SHARED_JS.name and SHARED_JS.parent == STATIC
    assert {"colours.js", "grid.js", "labels.js", "latest.js"} <= set(order)
    assert order.index("colours.js") < order.index("mapview.js")
    for name in order:
        assert f"// ---- web/static/{name}" in text
    assert text.index("// ---- web/static/mapview.js") < text.index("// ---- notebook/point_map.js")
    for definition in ["class MapView", "class Latest", "function gestures(", "function rings(",
                       "const DIVERGING"]:
        assert text.count(definition) == 1, definition
        assert definition not in own  # the widget's file uses them, it does not redefine them
    # one module text: no import left, and no export but the widget's default
    assert not re.search(r"^[ \t]*import\b", text, re.M)
    assert re.findall(r"^[ \t]*export\b.*", text, re.M) == ["export default { render };"]
    assert PointMapWidget._esm == text


def test_bundling_refuses_cycles_and_other_export_forms(tmp_path):
    from simexplain.errors import SimexplainError
    (tmp_path / "one.js").write_text('import { two } from "./two.js";\nexport const one = 1;\n')
    (tmp_path / "two.js").write_text('import { one } from "./one.js";\nexport const two = 2;\n')
    entry = tmp_path / "entry.js"
    entry.write_text('import { one } from "./one.js";\nexport default {};\n')
    with pytest.raises(SimexplainError, match="import cycle: one.js -> two.js -> one.js"):
        bundle_order(entry, tmp_path)
    with pytest.raises(SimexplainError, match="exports only declarations"):
        inlined("const a = 1;\nexport { a };\n")


def test_the_widget_needs_a_pair_explanation():
    from simexplain.errors import SimexplainError
    with pytest.raises(SimexplainError, match="PointMapWidget shows a PairExplanation"):
        PointMapWidget({"score": 1.0})


def test_result_widget_is_a_point_map_widget(textured_pair):
    widget = textured_pair.widget(kind="contribution", display_size=100)
    assert isinstance(widget, PointMapWidget)
    assert widget.kind == "contribution" and widget.display_size == 100
    assert widget.result is textured_pair
    assert math.isclose(widget.info["residual"], textured_pair.residual)


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"}, timeout=120)


def test_importing_simexplain_does_not_import_anywidget():
    done = _python("import sys, simexplain, simexplain.explanation, simexplain.notebook\n"
                   "print(sorted(m for m in sys.modules if m.split('.')[0] in "
                   "('anywidget', 'ipywidgets', 'traitlets', 'IPython')))")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_without_anywidget_the_widget_says_how_to_install_it():
    done = _python("import sys\nsys.modules['anywidget'] = None  # as if not installed\n"
                   "from simexplain.notebook import PointMapWidget")
    assert done.returncode != 0
    assert "ImportError: the live point-map widget needs anywidget: pip install " \
           "'simexplain[notebook]'" in done.stderr
