"""One input pipeline and the file's pixels: the coordinate round trip (file -> model input ->
grid -> file), non-square inputs kept in shape, face crops mapped back to the photo, and the
web and command-line paths giving a model the same tensor."""

import numpy as np
import pytest
import torch
from PIL import Image

from simexplain import Explainer, Preprocess, SimexplainError, zoo
from simexplain.maps import Frame
from simexplain import toy as toys

FRAMES = [Frame((960, 1280), (0, 0, 960, 1280), (224, 299)),     # a 4:3 photo, aspect kept
          Frame((960, 1280), (0, 0, 960, 1280), (224, 224)),     # the same photo squashed
          Frame((480, 640), (101, 250, 301, 410), (160, 160))]   # a face crop, resized


@pytest.mark.parametrize("frame", FRAMES)
def test_coordinate_round_trip(frame):
    rng = np.random.default_rng(0)
    top, left, bottom, right = frame.box
    grid = (7, 10)
    boxes = frame.cell_boxes(grid)
    for row, col in zip(rng.uniform(top, bottom - 1, 50), rng.uniform(left, right - 1, 50)):
        there = frame.to_input((row, col))
        assert -0.5 <= there[0] <= frame.input_size[0]
        assert -0.5 <= there[1] <= frame.input_size[1]
        np.testing.assert_allclose(frame.to_image(there), (row, col), atol=1e-9)
        # the same weights from either coordinate system
        torch.testing.assert_close(frame.point_weights((row, col), grid),
                                   frame.point_weights(there, grid, coords="input"))
        # a pixel lies in the cell of its largest weight (cell boxes in file pixels)
        cell = int(torch.argmax(frame.point_weights((row, col), grid)))
        t, l, b, r = boxes[cell]
        assert t - 1 <= row + 0.5 <= b + 1 and l - 1 <= col + 0.5 <= r + 1
    box = (top + 10.0, left + 20.0, bottom - 5.0, right - 7.0)
    np.testing.assert_allclose(frame.box_to_image(frame.box_to_input(box)), box)
    torch.testing.assert_close(frame.region_weights(box, grid),
                               frame.region_weights(frame.box_to_input(box), grid, "input"))
    # the cells tile the crop exactly
    assert boxes[0][:2].tolist() == [top, left] and boxes[-1][2:].tolist() == [bottom, right]


def test_face_crop_frame_refuses_points_and_regions_off_the_face():
    frame = FRAMES[2]
    with pytest.raises(SimexplainError, match="outside the part of the image the model saw"):
        frame.point_weights((20, 20), (5, 5))
    with pytest.raises(SimexplainError, match="outside the part of the image the model saw"):
        frame.region_weights((0, 0, 50, 50), (5, 5))
    with pytest.raises(SimexplainError, match="outside the image"):
        frame.point_weights((1000, 20), (5, 5))
    # a mask of the photo's size is read inside the crop
    mask = np.zeros((480, 640))
    mask[101:201, 250:330] = 1
    torch.testing.assert_close(frame.region_weights(mask, (5, 5)),
                               frame.region_weights((101, 250, 201, 330), (5, 5)))


def test_preprocess_keeps_the_aspect_ratio_when_asked():
    keep = Preprocess(size=(224, 224), keep_aspect=True)
    assert keep.input_size(1280, 960) == (224, 299)
    assert keep.input_size(960, 1280) == (299, 224)
    assert keep.input_size(56, 28) == (28 * 8, 56 * 8)
    assert keep.input_size(4000, 10) == (224, 224 * 4)  # long side capped
    assert Preprocess(size=(224, 224)).input_size(1280, 960) == (224, 224)
    photo = Image.new("RGB", (1280, 960), (10, 200, 30))
    assert tuple(keep(photo).shape) == (3, 224, 299)


def composite_items():
    from simexplain.datasets import fashion_mnist
    images, labels = fashion_mnist("test")
    bag = images[np.flatnonzero(labels == 8)[0]]
    sneaker = images[np.flatnonzero(labels == 7)[0]]
    return bag, sneaker


def test_a_28x56_composite_is_seen_as_28x56():
    bag, sneaker = composite_items()
    composite = Image.fromarray(np.concatenate([bag, sneaker], axis=1))
    explainer = zoo.load("fmnist-gap")
    prepared = explainer.prepare(composite)
    assert tuple(prepared.tensor.shape) == (1, 1, 28, 56)
    # the model input is the normalised composite itself (no resizing at 28 px)
    expected = (torch.from_numpy(np.concatenate([bag, sneaker], 1)).float() / 255 - 0.2860) / 0.3530
    torch.testing.assert_close(prepared.tensor[0, 0], expected)
    result = explainer.explain(composite, Image.fromarray(bag))
    assert result.a.grid == (7, 14) and result.a.image_size == (28, 56)
    # the model's own embedding of the 28x56 input
    torch.testing.assert_close(result.a.embedding.float(),
                               zoo.model("fmnist-gap")(prepared.tensor)[0], atol=1e-5, rtol=1e-5)
    # halves in the file's pixels split the score
    left = result.partial_score("a", (0, 0, 28, 28))
    right = result.partial_score("a", (0, 28, 28, 56))
    assert left + right == pytest.approx(result.score, abs=1e-5)
    assert left > right  # the bag half carries the similarity to a bag


def toy_explainer(keep_aspect=True):
    return toys.toy_explainer(size=64, keep_aspect=keep_aspect)


def test_points_and_regions_in_file_pixels_equal_input_pixels():
    rng = np.random.default_rng(1)
    photo = Image.fromarray(rng.integers(0, 255, (960, 1280, 3), dtype=np.uint8))
    for keep in (True, False):
        result = toy_explainer(keep).explain(photo, photo.resize((300, 200)))
        frame = result.a.frame
        assert result.a.image_size == (960, 1280)
        assert frame.input_size == ((64, 85) if keep else (64, 64))
        point = (700.0, 333.0)
        torch.testing.assert_close(result.point_map("a", point),
                                   result.point_map("a", frame.to_input(point), coords="input"))
        box = (100, 200, 500, 900)
        assert result.partial_score("a", box) == pytest.approx(
            result.partial_score("a", frame.box_to_input(box), coords="input"))
        torch.testing.assert_close(result.region_map("a", box),
                                   result.region_map("a", frame.box_to_input(box), coords="input"))


def test_a_point_on_a_1280x960_photo_lands_on_the_same_spot_in_the_overlay():
    """Draw the point's own weights (a bump around it on the grid) over a flat gray photo:
    the most coloured displayed pixel is where the point is, scaled to the display."""
    from simexplain import visualize
    photo = Image.new("RGB", (1280, 960), (128, 128, 128))
    result = toy_explainer().explain(photo, photo)
    assert result.a.input_size == (64, 85) and result.a.grid[0] == 16  # 4:3 kept
    for point in [(700.0, 333.0), (100.0, 1200.0), (480.0, 640.0)]:
        bump = result.a.point_weights(point).reshape(result.a.grid)
        drawn = np.asarray(visualize.overlay_map(result, bump, "a"), dtype=np.float64)
        assert drawn.shape[:2] == (384, 512)  # downscaled for display, aspect kept
        colour = np.abs(drawn - 128).sum(axis=2)
        row, col = np.unravel_index(colour.argmax(), colour.shape)
        expected = visualize.to_display(result.a, point)
        cell = 384 / 16  # a displayed cell's side: the map's peak is at a cell centre
        assert abs(row - expected[0]) <= cell and abs(col - expected[1]) <= cell
        assert expected == pytest.approx((point[0] * 0.4, point[1] * 0.4))


def test_web_and_command_line_give_the_same_embeddings(tmp_path):
    """The web engine and `simexplain pair` go through one input pipeline: the same photo
    gives the same tensor and embedding at every --size."""
    from simexplain.datasets import skimage_photos
    from simexplain.web.engine import Engine
    path = tmp_path / "motorcycle.png"
    skimage_photos(["motorcycle_left"])["motorcycle_left"].save(path)
    cases = [("efficientnet-lite0", 160), ("efficientnet-lite0", 224),
             ("efficientnet-lite0", (200, 260))]
    cases += [("facenet", 160), ("facenet", 224)] if _has_faces() else []
    for model, size in cases:
        photo = face_photo() if model == "facenet" else path
        cli = zoo.resolve(model, size=size)
        engine = Engine(explainer=zoo.resolve(model, size=size), model=model, samples=[photo])
        served = engine.prepared(model, ["s0"], "a")[0].side
        side = cli.side(photo, "a")
        assert served.frame == side.frame, (model, size)
        torch.testing.assert_close(served.embedding.float(), side.embedding.float())


def _has_faces() -> bool:
    try:
        face_photo()
        return True
    except SimexplainError:
        return False


def face_photo():
    from simexplain.datasets import face_photos
    return face_photos()["obama"]


def test_search_a_28x56_query_by_a_region_in_its_own_pixels(tmp_path, capsys):
    """`simexplain search ... --region` on a two-item composite indexed with fmnist-gap:
    the region is read in the query file's pixels (28x56, a 7x14 grid) and ranks the
    gallery by that region's partial similarity (checked against the full decomposition of
    each pair)."""
    import json

    from simexplain.cli import main
    from simexplain.datasets import fashion_mnist
    images, labels = fashion_mnist("test")
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    names = {}
    for label in (8, 7):  # bags, sneakers
        for k in np.flatnonzero(labels == label)[10:14]:
            path = gallery / f"{label}_{k}.png"
            Image.fromarray(images[k]).save(path)
            names[str(path)] = label
    bag, sneaker = composite_items()
    query = tmp_path / "query.png"
    Image.fromarray(np.concatenate([bag, sneaker], axis=1)).save(query)
    index = tmp_path / "gallery.index"
    assert main(["index", "build", str(gallery), "--model", "fmnist-gap", "--out", str(index),
                 "--quiet"]) == 0
    capsys.readouterr()
    explainer = zoo.load("fmnist-gap")
    pairs = {path: explainer.explain(query, path) for path in names}
    for region, wanted in (((0, 28, 28, 56), 7), ((0, 0, 28, 28), 8)):
        assert main(["search", str(index), str(query), "--region", ",".join(map(str, region)),
                     "--json", "-k", "8"]) == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary["query_input"]["image_size"] == [28, 56]
        assert summary["query_input"]["grid"] == [7, 14]
        expected = sorted(names, key=lambda p: -pairs[p].partial_score("a", region))
        assert [hit["path"] for hit in summary["hits"]] == expected
        for hit in summary["hits"]:
            assert hit["score"] == pytest.approx(pairs[hit["path"]].partial_score("a", region),
                                                 abs=1e-5)
        assert [names[h["path"]] for h in summary["hits"][:4]] == [wanted] * 4


def test_resized_explainer_sees_the_image_at_the_new_size():
    """`explainer.resized(N)` is `--size N`: the same model fed the image resized to N (short
    side, aspect kept where the model pools), so a finer grid; the original is unchanged."""
    from simexplain.toy import tiny_cnn
    explainer = Explainer(tiny_cnn(), "features",
                          transform=Preprocess(size=(64, 64), keep_aspect=True))
    photo = Image.fromarray(np.random.default_rng(3).integers(0, 255, (60, 90, 3),
                                                              dtype=np.uint8))
    bigger = explainer.resized(128)
    side = bigger.side(photo, "a")
    assert side.frame.input_size == (128, 192) and side.grid == (16, 24)
    assert explainer.side(photo, "a").grid == (8, 12)  # the original keeps its size
    # the embedding is the model's own forward pass on the photo resized by hand
    x = Preprocess(size=(128, 192))(photo).unsqueeze(0)
    with torch.no_grad():
        expected = explainer.stream_a.model(x)[0].double()
    np.testing.assert_allclose(side.embedding.double().numpy(), expected.numpy(), rtol=1e-4,
                               atol=1e-6)
    with pytest.raises(SimexplainError, match="no size"):
        Explainer(tiny_cnn(), "features", transform=lambda image: image).resized(128)
