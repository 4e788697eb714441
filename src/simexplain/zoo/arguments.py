"""The command-line options that name a model, shared by every command that loads one."""

from __future__ import annotations

import argparse

from ..similarity import names as similarity_names


def add_model_arguments(parser: argparse.ArgumentParser, required: bool = True,
                        model_help: str | None = None) -> None:
    """--model, --layer, --similarity, --size: what `zoo.resolve` takes (see `from_args`)."""
    parser.add_argument("--model", required=required,
                        help=model_help or "zoo name (see `simexplain models`), model file, "
                                           "or module:factory")
    parser.add_argument("--layer", help="explained layer (default: the zoo model's)")
    parser.add_argument("--similarity", choices=similarity_names(),
                        help="default: the zoo model's, else cosine")
    parser.add_argument("--size", type=int, help="input side in pixels (default: the model's)")


def from_args(args: argparse.Namespace):
    """The Explainer the parsed model options name."""
    from . import resolve
    return resolve(args.model, args.layer, args.similarity, args.size)
