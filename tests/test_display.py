"""Notebook display: a pair's inline HTML (embedded PNGs of the right sizes, the face crop
beside its photo), `show(kind)`'s figures and a search's thumbnails."""

from __future__ import annotations

import base64
import dataclasses
import io
import re

import numpy as np
import pytest
from PIL import Image

from simexplain import SimexplainError
from simexplain.display import PANEL_SIDE, THUMBNAIL_SIDE
from simexplain.explanation import PairExplanation
from simexplain.maps import Frame
from simexplain.retrieval import Hits, Index
from simexplain.toy import toy_explainer

PHOTO_A = (120, 90)  # (height, width) of the pair's photos
PHOTO_B = (80, 100)
FACE_PHOTO = (600, 800)
FACE_BOX = (100, 300, 220, 400)  # (top, left, bottom, right): 120 x 100 pixels


def noise(size: tuple[int, int], seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8))


def embedded_images(page: str) -> list[Image.Image]:
    """Every PNG data URI of an HTML page, decoded."""
    found = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    return [Image.open(io.BytesIO(base64.b64decode(data))) for data in found]


@pytest.fixture(scope="module")
def explainer():
    return toy_explainer(size=64)


@pytest.fixture(scope="module")
def result(explainer) -> PairExplanation:
    return explainer.explain(noise(PHOTO_A, 0), noise(PHOTO_B, 1))


@pytest.fixture(scope="module")
def face_result(result) -> PairExplanation:
    """The pair with a's input a crop of a larger photo, as a face model's would be."""
    photo = noise(FACE_PHOTO, 2)
    side_a = dataclasses.replace(result.a, image=photo,
                                 frame=Frame(FACE_PHOTO, FACE_BOX, result.a.input_size))
    return PairExplanation.from_sides(side_a, result.b, "cosine")


def test_pair_html_has_score_residual_and_the_photos_with_their_maps(result):
    page = result._repr_html_()
    assert f"cosine {result.score:.4f}" in page
    assert f"residual {result.residual:.1e}" in page
    images = embedded_images(page)
    # per side: the photo, its overall map, its relative map; photos smaller than the panel
    # side are embedded at their own size
    sizes = [image.size for image in images]
    assert sizes == [PHOTO_A[::-1]] * 3 + [PHOTO_B[::-1]] * 3
    photo_a = np.asarray(images[0].convert("RGB"))
    assert np.array_equal(photo_a, np.asarray(result.a.image))
    assert not np.array_equal(np.asarray(images[1].convert("RGB")), photo_a)  # a map drawn
    assert "face crop" not in page


def test_pair_html_shows_the_face_crop_enlarged_beside_the_photo(face_result):
    page = face_result._repr_html_()
    assert "face crop a, enlarged" in page and "face crop b, enlarged" not in page
    images = embedded_images(page)
    assert len(images) == 4 + 3  # a: photo, crop, two maps; b: photo, two maps
    photo, crop = images[0], images[1]
    scale = PANEL_SIDE / max(FACE_PHOTO)
    assert photo.size == (round(FACE_PHOTO[1] * scale), round(FACE_PHOTO[0] * scale))
    top, left, bottom, right = FACE_BOX
    crop_scale = PANEL_SIDE / max(bottom - top, right - left)   # enlarged to the panel side
    expected_size = (round((right - left) * crop_scale), round((bottom - top) * crop_scale))
    assert crop.size == expected_size and max(crop.size) == PANEL_SIDE
    expected = face_result.a.image.crop((left, top, right, bottom)).resize(expected_size,
                                                                           Image.LANCZOS)
    assert np.array_equal(np.asarray(crop.convert("RGB")), np.asarray(expected))
    # the maps of a are drawn on the crop, at its size
    assert images[2].size == images[3].size == expected_size


@pytest.mark.parametrize("kind, options, columns", [
    ("overall", {}, 4), ("relative", {}, 2),
    ("points", {"points": [(8, 6), (20, 22)]}, 2),
    ("points", {"points": [(10, 10), (30, 40), (60, 50)], "side": "b"}, 3),
])
def test_show_draws_a_figure_of_each_kind(result, kind, options, columns):
    figure = result.show(kind, **options)
    assert isinstance(figure, Image.Image)
    # a grid of 2-inch panels at 100 dpi: two rows (the images, or points and their maps)
    assert figure.size == (200 * columns, 430)
    assert np.asarray(figure).std() > 10  # something drawn, not a blank canvas


def test_show_points_takes_the_point_map_kind_as_an_option(result):
    # `kind=` is the point-map kind, not the figure's: the two maps differ
    contribution = np.asarray(result.show("points", points=[(8, 6)], kind="contribution"))
    match = np.asarray(result.show("points", points=[(8, 6)], kind="match"))
    assert contribution.shape == match.shape and not np.array_equal(contribution, match)


def test_show_points_marks_the_points_it_is_given(result):
    one = np.asarray(result.show("points", points=[(8, 6)]), dtype=np.int16)
    other = np.asarray(result.show("points", points=[(100, 80)]), dtype=np.int16)
    assert one.shape == other.shape and np.abs(one - other).max() > 100


def test_show_patterns_links_the_two_images(result):
    figure = result.show("patterns", k=5)
    # both photos side by side at 280 pixels high, 24 apart, under a caption band
    width = round(PHOTO_A[1] * 280 / PHOTO_A[0]) + 24 + round(PHOTO_B[1] * 280 / PHOTO_B[0])
    assert figure.width == width and figure.height > 280


def test_show_on_a_face_draws_on_the_crop(face_result):
    overall = face_result.show("overall")
    assert overall.size == (200 * 5, 430)  # a's row: photo, crop, three maps


def test_show_refuses_an_unknown_kind_or_option(result):
    with pytest.raises(SimexplainError, match="'overall', 'relative', 'points', 'patterns'"):
        result.show("heatmap")
    with pytest.raises(SimexplainError, match="no option 'k'.*points, side, kind"):
        result.show("points", k=3)
    with pytest.raises(SimexplainError, match="side must be 'a' or 'b'"):
        result.show("points", points=[(1, 1)], side="c")


def test_hits_show_one_thumbnail_each_and_a_placeholder_for_a_missing_file(tmp_path):
    sizes = [(40, 30), (300, 200), (50, 50)]
    paths = []
    for n, size in enumerate(sizes):
        paths.append(tmp_path / f"item{n}.png")
        noise(size, n).save(paths[-1])
    missing = tmp_path / "gone.png"
    index = Index.from_vectors(np.eye(4, dtype=np.float32), [*map(str, paths), str(missing)])
    hits = index.search_vector(np.ones(4), k=4)
    assert isinstance(hits, Hits) and isinstance(hits, list) and len(hits) == 4
    page = hits._repr_html_()
    assert page.count('<figure class="hit"') == 4
    for hit in hits:
        assert f"#{hit.rank} " in page and f"{hit.score:.4f}" in page
    assert re.search(r'class="missing".*gone\.png', page)
    thumbnails = embedded_images(page)
    assert len(thumbnails) == 3
    expected = set()
    for height, width in sizes:
        scale = min(1.0, THUMBNAIL_SIDE / max(height, width))
        expected.add((round(width * scale), round(height * scale)))
    assert {t.size for t in thumbnails} == expected


def test_region_hits_show_the_region_map_on_each_thumbnail(tmp_path, explainer):
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    for n in range(3):
        noise((64, 64), 10 + n).save(gallery / f"item{n}.png")
    index = Index.build(gallery, explainer, model_name="toy", progress=False)
    query = noise((64, 64), 20)
    plain = index.search(query, k=3)
    explained = index.search(query, k=3, region=(0, 0, 32, 32), explain=True)
    assert all(hit.region_map is not None for hit in explained)
    photos = embedded_images(plain._repr_html_())
    overlaid = embedded_images(explained._repr_html_())
    by_path = {hit.path: image for hit, image in zip(plain, photos)}
    for hit, image in zip(explained, overlaid):
        photo = by_path[hit.path]
        assert image.size == photo.size == (64, 64)
        # the photo itself, then the same photo under the region map's colours
        assert np.array_equal(np.asarray(photo.convert("RGB")),
                              np.asarray(Image.open(hit.path).convert("RGB")))
        assert np.abs(np.asarray(image, np.int16) - np.asarray(photo, np.int16)).max() > 30


def test_explained_hits_of_a_face_model_show_the_crops_it_saw(tmp_path):
    """A face model's explained hits show their face crops (`View.seen`), enlarged to the
    thumbnail, not whole photos with the face small in them."""
    from face_stub import face_box, face_explainer, fixed_faces
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    for n in range(2):
        noise((120, 200), 30 + n).save(gallery / f"face{n}.png")
    explainer = face_explainer()
    with fixed_faces():
        index = Index.build(gallery, explainer, model_name="toy-faces", progress=False)
        hits = index.search(noise((120, 200), 40), k=2, explain=True)
    top, left, bottom, right = face_box(120, 200)
    scale = THUMBNAIL_SIDE / max(bottom - top, right - left)
    size = (round((right - left) * scale), round((bottom - top) * scale))
    thumbnails = embedded_images(hits._repr_html_())
    assert [t.size for t in thumbnails] == [size, size]
    for hit, thumbnail in zip(hits, thumbnails):
        expected = Image.open(hit.path).convert("RGB").crop((left, top, right, bottom))
        expected = expected.resize(size, Image.Resampling.LANCZOS)
        assert np.abs(np.asarray(thumbnail.convert("RGB"), np.int16)
                      - np.asarray(expected, np.int16)).max() <= 1
