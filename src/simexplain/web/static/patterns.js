// Cross-view patterns on the pair view: with the "patterns" box ticked, the strongest mutual
// best matches of the pair (POST /api/patterns) are drawn as numbered points on both images,
// linked by lines across the two panels, on an SVG layer over the pair. It takes what it
// needs as arguments (`setupPatterns`): the current explanation, whether the pair view is
// shown, the API call and where to report a failure; it finds the canvases on the page.

const PATTERN_COLORS = ["#ff4040", "#40dc40", "#4080ff", "#ffc800", "#ff40ff", "#00e6e6",
  "#ff8c00", "#a060ff"];

function patternsLayer() {
  let svg = document.getElementById("patterns-layer");
  if (!svg) {
    const pair = document.querySelector("#pair-view .pair");
    if (!pair) return null;
    pair.style.position = "relative";
    svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.id = "patterns-layer";
    // over both panels, never in the way of the pointer gestures below it
    svg.setAttribute("style", "position:absolute;left:0;top:0;width:100%;height:100%;" +
      "pointer-events:none;overflow:visible");
    pair.appendChild(svg);
  }
  return svg;
}

// a photo pixel (row, col) of one side -> a point of the layer (the canvas shows the part
// `crop` of the photo that the model saw)
function patternPoint(e, side, point, layerBox) {
  const box = document.getElementById(`view-${side}`).getBoundingClientRect();
  const [top, left, bottom, right] = e[side].crop;
  return [box.left - layerBox.left + (point[1] + 0.5 - left) / (right - left) * box.width,
    box.top - layerBox.top + (point[0] + 0.5 - top) / (bottom - top) * box.height];
}

// explanation(): the pair's /api/explain answer shown (or null); shown(): whether the pair
// view is on screen; api(path, body): the API call (api.js); report(message): a failure
export function setupPatterns({ explanation, shown, api, report }) {
  const patternState = { shownFor: null, patterns: [], requested: null };

  function drawPatterns() {
    const svg = patternsLayer();
    if (!svg) return;
    svg.replaceChildren();
    const on = document.getElementById("patterns")?.checked;
    const e = explanation();
    if (!on || !e || patternState.shownFor !== e.explanation_id || !shown()) return;
    const layerBox = svg.getBoundingClientRect();
    const ns = "http://www.w3.org/2000/svg";
    const add = (name, attributes, parent = svg) => {
      const node = document.createElementNS(ns, name);
      for (const [k, v] of Object.entries(attributes)) node.setAttribute(k, v);
      parent.appendChild(node);
      return node;
    };
    patternState.patterns.forEach((pattern, n) => {
      const color = PATTERN_COLORS[n % PATTERN_COLORS.length];
      const [xa, ya] = patternPoint(e, "a", pattern.point_a, layerBox);
      const [xb, yb] = patternPoint(e, "b", pattern.point_b, layerBox);
      const group = add("g", { class: "pattern" });
      add("title", {}, group).textContent =
        `pattern ${n + 1}: share of the score ${pattern.strength.toPrecision(3)}`;
      add("line", { x1: xa, y1: ya, x2: xb, y2: yb, stroke: "#000", "stroke-width": 4 }, group);
      add("line", { x1: xa, y1: ya, x2: xb, y2: yb, stroke: color, "stroke-width": 2 }, group);
      for (const [x, y] of [[xa, ya], [xb, yb]]) {
        add("circle", { cx: x, cy: y, r: 6, fill: color, stroke: "#000", "stroke-width": 2 },
          group);
        const label = add("text", { x: x + 8, y: y - 6, fill: color, stroke: "#000",
          "stroke-width": 0.6, "font-size": 14, "font-weight": "bold" }, group);
        label.textContent = String(n + 1);
      }
    });
  }

  async function updatePatterns() {
    const on = document.getElementById("patterns")?.checked;
    const e = explanation();
    if (on && e && patternState.shownFor !== e.explanation_id &&
        patternState.requested !== e.explanation_id) {
      patternState.requested = e.explanation_id;
      try {
        const result = await api("/api/patterns", { explanation_id: e.explanation_id, k: 5 });
        patternState.patterns = result.patterns;
        patternState.shownFor = result.explanation_id;
      } catch (error) {
        patternState.requested = null;
        report(`patterns: ${error.message || error}`);
      }
    }
    drawPatterns();
  }

  // the page's events: the box ticked, a new pair shown or failed ("simexplain:pair", from
  // pair.js), the view switched ("simexplain:view", controls.js), a resize
  document.getElementById("patterns")?.addEventListener("change", updatePatterns);
  document.addEventListener("simexplain:pair", updatePatterns);
  document.addEventListener("simexplain:view", drawPatterns);
  window.addEventListener("resize", drawPatterns);
}
