"""The results page of `search --out` shows each explained hit, and its maps, as the model saw
it: a face model's hits as their face crops, enlarged (`View.seen`), not whole photos with
the face lost in them."""

from __future__ import annotations

import numpy as np
from PIL import Image

from face_stub import face_box, face_explainer, fixed_faces
from simexplain.retrieval import Index, RegionQuery
from simexplain.retrieval.page import write_results_page
from simexplain.visualize import DISPLAY_SIDE

PHOTO = (120, 200)  # (height, width): the "face" is face_box(120, 200)


def noise(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (*PHOTO, 3), dtype=np.uint8))


def test_explained_hits_are_shown_as_the_crops_the_model_saw(tmp_path):
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    for n in range(3):
        noise(n).save(gallery / f"face{n}.png")
    explainer = face_explainer()
    with fixed_faces():
        index = Index.build(gallery, explainer, model_name="toy-faces", progress=False)
        prepared = RegionQuery.from_side(next(explainer.sides([noise(7)], "a")))
        hits = index.search(prepared, 2, explain=True)
        summary = {"index": "faces", "query": "query.png", "region": None,
                   "ranking": "descending", "score": "cosine of the whole images"}
        write_results_page(tmp_path / "page", prepared, hits, index, summary)
    top, left, bottom, right = face_box(*PHOTO)
    scale = DISPLAY_SIDE / max(bottom - top, right - left)  # enlarged to the display side
    crop_size = (round((right - left) * scale), round((bottom - top) * scale))
    for hit in hits:
        assert hit.explanation is not None and hit.explanation.b.frame.cropped
        shown = Image.open(tmp_path / "page" / f"hit_{hit.rank:03d}.png").convert("RGB")
        assert shown.size == crop_size
        expected = Image.open(hit.path).convert("RGB").crop((left, top, right, bottom))
        expected = expected.resize(crop_size, Image.Resampling.LANCZOS)
        assert np.abs(np.asarray(shown, np.int16) - np.asarray(expected, np.int16)).max() <= 1
        overall = Image.open(tmp_path / "page" / f"hit_{hit.rank:03d}_overall.png")
        assert overall.size == crop_size
