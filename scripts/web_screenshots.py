"""The documentation's screenshots of the web app: docs/img/web-pair.png, web-faces.png and
web-gallery.png, from a real server in headless Chromium (efficientnet-lite0 on scikit-image's
photos, the pair at input size 448; facenet on its own sample pair).

    .venv/bin/python scripts/web_screenshots.py
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the browser helpers the tests use

from browser_helpers import chromium, drag, hover_and_wait, open_page, serve, shoot, wait_stat  # noqa: E402


def docs_screenshots(out: Path = ROOT / "docs" / "img") -> None:
    """docs/img/web-pair.png, web-faces.png and web-gallery.png: efficientnet-lite0 on
    scikit-image's photos (the pair at input size 448), and facenet on its own sample pair."""
    import tempfile

    from PIL import ImageOps

    from simexplain import zoo
    from simexplain.datasets import skimage_photos
    from simexplain.retrieval import Index
    from simexplain.web import create_app

    photos = skimage_photos()
    work = Path(tempfile.mkdtemp(prefix="simexplain-docs-"))
    gallery = work / "gallery"
    gallery.mkdir()
    for name, image in photos.items():
        image.save(gallery / f"{name}.png")
        ImageOps.mirror(image).save(gallery / f"{name}-mirrored.png")
        w, h = image.size
        image.crop((0, 0, w // 2, h)).save(gallery / f"{name}-left.png")
        image.crop((w // 2, 0, w, h)).save(gallery / f"{name}-right.png")
    explainer = zoo.load("efficientnet-lite0")
    Index.build(gallery, explainer, model_name="efficientnet-lite0", out=work / "index",
                progress=False)
    samples = [(n, photos[n]) for n in ("astronaut", "chelsea", "coffee", "motorcycle_left",
                                        "motorcycle_right", "rocket")]
    app = create_app(explainer=explainer, index=work / "index", samples=samples)
    out.mkdir(parents=True, exist_ok=True)
    with chromium() as b, serve(app) as url:
        page, _ = open_page(b, url)  # opens on the model's own pair: the motorcycles
        wait_stat(page, "explains", 1, timeout=120_000)
        page.select_option("#size", "448")
        wait_stat(page, "explains", 2, timeout=300_000)
        hover_and_wait(page, "#view-a", 0.27, 0.71)  # the headlight
        shoot(page, out / "web-pair.png")

        page, _ = open_page(b, url + "/#gallery")
        wait_stat(page, "searches", 1, timeout=120_000)
        gallery_ids = page.eval_on_selector_all(
            "#pick-query optgroup[label=Gallery] option",
            "o => o.map(x => [x.value, x.textContent])")
        query = next(i for i, n in gallery_ids if n == "astronaut.png")
        page.select_option("#pick-query", query)
        wait_stat(page, "searches", 2, timeout=120_000)
        drag(page, "#view-query", (0.05, 0.25), (0.45, 0.7))  # the face
        wait_stat(page, "searches", 3, timeout=120_000)
        hover_and_wait(page, "#view-query", 0.25, 0.45)
        shoot(page, out / "web-gallery.png")
    with chromium() as b, serve(create_app(model="facenet")) as url:
        page, _ = open_page(b, url)  # opens on two photos of one face
        wait_stat(page, "explains", 1, timeout=120_000)
        page.select_option("#size", "320")  # a 8x8 grid rather than 3x3
        wait_stat(page, "explains", 2, timeout=300_000)
        hover_and_wait(page, "#view-a", 0.4, 0.68)  # an eye (of the face crop the page shows)
        shoot(page, out / "web-faces.png")
    from PIL import Image
    names = ("web-pair.png", "web-faces.png", "web-gallery.png")
    for name in names:  # 256 colours: a third of the bytes
        with Image.open(out / name) as shot:
            small = shot.convert("RGB").quantize(256)
        small.save(out / name, optimize=True)
    print("wrote " + ", ".join(str(out / name) for name in names))


if __name__ == "__main__":
    docs_screenshots()
