"""Interactive retrieval (METHOD.md, "Interactive retrieval"): a gallery index searched with a
whole query image or with a region of it.

A region R of the query (a box or a mask in the query's model-input pixels) gives cell weights
w_p and ONE query vector q_R = sum_p w_p u_p (u_p: the query's per-position contributions,
`simexplain.regions`). The partial similarity s_R(b) = sum_p w_p O_a[p] of a gallery image b is
then a function of q_R, e_a and e_b alone (`Similarity.partial_scores`), which is exactly
`PairExplanation.partial_score("a", R)`. Without a region the search is the ordinary similarity
ranking. Each similarity says which vectors one FAISS inner-product index stores so that both
kinds of query rank correctly (`Similarity.index_vectors`, `index_query`); the raw float32
embeddings are kept next to it and the top candidates are re-scored exactly (float64), so
reported scores are the true s_R. `kind` picks the FAISS structure: "flat" (exact, the
default), "ivf" (inverted lists), "hnsw" (graph) or "ivfpq" (compressed product-quantised codes,
<= 64 bytes a vector, optionally split into shards searched as one, with the floats memory-
mapped); all but "flat" are approximate in which candidates they find.

Modules: `index` (Index, Hit, Hits, RegionQuery, search), `storage` (the folder on disk: what may be
replaced, save and verified load), `manifest` (its checksum, schema and gallery paths),
`build` (resumable builds), `explain_cache` (per-position contributions stored at build time,
`--explain`, so hits are explained without the model), `ray_engine` (builds as a Ray Data
pipeline, `engine="ray"`), `compressed` (the sharded "ivfpq" kind), `model` (the index's model
and its fingerprint), `page` (the HTML results page), `commands` (`simexplain index build`,
`simexplain search`: their options and what they run).
"""

from typing import TYPE_CHECKING

from ..lazy_names import lazy_names

if TYPE_CHECKING:  # what type checkers and the API reference see; at run time: __getattr__
    from .index import FETCH_MARGIN, Hit, Hits, Index, RegionQuery

# Names are imported from their modules on first use: `simexplain search --help`
# imports `commands` alone, without torch or FAISS.
_LAZY = {
    "checkpoint_path": "build", "gallery_files": "build", "remove_checkpoint": "build",
    "explainer_for_index": "commands",
    "FETCH_MARGIN": "index", "Hit": "index", "Hits": "index", "Index": "index",
    "RegionQuery": "index",
    "IndexMismatchError": "model", "check_model": "model", "model_info": "model",
    "weights_fingerprint": "model",
    "EMBEDDINGS": "manifest", "FORMAT_NAME": "manifest", "FORMAT_VERSION": "manifest",
    "KINDS": "manifest", "MANIFEST": "manifest", "VECTORS": "manifest",
    "IndexFormatError": "manifest",
    "Skipped": "basics",
    "MARKER": "storage", "check_replaceable": "storage", "read_manifest": "storage",
}

__all__ = ["Index", "Hit", "Hits", "RegionQuery", "Skipped", "IndexFormatError",
           "IndexMismatchError",
           "checkpoint_path", "gallery_files", "remove_checkpoint", "check_replaceable", "MARKER",
           "explainer_for_index", "check_model",
           "model_info", "weights_fingerprint", "read_manifest", "KINDS", "MANIFEST",
           "EMBEDDINGS", "VECTORS", "FORMAT_NAME", "FORMAT_VERSION", "FETCH_MARGIN"]


__getattr__, __dir__ = lazy_names(__name__, _LAZY)
