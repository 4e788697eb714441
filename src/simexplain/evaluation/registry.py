"""The benchmarks: one registry for `simexplain eval NAME` and `simexplain eval all`.

A benchmark is a module in this package and its command line (`configure`, from the light
`options` module, so that building a benchmark's parser imports no torch). The module has
either `run_cli(args) -> int` or is a standard one (NAME, OPTIONS and `run`; see
commands.run_benchmark_cli). Modules are imported only when a benchmark runs, and one that
fails to import fails loudly, naming the module and the import error: it is never left out of
the command line or reported as "not run".
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from types import ModuleType

from ..errors import SimexplainError
from . import options


class BenchmarkUnavailable(SimexplainError):
    """A registered benchmark's module does not import."""


@dataclass(frozen=True)
class Benchmark:
    module: str  # import path
    help: str  # one line, for `simexplain eval --help` and `simexplain eval NAME --help`
    configure: Callable[[argparse.ArgumentParser], None]  # adds its options (imports no torch)


BENCHMARKS: dict[str, Benchmark] = {
    "interactive": Benchmark("simexplain.evaluation.interactive",
                             "interactive retrieval on Fashion-MNIST composites: region vs "
                             "global search", options.INTERACTIVE.configure),
    "retrieval": Benchmark("simexplain.evaluation.retrieval_quality",
                           "Recall@1 and mAP@R of a model on the Fashion-MNIST test split",
                           options.configure_retrieval),
    "pointing": Benchmark("simexplain.evaluation.pointing",
                          "pointing game: does the map's maximum land on the matching item of a "
                          "2x2 grid?", options.POINTING.configure),
    "localisation": Benchmark("simexplain.evaluation.localisation",
                              "localisation: IoU of the thresholded map's largest component with "
                              "the box", options.LOCALISATION.configure),
    "faithfulness": Benchmark("simexplain.evaluation.faithfulness",
                              "pair-aware deletion, insertion and ROAD curves on image b",
                              options.FAITHFULNESS.configure),
    "correspondence": Benchmark("simexplain.evaluation.correspondence",
                                "PCK of point-specific maps on pairs with known geometry",
                                options.CORRESPONDENCE.configure),
    "crossview": Benchmark("simexplain.evaluation.crossview",
                           "PCK of point maps across the two streams of the sketch model, and "
                           "its sketch-to-item Recall@1", options.CROSSVIEW.configure),
    "sanity": Benchmark("simexplain.evaluation.sanity",
                        "cascading parameter randomisation and reference randomisation",
                        options.SANITY.configure),
    "shortcut": Benchmark("simexplain.evaluation.shortcut",
                          "planted shortcut: do the maps find a class mark a retrained "
                          "Fashion-MNIST model matches on?", options.SHORTCUT.configure),
    "all": Benchmark("simexplain.evaluation.suite",
                     "every benchmark for every available model; writes BENCHMARKS.md and plots",
                     options.configure_suite),
}

# what `eval all` runs per model, in the report's order (then `interactive`, once)
SUITE = ("pointing", "localisation", "faithfulness", "correspondence", "sanity", "crossview",
         "shortcut")
assert set(SUITE) <= set(BENCHMARKS), "every suite benchmark is registered"


def load(name: str) -> ModuleType:
    """The module of benchmark `name`; BenchmarkUnavailable when it does not import."""
    if name not in BENCHMARKS:
        raise SimexplainError(f"no benchmark {name!r}; benchmarks: {', '.join(BENCHMARKS)}")
    module = BENCHMARKS[name].module
    try:
        return import_module(module)
    except ImportError as exc:
        raise BenchmarkUnavailable(f"benchmark {name!r} is unavailable: importing {module} "
                                   f"failed ({exc})") from exc


def suite_modules() -> tuple[ModuleType, ...]:
    """The modules `eval all` runs per model, in order (each imported, loudly)."""
    return tuple(load(name) for name in SUITE)
