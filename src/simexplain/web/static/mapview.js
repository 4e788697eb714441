// Map views on canvases (DOM), shared by the web page and the notebook widget
// (simexplain.notebook bundles this file and its imports): `MapView`, a canvas that draws a
// feature-grid map over an image (bilinear upsampling, cell-centre aligned, as the server's
// `maps.upsample`) with rings on the top matches, the pointed cell, a box and a colour bar;
// and `gestures`, the pointer and keyboard gestures on a view (hover, drag a box, click,
// leave, arrow keys). The pure parts live in colours.js, grid.js, labels.js and latest.js.

import { clamp01, tableFor } from "./colours.js";
import { axis, boxOf, mapRange, valueAt } from "./grid.js";
import { fmt } from "./labels.js";

export class MapView {
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
    const flat = Float64Array.from(this.map.flat());
    // the signed view only for maps with negative values: an all-positive map (Grad-CAM, a
    // match map with nothing against) reads better on the positive ramp than as a pale red;
    // the colour scale is in the map's own values (signed: -peak..peak; else 0..peak)
    const { lo, hi, signed, peak } = mapRange(this.map, this.display.signed);
    this.range = { lo, hi, signed };
    // the map covers the part of the photo the model saw (all of it, or the face crop)
    const top = Math.round(this.crop[0] * this.scale(0));
    const left = Math.round(this.crop[1] * this.scale(1));
    const bottom = Math.min(height, Math.max(top + 1, Math.round(this.crop[2] * this.scale(0))));
    const right = Math.min(width, Math.max(left + 1, Math.round(this.crop[3] * this.scale(1))));
    const ys = axis(bottom - top, rows); const xs = axis(right - left, cols);
    const data = out.data;
    const alpha = this.display.alpha;
    const table = tableFor(signed);
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
    return valueAt(this.map, this.imageSize, point);
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
    const table = tableFor(signed);
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
export function gestures(view, on) {
  const canvas = view.canvas;
  let drag = null;
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
