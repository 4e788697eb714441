// Figure export: a PNG of what is on screen (the pair's two canvases, or the query and its
// results), with a caption line. `figureCanvas(state, pair, gallery)` draws it; `download`
// saves it as simexplain-<view>.png.

import { captionFor } from "./state.js";

export function figureCanvas(state, pair, gallery) {
  const pad = 12; const titleHeight = 26;
  let panels; let title;
  if (state.view === "pair") {
    const e = state.pair.explanation;
    panels = [pair.views.a.canvas, pair.views.b.canvas];
    title = e ? `${e.model} · ${e.method} · score ${e.score.toFixed(4)} (${e.similarity})` : "";
    if (state.pair.region) title += ` · region s_R ${state.pair.region.partial_score.toFixed(4)}`;
  } else {
    panels = [gallery.queryView.canvas, ...gallery.results().map((r) => r.view.canvas)];
    const s = state.gallery.search;
    title = s ? `${s.model} · query ${captionFor(state, s.query.id)}${s.box ? " (region)" : ""}` :
      "";
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

export function download(canvas, view) {
  canvas.toBlob((blob) => {
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = `simexplain-${view}.png`;
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 1000);
  }, "image/png");
}
