"""Gallery files that change after the build: every read re-checks the file at the moment it is
opened (a regular file inside the gallery, the indexed sha256), in the Python API, `search
--out` and the web app; a symbolic link swapped in is refused, a changed or missing file is
reported (hit marked stale, a warning), never served silently."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from simexplain import toy as toys
from simexplain.cli import main
from simexplain.errors import SimexplainError
from simexplain.gallery_files import MAX_GALLERY_FILE_BYTES, read_gallery_file
from simexplain.retrieval import Index
from simexplain.retrieval.index import StaleHit

SIDE = 32
TOY = ["--model", "simexplain.toy:tiny_cnn", "--layer", "features", "--size", "32"]


def picture(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)


@pytest.fixture
def setting(tmp_path):
    """A gallery of 4 images, its index (toy model), a query that is gallery image 0 itself,
    and an 'outside' photo (a secret elsewhere on disk) of a different picture."""
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    for i in range(4):
        Image.fromarray(picture(i)).save(gallery / f"img_{i}.png")
    outside = tmp_path / "private" / "secret.png"
    outside.parent.mkdir()
    Image.fromarray(picture(99)).save(outside)
    query = tmp_path / "query.png"
    Image.fromarray(picture(0)).save(query)
    explainer = toys.toy_explainer(size=SIDE, model_name="toy", dim=8, channels=8, depth=2)
    out = tmp_path / "index"
    Index.build(gallery, explainer, model_name="toy", out=out, progress=False)
    return {"gallery": gallery, "outside": outside, "query": query, "index": out,
            "explainer": explainer}


def swap_for_link(path: Path, target: Path) -> None:
    path.unlink()
    path.symlink_to(target)


def test_read_gallery_file_statuses(setting):
    gallery, outside = setting["gallery"], setting["outside"]
    index = Index.load(setting["index"])
    row = {Path(p).name: i for i, p in enumerate(index.paths)}
    assert index.gallery_file(row["img_0.png"]).status == "ok"
    swap_for_link(gallery / "img_0.png", outside)
    refused = index.gallery_file(row["img_0.png"])
    assert refused.status == "refused" and refused.data is None
    assert "outside the gallery" in refused.stale
    Image.fromarray(picture(50)).save(gallery / "img_1.png")
    changed = index.gallery_file(row["img_1.png"])
    assert changed.status == "changed" and changed.data == (gallery / "img_1.png").read_bytes()
    (gallery / "img_2.png").unlink()
    assert index.gallery_file(row["img_2.png"]).status == "missing"
    os.mkfifo(gallery / "img_3.png.fifo")
    assert read_gallery_file(gallery / "img_3.png.fifo", gallery).status == "refused"
    # a link that stays inside the gallery is what the build accepts too
    (gallery / "inside.png").symlink_to(gallery / "img_3.png")
    assert read_gallery_file(gallery / "inside.png", gallery).status == "ok"


def test_a_huge_file_swapped_in_is_refused_unread(setting):
    gallery = setting["gallery"]
    index = Index.load(setting["index"])
    row = {Path(p).name: i for i, p in enumerate(index.paths)}
    with open(gallery / "img_0.png", "r+b") as handle:  # sparse: no disk, no time to write
        handle.truncate(MAX_GALLERY_FILE_BYTES + 1)
    refused = index.gallery_file(row["img_0.png"])
    assert refused.status == "refused" and refused.data is None
    assert f"{MAX_GALLERY_FILE_BYTES + 1:,} bytes" in refused.stale
    # the bound is inclusive: a file of exactly max_bytes is read
    size = (gallery / "img_1.png").stat().st_size
    assert read_gallery_file(gallery / "img_1.png", gallery, max_bytes=size).status == "ok"
    assert read_gallery_file(gallery / "img_1.png", gallery,
                             max_bytes=size - 1).status == "refused"


def test_python_api_refuses_a_link_swapped_in_and_marks_stale_hits(setting):
    gallery = setting["gallery"]
    index = Index.load(setting["index"], explainer=setting["explainer"])
    row = {Path(p).name: i for i, p in enumerate(index.paths)}
    swap_for_link(gallery / "img_0.png", setting["outside"])
    Image.fromarray(picture(50)).save(gallery / "img_1.png")
    (gallery / "img_2.png").unlink()
    with pytest.warns(StaleHit) as warned:
        hits = index.search(setting["query"], k=4, explain=True)
    by_name = {Path(hit.path).name: hit for hit in hits}
    assert by_name["img_0.png"].stale.startswith("refused")
    assert by_name["img_0.png"].explanation is None  # never decoded from the outside file
    assert by_name["img_1.png"].stale == "changed since it was indexed"
    assert by_name["img_1.png"].explanation is not None  # explained as the file is now
    assert by_name["img_2.png"].stale.startswith("missing")
    assert by_name["img_3.png"].stale is None and by_name["img_3.png"].to_dict()["stale"] is None
    assert len(warned) == 3 and all("img_3" not in str(w.message) for w in warned)
    page = hits._repr_html_()  # Jupyter's thumbnails read through the index too
    assert page.count("unavailable: ") == 2 and "stale: refused" in page
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StaleHit)
        plain = index.search(setting["query"], k=4)  # not explained: each thumbnail a read
        assert plain._repr_html_().count("unavailable: ") == 2
    with pytest.raises(SimexplainError, match="img_0.png: refused"):
        index.gallery_image(row["img_0.png"])
    with pytest.warns(StaleHit, match="changed since it was indexed"):
        now = index.gallery_image(row["img_1.png"])
    np.testing.assert_array_equal(np.asarray(now), picture(50))


def test_search_out_does_not_copy_a_linked_outside_photo(setting, tmp_path, capsys):
    gallery = setting["gallery"]
    built = tmp_path / "cli-index"
    assert main(["index", "build", str(gallery), *TOY, "--out", str(built), "--quiet"]) == 0
    swap_for_link(gallery / "img_0.png", setting["outside"])
    (gallery / "img_2.png").unlink()
    out = tmp_path / "page"
    capsys.readouterr()
    assert main(["search", str(built), str(setting["query"]), *TOY, "-k", "4",
                 "--out", str(out), "--json"]) == 0  # exit 0, with a warning a stale hit
    captured = capsys.readouterr()
    printed = json.loads(captured.out)
    stale = {Path(h["path"]).name: h["stale"] for h in printed["hits"]}
    assert stale["img_0.png"].startswith("refused") and stale["img_2.png"].startswith("missing")
    assert stale["img_1.png"] is None and stale["img_3.png"] is None
    warnings_printed = [line for line in captured.err.splitlines() if line]
    assert len(warnings_printed) == 2
    assert all(line.startswith("simexplain: warning: ") for line in warnings_printed)
    results = json.loads((out / "results.json").read_text())
    rank = {Path(h["path"]).name: h["rank"] for h in results["hits"]}
    assert "image" not in results["files"][f"hit_{rank['img_0.png']}"]
    assert not (out / f"hit_{rank['img_0.png']:03d}.png").exists()
    page = (out / "index.html").read_text()
    assert "stale: refused" in page and "stale: missing" in page
    # nothing of the outside photo was copied: no written image is its picture
    secret = np.asarray(Image.open(setting["outside"]).convert("RGB"))
    for written in out.glob("hit_*.png"):
        drawn = np.asarray(Image.open(written).convert("RGB"))
        assert drawn.shape != secret.shape or not np.array_equal(drawn, secret), written


def test_web_app_refuses_a_link_swapped_in(setting):
    from fastapi.testclient import TestClient
    from simexplain.web import create_app
    gallery = setting["gallery"]
    app = create_app(explainer=setting["explainer"], index=setting["index"], samples=[])
    index = Index.load(setting["index"])
    row = {Path(p).name: i for i, p in enumerate(index.paths)}
    with TestClient(app, base_url="http://localhost") as client, warnings.catch_warnings():
        warnings.simplefilter("ignore", StaleHit)
        first = client.get(f"/api/images/g{row['img_0.png']}")
        assert first.status_code == 200  # served (and its pixels kept in memory) before
        swap_for_link(gallery / "img_0.png", setting["outside"])
        Image.fromarray(picture(50)).save(gallery / "img_1.png")
        response = client.get(f"/api/images/g{row['img_0.png']}")
        assert response.status_code == 404 and "refused" in response.json()["error"]
        changed = client.get(f"/api/images/g{row['img_1.png']}")
        assert changed.status_code == 200
        assert changed.headers["x-simexplain-stale"] == "changed since it was indexed"
        assert changed.headers["cache-control"] == "no-cache"
        assert "x-simexplain-stale" not in client.get(f"/api/images/g{row['img_3.png']}").headers
        upload = client.post("/api/images", files={"file": (
            "q.png", setting["query"].read_bytes())})
        found = client.post("/api/search", json={"query": upload.json()["id"], "k": 4})
        assert found.status_code == 200, found.text
        body = found.json()
        assert [u["name"] for u in body["unavailable"]] == ["img_0.png"]
        assert body["unavailable"][0]["stale"].startswith("refused")
        shown = {hit["name"]: hit["stale"] for hit in body["hits"]}
        assert "img_0.png" not in shown and shown["img_1.png"] == "changed since it was indexed"
        assert shown["img_3.png"] is None


class _CountedHashes:
    """Counts the sha256 computations of gallery_files (each one a whole file hashed)."""

    def __init__(self, monkeypatch):
        import hashlib
        import types
        from simexplain import gallery_files
        self.calls = 0

        def counted(*args):
            self.calls += 1
            return hashlib.sha256(*args)
        monkeypatch.setattr(gallery_files, "hashlib", types.SimpleNamespace(sha256=counted))
        gallery_files._VERIFIED.clear()


def test_a_verified_unchanged_file_is_not_read_again_for_its_status(setting, monkeypatch):
    from simexplain import gallery_files
    monkeypatch.setattr(gallery_files, "RACY_SECONDS", 0.0)
    hashes = _CountedHashes(monkeypatch)
    index = Index.load(setting["index"], explainer=setting["explainer"])
    row = {Path(p).name: i for i, p in enumerate(index.paths)}["img_1.png"]
    first = index.gallery_file(row)
    assert first.status == "ok" and first.data is not None and hashes.calls == 1
    status_only = index.gallery_file(row, data=False)
    assert status_only.status == "ok" and status_only.data is None
    again = index.gallery_file(row)  # the bytes are read, not hashed again
    assert again.data == first.data and hashes.calls == 1
    hits = index.search(setting["query"], k=4)  # each hit's status, the new files hashed
    assert all(h.stale is None for h in hits)
    calls = hashes.calls
    assert [h.stale for h in index.search(setting["query"], k=4)] == [None] * 4
    assert hashes.calls == calls  # the second search reads none of its hits' files
    # rewritten with the same size and its old modification time put back: the change time
    # moved, so the file is read and hashed again and found changed
    path = setting["gallery"] / "img_1.png"
    before = path.stat()
    other = bytearray(path.read_bytes())
    other[-13] ^= 0xFF  # inside the PNG's last chunk: same size, other bytes
    path.write_bytes(bytes(other))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size
    calls = hashes.calls
    assert index.gallery_file(row, data=False).status == "changed"
    assert hashes.calls == calls + 1


def test_a_file_changed_just_before_its_check_is_not_remembered(setting, monkeypatch):
    """A write in the same clock tick as the verification could leave size and times as they
    were: a file changed less than RACY_SECONDS before is hashed on every check."""
    hashes = _CountedHashes(monkeypatch)
    index = Index.load(setting["index"], explainer=setting["explainer"])
    row = {Path(p).name: i for i, p in enumerate(index.paths)}["img_2.png"]
    os.utime(setting["gallery"] / "img_2.png")  # changed (its times) now
    for _ in range(3):
        assert index.gallery_file(row, data=False).status == "ok"
    assert hashes.calls == 3


def test_mark_stale_without_warnings_for_callers_that_report_it(setting):
    """warn=False (the web app, which puts the marks in its answer): the same marks, no
    warning, so no caller needs to change the process-wide warning filters around it."""
    index = Index.load(setting["index"], explainer=setting["explainer"])
    (setting["gallery"] / "img_2.png").unlink()
    hits = index.search(setting["query"], k=4, check_files=False)
    assert all(hit.stale is None for hit in hits)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet = index.mark_stale(hits, warn=False)
    assert not caught
    assert [Path(h.path).name for h in quiet] == ["img_2.png"]
    assert quiet[0].stale.startswith("missing")
    with pytest.warns(StaleHit, match="img_2.png"):
        assert index.mark_stale(hits) == quiet
