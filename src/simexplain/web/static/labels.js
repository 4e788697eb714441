// How maps are labelled (pure: no DOM): numbers for people, the units of the maps, and the
// numbered rings on a point or region map's strongest cells. Shared by the page and the
// notebook widget.

// numbers for people: 3 significant digits, exponent only when needed
export function fmt(x) {
  if (x === 0) return "0";
  const a = Math.abs(x);
  return a >= 1e-3 && a < 1e4 ? String(Number(x.toPrecision(3))) : x.toExponential(2);
}

export const SCORE_UNIT = "share of the score per cell";

// point and region maps: the contribution kind is in score units, the match kinds are cosines
export function mapUnit(result) {
  return result.kind === "contribution" ? SCORE_UNIT : `${result.label} (-1 to 1)`;
}

// rings on a map's strongest cells, numbered by rank (none for a point without a map)
export function rings(result) {
  if (result.no_map) return [];
  const top = result.top || [result.argmax];
  return top.map((cell, i) => ({ ...cell, kind: "ring", label: String(i + 1) }));
}
