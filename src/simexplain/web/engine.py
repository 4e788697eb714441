"""What the web API does, without the web: images by id, cached contributions, maps.

The HTTP layer (`simexplain.web.api`) only validates requests and turns these results and
errors into JSON. Everything here is plain Python and torch, so it can be tested and timed on
its own.

Speed: an explanation or a search computes the per-position contributions u_p of every image
involved once and keeps them (bounded LRU caches). A pointer update is then one small
product: point weights (P,) @ D (P, Q) for a pair, or ((w @ U_a) @ U_b^T) * scale for each
visible search result.
"""

from __future__ import annotations

import hashlib
import io
import re
import secrets
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .. import decomposition, maps
from ..errors import NoPointMap, SimexplainError
from ..explanation import DEFAULT_POINT_MAP, PairExplanation, Side, point_map_label
from ..images import MAX_PIXELS, load_image, to_rgb
from .cache import LRU

METHODS = ("decomposition", "relative", "gradcam", "gradcam-raw", "rgradcam", "occlusion")
MAX_UPLOAD_BYTES = 10 * 1024 * 1024
# Uploads are kept at most this large (longest side, pixels): plenty for display and for any
# model input, and it bounds the memory one upload can hold.
STORED_SIDE = 2048
DEFAULT_SAMPLES = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left",
                   "motorcycle_right", "camera", "coins")
_ID = re.compile(r"^(g|s)(\d{1,9})$|^u[0-9a-f]{24}$|^f-[A-Za-z0-9_-]{1,40}$")


class WebError(SimexplainError):
    """An error with an HTTP status for the API to answer with."""

    status = 400


class NotFound(WebError):
    status = 404


class TooLarge(WebError):
    status = 413


def status_of(exc: SimexplainError) -> int:
    return getattr(exc, "status", 400)


# -- images ------------------------------------------------------------------------------------
@dataclass
class ImageRecord:
    id: str
    name: str
    source: str  # gallery, sample, upload, derived
    path: Path | None = None
    image: Image.Image | None = None  # in memory (samples, uploads, derived crops)

    def info(self, size: tuple[int, int] | None = None) -> dict:
        width, height = size if size else (self.image.size if self.image else (None, None))
        return {"id": self.id, "name": self.name, "source": self.source, "width": width,
                "height": height, "url": f"/api/images/{self.id}"}


def decode_upload(data: bytes, max_pixels: int = MAX_PIXELS,
                  stored_side: int = STORED_SIDE) -> Image.Image:
    """Validate uploaded bytes as one image (header, pixel count, verify, full decode) and
    return it as RGB, downscaled to at most `stored_side` pixels on its longest side."""
    if not data:
        raise WebError("the upload is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as probe:
                width, height = probe.size
                if width < 1 or height < 1:
                    raise WebError("the image has no pixels")
                if width * height > max_pixels:
                    raise TooLarge(f"image of {width}x{height} pixels exceeds the limit of "
                                   f"{max_pixels} pixels")
                probe.verify()
            with Image.open(io.BytesIO(data)) as opened:
                opened.load()
                image = to_rgb(opened.copy())
    except WebError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise TooLarge(f"image rejected as a decompression bomb ({exc})") from None
    except UnidentifiedImageError:
        raise WebError("the upload is not an image in a format this server reads") from None
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a bad upload
        raise WebError(f"the image cannot be decoded ({type(exc).__name__}: {exc})") from None
    if max(image.size) > stored_side:
        image = image.copy()
        image.thumbnail((stored_side, stored_side), Image.LANCZOS)
    return image


def _image_bytes(image: Image.Image) -> int:
    return image.width * image.height * 3


class ImageStore:
    """Images by id: gallery images (`g<i>`, from the index's paths), samples (`s<i>`),
    uploads (`u<hash>`, content-addressed) and derived crops (`f-...`). Clients never name a
    file path: ids are the only handle."""

    def __init__(self, gallery_paths: Sequence[str | Path] = (), samples: Sequence = (),
                 max_uploads: int = 64, max_upload_memory: int = 512 * 2**20,
                 max_pixels: int = MAX_PIXELS):
        self.gallery_paths = [Path(p) for p in gallery_paths]
        self.max_pixels = max_pixels
        self.samples: list[ImageRecord] = []
        for i, sample in enumerate(samples):
            name, image = _named_sample(sample, i)
            self.samples.append(ImageRecord(f"s{i}", name, "sample", image=image))
        self.uploads: LRU[ImageRecord] = LRU(max_uploads, max_upload_memory,
                                             cost=lambda r: _image_bytes(r.image))
        self._gallery_pixels: LRU[Image.Image] = LRU(64, 256 * 2**20, cost=_image_bytes)
        self._encoded: LRU[tuple[bytes, str]] = LRU(512, 64 * 2**20, cost=lambda v: len(v[0]))

    # lookups
    def record(self, image_id: str) -> ImageRecord:
        match = _ID.match(image_id or "")
        if not match:
            raise NotFound(f"unknown image id {image_id!r}")
        kind, number = match.group(1), match.group(2)
        if kind == "g":
            i = int(number)
            if i >= len(self.gallery_paths):
                raise NotFound(f"unknown image id {image_id!r}: the gallery has "
                               f"{len(self.gallery_paths)} images")
            path = self.gallery_paths[i]
            return ImageRecord(image_id, path.name, "gallery", path=path)
        if kind == "s":
            i = int(number)
            if i >= len(self.samples):
                raise NotFound(f"unknown image id {image_id!r}")
            return self.samples[i]
        found = self.uploads.get(image_id)
        if found is None:
            raise NotFound(f"unknown image id {image_id!r} (uploads are kept for a limited "
                           "time: upload it again)")
        return found

    def pixels(self, image_id: str) -> Image.Image:
        record = self.record(image_id)
        if record.image is not None:
            return record.image
        return self._gallery_pixels.get_or_create(image_id, lambda: load_image(record.path))

    def add_upload(self, data: bytes, name: str = "upload") -> ImageRecord:
        image = decode_upload(data, self.max_pixels)
        image_id = "u" + hashlib.sha256(data).hexdigest()[:24]
        record = ImageRecord(image_id, _clean_name(name), "upload", image=image)
        existing = self.uploads.get(image_id)
        return existing if existing is not None else self.uploads.put(image_id, record)

    def add_derived(self, source_id: str, tag: str, image: Image.Image) -> ImageRecord:
        image_id = f"f-{tag}-{source_id}"[:42]
        record = ImageRecord(image_id, f"{tag} of {self.record(source_id).name}", "derived",
                             image=image)
        return self.uploads.put(image_id, record)

    def listing(self, source: str, offset: int, limit: int) -> tuple[list[dict], int]:
        if source == "gallery":
            total = len(self.gallery_paths)
            items = [ImageRecord(f"g{i}", self.gallery_paths[i].name, "gallery").info()
                     for i in range(offset, min(total, offset + limit))]
            return items, total
        total = len(self.samples)
        return [r.info() for r in self.samples[offset:offset + limit]], total

    def encoded(self, image_id: str, max_side: int | None = None) -> tuple[bytes, str]:
        """The image re-encoded for a browser (JPEG, or PNG when small), optionally shrunk."""
        def encode() -> tuple[bytes, str]:
            image = self.pixels(image_id)
            if max_side and max(image.size) > max_side:
                image = image.copy()
                image.thumbnail((max_side, max_side), Image.LANCZOS)
            buffer = io.BytesIO()
            if image.width * image.height <= 256 * 256:
                image.save(buffer, format="PNG")
                return buffer.getvalue(), "image/png"
            image.save(buffer, format="JPEG", quality=90)
            return buffer.getvalue(), "image/jpeg"
        return self._encoded.get_or_create((image_id, max_side), encode)


def _named_sample(sample: Any, i: int) -> tuple[str, Image.Image]:
    if isinstance(sample, tuple):
        name, image = sample
    elif isinstance(sample, Image.Image):
        name, image = f"sample {i + 1}", sample
    else:
        name, image = Path(sample).name, sample
    return str(name), load_image(image)


def _clean_name(name: str) -> str:
    name = Path(str(name or "upload")).name
    return re.sub(r"[^\w.\- ]", "_", name)[:80] or "upload"


def default_samples() -> list[tuple[str, Image.Image]]:
    """scikit-image's bundled photos, when scikit-image is installed (else none)."""
    try:
        from ..datasets import skimage_photos
        photos = skimage_photos()
    except (ImportError, SimexplainError):
        return []
    return [(name, photos[name]) for name in DEFAULT_SAMPLES if name in photos]


# -- results -----------------------------------------------------------------------------------
def grid_list(values: torch.Tensor) -> list[list[float]]:
    """A (H, W) map as nested lists of floats, 6 significant digits (small JSON)."""
    array = np.asarray(values.detach().double().cpu().numpy(), dtype=np.float64)
    return [[float(f"{v:.6g}") for v in row] for row in array.tolist()]


def peak(grid_map: torch.Tensor, image_size: tuple[int, int]) -> dict:
    """The maximum of a map (also the maximum of its bilinear upsampling, which lies at a cell
    centre), in pixels of the image the map is drawn on."""
    rows, cols = grid_map.shape
    flat = int(torch.argmax(grid_map.flatten()))
    r, c = divmod(flat, cols)
    height, width = image_size
    return {"row": (r + 0.5) * height / rows, "col": (c + 0.5) * width / cols,
            "cell": [r, c], "value": float(grid_map[r, c])}


def map_result(side: str, grid_map: torch.Tensor, image_size: tuple[int, int]) -> dict:
    return {"side": side, "grid": list(grid_map.shape), "map": grid_list(grid_map),
            "argmax": peak(grid_map, image_size)}


def pair_map_result(pair: PairExplanation, side: str, where, region: bool = False) -> dict:
    """The point (or region) map of the default kind on the other image, labelled with its
    kind; where the point carries no contribution, an explicit "no map" result."""
    other = _other(side)
    there = _side_of(pair, other)
    info = {"kind": DEFAULT_POINT_MAP, "label": point_map_label(DEFAULT_POINT_MAP)}
    try:
        grid_map = pair.region_map(side, where) if region else pair.point_map(side, where)
    except NoPointMap as exc:
        return {"side": other, "grid": list(there.grid), "map": None, "argmax": None,
                "no_map": True, "message": str(exc), **info}
    return {**map_result(other, grid_map, there.image_size), "no_map": False, **info}


@dataclass
class Prepared:
    """One image as one stream of a model saw it, with its contributions."""

    image_id: str  # the image the client asked for
    shown_id: str  # the image the model saw (a face crop for face models)
    side: Side


@dataclass
class ExplanationRecord:
    id: str
    model: str
    a: Prepared
    b: Prepared
    pair: PairExplanation
    method_maps: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)


@dataclass
class SearchRecord:
    id: str
    model: str
    query: Prepared
    box: list[float] | None
    query_vector: torch.Tensor  # (D,) sum_p w_p u_p (w = 1 everywhere without a box)
    hit_ids: list[str]


class Engine:
    """Models, images and caches behind the web API."""

    def __init__(self, explainer=None, model: str | None = None, index=None,
                 samples: Sequence | None = None, models: Sequence[str] | None = None,
                 max_upload_bytes: int = MAX_UPLOAD_BYTES, max_pixels: int = MAX_PIXELS,
                 max_explanations: int = 64, max_searches: int = 32, max_sides: int = 256,
                 max_side_memory: int = 256 * 2**20, max_models: int = 3):
        from .. import zoo
        self.max_upload_bytes = max_upload_bytes
        self.max_pixels = max_pixels
        self._compute = threading.RLock()  # one model computation at a time
        self._load_lock = threading.Lock()
        self.explainers: LRU[Any] = LRU(max_models)
        self.pinned: dict[str, Any] = {}  # the default and the index's model stay loaded

        self.index = _load_index(index, explainer, model) if isinstance(index, (str, Path)) \
            else index
        index_model = _index_model(self.index) if self.index is not None else None
        if explainer is None and self.index is not None and \
                getattr(self.index, "explainer", None) is not None and \
                (model is None or model == index_model):
            explainer = self.index.explainer
        given = explainer is not None
        if explainer is not None:
            name = model or getattr(explainer, "model_name", None) or index_model or "custom"
        else:
            from ..cli import build_explainer
            name = model or index_model or "efficientnet-lite0"
            explainer = build_explainer(name)
        if index_model is not None and index_model != name:
            raise SimexplainError(f"the index was built with model {index_model!r}, but the "
                                  f"server's model is {name!r}")
        self.default_model = name
        self.pinned[name] = explainer
        self.index_model = name if self.index is not None else None
        if models is None:
            # a model object handed in is the only one offered; a named one comes with the zoo
            models = [name] if given else zoo.list()
        self.models = list(dict.fromkeys([name, *models]))

        gallery = list(getattr(self.index, "paths", [])) if self.index is not None else []
        self.images = ImageStore(gallery, default_samples() if samples is None else samples,
                                 max_pixels=max_pixels)
        self.sides: LRU[Prepared] = LRU(
            max_sides, max_side_memory,
            cost=lambda p: p.side.contributions.numel() * p.side.contributions.element_size())
        self.explanations: LRU[ExplanationRecord] = LRU(max_explanations)
        self.searches: LRU[SearchRecord] = LRU(max_searches)

    # -- models --------------------------------------------------------------------------------
    def explainer(self, name: str | None = None):
        name = name or self.default_model
        if name in self.pinned:
            return self.pinned[name]
        if name not in self.models:
            raise NotFound(f"unknown model {name!r}; this server offers: "
                           f"{', '.join(self.models)}")
        found = self.explainers.get(name)
        if found is not None:
            return found
        with self._load_lock:
            found = self.explainers.get(name)
            if found is None:
                from ..cli import build_explainer
                found = self.explainers.put(name, build_explainer(name))
        return found

    def model_infos(self) -> list[dict]:
        infos = []
        for name in self.models:
            info = {"name": name, "loaded": name in self.pinned or name in self.explainers,
                    "similarity": None, "description": None}
            loaded = self.pinned.get(name) or self.explainers.get(name)
            if loaded is not None:
                info["similarity"] = loaded.similarity
            if _is_zoo(name):
                from .. import zoo
                entry = zoo.entry(name)
                info["similarity"] = entry.similarity
                info["description"] = entry.description
            infos.append(info)
        return infos

    def index_info(self) -> dict | None:
        if self.index is None:
            return None
        explainer = self.pinned[self.index_model]
        return {"model": self.index_model, "size": len(self.images.gallery_paths),
                "similarity": explainer.similarity,
                "layer": explainer.stream_a.layer_name}

    # -- contributions -------------------------------------------------------------------------
    def _model_view(self, model: str, image_id: str) -> tuple[str, Image.Image]:
        """(id of what the model sees, that image): a face crop for face models."""
        from .. import zoo
        if _is_zoo(model) and zoo.crops_faces(model):
            tag = "face"
            derived_id = f"f-{tag}-{image_id}"[:42]
            try:
                return derived_id, self.images.pixels(derived_id)
            except NotFound:
                pass
            from ..faces import crop_face
            with self._compute:
                crop, _box = crop_face(self.images.pixels(image_id))
            return self.images.add_derived(image_id, tag, crop).id, crop
        return image_id, self.images.pixels(image_id)

    def prepared(self, model: str, image_ids: Sequence[str], which: str) -> list[Prepared]:
        """Contributions of images on one side, from the cache or computed in batches."""
        explainer = self.explainer(model)
        found: dict[str, Prepared] = {}
        missing: list[tuple[str, str, Image.Image]] = []
        for image_id in dict.fromkeys(image_ids):
            cached = self.sides.get((model, image_id, which))
            if cached is not None:
                found[image_id] = cached
                continue
            shown_id, picture = self._model_view(model, image_id)
            missing.append((image_id, shown_id, picture))
        if missing:
            with self._compute, warnings.catch_warnings():
                warnings.simplefilter("ignore")
                computed = list(explainer.sides([picture for _, _, picture in missing], which,
                                                batch_size=16))
            for (image_id, shown_id, _), side in zip(missing, computed):
                # kept in float64 once, so that pointer updates convert nothing
                side = Side(image=side.image, grid=side.grid,
                            contributions=side.contributions.detach().double().cpu().clone(),
                            embedding=side.embedding.detach().double().cpu().clone())
                found[image_id] = self.sides.put((model, image_id, which),
                                                 Prepared(image_id, shown_id, side))
        return [found[i] for i in image_ids]

    # -- pairs ---------------------------------------------------------------------------------
    def explain(self, a: str, b: str, method: str = "decomposition",
                model: str | None = None) -> dict:
        model = model or self.default_model
        if method not in METHODS:
            raise WebError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        explainer = self.explainer(model)
        self.images.record(a), self.images.record(b)  # 404 before any work
        key = hashlib.sha256(f"{model}\0{a}\0{b}".encode()).hexdigest()[:20]
        record = self.explanations.get(key)
        if record is None:
            side_a = self.prepared(model, [a], "a")[0]
            side_b = self.prepared(model, [b], "b")[0]
            pair = PairExplanation.from_sides(side_a.side, side_b.side, explainer.similarity)
            record = self.explanations.put(key, ExplanationRecord(key, model, side_a, side_b,
                                                                  pair))
        pair = record.pair
        if method == "decomposition":
            map_a, map_b = pair.overall_a, pair.overall_b
        elif method == "relative":
            map_a, map_b = pair.relative_a, pair.relative_b
        else:
            if method not in record.method_maps:
                with self._compute:
                    record.method_maps[method] = explainer.saliency(
                        record.a.side.image, record.b.side.image, method)
            map_a, map_b = record.method_maps[method]
        return {
            "explanation_id": record.id, "model": model, "method": method,
            "similarity": pair.similarity, "score": pair.score, "residual": pair.residual,
            "signed": method in ("decomposition", "relative"),
            "a": self._side_json(record.a, map_a), "b": self._side_json(record.b, map_b),
        }

    def _side_json(self, prepared: Prepared, grid_map: torch.Tensor) -> dict:
        return {"id": prepared.image_id, "shown_id": prepared.shown_id,
                "url": f"/api/images/{prepared.shown_id}",
                "grid": list(prepared.side.grid), "image_size": list(prepared.side.image_size),
                "overall": grid_list(torch.as_tensor(grid_map)),
                "overall_peak": peak(torch.as_tensor(grid_map).double(),
                                     prepared.side.image_size)}

    def record(self, explanation_id: str) -> ExplanationRecord:
        record = self.explanations.get(explanation_id)
        if record is None:
            raise NotFound(f"unknown explanation id {explanation_id!r} (explanations are kept "
                           "for a limited time: explain the pair again)")
        return record

    def point(self, explanation_id: str, side: str, row: float, col: float) -> dict:
        return pair_map_result(self.record(explanation_id).pair, side, (row, col))

    def region(self, explanation_id: str, side: str, box: Sequence[float]) -> dict:
        record = self.record(explanation_id)
        result = pair_map_result(record.pair, side, _box(box), region=True)
        result["partial_score"] = record.pair.partial_score(side, _box(box))
        return result

    # -- gallery search ------------------------------------------------------------------------
    def search(self, query: str, box: Sequence[float] | None = None, k: int = 12) -> dict:
        if self.index is None:
            raise WebError("this server has no index: start it with `simexplain serve "
                           "--index INDEX` for the gallery search")
        model = self.index_model
        explainer = self.explainer(model)
        query_prepared = self.prepared(model, [query], "a")[0]
        q = query_prepared.side
        if box is not None:
            weights = maps.region_weights(_box(box), q.grid, q.image_size).to(
                q.contributions.dtype)
        else:
            weights = torch.ones(q.contributions.shape[0], dtype=q.contributions.dtype)
        vector = weights @ q.contributions
        k = max(1, min(int(k), len(self.images.gallery_paths)))
        hits = self._index_search(q, vector, box, k)
        hit_ids = [f"g{index}" for index, _ in hits]
        results = self.prepared(model, hit_ids, "b") if hit_ids else []
        out_hits = []
        for rank, ((index, score), prepared) in enumerate(zip(hits, results), start=1):
            grid_map = self._result_map(vector, q.embedding, prepared.side, explainer.similarity)
            out_hits.append({
                "rank": rank, "id": prepared.image_id, "index": index,
                "name": self.images.gallery_paths[index].name, "score": score,
                "url": f"/api/images/{prepared.shown_id}",
                **{k_: v for k_, v in map_result("b", grid_map, prepared.side.image_size).items()
                   if k_ != "side"},
                "image_size": list(prepared.side.image_size)})
        search_id = secrets.token_hex(8)
        self.searches.put(search_id, SearchRecord(search_id, model, query_prepared,
                                                  list(box) if box is not None else None,
                                                  vector, hit_ids))
        return {"search_id": search_id, "model": model, "similarity": explainer.similarity,
                "query": {"id": query, "shown_id": query_prepared.shown_id,
                          "url": f"/api/images/{query_prepared.shown_id}",
                          "grid": list(q.grid), "image_size": list(q.image_size)},
                "box": list(box) if box is not None else None, "hits": out_hits}

    def _index_search(self, q: Side, vector: torch.Tensor, box, k: int
                      ) -> list[tuple[int, float]]:
        """(gallery index, score) of the k best matches to the query, or to its region (then
        ranked by the partial similarity s_R)."""
        if box is None:
            hits = self.index.search_vector(q.embedding.double(), k)
        else:
            hits = self.index.search_vector(vector.double(), k, q.embedding.double())
        return [(int(h.index), float(h.score)) for h in hits]

    @staticmethod
    def _result_map(query_vector: torch.Tensor, query_embedding: torch.Tensor, result: Side,
                    similarity: str) -> torch.Tensor:
        """Map over a result's grid of a weighted query: sum_p w_p D[p, :]."""
        row = decomposition.pairwise(query_vector[None].double(), result.contributions,
                                     query_embedding.double(), result.embedding, similarity)[0]
        return row.reshape(result.grid)

    def search_record(self, search_id: str) -> SearchRecord:
        record = self.searches.get(search_id)
        if record is None:
            raise NotFound(f"unknown search id {search_id!r} (searches are kept for a limited "
                           "time: search again)")
        return record

    def search_point(self, search_id: str, results: Sequence[str], row: float,
                     col: float) -> list[dict]:
        """Point-specific maps of a query pixel on each of the given (visible) results."""
        record = self.search_record(search_id)
        for image_id in results:
            record_ = self.images.record(image_id)
            if record_.source != "gallery":
                raise WebError(f"{image_id!r} is not a gallery image")
        q = record.query.side
        similarity = self.explainer(record.model).similarity
        out = []
        for prepared in self.prepared(record.model, list(results), "b"):
            pair = PairExplanation.from_sides(q, prepared.side, similarity)
            result = pair_map_result(pair, "a", (row, col))
            result["id"] = prepared.image_id
            out.append(result)
        return out


def _other(side: str) -> str:
    if side not in ("a", "b"):
        raise WebError(f"side must be 'a' or 'b', got {side!r}")
    return "b" if side == "a" else "a"


def _side_of(pair: PairExplanation, side: str) -> Side:
    return pair.a if side == "a" else pair.b


def _box(box: Sequence[float]) -> tuple[float, float, float, float]:
    values = tuple(float(v) for v in box)
    if len(values) != 4 or not all(np.isfinite(values)):
        raise WebError("a box is [top, left, bottom, right] in pixels (4 finite numbers)")
    top, left, bottom, right = values
    if bottom <= top or right <= left:
        raise WebError(f"the box {list(values)} is empty (bottom must exceed top and right "
                       "exceed left)")
    return values


def _is_zoo(name: str) -> bool:
    from .. import zoo
    try:
        return name in zoo.list()
    except Exception:  # noqa: BLE001 - a broken zoo entry must not break the server
        return False


def _index_model(index) -> str | None:
    name = getattr(index, "model_name", None)
    if name is None and isinstance(getattr(index, "info", None), dict):
        name = index.info.get("model")
    return name


def _load_index(path, explainer, model):
    """Open an index folder with its query model: the explainer given, else `model`, else the
    model its manifest names (checked against the index either way)."""
    try:
        from ..retrieval import Index, explainer_for_index
    except ImportError as exc:
        raise SimexplainError(f"the gallery search needs simexplain.retrieval ({exc})") from None
    if explainer is None:
        if model is not None:
            from ..cli import build_explainer
            explainer = build_explainer(model)
        else:
            explainer = explainer_for_index(path)
    return Index.load(path, explainer=explainer)


__all__ = ["Engine", "ImageStore", "WebError", "NotFound", "TooLarge", "METHODS",
           "decode_upload", "status_of"]
