"""Markdown tables, headline comparisons and plots of benchmark results.

Every figure is shown as ``mean [low, high]`` with its 95% percentile-bootstrap interval.
Headlines compare the best method with the runner-up by a *paired* bootstrap over the same
samples (all methods see the same samples), and say plainly where a baseline beats the
decomposition.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ..files import write_text_atomic
from ..explanation import DEFAULT_POINT_MAP
from .common import METHODS, paired_difference, POINT_METHODS

BASELINES_NOTE = "baseline"
ORDER = METHODS + tuple(POINT_METHODS) + ("cosine",)
# the decomposition's own maps: overall, relative and point maps of every kind
DECOMPOSITION = ("decomposition", "relative") + tuple(POINT_METHODS)
TITLES = {
    "pointing": "Pointing game",
    "localisation": "Weakly supervised localisation",
    "faithfulness": "Faithfulness: deletion, insertion, ROAD",
    "correspondence": "Correspondence (point-specific maps)",
    "sanity": "Sanity checks: parameter and reference randomisation",
}


# -- files -------------------------------------------------------------------------------------
def json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def clean(value):
    """NaN -> None (valid JSON), floats rounded to 6 digits."""
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return None if not math.isfinite(v) else round(v, 6)
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_json(path: Path, data) -> None:
    """Write JSON atomically (a temporary file renamed into place)."""
    write_text_atomic(path, json.dumps(clean(data), separators=(",", ":"), default=json_default))


# -- formatting --------------------------------------------------------------------------------
def fmt(ci: dict | None, digits: int = 3) -> str:
    """'mean [lo, hi]' of a bootstrap summary."""
    if not ci or ci.get("mean") is None or not math.isfinite(ci["mean"]):
        return "n/a"
    return f"{ci['mean']:.{digits}f} [{ci['lo']:.{digits}f}, {ci['hi']:.{digits}f}]"


def fmt_plain(value, digits: int = 3) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:.{digits}f}"


def _methods(result: dict) -> list[str]:
    return sorted(result["methods"], key=lambda m: ORDER.index(m) if m in ORDER else 99)


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# -- headline comparisons ----------------------------------------------------------------------
def compare(result: dict, values_of, higher: bool, label: str, weights=None,
            methods: list[str] | None = None) -> dict | None:
    """Best method by mean of per-sample values; paired margin to the runner-up (the best
    method whose values differ: methods with identical values are reported as tied) and the
    best decomposition variant's paired difference to the best baseline."""
    methods = methods or _methods(result)
    values = {m: np.asarray(values_of(m), dtype=np.float64) for m in methods}
    values = {m: v for m, v in values.items() if v.size and np.isfinite(v).any()}
    if len(values) < 2:
        return None
    w = None if weights is None else np.asarray(weights, dtype=np.float64)

    def mean(v):
        keep = np.isfinite(v) if w is None else np.isfinite(v) & (w > 0)
        ww = np.ones_like(v) if w is None else w
        return float((v[keep] * ww[keep]).sum() / ww[keep].sum())

    means = {m: mean(v) for m, v in values.items()}
    counts = {m: int(np.isfinite(v).sum()) for m, v in values.items()}
    # methods run on a subset only (occlusion, for cost) are compared with the best method on
    # their own samples instead of being ranked by a mean over different samples
    full = max(counts.values())
    partial = [m for m in values if counts[m] < full / 2]
    ranked = sorted((m for m in means if m not in partial), key=lambda m: means[m],
                    reverse=higher)
    best = ranked[0]

    def same(x, y):
        a, b = values[x], values[y]
        return a.shape == b.shape and bool(np.allclose(a, b, equal_nan=True, atol=1e-9))

    tied = [m for m in ranked[1:] if same(best, m)]
    rest = [m for m in ranked[1:] if m not in tied]
    seed = result.get("seed", 0)

    def diff(x, y):
        a, b = values[x], values[y]
        keep = np.isfinite(a) & np.isfinite(b)
        ww = None if w is None else w[keep]
        return paired_difference(a[keep], b[keep], weights=ww, seed=seed)

    out = {"label": label, "higher": higher, "best": best, "tied": tied,
           "runner_up": rest[0] if rest else None, "means": means, "counts": counts,
           "margin": diff(best, rest[0]) if rest else None,
           "partial": {m: diff(m, best) for m in partial}}
    decomp = [m for m in ranked if m in DECOMPOSITION]
    baselines = [m for m in ranked if m not in DECOMPOSITION and m != "random"]
    if decomp and baselines:
        d, b = decomp[0], baselines[0]
        gap = diff(d, b)
        better = means[b] > means[d] if higher else means[b] < means[d]
        significant = gap["n"] > 1 and not (gap["lo"] <= 0 <= gap["hi"])
        out.update(decomposition=d, best_baseline=b, decomposition_vs_baseline=gap,
                   baseline_wins=bool(better and not same(d, b)),
                   baseline_wins_significant=bool(better and significant))
    if "random" in values and best == "random":
        out["random_wins"] = True
    return out


def _verdict(c: dict) -> str:
    if c.get("random_wins"):
        return "**random is best**"
    if "baseline_wins" not in c:
        return "n/a"
    if c["baseline_wins"]:
        return ("**yes** (significant)" if c["baseline_wins_significant"]
                else "yes (within CI)")
    return "no"


def headline_text(model: str, c: dict | None) -> str:
    if c is None:
        return f"- {model}: fewer than two methods, no comparison."
    sign = "higher" if c["higher"] else "lower"
    best = " = ".join([c["best"]] + c["tied"])
    text = (f"- **{model}**, {c['label']} ({sign} is better): best **{best}** "
            f"({fmt_plain(c['means'][c['best']])})")
    if c["tied"]:
        text += " (identical values)"
    if c["runner_up"]:
        m = c["margin"]
        text += (f", runner-up {c['runner_up']} ({fmt_plain(c['means'][c['runner_up']])}); "
                 f"paired difference {fmt(m)} on the {m['n']} samples both ran")
        if m["n"] and math.isfinite(m["lo"]) and m["lo"] <= 0 <= m["hi"]:
            text += " -- within the CI, not a clear win"
    text += "."
    for m, d in c.get("partial", {}).items():
        text += (f" {m} (run on {c['counts'][m]} samples only) minus {c['best']} on those "
                 f"samples: {fmt(d)}.")
    if c.get("random_wins"):
        text += " **The random baseline is best here.**"
    if "decomposition_vs_baseline" in c:
        d = c["decomposition_vs_baseline"]
        if c["baseline_wins"]:
            text += (f" **A baseline wins here**: {c['best_baseline']} beats {c['decomposition']}"
                     f" (paired difference {c['decomposition']} - {c['best_baseline']}: "
                     f"{fmt(d)}{'' if c['baseline_wins_significant'] else ', within the CI'}).")
        else:
            text += (f" {c['decomposition']} vs the best baseline {c['best_baseline']}: "
                     f"{fmt(d)}.")
    return text


def headlines(name: str, results: list[dict]) -> list[tuple[str, dict | None]]:
    """(model, comparison) for the benchmark's primary figure(s)."""
    out = []
    for r in results:
        ps = r["per_sample"]
        model = r["model"]
        if name == "pointing":
            out.append((model, compare(r, lambda m: ps[m]["hit"], True, "hit rate")))
        elif name == "localisation":
            def best_col(m):
                k = r["settings"]["thresholds"].index(r["methods"][m]["best_threshold"])
                return np.asarray(ps[m]["correct"], dtype=np.float64)[:, k]
            out.append((model, compare(r, best_col, True, "accuracy at each method's best "
                                                          "threshold")))
        elif name == "faithfulness":
            for kind, higher in (("deletion", False), ("insertion", True), ("road", False)):
                out.append((model, compare(r, lambda m, k=kind: ps[m][f"{k}_auc"], higher,
                                           f"{kind} AUC")))
        elif name == "correspondence":
            out.append((model, compare(r, lambda m: ps[m]["pck@0.1"], True, "PCK@0.1",
                                       weights=ps["points"], methods=_methods(r))))
    return out


# -- sections ----------------------------------------------------------------------------------
def benchmark_section(name: str, results: list[dict], img_dir: Path | None = None,
                      img_rel: Path | None = None, level: int = 2) -> str:
    """Markdown for one benchmark over all its models (and its plot, if img_dir is given)."""
    head = "#" * level
    parts = [f"{head} {TITLES.get(name, name)}", ""]
    if not results:
        return "\n".join(parts + ["No model was run.", ""])
    settings = results[0]["settings"]
    parts.append(_protocol(name, settings))
    parts.append("")
    parts.append(_table(name, results))
    parts.append("")
    parts.append(_samples_line(results))
    notes = [f"- {r['model']}: {n}" for r in results for n in r.get("notes", [])]
    if notes:
        parts += ["", "Notes:", *notes]
    found = headlines(name, results)
    if found:
        parts += ["", "Headline:", *[headline_text(model, c) for model, c in found]]
    if name == "sanity":
        parts += ["", *_sanity_summary(results)]
    if img_dir is not None:
        plot = plot_benchmark(name, results, Path(img_dir))
        if plot is not None:
            rel = (Path(img_rel) if img_rel is not None else Path(img_dir)) / plot.name
            parts += ["", f"![{TITLES.get(name, name)}]({rel.as_posix()})"]
    parts.append("")
    return "\n".join(parts)


def _samples_line(results: list[dict]) -> str:
    bits = []
    for r in results:
        extra = f", {r['points']} points" if "points" in r else ""
        bits.append(f"{r['model']} {r['samples']} samples{extra} ({r['seconds']:.0f} s)")
    seed = results[0]["seed"]
    return (f"Seed {seed}; samples: " + "; ".join(bits) +
            f"; 95% CIs from {results[0]['bootstrap']} bootstrap resamples.")


def _protocol(name: str, s: dict) -> str:
    if name == "pointing":
        return ("Query: one real item; gallery image: a 2x2 grid of real items, exactly one "
                "matching (same class / scene / person) at a random cell. Hit: the map's "
                "maximal cell lies in the matching cell (chance 0.25). *Mass*: share of the "
                "positive map mass in the matching cell (chance 0.25).")
    if name == "localisation":
        return (f"Matching item pasted at a random position and size ({s['target_scale'][0]:g}-"
                f"{s['target_scale'][1]:g} of the side) over a 2x2 canvas of distractors. Map "
                "upsampled, thresholded at t x max, bounding box of the largest connected "
                f"component; correct when IoU > {s['iou']:g} with the known box. Accuracy per "
                "threshold; *best* picks the threshold on the same samples (as the paper).")
    if name == "faithfulness":
        return ("Image b edited cell by cell in the order of its map, image a fixed; the "
                "model's score normalised by the original score; AUC over the fraction of cells "
                "edited. Deletion (mean fill) and ROAD (noisy linear imputation): lower is "
                "better; insertion (from a blurred image): higher is better.")
    if name == "correspondence":
        return ("Pairs with known geometry (Fashion-MNIST: the same item at two cells of two "
                "composites; photos and faces: a random affine copy). Prediction: argmax of "
                "the map over b for a query point of a. PCK at 0.05 and 0.1 of b's side; mean "
                "error as a fraction of the side (lower is better). Grad-CAM-type methods have "
                "no point maps; *cosine* is raw feature matching at the explained layer.")
    if name == "sanity":
        return ("Cascading randomisation of the model's parameters from the head down; Spearman "
                "correlation of b's map with the original (should fall). Reference "
                "randomisation: mean Spearman correlation of a's maps against different "
                "partners (lower = more pair-specific).")
    return ""


def _table(name: str, results: list[dict]) -> str:
    rows = []
    if name == "pointing":
        for r in results:
            for m in _methods(r):
                f = r["methods"][m]
                rows.append([r["model"], m, fmt(f["hit_rate"]), fmt(f["mass"]),
                             str(f["flat_maps"]), str(f.get("no_map", 0)),
                             str(f["hit_rate"]["n"])])
        return table(["model", "method", "hit rate", "mass in match", "flat maps", "no map",
                      "n"], rows)
    if name == "localisation":
        th = results[0]["settings"]["thresholds"]
        for r in results:
            for m in _methods(r):
                f = r["methods"][m]
                rows.append([r["model"], m] + [fmt_plain(c["mean"], 2) for c in f["accuracy"]] +
                            [f"{fmt(f['best_accuracy'])} (t={f['best_threshold']:g})",
                             str(f["best_accuracy"]["n"])])
        return table(["model", "method"] + [f"t={t:g}" for t in th] + ["best", "n"], rows)
    if name == "faithfulness":
        for r in results:
            for m in _methods(r):
                f = r["methods"][m]
                rows.append([r["model"], m, fmt(f["deletion_auc"]), fmt(f["insertion_auc"]),
                             fmt(f["road_auc"]), str(f["deletion_auc"]["n"])])
        return table(["model", "method", "deletion AUC (lower)", "insertion AUC (higher)",
                      "ROAD AUC (lower)", "n"], rows)
    if name == "correspondence":
        for r in results:
            for m in _methods(r):
                f = r["methods"][m]
                rows.append([r["model"], m, fmt(f["pck@0.05"]), fmt(f["pck@0.1"]),
                             fmt(f["mean_error"]), str(f.get("flat_maps", "n/a")),
                             str(f.get("no_map", 0)), f"{r['samples']} / {r['points']}",
                             "x".join(str(v) for v in r.get("grid", []))])
        return table(["model", "method", "PCK@0.05", "PCK@0.1", "mean error", "flat maps",
                      "no map", "pairs / points", "grid of b"], rows) + _stereo_table(results)
    if name == "sanity":
        blocks = []
        for r in results:
            stages = r["settings"]["stages"]
            rows = []
            for m in _methods(r):
                f = r["methods"][m]
                rows.append([m] + [fmt_plain(c["mean"], 2) for c in f["cascade"]] +
                            [fmt(f["final"]), fmt(f["reference"])])
            blocks.append(f"**{r['model']}** ({r['samples']} pairs, {r['settings']['partners']} "
                          "partners each)\n\n" +
                          table(["method"] + stages + ["final (CI)", "reference"], rows))
        return "\n\n".join(blocks)
    return ""


def _stereo_table(results: list[dict]) -> str:
    """Correspondence on the real stereo pair (scikit-image's motorcycle, true disparity)."""
    rows, skipped = [], []
    for r in results:
        stereo = r.get("stereo") or {}
        if "skipped" in stereo:
            skipped.append(f"- {r['model']}: not run ({stereo['skipped']}).")
            continue
        for m in _methods(stereo):
            f = stereo["methods"][m]
            rows.append([r["model"], m, fmt(f["pck@0.05"]), fmt(f["pck@0.1"]),
                         str(f["flat_maps"]), str(f["no_map"]), str(stereo["points"]),
                         "x".join(str(v) for v in stereo["image_size"]),
                         "x".join(str(v) for v in stereo["grid"])])
    if not rows and not skipped:
        return ""
    text = ("\n\n**Real photos with ground truth**: scikit-image's rectified stereo pair "
            "`stereo_motorcycle` (left view = a, right view = b, resized with the aspect kept); "
            "query points: every cell centre of a with a known disparity whose true point "
            "(same row, column minus the disparity) lies in b; one pair, so the intervals "
            "resample points.")
    if rows:
        text += "\n\n" + table(["model", "method", "PCK@0.05", "PCK@0.1", "flat maps",
                                   "no map", "points", "image", "grid"], rows)
    if skipped:
        text += "\n\n" + "\n".join(skipped)
    return text


def _sanity_summary(results: list[dict]) -> list[str]:
    lines = ["Summary (final-stage Spearman; lower means the map depends on the model):"]
    for r in results:
        bits = []
        for m in _methods(r):
            final = r["methods"][m]["final"]
            if final is None:
                continue
            verdict = "falls" if final["mean"] < 0.5 else "does not fall below 0.5"
            bits.append(f"{m} {fmt_plain(final['mean'], 2)} ({verdict})")
        lines.append(f"- {r['model']}: " + "; ".join(bits) + ".")
    lines.append("- The random method is seeded per sample: its maps ignore the model (final "
                 "correlation 1, it fails by construction) but change with the partner (it "
                 "passes the reference check trivially).")
    return lines


# -- plots -------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


# colour, dashes, width per method: methods that coincide (e.g. the decomposition and
# Grad-CAM on raw embeddings under a GAP head) stay visible as differently dashed lines
STYLES = {
    "decomposition": ("tab:blue", "-", 2.6),
    "relative": ("black", "-", 2.0),
    "point-contribution": ("tab:cyan", "-", 1.6),
    "point-match": ("tab:olive", (0, (3, 1)), 1.6),
    "point-match-centred": ("tab:pink", "-", 1.8),
    "gradcam": ("tab:orange", "-", 2.2),
    "gradcam-raw": ("tab:green", (0, (4, 3)), 1.6),
    "rgradcam": ("tab:red", (0, (1, 2)), 1.8),
    "occlusion": ("tab:purple", "-", 1.4),
    "random": ("tab:brown", (0, (6, 2, 1, 2)), 1.2),
}


def _style(method: str) -> dict:
    colour, dashes, width = STYLES.get(method, (None, "-", 1.4))
    return {"color": colour, "linestyle": dashes, "lw": width, "label": method}


def _legend(fig, axes) -> None:
    handles: dict = {}
    for ax in axes.ravel():
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    ordered = sorted(handles, key=lambda m: ORDER.index(m) if m in ORDER else 99)
    fig.legend([handles[m] for m in ordered], ordered, loc="lower center",
               ncol=min(len(ordered), 7), fontsize=8, frameon=False)


def plot_benchmark(name: str, results: list[dict], img_dir: Path) -> Path | None:
    """Write the benchmark's plot (one panel per model) and return its path."""
    if name not in ("localisation", "faithfulness", "sanity") or not results:
        return None
    plt = _pyplot()
    img_dir.mkdir(parents=True, exist_ok=True)
    n = len(results)
    if name == "faithfulness":
        fig, axes = plt.subplots(n, 3, figsize=(12, 3.2 * n), squeeze=False)
        for row, r in enumerate(results):
            x = r["fractions"]
            for col, (kind, title) in enumerate((("deletion", "deletion (lower AUC better)"),
                                                 ("insertion", "insertion (higher better)"),
                                                 ("road", "ROAD deletion (lower better)"))):
                ax = axes[row, col]
                for m in _methods(r):
                    y = r["methods"][m]["curves"][kind]
                    if y:
                        ax.plot(x, y, **_style(m))
                ax.set_title(f"{r['model']}: {title}", fontsize=9)
                ax.set_xlabel("fraction of cells edited")
                ax.set_ylabel("score / original score")
                ax.grid(alpha=0.3)
    elif name == "localisation":
        fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.4), squeeze=False)
        for col, r in enumerate(results):
            ax = axes[0, col]
            th = r["settings"]["thresholds"]
            for m in _methods(r):
                ax.plot(th, [c["mean"] for c in r["methods"][m]["accuracy"]], marker="o",
                        ms=3, **_style(m))
            ax.set_title(f"{r['model']} (n={r['samples']})", fontsize=9)
            ax.set_xlabel("threshold (fraction of max)")
            ax.set_ylabel("accuracy (IoU > 0.5)")
            ax.set_ylim(0, 1)
            ax.grid(alpha=0.3)
    else:
        fig, axes = plt.subplots(1, n, figsize=(4.6 * n, 3.6), squeeze=False)
        for col, r in enumerate(results):
            ax = axes[0, col]
            stages = ["original"] + r["settings"]["stages"]
            for m in _methods(r):
                ax.plot(range(len(stages)), [1.0] + [c["mean"] for c in
                                                     r["methods"][m]["cascade"]],
                        marker="o", ms=3, **_style(m))
            ax.set_xticks(range(len(stages)))
            ax.set_xticklabels(stages, rotation=35, ha="right", fontsize=7)
            ax.set_title(f"{r['model']} (n={r['samples']})", fontsize=9)
            ax.set_ylabel("Spearman with original map")
            ax.set_ylim(-0.3, 1.05)
            ax.grid(alpha=0.3)
    _legend(fig, axes)
    fig.tight_layout(rect=(0, 0.4 / fig.get_size_inches()[1], 1, 1))
    path = img_dir / f"{name}.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# -- the whole report --------------------------------------------------------------------------
SECTION_ORDER = ("pointing", "localisation", "faithfulness", "correspondence", "sanity")
DATA_NOTES = [
    "- **fmnist-gap, fmnist-gmp**: Fashion-MNIST test items (28 px; 2x2 composites 56 px, a "
    "14x14 grid, 7x7 cells per item). A match is another item of the same class; distractors "
    "have other classes.",
    "- **efficientnet-lite0**: scikit-image's 20 bundled photos (19 scenes: the two motorcycle "
    "photos show one scene). An item is a random crop (40-90% of the area, maybe mirrored); a "
    "match is another crop of the same scene. Queries 224 px; composites 256 px (an 8x8 grid, "
    "4x4 cells per item); correspondence at 448 px (14x14).",
    "- **facenet**: face crops (MTCNN) of the face_recognition test photos: 5 photos of one "
    "person (obama; 32bit.png is a copy of obama2.jpg and is left out), 1 of biden, plus the "
    "astronaut photo's face. Queries and matches are therefore always two different photos of "
    "the same person, drawn from 5, and distractors come from 2 other people (repeated as "
    "other crops): the intervals describe these draws, not faces in general. Queries 160 px; "
    "composites 320 px (an 8x8 grid).",
    "- Every sample is drawn from a seed derived from the run's seed and the sample's index, "
    "the same for every method, so methods are compared on the same samples.",
    "",
    "Reading the tables: under a GAP head with a linear (or no) projection, Grad-CAM on raw "
    "embeddings ranks cells exactly like the decomposition's overall map (METHOD.md: they agree "
    "up to Grad-CAM's ReLU and a positive scale), and RGrad-CAM equals Grad-CAM (the gradient "
    "is the same at every position), so identical rows are expected there; GMP heads break "
    "both equalities. The relative map equals Grad-CAM on the cosine before its ReLU under a "
    "GAP head (METHOD.md, \"Relative maps\"), so their hits agree there except where "
    "Grad-CAM's ReLU leaves nothing. Occlusion costs one forward pass per feature cell and "
    "runs on the first samples only where the notes say so. The random method is seeded per "
    "sample. Faithfulness and sanity compare every method in one form, its positive part "
    "(Grad-CAM is ReLU'd by definition), so there the overall map and Grad-CAM on raw "
    "embeddings coincide under a GAP head.",
]


def summary_table(results: dict[str, list[dict]]) -> str:
    rows = []
    for name in SECTION_ORDER:
        for model, c in headlines(name, results.get(name, [])):
            if c is None:
                continue
            better = "higher" if c["higher"] else "lower"
            d = c.get("decomposition_vs_baseline")
            best = " = ".join([c["best"]] + c["tied"])
            runner = (f"{c['runner_up']} ({fmt_plain(c['means'][c['runner_up']])})"
                      if c["runner_up"] else "-")
            rows.append([
                name, f"{c['label']} ({better} better)", model,
                f"{best} ({fmt_plain(c['means'][c['best']])})", runner,
                fmt(c["margin"]) if c["margin"] else "n/a",
                f"{c['decomposition']} - {c['best_baseline']}: {fmt(d)}" if d else "n/a",
                _verdict(c)])
    return table(["benchmark", "figure", "model", "best", "runner-up", "margin (paired, 95% CI)",
                  "decomposition - best non-random baseline", "baseline wins"], rows)


def in_brief(results: dict[str, list[dict]]) -> list[str]:
    """One line per benchmark figure: where the decomposition is best, tied, or beaten."""
    lines = []
    for name in SECTION_ORDER:
        figures: dict[str, list[tuple[str, dict]]] = {}
        for model, c in headlines(name, results.get(name, [])):
            if c is not None and "baseline_wins" in c:
                figures.setdefault(c["label"], []).append((model, c))
        for label, entries in figures.items():
            best = [m for m, c in entries if c["best"] in DECOMPOSITION or
                    any(t in DECOMPOSITION for t in c["tied"])]
            beaten = [f"{m} ({c['best_baseline']})" for m, c in entries
                      if c["baseline_wins_significant"]]
            close = [m for m, c in entries if c["baseline_wins"] and
                     not c["baseline_wins_significant"]]
            text = (f"- {TITLES[name].split(':')[0]}, {label}: the decomposition is best (or "
                    f"tied) on {len(best)} of {len(entries)} models"
                    + (f" ({', '.join(best)})" if best else ""))
            if beaten:
                text += f"; a baseline wins outright on {', '.join(beaten)}"
            if close:
                text += f"; a baseline is ahead within the CI on {', '.join(close)}"
            lines.append(text + ".")
    if "sanity" in results:
        for r in results["sanity"]:
            kept = [m for m in _methods(r) if m != "random" and r["methods"][m]["final"] and
                    r["methods"][m]["final"]["mean"] >= 0.5]
            if kept:
                lines.append(f"- Sanity, {r['model']}: after full randomisation the maps of "
                             f"{', '.join(kept)} still correlate >= 0.5 with the originals.")
    return lines


DEFAULT_POINT_METHOD = f"point-{DEFAULT_POINT_MAP}"


def map_checks(results: dict[str, list[dict]]) -> list[list[str]]:
    """Rows: the relative map vs Grad-CAM and vs the overall map, the default point map vs raw
    feature cosine (and the best point-map kind vs cosine), per benchmark and model."""
    rows = []

    def add(bench, model, x, y, values, higher, weights=None, seed=0):
        if x not in values or y not in values:
            return
        a = np.asarray(values[x], dtype=np.float64)
        b = np.asarray(values[y], dtype=np.float64)
        keep = np.isfinite(a) & np.isfinite(b)
        if not keep.any():
            return
        w = None if weights is None else np.asarray(weights, dtype=np.float64)[keep]
        d = paired_difference(a[keep], b[keep], weights=w, seed=seed)
        mean = (lambda v: float((v * w).sum() / w.sum())) if w is not None else np.mean
        better = d["lo"] > 0 if higher else d["hi"] < 0
        worse = d["hi"] < 0 if higher else d["lo"] > 0
        verdict = ("identical" if np.allclose(a[keep], b[keep], atol=1e-9) else
                   f"{x} better" if better else f"{y} better" if worse else "within the CI")
        rows.append([bench, model, f"{x} - {y}",
                     f"{fmt_plain(mean(a[keep]))} vs {fmt_plain(mean(b[keep]))}", fmt(d),
                     verdict])

    for r in results.get("pointing", []):
        values = {m: v["hit"] for m, v in r["per_sample"].items()}
        add("pointing (hit rate)", r["model"], "relative", "gradcam", values, True,
            seed=r["seed"])
        add("pointing (hit rate)", r["model"], "relative", "decomposition", values, True,
            seed=r["seed"])
        add("pointing (hit rate)", r["model"], DEFAULT_POINT_METHOD, "gradcam", values, True,
            seed=r["seed"])
    for r in results.get("localisation", []):
        th = r["settings"]["thresholds"]
        values = {m: np.asarray(v["correct"], dtype=np.float64)[
            :, th.index(r["methods"][m]["best_threshold"])] for m, v in r["per_sample"].items()}
        add("localisation (best t)", r["model"], "relative", "decomposition", values, True,
            seed=r["seed"])
        add("localisation (best t)", r["model"], "relative", "gradcam", values, True,
            seed=r["seed"])
    for r in results.get("faithfulness", []):
        for kind, higher in (("deletion", False), ("insertion", True)):
            values = {m: v[f"{kind}_auc"] for m, v in r["per_sample"].items()}
            add(f"faithfulness ({kind} AUC)", r["model"], "relative", "decomposition", values,
                higher, seed=r["seed"])
    for r in results.get("correspondence", []):
        ps = r["per_sample"]
        values = {m: v["pck@0.1"] for m, v in ps.items() if isinstance(v, dict)}
        add("correspondence (PCK@0.1)", r["model"], DEFAULT_POINT_METHOD, "cosine", values,
            True, weights=ps["points"], seed=r["seed"])
        stereo = r.get("stereo") or {}
        if "per_point" in stereo:
            values = {m: v["pck@0.1"] for m, v in stereo["per_point"].items()}
            add("stereo photos (PCK@0.1)", r["model"], DEFAULT_POINT_METHOD, "cosine", values,
                True, seed=r["seed"])
    return rows


def write_report(results: dict[str, list[dict]], out: Path, meta: dict,
                 interactive: dict | None = None, interactive_table: str | None = None,
                 img_subdir: str = "img/benchmarks") -> Path:
    """Write BENCHMARKS.md (and the plots under `img_subdir`) into `out`."""
    out = Path(out)
    img_dir = out / img_subdir
    img_dir.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Benchmarks",
        "",
        "How well do the maps explain the models? Seven saliency methods (the exact "
        "decomposition's overall and relative maps, Grad-CAM on normalised and raw embeddings, "
        "RGrad-CAM, occlusion, random) and the decomposition's point maps of three kinds "
        "(contribution, match, match-centred) against raw feature matching, on the zoo "
        "models, with real items from Fashion-MNIST, scikit-image's photos and the face photos. "
        "Every figure is the mean over samples with a 95% percentile-bootstrap confidence "
        f"interval ({meta.get('bootstrap')} resamples) as `mean [low, high]`; comparisons between "
        "methods are paired (every method sees the same samples).",
        "",
        f"Regenerate this file with `{meta['command']}` "
        f"({'quick mode' if meta.get('quick') else 'full run'}: {meta['runtime_s'] / 60:.1f} "
        f"minutes on {meta.get('machine', 'this machine')}). The quick check is "
        "`simexplain eval all --quick --out DIR`. Each benchmark also runs alone: "
        "`simexplain eval pointing|localisation|faithfulness|correspondence|sanity --model NAME "
        "--method M --out DIR [--json]`.",
        "",
        f"- Seed: {meta['seed']} (every draw is derived from it and the sample's index)",
        f"- Models: {', '.join(meta['models']) or 'none'}",
        f"- Methods: {', '.join(meta['methods'])}",
        f"- torch {meta.get('torch')}, {meta.get('threads')} CPU threads, {meta.get('date')}",
    ]
    for model, why in meta.get("skipped", {}).items():
        lines.append(f"- Skipped model {model}: {why}")
    lines += ["", "## Summary", "",
              "Primary figure of each benchmark: the best method (methods with identical "
              "per-sample values are tied, e.g. Grad-CAM and RGrad-CAM under a GAP head), the "
              "runner-up, their paired difference (best - runner-up, on the samples both ran: "
              "occlusion runs on fewer samples for cost), and the best decomposition variant "
              "(overall map, or the point map where the benchmark has one) minus the best "
              "non-random baseline: positive is better for the decomposition where higher is "
              "better, negative where lower is better. *Baseline wins* says whether a baseline "
              "beats the decomposition and whether its 95% CI excludes a tie. Methods run on "
              "fewer than half of the samples (occlusion on the larger models, for cost) are "
              "not ranked here; each section's headline compares them with the best method on "
              "their own samples.", "",
              summary_table(results), "", "In brief (generated from the table above):", "",
              *in_brief(results), ""]
    checks = map_checks(results)
    if checks:
        lines += ["## The three maps against their baselines", "",
                  "Paired differences (95% CI) on the same samples: the relative map against "
                  "Grad-CAM and against the overall map, and the default point map "
                  f"(`{DEFAULT_POINT_METHOD}`) against raw feature cosine. Positive favours the "
                  "first method where higher is better (hit rate, accuracy, insertion, PCK), "
                  "negative where lower is better (deletion).", "",
                  table(["benchmark", "model", "comparison", "means", "difference", "verdict"],
                        checks), ""]
    lines += ["## Data", "", *DATA_NOTES, ""]
    for name in SECTION_ORDER:
        if name in results:
            lines.append(benchmark_section(name, results[name], img_dir, Path(img_subdir)))
    lines += ["## Interactive retrieval", ""]
    if interactive_table:
        lines += ["Region queries (the partial similarity of a marked region, METHOD.md) against "
                  "global queries; from `simexplain.evaluation.interactive` "
                  "(`simexplain eval interactive`).", "", interactive_table.strip(), ""]
        if interactive and interactive.get("protocol"):
            lines += [f"Protocol: {interactive['protocol']}.", ""]
    else:
        lines += [(interactive or {}).get("error", "Not run."), ""]
    path = out / "BENCHMARKS.md"
    path.write_text("\n".join(lines) + "\n")
    return path
