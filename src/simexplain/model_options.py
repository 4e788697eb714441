"""The command-line options that name a model, shared by every command that loads one (light:
the command line builds its parser from them without importing torch)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from .defaults import BUILTIN_SIMILARITIES, MAX_SIZE

if TYPE_CHECKING:
    from .explainer import Explainer


def add_model_arguments(parser: argparse.ArgumentParser, required: bool = True,
                        model_help: str | None = None) -> None:
    """--model, --layer, --similarity, --size: what `zoo.resolve` takes (see `from_args`)."""
    parser.add_argument("--model", required=required,
                        help=model_help or "zoo name (see `simexplain models`), model file, "
                                           "module:factory, or hf:FOLDER (a Hugging Face "
                                           "vision model saved there)")
    parser.add_argument("--layer", help="explained layer (default: the zoo model's; for "
                                        "hf:FOLDER one block before the last, or block:K)")
    parser.add_argument("--similarity", choices=BUILTIN_SIMILARITIES,
                        help="default: the zoo model's, else cosine")
    parser.add_argument("--size", type=parse_size,
                        help="model input size: N is the short side with the aspect ratio kept "
                             "for models that pool over positions (see `simexplain models`), "
                             "else an NxN square; H,W is exactly that (default: the model's; "
                             f"at most {MAX_SIZE} a side)")


def parse_size(text: str) -> int | tuple[int, int]:
    """`--size N` (the short side where the model keeps the aspect ratio, else a square) or
    `--size H,W` (exactly that)."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) not in (1, 2) or min(values) < 1:
        raise argparse.ArgumentTypeError(
            f"a size is N (pixels) or H,W (height,width in pixels), got {text!r}")
    if max(values) > MAX_SIZE:
        raise argparse.ArgumentTypeError(
            f"{text!r} exceeds the limit of {MAX_SIZE} pixels a side")
    return values[0] if len(values) == 1 else (values[0], values[1])


def from_args(args: argparse.Namespace) -> Explainer:
    """The Explainer the parsed model options name."""
    from .zoo import resolve
    return resolve(args.model, args.layer, args.similarity, args.size)
