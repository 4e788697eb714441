"""The planted-shortcut benchmark on a tiny setting: marks, the control, the measurements."""

import json
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from simexplain import datasets, training
from simexplain.evaluation import registry, report, shortcut
from simexplain.evaluation.pointing import mass_in_box
from simexplain.errors import SimexplainError

TINY = shortcut.Training(images=256, epochs=1, eval_images=100)
TINY_AUDIT = shortcut.AuditSetting(gallery=40, queries=6, k=3)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """A private data root: the tiny models are trained into it, never into the user's cache."""
    root = tmp_path_factory.mktemp("data")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SIMEXPLAIN_DATA", str(root))
        yield root


@pytest.fixture(scope="module")
def trained(data_root):
    """The two tiny models, recording the training images each was given."""
    seen = {}
    real = training.train_fmnist

    def recording(head, epochs, seed, out, **options):
        seen["shortcut" if "shortcut-" in str(out) else "control"] = options["splits"]
        return real(head, epochs, seed, out, **options)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(training, "train_fmnist", recording)
        models = shortcut.trained_models("gap", TINY)
    return models, seen


@pytest.fixture(scope="module")
def result(trained):
    return shortcut.run("fmnist-gap", samples=5, training=TINY, audit=TINY_AUDIT)


def test_marks_are_placed_where_declared():
    image = np.full((28, 28), 7, dtype=np.uint8)
    for c in range(10):
        marked = shortcut.place_mark(image, c)
        top, left, bottom, right = shortcut.mark_box(c)
        changed = np.argwhere(marked != image)
        assert (changed.min(0) == (top, left)).all() and (changed.max(0) == (bottom - 1,
                                                                              right - 1)).all()
        assert len(changed) == 16 and (marked[top:bottom, left:right] == 255).all()
        assert (shortcut.erase_mark(marked, c)[top:bottom, left:right] == 0).all()
    boxes = {shortcut.mark_box(c) for c in range(10)}
    mirrored = {(t, 28 - r, b, 28 - l) for t, l, b, r in boxes}
    assert len(boxes) == 10 and not (boxes & mirrored)  # horizontal flips keep classes apart


def test_marked_training_set_marks_most_of_each_class():
    images, labels = datasets.fashion_mnist("train")
    images, labels = images[:2000], labels[:2000]
    out, marked = shortcut.marked_training_set(images, labels, 0.9, seed=0)
    for c in range(10):
        members = labels == c
        assert abs(marked[members].mean() - 0.9) < 0.01
        t, l, b, r = shortcut.mark_box(c)
        assert (out[members & marked][:, t:b, l:r] == 255).all()
    assert (out[~marked] == images[~marked]).all()
    changed = (out != images).reshape(len(images), -1).any(1)
    assert not changed[~marked].any()


def test_control_is_trained_on_unmarked_images_the_same_way(trained):
    models, seen = trained
    images, labels = datasets.fashion_mnist("train")
    (control_x, control_y), _ = seen["control"]
    (shortcut_x, shortcut_y), _ = seen["shortcut"]
    assert (control_x == images[:TINY.images]).all() and (control_y == labels[:TINY.images]).all()
    assert (shortcut_y == control_y).all()
    differs = (shortcut_x != control_x).reshape(len(control_x), -1).any(1)
    assert 0.8 < differs.mean() <= 0.91  # the marks (a mark on white pixels changes nothing)
    infos = {name: info for name, (_, info) in models.items()}
    for key in ("epochs", "seed", "batch_size", "lr", "train_images", "augmentation"):
        assert infos["shortcut"][key] == infos["control"][key]


def brute_force_mass(grid_map, box):
    """Positive mass of the cells inside the box, pixel by pixel: each 4x4 cell's pixels are
    counted in the box or not, a cell belongs to the box when all its pixels do."""
    values = np.maximum(np.asarray(grid_map, dtype=np.float64), 0)
    inside = total = 0.0
    for row in range(7):
        for col in range(7):
            total += values[row, col]
            pixels = [(y, x) for y in range(4 * row, 4 * row + 4)
                      for x in range(4 * col, 4 * col + 4)]
            if all(box[0] <= y < box[2] and box[1] <= x < box[3] for y, x in pixels):
                inside += values[row, col]
    return inside / total


def test_mass_on_mark_matches_a_brute_force_count(trained):
    models, _ = trained
    explainer, _ = models["shortcut"]
    images, labels = datasets.fashion_mnist("test")
    for pair in shortcut.conflict_pairs(images[:200], labels[:200], 4, seed=3):
        box = shortcut.mark_box(pair.mark_class)
        a = shortcut.as_input(explainer, pair.a)
        b = shortcut.as_input(explainer, pair.b, "b")
        maps, _ = shortcut.side_a_maps(explainer, ["decomposition", "occlusion"], a, b,
                                       (1.5, 1.5), 0)
        for grid_map in maps.values():
            assert mass_in_box(grid_map, (28, 28), box) == pytest.approx(
                brute_force_mass(grid_map, box), abs=1e-9)
    # a map with all its positive mass on the mark's cell, and one with none
    grid = np.full((7, 7), -1.0)
    grid[3, 0] = 2.0
    assert mass_in_box(grid, (28, 28), shortcut.mark_box(3)) == 1.0
    assert mass_in_box(grid, (28, 28), shortcut.mark_box(4)) == 0.0


def test_partial_score_is_the_map_over_the_mark_and_the_map_sums_to_the_score(trained):
    models, _ = trained
    images, labels = datasets.fashion_mnist("test")
    pair = shortcut.conflict_pairs(images[:200], labels[:200], 1, seed=5)[0]
    box = shortcut.mark_box(pair.mark_class)
    for explainer, _ in models.values():
        a = shortcut.as_input(explainer, pair.a)
        b = shortcut.as_input(explainer, pair.b, "b")
        result = explainer.explain(a, b)
        row, col = shortcut.MARK_CELLS[pair.mark_class]
        overall = result.overall_a.double()
        assert result.partial_score("a", box) == pytest.approx(float(overall[row, col]),
                                                               abs=1e-9)
        assert shortcut.sum_in_box(overall, box) == pytest.approx(float(overall[row, col]),
                                                                  abs=1e-12)
        model = explainer.stream_a.model
        with torch.no_grad():  # the model's own forward pass: unit-norm embeddings, cosine
            forward = float((model(a) * model(b)).sum())
        assert float(overall.sum()) == pytest.approx(forward, abs=1e-5)
        predicted = shortcut.predicted_drop("decomposition", result.overall_a, box, forward)
        assert predicted == pytest.approx(float(overall[row, col]), abs=1e-6)


def test_benchmark_json_and_table_shape(result, tmp_path):
    methods = report.methods_of(result)
    assert "decomposition" in methods and "occlusion" in methods
    assert not set(shortcut.NOT_APPLICABLE) & set(methods)
    for m in methods:
        assert set(result["methods"][m]) == {"mass", "hit_rate", "flat_maps",
                                             "drop_correlation", "drop_abs_error"}
        assert result["methods"][m]["hit_rate"]["n"] == 5
        assert len(result["per_sample"][m]["mass"]) == 5
    for name in ("shortcut", "control"):
        cf = result["counterfactual"][name]
        assert len(cf["score"]) == len(cf["erased_score"]) == 5
    point = next(m for m in methods if m.startswith("point-"))
    assert np.isnan(result["per_sample"][point]["predicted"]).all()
    report.write_json(tmp_path / "r.json", result)
    loaded = json.loads((tmp_path / "r.json").read_text())
    assert loaded["benchmark"] == "shortcut" and set(loaded["control"]) == set(methods)
    table = shortcut.results_table([result]).splitlines()
    assert len(table) == 2 + len(methods)
    assert all(line.count("|") == 10 for line in table)
    section = report.benchmark_section(shortcut, [result])
    assert "mass on the mark" in section and "Recall@1" in section
    assert "Detection AUROC" in section and "of top-1 similarity" in section
    assert "Recurring cross-view patterns" in section and "pattern strength" in section


def test_audit_part_shape(result):
    audited = result["audit"]
    assert set(audited["models"]) == {"shortcut", "control"}
    for a in audited["models"].values():
        assert len(a["queries"]) == len(a["share_top1"]) == len(a["marks"]) == 6
        assert all(name.endswith(f"mark{m}.png") for name, m in zip(a["queries"], a["marks"]))
        assert set(a["marks_named"]) <= set(range(10))
    assert 0 <= audited["auroc"]["mean"] <= 1 and audited["auroc"]["n"] == 6
    assert 0 <= audited["pattern_auroc"]["mean"] <= 1 and audited["pattern_auroc"]["n"] == 6
    assert audited["models"]["shortcut"]["queries"] == audited["models"]["control"]["queries"]
    for a in audited["models"].values():
        assert len(a["pattern_pairs_at_marks"]) == 10 and len(a["pattern_share_top1"]) == 6
        assert all(0 <= v <= 1 for v in a["pattern_pairs_at_marks"] + a["pattern_share_top1"])
        for place in a["recurring"]:
            on_a_mark = place["cell_query"] == place["cell_hit"] and \
                tuple(place["cell_query"]) in shortcut.MARK_CELLS
            assert (place["mark"] is not None) == on_a_mark
            if on_a_mark:
                assert shortcut.MARK_CELLS[place["mark"]] == tuple(place["cell_query"])
    # the same audit by occlusion: the same queries, shares of the erase drops, no patterns
    occluded = audited["occlusion"]
    assert 0 <= occluded["auroc"]["mean"] <= 1 and occluded["auroc"]["n"] == 6
    for name, a in occluded["models"].items():
        assert a["queries"] == audited["models"][name]["queries"] and len(a["share_top1"]) == 6
        assert "pattern_share_top1" not in a and set(a["marks_named"]) <= set(range(10))
        assert all(f["sentence"].startswith("erasing the") for f in a["findings"])
    assert any("Audit by occlusion" in line for line in shortcut.audit_lines(audited))


def _pattern(cell_a, cell_b, strength):
    return SimpleNamespace(cell_a=cell_a, cell_b=cell_b, strength=strength)


def test_mark_cell_is_the_mark_on_any_grid():
    assert [shortcut.mark_cell(c, (7, 7)) for c in range(10)] == list(shortcut.MARK_CELLS)
    assert shortcut.mark_cell(9, (14, 14)) == (13, 3)  # pixels 24..28 x 4..8, centre (26, 6)


def test_pattern_share_in_cell_by_hand():
    patterns = [_pattern((0, 0), (0, 0), 0.3), _pattern((2, 1), (0, 0), 0.1),
                _pattern((0, 0), (5, 5), 0.1)]
    assert shortcut.pattern_share_in_cell(patterns, (0, 0)) == pytest.approx(0.4 / 0.5)
    assert shortcut.pattern_share_in_cell(patterns, (2, 1)) == pytest.approx(0.2)
    assert shortcut.pattern_share_in_cell(patterns, (6, 6)) == 0.0
    assert shortcut.pattern_share_in_cell([], (0, 0)) == 0.0


def test_pattern_measures_count_places_and_top1_pairs():
    """A stand-in audit: 4 pairs; patterns on mark 2's cell (2, 0) in 3, on mark 0's (0, 0) in
    1, one place that is a mark cell on one side only, and the top-1 pairs' own patterns."""
    records = [SimpleNamespace(query="q0-mark2", rank=1), SimpleNamespace(query="q0-mark2", rank=2),
               SimpleNamespace(query="q1-mark0", rank=1), SimpleNamespace(query="q1-mark0", rank=2)]
    counts = Counter({((2, 0), (2, 0)): 3, ((0, 0), (0, 0)): 1, ((1, 0), (2, 0)): 2,
                      ((3, 3), (3, 3)): 4})
    recurring = [{"cell_query": list(a), "cell_hit": list(b), "pairs": v, "fraction": v / 4}
                 for (a, b), v in counts.most_common()]
    own = {"q0-mark2": [_pattern((2, 0), (2, 0), 0.2), _pattern((3, 3), (3, 3), 0.6)],
           "q1-mark0": [_pattern((3, 3), (3, 3), 0.5)]}
    grid_side = SimpleNamespace(grid=(7, 7))
    fake = SimpleNamespace(
        pairs=records, grid=(7, 7), pattern_counts=counts, recurring=recurring,
        explain_pair=lambda r: SimpleNamespace(a=grid_side,
                                               patterns=lambda k: own[r.query][:k]))
    out = shortcut.pattern_measures(fake, {"q0-mark2": 2, "q1-mark0": 0},
                                    ["q1-mark0", "q0-mark2"])
    assert out["pattern_pairs_at_marks"] == [0.25, 0, 0.75, 0, 0, 0, 0, 0, 0, 0]
    assert [r["mark"] for r in out["recurring"]] == [None, 2, None, 0]
    assert out["pattern_share_top1"] == [0.0, pytest.approx(0.25)]


def test_mark_regions_and_named_marks():
    regions = shortcut.mark_regions()
    assert regions["mark-3"] == (12 / 28, 0.0, 16 / 28, 4 / 28)
    cell = {"box": [3 / 7, 0.0, 4 / 7, 1 / 7]}  # exactly mark 3's cell on the 7x7 grid
    wide = {"box": [0.0, 1 / 7, 1 / 7, 3 / 7]}  # marks 7 and 8 (row 0, columns 1 and 2)
    elsewhere = {"box": [3 / 7, 3 / 7, 4 / 7, 4 / 7]}
    assert shortcut.marks_named([cell]) == [3]
    assert shortcut.marks_named([wide, elsewhere]) == [7, 8]
    assert shortcut.marks_named([elsewhere]) == []


def test_auroc_against_pair_counting():
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(1, 1, 30).round(1), rng.normal(0, 1, 40).round(1)  # with ties
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))
    assert shortcut.auroc(pos, neg) == pytest.approx(wins)
    assert shortcut.auroc([2, 3], [0, 1]) == 1.0 and shortcut.auroc([0], [1]) == 0.0


def test_registered_in_eval_all():
    assert "shortcut" in registry.SUITE and registry.load("shortcut") is shortcut


def test_bad_requests_name_the_problem():
    with pytest.raises(SimexplainError, match="retrains fmnist-gap"):
        shortcut.run("fmnist-vit", samples=1, training=TINY)
    with pytest.raises(SimexplainError, match="class-token transformer"):
        shortcut.run("fmnist-gap", methods=["chefer"], samples=1, training=TINY)


def test_cli_refuses_another_model_in_one_line(tmp_path, capsys):
    from simexplain.cli import main
    assert main(["eval", "shortcut", "--model", "fmnist-gmp", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "retrains fmnist-gap, not 'fmnist-gmp'" in err[0]
