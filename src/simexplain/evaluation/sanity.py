"""Sanity checks (Adebayo et al. 2018): do the maps depend on the model and on the partner?

Cascading parameter randomisation (seeded): on a deep copy of the model, the parameters of
ever more layers are replaced by random values, from the head down: the head (the layers after
the explained layer), then the explained layer, then the top third, two thirds and all of the
trunk (the model's parametrised layers in the order the forward pass runs them). A parameter
tensor is redrawn from a normal distribution with its own mean and standard deviation, so the
activations keep their scale; BatchNorm running statistics stay. After each stage the map of
image b of every pair is recomputed and compared with the original map by Spearman rank
correlation: a map that explains the model should decorrelate as the model is destroyed.

Reference randomisation: the map of one image a is computed against 3 partners (its match b and
2 items with other labels); the mean Spearman correlation between a's maps over the partner
pairs says how much the map depends on the partner (1 = not at all). A pair explanation should
change with the partner; a single-image saliency map would not.

Caveats, reported with the numbers: the ``random`` method is seeded per sample, so its maps do
not depend on the model at all (correlation 1 under parameter randomisation: it fails that
check by construction) but differ per partner (it passes the reference check trivially): each
check alone can be gamed. Every method is compared in the same form, its positive part
(``common.positive_form``: Grad-CAM's maps are ReLU'd by definition, so the signed maps are
too; cells tied at 0 get average ranks for every method). A constant map (e.g. a map zeroed
by the ReLU) has no ranks: its correlation is taken as 0.

Where the explained layer and the head have no parameters of their own (efficientnet-lite0:
its explained layer is an activation and its head a pooling), the cascade starts in the trunk;
the notes say so.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from itertools import combinations

import numpy as np
import torch

from ..explainer import Explainer
from . import options
from .common import (bootstrap_ci, cap_notes, method_map, new_result, positive_form,
                     progress, runs_on, sample_seed, spearman, start_run, to_tensor,
                     usable_methods, Timer)
from .report import finish_plot, methods_of, pyplot, style
from .tables import fmt, fmt_plain, markdown_table

NAME = "sanity"
PARTNERS = 3  # partners per image a in the reference check
OPTIONS = options.SANITY  # its command line: methods, sample counts
# occlusion maps are recomputed at every stage and for every partner: fewer samples
OCCLUSION_CAPS = {"fmnist-gap": None, "fmnist-gmp": None, "fmnist-vit": None,
                  "efficientnet-lite0": 2, "facenet": 1}
_SALT = 6


def parametrised_layers(model: torch.nn.Module, layer: str, x: torch.Tensor
                        ) -> tuple[list[str], list[str], list[str]]:
    """(trunk, explained layer, head): names of the modules with parameters of their own that
    the forward pass runs, in the order it runs them, split at the explained layer."""
    modules = dict(model.named_modules())
    order: list[str] = []
    done: list[int] = []
    hooks = []
    for name, module in modules.items():
        if name and any(True for _ in module.parameters(recurse=False)):
            hooks.append(module.register_forward_pre_hook(
                lambda _m, _i, name=name: order.append(name) if name not in order else None))
    hooks.append(modules[layer].register_forward_hook(lambda *_: done.append(len(order))))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    split = done[0] if done else len(order)
    inside = [n for n in order[:split] if n == layer or n.startswith(layer + ".")]
    trunk = [n for n in order[:split] if n not in inside]
    return trunk, inside, order[split:]


def randomisation_stages(trunk: list[str], inside: list[str], head: list[str]
                         ) -> list[tuple[str, list[str]]]:
    """Cumulative stages from the head down: (label, modules randomised so far)."""
    stages: list[tuple[str, list[str]]] = []
    done: list[str] = []
    if head:
        done = done + head
        stages.append(("head", list(done)))
    if inside:
        done = done + inside
        stages.append(("+ explained layer", list(done)))
    reversed_trunk = trunk[::-1]
    for fraction, label in ((1 / 3, "+ top third of trunk"), (2 / 3, "+ two thirds"),
                            (1.0, "+ whole trunk")):
        k = int(round(fraction * len(reversed_trunk)))
        if k == len(reversed_trunk):
            label = "+ whole trunk"
        names = done + reversed_trunk[:k]
        if k and (not stages or names != stages[-1][1]):
            stages.append((label, names))
    return stages


def randomise(model: torch.nn.Module, names: list[str], seed: int) -> torch.nn.Module:
    """A deep copy with the parameters of the named modules redrawn N(mean, std) per tensor."""
    return randomise_(copy.deepcopy(model), names, seed)


def randomise_(clone: torch.nn.Module, names: list[str], seed: int) -> torch.nn.Module:
    """In place: redraw the parameters of the named modules, N(mean, std) per tensor."""
    modules = dict(clone.named_modules())
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in names:
            for param in modules[name].parameters(recurse=False):
                mean = float(param.mean())
                std = float(param.std()) if param.numel() > 1 else 0.0
                if not std > 0:
                    std = max(abs(mean) * 0.1, 1e-3)
                noise = torch.randn(param.shape, generator=gen, dtype=torch.float32)
                param.copy_((mean + std * noise).to(param.dtype))
    return clone.eval()


def _with_model(explainer: Explainer, model: torch.nn.Module) -> Explainer:
    clone = Explainer(model, explainer.stream_a.layer_name, similarity=explainer.similarity,
                      transform=explainer.transform_a)
    return clone


def run(model: str, methods: Sequence[str] | None = None, samples: int | None = None, seed: int = 0,
        quick: bool = False, show_progress: bool = False) -> dict:
    methods, samples, explainer, setup, source = start_run(
        model, methods, samples, quick, OPTIONS, unlisted_samples=5)
    pairs, partners = [], []
    for i in range(samples):
        rng = np.random.default_rng(sample_seed(seed, i, _SALT))
        item_a, item_b = source.pair(rng, setup.single)
        a = to_tensor(explainer, item_a.image, "a")
        pairs.append((a, to_tensor(explainer, item_b.image, "b")))
        others = source.distractors(rng, item_a.label, PARTNERS - 1, setup.single)
        partners.append([pairs[-1][1]] + [to_tensor(explainer, o.image, "b") for o in others])
    net = explainer.stream_a.model
    trunk, inside, head = parametrised_layers(net, explainer.stream_a.layer_name, pairs[0][0])
    stages = randomisation_stages(trunk, inside, head)
    result = new_result(NAME, model, seed, samples, {
        "stages": [label for label, _ in stages],
        "stage_layers": [len(names) for _, names in stages],
        "partners": PARTNERS, "randomisation": "each parameter tensor ~ N(its mean, its std)",
        "domain": setup.domain})
    if not head and not inside:
        result["notes"].append("the explained layer and the head have no parameters, so the "
                               "cascade starts in the trunk (its top third first)")
    elif not head:
        result["notes"].append("the head has no parameters: the cascade starts at the "
                               "explained layer")
    caps = OCCLUSION_CAPS
    result["notes"] += cap_notes(setup, methods, samples, quick, caps)
    methods = usable_methods(setup, methods, quick, caps)
    todo = {m: [i for i in range(samples) if runs_on(setup, m, i, quick, caps)]
            for m in methods}
    def compared(*args, **kwargs):
        return positive_form(method_map(*args, **kwargs))

    with Timer() as timer:
        original = {m: {i: compared(explainer, m, *pairs[i], "b", seed=sample_seed(seed, i, 99))
                        for i in todo[m]} for m in methods}
        cascade = {m: np.full((samples, len(stages)), np.nan) for m in methods}
        # one copy of the model, reloaded and randomised at each stage: the explainer's probes
        # (and the backend's warm-up for this input size) are paid once
        clone = copy.deepcopy(net)
        broken = _with_model(explainer, clone)
        pristine = {k: v.clone() for k, v in net.state_dict().items()}
        for s, (_label, names) in enumerate(progress(stages, len(stages), f"sanity {model}",
                                                    show_progress)):
            clone.load_state_dict(pristine)
            randomise_(clone, names, seed + s)
            for m in methods:
                for i in todo[m]:
                    a, b = pairs[i]
                    new = compared(broken, m, a, b, "b", seed=sample_seed(seed, i, 99))
                    cascade[m][i, s] = spearman(original[m][i], new)
        reference: dict[str, list[float]] = {m: [] for m in methods}
        for i, bs in enumerate(partners):
            a = pairs[i][0]
            for m in methods:
                if i not in todo[m]:
                    reference[m].append(np.nan)
                    continue
                maps_a = [compared(explainer, m, a, b, "a", seed=sample_seed(seed, i, 99 + j))
                          for j, b in enumerate(bs)]
                reference[m].append(float(np.mean([spearman(x, y)
                                                   for x, y in combinations(maps_a, 2)])))
    for m in methods:
        result["methods"][m] = {
            "cascade": [bootstrap_ci(cascade[m][:, s], seed=seed) for s in range(len(stages))],
            "final": bootstrap_ci(cascade[m][:, -1], seed=seed) if stages else None,
            "reference": bootstrap_ci(reference[m], seed=seed),
        }
        result["per_sample"][m] = {"cascade": cascade[m].tolist(), "reference": reference[m]}
    result["seconds"] = timer.seconds
    return result



# -- report ------------------------------------------------------------------------------------
TITLE = "Sanity checks: parameter and reference randomisation"


def protocol_text(settings: dict) -> str:
    return ("Cascading randomisation of the model's parameters from the head down; Spearman "
            "correlation of b's map with the original (should fall). Reference "
            "randomisation: mean Spearman correlation of a's maps against different "
            "partners (lower = more pair-specific).")


def results_table(results: list[dict]) -> str:
    blocks = []
    for r in results:
        stages = r["settings"]["stages"]
        rows = []
        for m in methods_of(r):
            f = r["methods"][m]
            rows.append([m] + [fmt_plain(c["mean"], 2) for c in f["cascade"]] +
                        [fmt(f["final"]), fmt(f["reference"])])
        blocks.append(f"**{r['model']}** ({r['samples']} pairs, {r['settings']['partners']} "
                      "partners each)\n\n" +
                      markdown_table(["method"] + stages + ["final (CI)", "reference"], rows))
    return "\n\n".join(blocks)


def headline_comparisons(result: dict) -> list:
    return []  # no ranking: the summary below says which maps depend on the model


def extra_lines(results: list[dict]) -> list[str]:
    lines = ["Summary (final-stage Spearman; lower means the map depends on the model):"]
    for r in results:
        bits = []
        for m in methods_of(r):
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


def brief_lines(results: list[dict]) -> list[str]:
    from ..methods import METHODS as REGISTRY
    lines = []
    for r in results:
        kept = [m for m in methods_of(r)
                if not (m in REGISTRY and REGISTRY[m].control) and r["methods"][m]["final"]
                and r["methods"][m]["final"]["mean"] >= 0.5]
        if kept:
            lines.append(f"- Sanity, {r['model']}: after full randomisation the maps of "
                         f"{', '.join(kept)} still correlate >= 0.5 with the originals.")
    return lines


def plot_results(results: list[dict], img_dir: Path) -> Path:
    """Spearman correlation with the original map along the cascade, one panel per model."""
    n = len(results)
    fig, axes = pyplot().subplots(1, n, figsize=(4.6 * n, 3.6), squeeze=False)
    for col, r in enumerate(results):
        ax = axes[0, col]
        stages = ["original"] + r["settings"]["stages"]
        for m in methods_of(r):
            ax.plot(range(len(stages)), [1.0] + [c["mean"] for c in r["methods"][m]["cascade"]],
                    marker="o", ms=3, **style(m))
        ax.set_xticks(range(len(stages)))
        ax.set_xticklabels(stages, rotation=35, ha="right", fontsize=7)
        ax.set_title(f"{r['model']} (n={r['samples']})", fontsize=9)
        ax.set_ylabel("Spearman with original map")
        ax.set_ylim(-0.3, 1.05)
        ax.grid(alpha=0.3)
    return finish_plot(fig, axes, img_dir / f"{NAME}.png")
