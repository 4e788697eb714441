"""`audit`: explain queries against their top-k hits in an index and gather where the similarity
comes from (`Audit`), a batch of queries at a time."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from ..errors import ImageError, SimexplainError
from ..files import image_files
from . import regions as regionlib
from .result import Audit, PairRecord

if TYPE_CHECKING:
    from ..explanation import Side
    from ..retrieval.index import Index

DEFAULT_SAMPLE = 100


def audit(index: Index | str | Path, queries: Sequence[str | Path] | str | Path | None = None,
          k: int = 5, regions: Mapping[str, Sequence[float]] | None = None,
          sample: int = DEFAULT_SAMPLE, seed: int = 0, batch_size: int = 32,
          progress: bool = True, grid: tuple[int, int] | None = None, patterns: int = 3,
          **finding_options: float) -> Audit:
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
    finding_options: `max_area`, `min_share`, `min_ratio`, `min_pairs`, `max_findings` of
        `simexplain.audit.findings.find`.

    Hits are explained from the index's explain cache when it has one (no model forward for
    them), else a batch at a time; memory grows with the pairs audited, not the gallery.
    """
    started = time.perf_counter()
    index = _open(index)
    index._require_explainer()  # before any work: an index without its model is refused
    if k < 1:
        raise SimexplainError(f"k must be >= 1, got {k}")
    if batch_size < 1:
        raise SimexplainError(f"batch_size must be >= 1, got {batch_size}")
    checked = regionlib.check_regions(regions)
    chosen = _queries(index, queries, sample, seed)
    result: Audit | None = None
    bar = tqdm(total=len(chosen), desc="auditing", unit="query", disable=not progress)
    for name, row, side in _query_sides(index, chosen, batch_size):
        if result is None:
            result = Audit(k=k, regions=checked, grid=grid or side.grid,
                           similarity=index.similarity.name,
                           lower_is_better=index.similarity.lower_is_better,
                           model=index.model_name, index=_where(index))
        _audit_query(index, result, name, row, side, k, batch_size, patterns)
        bar.update(1)
    bar.close()
    assert result is not None  # _queries returns at least one
    result.seconds = time.perf_counter() - started
    result.explain_pair = lambda record: _explain(index, record)
    return result.finish(**finding_options)


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


def _query_sides(index: Index, chosen: list[tuple[str, int | None]], batch_size: int
                 ) -> Iterator[tuple[str, int | None, Side]]:
    """Each query's decomposed side (a), a batch at a time: from the explain cache for
    gallery rows of a one-stream model, else computed."""
    explainer = index._require_explainer()
    one_stream = explainer.stream_a is explainer.stream_b
    for start in range(0, len(chosen), batch_size):
        batch = chosen[start:start + batch_size]
        sides: dict[int, Side] = {}
        if one_stream:
            for i, (_, row) in enumerate(batch):
                cached = None if row is None else index.cached_side(row)
                if cached is not None:
                    sides[i] = cached
        missing = [i for i in range(len(batch)) if i not in sides]
        try:
            if missing:
                computed = explainer.sides([batch[i][0] for i in missing], "a", batch_size)
                sides.update(zip(missing, computed))
        except ImageError as exc:
            raise SimexplainError(f"cannot explain the queries: {exc}") from None
        for i, (name, row) in enumerate(batch):
            yield name, row, sides[i]


def _audit_query(index: Index, result: Audit, name: str, row: int | None, side: Side,
                 k: int, batch_size: int, patterns: int) -> None:
    """Search the query, drop its own file from the hits, explain the rest, add each pair."""
    from ..retrieval.index import RegionQuery
    prepared = RegionQuery.from_side(side)
    hits = index.search_vector(prepared.vector, min(k + 1, len(index)))
    own = _same_file(name)
    hits[:] = [h for h in hits if h.index != row and not own(h.path)][:k]
    if not hits:
        return
    index.explain_hits(prepared, hits, batch_size=batch_size)
    result.queries += 1
    for rank, hit in enumerate(hits, start=1):
        assert hit.explanation is not None  # explain_hits set it
        record = PairRecord(query=name, hit=hit.path, hit_row=hit.index, rank=rank,
                            score=hit.explanation.score)
        result.add(hit.explanation, record, patterns=patterns)


def _same_file(query: str):
    try:
        resolved = Path(query).resolve()
    except OSError:
        return lambda path: False
    return lambda path: Path(path).resolve() == resolved


def _explain(index: Index, record: PairRecord):
    """The PairExplanation of an audited pair again (for the report's figures)."""
    from ..retrieval.index import Hit, RegionQuery
    explainer = index._require_explainer()
    prepared = RegionQuery.from_side(explainer.side(record.query, "a"))
    hit = Hit(rank=record.rank, index=record.hit_row, path=record.hit, score=record.score,
              full_score=record.score)
    index.explain_hits(prepared, [hit])
    return hit.explanation
