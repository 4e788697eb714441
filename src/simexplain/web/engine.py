"""What the web API does, without the web: models, cached contributions, maps, search.

The HTTP layer (`simexplain.web.api`) validates requests and shapes these results and errors
as JSON; images by id live in `simexplain.web.store`. Everything here is plain Python and
torch, so it can be tested and timed on its own.

Speed: an explanation or a search computes the per-position contributions u_p of every image
involved once and keeps them (bounded LRU caches). A pointer update is then one small
product: point weights (P,) @ D (P, Q) for a pair, or ((w @ U_a) @ U_b^T) * scale for each
visible search result. Gallery images of an index built with `--explain` take their
contributions from the index's cache instead of the model (`Index.cached_side`).
"""

from __future__ import annotations


import hashlib
import secrets
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload
from collections.abc import Sequence

import torch
from PIL import Image

from .. import regions
from ..errors import NoPointMap, NotApplicable, SimexplainError
from ..explanation import DEFAULT_POINT_MAP, PairExplanation, Side
from ..images import MAX_PIXELS, quiet_warnings
from ..live_maps import GridMap, check_box, point_answer, region_answer
from ..methods import (Decomposition, PreparedPair, explanation_methods, get_method,
                       method_class)
from ..zoo import resolve
from .cache import LRU
from .errors import Busy, ImageFailed, NotFound, WebError
from .limits import MAX_INPUT_SIDE, MAX_UPLOAD_BYTES, MIN_INPUT_SIDE
from .store import (STORED_SIDE, UPLOAD_MEMORY, ImageStore, PixelBudget,
                    default_samples)

if TYPE_CHECKING:
    from ..explainer import Explainer
    from ..retrieval.index import Index

# the methods the page offers: every registered one but the random baseline
SHOWN_METHODS = tuple(explanation_methods())  # the registry's, without controls (random)
# two maps are "identical" when they differ by less than this fraction of their peak
SAME_MAP_TOLERANCE = 1e-3


@dataclass
class Prepared:
    """One image as one stream of a model saw it, with its contributions."""

    image_id: str  # the image the client asked for
    shown_id: str  # the image shown: the photo itself (side.frame says what the model saw)
    side: Side


@dataclass
class ExplanationRecord:
    id: str
    model: str
    size: int | None  # the model's input size (short side) asked for; None: its own
    a: Prepared
    b: Prepared
    pair: PairExplanation
    method_maps: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    # both images as the other methods' input, prepared once (face crops, gradients shared)
    inputs: PreparedPair | None = None


@dataclass
class Explained:
    """A pair's decomposition and the overall maps of one method."""

    record: ExplanationRecord
    method: str
    map_a: torch.Tensor
    map_b: torch.Tensor


@dataclass
class SearchRecord:
    id: str
    model: str
    query: Prepared
    box: list[float] | None
    hit_ids: list[str]


@dataclass
class SearchHit:
    rank: int
    index: int  # position in the index
    name: str
    score: float  # similarity, or the partial similarity s_R with a box
    result: Prepared
    map: GridMap  # overall map (region map with a box) on this result
    stale: str | None = None  # the file changed since indexing (it is shown as it is now)


@dataclass
class SearchResult:
    record: SearchRecord
    similarity: str
    hits: list[SearchHit]
    # hits whose file is missing or refused (not a regular file inside the gallery): ranked
    # by the index, but not shown
    unavailable: list[dict] = field(default_factory=list)


class Engine:
    """Models, images and caches behind the web API."""

    def __init__(self, explainer: Explainer | None = None, model: str | None = None,
                 index: Index | str | Path | None = None,
                 samples: Sequence | None = None, models: Sequence[str] | None = None,
                 max_upload_bytes: int = MAX_UPLOAD_BYTES, max_pixels: int = MAX_PIXELS,
                 max_explanations: int = 64, max_searches: int = 32, max_sides: int = 256,
                 max_side_memory: int = 256 * 2**20, max_models: int = 3,
                 upload_side: int = STORED_SIDE, max_upload_memory: int = UPLOAD_MEMORY,
                 decode_budget: PixelBudget | None = None,
                 max_input_side: int = MAX_INPUT_SIDE):
        from .. import zoo
        self.max_upload_bytes = max_upload_bytes
        self.max_input_side = max_input_side
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
            name = model or index_model or "efficientnet-lite0"
            explainer = resolve(name)
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

        gallery = getattr(self.index, "paths", []) if self.index is not None else []
        self.images = ImageStore(gallery, default_samples() if samples is None else samples,
                                 max_upload_memory=max_upload_memory, max_pixels=max_pixels,
                                 stored_side=upload_side, budget=decode_budget,
                                 gallery_root=getattr(self.index, "root", None),
                                 gallery_hashes=getattr(self.index, "hashes", ()))
        self.sides: LRU[Prepared] = LRU(
            max_sides, max_side_memory,
            cost=lambda p: p.side.contributions.numel() * p.side.contributions.element_size())
        self.explanations: LRU[ExplanationRecord] = LRU(max_explanations)
        self.searches: LRU[SearchRecord] = LRU(max_searches)
        self.sample_pairs = self._sample_pairs()

    def _sample_pairs(self) -> dict[str, tuple[str, str]]:
        """Each zoo model's own sample pair (faces for face models, ...) as two sample ids:
        the pair the page opens on when that model is picked."""
        from .. import zoo
        pairs = {}
        for name in self.models:
            if not _is_zoo(name):
                continue
            try:
                paths = zoo.entry(name).sample_pair()
            except (SimexplainError, OSError):  # data not fetched (or not writable) here:
                continue  # the page opens that model on the current pair
            first, second = (self.images.add_sample_file(p).id for p in paths)
            pairs[name] = (first, second)
        return pairs

    # -- models --------------------------------------------------------------------------------
    def explainer(self, name: str | None = None, size: int | None = None) -> Explainer:
        """The model `name` (default: the server's), at input size `size` (the short side in
        pixels, as `--size`; None: the model's own)."""
        name = name or self.default_model
        if size is not None:
            return self._resized(name, size)
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
                found = self.explainers.put(name, resolve(name))
        return found

    def _resized(self, name: str, size: int):
        if not isinstance(size, int) or not MIN_INPUT_SIDE <= size <= self.max_input_side:
            raise WebError(f"input size {size!r} px is outside what this server computes "
                           f"({MIN_INPUT_SIDE} to {self.max_input_side} px on the short side)")
        base = self.explainer(name)
        if size == self.input_side(name):
            return base
        key = f"{name}\0{size}"
        found = self.explainers.get(key)
        if found is None:
            with self._load_lock:
                found = self.explainers.get(key) or self.explainers.put(key,
                                                                        base.resized(size))
        return found

    def input_side(self, name: str) -> int | None:
        """The model's own input size: the short side in pixels (None: not a Preprocess)."""
        from ..images import Preprocess
        loaded = self.pinned.get(name) or self.explainers.get(name)
        if loaded is not None:
            transform = loaded.transform_a
        elif _is_zoo(name):
            from .. import zoo
            transform = zoo.entry(name).preprocess
        else:
            return None
        return int(min(transform.size)) if isinstance(transform, Preprocess) else None

    def model_infos(self) -> list[dict]:
        """name, loaded, similarity, description, input size and sample pair of each model
        offered."""
        infos = []
        for name in self.models:
            info = {"name": name, "loaded": name in self.pinned or name in self.explainers,
                    "similarity": None, "description": None, "input_size": self.input_side(name),
                    "sample_pair": list(self.sample_pairs.get(name, ())) or None}
            loaded = self.pinned.get(name) or self.explainers.get(name)
            if loaded is not None:
                info["similarity"] = loaded.similarity.name
            if _is_zoo(name):
                from .. import zoo
                entry = zoo.entry(name)
                info["similarity"] = entry.similarity
                info["description"] = entry.description
            infos.append(info)
        return infos

    def index_info(self) -> dict | None:
        """model, size, similarity and layer of the gallery index (None without one)."""
        if self.index is None:
            return None
        assert self.index_model is not None  # set with the index
        explainer = self.pinned[self.index_model]
        return {"model": self.index_model, "size": len(self.images.gallery_paths),
                "similarity": explainer.similarity.name,
                "layer": explainer.stream_a.layer_name}

    # -- contributions -------------------------------------------------------------------------
    def prepared(self, model: str, image_ids: Sequence[str], which: str,
                 size: int | None = None) -> list[Prepared]:
        """Contributions of images on one side, from the cache or computed in batches."""
        explainer = self.explainer(model, size)
        found: dict[str, Prepared] = {}
        missing: list[tuple[str, Image.Image]] = []
        for image_id in dict.fromkeys(image_ids):
            cached = self.sides.get((model, size, image_id, which))
            if cached is not None:
                found[image_id] = cached
                continue
            picture = self.images.pixels(image_id)
            side = self._cached_side(explainer, model, size, image_id, which, picture)
            if side is not None:
                found[image_id] = self._keep(model, size, image_id, which, side)
            else:
                missing.append((image_id, picture))
        if missing:
            # the explainer's input pipeline crops faces for face models, as everywhere else
            # quiet_warnings: the warning filters are process-wide, shared with the uploads'
            # decoding threads (a per-call catch_warnings would undo theirs)
            with self._compute, quiet_warnings():
                computed = list(explainer.sides([picture for _, picture in missing], which,
                                                batch_size=16))
            for (image_id, _), side in zip(missing, computed):
                found[image_id] = self._keep(model, size, image_id, which, side)
        return [found[i] for i in image_ids]

    def _keep(self, model: str, size: int | None, image_id: str, which: str,
              side: Side) -> Prepared:
        # kept in float64 once, so that pointer updates convert nothing
        side = replace(side, contributions=_float64(side.contributions),
                       embedding=_float64(side.embedding), projected=_float64(side.projected),
                       tokens=_float64(side.tokens))
        return self.sides.put((model, size, image_id, which), Prepared(image_id, image_id, side))

    def _cached_side(self, explainer: Explainer, model: str, size: int | None, image_id: str,
                     which: str, picture: Image.Image) -> Side | None:
        """A gallery image's side b from the index's explain cache (no model forward): only
        for the index's own model at its own input size (`Index.cached_side`, which also
        refuses a file changed since indexing)."""
        index = self.index
        if (index is None or getattr(index, "explain_cache", None) is None or which != "b"
                or size is not None or model != self.index_model
                or getattr(index, "explainer", None) is not explainer
                or self.images.record(image_id).source != "gallery"):
            return None
        with self._compute:
            return index.cached_side(int(image_id[1:]), picture)

    def _prepare_one(self, model: str, image_id: str, which: str,
                     side_name: str | None = None, size: int | None = None) -> Prepared:
        """One image's contributions; an image the model cannot take (no face found, ...)
        raises ImageFailed naming it."""
        try:
            return self.prepared(model, [image_id], which, size)[0]
        except (NotFound, Busy):
            raise
        except SimexplainError as exc:
            raise ImageFailed(side_name or which, image_id, self.images.record(image_id).name,
                              str(exc)) from None

    # -- pairs ---------------------------------------------------------------------------------
    def explain(self, a: str, b: str, method: str = "decomposition",
                model: str | None = None, size: int | None = None) -> Explained:
        """The pair's decomposition (cached) and `method`'s overall maps; `size`: the model's
        input size in pixels (short side; None: the model's own)."""
        model = model or self.default_model
        if method not in SHOWN_METHODS:
            raise WebError(f"unknown method {method!r}; choose one of {', '.join(SHOWN_METHODS)}")
        self.explainer(model)  # 404 for an unknown model before the size is looked at
        if size is not None and size == self.input_side(model):
            size = None  # the model's own size: one cache entry, not two
        explainer = self.explainer(model, size)
        self.images.record(a), self.images.record(b)  # 404 before any work
        key = hashlib.sha256(f"{model}\0{size}\0{a}\0{b}".encode()).hexdigest()[:20]
        record = self.explanations.get(key)
        if record is None:
            side_a = self._prepare_one(model, a, "a", size=size)
            side_b = self._prepare_one(model, b, "b", size=size)
            pair = PairExplanation.from_sides(side_a.side, side_b.side, explainer.similarity)
            record = self.explanations.put(key, ExplanationRecord(key, model, size, side_a,
                                                                  side_b, pair))
        map_a, map_b = self._method_maps(record, method)
        return Explained(record, method, torch.as_tensor(map_a), torch.as_tensor(map_b))

    def _method_maps(self, record: ExplanationRecord, method: str):
        """Overall maps of `method` for a cached pair (computed once per pair and method)."""
        decomposed = method_class(method)
        if issubclass(decomposed, Decomposition):  # its maps come from the cached pair
            return decomposed().pick(record.pair)
        if method not in record.method_maps:
            explainer = self.explainer(record.model, record.size)
            with self._compute:
                if record.inputs is None:
                    record.inputs = PreparedPair.of(explainer, record.a.side.image,
                                                    record.b.side.image)
                record.method_maps[method] = get_method(method).attribute(explainer,
                                                                          record.inputs)
        return record.method_maps[method]

    def identical(self, explanation_id: str) -> tuple[dict[str, list[dict]], list[str]]:
        """Which methods give the same maps on this pair, decided by computing them: for each
        method, the others whose maps equal its own ("identical") or whose positive part it
        is ("positive part", a ReLU'd map against a signed one), e.g. Grad-CAM and RGrad-CAM
        under a global-average-pooling head. Methods with a forward pass per feature cell
        (occlusion) are compared only once computed, methods that cannot explain the model
        (attention methods on a CNN) not at all; returns (relations, methods compared)."""
        record = self.record(explanation_id)
        found = {}
        for m in SHOWN_METHODS:
            if method_class(m).per_cell_cost and m not in record.method_maps:
                continue
            try:
                found[m] = [torch.as_tensor(v).double() for v in self._method_maps(record, m)]
            except NotApplicable:  # e.g. attention rollout on a CNN: not compared
                continue
        compared = list(found)
        relations: dict[str, list[dict]] = {m: [] for m in compared}
        for m in compared:
            for other in compared:
                if other == m:
                    continue
                if _same_maps(found[m], found[other]):
                    relations[m].append({"method": other, "relation": "identical"})
                elif (not method_class(m).signed and method_class(other).signed and
                      _same_maps(found[m], [torch.relu(v) for v in found[other]])):
                    relations[m].append({"method": other, "relation": "positive part"})
        return relations, compared

    def record(self, explanation_id: str) -> ExplanationRecord:
        record = self.explanations.get(explanation_id)
        if record is None:
            raise NotFound(f"unknown explanation id {explanation_id!r} (explanations are kept "
                           "for a limited time: explain the pair again)")
        return record

    def point(self, explanation_id: str, side: str, row: float, col: float) -> dict:
        """The point-specific map of pixel (row, col) of `side`, on the other image, as the
        page draws it (`live_maps.point_answer`)."""
        return point_answer(self.record(explanation_id).pair, side, (row, col))

    def region(self, explanation_id: str, side: str, box: Sequence[float]) -> dict:
        """The region map of a box on `side` (on the other image) and its partial score s_R
        (`live_maps.region_answer`)."""
        return region_answer(self.record(explanation_id).pair, side, box)

    # -- gallery search ------------------------------------------------------------------------
    def patterns(self, explanation_id: str, k: int) -> list:
        """Cross-view patterns of a cached pair (`PairExplanation.patterns`, default kind),
        points in the photos' pixels."""
        return self.record(explanation_id).pair.patterns(k)

    def search(self, query: str, box: Sequence[float] | None = None,
               k: int = 12) -> SearchResult:
        if self.index is None:
            raise WebError("this server has no index: start it with `simexplain serve "
                           "--index INDEX` for the gallery search")
        from ..retrieval.index import RegionQuery
        model = self.index_model
        assert model is not None  # set with the index
        explainer = self.explainer(model)
        query_prepared = self._prepare_one(model, query, "a", "query")
        q = query_prepared.side
        prepared = RegionQuery.from_side(q, check_box(box) if box is not None else None)
        k = max(1, min(int(k), len(self.images.gallery_paths)))
        found = self.index.search(prepared, k, check_files=False)
        self.index.mark_stale(found, warn=False)  # each hit's file now: in the answer instead
        shown = [hit for hit in found if hit.stale is None or hit.stale.startswith("changed")]
        unavailable = [{"rank": hit.rank, "index": hit.index, "stale": hit.stale,
                        "name": self.images.gallery_paths[hit.index].name}
                       for hit in found if hit not in shown]
        hit_ids = [f"g{hit.index}" for hit in shown]
        results = self.prepared(model, hit_ids, "b") if hit_ids else []
        hits = []
        for hit, result in zip(shown, results):
            grid_map = prepared.map_on(result.side, explainer.similarity)
            hits.append(SearchHit(hit.rank, hit.index, self.images.gallery_paths[hit.index].name,
                                  hit.score, result,
                                  GridMap("b", grid_map, result.side.frame),
                                  hit.stale or self.images.stale(f"g{hit.index}")))
        search_id = secrets.token_hex(8)
        record = self.searches.put(search_id, SearchRecord(
            search_id, model, query_prepared, list(box) if box is not None else None, hit_ids))
        return SearchResult(record, explainer.similarity.name, hits, unavailable)

    def search_record(self, search_id: str) -> SearchRecord:
        record = self.searches.get(search_id)
        if record is None:
            raise NotFound(f"unknown search id {search_id!r} (searches are kept for a limited "
                           "time: search again)")
        return record

    def search_point(self, search_id: str, results: Sequence[str], row: float,
                     col: float) -> list[tuple[str, GridMap]]:
        """Point-specific maps of a query pixel on each of the given (visible) results."""
        record = self.search_record(search_id)
        for image_id in results:
            if self.images.record(image_id).source != "gallery":
                raise WebError(f"{image_id!r} is not a gallery image")
        q = record.query.side
        weights = q.point_weights((row, col))
        similarity = self.explainer(record.model).similarity
        out = []
        for prepared in self.prepared(record.model, list(results), "b"):
            try:  # one small product per result: no P x Q map on a pointer move
                grid_map = GridMap("b", regions.kind_map(
                    similarity, weights, q, prepared.side, DEFAULT_POINT_MAP,
                    what=f"point {(row, col)} of the query"), prepared.side.frame,
                    DEFAULT_POINT_MAP)
            except NoPointMap as exc:
                grid_map = GridMap("b", None, prepared.side.frame, DEFAULT_POINT_MAP,
                                   no_map=str(exc))
            out.append((prepared.image_id, grid_map))
        return out


def _same_maps(maps: Sequence[torch.Tensor], others: Sequence[torch.Tensor]) -> bool:
    """Both sides' maps equal within SAME_MAP_TOLERANCE of their peak (and not all zero)."""
    for x, y in zip(maps, others):
        if x.shape != y.shape:
            return False
        peak = float(torch.maximum(x.abs().max(), y.abs().max()))
        if peak == 0 or float((x - y).abs().max()) > SAME_MAP_TOLERANCE * peak:
            return False
    return True


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


def _load_index(path, explainer: Explainer | None, model, **load: Any):
    """Open an index folder with its query model: the explainer given, else `model`, else the
    zoo model its manifest names (checked against the index either way; a model file or
    factory the manifest names is never loaded: `explainer_for_index`). `load`: the other
    arguments of `Index.load` (engine, ray)."""
    try:
        from ..retrieval.commands import explainer_for_index
        from ..retrieval.index import Index
    except ImportError as exc:
        raise SimexplainError(f"the gallery search needs simexplain.retrieval ({exc})") from None
    if explainer is None:
        explainer = resolve(model) if model is not None else explainer_for_index(path)
    return Index.load(path, explainer=explainer, **load)


__all__ = ["Engine", "GridMap", "Explained", "SearchResult", "SearchHit", "SHOWN_METHODS"]


@overload
def _float64(tensor: torch.Tensor) -> torch.Tensor: ...
@overload
def _float64(tensor: None) -> None: ...
def _float64(tensor: torch.Tensor | None) -> torch.Tensor | None:
    return None if tensor is None else tensor.detach().double().cpu().clone()
