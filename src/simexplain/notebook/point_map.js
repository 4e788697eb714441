// simexplain's live point-map widget (anywidget front end). Its imports name modules of the
// web page's static folder (web/static/): the kernel side
// (simexplain.notebook.widget.module_text) inlines them before this file, in dependency order,
// so that the widget's one ES module text needs no server, and the notebook and the web page
// draw maps with one copy of that code.
//
// The kernel holds the pair's cached decomposition. A pointer move sends
// {type: "point", side, row, col, kind, id} (a drag: {type: "region", side, box, kind, id})
// as a custom message; the kernel answers {type: "answer" | "error", id, ...} with the map on
// the other image's feature grid, its strongest cells and the pointed cell. At most one
// request is in flight (`Latest`); the canvas upsamples and colours the grid.

import { fmt, mapUnit, rings, SCORE_UNIT } from "./labels.js";
import { Latest } from "./latest.js";
import { gestures, MapView } from "./mapview.js";

const REQUEST_TIMEOUT_MS = 15000; // a kernel that never answers must not stall the pointer
const SIDES = ["a", "b"];

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// the PNG bytes of a side as a URL the canvas can load (bytes traits arrive as a DataView)
function imageUrl(value) {
  if (typeof value === "string") return value; // a data URI
  return URL.createObjectURL(new Blob([value], { type: "image/png" }));
}

function panel(side) {
  const figure = element("figure", "sx-panel");
  figure.dataset.side = side;
  const canvas = element("canvas", "sx-view");
  canvas.dataset.side = side;
  canvas.tabIndex = 0;
  canvas.setAttribute("aria-label", `image ${side}: move the pointer or use the arrow keys ` +
    "for point maps, drag a box for a region map");
  const scale = element("div", "scale");
  scale.hidden = true;
  scale.title = "the colour map in the map's own values";
  for (const part of ["lo", "bar", "hi", "mid", "unit"]) scale.appendChild(element("span", part));
  const readout = element("div", "readout");
  figure.append(canvas, scale, readout, element("figcaption", "", `image ${side}`));
  return { figure, canvas, scale, readout };
}

function render({ model, el }) {
  const root = element("div", "simexplain-widget");
  const bar = element("div", "sx-bar");
  const kindLabel = element("label", "", "point map ");
  const kindSelect = element("select", "sx-kind");
  kindLabel.appendChild(kindSelect);
  const info = element("span", "sx-info");
  bar.append(kindLabel, info);
  const pair = element("div", "sx-pair");
  const caption = element("div", "sx-label");
  caption.setAttribute("aria-live", "polite");
  const problem = element("div", "sx-error");
  problem.setAttribute("role", "alert");
  problem.hidden = true;
  root.append(bar, pair, caption, problem);
  el.appendChild(root);
  // the arrow keys move the point on a focused image: the notebook must not also take them
  // (JupyterLab moves between cells on them)
  root.addEventListener("keydown", (event) => {
    if (event.target.tagName === "CANVAS") event.stopPropagation();
  });

  const display = { alpha: 0.6, signed: true };
  const size = model.get("display_size");
  const views = {};
  const urls = [];
  let region = null; // the pinned box: {side, box, answer}
  let lastJob = null; // the pointer's latest request, asked again when the kind changes

  for (const side of SIDES) {
    const parts = panel(side);
    pair.appendChild(parts.figure);
    const view = new MapView(parts.canvas, [size, size], display);
    view.scale_ = parts.scale;
    view.readout = parts.readout;
    views[side] = view;
  }

  const summary = model.get("info");
  const sides = model.get("sides");
  info.textContent = `score (${summary.similarity}) = ${summary.score.toFixed(4)} · ` +
    `residual ${summary.residual.toExponential(1)}`;
  if (!sides.a.spatial || !sides.b.spatial) {
    // a class-token model's last layer: no grid cell carries anything of its own
    info.textContent += " · no spatial map at this layer (explain an earlier layer)";
  }
  for (const [kind, label] of model.get("kinds")) {
    const option = element("option", "", `${kind} (${label})`);
    option.value = kind;
    kindSelect.appendChild(option);
  }
  kindSelect.value = model.get("kind");

  function showError(message) {
    problem.hidden = !message;
    problem.textContent = message || "";
  }

  // -- requests to the kernel, answered by custom messages ----------------------------------
  const waiting = new Map(); // request id -> {resolve, reject, timer}
  // every view of the widget hears every answer: ids name the view that asked
  const viewId = Math.random().toString(36).slice(2, 10);
  let count = 0;
  function ask(body) {
    const id = `${viewId}-${++count}`;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        waiting.delete(id);
        reject(new Error(`the kernel did not answer within ${REQUEST_TIMEOUT_MS / 1000} s ` +
          "(is it busy or stopped?)"));
      }, REQUEST_TIMEOUT_MS);
      waiting.set(id, { resolve, reject, timer });
      model.send({ ...body, id });
    });
  }
  function onMessage(message) {
    const request = message && waiting.get(message.id);
    if (!request) return; // an answer to a request that timed out, or another view's
    waiting.delete(message.id);
    clearTimeout(request.timer);
    if (message.type === "error") request.reject(new Error(message.message));
    else request.resolve(message);
  }
  model.on("msg:custom", onMessage);

  const queue = new Latest((job) => ask(job.body), showAnswer, { onError(error) {
    showError(String(error && error.message ? error.message : error));
  } });

  // -- drawing -------------------------------------------------------------------------------
  const overallUnit = SCORE_UNIT;

  // the resting display: overall maps, or the pinned box and its region map
  function rest() {
    for (const side of SIDES) {
      const view = views[side];
      view.setMap(sides[side].overall, overallUnit);
      view.markers = [];
      view.cell = null;
      view.box = region && region.side === side ? region.box : null;
    }
    caption.textContent = "";
    if (region && region.answer) {
      const answer = region.answer;
      views[answer.side].setMap(answer.no_map ? null : answer.map,
        `region map: ${mapUnit(answer)}`);
      views[answer.side].markers = rings(answer);
      caption.textContent = describe(answer, "region");
    }
    for (const side of SIDES) views[side].render();
  }

  function describe(answer, what) {
    if (answer.no_map) {
      return `no ${what} map on ${answer.side}: this ${what} carries no contribution`;
    }
    const text = `${what} map on ${answer.side}: ${answer.label}; rings 1-` +
      `${rings(answer).length}: its strongest matches, max ${fmt(answer.argmax.value)}`;
    return what === "region" ? `${text}; region s_R = ${fmt(answer.partial_score)}` : text;
  }

  function showAnswer(answer, job) {
    showError(null);
    const what = job.body.type;
    const target = views[answer.side];
    // no_map: the point carries no contribution, so nothing is drawn (not a flat map)
    target.setMap(answer.no_map ? null : answer.map, `${what} map: ${mapUnit(answer)}`);
    target.markers = rings(answer);
    target.box = null;
    target.cell = null;
    target.render();
    if (what === "region") region = { ...region, answer };
    caption.textContent = describe(answer, what);
    const source = views[job.body.side];
    source.cell = what === "point" ? answer.query_cell : null;
    source.render();
  }

  function request(body) {
    lastJob = { body: { ...body, kind: model.get("kind") } };
    queue.push(lastJob);
  }

  for (const side of SIDES) {
    const view = views[side];
    gestures(view, {
      hover(point) {
        // the pointer itself is drawn at once; the map on the other side follows
        view.markers = [{ row: point[0], col: point[1], kind: "cross" }];
        view.setMap(sides[side].overall, overallUnit);
        view.box = region && region.side === side ? region.box : null;
        view.render();
        view.showValue(point);
        request({ type: "point", side, row: point[0], col: point[1] });
      },
      box(box) {
        region = { side, box, answer: null };
        view.box = box; view.markers = [];
        view.render();
        if (box[2] - box[0] < 1 || box[3] - box[1] < 1) return;
        request({ type: "region", side, box });
      },
      click() {
        queue.cancel();
        region = null; lastJob = null;
        rest();
      },
      leave() {
        queue.cancel();
        lastJob = region ? { body: { type: "region", side: region.side, box: region.box } } :
          null;
        view.showValue(null);
        rest();
      },
    });
  }

  let shownKind = model.get("kind");
  // called by the menu and by the model's change event (a kind set from Python, or the
  // menu's own set echoed): the same point or box asked again, once per new kind
  function kindChanged() {
    const kind = model.get("kind");
    kindSelect.value = kind;
    if (kind === shownKind) return;
    shownKind = kind;
    if (lastJob) request(lastJob.body);
  }
  kindSelect.addEventListener("change", () => {
    model.set("kind", kindSelect.value);
    model.save_changes();
    kindChanged();
  });
  model.on("change:kind", kindChanged);

  Promise.all(SIDES.map((side) => {
    const url = imageUrl(model.get(`image_${side}`));
    if (url.startsWith("blob:")) urls.push(url);
    return views[side].setImage(url, sides[side].image_size, sides[side].crop);
  })).then(rest, (error) => showError(String(error.message || error)));

  return () => {
    queue.cancel();
    for (const { timer } of waiting.values()) clearTimeout(timer);
    waiting.clear();
    model.off("msg:custom", onMessage);
    model.off("change:kind", kindChanged);
    for (const url of urls) URL.revokeObjectURL(url);
  };
}

export default { render };
