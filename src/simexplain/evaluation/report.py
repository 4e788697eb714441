"""The benchmark report, generic: sections, summary and plots from what each benchmark declares.

A benchmark module (pointing.py, ...) owns its words and figures: NAME, TITLE,
`protocol_text(settings)`, `results_table(results)`, `headline_comparisons(result)` (its
primary figure(s) compared across methods with `compare`), and optionally
`plot_results(results, img_dir)`, `extra_lines(results)` (after the headline) and
`brief_lines(results)` (for the report's summary). This module formats, compares and lays them
out; it never names a benchmark.

Every figure is shown as ``mean [low, high]`` with its 95% percentile-bootstrap interval.
Headlines compare the best method with the runner-up by a *paired* bootstrap over the same
samples (all methods see the same samples), and say plainly where a baseline beats the
decomposition.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ..files import json_default, write_text_atomic
from ..methods import METHODS as _REGISTRY
from .common import ALL_METHODS, paired_difference, POINT_METHODS
from .map_checks import DEFAULT_POINT_METHOD, map_checks
from .tables import fmt, fmt_plain, markdown_table

BASELINES_NOTE = "baseline"
ORDER = ALL_METHODS + tuple(POINT_METHODS) + ("cosine",)
Benchmarks = Sequence[ModuleType]  # the benchmark modules a report covers, in order
# the decomposition's own maps: overall, relative and point maps of every kind
DECOMPOSITION = ("decomposition", "relative") + tuple(POINT_METHODS)
# the baselines that explain class-token transformers only (attention rollout, ...)
ATTENTION_METHODS = tuple(m for m, cls in _REGISTRY.items() if cls.needs_attention)


# -- files -------------------------------------------------------------------------------------
def clean(value: Any) -> Any:
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


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (a temporary file renamed into place)."""
    write_text_atomic(path, json.dumps(clean(data), separators=(",", ":"), default=json_default))


# -- formatting --------------------------------------------------------------------------------
def methods_of(result: dict) -> list[str]:
    """The result's methods in display order."""
    return sorted(result["methods"], key=lambda m: ORDER.index(m) if m in ORDER else 99)


# -- headline comparisons ----------------------------------------------------------------------
def compare(result: dict, values_of: Callable[..., Any], higher: bool, label: str,
            weights: ArrayLike | None = None,
            methods: list[str] | None = None) -> dict | None:
    """Best method by mean of per-sample values; paired margin to the runner-up (the best
    method whose values differ: methods with identical values are reported as tied) and the
    best decomposition variant's paired difference to the best baseline."""
    methods = methods or methods_of(result)
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
    baselines = [m for m in ranked if m not in DECOMPOSITION and not _control(m)]
    if decomp and baselines:
        d, b = decomp[0], baselines[0]
        gap = diff(d, b)
        better = means[b] > means[d] if higher else means[b] < means[d]
        significant = gap["n"] > 1 and not (gap["lo"] <= 0 <= gap["hi"])
        out.update(decomposition=d, best_baseline=b, decomposition_vs_baseline=gap,
                   baseline_wins=bool(better and not same(d, b)),
                   baseline_wins_significant=bool(better and significant))
    if _control(best):
        out["random_wins"] = True
    return out


def _control(method: str) -> bool:
    """A control such as random (the registry says), not a baseline explanation."""
    return method in _REGISTRY and _REGISTRY[method].control


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


def headlines(module: ModuleType, results: list[dict]) -> list[tuple[str, dict | None]]:
    """(model, comparison) for the benchmark's primary figure(s), model by model."""
    return [(r["model"], c) for r in results for c in module.headline_comparisons(r)]


# -- sections ----------------------------------------------------------------------------------
def benchmark_section(module: ModuleType, results: list[dict], img_dir: Path | None = None,
                      img_rel: Path | None = None, level: int = 2) -> str:
    """Markdown for one benchmark module over all its models (and its plot, if img_dir is
    given)."""
    head = "#" * level
    title = getattr(module, "TITLE", module.NAME)
    parts = [f"{head} {title}", ""]
    if not results:
        return "\n".join(parts + ["No model was run.", ""])
    parts += [module.protocol_text(results[0]["settings"]), "", module.results_table(results),
              "", _samples_line(results)]
    notes = [f"- {r['model']}: {n}" for r in results for n in r.get("notes", [])]
    if notes:
        parts += ["", "Notes:", *notes]
    found = headlines(module, results)
    if found:
        parts += ["", "Headline:", *[headline_text(model, c) for model, c in found]]
    if hasattr(module, "extra_lines"):
        parts += ["", *module.extra_lines(results)]
    if img_dir is not None and hasattr(module, "plot_results"):
        plot = module.plot_results(results, Path(img_dir))
        if plot is not None:
            rel = (Path(img_rel) if img_rel is not None else Path(img_dir)) / plot.name
            parts += ["", f"![{title}]({rel.as_posix()})"]
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


# -- plots -------------------------------------------------------------------------------------
def pyplot() -> Any:  # matplotlib.pyplot, imported on first use
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
    "attention-rollout": ("tab:gray", "-", 1.8),
    "chefer": ("darkgoldenrod", (0, (5, 2)), 1.8),
    "gradcam-tokens": ("darkred", "-", 1.6),
    "random": ("tab:brown", (0, (6, 2, 1, 2)), 1.2),
}


def style(method: str) -> dict:
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


def finish_plot(fig: Any, axes: Any, path: Path) -> Path:
    """Add the shared method legend below the panels, save the figure to `path`, close it."""
    _legend(fig, axes)
    fig.tight_layout(rect=(0, 0.4 / fig.get_size_inches()[1], 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    pyplot().close(fig)
    return path


# -- the whole report --------------------------------------------------------------------------
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
    "- **fmnist-vit**: a class-token vision transformer trained here on Fashion-MNIST, fed like "
    "fmnist-gap (28 px items, 56 px composites); the transformer baselines run on it (see "
    "Transformers).",
    "- **fmnist-sketch** (crossview only): two streams trained here; a is an edge sketch of "
    "a Fashion-MNIST test item under a recorded random affine map, b the item (28 px, 7x7 "
    "grids).",
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


def summary_table(results: dict[str, list[dict]], benchmarks: Sequence[ModuleType]) -> str:
    rows = []
    for module in benchmarks:
        name = module.NAME
        for model, c in headlines(module, results.get(name, [])):
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
    return markdown_table(["benchmark", "figure", "model", "best", "runner-up",
                           "margin (paired, 95% CI)", "decomposition - best non-random baseline",
                           "baseline wins"], rows)


def in_brief(results: dict[str, list[dict]], benchmarks: Sequence[ModuleType]) -> list[str]:
    """One line per benchmark figure: where the decomposition is best, tied, or beaten."""
    lines = []
    for module in benchmarks:
        figures: dict[str, list[tuple[str, dict]]] = {}
        for model, c in headlines(module, results.get(module.NAME, [])):
            if c is not None and "baseline_wins" in c:
                figures.setdefault(c["label"], []).append((model, c))
        for label, entries in figures.items():
            best = [m for m, c in entries if c["best"] in DECOMPOSITION or
                    any(t in DECOMPOSITION for t in c["tied"])]
            beaten = [f"{m} ({c['best_baseline']})" for m, c in entries
                      if c["baseline_wins_significant"]]
            close = [m for m, c in entries if c["baseline_wins"] and
                     not c["baseline_wins_significant"]]
            title = getattr(module, "TITLE", module.NAME).split(":")[0]
            text = (f"- {title}, {label}: the decomposition is best (or "
                    f"tied) on {len(best)} of {len(entries)} models"
                    + (f" ({', '.join(best)})" if best else ""))
            if beaten:
                text += f"; a baseline wins outright on {', '.join(beaten)}"
            if close:
                text += f"; a baseline is ahead within the CI on {', '.join(close)}"
            lines.append(text + ".")
    for module in benchmarks:
        if hasattr(module, "brief_lines") and results.get(module.NAME):
            lines += module.brief_lines(results[module.NAME])
    return lines


TRANSFORMER_TEXT = [
    "On a class-token vision transformer explained at a token layer (a block's output: a class "
    "token, maybe registers, then a square grid of patch tokens), the benchmarks also run the "
    "explanation methods people use on transformers, written from their papers "
    "(`simexplain.methods`; the attention weights are captured by `simexplain.attention`):",
    "",
    "- `attention-rollout` (Abnar & Zuidema 2020): per block the attention averaged over "
    "heads plus the identity, rows normalised, multiplied from the first block to the last; "
    "the class token's row over the patch tokens. It depends on one image only, never on the "
    "partner or the similarity.",
    "- `chefer` (Chefer, Gur & Wolf 2021): R = I; per block R = R + mean over heads of "
    "ReLU(ds/dA * A) R, with s the pair's similarity (the other image's embedding fixed); the "
    "class token's row of R over the patch tokens.",
    "- `gradcam-tokens`: Grad-CAM with the tokens entering the last block as the feature map "
    "(weights: the mean over patch tokens of ds/dA; map: ReLU of the weighted sum). The "
    "tokens the last block outputs are no use under a class-token head: only the class token "
    "reaches the embedding, the gradient at every patch token is 0.",
    "",
    "They are compared with the decomposition's overall and relative maps (and the other "
    "baselines) in pointing, localisation, faithfulness and sanity; correspondence compares "
    "point maps, which none of these baselines has, so there the decomposition's point maps "
    "are compared with raw feature cosine as for every model. On models without self-attention "
    "they do not run.",
]


def transformer_section(results: dict[str, list[dict]], benchmarks: Sequence[ModuleType]
                        ) -> list[str]:
    """The Transformers section: the attention baselines, and the headline figure of every
    benchmark on the models they ran on, method by method."""
    lines = ["## Transformers", "", *TRANSFORMER_TEXT, ""]
    rows, shown = [], []
    for module in benchmarks:
        for r in results.get(module.NAME, []):
            if not any(m in r["methods"] for m in ATTENTION_METHODS):
                continue
            for c in module.headline_comparisons(r):
                if c is None:
                    continue
                shown += [m for m in methods_of(r) if m in c["means"] and m not in shown]
                rows.append((module.NAME, c, r["model"]))
    if not rows:
        return lines + ["No class-token transformer was among the models run. `simexplain eval "
                        "all --out docs` includes fmnist-vit where the zoo has it (`--model "
                        "fmnist-vit --out DIR`: that model alone; `simexplain eval pointing "
                        "--model fmnist-vit --method attention-rollout --out DIR`: one benchmark "
                        "and method).", ""]
    shown = sorted(shown, key=lambda m: ORDER.index(m) if m in ORDER else 99)
    table = [[name, f"{c['label']} ({'higher' if c['higher'] else 'lower'} better)", model] +
             [fmt_plain(c["means"].get(m)) for m in shown] for name, c, model in rows]
    return lines + ["Mean of each benchmark's headline figure on those models (the sections "
                    "below give the intervals and the paired comparisons; sanity is in its "
                    "own section):", "",
                    markdown_table(["benchmark", "figure", "model", *shown], table), ""]


def _meta_notes(meta: dict) -> list[str]:
    """The header's lines on skipped models and on sections run apart (added to an earlier
    run's benchmarks.json, then `render`)."""
    lines = [f"- Skipped model {model}: {why}" for model, why in meta.get("skipped", {}).items()]
    return lines + [f"- {note}" for note in meta.get("notes", [])]


def write_report(results: dict[str, list[dict]], out: Path, meta: dict, benchmarks: Benchmarks,
                 interactive: dict | None = None, interactive_table: str | None = None,
                 img_subdir: str = "img/benchmarks") -> Path:
    """Write BENCHMARKS.md (and the plots under `img_subdir`) into `out`: one section per
    benchmark module, in the order given."""
    out = Path(out)
    img_dir = out / img_subdir
    img_dir.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Benchmarks",
        "",
        "How well do the maps explain the models? Seven saliency methods (the exact "
        "decomposition's overall and relative maps, Grad-CAM on normalised and raw embeddings, "
        "RGrad-CAM, occlusion, random), on class-token vision transformers three more "
        "(attention rollout, Chefer et al.'s gradient-weighted attention relevance, Grad-CAM on "
        "the last block's tokens), and the decomposition's point maps of three kinds "
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
        "`simexplain eval pointing|localisation|faithfulness|correspondence|sanity|crossview|"
        "shortcut --model NAME "
        "--method M --out DIR [--json]`.",
        "",
        f"- Seed: {meta['seed']} (every draw is derived from it and the sample's index)",
        f"- Models: {', '.join(meta['models']) or 'none'}",
        f"- Methods: {', '.join(meta['methods'])}",
        f"- torch {meta.get('torch')}, {meta.get('threads')} CPU threads, {meta.get('date')}",
    ]
    lines += _meta_notes(meta)
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
              summary_table(results, benchmarks), "",
              "In brief (generated from the table above):", "", *in_brief(results, benchmarks),
              ""]
    checks = map_checks(results)
    if checks:
        lines += ["## The three maps against their baselines", "",
                  "Paired differences (95% CI) on the same samples: the relative map against "
                  "Grad-CAM and against the overall map, and the default point map "
                  f"(`{DEFAULT_POINT_METHOD}`) against raw feature cosine. Positive favours the "
                  "first method where higher is better (hit rate, accuracy, insertion, PCK), "
                  "negative where lower is better (deletion).", "",
                  markdown_table(["benchmark", "model", "comparison", "means", "difference",
                                  "verdict"], checks), ""]
    lines += transformer_section(results, benchmarks)
    lines += ["## Data", "", *DATA_NOTES, ""]
    for module in benchmarks:
        if module.NAME in results:
            lines.append(benchmark_section(module, results[module.NAME], img_dir,
                                           Path(img_subdir)))
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
