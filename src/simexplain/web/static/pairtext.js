// The text of the pair view (no drawing): the score line under the images (`describe`) with
// tooltips on its terms, the feature grid the maps are on (`showGrid`), and the note on which
// methods give the same maps for this pair (`identicalNotes`, `showIdentical`).

import { api } from "./api.js";
import { $, escapeHtml } from "./dom.js";
import { SCORE_UNIT } from "./labels.js";

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

// "region s_R = ..." with its tooltip, for a region map's answer
export function regionScore(region) {
  return `${term("region s<sub>R</sub>", TIPS.sR)} = ${region.partial_score.toFixed(4)}`;
}

// the unit of an explanation's overall maps, under their colour bars
export function overallUnit(e) {
  return e.signed ? SCORE_UNIT : `${e.method}: relative saliency (no unit)`;
}

// the score line of the explanation shown (empty without one), with `extra` at its end
export function describe(state, extra) {
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

// the feature grid the maps are on (the input size picks it)
export function showGrid(e) {
  const [ga, gb] = [e.a.grid.join("x"), e.b.grid.join("x")];
  $("#grid-info").textContent = ga === gb ? `grid ${ga}` : `grid a ${ga} · b ${gb}`;
  $("#grid-info").title = `the maps are on the model's feature grid: ${e.size ? e.size + " px input" : ""}`;
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

// which methods give the same maps as the shown one, as computed by the server for this pair:
// the note beside the Method menu and the menu's entries
export async function showIdentical({ state, stats }, explanationId) {
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

// the grid and identical-method notes gone (after a failed explanation)
export function clearNotes() {
  $("#grid-info").textContent = "";
  $("#method-note").textContent = "";
  for (const option of $("#method").options) option.textContent = option.value;
}
