// The pair view: two images, their overall maps, point maps while the pointer moves over one
// (through the single-flight queue), region maps for a dragged box, the score line under
// them and the identical-method note. `createPair(ctx, pickers)` wires the two panels and
// gives `explain()` (explain the picked pair), `views` (the two MapViews) and `layout()`.
// What the views draw lives in pairmaps.js, the text around them in pairtext.js.

import { api, errorText, seenUrl } from "./api.js";
import { $ } from "./dom.js";
import { Latest } from "./latest.js";
import { gestures, MapView } from "./mapview.js";
import { captionFor, clearRegion } from "./state.js";
import { clearNotes, describe, overallUnit, showGrid, showIdentical } from "./pairtext.js";
import { restPair, showLiveMap, SIDES } from "./pairmaps.js";

// the pair's canvases share the width of the page (two columns, or one on narrow screens)
function pairBounds(side) {
  const stage = $(`#view-${side}`).parentElement;
  const width = Math.max(160, Math.floor(stage.clientWidth));
  const height = Math.max(280, Math.min(720, window.innerHeight - 260));
  return [width, height];
}

// both panels marked busy (with what is computed) or done, the old score line dimmed
function setBusy({ state, feedback }, busy) {
  for (const side of SIDES) {
    if (busy) feedback.panelError(side, null);
    feedback.panelBusy(side, busy ? `computing ${state.method} with ${state.model} ...` : null);
  }
  $("#pair-info").classList.toggle("stale", busy);
  document.body.classList.toggle("busy", busy);
  if (busy) feedback.setStatus("");
}

// an explanation shown: what the model saw of each image under its overall map, the grid and
// the identical-method note
async function showExplanation(ctx, views, result) {
  const { state, stats } = ctx;
  state.pair.explanation = result;
  clearRegion(state);
  await Promise.all(SIDES.map((side) => views[side].setImage(seenUrl(result[side], 1024),
    result[side].image_size, result[side].crop)));
  stats.explains += 1;
  restPair(state, views);
  showGrid(result);
  showIdentical(ctx, result.explanation_id);
  document.dispatchEvent(new CustomEvent("simexplain:pair"));
}

// after a failed explanation nothing old stays up under the new names: the picked images
// are shown without maps, the score is gone, and the error sits on the image that failed
async function showFailure({ state, feedback }, views, error) {
  state.pair.explanation = null;
  document.dispatchEvent(new CustomEvent("simexplain:pair"));
  clearNotes();
  clearRegion(state);
  describe(state);
  const sides = error.side ? [error.side] : SIDES;
  await Promise.all(SIDES.map(async (side) => {
    const id = state.pair[side];
    $(`#caption-${side}`).textContent = captionFor(state, id);
    await views[side].showPlain(`/api/images/${id}?max_side=1024`);
  }));
  for (const side of sides) {
    const message = errorText(error);
    const name = captionFor(state, state.pair[side]);
    feedback.panelError(side, message.includes(name) ? message : `${name}: ${message}`);
  }
}

// `explain()`: the picked pair explained; a newer call aborts an older one's request, and
// only the newest one ends the busy state
function explainer(ctx, views, queue) {
  let running = null;
  return async function explain() {
    const { a, b } = ctx.state.pair;
    if (!a || !b) return;
    if (running) running.abort();
    const abort = new AbortController();
    running = abort;
    queue.cancel();
    setBusy(ctx, true);
    try {
      const { state } = ctx;
      const result = await api("/api/explain",
        { a, b, method: state.method, model: state.model, size: state.size }, abort.signal);
      await showExplanation(ctx, views, result);
    } catch (error) {
      if (error && error.name === "AbortError") return; // a newer request owns the panels
      await showFailure(ctx, views, error);
    } finally {
      if (running === abort) setBusy(ctx, false);
    }
  };
}

// the pointer and keyboard on one side's view: hover asks for a point map on the other side,
// a dragged box for a region map, a click clears the region, leaving restores the overall maps
function wireGestures(state, views, side, queue) {
  const view = views[side];
  gestures(view, {
    hover(point) {
      const e = state.pair.explanation;
      if (!e) return;
      // the pointer itself is drawn at once; the map on the other side follows
      view.markers = [{ row: point[0], col: point[1], kind: "cross" }];
      view.setMap(e[side].overall, overallUnit(e));
      view.box = state.pair.boxSide === side ? state.pair.box : null;
      view.render();
      view.showValue(point);
      queue.push({ kind: "point", body: {
        explanation_id: e.explanation_id, side, row: point[0], col: point[1] } });
    },
    box(box) {
      const e = state.pair.explanation;
      if (!e) return;
      state.pair.box = box; state.pair.boxSide = side;
      view.box = box; view.markers = [];
      view.render();
      if (box[2] - box[0] < 1 || box[3] - box[1] < 1) return;
      queue.push({ kind: "region", body: { explanation_id: e.explanation_id, side, box } });
    },
    click() {
      queue.cancel();
      clearRegion(state);
      restPair(state, views);
    },
    leave() {
      queue.cancel();
      view.showValue(null);
      restPair(state, views);
    },
  });
}

export function createPair(ctx, pickers) {
  const { state, stats, feedback } = ctx;
  const views = {};
  const queue = new Latest(
    (job) => api(job.kind === "point" ? "/api/point" : "/api/region", job.body),
    (result, job) => showLiveMap(state, views, result, job), { stats, onError: feedback.fail });
  const explain = explainer(ctx, views, queue);
  for (const side of SIDES) {
    const view = new MapView($(`#view-${side}`), () => pairBounds(side), state);
    view.scale_ = $(`#scale-${side}`);
    view.readout = $(`#readout-${side}`);
    views[side] = view;
    pickers.add(side, (id) => {
      state.pair[side] = id;
      explain();
    });
    wireGestures(state, views, side, queue);
  }
  const layout = () => { for (const side of SIDES) views[side].layout(); };
  return { views, explain, layout };
}
