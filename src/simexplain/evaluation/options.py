"""The command line of every benchmark (`simexplain eval NAME`): its options and what they show
(the methods it compares, its sample counts, its models), defined without importing torch, so
that `simexplain eval NAME --help` and argument errors answer at once. The benchmark modules
take these constants from here (one definition each), and `registry.BENCHMARKS` names each
benchmark's `configure`; the benchmark's own module is imported only when it runs.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass

from ..defaults import METHOD_NAMES, POINT_MAP_KINDS

# The saliency methods compared everywhere: the registry's (simexplain.methods), in its order.
ALL_METHODS = METHOD_NAMES  # every registered method's name, controls included
# Point-specific maps of the decomposition, one benchmark method per kind
# (PairExplanation.point_map(kind=...)): "point-match-centred" etc.
POINT_METHODS = {f"point-{kind}": kind for kind in POINT_MAP_KINDS}
# The models benchmarked, in display order. fmnist-vit (a class-token ViT) adds the transformer
# baselines (methods that need attention run only on models that have it: `applicable`).
MODELS = ("fmnist-gap", "fmnist-gmp", "fmnist-vit", "efficientnet-lite0", "facenet")
# What `eval all --quick` runs (and `eval all` without --quick: MODELS).
QUICK_MODELS = ("fmnist-gap", "fmnist-gmp")


@dataclass(frozen=True)
class Standard:
    """The command line of a standard benchmark (a module with NAME, OPTIONS and `run`; see
    commands.run_benchmark_cli).

    allowed: the methods it compares (--method).
    default_samples: samples per model without --samples; quick_samples: with --quick.
    models: its own models, where it runs on those only ('all' means these); empty: MODELS.
    model_help: set where --model may be left out (the run then takes `models`): what they
    are, for its help.
    """

    allowed: tuple[str, ...]
    default_samples: Mapping[str, int]
    quick_samples: int
    models: tuple[str, ...] = ()
    model_help: str | None = None

    def samples(self, model: str, quick: bool, unlisted: int = 10) -> int:
        """The samples of a run without --samples: --quick's, else the model's (`unlisted`
        for a model the table does not name)."""
        return self.quick_samples if quick else self.default_samples.get(model, unlisted)

    def configure(self, parser: argparse.ArgumentParser) -> None:
        defaults = ", ".join(f"{k} {v}" for k, v in self.default_samples.items())
        models = ", ".join(self.models or MODELS)
        if self.model_help is None:
            parser.add_argument("--model", action="append", metavar="NAME", required=True,
                                help=f"benchmark model, repeatable, or 'all' ({models})")
        else:
            parser.add_argument("--model", action="append", metavar="NAME",
                                help=f"{self.model_help}: {models}")
        parser.add_argument("--method", action="append", metavar="M",
                            help="method, repeatable, or 'all' (default): " +
                                 ", ".join(self.allowed))
        parser.add_argument("--samples", type=int, help=f"samples per model (default: "
                            f"{defaults}; --quick: {self.quick_samples})")
        parser.add_argument("--seed", type=int, default=0, help="seed of every draw (default 0)")
        parser.add_argument("--quick", action="store_true", help="tiny sample counts")
        parser.add_argument("--out", required=True, help="folder for the JSON, Markdown and plots")
        parser.add_argument("--json", action="store_true", help="print the figures as JSON")
        parser.add_argument("--progress", action="store_true", help="show progress bars")


POINTING = Standard(
    ALL_METHODS + tuple(POINT_METHODS),
    {"fmnist-gap": 300, "fmnist-gmp": 300, "fmnist-vit": 300, "efficientnet-lite0": 40,
     "facenet": 20},
    quick_samples=20)
LOCALISATION = Standard(
    ALL_METHODS + tuple(POINT_METHODS),
    {"fmnist-gap": 300, "fmnist-gmp": 300, "fmnist-vit": 300, "efficientnet-lite0": 40,
     "facenet": 20},
    quick_samples=20)
FAITHFULNESS = Standard(
    ALL_METHODS,
    {"fmnist-gap": 200, "fmnist-gmp": 200, "fmnist-vit": 200, "efficientnet-lite0": 12,
     "facenet": 10},
    quick_samples=10)
CORRESPONDENCE = Standard(
    tuple(POINT_METHODS) + ("cosine", "random"),
    {"fmnist-gap": 300, "fmnist-gmp": 300, "fmnist-vit": 300, "efficientnet-lite0": 40,
     "facenet": 24},
    quick_samples=10)
SANITY = Standard(
    ALL_METHODS,
    {"fmnist-gap": 40, "fmnist-gmp": 40, "fmnist-vit": 40, "efficientnet-lite0": 6,
     "facenet": 4},
    quick_samples=4)
# the benchmark's own model (`eval all` runs it on this only): the two-stream sketch model
CROSSVIEW = Standard(
    tuple(POINT_METHODS) + ("cosine", "random"), {"fmnist-sketch": 300}, quick_samples=10,
    models=("fmnist-sketch",))
SHORTCUT = Standard(
    ALL_METHODS + tuple(POINT_METHODS), {"fmnist-gap": 200}, quick_samples=20,
    models=("fmnist-gap",),
    model_help="the zoo recipe retrained with and without marks")


@dataclass(frozen=True)
class Interactive:
    """`simexplain eval interactive`: the models it runs by default, and its composite queries
    and gallery items, by default and with --quick."""

    models: tuple[str, ...]
    queries: int
    gallery: int
    quick_queries: int
    quick_gallery: int

    def configure(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--model", action="append", metavar="NAME",
                            help="zoo model, repeatable (default: " + ", ".join(self.models) +
                                 ")")
        parser.add_argument("--queries", type=int, help=f"composite queries (default "
                            f"{self.queries}; quick: {self.quick_queries})")
        parser.add_argument("--gallery", type=int, help=f"gallery items (default "
                            f"{self.gallery}; quick: {self.quick_gallery})")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--quick", action="store_true", help="a small run, for tests")
        parser.add_argument("--batch-size", type=int, default=64)
        parser.add_argument("--data", help="folder with the Fashion-MNIST IDX files")
        parser.add_argument("--out", help="write interactive.json and interactive.md here")
        parser.add_argument("--json", action="store_true", help="print the figures as JSON")


INTERACTIVE = Interactive(models=("fmnist-gap", "fmnist-gmp", "efficientnet-lite0"),
                          queries=300, gallery=1500, quick_queries=24, quick_gallery=150)


def configure_retrieval(parser: argparse.ArgumentParser) -> None:
    """`simexplain eval retrieval`."""
    parser.add_argument("--model", action="append", required=True,
                        help="zoo model (repeatable), e.g. fmnist-gap")
    parser.add_argument("--limit", type=int, help="use only the first N test images")
    parser.add_argument("--data", help="folder with the Fashion-MNIST IDX files")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")


def configure_suite(parser: argparse.ArgumentParser) -> None:
    """`simexplain eval all`."""
    parser.add_argument("--quick", action="store_true",
                        help="Fashion-MNIST models only, a few samples each (minutes)")
    parser.add_argument("--out", default="docs",
                        help="folder for BENCHMARKS.md, benchmarks.json and img/benchmarks/ "
                             "(default: docs)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every draw (default 0)")
    parser.add_argument("--model", action="append", metavar="NAME",
                        help="only these models (repeatable; default: " + ", ".join(MODELS) +
                             "; --quick: " + ", ".join(QUICK_MODELS) + ")")
    parser.add_argument("--samples", type=int,
                        help="samples per benchmark and model (default: each benchmark's own)")
    parser.add_argument("--progress", action="store_true", help="show progress bars")
