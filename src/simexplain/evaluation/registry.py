"""The benchmarks: one registry for `simexplain eval NAME` and `simexplain eval all`.

A benchmark is a module in this package, either with `configure_parser(parser)` and
`run_cli(args) -> int`, or a standard one (ALLOWED, DEFAULT_SAMPLES, QUICK_SAMPLES and `run`;
see commands.run_benchmark_cli). Modules are imported only when a benchmark runs, and one that
fails to import fails loudly, naming the module and the import error: it is never left out of
the command line or reported as "not run".
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from types import ModuleType

from ..errors import SimexplainError


class BenchmarkUnavailable(SimexplainError):
    """A registered benchmark's module does not import."""


@dataclass(frozen=True)
class Benchmark:
    module: str  # import path
    help: str  # one line, for `simexplain eval --help`


BENCHMARKS: dict[str, Benchmark] = {
    "interactive": Benchmark("simexplain.evaluation.interactive",
                             "interactive retrieval on Fashion-MNIST composites: region vs "
                             "global search"),
    "retrieval": Benchmark("simexplain.evaluation.retrieval_quality",
                           "Recall@1 and mAP@R of a model on the Fashion-MNIST test split"),
    "pointing": Benchmark("simexplain.evaluation.pointing",
                          "pointing game: does the map's maximum land on the matching item of a "
                          "2x2 grid?"),
    "localisation": Benchmark("simexplain.evaluation.localisation",
                              "localisation: IoU of the thresholded map's largest component with "
                              "the box"),
    "faithfulness": Benchmark("simexplain.evaluation.faithfulness",
                              "pair-aware deletion, insertion and ROAD curves on image b"),
    "correspondence": Benchmark("simexplain.evaluation.correspondence",
                                "PCK of point-specific maps on pairs with known geometry"),
    "crossview": Benchmark("simexplain.evaluation.crossview",
                           "PCK of point maps across the two streams of the sketch model, and "
                           "its sketch-to-item Recall@1"),
    "sanity": Benchmark("simexplain.evaluation.sanity",
                        "cascading parameter randomisation and reference randomisation"),
    "shortcut": Benchmark("simexplain.evaluation.shortcut",
                          "planted shortcut: do the maps find a class mark a retrained "
                          "Fashion-MNIST model matches on?"),
    "all": Benchmark("simexplain.evaluation.suite",
                     "every benchmark for every available model; writes BENCHMARKS.md and plots"),
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
