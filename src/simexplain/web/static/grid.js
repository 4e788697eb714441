// Grid and axis maths (pure: no DOM): how display pixels and photo pixels map onto a map's
// feature grid, bilinear and cell-centre aligned as the server's `maps.upsample` (feature
// coordinate f = (x + 0.5) * cells / size - 0.5, clamped to the grid), and boxes from two
// corner points.

// the feature coordinate of pixel x on an axis of `size` pixels over `cells` grid cells
export function featureCoord(x, cells, size) {
  return Math.min(Math.max((x + 0.5) * cells / size - 0.5, 0), cells - 1);
}

// per display pixel i of an axis of n pixels: the two grid cells it lies between (i0, i1)
// and the weight of the second (w), for bilinear upsampling
export function axis(n, cells) {
  const i0 = new Int32Array(n); const i1 = new Int32Array(n); const w = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const f = featureCoord(i, cells, n);
    const a = Math.floor(f);
    i0[i] = a; i1[i] = Math.min(a + 1, cells - 1); w[i] = f - a;
  }
  return { i0, i1, w };
}

// a grid's value at a photo pixel [row, col] of a photo of imageSize [height, width]
// (bilinear, cell-centre aligned, as drawn)
export function valueAt(map, imageSize, point) {
  const rows = map.length; const cols = map[0].length;
  const fy = featureCoord(point[0], rows, imageSize[0]);
  const fx = featureCoord(point[1], cols, imageSize[1]);
  const y0 = Math.floor(fy); const x0 = Math.floor(fx);
  const y1 = Math.min(y0 + 1, rows - 1); const x1 = Math.min(x0 + 1, cols - 1);
  const dy = fy - y0; const dx = fx - x0;
  return (map[y0][x0] * (1 - dx) + map[y0][x1] * dx) * (1 - dy) +
    (map[y1][x0] * (1 - dx) + map[y1][x1] * dx) * dy;
}

// the box [top, left, bottom, right] with corners p and q ([row, col] each)
export function boxOf(p, q) {
  return [Math.min(p[0], q[0]), Math.min(p[1], q[1]), Math.max(p[0], q[0]), Math.max(p[1], q[1])];
}

// the peak and colour range of a map: signed (-peak..peak) only when asked and the map has
// negative values, else 0..peak
export function mapRange(map, signedWanted) {
  let low = 0;
  for (const row of map) for (const v of row) low = Math.min(low, v);
  const signed = signedWanted && low < 0;
  let peak = 0;
  for (const row of map) for (const v of row) peak = Math.max(peak, signed ? Math.abs(v) : v);
  return { lo: signed ? -peak : 0, hi: peak, signed, peak };
}
