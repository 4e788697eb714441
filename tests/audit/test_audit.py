"""`simexplain.audit`: region shares equal an independent computation from the model's own
layers, the audit streams (batch size 1 = many), works on flat, compressed and explain-ready
indexes, names a planted hot region (and nothing on a control), and refuses bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import simexplain
from simexplain.audit import audit
from simexplain.errors import SimexplainError
from simexplain.explainer import Explainer
from simexplain.images import Preprocess
from simexplain.retrieval import Index
from simexplain.toy import HeadModel

SIDE = 32
GRID = 8  # the toy trunk (depth 2) halves the input twice
CORNER = (0.0, 0.0, 0.25, 0.25)  # 2 x 2 cells of the 8 x 8 grid
ODD = (0.1, 0.3, 0.55, 0.8)  # a box that cuts cells


class Planted(nn.Module):
    """A GAP + linear head (no bias) + L2 model whose feature map is multiplied by `gain` on the
    top-left 2 x 2 cells before pooling: with a large gain the corner carries most of every
    similarity, with gain 1 it is an ordinary model (the control)."""

    def __init__(self, gain: float, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        base = HeadModel("gap", dim=16, channels=8, depth=2, bias=False)
        self.features = base.features
        mask = torch.ones(1, 1, GRID, GRID)
        mask[..., :2, :2] = gain
        self.register_buffer("mask", mask)
        self.linear = base.head[2]  # pool, flatten, linear, L2: the linear layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = (self.features(x) * self.mask).mean((2, 3))
        return F.normalize(self.linear(pooled), dim=1)


def planted(gain: float) -> Explainer:
    return Explainer(Planted(gain).eval(), "features", transform=Preprocess(size=(SIDE, SIDE)),
                     model_name=f"planted-{gain:g}")


@pytest.fixture(scope="module")
def gallery(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("gallery")
    rng = np.random.default_rng(0)
    for i in range(30):
        Image.fromarray(rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)).save(
            root / f"img_{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def indexes(gallery, tmp_path_factory) -> dict:
    """The same gallery under the control and the planted model (flat indexes)."""
    return {gain: Index.build(gallery, planted(gain), progress=False) for gain in (1.0, 30.0)}


def brute_weights(box, grid=(GRID, GRID), fine: int = 400) -> np.ndarray:
    """Covered fraction of each cell by counting the points of a fine lattice in the box."""
    centres = (np.arange(fine) + 0.5) / fine
    inside_rows = (centres >= box[0]) & (centres < box[2])
    inside_cols = (centres >= box[1]) & (centres < box[3])
    covered = inside_rows[:, None] & inside_cols[None, :]
    per = fine // grid[0]
    return covered.reshape(grid[0], per, grid[1], per).mean((1, 3)).ravel()


def independent_partials(model: Planted, explainer: Explainer, query: str, hit: str,
                         box) -> tuple[float, float, float, float]:
    """(s, s_R query side, s_R hit side, joint) from the model's own layers: the masked feature
    map A, the linear layer W: e = W mean_p A_p, u_p = W A_p / P, cosine."""
    w = torch.as_tensor(brute_weights(box), dtype=torch.float64)
    out = []
    for path in (query, hit):
        x = explainer.prepare(path, "a").tensor
        with torch.no_grad():
            a = (model.features(x) * model.mask)[0].double()  # (C, H, W)
        u = a.flatten(1).T @ model.linear.weight.detach().double().T / a[0].numel()  # (P, D)
        out.append(u)
    u, v = out
    e_a, e_b = u.sum(0), v.sum(0)
    scale = e_a.norm() * e_b.norm()
    with torch.no_grad():
        embedded = model(torch.cat([explainer.prepare(p, "a").tensor for p in (query, hit)]))
    s = float(embedded[0].double() @ embedded[1].double())  # the model's own forward pass
    return (s, float(w @ (u @ e_b) / scale), float(w @ (v @ e_a) / scale),
            float((w @ u) @ (w @ v) / scale))


@pytest.mark.parametrize("box", [CORNER, ODD])
def test_region_shares_equal_an_independent_computation(indexes, box):
    index = indexes[30.0]
    result = audit(index, k=3, regions={"r": box}, sample=6, progress=False)
    model = index.explainer.stream_a.model
    assert len(result.pairs) == 18
    for i, pair in enumerate(result.pairs):
        s, query_side, hit_side, joint = independent_partials(model, index.explainer,
                                                              pair.query, pair.hit, box)
        assert pair.score == pytest.approx(s, abs=1e-5)
        assert result.region_shares_query["r"][i] == pytest.approx(query_side / s, rel=1e-4)
        assert result.region_shares_hit["r"][i] == pytest.approx(hit_side / s, rel=1e-4)
        assert result.region_shares["r"][i] == pytest.approx((query_side + hit_side) / (2 * s),
                                                             rel=1e-4)
        assert result.region_joint_shares["r"][i] == pytest.approx(joint / s, rel=1e-4)


def test_shares_of_a_partition_add_up_to_the_score(indexes):
    quadrants = {f"q{i}": (r, c, r + 0.5, c + 0.5)
                 for i, (r, c) in enumerate([(0, 0), (0, .5), (.5, 0), (.5, .5)])}
    result = audit(indexes[1.0], k=2, regions=quadrants, sample=5, progress=False)
    for shares in (result.region_shares, result.region_shares_query, result.region_shares_hit,
                   result.region_positive_shares):
        np.testing.assert_allclose(sum(shares.values()), 1.0, atol=1e-6)
    # the mean share maps hold the same: every cell's share of all the audited similarity
    maps = result.mean_maps
    assert maps["share_query"].sum() == pytest.approx(1.0, abs=1e-6)
    assert maps["relative_hit"].sum() == pytest.approx(0.0, abs=1e-6)
    top_left = maps["share_query"][:GRID // 2, :GRID // 2].sum()
    assert top_left == pytest.approx(result.region_partial_scores("q0")["query"].sum()
                                     / result.scores.sum(), rel=1e-6)


def test_positive_share_is_the_regions_part_of_the_positive_mass(indexes):
    index = indexes[1.0]
    result = audit(index, k=2, regions={"c": CORNER}, sample=3, progress=False)
    pair = result.pairs[0]
    direct = index.explainer.explain(pair.query, pair.hit)  # recomputed, no cache, no index
    w = torch.as_tensor(brute_weights(CORNER), dtype=torch.float64)
    pos_a, pos_b = direct.overall_a_flat.clamp_min(0), direct.overall_b_flat.clamp_min(0)
    expected = float((w @ pos_a + w @ pos_b) / (pos_a.sum() + pos_b.sum()))
    assert result.region_positive_shares["c"][0] == pytest.approx(expected, rel=1e-5)


def test_batch_size_does_not_change_the_audit(indexes):
    index = indexes[30.0]
    one, many = (audit(index, k=3, regions={"c": CORNER}, sample=7, batch_size=b,
                       progress=False) for b in (1, 16))
    assert [p.to_dict()["hit"] for p in one.pairs] == [p.to_dict()["hit"] for p in many.pairs]
    np.testing.assert_allclose(one.region_shares["c"], many.region_shares["c"], rtol=1e-5)
    for name, value in one.mean_maps.items():
        np.testing.assert_allclose(value, many.mean_maps[name], rtol=1e-5, atol=1e-8)
    assert [f.box for f in one.findings] == [f.box for f in many.findings]
    assert [(r["cell_query"], r["cell_hit"], r["pairs"]) for r in one.recurring] == \
        [(r["cell_query"], r["cell_hit"], r["pairs"]) for r in many.recurring]
    np.testing.assert_allclose([r["mean_strength_share"] for r in one.recurring],
                               [r["mean_strength_share"] for r in many.recurring], rtol=1e-5)


def test_findings_name_the_planted_corner_and_nothing_on_the_control(indexes):
    hot = audit(indexes[30.0], k=3, sample=20, progress=False)
    assert hot.findings, "the planted corner was not found"
    best = hot.findings[0]
    top, left, bottom, right = best.box
    assert bottom <= 0.25 + 1e-9 and right <= 0.25 + 1e-9  # inside the planted 2 x 2 cells
    assert best.side == "both" and best.share > 0.4
    assert "top-left" in best.sentence and "corner" in best.sentence
    assert audit(indexes[1.0], k=3, sample=20, progress=False).findings == []


def test_the_query_itself_is_not_its_own_hit(indexes):
    result = audit(indexes[1.0], k=4, sample=5, progress=False)
    assert all(p.query != p.hit for p in result.pairs)
    assert len(result.pairs) == 20 and result.queries == 5
    assert [p.rank for p in result.pairs[:4]] == [1, 2, 3, 4]
    # gallery files given as queries (paths, no rows): their own file is left out too
    files = result.pairs[0].query, result.pairs[5].query
    given = audit(indexes[1.0], queries=list(files), k=4, progress=False)
    assert len(given.pairs) == 8 and all(p.query != p.hit for p in given.pairs)
    assert [p.hit for p in given.pairs] == [p.hit for p in result.pairs[:4]] + \
        [p.hit for p in result.pairs[4:8]]


@pytest.mark.parametrize("kind,explain,shards", [
    ("ivfpq", False, 2), ("hnsw", False, 1), ("ivf", False, 1), ("flat", True, 1)])
def test_every_index_kind_and_explain_ready_indexes(gallery, tmp_path, kind, explain, shards,
                                                   monkeypatch):
    """Compressed and sharded (ivfpq, 2 shards), approximate (hnsw, ivf), explain-ready."""
    explainer = planted(30.0)
    Index.build(gallery, explainer, progress=False, kind=kind, explain=explain,
                out=tmp_path / "index", shards=shards)
    if explain:  # hits (and gallery queries) come from the cache: the model must not run
        def refuse(*args, **kwargs):
            raise AssertionError("the model ran on a gallery image")
        monkeypatch.setattr(explainer, "sides", refuse)
    index = Index.load(tmp_path / "index", explainer)
    result = audit(index, k=3, regions={"c": CORNER}, sample=6, progress=False)
    assert len(result.pairs) == 18
    monkeypatch.undo()
    for i in (0, 7, 17):  # every pair as the explainer alone decomposes it
        pair = result.pairs[i]
        direct = explainer.explain(pair.query, pair.hit)
        w = torch.as_tensor(brute_weights(CORNER), dtype=torch.float64)
        expected = float(w @ direct.overall_a_flat + w @ direct.overall_b_flat) / (
            2 * direct.score)
        assert result.region_shares["c"][i] == pytest.approx(expected, rel=1e-4)
    assert result.findings and result.findings[0].box[2] <= 0.25 + 1e-9


def test_an_index_folder_loads_its_model(gallery, tmp_path):
    """A zoo model named by the manifest is loaded; any other model never is (an index folder
    is data): the caller passes the Index with its model."""
    from simexplain import zoo
    built = Index.build(gallery, zoo.load("fmnist-gap"), model_name="fmnist-gap",
                        progress=False, out=tmp_path / "index")
    from_folder = audit(tmp_path / "index", k=2, sample=4, progress=False)
    from_object = audit(built, k=2, sample=4, progress=False)
    assert from_folder.model == "fmnist-gap"
    np.testing.assert_allclose(from_folder.scores, from_object.scores, rtol=1e-5)
    with pytest.raises(SimexplainError, match="does not exist"):
        audit(tmp_path / "nowhere", progress=False)
    from simexplain.zoo import resolve
    Index.build(gallery, resolve("simexplain.toy:tiny_cnn", "features", "cosine", SIDE),
                model_name="simexplain.toy:tiny_cnn", progress=False, out=tmp_path / "toy")
    with pytest.raises(SimexplainError, match="not a zoo model"):
        audit(tmp_path / "toy", progress=False)


def test_the_package_is_callable_and_exported(indexes):
    result = simexplain.audit(indexes[1.0], k=1, sample=2, progress=False)
    assert isinstance(result, simexplain.Audit) and len(result.pairs) == 2
    json.loads(result.to_json())


@pytest.mark.parametrize("regions,message", [
    ({"c": (0, 0, 1.5, 0.5)}, "outside"), ({"c": (0.5, 0, 0.2, 0.5)}, "empty"),
    ({"c": (0, 0, 1)}, "four numbers"), ({"": (0, 0, 1, 1)}, "name")])
def test_bad_regions_are_refused(indexes, regions, message):
    with pytest.raises(SimexplainError, match=message):
        audit(indexes[1.0], regions=regions, progress=False)


def test_bad_queries_are_refused(indexes, tmp_path):
    with pytest.raises(SimexplainError, match="no queries"):
        audit(indexes[1.0], queries=[], progress=False)
    with pytest.raises(SimexplainError, match="holds no images"):
        audit(indexes[1.0], queries=tmp_path, progress=False)
    with pytest.raises(SimexplainError, match="k must be"):
        audit(indexes[1.0], k=0, progress=False)


def test_report_folder(indexes, tmp_path):
    result = audit(indexes[30.0], k=2, regions={"corner": CORNER, "right half": (0, .5, 1, 1)},
                   sample=6, progress=False)
    page = result.write_report(tmp_path / "report")
    folder = page.parent
    assert page.name == "index.html"
    text = page.read_text()
    assert result.findings[0].sentence in text and "right half" in text
    summary = json.loads((folder / "result.json").read_text())
    assert summary["kind"] == "simexplain audit" and summary["pairs"] == 12
    corner = summary["regions"]["corner"]
    assert corner["shares"] == pytest.approx(list(result.region_shares["corner"]))
    assert corner["shares_query"] == pytest.approx(list(result.region_shares_query["corner"]))
    assert corner["positive_shares"] == pytest.approx(
        list(result.region_positive_shares["corner"]))
    assert summary["findings"][0]["sentence"] == result.findings[0].sentence
    pngs = sorted(p.name for p in folder.glob("*.png"))
    assert "map_share_query.png" in pngs and any(p.startswith("hist_") for p in pngs)
    assert sum(p.startswith("pair_") for p in pngs) >= 2 * 2  # ranked pairs, both images
    for name in pngs:  # every figure the page shows exists, and every file is shown
        assert f"src='{name}'" in text
        with Image.open(folder / name) as image:
            image.verify()
    # an earlier report is replaced; a folder of other files is refused
    result.write_report(folder)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(SimexplainError, match="not empty"):
        result.write_report(tmp_path / "other")
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("grid", [(28, 28), (5, 3), (8, 8)])
def test_resample_keeps_what_every_box_of_the_new_grid_holds(grid):
    """maps.resample: a box of whole new cells holds what the covered-fraction weights of that
    box give on the old grid (counted here on a fine lattice, not with region_weights)."""
    from simexplain.maps import resample
    rng = np.random.default_rng(0)
    old = rng.normal(size=(GRID, GRID))
    new = resample(old, grid)
    assert new.sum() == pytest.approx(old.sum())
    for top, left, bottom, right in [(0, 0, 1, 1), (1, 0, grid[0], 2), (2, 1, 3, grid[1])]:
        box = (top / grid[0], left / grid[1], bottom / grid[0], right / grid[1])
        expected = brute_weights(box, fine=840) @ old.ravel()
        assert new[top:bottom, left:right].sum() == pytest.approx(expected, abs=1e-9)


def test_a_ray_built_explain_ready_index_audits_like_a_local_one(gallery, tmp_path):
    """Built on Ray Data (one model worker), loaded from its folder: the same pairs and scores
    as the same gallery indexed in this process."""
    import functools
    import os

    import ray

    from simexplain.zoo import resolve
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    load = functools.partial(resolve, "simexplain.toy:tiny_cnn", "features", "cosine", SIDE)
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 logging_level="WARNING")
    try:
        Index.build(gallery, load, model_name="simexplain.toy:tiny_cnn", progress=False,
                    out=tmp_path / "ray", engine="ray", ray={"workers": 1}, explain=True)
    finally:
        if started:
            ray.shutdown()
    from_ray = audit(Index.load(tmp_path / "ray", load()), k=3, sample=5, regions={"c": CORNER},
                     progress=False)
    local = Index.build(gallery, load(), model_name="simexplain.toy:tiny_cnn", progress=False)
    here = audit(local, k=3, sample=5, regions={"c": CORNER}, progress=False)
    assert [p.hit for p in from_ray.pairs] == [p.hit for p in here.pairs]
    np.testing.assert_allclose(from_ray.scores, here.scores, rtol=1e-5)
    np.testing.assert_allclose(from_ray.region_shares["c"], here.region_shares["c"], rtol=1e-4)


# -- streaming ------------------------------------------------------------------------------------
PER_PAIR = {"pairs", "sums", "positive_totals"}  # the per-pair scalars (docs/audit.md, Memory)


def held(value, skip: frozenset = frozenset()) -> tuple[int, int]:
    """(numbers held in arrays and maps, entries of the tally's heaps) inside `value`, walked
    through dataclasses, objects, dicts, lists and tuples; attributes named in `skip` left
    out."""
    from array import array
    from dataclasses import fields, is_dataclass
    if isinstance(value, np.ndarray):
        return value.size, 0
    if isinstance(value, array):
        return len(value), 0
    if isinstance(value, (int, float, str, bool, type(None))) or callable(value):
        return 0, 0
    if isinstance(value, dict):
        parts = [held(v) for v in value.values()] + [(len(value), 0)]
    elif isinstance(value, (list, tuple, set)):
        if value and all(isinstance(v, tuple) and len(v) == 2 and isinstance(v[1], int)
                         for v in value):  # a heap of (share, -pair)
            return 0, len(value)
        parts = [held(v) for v in value]
    else:
        names = [f.name for f in fields(value)] if is_dataclass(value) else list(vars(value))
        parts = [held(getattr(value, n)) for n in names if n not in skip]
    return sum(p[0] for p in parts), sum(p[1] for p in parts)


def test_retained_state_does_not_grow_with_the_pairs(indexes):
    """Past the per-pair scalars, the arrays and maps an audit holds are the same after 10, 200
    and 400 pairs; the heaps of hot pairs fill up to 8 per box and side, then stop growing; the
    scalars grow by 8 bytes x (2 + 5 x regions) per pair."""
    from simexplain.audit import Audit, PairRecord
    explainer = indexes[30.0].explainer
    paths = indexes[30.0].paths
    explained = [explainer.explain(paths[i], paths[i + 1]) for i in range(4)]
    result = Audit(k=1, regions={"c": CORNER, "odd": ODD}, grid=(GRID, GRID))
    sizes, scalars = {}, {}
    for n in range(1, 401):
        pair = explained[n % 4]
        result.add(pair, PairRecord("q", "h", 0, 1, pair.score), patterns=0)
        if n in (10, 200, 400):
            sizes[n] = held(result, frozenset(PER_PAIR))
            scalars[n] = sum(a.itemsize * len(a) for a in [*result.positive_totals.values(), *(
                getattr(r, f) for r in result.sums.values() for f in vars(r))])
    assert sizes[10][0] == sizes[200][0] == sizes[400][0]
    assert sizes[10][1] < sizes[200][1] == sizes[400][1]  # filled, then full
    arrays, heap_entries = sizes[400]
    boxes = len(result.tally.boxes)
    assert 0 < heap_entries <= 3 * boxes * 8  # bounded heaps, and they are in use
    assert arrays < 20 * boxes + 10 * GRID * GRID  # sums per box and side, maps
    assert scalars[400] - scalars[200] == 200 * 8 * (2 + 5 * 2)
    assert len(result.pairs) == 400 and result.finish().findings


def test_findings_equal_a_computation_over_every_pairs_map(indexes):
    """The streamed tally against every pair's overall maps recomputed by the explainer alone,
    resampled, summed over each finding's box by slicing: the fraction of hot pairs, their
    mean share, the hot pairs ranked (the tally keeps the top 8 of each box)."""
    from simexplain.maps import resample
    index = indexes[1.0]  # low thresholds: several findings on the control
    options = {"min_share": 0.05, "min_ratio": 1.5, "min_pairs": 0.01, "max_findings": 10}
    result = audit(index, k=3, sample=12, progress=False, **options)
    assert len(result.findings) >= 2  # more than the one best box
    on_grid = []
    for pair in result.pairs:
        direct = index.explainer.explain(pair.query, pair.hit)
        on_grid.append({"query": resample(direct.overall_a, (GRID, GRID)),
                        "hit": resample(direct.overall_b, (GRID, GRID)), "s": direct.score})
    for finding in result.findings:
        t, l, b, r = (round(v * GRID) for v in finding.box)
        threshold = max(options["min_share"], options["min_ratio"] * finding.area)
        sides = ["query", "hit"] if finding.side == "both" else [finding.side]
        fractions, means = [], []
        for side in sides:
            shares = np.array([m[side][t:b, l:r].sum() / m["s"] for m in on_grid])
            fractions.append(np.mean(shares >= threshold))
            means.append(shares[shares >= threshold].mean())
        assert finding.pairs == pytest.approx(np.mean(fractions), rel=1e-9)
        assert finding.share == pytest.approx(np.mean(means), rel=1e-6)
        both = np.array([np.mean([m[s][t:b, l:r].sum() for s in sides]) / m["s"]
                         for m in on_grid])
        ranked = [i for i in np.argsort(-both, kind="stable") if both[i] >= threshold][:8]
        assert list(finding.hot_pairs) == ranked
        np.testing.assert_allclose(finding.hot_shares, both[ranked], rtol=1e-6)


def test_finding_options_are_checked_before_any_work(indexes):
    with pytest.raises(SimexplainError, match="unknown finding option"):
        audit(indexes[1.0], sample=2, progress=False, max_aera=0.1)
    result = audit(indexes[30.0], k=2, sample=6, progress=False)
    assert len(result.finish(max_findings=1).findings) == 1  # chosen again at the end: fine
    with pytest.raises(SimexplainError, match="max_area must be given when the audit starts"):
        result.finish(max_area=0.5)


# -- given pairs ----------------------------------------------------------------------------------
def test_given_pairs_are_audited_exactly_without_search(gallery, tmp_path, monkeypatch):
    """Exactly the pairs given, in order, rank 0; gallery images come from the explain cache
    (the model runs only on the image outside the gallery); shares as the model's own layers
    give them."""
    explainer = planted(30.0)
    index = Index.build(gallery, explainer, progress=False, explain=True)
    outside = tmp_path / "outside.png"
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (SIDE, SIDE, 3), np.uint8)).save(
        outside)
    files = sorted(gallery.iterdir())
    given = [(files[3], files[7]), (str(files[7]), str(files[3])), (outside, files[0]),
             (files[0], outside)]
    computed = []
    original = explainer.sides

    def sides_outside_only(paths, *args, **kwargs):
        computed.extend(paths)
        return original(paths, *args, **kwargs)
    monkeypatch.setattr(explainer, "sides", sides_outside_only)
    result = audit(index, pairs=given, regions={"c": CORNER}, progress=False, batch_size=3)
    monkeypatch.undo()
    assert computed == [str(outside), str(outside)]  # query of pair 3, hit of pair 4
    assert [(p.query, p.hit) for p in result.pairs] == [(str(a), str(b)) for a, b in given]
    assert [p.rank for p in result.pairs] == [0] * 4 and result.given and result.queries == 4
    assert [p.hit_row for p in result.pairs] == [7, 3, 0, -1]
    model = explainer.stream_a.model
    for i, pair in enumerate(result.pairs):
        s, query_side, hit_side, _ = independent_partials(model, explainer, pair.query, pair.hit,
                                                          CORNER)
        assert pair.score == pytest.approx(s, abs=1e-5)
        assert result.region_shares["c"][i] == pytest.approx((query_side + hit_side) / (2 * s),
                                                             rel=1e-4)
    assert json.loads(result.to_json())["given_pairs"] is True
    assert all("the given pairs' similarity" in f.sentence for f in result.findings)
    page = result.write_report(tmp_path / "report").read_text()  # re-explains pair 4 too
    assert "4 given pairs" in page and "pair_0_4_b.png" in page


def test_bad_given_pairs_are_refused(indexes, tmp_path):
    files = indexes[1.0].paths
    with pytest.raises(SimexplainError, match="no pairs given"):
        audit(indexes[1.0], pairs=[], progress=False)
    with pytest.raises(SimexplainError, match="pair 2: .*nowhere.png does not exist"):
        audit(indexes[1.0], pairs=[(files[0], files[1]), (files[0], tmp_path / "nowhere.png")],
              progress=False)
    with pytest.raises(SimexplainError, match="pair 1 must be two image paths"):
        audit(indexes[1.0], pairs=[(files[0],)], progress=False)
    with pytest.raises(SimexplainError, match="not both"):
        audit(indexes[1.0], pairs=[(files[0], files[1])], queries=[files[2]], progress=False)


def noise_gallery(root: Path, count: int, seed: int) -> Path:
    """`count` random-noise images img_0.png ... in a new folder `root`."""
    root.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)).save(
            root / f"img_{i}.png")
    return root


def test_gallery_files_that_went_missing_or_out_of_the_gallery_are_left_out(tmp_path):
    """Issue 26 for audits: every gallery read is checked as it is opened. A hit whose file
    was deleted, or replaced by a symbolic link to a photo outside the gallery, after the build
    is left out and named in `stale`; the outside photo is never read."""
    root = noise_gallery(tmp_path / "gallery", 8, seed=1)
    index = Index.build(root, planted(1.0), progress=False)
    before = audit(index, k=7, sample=8, progress=False)
    assert before.stale == {} and len(before.pairs) == 8 * 7
    outside = tmp_path / "outside.png"
    Image.fromarray(np.full((SIDE, SIDE, 3), 200, np.uint8)).save(outside)
    (root / "img_3.png").unlink()
    (root / "img_5.png").unlink()
    (root / "img_5.png").symlink_to(outside)
    after = audit(index, k=7, sample=8, progress=False)
    assert sorted(Path(p).name for p in after.stale) == ["img_3.png", "img_5.png"]
    assert "refused" in next(why for p, why in after.stale.items() if p.endswith("img_5.png"))
    used = {Path(p).name for pair in after.pairs for p in (pair.query, pair.hit)}
    assert not used & {"img_3.png", "img_5.png"}
    assert len(after.pairs) == 6 * 5  # six readable queries, each with its five readable hits
    assert json.loads(after.to_json())["stale"].keys() == after.stale.keys()


def test_report_figures_read_the_gallery_files_through_the_index_again(tmp_path):
    """The report explains its ranked pairs again after the audit: their gallery files are read
    through the index's checked read then too. Files replaced by links out of the gallery since
    the audit are not drawn (a note in their cell), and their outside photo is never used."""
    root = noise_gallery(tmp_path / "gallery", 6, seed=2)
    index = Index.build(root, planted(1.0), progress=False)
    result = audit(index, k=2, sample=6, regions={"corner": CORNER}, progress=False)
    rows = {Path(p).name: row for row, p in enumerate(index.paths)}
    assert {pair.query_row for pair in result.pairs} == set(rows.values())
    assert all(pair.query_row == rows[Path(pair.query).name] for pair in result.pairs)
    drawn = result.write_report(tmp_path / "before").read_text()
    assert "not drawn" not in drawn and drawn.count("alt='overall map'") >= 2
    outside = tmp_path / "outside.png"
    Image.fromarray(np.full((SIDE, SIDE, 3), 200, np.uint8)).save(outside)
    for i in range(6):
        (root / f"img_{i}.png").unlink()
        (root / f"img_{i}.png").symlink_to(outside)
    page = result.write_report(tmp_path / "after")
    text = page.read_text()
    assert "alt='overall map'" not in text and "not drawn: missing or refused now" in text
    assert not list(page.parent.glob("pair_*.png"))
    summary = json.loads((page.parent / "result.json").read_text())
    assert summary["pairs"] == len(result.pairs)


# -- method="occlusion": each cell's erase drop in place of the decomposition's overall maps -----
def erase_drops(model: Planted, explainer: Explainer, query: str, hit: str) -> np.ndarray:
    """(2, GRID, GRID) by hand: for each side and cell, the cosine of the pair minus the cosine
    once that cell's 4 x 4 pixels are set to 0 in the model's input (the occlusion's fill)."""
    x = [explainer.prepare(path, "a").tensor for path in (query, hit)]
    step = SIDE // GRID
    with torch.no_grad():
        e = [model(t)[0].double() for t in x]
        s = float(e[0] @ e[1])
        drops = np.zeros((2, GRID, GRID))
        for side in (0, 1):
            for r in range(GRID):
                for c in range(GRID):
                    erased = x[side].clone()
                    erased[..., r * step:(r + 1) * step, c * step:(c + 1) * step] = 0
                    drops[side, r, c] = s - float(model(erased)[0].double() @ e[1 - side])
    return drops


def test_occlusion_maps_equal_erasing_each_cell_by_hand(indexes, gallery):
    index = indexes[30.0]
    query, hit = str(gallery / "img_03.png"), str(gallery / "img_11.png")
    result = audit(index, pairs=[(query, hit)], regions={"c": CORNER}, method="occlusion",
                   batch_size=5, progress=False)
    drops = erase_drops(index.explainer.stream_a.model, index.explainer, query, hit)
    maps = result.mean_maps  # one pair: its own maps (grid 8 x 8 = the feature grid)
    np.testing.assert_allclose(maps["overall_query"], drops[0], atol=1e-5)
    np.testing.assert_allclose(maps["overall_hit"], drops[1], atol=1e-5)
    corner = drops[:, :2, :2].sum()
    total = np.clip(drops, 0, None).sum()  # D: the summed positive drops (both sides)
    assert result.region_shares["c"][0] == pytest.approx(corner / total, rel=1e-4)
    assert result.to_dict()["method"] == "occlusion"
    # the decomposition's own numbers stay: the score, and the joint share is of it
    assert result.pairs[0].score == pytest.approx(
        audit(index, pairs=[(query, hit)], progress=False).pairs[0].score)


def test_occlusion_findings_name_the_planted_corner_and_nothing_on_the_control(indexes):
    hot = audit(indexes[30.0], k=3, sample=20, method="occlusion", progress=False)
    assert hot.findings, "occlusion did not find the planted corner"
    top, left, bottom, right = hot.findings[0].box
    assert bottom <= 0.25 + 1e-9 and right <= 0.25 + 1e-9
    assert hot.findings[0].sentence.startswith("erasing the top-left")
    assert "of the summed drops of top-3 similarity" in hot.findings[0].sentence
    assert audit(indexes[1.0], k=3, sample=20, method="occlusion", progress=False
                 ).findings == []


def test_an_unknown_audit_method_is_refused(indexes):
    with pytest.raises(SimexplainError, match="unknown audit method 'gradcam'.*occlusion"):
        audit(indexes[1.0], k=1, sample=1, method="gradcam", progress=False)


def test_report_figures_of_a_face_model_show_the_crops(tmp_path):
    """A face model's ranked pairs are drawn on the face crops the model saw (enlarged to the
    display side), not on whole photos."""
    from face_stub import face_box, face_explainer, fixed_faces
    from simexplain.visualize import DISPLAY_SIDE
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    rng = np.random.default_rng(5)
    for n in range(3):
        Image.fromarray(rng.integers(0, 256, (120, 200, 3), dtype=np.uint8)).save(
            gallery / f"face{n}.png")
    with fixed_faces():
        index = Index.build(gallery, face_explainer(), model_name="toy-faces", progress=False)
        result = audit(index, k=1, regions={"top": (0, 0, 0.5, 1)}, progress=False)
        folder = result.write_report(tmp_path / "report").parent
    top, left, bottom, right = face_box(120, 200)
    scale = DISPLAY_SIDE / max(bottom - top, right - left)
    crop_size = (round((right - left) * scale), round((bottom - top) * scale))
    figures = sorted(folder.glob("pair_*.png"))
    assert len(figures) >= 2
    for path in figures:
        with Image.open(path) as image:
            assert image.size == crop_size, path.name
