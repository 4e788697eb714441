// simexplain page: pair view and gallery view. Plain JS, no build step.
//
// Maps arrive as small float grids (the model's feature grid) and are drawn by mapview.js's
// `MapView` (loaded before this file, shared with the notebook widget); pointer updates go
// through its single-flight queue `Latest`.
"use strict";

const $ = (selector, root = document) => root.querySelector(selector);

// ---------------------------------------------------------------------------------------------
// state and counters (the counters are read by the browser tests)
const state = {
  models: null,
  model: null,
  method: "decomposition",
  size: null, // the model's input size (short side, pixels); null: the model's own
  identical: {}, // explanation id -> /api/identical's answer
  alpha: 0.55,
  signed: true,
  view: "pair",
  images: { samples: [], gallery: [], uploads: [] },
  pair: { a: null, b: null, explanation: null, box: null, boxSide: null, region: null },
  gallery: { query: null, search: null, box: null },
};
const stats = {
  ...queueStats(), explains: 0, searches: 0, errors: 0, lastError: null,
  identicalFor: null, // "explanation_id method" of the identical-method note shown
};

// ---------------------------------------------------------------------------------------------
// the API
async function api(path, body, signal) {
  const options = { signal };
  if (body !== undefined) {
    options.method = "POST";
    if (body instanceof FormData) {
      options.body = body;
    } else {
      options.headers = { "Content-Type": "application/json" };
      options.body = JSON.stringify(body);
    }
  }
  const response = await fetch(path, options);
  let data = null;
  try { data = await response.json(); } catch (_) { data = null; }
  if (!response.ok) {
    const error = new Error((data && data.error) || `${response.status} ${response.statusText}`);
    error.side = data && data.side; // which image failed, when the server knows
    throw error;
  }
  return data;
}

function setStatus(message, isError = false) {
  const el = $("#status");
  el.textContent = message || "";
  el.classList.toggle("error", isError);
  if (isError) { stats.errors += 1; stats.lastError = message; }
}

function fail(error) {
  if (error && error.name === "AbortError") return;
  setStatus(String(error && error.message ? error.message : error), true);
}

// per-panel states ("a", "b", "query"): computing (the old map dimmed under a spinner), or
// an error shown on the panel of the image that failed
function panelBusy(panel, message) {
  const overlay = $(`#computing-${panel}`);
  overlay.hidden = !message;
  $(".computing-text", overlay).textContent = message || "";
  $(`#view-${panel}`).classList.toggle("stale", Boolean(message));
}

function panelError(panel, message) {
  const box = $(`#error-${panel}`);
  box.hidden = !message;
  box.textContent = message || "";
  if (message) { stats.errors += 1; stats.lastError = message; }
}

// ---------------------------------------------------------------------------------------------
// image pickers
const pickers = [];

function fillPicker(select) {
  const current = select.value;
  select.innerHTML = "";
  const groups = [["Samples", state.images.samples], ["Gallery", state.images.gallery],
    ["Uploads", state.images.uploads]];
  for (const [label, items] of groups) {
    if (!items.length) continue;
    const group = document.createElement("optgroup");
    group.label = label;
    for (const item of items) {
      const option = document.createElement("option");
      option.value = item.id;
      option.textContent = item.name;
      group.appendChild(option);
    }
    select.appendChild(group);
  }
  if (current) select.value = current;
}

function allImages() {
  return [...state.images.samples, ...state.images.gallery, ...state.images.uploads];
}

function megabytes(count) { return `${Number((count / 2 ** 20).toPrecision(3))} MB`; }

async function upload(file) {
  const limit = state.models && state.models.upload_limit_bytes;
  if (limit && file.size > limit) {
    throw new Error(`${file.name}: the file (${megabytes(file.size)}) is larger than the ` +
      `upload limit of ${megabytes(limit)}`);
  }
  const form = new FormData();
  form.append("file", file, file.name);
  const info = await api("/api/images", form);
  if (!state.images.uploads.some((item) => item.id === info.id)) state.images.uploads.push(info);
  for (const select of pickers) fillPicker(select);
  return info;
}

// an upload control with its error beside it ("panel": a, b or query); files dropped on the
// panel take the same path as the file input
function pickerWithUpload(panel, onPick) {
  const select = $(`#pick-${panel}`);
  const input = $(`#upload-${panel}`);
  const problem = $(`#upload-error-${panel}`);
  pickers.push(select);
  select.addEventListener("change", () => onPick(select.value));
  input.addEventListener("change", () => {
    const file = input.files && input.files[0];
    input.value = "";
    if (file) useFile(file);
  });
  const zone = input.closest(".panel");
  let depth = 0; // dragenter/leave fire for every child crossed
  zone.addEventListener("dragenter", (event) => {
    event.preventDefault(); depth += 1; zone.classList.add("dropping");
  });
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    if (event.dataTransfer) event.dataTransfer.dropEffect = "copy";
  });
  zone.addEventListener("dragleave", () => {
    depth = Math.max(0, depth - 1);
    if (!depth) zone.classList.remove("dropping");
  });
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    depth = 0; zone.classList.remove("dropping");
    const files = event.dataTransfer && event.dataTransfer.files;
    if (files && files.length) useFile(files[0]);
  });
  async function useFile(file) {
    problem.hidden = true;
    problem.textContent = "";
    input.parentElement.classList.add("uploading");
    try {
      const info = await upload(file);
      select.value = info.id;
      onPick(info.id);
    } catch (error) {
      const message = String(error.message || error);
      problem.textContent = message.startsWith(file.name) ? message : `${file.name}: ${message}`;
      problem.hidden = false;
      stats.errors += 1; stats.lastError = problem.textContent;
    } finally {
      input.parentElement.classList.remove("uploading");
    }
  }
}

// ---------------------------------------------------------------------------------------------
// pair view
const pairViews = {};
let explainAbort = null;

const pairQueue = new Latest(
  (job) => api(job.kind === "point" ? "/api/point" : "/api/region", job.body),
  (result, job) => showPairMap(result, job), { stats, onError: fail });

function other(side) { return side === "a" ? "b" : "a"; }

async function explainPair() {
  const { a, b } = state.pair;
  if (!a || !b) return;
  if (explainAbort) explainAbort.abort();
  const abort = new AbortController();
  explainAbort = abort;
  pairQueue.cancel();
  document.body.classList.add("busy");
  for (const side of ["a", "b"]) {
    panelError(side, null);
    panelBusy(side, `computing ${state.method} with ${state.model} ...`);
  }
  $("#pair-info").classList.add("stale");
  setStatus("");
  try {
    const result = await api("/api/explain",
      { a, b, method: state.method, model: state.model, size: state.size }, abort.signal);
    state.pair.explanation = result;
    state.pair.box = null; state.pair.region = null; state.pair.boxSide = null;
    await Promise.all(["a", "b"].map((side) =>
      pairViews[side].setImage(`${result[side].url}?max_side=1024`, result[side].image_size,
        result[side].crop)));
    stats.explains += 1;
    restPair();
    showGrid(result);
    showIdentical(result.explanation_id);
  } catch (error) {
    if (error && error.name === "AbortError") return; // a newer request owns the panels
    await pairFailed(error);
  } finally {
    if (explainAbort === abort) {
      for (const side of ["a", "b"]) panelBusy(side, null);
      $("#pair-info").classList.remove("stale");
      document.body.classList.remove("busy");
    }
  }
}

// after a failed explanation nothing old stays up under the new names: the picked images
// are shown without maps, the score is gone, and the error sits on the image that failed
async function pairFailed(error) {
  state.pair.explanation = null;
  $("#grid-info").textContent = "";
  $("#method-note").textContent = "";
  for (const option of $("#method").options) option.textContent = option.value;
  state.pair.box = null; state.pair.region = null; state.pair.boxSide = null;
  describePair();
  const failed = error.side ? [error.side] : ["a", "b"];
  await Promise.all(["a", "b"].map(async (side) => {
    const id = state.pair[side];
    $(`#caption-${side}`).textContent = captionFor(id);
    await pairViews[side].showPlain(`/api/images/${id}?max_side=1024`);
  }));
  for (const side of failed) {
    const message = String(error.message || error);
    const name = captionFor(state.pair[side]);
    panelError(side, message.includes(name) ? message : `${name}: ${message}`);
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
  const notes = identicalNotes(found, e.method);
  $("#method-note").textContent = notes.join("; ");
  stats.identicalFor = `${explanationId} ${e.method}`;
  for (const option of $("#method").options) {
    const same = (found.methods[option.value] || []).filter((r) => r.relation === "identical");
    option.textContent = same.length ?
      `${option.value} (= ${same.map((r) => r.method).join(", ")} here)` : option.value;
  }
}

function identicalNotes(found, method) {
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

function describePair(extra) {
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
function restPair() {
  const e = state.pair.explanation;
  if (!e) return;
  for (const side of ["a", "b"]) {
    const view = pairViews[side];
    view.setMap(e[side].overall, overallUnit(e));
    view.markers = [];
    view.cell = null;
    view.box = state.pair.boxSide === side ? state.pair.box : null;
  }
  let extra = "";
  if (state.pair.region) {
    const r = state.pair.region;
    pairViews[r.side].setMap(r.no_map ? null : r.map, `region map: ${mapUnit(r)}`);
    pairViews[r.side].markers = rings(r);
    extra = `${term("region s<sub>R</sub>", TIPS.sR)} = ${r.partial_score.toFixed(4)}`;
  }
  for (const side of ["a", "b"]) pairViews[side].render();
  $("#caption-a").textContent = captionFor(e.a.id);
  $("#caption-b").textContent = captionFor(e.b.id);
  describePair(extra);
}

function captionFor(id) {
  const item = allImages().find((x) => x.id === id);
  return item ? item.name : id;
}

function showPairMap(result, job) {
  const e = state.pair.explanation;
  if (!e || job.body.explanation_id !== e.explanation_id) return;
  const here = job.body.side;
  const there = result.side;
  const target = pairViews[there];
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
    describePair(`${term("region s<sub>R</sub>", TIPS.sR)} = ${result.partial_score.toFixed(4)}; ${shown}`);
  } else {
    describePair(shown);
  }
  const source = pairViews[here];
  source.cell = job.kind === "point" ? result.query_cell : null;
  source.render();
}

// the pair's canvases share the width of the page (two columns, or one on narrow screens)
function pairBounds(side) {
  const stage = $(`#view-${side}`).parentElement;
  const width = Math.max(160, Math.floor(stage.clientWidth));
  const height = Math.max(280, Math.min(720, window.innerHeight - 260));
  return [width, height];
}

function setupPair() {
  for (const side of ["a", "b"]) {
    const view = new MapView($(`#view-${side}`), () => pairBounds(side), state);
    view.scale_ = $(`#scale-${side}`);
    view.readout = $(`#readout-${side}`);
    pairViews[side] = view;
    pickerWithUpload(side, (id) => {
      state.pair[side] = id;
      explainPair();
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
        pairQueue.push({ kind: "point", body: {
          explanation_id: e.explanation_id, side, row: point[0], col: point[1] } });
      },
      box(box, final) {
        const e = state.pair.explanation;
        if (!e) return;
        state.pair.box = box; state.pair.boxSide = side;
        view.box = box; view.markers = [];
        view.render();
        if (box[2] - box[0] < 1 || box[3] - box[1] < 1) return;
        pairQueue.push({ kind: "region", body: {
          explanation_id: e.explanation_id, side, box } });
      },
      click() {
        pairQueue.cancel();
        state.pair.box = null; state.pair.boxSide = null; state.pair.region = null;
        restPair();
      },
      leave() {
        pairQueue.cancel();
        view.showValue(null);
        restPair();
      },
    });
  }
}

// ---------------------------------------------------------------------------------------------
// gallery view
let queryView = null;
let resultViews = []; // [{id, view, hit, card}]
let searchAbort = null;

const galleryQueue = new Latest(
  (job) => api("/api/search/point", job.body),
  (result, job) => showResultMaps(result, job), { stats, onError: fail });

async function runSearch(box) {
  const query = state.gallery.query;
  if (!query) return;
  if (searchAbort) searchAbort.abort();
  const abort = new AbortController();
  searchAbort = abort;
  galleryQueue.cancel();
  document.body.classList.add("busy");
  panelError("query", null);
  panelBusy("query", box ? "searching by region ..." : "searching ...");
  $("#results").classList.add("stale");
  setStatus("");
  try {
    const k = Number($("#k").value);
    const result = await api("/api/search", { query, box: box || null, k }, abort.signal);
    state.gallery.search = result;
    state.gallery.box = result.box;
    const q = result.query;
    if (queryView.loadedId !== q.shown_id) {
      await queryView.setImage(`${q.url}?max_side=1024`, q.image_size, q.crop);
      queryView.loadedId = q.shown_id;
    }
    await showResults(result);
    stats.searches += 1;
    restGallery();
    const what = result.box ? "region" : "whole image";
    $("#caption-query").textContent =
      `${captionFor(query)} · ranked by ${what} · ${result.similarity}`;
  } catch (error) {
    if (error && error.name === "AbortError") return;
    // no old ranking under the new query: the query alone, the error on it
    state.gallery.search = null;
    $("#results").innerHTML = "";
    resultViews = [];
    queryView.loadedId = null;
    await queryView.showPlain(`/api/images/${query}?max_side=1024`);
    $("#caption-query").textContent = captionFor(query);
    const message = String(error.message || error);
    const name = captionFor(query);
    panelError("query", message.includes(name) ? message : `${name}: ${message}`);
  } finally {
    if (searchAbort === abort) {
      panelBusy("query", null);
      $("#results").classList.remove("stale");
      document.body.classList.remove("busy");
    }
  }
}

async function showResults(result) {
  const container = $("#results");
  container.innerHTML = "";
  resultViews = [];
  const loads = [];
  for (const hit of result.hits) {
    const card = document.createElement("figure");
    card.className = "card";
    card.dataset.id = hit.id;
    card.dataset.rank = String(hit.rank);
    const canvas = document.createElement("canvas");
    canvas.width = 180; canvas.height = 180;
    const meta = document.createElement("figcaption");
    meta.className = "meta";
    meta.innerHTML = `<span>#${hit.rank} <b>${hit.score.toFixed(4)}</b></span>` +
      `<span class="name" title="${escapeHtml(hit.name)}">${escapeHtml(hit.name)}</span>`;
    card.append(canvas, meta);
    container.appendChild(card);
    const view = new MapView(canvas, [180, 180], state);
    view.setMap(hit.map);
    resultViews.push({ id: hit.id, view, hit, card });
    card.addEventListener("click", () => openPair(result.query.id, hit.id));
    loads.push(view.setImage(`${hit.url}?max_side=256`, hit.image_size, hit.crop));
  }
  await Promise.all(loads);
}

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({
    "&": "&amp;", "<": "&lt;", ">": "&gt;", "\"": "&quot;", "'": "&#39;" }[c]));
}

function restGallery() {
  queryView.setMap(null);
  queryView.markers = [];
  queryView.box = state.gallery.box;
  queryView.render();
  for (const r of resultViews) {
    r.view.setMap(r.hit.map);
    r.view.markers = [];
    r.view.render();
  }
}

function visibleResults() {
  const height = window.innerHeight; const width = window.innerWidth;
  return resultViews.filter((r) => {
    const rect = r.card.getBoundingClientRect();
    return rect.bottom > 0 && rect.top < height && rect.right > 0 && rect.left < width;
  }).map((r) => r.id);
}

function showResultMaps(result, job) {
  const search = state.gallery.search;
  if (!search || job.body.search_id !== search.search_id) return;
  const byId = new Map(resultViews.map((r) => [r.id, r]));
  for (const item of result.maps) {
    const r = byId.get(item.id);
    if (!r) continue;
    r.view.setMap(item.no_map ? null : item.map);
    // the strongest match only: numbered rings crowd a thumbnail
    r.view.markers = item.no_map ? [] : [{ ...item.argmax, kind: "ring" }];
    r.view.render();
  }
}

function setupGallery() {
  queryView = new MapView($("#view-query"), [360, 360], state);
  pickerWithUpload("query", (id) => {
    state.gallery.query = id;
    state.gallery.box = null;
    runSearch(null);
  });
  $("#k").addEventListener("change", () => runSearch(state.gallery.box));
  gestures(queryView, {
    hover(point) {
      const search = state.gallery.search;
      if (!search) return;
      queryView.markers = [{ row: point[0], col: point[1], kind: "cross" }];
      queryView.render();
      const results = visibleResults();
      if (!results.length) return;
      galleryQueue.push({ body: {
        search_id: search.search_id, results, row: point[0], col: point[1] } });
    },
    box(box, final) {
      galleryQueue.cancel();
      queryView.box = box; queryView.markers = [];
      queryView.render();
      if (final && box[2] - box[0] >= 1 && box[3] - box[1] >= 1) runSearch(box);
    },
    click() {
      galleryQueue.cancel();
      if (state.gallery.box) runSearch(null); else restGallery();
    },
    leave() {
      galleryQueue.cancel();
      if (state.gallery.search) restGallery();
    },
  });
}

function openPair(a, b) {
  state.pair.a = a; state.pair.b = b;
  $("#pick-a").value = a; $("#pick-b").value = b;
  if (state.models.index && state.model !== state.models.index.model) {
    state.model = state.models.index.model;
    $("#model").value = state.model;
    fillSizes();
  }
  switchView("pair");
  explainPair();
}

// ---------------------------------------------------------------------------------------------
// figure export (PNG of what is on screen, with a caption line)
function figureCanvas() {
  const pad = 12; const titleHeight = 26;
  let panels; let title;
  if (state.view === "pair") {
    const e = state.pair.explanation;
    panels = [pairViews.a.canvas, pairViews.b.canvas];
    title = e ? `${e.model} · ${e.method} · score ${e.score.toFixed(4)} (${e.similarity})` : "";
    if (state.pair.region) title += ` · region s_R ${state.pair.region.partial_score.toFixed(4)}`;
  } else {
    panels = [queryView.canvas, ...resultViews.map((r) => r.view.canvas)];
    const s = state.gallery.search;
    title = s ? `${s.model} · query ${captionFor(s.query.id)}${s.box ? " (region)" : ""}` : "";
  }
  const columns = state.view === "pair" ? 2 : Math.min(5, panels.length);
  const rows = [];
  for (let i = 0; i < panels.length; i += columns) rows.push(panels.slice(i, i + columns));
  const width = pad + Math.max(...rows.map((row) =>
    row.reduce((sum, c) => sum + c.width + pad, 0)));
  const height = titleHeight + pad + rows.reduce((sum, row) =>
    sum + Math.max(...row.map((c) => c.height)) + pad, 0);
  const out = document.createElement("canvas");
  out.width = width; out.height = height;
  const ctx = out.getContext("2d");
  ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, width, height);
  ctx.fillStyle = "#111"; ctx.font = "15px sans-serif";
  ctx.fillText(title, pad, 19);
  let y = titleHeight + pad;
  for (const row of rows) {
    let x = pad;
    for (const c of row) { ctx.drawImage(c, x, y); x += c.width + pad; }
    y += Math.max(...row.map((c) => c.height)) + pad;
  }
  return out;
}

function download() {
  const canvas = figureCanvas();
  canvas.toBlob((blob) => {
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = `simexplain-${state.view}.png`;
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 1000);
  }, "image/png");
}

// ---------------------------------------------------------------------------------------------
// views, controls, start-up
function switchView(view) {
  state.view = view;
  $("#pair-view").hidden = view !== "pair";
  $("#gallery-view").hidden = view !== "gallery";
  for (const tab of document.querySelectorAll(".tab")) {
    tab.setAttribute("aria-pressed", String(tab.dataset.view === view));
  }
  const indexModel = state.models && state.models.index && state.models.index.model;
  $("#model").disabled = view === "gallery";
  $("#method").disabled = view === "gallery";
  $("#size").disabled = view === "gallery" || !modelInfo().input_size;
  if (view === "gallery" && indexModel) $("#model").value = indexModel;
  if (view === "pair") {
    $("#model").value = state.model;
    for (const side of ["a", "b"]) if (pairViews[side]) pairViews[side].layout();
  }
  if (view === "gallery" && !state.gallery.search && state.gallery.query) runSearch(null);
}

function redrawAll() {
  for (const view of [pairViews.a, pairViews.b, queryView, ...resultViews.map((r) => r.view)]) {
    if (!view) continue;
    view.invalidate();
    view.render();
  }
}

async function start() {
  setupPair();
  setupGallery();
  try {
    state.models = await api("/api/models");
  } catch (error) { fail(error); return; }
  const models = state.models;
  state.model = models.default;
  const modelSelect = $("#model");
  for (const m of models.models) {
    const option = document.createElement("option");
    option.value = m.name;
    option.textContent = m.name;
    if (m.description) option.title = m.description;
    modelSelect.appendChild(option);
  }
  modelSelect.value = state.model;
  modelSelect.addEventListener("change", () => {
    state.model = modelSelect.value;
    fillSizes();
    // a model opens on a pair that suits it (two faces for a face model), when it has one
    samplePair();
    explainPair();
  });
  fillSizes();
  $("#size").addEventListener("change", () => {
    const value = Number($("#size").value);
    state.size = value === modelInfo().input_size ? null : value;
    explainPair();
  });
  const methodSelect = $("#method");
  for (const m of models.methods) {
    const option = document.createElement("option");
    option.value = m; option.textContent = m;
    methodSelect.appendChild(option);
  }
  methodSelect.value = state.method;
  methodSelect.addEventListener("change", () => { state.method = methodSelect.value; explainPair(); });
  $("#opacity").addEventListener("input", (event) => {
    state.alpha = Number(event.target.value) / 100; redrawAll();
  });
  state.alpha = Number($("#opacity").value) / 100;
  $("#signed").addEventListener("change", (event) => {
    state.signed = event.target.checked; redrawAll();
  });
  state.signed = $("#signed").checked;
  $("#download").addEventListener("click", download);
  for (const tab of document.querySelectorAll(".tab")) {
    tab.addEventListener("click", () => switchView(tab.dataset.view));
  }

  const [samples, gallery] = await Promise.all([
    api("/api/images?source=samples&limit=1000"),
    models.index ? api("/api/images?source=gallery&limit=1000") : Promise.resolve({ images: [] }),
  ]).catch((error) => { fail(error); return [{ images: [] }, { images: [] }]; });
  state.images.samples = samples.images;
  state.images.gallery = gallery.images;
  for (const select of pickers) fillPicker(select);

  const all = allImages();
  if (models.index) {
    $("#tab-gallery").disabled = false;
    $("#tab-gallery").title = `${models.index.size} images, ${models.index.model}`;
    if (state.images.gallery.length) {
      state.gallery.query = state.images.gallery[0].id;
      $("#pick-query").value = state.gallery.query;
    }
  }
  const fromHash = () => {
    const hash = window.location.hash.replace("#", "");
    if ((hash === "gallery" && models.index) || hash === "pair") switchView(hash);
  };
  window.addEventListener("hashchange", fromHash);
  fromHash();
  if (samplePair()) {
    await explainPair();
  } else if (all.length >= 2) {
    state.pair.a = all[0].id; state.pair.b = all[1].id;
    $("#pick-a").value = state.pair.a; $("#pick-b").value = state.pair.b;
    await explainPair();
  } else if (state.view === "pair") {
    setStatus("upload two images to begin");
  }
}

function modelInfo() {
  if (!state.models) return {};
  return state.models.models.find((m) => m.name === state.model) || {};
}

// the current model's own sample pair in the pickers (false when it has none)
function samplePair() {
  const pair = modelInfo().sample_pair;
  if (!pair) return false;
  [state.pair.a, state.pair.b] = pair;
  $("#pick-a").value = pair[0]; $("#pick-b").value = pair[1];
  return true;
}

// input sizes for the current model: its own and finer ones, up to the server's limit
function fillSizes() {
  const select = $("#size");
  const own = modelInfo().input_size;
  select.innerHTML = "";
  state.size = null;
  select.disabled = !own;
  if (!own) {
    const option = document.createElement("option");
    option.textContent = "fixed";
    select.appendChild(option);
    return;
  }
  const limit = state.models.max_input_side;
  const sizes = [1, 1.5, 2, 3, 4].map((f) => Math.round(own * f / 8) * 8 || own)
    .filter((v, i) => i === 0 || v <= limit);
  sizes[0] = own;
  for (const value of [...new Set(sizes)]) {
    const option = document.createElement("option");
    option.value = String(value);
    option.textContent = value === own ? `${value} px (model's)` : `${value} px`;
    select.appendChild(option);
  }
  select.value = String(own);
}

let resizeTimer = null;
window.addEventListener("resize", () => {
  clearTimeout(resizeTimer);
  resizeTimer = setTimeout(() => {
    for (const side of ["a", "b"]) if (pairViews[side]) pairViews[side].layout();
  }, 100);
});

window.simexplain = {
  state, stats, pairViews, get queryView() { return queryView; },
  get results() { return resultViews; }, figureCanvas, switchView, runSearch,
};
start();
