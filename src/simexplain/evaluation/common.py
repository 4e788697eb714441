"""Shared parts of the benchmarks: models and their settings, maps by any method, statistics.

Every benchmark feeds the explainer ready tensors built from PIL images at exactly the size
the benchmark wants (``to_tensor``), so composites of any size reach the model unresized and
the known boxes stay valid in the model's own pixel frame.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar
import dataclasses
import math
import time
from dataclasses import dataclass
from collections.abc import Iterable, Sequence

import numpy as np
from numpy.typing import ArrayLike
import torch
from PIL import Image

from ..errors import SimexplainError, first_line
from ..sides import pick
from ..methods import METHODS as _REGISTRY
# the methods, point methods and models the benchmarks share (light: their command lines)
from .options import ALL_METHODS, MODELS, POINT_METHODS

if TYPE_CHECKING:
    from ..explainer import Explainer
    from ..explanation import PairExplanation
    from .composites import ItemSource
    from .options import Standard

T = TypeVar("T")

BOOTSTRAP = 2000  # bootstrap resamples for every confidence interval


# -- models -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSetup:
    """How the benchmarks feed one zoo model.

    domain: which real items the model is shown ("fmnist", "photos", "faces").
    single: side in pixels of a single item (query images, faithfulness pairs).
    cell: side of one item in a 2x2 composite (the composite is 2 * cell).
    corr: side of the images in the correspondence benchmark.
    occlusion_cap: occlusion (one forward pass per feature cell, 10-60x the cost of the
    other methods on a CPU) runs on the first `occlusion_cap` samples only; 0 leaves it out,
    None runs it everywhere. Benchmarks may set their own caps (their OCCLUSION_CAPS).
    """

    name: str
    domain: str
    single: int
    cell: int
    corr: int
    occlusion_cap: int | None = None


SETUPS = {
    "fmnist-gap": ModelSetup("fmnist-gap", "fmnist", 28, 28, 56, occlusion_cap=80),
    "fmnist-gmp": ModelSetup("fmnist-gmp", "fmnist", 28, 28, 56, occlusion_cap=80),
    "fmnist-vit": ModelSetup("fmnist-vit", "fmnist", 28, 28, 56, occlusion_cap=80),
    # 2 x 128 px = 256 px: an 8x8 grid, 4x4 cells per item
    "efficientnet-lite0": ModelSetup("efficientnet-lite0", "photos", 224, 128, 448,
                                     occlusion_cap=10),
    # 2 x 160 px = 320 px: an 8x8 grid
    "facenet": ModelSetup("facenet", "faces", 160, 160, 320, occlusion_cap=5),
    # two streams (sketch, item): only the crossview benchmark runs it (not in MODELS)
    "fmnist-sketch": ModelSetup("fmnist-sketch", "sketch", 28, 28, 28, occlusion_cap=0),
}
QUICK_OCCLUSION_CAP = 5
_PROBE_SALT = 12345  # the probe pair that decides which methods apply (`applicable`)


def method_cap(setup: ModelSetup, method: str, quick: bool = False,
               caps: dict | None = None) -> int | None:
    """How many samples `method` runs on for this model (None: all). `caps` (model -> cap)
    replaces the model's default occlusion cap for one benchmark (caps apply to the methods
    that cost a forward pass per feature cell)."""
    if method not in _REGISTRY or not _REGISTRY[method].per_cell_cost:
        return None
    cap = caps[setup.name] if caps and setup.name in caps else setup.occlusion_cap
    if quick:
        return QUICK_OCCLUSION_CAP if cap is None else min(cap, QUICK_OCCLUSION_CAP)
    return cap


def runs_on(setup: ModelSetup, method: str, index: int, quick: bool = False,
            caps: dict | None = None) -> bool:
    """Does `method` run on sample `index`? (See ModelSetup.occlusion_cap.)"""
    cap = method_cap(setup, method, quick, caps)
    return cap is None or index < cap


def cap_notes(setup: ModelSetup, methods: Iterable[str], samples: int, quick: bool = False,
              caps: dict | None = None) -> list[str]:
    notes = []
    for m in methods:
        cap = method_cap(setup, m, quick, caps)
        if cap is not None and cap < samples:
            notes.append(f"{m}: left out (too slow for this model on a CPU)" if cap == 0 else
                         f"{m}: first {cap} of {samples} samples only (cost)")
    return notes


def usable_methods(setup: ModelSetup, methods: Iterable[str], quick: bool = False,
                   caps: dict | None = None) -> list[str]:
    """The methods minus those this model leaves out altogether (cap 0)."""
    return [m for m in methods if method_cap(setup, m, quick, caps) != 0]


def available_models(wanted: Iterable[str] | None = None) -> tuple[list[str], dict[str, str]]:
    """(models that load, {model: why skipped}) for the benchmark models (or those wanted)."""
    from .. import zoo
    names = list(wanted) if wanted is not None else list(MODELS)
    listed = set(zoo.list())
    ok, skipped = [], {}
    for name in names:
        if name not in SETUPS:
            skipped[name] = "not a benchmark model (choose from " + ", ".join(MODELS) + ")"
        elif name not in listed:
            skipped[name] = "not in this installation's zoo"
        else:
            try:
                zoo.model(name)
                ok.append(name)
            except Exception as exc:  # noqa: BLE001 - missing weights, packages ...
                skipped[name] = f"cannot be loaded: {first_line(exc, 200)}"
    return ok, skipped


def load_model(name: str) -> tuple[Explainer, ModelSetup]:
    """(Explainer, ModelSetup) for a benchmark model."""
    from .. import zoo
    if name not in SETUPS:
        raise SimexplainError(
            f"no benchmark settings for model {name!r}; choose from {', '.join(MODELS)}")
    if name not in zoo.list():
        raise SimexplainError(f"model {name!r} is not available in this installation's zoo")
    return zoo.load(name), SETUPS[name]


def to_tensor(explainer: Explainer, image: Image.Image, side: str = "a") -> torch.Tensor:
    """(1, C, H, W) model input of a PIL image at its own size (no resizing), through the
    model's input pipeline (items are already the crops the model should see)."""
    from ..inputs import InputPipeline
    transform = explainer.inputs(side).transform
    if dataclasses.is_dataclass(transform) and hasattr(transform, "size"):
        transform = dataclasses.replace(transform, size=(image.height, image.width))
    return InputPipeline(transform).prepare(image).tensor.to(explainer.stream(side).device)


def start_run(model: str, methods: Sequence[str] | None, samples: int | None, quick: bool,
              options: Standard, unlisted_samples: int
              ) -> tuple[list[str], int, Explainer, ModelSetup, ItemSource]:
    """What every benchmark's run() starts with: the methods asked for (checked against
    `options.allowed`), the sample count (its default: `options`' for the model,
    `unlisted_samples` for a model it does not list), the loaded model, its settings and its
    item source."""
    from .composites import item_source
    if model in SETUPS and model not in MODELS:
        raise SimexplainError(f"this benchmark runs on {', '.join(MODELS)}, not {model!r} (the "
                              "two-stream fmnist-sketch has its own: `simexplain eval crossview`)")
    requested = resolve_methods(methods, options.allowed)
    samples = samples or options.samples(model, quick, unlisted_samples)
    explainer, setup = load_model(model)
    source = item_source(setup.domain)
    named = [] if not methods or "all" in methods else requested
    return (applicable(explainer, setup, source, requested, named), samples, explainer, setup,
            source)


def applicable(explainer: Explainer, setup: ModelSetup, source: ItemSource, methods: Sequence[str],
               named: Sequence[str] = ()) -> list[str]:
    """The methods that can explain this model: those that need attention (the transformer
    baselines) only where the model is a class-token transformer, decided on one probe pair
    of its items. Left out silently where they came with 'all' (or by default); a method
    asked for by name that cannot run is an error naming why."""
    from ..errors import NotApplicable
    from ..methods import PreparedPair
    needs = [m for m in methods if m in _REGISTRY and _REGISTRY[m].needs_attention]
    if not needs:
        return list(methods)
    rng = np.random.default_rng(sample_seed(0, 0, _PROBE_SALT))
    item_a, item_b = source.pair(rng, setup.single)
    pair = PreparedPair.of(explainer, to_tensor(explainer, item_a.image, "a"),
                           to_tensor(explainer, item_b.image, "b"))
    out = []
    for m in methods:
        if m in needs:
            try:
                _REGISTRY[m]().check(explainer, pair)
            except NotApplicable as exc:
                if m in named:
                    raise SimexplainError(f"method {m!r} cannot run on {setup.name}: {exc}"
                                          ) from None
                continue
        out.append(m)
    return out


def resolve_methods(requested: Sequence[str] | None, allowed: Sequence[str] = ALL_METHODS
                    ) -> list[str]:
    """Expand 'all' and check names against the methods a benchmark supports."""
    if not requested:
        return list(allowed)
    out: list[str] = []
    for name in requested:
        names = allowed if name == "all" else [name]
        for n in names:
            if n not in allowed:
                raise SimexplainError(
                    f"method {n!r} is not supported here; choose from {', '.join(allowed)} "
                    "or 'all'")
            if n not in out:
                out.append(n)
    return out


# -- maps -------------------------------------------------------------------------------------
def method_map(explainer: Explainer, method: str, a: torch.Tensor, b: torch.Tensor, side: str = "b",
               seed: int = 0) -> torch.Tensor:
    """One image's overall map (on its feature grid) for the pair (a, b), by `method`.

    Only the side asked for is computed where that saves work (occlusion); seeded methods
    (random) are seeded per call, so a sample's map depends on the seed only, never on the model.
    """
    from ..methods import get_method, method_class
    cls = method_class(method)
    maps = (get_method(method, seed=seed) if cls.seeded else cls()).attribute(explainer, a, b,
                                                                             sides=side)
    return pick(side, *maps).detach().float().cpu()


def positive_form(grid_map: torch.Tensor | np.ndarray) -> torch.Tensor:
    """The form every method is compared in where a benchmark ranks cells (sanity,
    faithfulness): the positive part, as displayed (Grad-CAM's maps are ReLU'd by definition;
    signed maps are ReLU'd too, so no method's negative cells carry an order the others lack).
    Cells tied at 0 are then ordered the same way for every method."""
    return torch.relu(torch.as_tensor(grid_map, dtype=torch.float32))


def point_map(result: PairExplanation, side: str, point: Sequence[float], method: str
              ) -> torch.Tensor | None:
    """The point map of a POINT_METHODS method, or None where the point has no map (no
    contribution: NoPointMap), which benchmarks count apart from wrong answers."""
    from ..errors import NoPointMap
    try:
        return result.point_map(side, point, kind=POINT_METHODS[method]).float()
    except NoPointMap:
        return None


def score(explainer: Explainer, a: torch.Tensor, b: torch.Tensor, e_a: torch.Tensor | None = None
          ) -> torch.Tensor:
    """Similarity of a (1 image; or its embedding e_a) with every image of the batch b."""
    if e_a is None:
        e_a = explainer.stream_a.embed(a)[0]
    e_b = torch.cat([explainer.stream_b.embed(chunk) for chunk in b.split(32)])
    return explainer.similarity.score(e_a, e_b).detach().float().cpu()


def is_flat(grid_map: torch.Tensor | np.ndarray) -> bool:
    """Are all values of the map equal (no maximum to point at)?"""
    values = np.asarray(grid_map, dtype=np.float64)
    return bool(values.max() - values.min() <= 1e-12 * max(1.0, abs(values.max())))


# -- statistics --------------------------------------------------------------------------------
def bootstrap_ci(values: ArrayLike, weights: ArrayLike | None = None, seed: int = 0,
                 n_boot: int = BOOTSTRAP,
                 level: float = 0.95) -> dict:
    """Mean and percentile bootstrap CI of (weighted) per-sample values.

    With weights (e.g. the number of points of each pair), samples are resampled whole and the
    statistic is sum(w * v) / sum(w): a cluster bootstrap. NaNs are left out.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    w = np.ones_like(v) if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    keep = np.isfinite(v) & (w > 0)
    v, w = v[keep], w[keep]
    n = len(v)
    if n == 0:
        return {"mean": math.nan, "lo": math.nan, "hi": math.nan, "n": 0}
    mean = float((v * w).sum() / w.sum())
    if n == 1:
        return {"mean": mean, "lo": mean, "hi": mean, "n": 1}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    stats = (v[idx] * w[idx]).sum(1) / np.maximum(w[idx].sum(1), 1e-300)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(stats, [alpha, 1 - alpha])
    return {"mean": mean, "lo": float(min(lo, mean)), "hi": float(max(hi, mean)), "n": n}


def paired_difference(x: ArrayLike, y: ArrayLike, weights: ArrayLike | None = None, seed: int = 0,
                      n_boot: int = BOOTSTRAP) -> dict:
    """Bootstrap CI of mean(x) - mean(y) over the same samples (pairs resampled together)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise SimexplainError("paired difference needs values on the same samples")
    return bootstrap_ci(x - y, weights=weights, seed=seed, n_boot=n_boot)


def spearman(x: ArrayLike, y: ArrayLike) -> float:
    """Spearman rank correlation (average ranks for ties); 0 when either input is constant."""
    from scipy.stats import rankdata
    a = np.asarray(x, dtype=np.float64).ravel()
    b = np.asarray(y, dtype=np.float64).ravel()
    if is_flat(a) or is_flat(b):
        return 0.0
    ra, rb = rankdata(a), rankdata(b)
    ra -= ra.mean()
    rb -= rb.mean()
    return float((ra * rb).sum() / math.sqrt((ra * ra).sum() * (rb * rb).sum()))


# -- results -----------------------------------------------------------------------------------
def new_result(benchmark: str, model: str, seed: int, samples: int, settings: dict) -> dict:
    return {"benchmark": benchmark, "model": model, "seed": seed, "samples": samples,
            "bootstrap": BOOTSTRAP, "settings": settings, "methods": {}, "per_sample": {},
            "notes": [], "seconds": 0.0}


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *_):
        self.seconds = time.perf_counter() - self.start


def sample_seed(seed: int, index: int, salt: int = 0) -> int:
    """A per-sample seed derived from the run's seed (stable across methods and models)."""
    return int(np.random.SeedSequence([seed, index, salt]).generate_state(1)[0])


def progress(iterable: Iterable[T], total: int, label: str, enabled: bool) -> Iterable[T]:
    from tqdm.auto import tqdm
    return tqdm(iterable, total=total, desc=label, unit="sample", disable=not enabled,
                leave=False)
