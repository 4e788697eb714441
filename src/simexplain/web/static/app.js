// simexplain page: pair view and gallery view. Plain JS, no build step.
//
// Maps arrive as small float grids (the model's feature grid) and are drawn here: bilinear
// upsampling (cell-centre aligned, as the server's `maps.upsample`), a colour map, and a
// blend over the image. Pointer updates go through `Latest`: at most one request in flight,
// a newer position replaces a pending one, and answers that arrive after the pointer left
// are dropped.
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
  pointRequests: 0, pointApplied: 0, inFlight: 0, maxInFlight: 0, superseded: 0,
  stale: 0, explains: 0, searches: 0, errors: 0, lastError: null,
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
// single-flight queue for pointer updates
class Latest {
  constructor(send, apply) {
    this.send = send;
    this.apply = apply;
    this.busy = false;
    this.pending = null;
    this.generation = 0;
  }
  push(job) {
    if (this.pending) stats.superseded += 1;
    this.pending = job;
    if (!this.busy) this.next();
  }
  cancel() {
    // drop what is queued and ignore what is in flight
    this.pending = null;
    this.generation += 1;
  }
  async next() {
    const job = this.pending;
    this.pending = null;
    if (!job) return;
    this.busy = true;
    const generation = this.generation;
    stats.inFlight += 1;
    stats.maxInFlight = Math.max(stats.maxInFlight, stats.inFlight);
    stats.pointRequests += 1;
    try {
      const result = await this.send(job);
      if (generation === this.generation) {
        this.apply(result, job);
        stats.pointApplied += 1;
      } else {
        stats.stale += 1;
      }
    } catch (error) {
      if (generation === this.generation) fail(error);
    } finally {
      stats.inFlight -= 1;
      this.busy = false;
      if (this.pending) this.next();
    }
  }
}

// ---------------------------------------------------------------------------------------------
// colour maps: 256-entry RGB tables
function clamp01(x) { return Math.max(0, Math.min(1, x)); }

// numbers for people: 3 significant digits, exponent only when needed
function fmt(x) {
  if (x === 0) return "0";
  const a = Math.abs(x);
  return a >= 1e-3 && a < 1e4 ? String(Number(x.toPrecision(3))) : x.toExponential(2);
}

function buildTable(fn) {
  const table = new Uint8ClampedArray(256 * 3);
  for (let i = 0; i < 256; i++) {
    const [r, g, b] = fn(i / 255);
    table[3 * i] = Math.round(r * 255);
    table[3 * i + 1] = Math.round(g * 255);
    table[3 * i + 2] = Math.round(b * 255);
  }
  return table;
}

// positive maps: the classic blue-cyan-yellow-red ramp
const JET = buildTable((t) => [
  clamp01(1.5 - Math.abs(4 * t - 3)), clamp01(1.5 - Math.abs(4 * t - 2)),
  clamp01(1.5 - Math.abs(4 * t - 1))]);

// signed maps: blue (negative) - white (0) - red (positive), the ColorBrewer RdBu ramp
const RDBU = [[5, 48, 97], [33, 102, 172], [67, 147, 195], [146, 197, 222], [209, 229, 240],
  [247, 247, 247], [253, 219, 199], [244, 165, 130], [214, 96, 77], [178, 24, 43],
  [103, 0, 31]];
const DIVERGING = buildTable((t) => {
  const x = t * (RDBU.length - 1);
  const i = Math.min(Math.floor(x), RDBU.length - 2);
  const f = x - i;
  return [0, 1, 2].map((c) => (RDBU[i][c] * (1 - f) + RDBU[i + 1][c] * f) / 255);
});

// ---------------------------------------------------------------------------------------------
// a canvas showing an image, optionally a map over it, a box and markers
function axis(n, cells) {
  // bilinear, cell-centre aligned: display pixel i -> feature coordinate
  const i0 = new Int32Array(n); const i1 = new Int32Array(n); const w = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    let f = (i + 0.5) * cells / n - 0.5;
    f = Math.min(Math.max(f, 0), cells - 1);
    const a = Math.floor(f);
    i0[i] = a; i1[i] = Math.min(a + 1, cells - 1); w[i] = f - a;
  }
  return { i0, i1, w };
}

class MapView {
  // bounds: [maxWidth, maxHeight] of the canvas, or a function giving them (panels that
  // follow the window's width)
  constructor(canvas, maxWidth, maxHeight) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d", { willReadFrequently: true });
    this.bounds = typeof maxWidth === "function" ? maxWidth : () => [maxWidth, maxHeight];
    this.cell = null; // the pointed cell's box, outlined
    this.image = null;
    this.imageSize = null; // [height, width] of the photo: points and boxes use its pixels
    this.crop = null; // [top, left, bottom, right] of the photo that the model saw
    this.base = null;
    this.map = null;
    this.overlay = null;
    this.box = null;
    this.markers = [];
    this.label = "";
    this.loading = null;
  }

  async setImage(url, imageSize, crop = null) {
    const key = url;
    this.loadingKey = key;
    const image = await new Promise((resolve, reject) => {
      const img = new Image();
      img.onload = () => resolve(img);
      img.onerror = () => reject(new Error(`cannot load ${url}`));
      img.src = url;
    });
    if (this.loadingKey !== key) return false;
    this.image = image;
    this.imageSize = imageSize;
    this.crop = crop || (imageSize ? [0, 0, imageSize[0], imageSize[1]] : null);
    this.layout(true);
    return true;
  }

  // the canvas sized to the image within the bounds, and the image drawn on it (again only
  // when its size changed, unless `redraw`: a new image)
  layout(redraw = false) {
    const image = this.image;
    if (!image) return;
    const [maxWidth, maxHeight] = this.bounds();
    const scale = Math.min(maxWidth / image.naturalWidth, maxHeight / image.naturalHeight);
    const width = Math.max(1, Math.round(image.naturalWidth * scale));
    const height = Math.max(1, Math.round(image.naturalHeight * scale));
    if (!redraw && this.base && this.canvas.width === width && this.canvas.height === height) {
      return;
    }
    this.canvas.width = width;
    this.canvas.height = height;
    this.ctx.drawImage(image, 0, 0, width, height);
    this.base = this.ctx.getImageData(0, 0, width, height);
    this.overlay = null;
    this.render();
  }

  // an image alone, without a map and without pointer gestures (after an error)
  async showPlain(url) {
    this.map = null; this.markers = []; this.box = null; this.overlay = null; this.cell = null;
    try {
      await this.setImage(url, null);
    } catch (_) {
      this.base = null;
      this.ctx.clearRect(0, 0, this.canvas.width, this.canvas.height);
    }
    this.imageSize = null;
  }

  setMap(grid, unit) {
    if (unit !== undefined) this.unit = unit;
    if (grid === this.map) return;
    this.map = grid;
    this.overlay = null;
  }

  compose() {
    const { width, height } = this.canvas;
    const out = new ImageData(new Uint8ClampedArray(this.base.data), width, height);
    if (!this.map) return out;
    const rows = this.map.length; const cols = this.map[0].length;
    const flat = new Float64Array(rows * cols);
    let low = 0;
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < cols; c++) {
        flat[r * cols + c] = this.map[r][c];
        low = Math.min(low, this.map[r][c]);
      }
    }
    // the signed view only for maps with negative values: an all-positive map (Grad-CAM, a
    // match map with nothing against) reads better on the positive ramp than as a pale red
    const signed = state.signed && low < 0;
    let peak = 0;
    for (const v of flat) peak = Math.max(peak, signed ? Math.abs(v) : v);
    // the colour scale in the map's own values (signed: -peak..peak; else 0..peak)
    this.range = { lo: signed ? -peak : 0, hi: peak, signed };
    // the map covers the part of the photo the model saw (all of it, or the face crop)
    const top = Math.round(this.crop[0] * this.scale(0));
    const left = Math.round(this.crop[1] * this.scale(1));
    const bottom = Math.min(height, Math.max(top + 1, Math.round(this.crop[2] * this.scale(0))));
    const right = Math.min(width, Math.max(left + 1, Math.round(this.crop[3] * this.scale(1))));
    const ys = axis(bottom - top, rows); const xs = axis(right - left, cols);
    const data = out.data;
    const alpha = state.alpha;
    const table = signed ? DIVERGING : JET;
    for (let y = top; y < bottom; y++) {
      const r0 = ys.i0[y - top] * cols; const r1 = ys.i1[y - top] * cols;
      const wy = ys.w[y - top];
      for (let x = left; x < right; x++) {
        const c0 = xs.i0[x - left]; const c1 = xs.i1[x - left]; const wx = xs.w[x - left];
        const upper = flat[r0 + c0] * (1 - wx) + flat[r0 + c1] * wx;
        const lower = flat[r1 + c0] * (1 - wx) + flat[r1 + c1] * wx;
        const v = upper * (1 - wy) + lower * wy;
        let t; let weight;
        if (signed) {
          // colour fades towards 0 so that the photo stays readable where nothing happens
          const s = peak > 0 ? v / peak : 0;
          t = 0.5 + 0.5 * s;
          weight = alpha * (0.2 + 0.8 * Math.abs(s));
        } else {
          t = peak > 0 ? Math.max(v, 0) / peak : 0;
          weight = alpha * (0.25 + 0.75 * t);
        }
        const k = 3 * Math.round(clamp01(t) * 255);
        const i = 4 * (y * width + x);
        data[i] = data[i] * (1 - weight) + table[k] * weight;
        data[i + 1] = data[i + 1] * (1 - weight) + table[k + 1] * weight;
        data[i + 2] = data[i + 2] * (1 - weight) + table[k + 2] * weight;
      }
    }
    return out;
  }

  invalidate() { this.overlay = null; }

  // the map's value at a model pixel (bilinear, cell-centre aligned, as drawn)
  valueAt(point) {
    if (!this.map || !this.imageSize) return null;
    const rows = this.map.length; const cols = this.map[0].length;
    const coord = (x, cells, size) => Math.min(Math.max((x + 0.5) * cells / size - 0.5, 0),
      cells - 1);
    const fy = coord(point[0], rows, this.imageSize[0]);
    const fx = coord(point[1], cols, this.imageSize[1]);
    const y0 = Math.floor(fy); const x0 = Math.floor(fx);
    const y1 = Math.min(y0 + 1, rows - 1); const x1 = Math.min(x0 + 1, cols - 1);
    const dy = fy - y0; const dx = fx - x0;
    return (this.map[y0][x0] * (1 - dx) + this.map[y0][x1] * dx) * (1 - dy) +
      (this.map[y1][x0] * (1 - dx) + this.map[y1][x1] * dx) * dy;
  }

  // the value under the pointer, in the panel's readout line
  showValue(point) {
    if (!this.readout) return;
    const value = point ? this.valueAt(point) : null;
    this.readout.textContent = value === null ? "" : `value under the pointer: ${fmt(value)}`;
  }

  // the colour bar under the panel: the colour map with the map's real values at its ends
  drawScale() {
    if (!this.scale_) return;
    const el = this.scale_;
    el.hidden = !this.map || !this.range;
    if (el.hidden) return;
    const { lo, hi, signed } = this.range;
    const table = signed ? DIVERGING : JET;
    const stops = [];
    for (let i = 0; i <= 10; i++) {
      const k = 3 * Math.round(i * 25.5);
      stops.push(`rgb(${table[k]},${table[k + 1]},${table[k + 2]}) ${i * 10}%`);
    }
    $(".bar", el).style.background = `linear-gradient(to right, ${stops.join(", ")})`;
    $(".lo", el).textContent = fmt(lo);
    $(".mid", el).textContent = signed ? "0" : "";
    $(".hi", el).textContent = fmt(hi);
    $(".unit", el).textContent = this.unit || "";
  }

  render() {
    if (!this.base) return;
    if (!this.overlay) this.overlay = this.compose();
    this.drawScale();
    const ctx = this.ctx;
    ctx.putImageData(this.overlay, 0, 0);
    if (this.box) {
      const [t, l, b, r] = this.box.map((v, i) => v * this.scale(i % 2 === 0 ? 0 : 1));
      ctx.lineWidth = 3; ctx.strokeStyle = "rgba(0,0,0,0.8)";
      ctx.strokeRect(l, t, r - l, b - t);
      ctx.lineWidth = 1.5; ctx.strokeStyle = "#ffeb3b";
      ctx.strokeRect(l, t, r - l, b - t);
    }
    if (this.cell) { // the pointed cell: what the point map is of
      const [t, l, b, r] = this.cell.map((v, i) => v * this.scale(i % 2 === 0 ? 0 : 1));
      ctx.setLineDash([5, 4]);
      ctx.lineWidth = 3; ctx.strokeStyle = "rgba(0,0,0,0.8)";
      ctx.strokeRect(l, t, r - l, b - t);
      ctx.lineWidth = 1.5; ctx.strokeStyle = "#fff";
      ctx.strokeRect(l, t, r - l, b - t);
      ctx.setLineDash([]);
    }
    const radius = Math.max(5, Math.min(this.canvas.width, this.canvas.height) / 28);
    // the strongest match last, so that its ring is on top
    for (const marker of [...this.markers].reverse()) {
      const x = marker.col * this.scale(1); const y = marker.row * this.scale(0);
      ctx.beginPath();
      if (marker.kind === "ring") {
        ctx.arc(x, y, radius, 0, 2 * Math.PI);
      } else {
        ctx.moveTo(x - radius, y); ctx.lineTo(x + radius, y);
        ctx.moveTo(x, y - radius); ctx.lineTo(x, y + radius);
      }
      ctx.lineWidth = 4; ctx.strokeStyle = "rgba(0,0,0,0.85)"; ctx.stroke();
      ctx.lineWidth = 2; ctx.strokeStyle = "#fff"; ctx.stroke();
      if (marker.label) { // the rank of a match: 1 is the strongest
        ctx.font = `bold ${Math.round(Math.max(11, radius * 1.1))}px sans-serif`;
        ctx.textBaseline = "middle";
        const tx = x + radius * 0.8; const ty = y - radius * 0.9;
        ctx.lineWidth = 3; ctx.strokeStyle = "rgba(0,0,0,0.9)";
        ctx.strokeText(marker.label, tx, ty);
        ctx.fillStyle = "#fff"; ctx.fillText(marker.label, tx, ty);
      }
    }
  }

  // display pixels per photo pixel along rows (0) or columns (1)
  scale(dim) {
    if (!this.imageSize) return 1;
    return dim === 0 ? this.canvas.height / this.imageSize[0] : this.canvas.width / this.imageSize[1];
  }

  // pointer event -> [row, col] in the photo's pixels, clamped to the part the model saw
  toModel(event) {
    const rect = this.canvas.getBoundingClientRect();
    const [h, w] = this.imageSize;
    const [top, left, bottom, right] = this.crop;
    const row = Math.min(Math.max((event.clientY - rect.top) / rect.height * h, top), bottom);
    const col = Math.min(Math.max((event.clientX - rect.left) / rect.width * w, left), right);
    return [row, col];
  }
}

// pointer gestures on a view: hover, drag a box, click, leave
function gestures(view, on) {
  const canvas = view.canvas;
  let drag = null;
  const boxOf = (p, q) => [Math.min(p[0], q[0]), Math.min(p[1], q[1]),
    Math.max(p[0], q[0]), Math.max(p[1], q[1])];
  canvas.addEventListener("pointerdown", (event) => {
    if (!view.imageSize || event.button !== 0) return;
    drag = { start: view.toModel(event), x: event.clientX, y: event.clientY, moved: false };
    canvas.setPointerCapture(event.pointerId);
    event.preventDefault();
  });
  canvas.addEventListener("pointermove", (event) => {
    if (!view.imageSize) return;
    const point = view.toModel(event);
    if (drag) {
      if (!drag.moved && Math.hypot(event.clientX - drag.x, event.clientY - drag.y) < 5) return;
      drag.moved = true;
      on.box(boxOf(drag.start, point), false);
    } else {
      on.hover(point);
    }
  });
  canvas.addEventListener("pointerup", (event) => {
    if (!drag) return;
    const point = view.toModel(event);
    const moved = drag.moved;
    const start = drag.start;
    drag = null;
    if (moved) on.box(boxOf(start, point), true); else on.click(point);
  });
  canvas.addEventListener("pointercancel", () => { drag = null; on.leave(); });
  canvas.addEventListener("pointerleave", () => { if (!drag) on.leave(); });
  // the keyboard: arrow keys move a point over the image (a grid cell's worth per press,
  // a fifth with Shift), Escape ends it
  let keyPoint = null;
  const STEPS = 16;
  canvas.addEventListener("keydown", (event) => {
    if (!view.imageSize) return;
    const moves = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1] };
    if (event.key === "Escape") { keyPoint = null; on.leave(); return; }
    if (!(event.key in moves)) return;
    event.preventDefault();
    const [top, left, bottom, right] = view.crop;
    if (!keyPoint) keyPoint = [(top + bottom) / 2, (left + right) / 2];
    const step = event.shiftKey ? 0.2 : 1 / STEPS;
    const [dy, dx] = moves[event.key];
    keyPoint = [Math.min(Math.max(keyPoint[0] + dy * step * (bottom - top), top), bottom - 1),
      Math.min(Math.max(keyPoint[1] + dx * step * (right - left), left), right - 1)];
    on.hover(keyPoint);
  });
  canvas.addEventListener("blur", () => { if (keyPoint) { keyPoint = null; on.leave(); } });
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
  (result, job) => showPairMap(result, job));

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

// rings on a map's strongest cells, numbered by rank
function rings(result) {
  if (result.no_map) return [];
  const top = result.top || [result.argmax];
  return top.map((cell, i) => ({ ...cell, kind: "ring", label: String(i + 1) }));
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
const SCORE_UNIT = "share of the score per cell";
// point and region maps: the contribution kind is in score units, the match kinds are cosines
function mapUnit(result) {
  return result.kind === "contribution" ? SCORE_UNIT : `${result.label} (-1 to 1)`;
}

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
    const view = new MapView($(`#view-${side}`), () => pairBounds(side));
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
  (result, job) => showResultMaps(result, job));

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
    const view = new MapView(canvas, 180, 180);
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
  queryView = new MapView($("#view-query"), 360, 360);
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
