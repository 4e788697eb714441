"""The audit's report folder: index.html (findings first, then the mean maps against the area
share, the named regions' shares and their distribution over pairs, recurring cross-view
patterns, ranked pairs with their figures), its PNGs, and result.json (`Audit.to_dict`).

The folder is written next to its place and moved there whole: never half a report. A folder
that is not empty is replaced only when it is an earlier audit's report (its result.json says
so and it holds only such files).
"""

from __future__ import annotations

import html
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..errors import SimexplainError
from ..files import check_target, json_default
from . import regions as regionlib

if TYPE_CHECKING:
    from ..explanation import PairExplanation
    from .result import Audit

KIND = "simexplain audit"
MAP_SIDE = 192  # pixels of a mean-map figure
FIGURE_SIDE = 160  # pair figures smaller than this are enlarged
OWN_SUFFIXES = {".png", ".html", ".json"}


def check_out(folder: Path) -> Path:
    """Refuse (one line) unless `folder` is absent, empty, or an earlier audit report, and a
    path an output folder may take (`files.check_target`); returns its absolute path."""
    given, folder = folder, check_target(folder)
    if not folder.exists() and not folder.is_symlink():
        return folder
    if folder.is_symlink() or not folder.is_dir():
        raise SimexplainError(f"{given} exists and is not a folder; refusing to replace it "
                              "(choose another --out)")
    entries = list(folder.iterdir())
    if not entries:
        return folder
    try:
        ours = json.loads((folder / "result.json").read_text()).get("kind") == KIND
    except (OSError, ValueError, AttributeError):
        ours = False
    strangers = [p.name for p in entries if p.suffix not in OWN_SUFFIXES or not p.is_file()]
    if not ours or strangers:
        raise SimexplainError(f"{given} is not empty and not an audit report simexplain wrote; "
                              "refusing to replace it (choose another --out)")
    return folder


def write_report(result: Audit, folder: Path, figures: int = 8, progress: bool = False
                 ) -> Path:
    """Write the report folder (see the module docstring); returns its index.html."""
    check_out(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        summary = result.to_dict()
        body = _sections(result, summary, work, figures, progress)
        (work / "result.json").write_text(json.dumps(summary, indent=2, default=json_default,
                                                     allow_nan=False))
        (work / "index.html").write_text(_page(result, body))
        os.chmod(work, 0o755)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(work, folder)
    finally:
        if work.exists():
            shutil.rmtree(work)
    return folder / "index.html"


def _sections(result: Audit, summary: dict, work: Path, figures: int, progress: bool
              ) -> list[str]:
    esc = html.escape
    out = [f"<p>Model <code>{esc(str(result.model))}</code>, index "
           f"<code>{esc(result.index or 'in memory')}</code>, {esc(result.similarity)}; "
           f"{_pairs_line(result)}; "
           f"audit grid {result.grid[0]}x{result.grid[1]}; {result.seconds:.1f} s.</p>",
           "<h2>Findings</h2>"]
    if result.method == "occlusion":
        out.insert(1, "<p class='method'>Audited by occlusion: each map is the drop of the "
                      "pair's score when a feature cell is erased; shares are shares of the "
                      "pair's summed positive drops D, not of s (joint shares, relative maps "
                      "and patterns are the decomposition's).</p>")
    if result.stale:
        out.insert(1, f"<p class='stale'>{len(result.stale)} gallery file(s) left out, missing "
                      "or refused now (changed since the index was built?): "
                      + "; ".join(f"{esc(p)}: {esc(why)}" for p, why in
                                  list(result.stale.items())[:10]) + "</p>")
    if result.findings:
        out.append("<ol>" + "".join(f"<li><b>{esc(f.sentence)}</b> (box {_box(f.box)}; "
                                    f"{f.aggregate_share:.0%} of all the audited similarity)"
                                    "</li>" for f in result.findings) + "</ol>")
    else:
        out.append("<p>No region carries similarity far above its area share (see "
                   "<code>simexplain.audit.findings</code> for the thresholds).</p>")
    out += _maps_section(result, work)
    out += _regions_section(result, summary, work)
    out += _patterns_section(result)
    out += _pairs_section(result, work, figures, progress)
    return out


def _maps_section(result: Audit, work: Path) -> list[str]:
    maps = result.mean_maps
    area = 1.0 / (result.grid[0] * result.grid[1])
    rows = []
    for side in ("query", "hit"):
        panels = []
        for name, caption, signed in (
                (f"overall_{side}", f"mean overall map, {side}", True),
                (f"relative_{side}", f"mean relative map, {side}", True),
                (f"share_{side}", f"share of similarity / area share, {side}", False)):
            values = maps[name] / area if name.startswith("share") else maps[name]
            file = f"map_{name}.png"
            image = _heat_image(values, signed)
            if name.startswith("share"):  # the findings of this side, numbered as listed
                image = _mark_findings(image, result, side)
            image.save(work / file)
            peak = float(np.abs(values).max())
            panels.append(f"<figure><img src='{file}' alt='{caption}'><figcaption>"
                          f"{html.escape(caption)} (max |value| {peak:.3g})</figcaption></figure>")
        rows.append("<div class='row'>" + "".join(panels) + "</div>")
    return ["<h2>Where similarity comes from, on average</h2>",
            "<p>Maps in normalised image coordinates (the model input), on the audit grid. "
            "Signed maps: red raises the score, blue lowers it. The share map divides each "
            "cell's share of all the audited similarity by its area share: 1 everywhere if "
            "similarity were spread by area (colour: 0 to the maximum given); the findings' boxes "
            "are drawn on it, numbered as listed above.</p>", *rows]


def _regions_section(result: Audit, summary: dict, work: Path) -> list[str]:
    if not result.regions:
        return ["<h2>Named regions</h2><p>None named (<code>--region NAME=top,left,bottom,"
                "right</code>).</p>"]
    rows = []
    for number, (name, data) in enumerate(summary["regions"].items()):
        file = f"hist_{number}_{_safe(name)}.png"
        _histogram(result.region_shares[name], data["area_share"], name).save(work / file)
        rows.append(
            f"<tr><td>{html.escape(name)}</td><td>{_box(data['box'])}</td>"
            f"<td>{data['area_share']:.1%}</td><td>{_pct(data['aggregate_share'])}</td>"
            f"<td>{_pct(data['mean_share'])} / {_pct(data['median_share'])}</td>"
            f"<td>{_pct(data['mean_share_query'])} / {_pct(data['mean_share_hit'])}</td>"
            f"<td>{_pct(data['mean_joint_share'])}</td>"
            f"<td>{_pct(data['mean_positive_share'])}</td>"
            f"<td><img src='{file}' alt='shares of {html.escape(name)}'></td></tr>")
    return ["<h2>Named regions</h2>",
            "<p>Share of the score s_R / s per pair (both sides: the mean of the query's and the "
            "hit's, each side's map summing to s); joint: the region of the query with the "
            "region of the hit; positive: the region's part of the maps' positive mass. "
            "Area share: what the region would carry if similarity were spread by area.</p>",
            "<table><tr><th>region</th><th>box</th><th>area share</th><th>share of all "
            "similarity</th><th>mean / median share</th><th>query / hit side</th><th>joint"
            "</th><th>positive mass</th><th>distribution over pairs</th></tr>",
            *rows, "</table>"]


def _patterns_section(result: Audit) -> list[str]:
    recurring = result.recurring
    if not recurring:
        return ["<h2>Recurring patterns</h2><p>No cross-view pattern recurs at one place in "
                "more than one pair.</p>"]
    rows = "".join(f"<tr><td>{tuple(r['cell_query'])}</td><td>{tuple(r['cell_hit'])}</td>"
                   f"<td>{r['pairs']} ({r['fraction']:.0%})</td>"
                   f"<td>{r['mean_strength_share']:.1%}</td></tr>" for r in recurring)
    return ["<h2>Recurring patterns</h2>",
            "<p>Cross-view patterns (mutual best matches of the point maps) at the same cells of "
            "the audit grid in many pairs; strength: the share of the score the two cells "
            "carry together.</p><table><tr><th>query cell (row, col)</th><th>hit cell</th>"
            f"<th>pairs</th><th>mean strength</th></tr>{rows}</table>"]


def _pairs_section(result: Audit, work: Path, figures: int, progress: bool) -> list[str]:
    """Ranked pairs with figures: per named region by its share, per finding its hot pairs."""
    groups: list[tuple[str, regionlib.RelativeBox, list[tuple[int, float]]]] = []
    for name, shares in result.region_shares.items():
        groups.append((f"region {name}", result.regions[name],
                       [(i, float(shares[i])) for i in result.top_pairs(shares, figures)]))
    for number, finding in enumerate(result.findings, start=1):
        groups.append((f"finding {number}: {finding.sentence}", finding.box,
                       list(zip(finding.hot_pairs, finding.hot_shares))[:figures]))
    out = ["<h2>Ranked pairs</h2>"]
    if not groups:
        return out + ["<p>No named region or finding to rank pairs by.</p>"]
    if result.explain_pair is None:
        return out + ["<p>Not drawn: this audit has no index to explain its pairs again (the "
                      "pairs are in result.json).</p>"]
    todo = sum(len(g[2]) for g in groups)
    bar = tqdm(total=todo, desc="report figures", unit="pair", disable=not progress)
    for number, (title, box, chosen) in enumerate(groups):
        out.append(f"<h3>{html.escape(title)}</h3><table><tr><th>#</th><th>query</th>"
                   "<th>hit</th><th>share (both sides)</th><th>score</th></tr>")
        for place, (i, share) in enumerate(chosen, start=1):
            record = result.pairs[i]
            pair = result.explain_pair(record)  # None: a file missing or refused now
            files = (_pair_figures(pair, box, work, f"pair_{number}_{place}") if pair is not None
                     else [None, None])
            out.append(f"<tr><td>{place}</td>"
                       + "".join((f"<td><img src='{f}' alt='overall map'>" if f else
                                  "<td><em>not drawn: missing or refused now</em>")
                                 + f"<br><span class='path'>{html.escape(p)}</span></td>"
                                 for f, p in zip(files, (record.query, record.hit)))
                       + f"<td>{_pct(share)}</td><td>{record.score:.4f}"
                       + ("" if record.rank == 0 else f" (rank {record.rank})")  # 0: given
                       + "</td></tr>")
            bar.update(1)
        out.append("</table>")
    bar.close()
    return out


def _pair_figures(pair: PairExplanation, box: regionlib.RelativeBox, work: Path, stem: str
                  ) -> list[str]:
    """The query's and the hit's signed overall maps with the box drawn, as PNG files, on what
    the model saw of each (`View.seen`: a face model's crop, enlarged)."""
    from .. import visualize
    names = []
    for letter, side, grid_map in (("a", pair.a, pair.overall_a), ("b", pair.b, pair.overall_b)):
        height, width = side.input_size
        in_image = side.frame.box_to_image((box[0] * height, box[1] * width,
                                            box[2] * height, box[3] * width))
        view = visualize.View.seen(side)
        image = view.overlay(grid_map, signed=True)
        scale = 1
        if max(image.size) < FIGURE_SIDE:  # small inputs (28 px items): enlarged, cells sharp
            scale = FIGURE_SIDE // max(image.size) + 1
            image = image.resize((image.width * scale, image.height * scale),
                                 Image.Resampling.NEAREST)
        shown = [v * scale for v in view.point(in_image)]
        image = visualize.mark_box(image, shown)
        name = f"{stem}_{letter}.png"
        image.save(work / name)
        names.append(name)
    return names


def _mark_findings(image: Image.Image, result: Audit, side: str) -> Image.Image:
    from PIL import ImageDraw
    draw = ImageDraw.Draw(image)
    for number, finding in enumerate(result.findings, start=1):
        if finding.side not in (side, "both"):
            continue
        top, left, bottom, right = finding.box
        box = [left * image.width, top * image.height, right * image.width - 1,
               bottom * image.height - 1]
        draw.rectangle(box, outline=(255, 255, 255), width=3)
        draw.text((box[0] + 4, box[1] + 2), str(number), fill=(255, 255, 255))
    return image


def _heat_image(values: np.ndarray, signed: bool) -> Image.Image:
    from ..visualize import colorize
    rgba = (colorize(np.asarray(values, dtype=np.float64), signed) * 255).astype(np.uint8)
    image = Image.fromarray(rgba[..., :3])
    scale = max(1, MAP_SIDE // max(values.shape))
    return image.resize((values.shape[1] * scale, values.shape[0] * scale),
                        Image.Resampling.NEAREST)


def _histogram(shares: np.ndarray, area: float, name: str) -> Image.Image:
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    figure = Figure(figsize=(3.2, 1.8), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    finite = shares[np.isfinite(shares)]
    axes.hist(np.clip(finite, -0.5, 1.5), bins=list(np.linspace(-0.5, 1.5, 21)), color="#c44")
    axes.axvline(area, color="k", linestyle="--", linewidth=1, label="area share")
    axes.set_xlabel(f"share of the score ({name})", fontsize=7)
    axes.set_ylabel("pairs", fontsize=7)
    axes.tick_params(labelsize=6)
    axes.legend(fontsize=6)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    buffer.seek(0)
    with Image.open(buffer) as rendered:
        return rendered.convert("RGB")


def _page(result: Audit, body: list[str]) -> str:
    return "\n".join([
        "<!doctype html><html><head><meta charset='utf-8'><title>simexplain audit</title>",
        "<style>body{font-family:sans-serif;margin:1em}td,th{padding:4px 8px;vertical-align:top;"
        "text-align:left}img{max-height:200px;max-width:320px;image-rendering:pixelated}"
        ".row{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0}figcaption{font-size:80%}"
        ".path{font-size:80%;color:#555;word-break:break-all}</style></head><body>",
        "<h1>Audit: where similarity comes from</h1>", *body, "</body></html>"])


def _pairs_line(result: Audit) -> str:
    if result.given:
        return f"{len(result.pairs)} given pairs ({result.queries} distinct queries)"
    return f"{result.queries} queries x top-{result.k} hits = {len(result.pairs)} pairs"


def _box(box) -> str:
    return "(" + ", ".join(f"{v:.3g}" for v in box) + ")"


def _pct(value: float | None) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.1%}"


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
