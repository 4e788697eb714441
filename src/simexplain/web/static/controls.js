// The header's controls: the Pair/Gallery tabs (`switchView`), the model, method and input-size
// menus (a change explains the pair again), opacity and the signed box (every map redrawn),
// and the PNG download. `createControls(ctx, views)` gives `setup(models)`, which fills the
// menus from /api/models and wires them, `switchView(view)`, `fillSizes()` and `samplePair()`.

import { $ } from "./dom.js";
import { download, figureCanvas } from "./figure.js";
import { modelInfo, sizeChoices } from "./state.js";

export function createControls({ state }, { pair, gallery }) {
  function switchView(view) {
    state.view = view;
    $("#pair-view").hidden = view !== "pair";
    $("#gallery-view").hidden = view !== "gallery";
    for (const tab of document.querySelectorAll(".tab")) {
      tab.setAttribute("aria-pressed", String(tab.dataset.view === view));
    }
    const indexModel = state.models && state.models.index && state.models.index.model;
    $("#model").disabled = view === "gallery";
    $("#method").disabled = view === "gallery";
    $("#size").disabled = view === "gallery" || !modelInfo(state).input_size;
    if (view === "gallery" && indexModel) $("#model").value = indexModel;
    if (view === "pair") {
      $("#model").value = state.model;
      pair.layout();
    }
    if (view === "gallery" && !state.gallery.search && state.gallery.query) gallery.runSearch(null);
    document.dispatchEvent(new CustomEvent("simexplain:view"));
  }

  function redrawAll() {
    for (const view of [pair.views.a, pair.views.b, gallery.queryView,
      ...gallery.results().map((r) => r.view)]) {
      view.invalidate();
      view.render();
    }
  }

  // the current model's own sample pair in the pickers (false when it has none)
  function samplePair() {
    const sample = modelInfo(state).sample_pair;
    if (!sample) return false;
    [state.pair.a, state.pair.b] = sample;
    $("#pick-a").value = sample[0]; $("#pick-b").value = sample[1];
    return true;
  }

  // input sizes for the current model: its own and finer ones, up to the server's limit
  function fillSizes() {
    const select = $("#size");
    const own = modelInfo(state).input_size;
    select.innerHTML = "";
    state.size = null;
    select.disabled = !own;
    if (!own) {
      const option = document.createElement("option");
      option.textContent = "fixed";
      select.appendChild(option);
      return;
    }
    for (const value of sizeChoices(own, state.models.max_input_side)) {
      const option = document.createElement("option");
      option.value = String(value);
      option.textContent = value === own ? `${value} px (model's)` : `${value} px`;
      select.appendChild(option);
    }
    select.value = String(own);
  }

  function setup(models) {
    state.model = models.default;
    const modelSelect = $("#model");
    for (const m of models.models) {
      const option = document.createElement("option");
      option.value = m.name;
      option.textContent = m.name;
      if (m.description) option.title = m.description;
      modelSelect.appendChild(option);
    }
    modelSelect.value = state.model;
    modelSelect.addEventListener("change", () => {
      state.model = modelSelect.value;
      fillSizes();
      // a model opens on a pair that suits it (two faces for a face model), when it has one
      samplePair();
      pair.explain();
    });
    fillSizes();
    $("#size").addEventListener("change", () => {
      const value = Number($("#size").value);
      state.size = value === modelInfo(state).input_size ? null : value;
      pair.explain();
    });
    const methodSelect = $("#method");
    for (const m of models.methods) {
      const option = document.createElement("option");
      option.value = m; option.textContent = m;
      methodSelect.appendChild(option);
    }
    methodSelect.value = state.method;
    methodSelect.addEventListener("change", () => {
      state.method = methodSelect.value; pair.explain();
    });
    $("#opacity").addEventListener("input", (event) => {
      state.alpha = Number(event.target.value) / 100; redrawAll();
    });
    state.alpha = Number($("#opacity").value) / 100;
    $("#signed").addEventListener("change", (event) => {
      state.signed = event.target.checked; redrawAll();
    });
    state.signed = $("#signed").checked;
    $("#download").addEventListener("click",
      () => download(figureCanvas(state, pair, gallery), state.view));
    for (const tab of document.querySelectorAll(".tab")) {
      tab.addEventListener("click", () => switchView(tab.dataset.view));
    }
  }

  return { setup, switchView, fillSizes, samplePair };
}
