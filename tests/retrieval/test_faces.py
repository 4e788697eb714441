"""Face models search faces: gallery images and queries are face crops, as in `pair`."""

import shutil

from simexplain import zoo
from simexplain.datasets import face_identity, face_photos, skimage_photos
from simexplain.retrieval import Index


def test_facenet_index_crops_faces_and_skips_photos_without_one(tmp_path):
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    photos = face_photos()
    for name in ("obama", "obama2", "obama3", "biden"):
        shutil.copy(photos[name], gallery / photos[name].name)
    skimage_photos(["coffee"])["coffee"].save(gallery / "coffee.png")  # no face in it
    explainer = zoo.load("facenet")
    index = Index.build(gallery, explainer, model_name="facenet", progress=False)
    assert [s.path.endswith("coffee.png") for s in index.skipped] == [True]
    assert "no face found" in index.skipped[0].reason
    hits = index.search(photos["obama"], k=4, explain=True)
    names = [face_identity(h.path.rsplit("/", 1)[1].split(".")[0]) for h in hits]
    assert names[:3] == ["obama", "obama", "obama"] and names[3] == "biden"
    explained = hits[0].explanation
    assert explained.a.input_size == explained.b.input_size == (160, 160)
    assert explained.a.frame.cropped and explained.a.image_size == explained.a.frame.image_size
