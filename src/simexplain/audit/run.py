"""`audit`: explain queries against their top-k hits in an index (or given pairs) and gather
where the similarity comes from (`Audit`), a batch of queries at a time."""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from ..errors import ImageError, SimexplainError
from ..files import image_files
from . import regions as regionlib
from .findings import check_options
from .given import check_pairs
from .result import Audit, PairRecord, check_method

if TYPE_CHECKING:
    from ..explanation import PairExplanation, Side
    from ..methods import Method
    from ..retrieval.index import Index

DEFAULT_SAMPLE = 100


def audit(index: Index | str | Path, queries: Sequence[str | Path] | str | Path | None = None,
          k: int = 5, regions: Mapping[str, Sequence[float]] | None = None,
          sample: int = DEFAULT_SAMPLE, seed: int = 0, batch_size: int = 32,
          progress: bool = True, grid: tuple[int, int] | None = None, patterns: int = 3,
          pairs: Sequence[tuple[str | Path, str | Path]] | None = None,
          method: str = "decomposition", **finding_options: float) -> Audit:
    """Audit where similarity comes from over an index's searches.

    index: an `Index` with its query model attached (any kind, sharded, Ray-built or
        explain-ready), or the folder of one (its model is loaded from the manifest).
    queries: image paths or a folder of images; None: `sample` gallery images drawn with `seed`
        (their own row is left out of their hits).
    k: hits per query (a hit that is the query's own file is left out).
    regions: name -> (top, left, bottom, right) in relative coordinates [0, 1] of the model input.
    grid: the audit's common grid (default: the first query's feature grid); maps of other grids
        are resampled onto it exactly (`maps.resample`).
    patterns: cross-view patterns counted per pair (0: none).
    pairs: (query image, hit image) pairs to audit instead of searching (no `queries`; `k`
        and `sample` unused): exactly these pairs, query = side a. Images of the gallery (the
        same absolute path) are explained from the explain cache when the index has one.
    method: where each pair's per-side maps come from: "decomposition" (the exact overall
        maps) or "occlusion" (`methods.Occlusion`: the drop of the pair's closeness when each
        feature cell's pixels are erased; one forward per cell and side, batched by
        `batch_size`; shares are then shares of the summed drops, see `result`).
    finding_options: `max_area`, `min_share`, `min_ratio`, `min_pairs`, `max_findings` of
        `simexplain.audit.findings.find`.

    Hits are explained from the index's explain cache when it has one (no model forward for
    them), else a batch at a time. The audit streams: memory is bounded by the batch, plus a
    few scalars per pair (docs/audit.md, "Memory"), never by the gallery.
    """
    started = time.perf_counter()
    index = _open(index)
    index._require_explainer()  # before any work: an index without its model is refused
    if k < 1:
        raise SimexplainError(f"k must be >= 1, got {k}")
    if batch_size < 1:
        raise SimexplainError(f"batch_size must be >= 1, got {batch_size}")
    if seed < 0:
        raise SimexplainError(f"seed must be >= 0, got {seed}")
    check_options(finding_options)
    occlusion = _occlusion(check_method(method), batch_size)
    checked = regionlib.check_regions(regions)

    def start(side: Side) -> Audit:  # the first side gives the grid
        return Audit(k=0 if pairs is not None else k, regions=checked, grid=grid or side.grid,
                     similarity=index.similarity.name,
                     lower_is_better=index.similarity.lower_is_better, model=index.model_name,
                     index=_where(index), given=pairs is not None,
                     finding_options=dict(finding_options), method=method)

    run = _Run(index, start, batch_size, patterns, progress, occlusion)
    if pairs is not None:
        if queries is not None:
            raise SimexplainError("give queries or pairs, not both")
        result = run.pairs(check_pairs(pairs))
    else:
        result = run.queries(_queries(index, queries, sample, seed), k)
    result.stale = run.stale
    result.seconds = time.perf_counter() - started
    result.explain_pair = run.explain_again
    return result.finish()


@dataclass
class _Run:
    """One audit run: the index, how each pair is taken (batch size, patterns, the occlusion
    method or None for the decomposition), and what it gathers: the result, started by
    `start` on the first side read (it gives the grid), and the gallery files left out
    (`stale`: path -> why; changed files are used as they are now)."""

    index: Index
    start: Callable[[Side], Audit]
    batch_size: int
    patterns: int
    progress: bool
    occlusion: Method | None
    stale: dict[str, str] = field(default_factory=dict)
    result: Audit | None = None

    def queries(self, chosen: list[tuple[str, int | None]], k: int) -> Audit:
        """Each query searched, its top k hits explained and added."""
        bar = tqdm(total=len(chosen), desc="auditing", unit="query", disable=not self.progress)
        for begin in range(0, len(chosen), self.batch_size):
            batch = chosen[begin:begin + self.batch_size]
            for (name, row), side in zip(batch, self.sides(batch, "a", "queries")):
                if side is not None:
                    if self.result is None:
                        self.result = self.start(side)
                    self._query(self.result, name, row, side, k)
                bar.update(1)
        bar.close()
        if self.result is None:
            raise SimexplainError(
                "no query could be read: every query's gallery file is missing or refused ("
                + "; ".join(f"{p}: {why}" for p, why in list(self.stale.items())[:3]) + ")")
        return self.result

    def pairs(self, pairs: list[tuple[str, str]]) -> Audit:
        """Exactly the given pairs, a batch at a time: no search, rank 0."""
        from ..explanation import PairExplanation
        similarity = self.index._require_explainer().similarity
        rows = _gallery_rows(self.index, {path for pair in pairs for path in pair})
        bar = tqdm(total=len(pairs), desc="auditing", unit="pair", disable=not self.progress)
        for begin in range(0, len(pairs), self.batch_size):
            batch = pairs[begin:begin + self.batch_size]
            queries = self.sides([(a, rows.get(a)) for a, _ in batch], "a", "pairs")
            hits = self.sides([(b, rows.get(b)) for _, b in batch], "b", "pairs")
            for (a, b), side_a, side_b in zip(batch, queries, hits):
                bar.update(1)
                if side_a is None or side_b is None:
                    continue  # a gallery file missing or refused now: in `stale`
                pair = PairExplanation.from_sides(side_a, side_b, similarity)
                if self.result is None:
                    self.result = self.start(side_a)
                self._add(self.result, pair, PairRecord(
                    query=a, hit=b, hit_row=rows.get(b, -1), rank=0, score=pair.score,
                    query_row=rows.get(a, -1)))
        bar.close()
        if self.result is None:
            raise SimexplainError("no pair could be read: a gallery file of every pair is "
                                  "missing or refused")
        self.result.queries = len({a for a, _ in pairs})
        return self.result

    def sides(self, items: list[tuple[str, int | None]], letter: str, what: str
              ) -> list[Side | None]:
        """The decomposed side `letter` of each (path, gallery row or None): from the explain
        cache for gallery rows (side a: of a one-stream model only), else computed. A gallery
        file is read through the index (checked as it is opened: inside the gallery, a regular
        file); one missing or refused now gives None and is recorded in `stale`."""
        from ..retrieval.index import StaleHit
        explainer = self.index._require_explainer()
        cache_applies = letter == "b" or explainer.stream_a is explainer.stream_b
        sides: dict[int, Side | None] = {}
        inputs: dict[int, object] = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", StaleHit)  # a changed file is used as it is now
            for i, (path, row) in enumerate(items):
                if row is None:
                    inputs[i] = path
                    continue
                # from the cache: the file read once, checked as indexed (the usual case)
                cached = self.index.cached_side(row) if cache_applies else None
                if cached is not None:
                    sides[i] = cached
                    continue
                try:
                    inputs[i] = self.index.gallery_image(row)
                except SimexplainError as exc:
                    self.stale[path] = str(exc)
                    sides[i] = None
        try:
            if inputs:
                computed = explainer.sides(list(inputs.values()), letter, self.batch_size)
                sides.update(zip(inputs, computed))
        except ImageError as exc:
            raise SimexplainError(f"cannot explain the {what}: {exc}") from None
        return [sides[i] for i in range(len(items))]

    def _query(self, result: Audit, name: str, row: int | None, side: Side, k: int) -> None:
        """Search the query, drop its own file from the hits, explain the rest, add each
        pair."""
        from ..retrieval.index import RegionQuery, StaleHit
        index = self.index
        prepared = RegionQuery.from_side(side)
        hits = index.search_vector(prepared.vector, min(k + 1, len(index)))
        own = _same_file(name)
        hits[:] = [h for h in hits if h.index != row and not own(h.path)][:k]
        if not hits:
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", StaleHit)  # gathered in `stale`, said at the end
            index.explain_hits(prepared, hits, batch_size=self.batch_size)
        result.queries += 1
        for rank, hit in enumerate(hits, start=1):
            if hit.explanation is None:  # missing or refused now (explain_hits marked it)
                self.stale[hit.path] = hit.stale or "not readable"
                continue
            self._add(result, hit.explanation, PairRecord(
                query=name, hit=hit.path, hit_row=hit.index, rank=rank,
                score=hit.explanation.score, query_row=-1 if row is None else row))

    def _add(self, result: Audit, pair: PairExplanation, record: PairRecord) -> None:
        """One pair into the result, with its occlusion maps when the audit takes them."""
        side_maps = None
        if self.occlusion is not None:
            from ..methods import PreparedPair
            explainer = self.index._require_explainer()
            try:
                side_maps = self.occlusion.attribute(explainer, PreparedPair.of(
                    explainer, self._input(record.query, record.query_row),
                    self._input(record.hit, record.hit_row)))
            except ImageError as exc:
                raise SimexplainError(f"cannot occlude the pair: {exc}") from None
        result.add(pair, record, patterns=self.patterns, side_maps=side_maps)

    def _input(self, path: str, row: int):
        """An image to prepare: a gallery row read through the index (checked; a changed file
        is used as it is now, a missing or refused one raises), else the path."""
        if row < 0:
            return path
        from ..retrieval.index import StaleHit
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", StaleHit)
            return self.index.gallery_image(row)

    def explain_again(self, record: PairRecord) -> PairExplanation | None:
        """The PairExplanation of an audited pair again (for the report's figures), its gallery
        files read through the index again; None when one is missing or refused now."""
        from ..retrieval.index import Hit, RegionQuery
        explainer = self.index._require_explainer()
        try:
            query = self._input(record.query, record.query_row)
            if record.hit_row < 0:  # a given hit outside the gallery
                return explainer.explain(query, record.hit)
        except SimexplainError:
            return None
        prepared = RegionQuery.from_side(explainer.side(query, "a"))
        hit = Hit(rank=record.rank, index=record.hit_row, path=record.hit,
                  score=record.score, full_score=record.score)
        self.index.explain_hits(prepared, [hit])
        return hit.explanation




def _gallery_rows(index: Index, paths: set[str]) -> dict[str, int]:
    """Given path -> its gallery row, for those of the gallery (the same absolute path, compared
    without touching the disk)."""
    wanted: dict[str, list[str]] = {}
    for path in paths:
        wanted.setdefault(os.path.abspath(path), []).append(path)
    found: dict[str, int] = {}
    for row, stored in enumerate(index.paths):
        for path in wanted.get(os.path.abspath(stored), ()):
            found.setdefault(path, row)
    return found


def _open(index: Index | str | Path) -> Index:
    if isinstance(index, (str, Path)):
        from ..retrieval.commands import explainer_for_index
        from ..retrieval.index import Index
        folder = Path(index)
        if not folder.is_dir():
            raise SimexplainError(f"index folder {folder} does not exist")
        return Index.load(folder, explainer=explainer_for_index(folder))
    return index


def _where(index: Index) -> str | None:
    source = index.info.get("source")
    return None if source is None else str(source)


def _queries(index: Index, queries: Sequence[str | Path] | str | Path | None, sample: int,
             seed: int) -> list[tuple[str, int | None]]:
    """(path, gallery row or None) of every query, in order."""
    if queries is None:
        if sample < 1:
            raise SimexplainError(f"sample must be >= 1, got {sample}")
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(len(index), size=min(sample, len(index)), replace=False))
        return [(index.paths[int(r)], int(r)) for r in rows]
    if isinstance(queries, (str, Path)):
        folder = Path(queries)
        if not folder.is_dir():
            raise SimexplainError(f"queries: {folder} is not a folder (give a folder or a list "
                                  "of image files)")
        found = [str(p) for p in image_files(folder)]
        if not found:
            raise SimexplainError(f"query folder {folder} holds no images")
        return [(p, None) for p in found]
    listed = [str(q) for q in queries]
    if not listed:
        raise SimexplainError("no queries given (give image files, a folder, or None to sample "
                              "the gallery)")
    return [(q, None) for q in listed]


def _occlusion(method: str, batch_size: int) -> Method | None:
    """The registry's occlusion method for method "occlusion" (None: the decomposition)."""
    from ..methods import get_method
    return get_method("occlusion", batch_size=batch_size) if method == "occlusion" else None


def _same_file(query: str):
    try:
        resolved = Path(query).resolve()
    except OSError:
        return lambda path: False
    return lambda path: Path(path).resolve() == resolved
