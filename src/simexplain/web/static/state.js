// The page's state and counters, created once by main.js and passed to the modules that need
// them (never reached by name): `createState` (models, choices, images, the pair and the
// search shown), `createStats` (counters the browser tests read), and the small updates and
// look-ups over the state that more than one view uses.

import { queueStats } from "./latest.js";

export function createState() {
  return {
    models: null, // /api/models's answer
    model: null,
    method: "decomposition",
    size: null, // the model's input size (short side, pixels); null: the model's own
    identical: {}, // explanation id -> /api/identical's answer
    alpha: 0.55, // the map views read alpha and signed at each draw
    signed: true,
    view: "pair",
    images: { samples: [], gallery: [], uploads: [] },
    pair: { a: null, b: null, explanation: null, box: null, boxSide: null, region: null },
    gallery: { query: null, search: null, box: null },
  };
}

export function createStats() {
  return {
    ...queueStats(), explains: 0, searches: 0, errors: 0, lastError: null,
    identicalFor: null, // "explanation_id method" of the identical-method note shown
  };
}

export function noteError(stats, message) {
  stats.errors += 1;
  stats.lastError = message;
}

export function allImages(state) {
  return [...state.images.samples, ...state.images.gallery, ...state.images.uploads];
}

export function captionFor(state, id) {
  const item = allImages(state).find((x) => x.id === id);
  return item ? item.name : id;
}

export function addUpload(state, info) {
  if (!state.images.uploads.some((item) => item.id === info.id)) state.images.uploads.push(info);
}

// the current model's entry of /api/models ({} before the models arrive)
export function modelInfo(state) {
  if (!state.models) return {};
  return state.models.models.find((m) => m.name === state.model) || {};
}

// no pinned box and no region map on the pair
export function clearRegion(state) {
  state.pair.box = null; state.pair.boxSide = null; state.pair.region = null;
}

// input sizes offered for a model of input size `own`: its own and finer ones (multiples of
// 8), up to `limit`
export function sizeChoices(own, limit) {
  const sizes = [1, 1.5, 2, 3, 4].map((f) => Math.round(own * f / 8) * 8 || own)
    .filter((v, i) => i === 0 || v <= limit);
  sizes[0] = own;
  return [...new Set(sizes)];
}
