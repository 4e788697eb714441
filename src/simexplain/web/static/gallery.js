// The gallery (search) view: the query image, a ranking of the gallery by the whole query or
// by a dragged box, and point maps on every visible result while the pointer moves over the
// query (through the single-flight queue). `createGallery(ctx, pickers, openPair)` wires the
// query panel and gives `runSearch(box)`, `queryView` and `results()` ({id, view, hit, card}
// per result); clicking a result calls `openPair(queryId, resultId)`.

import { api, errorText, seenUrl } from "./api.js";
import { $, escapeHtml } from "./dom.js";
import { Latest } from "./latest.js";
import { gestures, MapView } from "./mapview.js";
import { captionFor } from "./state.js";

export function createGallery({ state, stats, feedback }, pickers, openPair) {
  const queryView = new MapView($("#view-query"), [360, 360], state);
  let resultViews = []; // [{id, view, hit, card}]
  let searchAbort = null;
  const queue = new Latest(
    (job) => api("/api/search/point", job.body),
    (result, job) => showResultMaps(result, job), { stats, onError: feedback.fail });

  async function runSearch(box) {
    const query = state.gallery.query;
    if (!query) return;
    if (searchAbort) searchAbort.abort();
    const abort = new AbortController();
    searchAbort = abort;
    queue.cancel();
    document.body.classList.add("busy");
    feedback.panelError("query", null);
    feedback.panelBusy("query", box ? "searching by region ..." : "searching ...");
    $("#results").classList.add("stale");
    feedback.setStatus("");
    try {
      const k = Number($("#k").value);
      const result = await api("/api/search", { query, box: box || null, k }, abort.signal);
      state.gallery.search = result;
      state.gallery.box = result.box;
      const q = result.query;
      const url = seenUrl(q, 1024);
      if (queryView.loadedId !== url) {
        await queryView.setImage(url, q.image_size, q.crop);
        queryView.loadedId = url;
      }
      await showResults(result);
      stats.searches += 1;
      rest();
      const what = result.box ? "region" : "whole image";
      $("#caption-query").textContent =
        `${captionFor(state, query)} · ranked by ${what} · ${result.similarity}`;
    } catch (error) {
      if (error && error.name === "AbortError") return;
      // no old ranking under the new query: the query alone, the error on it
      state.gallery.search = null;
      $("#results").innerHTML = "";
      resultViews = [];
      queryView.loadedId = null;
      await queryView.showPlain(`/api/images/${query}?max_side=1024`);
      $("#caption-query").textContent = captionFor(state, query);
      const message = errorText(error);
      const name = captionFor(state, query);
      feedback.panelError("query", message.includes(name) ? message : `${name}: ${message}`);
    } finally {
      if (searchAbort === abort) {
        feedback.panelBusy("query", null);
        $("#results").classList.remove("stale");
        document.body.classList.remove("busy");
      }
    }
  }

  async function showResults(result) {
    const container = $("#results");
    container.innerHTML = "";
    resultViews = [];
    const loads = [];
    for (const hit of result.hits) {
      const card = document.createElement("figure");
      card.className = "card";
      card.dataset.id = hit.id;
      card.dataset.rank = String(hit.rank);
      const canvas = document.createElement("canvas");
      canvas.width = 180; canvas.height = 180;
      const meta = document.createElement("figcaption");
      meta.className = "meta";
      meta.innerHTML = `<span>#${hit.rank} <b>${hit.score.toFixed(4)}</b></span>` +
        `<span class="name" title="${escapeHtml(hit.name)}">${escapeHtml(hit.name)}</span>` +
        (hit.stale ? `<span class="stale" title="${escapeHtml(hit.stale)}">stale: ` +
                     `${escapeHtml(hit.stale)}</span>` : "");
      card.append(canvas, meta);
      container.appendChild(card);
      const view = new MapView(canvas, [180, 180], state);
      view.setMap(hit.map);
      resultViews.push({ id: hit.id, view, hit, card });
      card.addEventListener("click", () => openPair(result.query.id, hit.id));
      // the part of the hit that the model saw (a face crop, not a face lost in its photo)
      loads.push(view.setImage(seenUrl(hit, 256), hit.image_size, hit.crop));
    }
    for (const gone of result.unavailable || []) {  // ranked, but the file is not served
      const note = document.createElement("p");
      note.className = "stale";
      note.textContent = `#${gone.rank} ${gone.name}: ${gone.stale}`;
      container.appendChild(note);
    }
    await Promise.all(loads);
  }

  // the resting display: the query with its box, every result with its own map
  function rest() {
    queryView.setMap(null);
    queryView.markers = [];
    queryView.box = state.gallery.box;
    queryView.render();
    for (const r of resultViews) {
      r.view.setMap(r.hit.map);
      r.view.markers = [];
      r.view.render();
    }
  }

  function visibleResults() {
    const height = window.innerHeight; const width = window.innerWidth;
    return resultViews.filter((r) => {
      const rect = r.card.getBoundingClientRect();
      return rect.bottom > 0 && rect.top < height && rect.right > 0 && rect.left < width;
    }).map((r) => r.id);
  }

  function showResultMaps(result, job) {
    const search = state.gallery.search;
    if (!search || job.body.search_id !== search.search_id) return;
    const byId = new Map(resultViews.map((r) => [r.id, r]));
    for (const item of result.maps) {
      const r = byId.get(item.id);
      if (!r) continue;
      r.view.setMap(item.no_map ? null : item.map);
      // the strongest match only: numbered rings crowd a thumbnail
      r.view.markers = item.no_map ? [] : [{ ...item.argmax, kind: "ring" }];
      r.view.render();
    }
  }

  pickers.add("query", (id) => {
    state.gallery.query = id;
    state.gallery.box = null;
    runSearch(null);
  });
  $("#k").addEventListener("change", () => runSearch(state.gallery.box));
  gestures(queryView, {
    hover(point) {
      const search = state.gallery.search;
      if (!search) return;
      queryView.markers = [{ row: point[0], col: point[1], kind: "cross" }];
      queryView.render();
      const results = visibleResults();
      if (!results.length) return;
      queue.push({ body: {
        search_id: search.search_id, results, row: point[0], col: point[1] } });
    },
    box(box, final) {
      queue.cancel();
      queryView.box = box; queryView.markers = [];
      queryView.render();
      if (final && box[2] - box[0] >= 1 && box[3] - box[1] >= 1) runSearch(box);
    },
    click() {
      queue.cancel();
      if (state.gallery.box) runSearch(null); else rest();
    },
    leave() {
      queue.cancel();
      if (state.gallery.search) rest();
    },
  });

  return { queryView, results: () => resultViews, runSearch };
}
