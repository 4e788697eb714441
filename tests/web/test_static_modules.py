"""The web page's ES modules (src/simexplain/web/static/*.js) on their own, without the
FastAPI server: their imports and exports read with regexes (every imported name exported by
its target, no import cycles, a job comment on top), and their pure parts run in headless
Chromium from a plain static file server: the colour maps, the single-flight queue `Latest`,
and the grid and axis maths against the server's upsampling."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

from simexplain import maps
from simexplain.web.api import STATIC

from browser_helpers import static_server

WIDGET_JS = STATIC.parents[1] / "notebook" / "point_map.js"
IMPORT = re.compile(r'^import\s*\{([^}]*)\}\s*from\s*"([^"]+)"\s*;', re.M)
ANY_IMPORT = re.compile(r"^[ \t]*import\b", re.M)
EXPORT = re.compile(r"^export\s+(?:async\s+)?(?:function\*?|class|const|let)\s+([\w$]+)", re.M)


def modules() -> dict[str, str]:
    return {path.name: path.read_text(encoding="utf-8") for path in sorted(STATIC.glob("*.js"))}


def imports_of(text: str) -> list[tuple[str, list[str]]]:
    """[(module file, [names])] of a module's imports; every import is of this form."""
    found = [(target, [name.strip() for name in names.split(",") if name.strip()])
             for names, target in IMPORT.findall(text)]
    assert len(ANY_IMPORT.findall(text)) == len(found), "an import of another form"
    return found


def test_every_import_resolves_to_an_export():
    texts = modules()
    exports = {name: set(EXPORT.findall(text)) for name, text in texts.items()}
    importers = {**texts, f"../../notebook/{WIDGET_JS.name}": WIDGET_JS.read_text()}
    for name, text in importers.items():
        for target, names in imports_of(text):
            assert target.startswith("./"), f"{name}: {target} is not a sibling module"
            file = target[2:]
            assert file in texts, f"{name} imports {target}, which is not in static/"
            for imported in names:
                assert " as " not in imported, f"{name}: renamed import {imported}"
                assert imported in exports[file], f"{name}: {file} does not export {imported}"


def test_no_import_cycles_and_every_module_is_used():
    texts = modules()
    graph = {name: [target[2:] for target, _ in imports_of(text)] for name, text in texts.items()}
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        assert name not in path, f"import cycle: {' -> '.join(path + [name])}"
        if name in done:
            return
        for target in graph[name]:
            visit(target, path + [name])
        done.add(name)

    visit("main.js", [])
    # everything the page or the widget does not reach is dead code
    for target, _ in imports_of(WIDGET_JS.read_text()):
        visit(target[2:], [])
    assert done == set(texts), f"unused modules: {sorted(set(texts) - done)}"


def test_the_page_loads_main_as_a_module_and_every_module_states_its_job():
    page = (STATIC / "index.html").read_text()
    assert re.findall(r"<script\b[^>]*>", page) == [
        '<script type="module" src="/static/main.js">']
    for name, text in modules().items():
        assert text.startswith("// "), f"{name} does not start with a comment on its job"
        assert '"use strict"' not in text, f"{name}: modules are strict already"


# -- the pure parts in Chromium ------------------------------------------------------------------

@pytest.fixture(scope="module")
def page(headless_chromium):
    with static_server(STATIC) as url:
        page = headless_chromium.new_page()
        problems: list[str] = []
        page.on("pageerror", lambda exc: problems.append(str(exc)))
        page.goto(f"{url}/")  # the folder's listing: a page of that origin
        yield page
        assert not problems


def js_round(x: float) -> int:
    return math.floor(x + 0.5)  # Math.round: halves go up


def table(fn) -> list[list[int]]:
    return [[js_round(v * 255) for v in fn(i / 255)] for i in range(256)]


def jet(t: float) -> list[float]:
    clamp = lambda x: max(0.0, min(1.0, x))  # noqa: E731
    return [clamp(1.5 - abs(4 * t - 3)), clamp(1.5 - abs(4 * t - 2)), clamp(1.5 - abs(4 * t - 1))]


def test_colour_maps(page):
    got = page.evaluate("""async () => {
      const c = await import('/colours.js');
      const rows = (t) => Array.from({ length: 256 }, (_, i) => Array.from(t.slice(3 * i, 3 * i + 3)));
      return { jet: rows(c.JET), diverging: rows(c.DIVERGING), rdbu: c.RDBU,
        mid: c.colourAt(c.DIVERGING, 0.5), low: c.colourAt(c.JET, -3), high: c.colourAt(c.JET, 9),
        signed: c.tableFor(true) === c.DIVERGING, positive: c.tableFor(false) === c.JET };
    }""")
    # the positive ramp: dark blue at 0, dark red at 1 (the widget test's POSITIVE_PEAK)
    assert got["jet"][0] == [0, 0, 128] and got["jet"][255] == [128, 0, 0]
    assert got["jet"] == table(jet)
    # the signed ramp: RdBu's ends, white in the middle
    rdbu = np.array(got["rdbu"], dtype=float)
    assert got["diverging"][0] == [5, 48, 97] and got["diverging"][255] == [103, 0, 31]
    assert rdbu[5].tolist() == [247, 247, 247]

    def diverging(t: float) -> list[float]:
        x = t * 10
        i = min(math.floor(x), 9)
        return list((rdbu[i] * (1 - (x - i)) + rdbu[i + 1] * (x - i)) / 255)

    assert got["diverging"] == table(diverging)
    assert got["mid"] == got["diverging"][128] and min(got["mid"]) >= 240
    assert got["low"] == got["jet"][0] and got["high"] == got["jet"][255]  # clamped
    assert got["signed"] and got["positive"]


LATEST = """async () => {
  const { Latest, queueStats } = await import('/latest.js');
  const pending = []; // [job, resolve, reject] of the requests sent, in order
  const applied = []; const errors = [];
  const stats = queueStats();
  const queue = new Latest(
    (job) => new Promise((resolve, reject) => pending.push([job, resolve, reject])),
    (answer, job) => applied.push([answer, job]), { stats, onError: (e) => errors.push(e.message) });
  const settle = () => new Promise((r) => setTimeout(r, 0));
  const log = [];
  // 1 goes out; 2 waits; 3 replaces 2 while 1 is in flight
  queue.push(1); queue.push(2); queue.push(3);
  log.push({ sent: pending.map((p) => p[0]), ...stats });
  pending[0][1]('answer 1'); await settle();
  log.push({ sent: pending.map((p) => p[0]), applied: [...applied], ...stats });
  pending[1][1]('answer 3'); await settle();
  log.push({ applied: [...applied], ...stats });
  // cancelled while in flight: its answer is dropped, its failure not reported
  queue.push(4); queue.cancel(); pending[2][1]('answer 4'); await settle();
  queue.push(5); queue.cancel(); pending[3][2](new Error('late')); await settle();
  queue.push(6); pending[4][2](new Error('failed')); await settle();
  log.push({ applied: [...applied], errors, busy: queue.busy, ...stats });
  return log;
}"""


def test_latest_runs_one_request_and_drops_superseded_ones(page):
    start, first, second, end = page.evaluate(LATEST)
    assert start["sent"] == [1] and start["inFlight"] == 1 and start["superseded"] == 1
    assert first["sent"] == [1, 3] and first["applied"] == [["answer 1", 1]]  # 2 never sent
    assert second["applied"] == [["answer 1", 1], ["answer 3", 3]]
    assert second["inFlight"] == 0 and second["maxInFlight"] == 1
    assert end["applied"] == second["applied"]  # 4 arrived after cancel: dropped
    assert end["errors"] == ["failed"] and not end["busy"]
    assert end["pointRequests"] == 6 - 1 and end["pointApplied"] == 2 and end["stale"] == 1
    assert end["maxInFlight"] == 1 and end["superseded"] == 1


def feature_coord(x: float, cells: int, size: int) -> float:
    return min(max((x + 0.5) * cells / size - 0.5, 0), cells - 1)


def test_axis_and_grid_maths(page):
    rng = np.random.default_rng(0)
    grid_map = rng.normal(size=(5, 7)).round(4)
    size = (23, 41)
    got = page.evaluate("""async ([map, size]) => {
      const g = await import('/grid.js');
      const axes = [[10, 3], [7, 7], [5, 9], [1, 4]].map(([n, cells]) => {
        const a = g.axis(n, cells);
        return { i0: Array.from(a.i0), i1: Array.from(a.i1), w: Array.from(a.w) };
      });
      // the map drawn as MapView.compose draws it: bilinear through the two axes
      const ys = g.axis(size[0], map.length); const xs = g.axis(size[1], map[0].length);
      const drawn = [];
      for (let y = 0; y < size[0]; y++) {
        const row = [];
        for (let x = 0; x < size[1]; x++) {
          const at = (r, c) => map[r][c];
          const upper = at(ys.i0[y], xs.i0[x]) * (1 - xs.w[x]) + at(ys.i0[y], xs.i1[x]) * xs.w[x];
          const lower = at(ys.i1[y], xs.i0[x]) * (1 - xs.w[x]) + at(ys.i1[y], xs.i1[x]) * xs.w[x];
          row.push(upper * (1 - ys.w[y]) + lower * ys.w[y]);
        }
        drawn.push(row);
      }
      const points = [[0, 0], [3.3, 17.8], [22, 40], [11.5, 20.25], [-4, 60]];
      return { axes, drawn, values: points.map((p) => g.valueAt(map, size, p)), points,
        coords: [g.featureCoord(0, 4, 8), g.featureCoord(7, 4, 8), g.featureCoord(3.5, 4, 8)],
        box: g.boxOf([9, 2], [1, 5]),
        signed: g.mapRange([[-2, 1], [0.5, 0]], true), positive: g.mapRange([[-2, 1]], false),
        unsignedOnly: g.mapRange([[0.5, 1]], true) };
    }""", [grid_map.tolist(), list(size)])
    for (n, cells), axis in zip([(10, 3), (7, 7), (5, 9), (1, 4)], got["axes"]):
        f = np.array([feature_coord(i, cells, n) for i in range(n)])
        assert axis["i0"] == np.floor(f).astype(int).tolist()
        assert axis["i1"] == np.minimum(np.floor(f).astype(int) + 1, cells - 1).tolist()
        np.testing.assert_allclose(axis["w"], f - np.floor(f), atol=1e-6)
    # the drawing's upsampling is the server's (maps.upsample: bilinear, cell-centre aligned)
    np.testing.assert_allclose(got["drawn"], maps.upsample(grid_map, size), atol=1e-5)
    # the value under the pointer at photo pixel p: the same interpolation at coordinate p
    for point, value in zip(got["points"], got["values"]):
        fy, fx = (feature_coord(point[k], grid_map.shape[k], size[k]) for k in (0, 1))
        y0, x0 = int(fy), int(fx)
        y1, x1 = min(y0 + 1, 4), min(x0 + 1, 6)
        dy, dx = fy - y0, fx - x0
        want = ((grid_map[y0, x0] * (1 - dx) + grid_map[y0, x1] * dx) * (1 - dy)
                + (grid_map[y1, x0] * (1 - dx) + grid_map[y1, x1] * dx) * dy)
        assert value == pytest.approx(want, abs=1e-12)
    assert got["coords"] == [0, 3, 1.5]  # clamped at both ends; pixel 3.5 of 8 on 4 cells
    assert got["box"] == [1, 2, 9, 5]
    assert got["signed"] == {"lo": -2, "hi": 2, "signed": True, "peak": 2}
    assert got["positive"] == {"lo": 0, "hi": 1, "signed": False, "peak": 1}
    assert got["unsignedOnly"]["signed"] is False  # no negative value: the positive ramp


RING_LABEL = """async ([col, row]) => {
  const { MapView, markStyle } = await import('/mapview.js');
  const grey = document.createElement('canvas'); grey.width = grey.height = 100;
  const g = grey.getContext('2d'); g.fillStyle = 'rgb(128,128,128)'; g.fillRect(0, 0, 100, 100);
  const canvas = document.createElement('canvas');
  const view = new MapView(canvas, [280, 280]);
  await view.setImage(grey.toDataURL(), [100, 100]);
  view.markers = [{ kind: 'ring', row, col, label: '3' }];
  view.render();
  const [x, y] = view.toCanvas([row, col]);
  const d = view.ctx.getImageData(0, 0, canvas.width, canvas.height).data;
  // the light pixels off the ring's own line (one ring on 280 px: radius 14, 3 wide)
  const { radius, ring } = markStyle(canvas.width, canvas.height, view.map, 1);
  const white = [];
  for (let py = 0; py < canvas.height; py++) {
    for (let px = 0; px < canvas.width; px++) {
      const i = 4 * (py * canvas.width + px);
      const offRing = Math.abs(Math.hypot(px - x, py - y) - radius) > ring / 2 + 1.5;
      if (d[i] > 200 && d[i + 1] > 200 && d[i + 2] > 200 && offRing) {
        white.push([px, py]);
      }
    }
  }
  return { x, y, width: canvas.width, white };
}"""


@pytest.mark.parametrize("row, col, side", [(50, 50, "right"), (50, 99, "left"),
                                            (0, 50, "right")])
def test_a_ring_s_rank_is_drawn_on_the_canvas_beside_it(page, row, col, side):
    # the label sits up and to the right of its ring; at the right edge it moves to the left
    # (it used to be cut off there), at the top edge it moves down onto the canvas
    got = page.evaluate(RING_LABEL, [col, row])
    label = np.array(got["white"], dtype=float)
    assert len(label) >= 5  # the digit's light strokes
    left_of_ring = label[:, 0] < got["x"]
    assert left_of_ring.all() if side == "left" else not left_of_ring.any()
    assert label[:, 1].min() >= 1 and label[:, 0].max() <= got["width"] - 1


def test_a_lone_ring_is_not_held_to_a_cell_but_several_rings_are(page):
    """markStyle: several rings on a map's grid stay within 0.38 of a cell (neighbouring top
    matches do not overlap); a ring alone, a thumbnail's strongest match, is larger."""
    got = page.evaluate("""async () => {
      const { markStyle } = await import('/mapview.js');
      const grid = Array.from({ length: 14 }, () => new Array(14).fill(0));
      return [markStyle(180, 180, grid, 3), markStyle(180, 180, grid, 1),
              markStyle(560, 560, grid, 1), markStyle(560, 560, grid, 3)];
    }""")
    several, alone, large_alone, large_several = got
    assert several["radius"] == pytest.approx(6)  # 0.38 of a 12.9 px cell, raised to 6
    assert alone["radius"] == pytest.approx(180 / 16) and alone["ring"] == 3
    assert large_alone["radius"] == pytest.approx(560 / 28)  # a full panel: as before
    assert large_several["radius"] == pytest.approx(0.38 * 40)
