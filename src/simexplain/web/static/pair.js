// The pair view: two images, their overall maps, point maps while the pointer moves over one
// (through the single-flight queue), region maps for a dragged box, the score line under
// them and the identical-method note. `createPair(ctx, pickers)` wires the two panels and
// gives `explain()` (explain the picked pair), `views` (the two MapViews) and `layout()`.

import { api, errorText } from "./api.js";
import { $, escapeHtml } from "./dom.js";
import { fmt, mapUnit, rings, SCORE_UNIT } from "./labels.js";
import { Latest } from "./latest.js";
import { gestures, MapView } from "./mapview.js";
import { captionFor, clearRegion } from "./state.js";

const SIDES = ["a", "b"];

// one-sentence explanations of the numbers on the page
const TIPS = {
  score: "The model's own similarity of the two images (its embeddings compared by the " +
    "similarity shown); the decomposition maps split exactly this number over the images.",
  residual: "|sum of the decomposition - score|: how far the maps are from adding up to the " +
    "score. Float rounding (about 1e-7) for heads the decomposition is exact for.",
  tokens: "The share of the score carried by each image's class (and register) tokens, " +
    "which have no place in the image; the overall map and this share add up to the score.",
  flat: "At this layer the model reads only its class token: no cell of the grid carries " +
    "anything of its own, so the map explains nothing spatially. Explain an earlier layer.",
  sR: "s_R, the partial similarity: the share of the score carried by the selected region " +
    "(the overall map summed inside the box).",
  value: "Map values are the share of the score each feature cell carries; red raises the " +
    "score, blue lowers it.",
};

function term(name, tip) { return `<b class="term" title="${escapeHtml(tip)}">${name}</b>`; }

function overallUnit(e) {
  return e.signed ? SCORE_UNIT : `${e.method}: relative saliency (no unit)`;
}

// the notes on which methods give the same maps as `method` for this pair (the server's
// /api/identical answer)
export function identicalNotes(found, method) {
  const notes = [];
  const own = found.methods[method] || [];
  const same = own.filter((r) => r.relation === "identical").map((r) => r.method);
  if (same.length) notes.push(`identical to ${same.join(", ")} for this model's head`);
  const part = own.filter((r) => r.relation === "positive part").map((r) => r.method);
  if (part.length) notes.push(`the positive part of ${part.join(", ")} for this model's head`);
  const parts = Object.entries(found.methods).filter(([, rs]) =>
    rs.some((r) => r.method === method && r.relation === "positive part")).map(([m]) => m);
  if (parts.length) notes.push(`its positive part is ${parts.join(", ")} for this model's head`);
  return notes;
}

// the pair's canvases share the width of the page (two columns, or one on narrow screens)
function pairBounds(side) {
  const stage = $(`#view-${side}`).parentElement;
  const width = Math.max(160, Math.floor(stage.clientWidth));
  const height = Math.max(280, Math.min(720, window.innerHeight - 260));
  return [width, height];
}

export function createPair({ state, stats, feedback }, pickers) {
  const views = {};
  let explainAbort = null;
  const queue = new Latest(
    (job) => api(job.kind === "point" ? "/api/point" : "/api/region", job.body),
    (result, job) => showMap(result, job), { stats, onError: feedback.fail });

  async function explain() {
    const { a, b } = state.pair;
    if (!a || !b) return;
    if (explainAbort) explainAbort.abort();
    const abort = new AbortController();
    explainAbort = abort;
    queue.cancel();
    document.body.classList.add("busy");
    for (const side of SIDES) {
      feedback.panelError(side, null);
      feedback.panelBusy(side, `computing ${state.method} with ${state.model} ...`);
    }
    $("#pair-info").classList.add("stale");
    feedback.setStatus("");
    try {
      const result = await api("/api/explain",
        { a, b, method: state.method, model: state.model, size: state.size }, abort.signal);
      state.pair.explanation = result;
      clearRegion(state);
      await Promise.all(SIDES.map((side) =>
        views[side].setImage(`${result[side].url}?max_side=1024`, result[side].image_size,
          result[side].crop)));
      stats.explains += 1;
      rest();
      showGrid(result);
      showIdentical(result.explanation_id);
      document.dispatchEvent(new CustomEvent("simexplain:pair"));
    } catch (error) {
      if (error && error.name === "AbortError") return; // a newer request owns the panels
      await failed(error);
    } finally {
      if (explainAbort === abort) {
        for (const side of SIDES) feedback.panelBusy(side, null);
        $("#pair-info").classList.remove("stale");
        document.body.classList.remove("busy");
      }
    }
  }

  // after a failed explanation nothing old stays up under the new names: the picked images
  // are shown without maps, the score is gone, and the error sits on the image that failed
  async function failed(error) {
    state.pair.explanation = null;
    document.dispatchEvent(new CustomEvent("simexplain:pair"));
    $("#grid-info").textContent = "";
    $("#method-note").textContent = "";
    for (const option of $("#method").options) option.textContent = option.value;
    clearRegion(state);
    describe();
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

  // the feature grid the maps are on (the input size picks it)
  function showGrid(e) {
    const [ga, gb] = [e.a.grid.join("x"), e.b.grid.join("x")];
    $("#grid-info").textContent = ga === gb ? `grid ${ga}` : `grid a ${ga} · b ${gb}`;
    $("#grid-info").title = `the maps are on the model's feature grid: ${e.size ? e.size + " px input" : ""}`;
  }

  // which methods give the same maps as the shown one, as computed by the server for this pair
  async function showIdentical(explanationId) {
    let found = state.identical[explanationId];
    if (!found) {
      try {
        found = await api("/api/identical", { explanation_id: explanationId });
      } catch (error) { return; } // a note only: the maps stand without it
      state.identical[explanationId] = found;
    }
    const e = state.pair.explanation;
    if (!e || e.explanation_id !== explanationId) return;
    $("#method-note").textContent = identicalNotes(found, e.method).join("; ");
    stats.identicalFor = `${explanationId} ${e.method}`;
    for (const option of $("#method").options) {
      const same = (found.methods[option.value] || []).filter((r) => r.relation === "identical");
      option.textContent = same.length ?
        `${option.value} (= ${same.map((r) => r.method).join(", ")} here)` : option.value;
    }
  }

  function describe(extra) {
    const e = state.pair.explanation;
    if (!e) { $("#pair-info").textContent = ""; return; }
    const parts = [`${term("score", TIPS.score)} (${e.similarity}) = ${e.score.toFixed(4)}`,
      `${term("residual", TIPS.residual)} ${e.residual.toExponential(1)}`, `model ${e.model}`,
      `maps: ${e.method}`];
    if (e.a.token_share || e.b.token_share) {
      parts.push(`${term("class tokens", TIPS.tokens)} a ${e.a.token_share.toFixed(4)}, ` +
        `b ${e.b.token_share.toFixed(4)}`);
    }
    if (!e.a.spatial || !e.b.spatial) {
      parts.push(`<b class="warning" title="${escapeHtml(TIPS.flat)}">no spatial map at this ` +
        "layer</b>");
    }
    if (extra) parts.push(extra);
    $("#pair-info").innerHTML = parts.join(" &middot; ");
  }

  // the resting display: overall maps, or the pinned box and its region map
  function rest() {
    const e = state.pair.explanation;
    if (!e) return;
    for (const side of SIDES) {
      const view = views[side];
      view.setMap(e[side].overall, overallUnit(e));
      view.markers = [];
      view.cell = null;
      view.box = state.pair.boxSide === side ? state.pair.box : null;
    }
    let extra = "";
    if (state.pair.region) {
      const r = state.pair.region;
      views[r.side].setMap(r.no_map ? null : r.map, `region map: ${mapUnit(r)}`);
      views[r.side].markers = rings(r);
      extra = `${term("region s<sub>R</sub>", TIPS.sR)} = ${r.partial_score.toFixed(4)}`;
    }
    for (const side of SIDES) views[side].render();
    $("#caption-a").textContent = captionFor(state, e.a.id);
    $("#caption-b").textContent = captionFor(state, e.b.id);
    describe(extra);
  }

  function showMap(result, job) {
    const e = state.pair.explanation;
    if (!e || job.body.explanation_id !== e.explanation_id) return;
    const here = job.body.side;
    const there = result.side;
    const target = views[there];
    // no_map: the point carries no contribution, so there is nothing to draw (not a flat map)
    target.setMap(result.no_map ? null : result.map, `${job.kind} map: ${mapUnit(result)}`);
    target.markers = rings(result);
    target.box = null;
    target.cell = null;
    target.render();
    // point and region maps always come from the decomposition, whatever the Method menu says
    const what = `${job.kind} map: decomposition, ${result.label}`;
    const own = e.point_maps ? "" : ` (${e.method} has no ${job.kind} maps)`;
    const shown = result.no_map ? `no ${job.kind} map on ${there}: this ${job.kind} carries no ` +
      "contribution" : `${what} on ${there}${own}; rings 1-${rings(result).length}: its ` +
      `strongest matches, max ${fmt(result.argmax.value)}`;
    if (job.kind === "region") {
      state.pair.region = result;
      describe(`${term("region s<sub>R</sub>", TIPS.sR)} = ${result.partial_score.toFixed(4)}; ${shown}`);
    } else {
      describe(shown);
    }
    const source = views[here];
    source.cell = job.kind === "point" ? result.query_cell : null;
    source.render();
  }

  for (const side of SIDES) {
    const view = new MapView($(`#view-${side}`), () => pairBounds(side), state);
    view.scale_ = $(`#scale-${side}`);
    view.readout = $(`#readout-${side}`);
    views[side] = view;
    pickers.add(side, (id) => {
      state.pair[side] = id;
      explain();
    });
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
        queue.push({ kind: "region", body: {
          explanation_id: e.explanation_id, side, box } });
      },
      click() {
        queue.cancel();
        clearRegion(state);
        rest();
      },
      leave() {
        queue.cancel();
        view.showValue(null);
        rest();
      },
    });
  }

  function layout() {
    for (const side of SIDES) views[side].layout();
  }

  return { views, explain, layout };
}
