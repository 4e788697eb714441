// Colour maps (pure: no DOM): 256-entry RGB tables for the map overlays and colour bars.
// JET for positive maps (blue - cyan - yellow - red), DIVERGING for signed maps (ColorBrewer
// RdBu: blue below 0, white at 0, red above). A table's entry k sits at 3 * k (r, g, b).

export function clamp01(x) { return Math.max(0, Math.min(1, x)); }

// a table from a function of t in [0, 1] to [r, g, b] in [0, 1]
export function buildTable(fn) {
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
export const JET = buildTable((t) => [
  clamp01(1.5 - Math.abs(4 * t - 3)), clamp01(1.5 - Math.abs(4 * t - 2)),
  clamp01(1.5 - Math.abs(4 * t - 1))]);

// signed maps: blue (negative) - white (0) - red (positive), the ColorBrewer RdBu ramp
export const RDBU = [[5, 48, 97], [33, 102, 172], [67, 147, 195], [146, 197, 222],
  [209, 229, 240], [247, 247, 247], [253, 219, 199], [244, 165, 130], [214, 96, 77],
  [178, 24, 43], [103, 0, 31]];
export const DIVERGING = buildTable((t) => {
  const x = t * (RDBU.length - 1);
  const i = Math.min(Math.floor(x), RDBU.length - 2);
  const f = x - i;
  return [0, 1, 2].map((c) => (RDBU[i][c] * (1 - f) + RDBU[i + 1][c] * f) / 255);
});

// the table for a map drawn signed or not
export function tableFor(signed) { return signed ? DIVERGING : JET; }

// [r, g, b] of a table at t in [0, 1] (clamped), as the overlay picks it
export function colourAt(table, t) {
  const k = 3 * Math.round(clamp01(t) * 255);
  return [table[k], table[k + 1], table[k + 2]];
}
