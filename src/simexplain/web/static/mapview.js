// Map views shared by the web page (app.js) and the notebook widget (simexplain.notebook):
// colour maps, a canvas that draws a feature-grid map over an image (bilinear upsampling,
// cell-centre aligned, as the server's `maps.upsample`) with rings on the top matches and a
// colour bar, the pointer gestures (hover, drag a box, click, leave, arrow keys), and `Latest`,
// the single-flight queue for pointer updates: at most one request in flight, a newer
// position replaces a pending one, and answers that arrive after the pointer left are dropped.
//
// Plain declarations with no imports or exports: the page loads this file as a classic script
// before app.js; the widget's ES module is this text followed by notebook/point_map.js
// (`simexplain.notebook.widget.module_text`).
"use strict";

// ---------------------------------------------------------------------------------------------
// single-flight queue for pointer updates: `send(job)` returns a promise of the answer,
// `apply(answer, job)` shows it; `onError(error)` hears failures; `stats` counts requests (the
// browser tests read the counters)
function queueStats() {
  return { pointRequests: 0, pointApplied: 0, inFlight: 0, maxInFlight: 0, superseded: 0,
    stale: 0 };
}

class Latest {
  constructor(send, apply, { onError, stats = queueStats() } = {}) {
    this.send = send;
    this.apply = apply;
    this.onError = onError || ((error) => console.error(error));
    this.stats = stats;
    this.busy = false;
    this.pending = null;
    this.generation = 0;
  }
  push(job) {
    if (this.pending) this.stats.superseded += 1;
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
    const stats = this.stats;
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
      if (generation === this.generation) this.onError(error);
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
  // follow the window's width); display: { alpha, signed }, read at each draw (the page's
  // controls change them)
  constructor(canvas, bounds, display = { alpha: 0.55, signed: true }) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d", { willReadFrequently: true });
    this.bounds = typeof bounds === "function" ? bounds : () => bounds;
    this.display = display;
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
    const signed = this.display.signed && low < 0;
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
    const alpha = this.display.alpha;
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
    el.querySelector(".bar").style.background = `linear-gradient(to right, ${stops.join(", ")})`;
    el.querySelector(".lo").textContent = fmt(lo);
    el.querySelector(".mid").textContent = signed ? "0" : "";
    el.querySelector(".hi").textContent = fmt(hi);
    el.querySelector(".unit").textContent = this.unit || "";
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

// rings on a map's strongest cells, numbered by rank
function rings(result) {
  if (result.no_map) return [];
  const top = result.top || [result.argmax];
  return top.map((cell, i) => ({ ...cell, kind: "ring", label: String(i + 1) }));
}


const SCORE_UNIT = "share of the score per cell";
// point and region maps: the contribution kind is in score units, the match kinds are cosines
function mapUnit(result) {
  return result.kind === "contribution" ? SCORE_UNIT : `${result.label} (-1 to 1)`;
}

