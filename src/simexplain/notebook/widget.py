"""The live point-map widget: a pair's two images in the notebook; moving the pointer over one
shows its point map on the other, dragging a box its region map, as on the web page.

Everything is computed in the kernel from the pair's cached decomposition (no model call per
pointer move): the front end sends the pointer's position in the photo's pixels as a custom
message, `PointMapWidget.answer` computes the map on the other image's feature grid
(`simexplain.live_maps`, the web API's answers), and the front end colours and upsamples the
grid on a canvas. The front end is one ES module built here from `notebook/point_map.js`
(the widget) and the web page's static modules it imports (`web/static/mapview.js`: map
drawing and gestures, `latest.js`: the single-flight queue, and theirs), inlined in dependency
order without their import and export lines, so the two share one copy of the drawing code
and the widget needs no server for its modules.
"""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path
from typing import Any
from collections.abc import Mapping

import anywidget
import traitlets
from PIL import Image

from .. import live_maps, visualize
from ..errors import SimexplainError
from ..explanation import PairExplanation, Side
from ..regions import DEFAULT_POINT_MAP, POINT_MAP_KINDS, check_kind
from ..sides import SIDES, check_side, pick

HERE = Path(__file__).resolve().parent
STATIC = HERE.parent / "web" / "static"  # the web page's ES modules
SHARED_JS = STATIC / "mapview.js"
WIDGET_JS = HERE / "point_map.js"
WIDGET_CSS = HERE / "point_map.css"
DISPLAY_SIZE = 384  # the images' longest side on screen, in pixels (smaller photos: their own)
REQUESTS = ("point", "region")

log = logging.getLogger(__name__)


# `import { a, b } from "./name.js";` (the only import form the shared modules use), and the
# `export` in front of a declaration
IMPORT = re.compile(r'^import\s*\{([^}]*)\}\s*from\s*"\./([\w.-]+\.js)"\s*;?[ \t]*$\n?', re.M)
EXPORTED = re.compile(r"^export\s+(?=(?:async\s+)?function\b|class\b|const\b|let\b)", re.M)


def _imports(text: str) -> list[str]:
    """The static modules that a module's text imports, in order; any import or export form
    the bundling below cannot inline raises."""
    names = []
    for match in IMPORT.finditer(text):
        if " as " in match.group(1):
            raise SimexplainError(f"cannot bundle a renamed import: {match.group(0).strip()}")
        names.append(match.group(2))
    left = IMPORT.sub("", text)
    if re.search(r"^[ \t]*import[\s{*(\"']", left, re.M):
        raise SimexplainError("the widget's modules import only `{ names } from \"./x.js\"`")
    return names


def bundle_order(entry: Path = WIDGET_JS, folder: Path = STATIC) -> list[Path]:
    """The static modules that `entry` imports, directly or not, each after those it
    imports (their files in `folder`); raises on an import cycle."""
    order: list[Path] = []
    visiting: list[str] = []

    def visit(name: str) -> None:
        path = folder / name
        if path in order:
            return
        if name in visiting:
            raise SimexplainError(f"import cycle: {' -> '.join(visiting + [name])}")
        visiting.append(name)
        for imported in _imports(path.read_text(encoding="utf-8")):
            visit(imported)
        visiting.pop()
        order.append(path)

    for name in _imports(entry.read_text(encoding="utf-8")):
        visit(name)
    return order


def inlined(text: str) -> str:
    """A module's text without its imports and with its exports as plain declarations."""
    text = EXPORTED.sub("", IMPORT.sub("", text))
    if re.search(r"^[ \t]*export\b", text, re.M):
        raise SimexplainError("a shared module exports only declarations (export function, "
                              "class, const or let)")
    return text


def module_text() -> str:
    """The widget's ES module: the web page's modules that point_map.js imports (map views,
    colour maps, the single-flight queue), inlined in dependency order as plain declarations
    of one module, then the widget's `render` (which uses them) and its default export."""
    parts = [f"// ---- web/static/{path.name}\n{inlined(path.read_text(encoding='utf-8'))}"
             for path in bundle_order()]
    widget = IMPORT.sub("", WIDGET_JS.read_text(encoding="utf-8"))
    text = "\n".join(parts + [f"// ---- notebook/{WIDGET_JS.name}\n{widget}"])
    # one scope now: a name two modules both declare would stop the module from loading
    names = re.findall(r"^(?:async\s+)?(?:function\*?|class|const|let)\s+([\w$]+)", text, re.M)
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise SimexplainError(f"the widget's modules declare {', '.join(twice)} more than once")
    return text


def seen_photo(side: Side, max_side: int) -> Image.Image:
    """The part of a side's photo that the model saw (the face crop, or all of it), at most
    `max_side` pixels long: what the front end's map views draw (their `crop`)."""
    return visualize.View.seen(side, max_side, enlarge=False).photo()


def png_bytes(image: Image.Image, max_side: int) -> bytes:
    """The image as PNG, shrunk so that its longest side is at most `max_side` pixels."""
    shown = image.convert("RGB")
    if max(shown.size) > max_side:
        shown.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    shown.save(out, format="PNG")
    return out.getvalue()


def _number(request: Mapping[str, Any], name: str) -> float:
    try:
        return float(request[name])
    except KeyError:
        raise SimexplainError(f"a {request.get('type')} request needs {name!r}") from None
    except (TypeError, ValueError):
        raise SimexplainError(f"{name!r} must be a number, got {request[name]!r}") from None


class PointMapWidget(anywidget.AnyWidget):
    """A live point-map view of a `PairExplanation` for Jupyter (JupyterLab, Notebook 7,
    VS Code): both images side by side with their overall maps; pointing at one draws the
    point map of `kind` on the other (rings 1-3 on its strongest cells, a colour bar in the
    map's values), dragging a box draws the region map, clicking clears it. The kind can be
    changed in the widget or here (`widget.kind = "contribution"`).

    `error` holds the message of the last request that failed (a point outside the image, an
    unknown side or kind), "" after a good one; a failed request never raises in the kernel.
    """

    _esm = module_text()
    _css = WIDGET_CSS.read_text(encoding="utf-8")

    image_a = traitlets.Bytes(help="the part of image a the model saw (its crop), as PNG, at "
                              "display size").tag(sync=True)
    image_b = traitlets.Bytes(help="the part of image b the model saw (its crop), as PNG, at "
                              "display size").tag(sync=True)
    sides = traitlets.Dict(help="per side: image_size (the photo's pixels, which points "
                           "and boxes use), crop, grid and the signed overall map").tag(sync=True)
    info = traitlets.Dict(help="score, similarity, residual").tag(sync=True)
    kinds: traitlets.List[list[str]] = traitlets.List(
        help="[kind, label] of every point-map kind").tag(sync=True)
    kind = traitlets.Unicode(DEFAULT_POINT_MAP, help="the point-map kind shown").tag(sync=True)
    display_size = traitlets.Int(DISPLAY_SIZE).tag(sync=True)
    error = traitlets.Unicode("", help="why the last request failed; '' if it did not"
                              ).tag(sync=True)

    def __init__(self, result: PairExplanation, kind: str = DEFAULT_POINT_MAP,
                 display_size: int = DISPLAY_SIZE, **kwargs: Any) -> None:
        if not isinstance(result, PairExplanation):
            raise SimexplainError(f"PointMapWidget shows a PairExplanation (from "
                                  f"Explainer.explain), got {type(result).__name__}")
        if display_size < 16:
            raise SimexplainError(f"display_size must be at least 16 pixels, got {display_size}")
        self.result = result
        sides = {}
        for name in SIDES:
            side = live_maps.side_of(result, name)
            overall = pick(name, result.overall_a, result.overall_b)
            sides[name] = {"image_size": list(side.image_size),
                           "crop": [int(v) for v in side.frame.box], "grid": list(side.grid),
                           "overall": live_maps.grid_list(overall), "spatial": side.spatial}
        super().__init__(
            image_a=png_bytes(seen_photo(result.a, display_size), display_size),
            image_b=png_bytes(seen_photo(result.b, display_size), display_size),
            sides=sides, kinds=[[k, label] for k, label in POINT_MAP_KINDS.items()],
            kind=check_kind(kind), display_size=display_size,
            info={"score": result.score, "similarity": result.similarity.name,
                  "residual": result.residual},
            **kwargs)
        self.on_msg(self._on_front_end_message)

    @traitlets.validate("kind")
    def _valid_kind(self, proposal: dict) -> str:
        try:
            return check_kind(proposal["value"])
        except SimexplainError as exc:
            raise traitlets.TraitError(str(exc)) from None

    def answer(self, request: Mapping[str, Any]) -> dict:
        """What the front end gets for a request: {"type": "point", "side": "a", "row": r,
        "col": c} (photo pixels of the image pointed at) or {"type": "region", "side": "a",
        "box": [top, left, bottom, right]}, with an optional "kind" (else `self.kind`).
        The map is on the other image (`live_maps.point_answer`, `region_answer`). Raises
        SimexplainError for a request that cannot be answered."""
        if not isinstance(request, Mapping):
            raise SimexplainError(f"a request is a JSON object, got {type(request).__name__}")
        what = request.get("type")
        if what not in REQUESTS:
            raise SimexplainError(f"unknown request type {what!r}; expected one of "
                                  f"{', '.join(REQUESTS)}")
        side = check_side(request.get("side"))  # a clear error for a bad side, first
        kind = check_kind(request.get("kind") or self.kind)
        if what == "point":
            point = (_number(request, "row"), _number(request, "col"))
            return live_maps.point_answer(self.result, side, point, kind)
        if "box" not in request:
            raise SimexplainError("a region request needs 'box': [top, left, bottom, right]")
        return live_maps.region_answer(self.result, side, request["box"], kind)

    def _on_front_end_message(self, _widget: Any, content: Any, _buffers: Any) -> None:
        # the front end waits for an answer to every request (one in flight at a time): a
        # failure is answered too, never raised into the comm
        request_id = content.get("id") if isinstance(content, Mapping) else None
        try:
            reply = {"type": "answer", **self.answer(content)}
        except SimexplainError as exc:
            reply = {"type": "error", "message": str(exc)}
        except Exception as exc:  # a bug, not bad input: logged in full, still answered
            log.exception("simexplain widget: request %r failed", content)
            reply = {"type": "error", "message": f"{type(exc).__name__}: {exc}"}
        self.error = reply.get("message", "") if reply["type"] == "error" else ""
        self.send({**reply, "id": request_id})
