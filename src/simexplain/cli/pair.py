"""`simexplain pair`: explain the similarity of two images, write figures and result.json."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..zoo.arguments import add_model_arguments, from_args


def register(commands) -> None:
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


def parse_point(text: str) -> tuple[float, float]:
    try:
        row, col = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a point is ROW,COL in pixels, got {text!r}") from None
    return row, col


def cmd_pair(args: argparse.Namespace) -> int:
    from ..files import write_json_atomic
    from ..pair_report import write_pair
    from ..visualize import save_figure
    explainer = from_args(args)
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
    from .. import zoo
    if zoo.crops_faces(explainer.model_name):
        from ..faces import crop_face
        from ..images import load_image
        from ..visualize import mark_box
        photo_a, photo_b = load_image(a), load_image(b)
        face_a, box_a = crop_face(photo_a, size=None)
        face_b, box_b = crop_face(photo_b, size=None)
        drawn = (mark_box(photo_a, box_a), mark_box(photo_b, box_b))
        return face_a, face_b, {"face_box_a": list(box_a), "face_box_b": list(box_b),
                                "_crops": drawn}
    return a, b, {}
