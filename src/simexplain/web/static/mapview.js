// Map views on canvases (DOM), shared by the web page and the notebook widget
// (simexplain.notebook bundles this file and its imports): `MapView`, a canvas that draws a
// feature-grid map over an image (bilinear upsampling, cell-centre aligned, as the server's
// `maps.upsample`) with rings on the top matches, the pointed cell, a box and a colour bar,
// on the part of the photo that the model saw (a face crop fills the canvas; points and
// boxes stay in the whole photo's pixels); `gestures`, the pointer and keyboard gestures on
// a view (hover, drag a box, click, leave, arrow keys); and how marks are drawn
// (`markStyle`, `outlined`). The pure parts live in colours.js, grid.js, labels.js and latest.js.

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
    this.crop = null; // [top, left, bottom, right] of the photo that the model saw: drawn
    this.base = null;
    this.map = null;
    this.overlay = null;
    this.box = null;
    this.markers = [];
    this.label = "";
    this.loading = null;
  }

  // url: the image of the part `crop` of a photo of `imageSize` (api.js `seenUrl`; by
  // default all of it), what the canvas shows
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
    // the crop's own shape (its image was rounded to whole pixels when it was shrunk)
    const [shownHeight, shownWidth] = this.crop ?
      [this.crop[2] - this.crop[0], this.crop[3] - this.crop[1]] :
      [image.naturalHeight, image.naturalWidth];
    const scale = Math.min(maxWidth / shownWidth, maxHeight / shownHeight);
    const width = Math.max(1, Math.round(shownWidth * scale));
    const height = Math.max(1, Math.round(shownHeight * scale));
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
    this.crop = null;
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
    // the canvas shows the part of the photo the model saw: the map covers all of it
    const ys = axis(height, rows); const xs = axis(width, cols);
    const data = out.data;
    const alpha = this.display.alpha;
    const table = tableFor(signed);
    for (let y = 0; y < height; y++) {
      const r0 = ys.i0[y] * cols; const r1 = ys.i1[y] * cols;
      const wy = ys.w[y];
      for (let x = 0; x < width; x++) {
        const c0 = xs.i0[x]; const c1 = xs.i1[x]; const wx = xs.w[x];
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

  // the map's value at a photo pixel (bilinear, cell-centre aligned over the crop, as drawn)
  valueAt(point) {
    if (!this.map || !this.imageSize) return null;
    const [top, left, bottom, right] = this.crop;
    return valueAt(this.map, [bottom - top, right - left], [point[0] - top, point[1] - left]);
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
    const rings = this.markers.filter((m) => m.kind === "ring").length;
    const style = markStyle(this.canvas.width, this.canvas.height, this.map, rings);
    const rect = (box) => { // a box [top, left, bottom, right] in the photo's pixels
      const [l, t] = this.toCanvas([box[0], box[1]]);
      const [r, b] = this.toCanvas([box[2], box[3]]);
      ctx.beginPath(); ctx.rect(l, t, r - l, b - t);
    };
    if (this.box) {
      rect(this.box);
      outlined(ctx, style.line, "#ffeb3b");
    }
    if (this.cell) { // the pointed cell: what the point map is of
      ctx.setLineDash([5 * style.line, 4 * style.line]);
      rect(this.cell);
      outlined(ctx, style.line, "#fff");
      ctx.setLineDash([]);
    }
    const radius = style.radius;
    // the strongest match last, so that its ring is on top
    for (const marker of [...this.markers].reverse()) {
      const [x, y] = this.toCanvas([marker.row, marker.col]);
      ctx.beginPath();
      if (marker.kind === "ring") {
        ctx.arc(x, y, radius, 0, 2 * Math.PI);
      } else {
        ctx.moveTo(x - radius, y); ctx.lineTo(x + radius, y);
        ctx.moveTo(x, y - radius); ctx.lineTo(x, y + radius);
      }
      outlined(ctx, style.ring, "#fff");
      if (marker.label) { // the rank of a match: 1 is the strongest
        const size = Math.round(Math.max(11, radius * 1.1));
        ctx.font = `bold ${size}px sans-serif`;
        ctx.textBaseline = "middle";
        // up and to the right of the ring, or to its left where that would leave the canvas
        const width = ctx.measureText(marker.label).width;
        const right = x + radius * 0.8;
        const tx = right + width + 2 <= this.canvas.width ? right : x - radius * 0.8 - width;
        const ty = Math.max(y - radius * 0.9, size / 2 + 2);
        ctx.lineWidth = 3; ctx.strokeStyle = "rgba(0,0,0,0.9)";
        ctx.strokeText(marker.label, tx, ty);
        ctx.fillStyle = "#fff"; ctx.fillText(marker.label, tx, ty);
      }
    }
  }

  // display pixels per photo pixel along rows (0) or columns (1)
  scale(dim) {
    if (!this.imageSize) return 1;
    const [top, left, bottom, right] = this.crop;
    return dim === 0 ? this.canvas.height / (bottom - top) : this.canvas.width / (right - left);
  }

  // a photo pixel [row, col] -> [x, y] on the canvas (which shows the crop)
  toCanvas(point) {
    const [top, left] = this.crop || [0, 0];
    return [(point[1] - left) * this.scale(1), (point[0] - top) * this.scale(0)];
  }

  // pointer event -> [row, col] in the photo's pixels, clamped to the part the model saw
  toModel(event) {
    const rect = this.canvas.getBoundingClientRect();
    const [top, left, bottom, right] = this.crop;
    const row = top + (event.clientY - rect.top) / rect.height * (bottom - top);
    const col = left + (event.clientX - rect.left) / rect.width * (right - left);
    return [Math.min(Math.max(row, top), bottom), Math.min(Math.max(col, left), right)];
  }
}

// the sizes of the marks on a canvas of width x height pixels, growing with it so that they
// read alike on a thumbnail and on a full panel: ring radius, ring and line stroke widths.
// With the map's grid, several rings stay small enough that those of neighbouring cells (the
// top matches often are) do not overlap; a ring alone (a gallery thumbnail's strongest match)
// has nothing to overlap and is drawn large enough to find at a glance on 180 pixels.
export function markStyle(width, height, grid, rings = 0) {
  const side = Math.min(width, height);
  let radius = side / 28;
  if (grid && rings !== 1) {
    const cell = Math.min(width / grid[0].length, height / grid.length);
    radius = Math.min(radius, 0.38 * cell);
  }
  if (rings === 1) radius = Math.max(radius, Math.min(side / 16, 14));
  radius = Math.max(6, radius);
  const ring = Math.max(rings === 1 ? 3 : 2, radius * 0.2);
  return { radius, ring, line: Math.max(2, side / 250) };
}

// stroke the current path light over a dark outline (a dark edge on both sides of the light
// line), readable on any photo and any map colour
function outlined(ctx, width, light) {
  ctx.lineWidth = width + 2 * Math.max(2, 0.75 * width);
  ctx.strokeStyle = "rgba(0,0,0,0.85)";
  ctx.stroke();
  ctx.lineWidth = width;
  ctx.strokeStyle = light;
  ctx.stroke();
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
