"""Command line: `simexplain pair|models|demo|train|index|search|eval|serve ...`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from .errors import SimexplainError
from .similarity import names as similarity_names


def build_explainer(model: str, layer: str | None = None, similarity: str | None = None,
                    size: int | None = None):
    """An Explainer from a zoo name, a model file or `module:factory` (+ `--layer`)."""
    from . import zoo
    from .explainer import Explainer
    from .images import Preprocess

    if model in zoo.list():
        explainer = zoo.load(model, size=size)
        if layer or similarity:
            entry = zoo.entry(model)
            explainer = Explainer(zoo.model(model), layer or entry.layer,
                                  similarity=similarity or entry.similarity,
                                  transform=explainer.transform_a)
            explainer.model_name = model
        return explainer
    from .adapters import load_user_model
    if not layer:
        raise SimexplainError(f"--layer is required for a model that is not in the zoo ({model})")
    side = size or 224
    explainer = Explainer(load_user_model(model), layer, similarity=similarity or "cosine",
                          transform=Preprocess(size=(side, side)))
    explainer.model_name = model
    return explainer


def parse_point(text: str) -> tuple[float, float]:
    try:
        row, col = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a point is ROW,COL in pixels, got {text!r}") from None
    return row, col


def add_model_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--model", required=required,
                        help="zoo name (see `simexplain models`), model file, or module:factory")
    parser.add_argument("--layer", help="explained layer (default: the zoo model's)")
    parser.add_argument("--similarity", choices=similarity_names(),
                        help="default: the zoo model's, else cosine")
    parser.add_argument("--size", type=int, help="input side in pixels (default: the model's)")


def cmd_pair(args: argparse.Namespace) -> int:
    from .report import write_json_atomic, write_pair
    from .visualize import save_figure
    explainer = build_explainer(args.model, args.layer, args.similarity, args.size)
    a, b, crops = prepare_pair(explainer, args.a, args.b)
    result = explainer.explain(a, b)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    drawn = crops.pop("_crops", None)
    if drawn:  # show what was compared: the face crop on each photo
        save_figure([[(drawn[0], "photo a, face crop"), (drawn[1], "photo b, face crop")]],
                    out / "crops.png", scale=2.5)
    summary = write_pair(result, out, args.point, extra={
        "model": args.model, "layer": explainer.stream_a.layer_name,
        "image_a": str(args.a), "image_b": str(args.b), **crops})
    if drawn:
        summary["files"]["crops"] = "crops.png"
        write_json_atomic(out / "result.json", summary)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"score ({result.similarity}) = {result.score:.6f}, residual = {result.residual:.2e}")
        for name in summary["files"].values():
            print(f"wrote {out / name}")
        print(f"wrote {out / 'result.json'}")
    return 0


def prepare_pair(explainer, a, b):
    """Face models see detected, cropped faces; others the images as given."""
    from . import zoo
    name = getattr(explainer, "model_name", None)
    if zoo.crops_faces(name):
        from .faces import crop_face
        from .images import load_image
        from .visualize import mark_box
        photo_a, photo_b = load_image(a), load_image(b)
        face_a, box_a = crop_face(photo_a, size=None)
        face_b, box_b = crop_face(photo_b, size=None)
        drawn = (mark_box(photo_a, box_a), mark_box(photo_b, box_b))
        return face_a, face_b, {"face_box_a": list(box_a), "face_box_b": list(box_b),
                                "_crops": drawn}
    return a, b, {}


def _cmd_train(args: argparse.Namespace) -> int:
    from .training import cli_train
    return cli_train(args) or 0


def cmd_models(args: argparse.Namespace) -> int:
    from . import zoo
    for name in zoo.list():
        entry = zoo.entry(name)
        print(f"{name:20s} layer={entry.layer:12s} {entry.similarity:9s} {entry.description}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="simexplain", description="Visual explanations for deep metric learning models.")
    commands = parser.add_subparsers(dest="command", required=True)

    pair = commands.add_parser("pair", help="explain the similarity of two images")
    pair.add_argument("a", help="image a")
    pair.add_argument("b", help="image b")
    add_model_arguments(pair)
    pair.add_argument("--out", default="simexplain-pair", help="output folder")
    pair.add_argument("--point", type=parse_point, action="append",
                      help="ROW,COL pixel of image a (as the model sees it) for a point map; "
                           "repeatable (default: the 4 strongest cells)")
    pair.add_argument("--json", action="store_true", help="print result.json to stdout")
    pair.set_defaults(run=cmd_pair)

    models = commands.add_parser("models", help="list the model zoo")
    models.set_defaults(run=cmd_models)

    train = commands.add_parser("train", help="train a zoo model (fmnist-gap, fmnist-gmp)")
    train.set_defaults(run=_cmd_train)
    from .training import add_train_arguments
    add_train_arguments(train)

    for register in _optional_commands():
        register(commands)

    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except SimexplainError as exc:
        print(f"simexplain: error: {exc}", file=sys.stderr)
        return 2


def _optional_commands():
    """Subcommands defined next to the code they drive."""
    from importlib import import_module
    for module, function in (("simexplain.demo", "add_cli"),
                             ("simexplain.retrieval", "add_cli"),
                             ("simexplain.evaluation.cli", "add_cli"),
                             ("simexplain.web.app", "add_cli")):
        try:
            yield getattr(import_module(module), function)
        except ModuleNotFoundError as exc:
            if not module.startswith(exc.name or "-"):  # a real import error inside a module
                raise


if __name__ == "__main__":
    sys.exit(main())
