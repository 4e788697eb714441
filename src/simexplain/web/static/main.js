// The page's entry (loaded by index.html as a module): creates the state and counters, wires
// the pickers, the pair view, the gallery view, the controls and the cross-view patterns to
// one another, loads the models and images, opens the first pair, and exposes
// `window.simexplain` (state, counters, views) for the browser tests.

import { api } from "./api.js";
import { $ } from "./dom.js";
import { createControls } from "./controls.js";
import { createFeedback } from "./feedback.js";
import { figureCanvas } from "./figure.js";
import { createGallery } from "./gallery.js";
import { createPair } from "./pair.js";
import { setupPatterns } from "./patterns.js";
import { createPickers } from "./pickers.js";
import { allImages, createState, createStats } from "./state.js";

const state = createState();
const stats = createStats();
const feedback = createFeedback(stats);
const ctx = { state, stats, feedback };
const pickers = createPickers(ctx);
const pair = createPair(ctx, pickers);
const gallery = createGallery(ctx, pickers, openPair);
const controls = createControls(ctx, { pair, gallery });
setupPatterns({
  explanation: () => state.pair.explanation,
  shown: () => state.view === "pair",
  api,
  report: (message) => feedback.setStatus(message, true),
});

// a gallery result clicked: that pair explained, with the index's model
function openPair(a, b) {
  state.pair.a = a; state.pair.b = b;
  $("#pick-a").value = a; $("#pick-b").value = b;
  if (state.models.index && state.model !== state.models.index.model) {
    state.model = state.models.index.model;
    $("#model").value = state.model;
    controls.fillSizes();
  }
  controls.switchView("pair");
  pair.explain();
}

async function start() {
  try {
    state.models = await api("/api/models");
  } catch (error) { feedback.fail(error); return; }
  const models = state.models;
  controls.setup(models);

  const [samples, galleryImages] = await Promise.all([
    api("/api/images?source=samples&limit=1000"),
    models.index ? api("/api/images?source=gallery&limit=1000") : Promise.resolve({ images: [] }),
  ]).catch((error) => { feedback.fail(error); return [{ images: [] }, { images: [] }]; });
  state.images.samples = samples.images;
  state.images.gallery = galleryImages.images;
  pickers.refill();

  const all = allImages(state);
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
    if ((hash === "gallery" && models.index) || hash === "pair") controls.switchView(hash);
  };
  window.addEventListener("hashchange", fromHash);
  fromHash();
  if (controls.samplePair()) {
    await pair.explain();
  } else if (all.length >= 2) {
    state.pair.a = all[0].id; state.pair.b = all[1].id;
    $("#pick-a").value = state.pair.a; $("#pick-b").value = state.pair.b;
    await pair.explain();
  } else if (state.view === "pair") {
    feedback.setStatus("upload two images to begin");
  }
}

let resizeTimer = null;
window.addEventListener("resize", () => {
  clearTimeout(resizeTimer);
  resizeTimer = setTimeout(() => pair.layout(), 100);
});

window.simexplain = {
  state, stats, pairViews: pair.views, get queryView() { return gallery.queryView; },
  get results() { return gallery.results(); }, figureCanvas: () => figureCanvas(state, pair, gallery),
  switchView: controls.switchView, runSearch: gallery.runSearch,
};
start();
