"""Planted shortcut: do the maps reveal what a model really matches on?

Two Fashion-MNIST models are trained here with the zoo's recipe (`training.train_fmnist`, the
fmnist-gap architecture, loss, optimiser and augmentation), the same seed and the same steps:
the *shortcut* model sees training images of which most (90%) of each class carry a bright
4x4 mark at a position chosen per class (one feature cell of the 7x7 grid), the *control*
model the same images without marks. The trained weights are cached under the data root
(``<data root>/shortcut/``, keyed by the settings), so reruns only load them.

Pairs whose items disagree with their marks: the query (side a) is a test item of class c
carrying the mark of another class m; the gallery item (side b) is a test item of class m with
its own mark m. A model that learnt the shortcut matches them on the mark. On side a of every
pair, for every method: the share of the map's positive mass on the mark's cell (chance: its
area, 1/49) and how often the map's top cell is the mark (pointing; ties broken at random,
seeded). The same pairs explained by the control model are the control pairs: there a method
that merely lights up bright squares still points at the mark, one that explains the model
should not.

The counterfactual: erase a's mark (its pixels set to the background, 0) and measure the
actual drop of the similarity, against what each method predicts: the decomposition's partial
score s_R of the mark's cell (METHOD.md: exact for the score given the features, a linear
prediction for a change of the input, which also changes the features around it), the
relative map's and the Grad-CAM maps' sums over the cell (first-order changes of the cosine),
occlusion's value at the cell (the drop when the cell is filled with the dataset mean, not the
background). Maps in other units (Grad-CAM on raw embeddings, random) are scaled so that they
sum to the score. Point maps predict no drop.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from numpy.typing import ArrayLike

from ..errors import SimexplainError
from . import options
from .common import (BOOTSTRAP, bootstrap_ci, is_flat, method_map, new_result,
                     point_map, POINT_METHODS, progress, sample_seed, Timer)
from .pointing import mass_in_box, pointing_hit
from .report import compare, methods_of
from .tables import fmt, fmt_plain, markdown_table

if TYPE_CHECKING:
    from ..audit.result import Audit
    from ..explainer import Explainer
    from .composites import Box

NAME = "shortcut"
TITLE = "Planted shortcut"
OPTIONS = options.SHORTCUT  # its command line: methods, sample counts, its model (the recipe)
SIZE = 28  # Fashion-MNIST items, a 7x7 feature grid: one cell is 4x4 pixels
MARK = 4  # side of the mark in pixels: exactly one feature cell
CELLS = SIZE // MARK  # the feature grid's side
MARK_VALUE = 255
BACKGROUND = 0  # Fashion-MNIST's background
MARKED_SHARE = 0.9
# (row, col) in mark-sized cells of each class's mark, class 0 first. Training flips images
# horizontally, so a mark at column c is also learnt at column 6 - c: no two classes share a
# position or its mirror image.
MARK_CELLS = ((0, 0), (1, 0), (2, 0), (3, 0), (4, 0), (5, 0), (6, 0), (0, 1), (0, 2), (6, 1))
# the methods whose maps are changes of the score (so their sum over the mark is a predicted
# drop as it stands); the others are scaled to sum to the score
SCORE_UNITS = ("decomposition", "relative", "gradcam", "rgradcam", "occlusion")
NOT_APPLICABLE = {
    "attention-rollout": "needs a class-token transformer (this is a CNN)",
    "chefer": "needs a class-token transformer (this is a CNN)",
    "gradcam-tokens": "needs a class-token transformer (this is a CNN)",
}
_SALT = 25


@dataclass(frozen=True)
class Training:
    """How the two models are trained (both the same way, marks aside)."""

    images: int  # the first N training images
    epochs: int
    eval_images: int = 2000  # clean test items for the models' Recall@1
    marked_share: float = MARKED_SHARE
    seed: int = 0

    def key(self, head: str, marked: bool) -> str:
        """A file name for the weights of these settings (and the mark layout)."""
        settings = {**asdict(self), "head": head, "marked": marked, "mark": MARK,
                    "cells": MARK_CELLS, "value": MARK_VALUE, "version": 1}
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
        return f"{'shortcut' if marked else 'control'}-{head}-{digest[:12]}.pt"


FULL_TRAINING = Training(images=30000, epochs=1)
QUICK_TRAINING = Training(images=3000, epochs=1, eval_images=500)


# -- marks -------------------------------------------------------------------------------------
def mark_box(mark_class: int) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) in pixels of the mark of a class (bottom/right exclusive)."""
    row, col = MARK_CELLS[mark_class]
    return row * MARK, col * MARK, (row + 1) * MARK, (col + 1) * MARK


def place_mark(image: np.ndarray, mark_class: int, value: int = MARK_VALUE) -> np.ndarray:
    """A copy of a uint8 (28, 28) image with the class's mark square set to `value`."""
    top, left, bottom, right = mark_box(mark_class)
    out = np.array(image, dtype=np.uint8, copy=True)
    out[top:bottom, left:right] = value
    return out


def erase_mark(image: np.ndarray, mark_class: int) -> np.ndarray:
    """The image with the mark's pixels set to the background (the counterfactual)."""
    return place_mark(image, mark_class, BACKGROUND)


def marked_training_set(images: np.ndarray, labels: np.ndarray, share: float, seed: int
                        ) -> tuple[np.ndarray, np.ndarray]:
    """(images with the marks planted, which were marked): in each class a seeded random
    `share` of its images carries the class's mark."""
    rng = np.random.default_rng([seed, _SALT])
    out = images.copy()
    marked = np.zeros(len(images), dtype=bool)
    for c in range(len(MARK_CELLS)):
        members = np.flatnonzero(labels == c)
        chosen = rng.choice(members, size=int(round(share * len(members))), replace=False)
        marked[chosen] = True
        top, left, bottom, right = mark_box(c)
        out[chosen, top:bottom, left:right] = MARK_VALUE
    return out, marked


# -- the two models ----------------------------------------------------------------------------
def trained_models(head: str, training: Training, show_progress: bool = False
                   ) -> dict[str, tuple[Explainer, dict]]:
    """{"shortcut": (Explainer, checkpoint info), "control": ...}, trained once per settings
    and then loaded from the cache."""
    return {name: _model(head, training, name == "shortcut", show_progress)
            for name in ("shortcut", "control")}


def _model(head: str, training: Training, marked: bool, show_progress: bool
           ) -> tuple[Explainer, dict]:
    from .. import datasets
    from ..explainer import Explainer
    from ..training import train_fmnist
    from ..zoo.fmnist import EXPLAINED_LAYER, FMNIST_PREPROCESS, load_checkpoint, \
        model_from_checkpoint
    path = datasets.data_root() / "shortcut" / training.key(head, marked)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        train_x, train_y = datasets.fashion_mnist("train")
        train_x, train_y = train_x[:training.images], train_y[:training.images]
        if marked:
            train_x, _ = marked_training_set(train_x, train_y, training.marked_share,
                                             training.seed)
        test = datasets.fashion_mnist("test")
        train_fmnist(head, training.epochs, training.seed, path, eval_limit=training.eval_images,
                     progress=show_progress, splits=((train_x, train_y), test))
    checkpoint = load_checkpoint(path)
    name = f"fmnist-{head}-{'shortcut' if marked else 'control'}"
    explainer = Explainer(model_from_checkpoint(checkpoint, path), EXPLAINED_LAYER,
                          similarity="cosine", transform=FMNIST_PREPROCESS, model_name=name)
    info = {k: v for k, v in checkpoint.items() if k not in ("state_dict",)}
    return explainer, {"weights": str(path), **info}


# -- pairs -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pair:
    """A query item of class `item_class` carrying the mark of `mark_class`, and a gallery item
    of `mark_class` with its own mark."""

    a: np.ndarray  # uint8 (28, 28), marked
    b: np.ndarray
    item_class: int
    mark_class: int


def conflict_pairs(images: np.ndarray, labels: np.ndarray, samples: int, seed: int
                   ) -> list[Pair]:
    """`samples` seeded pairs whose query carries another class's mark."""
    classes = len(MARK_CELLS)
    by_class = [np.flatnonzero(labels == c) for c in range(classes)]
    pairs = []
    for i in range(samples):
        rng = np.random.default_rng(sample_seed(seed, i, _SALT))
        item_class = int(rng.integers(classes))
        mark_class = int((item_class + rng.integers(1, classes)) % classes)
        a = images[rng.choice(by_class[item_class])]
        b = images[rng.choice(by_class[mark_class])]
        pairs.append(Pair(place_mark(a, mark_class), place_mark(b, mark_class), item_class,
                          mark_class))
    return pairs


def as_input(explainer: Explainer, image: np.ndarray, side: str = "a") -> torch.Tensor:
    """(1, 1, 28, 28) model input of a uint8 item."""
    from PIL import Image

    from .common import to_tensor
    return to_tensor(explainer, Image.fromarray(image), side)


# -- measurements ------------------------------------------------------------------------------
def sum_in_box(grid_map: torch.Tensor | np.ndarray, box: Box, size: tuple[int, int] = (SIZE, SIZE)
               ) -> float:
    """Signed sum of the map over the cells whose centre lies in `box`."""
    from ..geometry import cell_centres
    from .pointing import in_box
    values = np.asarray(grid_map, dtype=np.float64)
    centres = cell_centres((0, 0, *size), values.shape)
    inside = np.array([in_box(c, box) for c in centres])
    return float(values.ravel()[inside].sum())


def predicted_drop(method: str, grid_map: torch.Tensor, box: Box, score: float) -> float:
    """What a method's map of side a says the score loses when the box is erased: its sum over
    the box where the map is in units of the score (SCORE_UNITS), else its share of the map's
    sum times the score; nan for point maps (they predict no drop) and flat-zero maps."""
    if method in POINT_METHODS:
        return float("nan")
    inside = sum_in_box(grid_map, box)
    if method in SCORE_UNITS:
        return inside
    total = float(np.asarray(grid_map, dtype=np.float64).sum())
    return score * inside / total if total else float("nan")


def side_a_maps(explainer: Explainer, methods: Sequence[str], a: torch.Tensor, b: torch.Tensor,
                point_b: Sequence[float], seed: int) -> tuple[dict, float]:
    """({method: map over a's grid, or None where a point map does not exist}, the score from
    the decomposed forward pass). Point maps are those of b's mark centre on a."""
    result = explainer.explain(a, b)
    out: dict[str, torch.Tensor | None] = {"decomposition": result.overall_a.float(),
                                           "relative": result.relative_a.float()}
    for m in methods:
        if m in POINT_METHODS:
            out[m] = point_map(result, "b", point_b, m)
        elif m not in out:
            out[m] = method_map(explainer, m, a, b, "a", seed=seed)
    return {m: out[m] for m in methods}, float(result.score)


def measure(explainer: Explainer, methods: Sequence[str], pairs: Sequence[Pair], seed: int,
            show_progress: bool = False, label: str = "shortcut") -> dict:
    """Per method and pair: mass on a's mark, pointing hit, predicted drop; per pair: the
    score, the score with a's mark erased, flat maps and missing point maps per method."""
    keys = ("mass", "hit", "predicted")
    values: dict[str, dict[str, list[float]]] = {m: {k: [] for k in keys} for m in methods}
    flat = {m: 0 for m in methods}
    scores, erased = [], []
    for i, pair in enumerate(progress(pairs, len(pairs), label, show_progress)):
        box = mark_box(pair.mark_class)
        a, b = as_input(explainer, pair.a, "a"), as_input(explainer, pair.b, "b")
        centre = ((box[0] + box[2]) / 2 - 0.5, (box[1] + box[3]) / 2 - 0.5)
        maps, score = side_a_maps(explainer, methods, a, b, centre, sample_seed(seed, i, 99))
        gone = _score(explainer, as_input(explainer, erase_mark(pair.a, pair.mark_class)), b)
        scores.append(score)
        erased.append(gone)
        for m in methods:
            grid_map = maps[m]
            if grid_map is None:  # no point map here: a miss
                values[m]["mass"].append(np.nan)
                values[m]["hit"].append(0.0)
                values[m]["predicted"].append(np.nan)
                continue
            tie_rng = np.random.default_rng(sample_seed(seed, i, 7))
            values[m]["mass"].append(mass_in_box(grid_map, (SIZE, SIZE), box))
            values[m]["hit"].append(float(pointing_hit(grid_map, (SIZE, SIZE), box, tie_rng)))
            values[m]["predicted"].append(predicted_drop(m, grid_map, box, score))
            flat[m] += int(is_flat(grid_map))
    return {"values": values, "flat": flat, "score": scores, "erased_score": erased}


def _score(explainer: Explainer, a: torch.Tensor, b: torch.Tensor) -> float:
    """The model's similarity of one pair from its own forward pass."""
    with torch.no_grad():
        e_a = explainer.stream_a.embed(a)[0]
        e_b = explainer.stream_b.embed(b)[0]
        return float(explainer.similarity.score(e_a, e_b))


def pearson(x: ArrayLike, y: ArrayLike) -> float:
    """Pearson correlation over the finite pairs (nan with fewer than 3 or a constant side)."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    if len(a) < 3 or is_flat(a) or is_flat(b):
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def pearson_ci(x: ArrayLike, y: ArrayLike, seed: int = 0, n_boot: int = BOOTSTRAP) -> dict:
    """Pearson correlation with a percentile-bootstrap 95% interval over pairs."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    r = pearson(a, b)
    if not np.isfinite(r):
        return {"mean": r, "lo": r, "hi": r, "n": int(len(a))}
    idx = np.random.default_rng(seed).integers(0, len(a), (n_boot, len(a)))
    da, db = a[idx] - a[idx].mean(1, keepdims=True), b[idx] - b[idx].mean(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):  # a resample of one value: nan
        boots = (da * db).sum(1) / np.sqrt((da * da).sum(1) * (db * db).sum(1))
    lo, hi = np.nanquantile(boots, [0.025, 0.975])
    return {"mean": r, "lo": float(min(lo, r)), "hi": float(max(hi, r)), "n": int(len(a))}


def summarise(measured: dict, seed: int) -> dict:
    """Per method: mass, hit rate (bootstrap CIs), flat maps, and the counterfactual's
    correlation and mean absolute error of the predicted against the actual drop."""
    actual = np.asarray(measured["score"]) - np.asarray(measured["erased_score"])
    out = {}
    for m, v in measured["values"].items():
        predicted = np.asarray(v["predicted"], dtype=np.float64)
        errors = np.abs(predicted - actual)
        out[m] = {"mass": bootstrap_ci(v["mass"], seed=seed),
                  "hit_rate": bootstrap_ci(v["hit"], seed=seed),
                  "flat_maps": measured["flat"][m],
                  "drop_correlation": pearson_ci(predicted, actual, seed=seed),
                  "drop_abs_error": bootstrap_ci(errors, seed=seed)}
    return out


# -- the audit ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class AuditSetting:
    """The audit part: a gallery of marked test items (each with its own class's mark) and
    queries that carry another class's mark, from the test split's second half."""

    gallery: int = 500
    queries: int = 100
    k: int = 5


FULL_AUDIT = AuditSetting()
QUICK_AUDIT = AuditSetting(gallery=150, queries=20)
PATTERNS = 3  # cross-view patterns per pair, counted by the audit (its default)


def mark_regions() -> dict[str, tuple[float, float, float, float]]:
    """The marks as audit regions, name -> relative (top, left, bottom, right)."""
    return {f"mark-{c}": tuple(v / SIZE for v in mark_box(c))  # type: ignore[misc]
            for c in range(len(MARK_CELLS))}


def write_audit_images(folder: Path, images: np.ndarray, labels: np.ndarray,
                       setting: AuditSetting, seed: int) -> tuple[Path, Path, list[int]]:
    """(gallery folder, query folder, each query's mark class, in file order): the gallery's
    items carry their own class's mark, the queries another class's."""
    from PIL import Image
    rng = np.random.default_rng([seed, _SALT, 1])
    order = rng.permutation(len(images))
    gallery, queries = folder / "gallery", folder / "queries"
    gallery.mkdir(parents=True)
    queries.mkdir()
    for i in order[:setting.gallery]:
        c = int(labels[i])
        Image.fromarray(place_mark(images[i], c)).save(gallery / f"{i:05d}-class{c}.png")
    marks = []
    for j, i in enumerate(order[setting.gallery:setting.gallery + setting.queries]):
        c = int(labels[i])
        m = int((c + rng.integers(1, len(MARK_CELLS))) % len(MARK_CELLS))
        Image.fromarray(place_mark(images[i], m)).save(queries / f"{j:04d}-class{c}-mark{m}.png")
        marks.append(m)
    return gallery, queries, marks


def audit_model(explainer: Explainer, gallery: Path, queries: Path, setting: AuditSetting,
                show_progress: bool = False, method: str = "decomposition") -> dict:
    """Audit one model on the marked gallery (explain-ready index): per query, the share of
    the score its top-1 and top-k hits carry on the query's mark (query side and both sides),
    whether the top-1 hit is of the mark's class, and the audit's own findings. `method`: the
    audit's maps ("occlusion": shares of the summed erase drops; no pattern measures, they
    are the decomposition's)."""
    from ..audit import audit
    from ..retrieval import Index
    index = Index.build(gallery, explainer, model_name=explainer.model_name, progress=False,
                        explain=True)
    result = audit(index, queries=queries, k=setting.k, regions=mark_regions(),
                   progress=show_progress, max_findings=len(MARK_CELLS),
                   patterns=PATTERNS if method == "decomposition" else 0, method=method)
    both, query_side = result.region_shares, result.region_shares_query
    per_query: dict[str, dict] = {}
    for i, pair in enumerate(result.pairs):
        mark = int(Path(pair.query).stem.split("mark")[1])
        entry = per_query.setdefault(pair.query, {"mark": mark, "both": [], "query": []})
        entry["both"].append(float(both[f"mark-{mark}"][i]))
        entry["query"].append(float(query_side[f"mark-{mark}"][i]))
        if pair.rank == 1:
            entry["top1_both"] = entry["both"][-1]
            entry["top1_score"] = pair.score
            entry["top1_mark_class"] = int(Path(pair.hit).stem.split("class")[1]) == mark
    names = sorted(per_query)
    return {"queries": [Path(q).name for q in names],
            "marks": [per_query[q]["mark"] for q in names],
            "share_top1": [per_query[q]["top1_both"] for q in names],
            "score_top1": [per_query[q]["top1_score"] for q in names],
            "share_topk": [float(np.nanmean(per_query[q]["both"])) for q in names],
            "share_topk_query": [float(np.nanmean(per_query[q]["query"])) for q in names],
            "top1_is_mark_class": [per_query[q]["top1_mark_class"] for q in names],
            "findings": [f.to_dict() for f in result.findings], "seconds": result.seconds,
            **(pattern_measures(result, {q: per_query[q]["mark"] for q in names}, names)
               if method == "decomposition" else {})}


def mark_cell(mark_class: int, grid: tuple[int, int]) -> tuple[int, int]:
    """The cell of a (rows, cols) grid over the image that holds the centre of a class's mark."""
    top, left, bottom, right = mark_box(mark_class)
    return (int((top + bottom) / 2 / SIZE * grid[0]), int((left + right) / 2 / SIZE * grid[1]))


def pattern_share_in_cell(patterns: Sequence, cell: tuple[int, int]) -> float:
    """The share of the patterns' total strength carried by those whose query point (side a)
    lies in `cell` of a's feature grid; 0 for a pair without patterns."""
    total = sum(p.strength for p in patterns)
    on = sum(p.strength for p in patterns if tuple(p.cell_a) == tuple(cell))
    return on / total if total > 0 else 0.0


def pattern_measures(result: Audit, marks: dict[str, int], queries: Sequence[str]) -> dict:
    """What the audit's recurring cross-view patterns say about the marks: per mark class,
    the fraction of pairs with a pattern joining the mark's cell of the query to the same cell
    of the hit (`Audit.pattern_counts` holds at most one pattern per pair and place: the
    patterns' spread keeps two of one pair at least a cell apart); the top recurring places,
    each with the mark whose cell it is on both sides (None: no mark's); and per query, the
    share of its top-1 pair's pattern strength whose query point is on the query's mark."""
    n = max(len(result.pairs), 1)
    cells = {mark_cell(c, result.grid): c for c in range(len(MARK_CELLS))}
    at_marks = [result.pattern_counts.get((cell, cell), 0) / n for cell in cells]
    recurring = [{**r, "mark": cells.get(tuple(r["cell_query"]))
                  if r["cell_query"] == r["cell_hit"] else None} for r in result.recurring]
    share = {}
    for record in result.pairs:
        if record.rank == 1:
            pair = result.explain_pair(record)
            share[record.query] = pattern_share_in_cell(
                pair.patterns(k=PATTERNS), mark_cell(marks[record.query], pair.a.grid))
    return {"pattern_pairs_at_marks": at_marks, "recurring": recurring,
            "pattern_share_top1": [share[q] for q in queries]}


def marks_named(findings: Sequence[dict]) -> list[int]:
    """The mark classes whose cell a finding's box covers (its centre inside the box)."""
    named = []
    for c in range(len(MARK_CELLS)):
        top, left, bottom, right = mark_box(c)
        y, x = (top + bottom) / 2 / SIZE, (left + right) / 2 / SIZE
        if any(f["box"][0] <= y < f["box"][2] and f["box"][1] <= x < f["box"][3]
               for f in findings):
            named.append(c)
    return named


def auroc(positives: ArrayLike, negatives: ArrayLike) -> float:
    """P(a positive scores above a negative), ties counting half (Mann-Whitney)."""
    from scipy.stats import rankdata
    pos = np.asarray(positives, dtype=np.float64)
    neg = np.asarray(negatives, dtype=np.float64)
    pos, neg = pos[np.isfinite(pos)], neg[np.isfinite(neg)]
    if not len(pos) or not len(neg):
        return float("nan")
    ranks = rankdata(np.concatenate([pos, neg]))
    return float((ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) /
                 (len(pos) * len(neg)))


def audit_part(models: dict, setting: AuditSetting, seed: int, show_progress: bool = False
               ) -> dict:
    """Both models audited on the same marked gallery and queries; the detection AUROC
    (shortcut vs control, per query: the top-1 pair's share on the query's mark) with a
    bootstrap interval over queries, and the marks the findings name per model; then the same
    by occlusion (`audit(method="occlusion")`, under "occlusion")."""
    import tempfile

    from .. import datasets
    test_x, test_y = datasets.fashion_mnist("test")
    half = len(test_x) // 2
    with tempfile.TemporaryDirectory(prefix="simexplain-shortcut-") as tmp:
        gallery, queries, marks = write_audit_images(Path(tmp), test_x[half:], test_y[half:],
                                                     setting, seed)
        audited, occluded = ({name: audit_model(explainer, gallery, queries, setting,
                                                show_progress, method)
                              for name, (explainer, _) in models.items()}
                             for method in ("decomposition", "occlusion"))
    for a in (*audited.values(), *occluded.values()):
        a["marks_named"] = marks_named(a["findings"])
        a["false_findings"] = sum(1 for f in a["findings"] if not marks_named([f]))
    return {"setting": asdict(setting), "marks_used": sorted(set(marks)), "models": audited,
            "auroc": auroc_ci(audited, "share_top1", seed),
            "pattern_auroc": auroc_ci(audited, "pattern_share_top1", seed),
            "occlusion": {"models": occluded, "auroc": auroc_ci(occluded, "share_top1", seed)}}


def auroc_ci(audited: dict, measure: str, seed: int) -> dict:
    """The detection AUROC of a per-query measure, shortcut model against control, with a
    bootstrap interval over queries (both models' values resampled together)."""
    s, c = (np.asarray(audited[n][measure], dtype=np.float64) for n in ("shortcut", "control"))
    idx = np.random.default_rng(seed).integers(0, len(s), (BOOTSTRAP, len(s)))
    boots = [auroc(s[i], c[i]) for i in idx]
    value = auroc(s, c)
    lo, hi = np.nanquantile(boots, [0.025, 0.975])
    return {"mean": value, "lo": float(min(lo, value)), "hi": float(max(hi, value)),
            "n": int(len(s))}


# -- the benchmark -----------------------------------------------------------------------------
def run(model: str, methods: Sequence[str] | None = None, samples: int | None = None,
        seed: int = 0, quick: bool = False, show_progress: bool = False,
        training: Training | None = None, audit: AuditSetting | None = None) -> dict:
    """The planted-shortcut benchmark for the zoo recipe `model` (fmnist-gap): train (or load)
    the shortcut and control models, measure every method on the same conflict pairs, and
    audit both models on a marked gallery."""
    from .. import datasets
    from .common import resolve_methods
    if model not in OPTIONS.models:
        raise SimexplainError(f"the shortcut benchmark retrains {', '.join(OPTIONS.models)}, not "
                              f"{model!r}")
    named = [] if not methods or "all" in methods else resolve_methods(methods, OPTIONS.allowed)
    for m in named:
        if m in NOT_APPLICABLE:
            raise SimexplainError(f"method {m!r} cannot run here: {NOT_APPLICABLE[m]}")
    methods = [m for m in resolve_methods(methods, OPTIONS.allowed) if m not in NOT_APPLICABLE]
    samples = samples or OPTIONS.samples(model, quick)
    training = training or (QUICK_TRAINING if quick else FULL_TRAINING)
    audit = audit or (QUICK_AUDIT if quick else FULL_AUDIT)
    head = model.split("-")[1]
    with Timer() as timer:
        models = trained_models(head, training, show_progress)
        test_x, test_y = datasets.fashion_mnist("test")
        half = len(test_x) // 2  # pairs from the first half, the audit gallery from the second
        pairs = conflict_pairs(test_x[:half], test_y[:half], samples, seed)
        measured = {name: measure(explainer, methods, pairs, seed, show_progress,
                                  f"shortcut: {name} model")
                    for name, (explainer, _) in models.items()}
        audited = audit_part(models, audit, seed, show_progress)
    result = _result(model, seed, samples, methods, training, models, measured, timer.seconds)
    result["audit"] = audited
    return result


def _result(model: str, seed: int, samples: int, methods: Sequence[str], training: Training,
            models: dict, measured: dict, seconds: float) -> dict:
    result = new_result(NAME, model, seed, samples, {
        "mark": MARK, "mark_cells": MARK_CELLS, "marked_share": training.marked_share,
        "training": asdict(training), "chance_mass": MARK * MARK / SIZE ** 2,
        "models": {name: {"weights": info["weights"], "metrics": info.get("metrics", {}),
                          "epochs": info.get("epochs"), "train_images": info.get("train_images")}
                   for name, (_, info) in models.items()},
        "not_applicable": NOT_APPLICABLE})
    result["methods"] = summarise(measured["shortcut"], seed)
    result["control"] = summarise(measured["control"], seed)
    for m in methods:
        result["per_sample"][m] = {k: v for k, v in measured["shortcut"]["values"][m].items()}
        result["per_sample"][m].update(
            {f"control_{k}": v for k, v in measured["control"]["values"][m].items()})
    result["counterfactual"] = {name: {"score": measured[name]["score"],
                                       "erased_score": measured[name]["erased_score"]}
                                for name in measured}
    result["notes"] += [f"{m}: not applicable ({why})" for m, why in NOT_APPLICABLE.items()]
    result["seconds"] = seconds
    return result


# -- report ------------------------------------------------------------------------------------
def protocol_text(settings: dict) -> str:
    t = settings["training"]
    return (f"Two fmnist-gap models trained here with the zoo's recipe, seed {t['seed']}, "
            f"{t['epochs']} epoch(s) over {t['images']} training images: the *shortcut* model "
            f"with a bright {settings['mark']}x{settings['mark']} mark (one feature cell) at a "
            f"per-class position in {settings['marked_share']:.0%} of each class's training "
            "images, the *control* without marks. Pairs: a test item carrying another class's "
            "mark (side a) and a test item of the mark's class with its mark (side b); "
            "measured on side a. *Mass*: share of the map's positive mass on the mark's cell "
            f"(chance {settings['chance_mass']:.3f}); *hit*: the map's top cell is the mark. "
            "The control columns explain the same pairs with the control model (a method that "
            "only finds bright squares scores there too). *Drop*: a's mark erased to the "
            "background; the actual drop of the cosine against each map's sum over the mark's "
            "cell (decomposition: the partial score s_R; relative, Grad-CAM, RGrad-CAM, "
            "occlusion: in score units as they are; Grad-CAM-raw and random scaled to sum to "
            "the score; point maps predict no drop): Pearson r and mean absolute error.")


def results_table(results: list[dict]) -> str:
    rows = []
    for r in results:
        for m in methods_of(r):
            f, c = r["methods"][m], r["control"][m]
            rows.append([r["model"], m, fmt(f["mass"]), fmt(f["hit_rate"]), fmt(c["mass"]),
                         fmt(c["hit_rate"]), fmt(f["drop_correlation"]),
                         fmt(f["drop_abs_error"], 4), str(f["hit_rate"]["n"])])
    return markdown_table(["model", "method", "mass on mark", "hit rate", "control: mass",
                           "control: hit rate", "drop: r", "drop: mean abs error", "n"], rows)


def headline_comparisons(result: dict) -> list:
    ps = result["per_sample"]
    predicting = [m for m in methods_of(result) if m not in POINT_METHODS]
    return [compare(result, lambda m: ps[m]["mass"], True, "mass on the mark"),
            compare(result, lambda m: ps[m]["hit"], True, "mark hit rate"),
            compare(result, lambda m: _abs_errors(result, m), False,
                    "counterfactual drop, abs error", methods=predicting)]


def _abs_errors(result: dict, method: str) -> np.ndarray:
    cf = result["counterfactual"]["shortcut"]
    actual = np.asarray(cf["score"], dtype=np.float64) - np.asarray(cf["erased_score"],
                                                                    dtype=np.float64)
    return np.abs(np.asarray(result["per_sample"][method]["predicted"], dtype=np.float64) -
                  actual)


def extra_lines(results: list[dict]) -> list[str]:
    lines = []
    for r in results:
        models = r["settings"]["models"]
        recall = {name: models[name]["metrics"].get("recall_at_1") for name in models}
        cf = {name: np.asarray(v["score"]) - np.asarray(v["erased_score"])
              for name, v in r["counterfactual"].items()}
        scores = {name: float(np.mean(v["score"])) for name, v in r["counterfactual"].items()}
        lines.append(
            f"Models: Recall@1 on clean test items {fmt_plain(recall['shortcut'])} (shortcut), "
            f"{fmt_plain(recall['control'])} (control). Mean cosine of the conflict pairs "
            f"{scores['shortcut']:.3f} (shortcut) vs {scores['control']:.3f} (control); erasing "
            f"a's mark lowers it by {float(np.mean(cf['shortcut'])):.3f} on average (shortcut) "
            f"vs {float(np.mean(cf['control'])):.3f} (control).")
        if r.get("audit"):
            lines += ["", *audit_lines(r["audit"])]
    return lines


def plot_results(results: list[dict], img_dir: Path) -> Path:
    """Mass on the mark per method (shortcut model, control model), and the counterfactual:
    predicted against actual drops for the methods in score units."""
    from .report import finish_plot, pyplot, style
    r = results[0]
    methods = methods_of(r)
    fig, axes = pyplot().subplots(1, 2, figsize=(10, 3.8), squeeze=False)
    ax = axes[0, 0]
    for i, m in enumerate(methods):
        for j, (part, hatch) in enumerate((("methods", None), ("control", "//"))):
            ci = r[part][m]["mass"]
            if ci["mean"] is None or not np.isfinite(ci["mean"]):
                continue
            ax.bar(i + 0.4 * j - 0.2, ci["mean"], 0.38, hatch=hatch, alpha=0.5 + 0.5 * (j == 0),
                   yerr=[[ci["mean"] - ci["lo"]], [ci["hi"] - ci["mean"]]],
                   color=style(m)["color"], label=m if j == 0 else None)
    ax.axhline(r["settings"]["chance_mass"], color="gray", lw=1, ls=":")
    ax.set_xticks(range(len(methods)), methods, rotation=60, fontsize=7, ha="right")
    ax.set_ylabel("mass on the mark")
    ax.set_title("solid: shortcut model, hatched: control; dotted: chance", fontsize=8)
    cf = r["counterfactual"]["shortcut"]
    actual = np.asarray(cf["score"], dtype=np.float64) - np.asarray(cf["erased_score"])
    ax = axes[0, 1]
    for m in ("decomposition", "relative", "occlusion"):
        if m in r["per_sample"]:
            ax.scatter(actual, r["per_sample"][m]["predicted"], s=6, alpha=0.6,
                       color=style(m)["color"], label=m)
    ax.axline((0, 0), slope=1, color="gray", lw=1, ls=":")
    ax.set_xlabel("actual drop of the cosine (mark erased)")
    ax.set_ylabel("predicted drop")
    fig.suptitle(f"{TITLE}: {r['model']} (n={r['samples']})", fontsize=9)
    return finish_plot(fig, axes, img_dir / f"{NAME}.png")


def audit_lines(audited: dict) -> list[str]:
    """The audit part in words: the statement, the detection AUROC, what the findings name."""
    s, c = audited["models"]["shortcut"], audited["models"]["control"]
    setting, used = audited["setting"], audited["marks_used"]
    area = MARK * MARK / SIZE ** 2

    def mean(values: Sequence) -> float:
        return float(np.nanmean(np.asarray(values, dtype=np.float64)))

    def named(a: dict) -> str:
        found = [m for m in a["marks_named"] if m in used]
        return (f"{len(found)} of the {len(used)} marks the queries carry "
                f"({a['false_findings']} finding(s) elsewhere, {len(a['findings'])} in all)")

    lines = [
        f"**Audit** (`simexplain.audit` on an explain-ready index of {setting['gallery']} marked "
        f"test items, {setting['queries']} queries carrying another class's mark, top-"
        f"{setting['k']}; regions: the ten mark cells): on the shortcut model "
        f"**{mean(s['share_top1']):.0%} of top-1 similarity comes from the query's mark**, a "
        f"4x4 square ({area:.0%} of the image), both sides together (control model: "
        f"{mean(c['share_top1']):.0%}); over the top {setting['k']}: {mean(s['share_topk']):.0%} "
        f"vs {mean(c['share_topk']):.0%}. The top-1 hit is of the mark's class for "
        f"{mean(s['top1_is_mark_class']):.0%} of the queries (control "
        f"{mean(c['top1_is_mark_class']):.0%}).",
        f"Detection AUROC over queries (top-1 share on the mark, shortcut model vs control): "
        f"{fmt(audited['auroc'])}.",
        f"The audit's findings, told nothing about the marks (only `max_findings` = 10): on the "
        f"shortcut model they name {named(s)}; on the control model {named(c)}.",
    ]
    if s["findings"]:
        first = s["findings"][0]["sentence"]
        lines.append(f"Its first finding on the shortcut model: \"{first}\".")
    if "pattern_auroc" in audited:
        lines += ["", *pattern_lines(audited)]
    if "occlusion" in audited:
        lines += ["", *occlusion_lines(audited)]
    return lines


def occlusion_lines(audited: dict) -> list[str]:
    """The same audit by occlusion (`audit(method="occlusion")`) in words."""
    occluded, used = audited["occlusion"], audited["marks_used"]
    s, c = occluded["models"]["shortcut"], occluded["models"]["control"]

    def named(a: dict) -> str:
        found = [m for m in a["marks_named"] if m in used]
        return (f"{len(found)} of the {len(used)} marks the queries carry "
                f"({', '.join(map(str, found)) or 'none'}; {a['false_findings']} finding(s) "
                f"elsewhere, {len(a['findings'])} in all)")

    def mean(values: Sequence) -> float:
        return float(np.nanmean(np.asarray(values, dtype=np.float64)))

    lines = [
        f"**Audit by occlusion** (the same gallery and queries, `audit(method=\"occlusion\")`: "
        f"each pair's per-side maps are the drops of the cosine when each feature cell is "
        f"erased, shares of the summed positive drops): on the shortcut model "
        f"{mean(s['share_top1']):.0%} of the top-1 pair's summed drop is on the query's mark, "
        f"both sides together (control {mean(c['share_top1']):.0%}); over the top "
        f"{audited['setting']['k']}: {mean(s['share_topk']):.0%} vs {mean(c['share_topk']):.0%}. "
        f"Detection AUROC over queries: {fmt(occluded['auroc'])}.",
        f"Its findings (the same options) name on the shortcut model {named(s)}; on the "
        f"control model {named(c)}. Cost: {s['seconds']:.0f} s for the shortcut model's audit "
        f"by occlusion.",
    ]
    if s["findings"]:
        lines.append(f"Its first finding on the shortcut model: "
                     f"\"{s['findings'][0]['sentence']}\".")
    return lines


def pattern_lines(audited: dict) -> list[str]:
    """The audit's recurring cross-view patterns against the marks, in words."""
    models = audited["models"]

    def places(a: dict) -> str:
        if not a["recurring"]:
            return "no place recurs"
        at = [r for r in a["recurring"] if r["mark"] is not None]
        where = "".join(f", mark {r['mark']} ({r['fraction']:.0%} of the pairs)" for r in at)
        first = a["recurring"][0]
        return (f"{len(at)} of its top {len(a['recurring'])} places are a mark's cell on both "
                f"sides{where}; the most frequent, {_cells(first)}, in "
                f"{first['fraction']:.0%} of the pairs")

    def at_marks(a: dict) -> str:
        return ", ".join(f"{v:.0%}" for v in a["pattern_pairs_at_marks"])

    return [
        f"Recurring cross-view patterns ({PATTERNS} mutual best matches of the point maps per "
        f"pair, counted by their (query cell, hit cell) on the {CELLS}x{CELLS} grid): on the "
        f"shortcut model "
        f"{places(models['shortcut'])}; on the control model {places(models['control'])}.",
        f"Pairs with a pattern joining a mark's cell of the query to the same cell of the hit, "
        f"marks 0-9: shortcut {at_marks(models['shortcut'])}; control "
        f"{at_marks(models['control'])} (were the {PATTERNS} patterns of a pair spread by area, "
        f"a given cell would hold one in {PATTERNS / CELLS ** 2:.0%} of the pairs).",
        f"Per query, the share of the top-1 pair's pattern strength on the query's own mark: "
        f"shortcut {float(np.mean(models['shortcut']['pattern_share_top1'])):.1%}, control "
        f"{float(np.mean(models['control']['pattern_share_top1'])):.1%}; detection AUROC "
        f"{fmt(audited['pattern_auroc'])}.",
    ]


def _cells(place: dict) -> str:
    return f"query cell {tuple(place['cell_query'])}, hit cell {tuple(place['cell_hit'])}"


def brief_lines(results: list[dict]) -> list[str]:
    """The README-style summary line of the audit part."""
    out = []
    for r in results:
        if r.get("audit"):
            a = r["audit"]
            s = a["models"]["shortcut"]
            out.append(
                f"- Planted shortcut, audit: {float(np.nanmean(s['share_top1'])):.0%} of top-1 "
                f"similarity on the query's 4x4 mark (control "
                f"{float(np.nanmean(a['models']['control']['share_top1'])):.0%}), detection "
                f"AUROC {fmt(a['auroc'])}; findings name {len(s['marks_named'])} of "
                f"{len(a['marks_used'])} marks, {len(a['models']['control']['marks_named'])} "
                "on the control.")
            if "occlusion" in a:
                o = a["occlusion"]["models"]
                out.append(
                    f"- Planted shortcut, audit by occlusion: "
                    f"{float(np.nanmean(o['shortcut']['share_top1'])):.0%} of the top-1 "
                    f"summed erase drop on the query's mark (control "
                    f"{float(np.nanmean(o['control']['share_top1'])):.0%}), detection AUROC "
                    f"{fmt(a['occlusion']['auroc'])}; findings name "
                    f"{len(o['shortcut']['marks_named'])} of {len(a['marks_used'])} marks, "
                    f"{len(o['control']['marks_named'])} on the control.")
    return out
