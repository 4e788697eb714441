// What the pair's two map views draw: the resting display (`restPair`: the overall maps, or
// the pinned box and its region map) and a point or region map that the server sent for the
// pointer or a box (`showLiveMap`: the map with rings on its strongest cells, the pointed
// cell on the other image, and the line saying which map it is).

import { fmt, mapUnit, rings } from "./labels.js";
import { captionFor } from "./state.js";
import { describe, overallUnit, regionScore } from "./pairtext.js";
import { $ } from "./dom.js";

export const SIDES = ["a", "b"];

// the resting display: overall maps, or the pinned box and its region map
export function restPair(state, views) {
  const e = state.pair.explanation;
  if (!e) return;
  for (const side of SIDES) {
    const view = views[side];
    view.setMap(e[side].overall, overallUnit(e));
    view.markers = [];
    view.cell = null;
    view.box = state.pair.boxSide === side ? state.pair.box : null;
  }
  let extra = "";
  if (state.pair.region) {
    const r = state.pair.region;
    views[r.side].setMap(r.no_map ? null : r.map, `region map: ${mapUnit(r)}`);
    views[r.side].markers = rings(r);
    extra = regionScore(r);
  }
  for (const side of SIDES) views[side].render();
  $("#caption-a").textContent = captionFor(state, e.a.id);
  $("#caption-b").textContent = captionFor(state, e.b.id);
  describe(state, extra);
}

// the line saying which live map is shown (or that the point or box has none)
function liveMapText(e, job, result) {
  const there = result.side;
  if (result.no_map) {
    return `no ${job.kind} map on ${there}: this ${job.kind} carries no contribution`;
  }
  // point and region maps always come from the decomposition, whatever the Method menu says
  const what = `${job.kind} map: decomposition, ${result.label}`;
  const own = e.point_maps ? "" : ` (${e.method} has no ${job.kind} maps)`;
  return `${what} on ${there}${own}; rings 1-${rings(result).length}: its strongest ` +
    `matches, max ${fmt(result.argmax.value)}`;
}

// a point or region map from the server (`job` asked for it): drawn on the other image, the
// pointed cell outlined on this one; answers for another explanation are dropped
export function showLiveMap(state, views, result, job) {
  const e = state.pair.explanation;
  if (!e || job.body.explanation_id !== e.explanation_id) return;
  const target = views[result.side];
  // no_map: the point carries no contribution, so there is nothing to draw (not a flat map)
  target.setMap(result.no_map ? null : result.map, `${job.kind} map: ${mapUnit(result)}`);
  target.markers = rings(result);
  target.box = null;
  target.cell = null;
  target.render();
  const shown = liveMapText(e, job, result);
  if (job.kind === "region") {
    state.pair.region = result;
    describe(state, `${regionScore(result)}; ${shown}`);
  } else {
    describe(state, shown);
  }
  const source = views[job.body.side];
  source.cell = job.kind === "point" ? result.query_cell : null;
  source.render();
}
