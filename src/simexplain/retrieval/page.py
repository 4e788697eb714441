"""The results page of `simexplain search --out`: the query (region boxed), the ranked hits,
their scores and maps, as index.html with PNGs and results.json."""

from __future__ import annotations

import html
import warnings
from pathlib import Path

import numpy as np
import torch

from ..errors import SimexplainError
from ..files import write_text_atomic
from .index import Hit, Index, RegionQuery, StaleHit


def write_results_page(out: Path, prepared: RegionQuery, hits: list[Hit], index: Index,
                       summary: dict) -> Path:
    """index.html with the query (region boxed), the ranked hits, their scores and maps."""
    from .. import visualize
    from ..files import write_json_atomic
    out.mkdir(parents=True, exist_ok=True)
    query_image = visualize.shown(prepared.side)  # the photo, aspect kept, downscaled
    if prepared.side.frame.cropped:  # the part the model saw (a face crop)
        query_image = visualize.mark_box(query_image, visualize.to_display(
            prepared.side, prepared.side.frame.box), color=(0, 255, 255))
    if prepared.is_region and not isinstance(prepared.region, (np.ndarray, torch.Tensor)):
        query_image = visualize.mark_box(query_image,
                                         visualize.to_display(prepared.side, prepared.region))
    query_image.save(out / "query.png")
    rows = [(hit, _hit_files(out, hit, index)) for hit in hits]
    summary = {**summary, "files": {f"hit_{h.rank}": c for h, c in rows},
               "hits": [hit.to_dict() for hit in hits]}  # with what reading them now found
    write_json_atomic(out / "results.json", summary)
    esc = html.escape
    score_label = "s_R (region)" if prepared.is_region else index.similarity.name
    lines = [
        "<!doctype html><html><head><meta charset='utf-8'><title>simexplain search</title>",
        "<style>body{font-family:sans-serif;margin:1em}td,th{padding:4px 8px;"
        "vertical-align:top;text-align:left}img{max-height:200px;max-width:320px;image-rendering:pixelated}"
        ".path{font-size:80%;color:#555;word-break:break-all}.stale{color:#b00;font-size:80%}"
        "</style></head><body>",
        "<h1>Search results</h1>",
        f"<p>Index <code>{esc(str(summary['index']))}</code>, model "
        f"<code>{esc(str(index.model_name))}</code>, {esc(index.similarity.name)}. Ranking "
        f"{esc(summary['ranking'])} by {esc(summary['score'])}.</p>",
        "<h2>Query</h2>",
        f"<p><img src='query.png' alt='query'><br><span class='path'>{esc(str(summary['query']))}"
        f"</span>" + (f"<br>region (top, left, bottom, right) = {esc(str(summary['region']))}"
                       if summary["region"] else "") + "</p>",
        "<h2>Hits</h2><table><tr><th>rank</th><th>image</th>"
        + ("<th>overall map of the hit</th>" if any("overall" in c for _, c in rows) else "")
        + ("<th>region map on the hit</th>" if any("region" in c for _, c in rows) else "")
        + f"<th>{esc(score_label)}</th><th>whole-image {esc(index.similarity.name)}</th></tr>",
    ]
    for hit, cells in rows:
        parts = [f"<td>{hit.rank}</td>"]
        stale = (f"<br><span class='stale'>stale: {esc(hit.stale)}</span>" if hit.stale
                 else "")
        parts.append(f"<td><img src='{cells['image']}' alt='hit {hit.rank}'><br>"
                     f"<span class='path'>{esc(hit.path)}</span>{stale}</td>" if "image" in cells
                     else f"<td><span class='path'>{esc(hit.path)} (image unavailable)</span>"
                          f"{stale}</td>")
        if any("overall" in c for _, c in rows):
            parts.append(f"<td><img src='{cells['overall']}' alt='overall'></td>"
                         if "overall" in cells else "<td></td>")
        if any("region" in c for _, c in rows):
            parts.append(f"<td><img src='{cells['region']}' alt='region map'></td>"
                         if "region" in cells else "<td></td>")
        parts.append(f"<td>{hit.score:.6f}</td><td>{hit.full_score:.6f}</td>")
        lines.append("<tr>" + "".join(parts) + "</tr>")
    lines.append("</table><p>Maps are signed: red raises the score, blue lowers it.</p>"
                 "</body></html>")
    page = out / "index.html"
    write_text_atomic(page, "\n".join(lines))
    return page


def _hit_files(out: Path, hit: Hit, index: Index) -> dict:
    """Write a hit's image (its file as read now, or as explained) and maps; their names by
    kind. An explained hit's image and maps show what the model saw (`View.seen`: a face
    crop, enlarged). A hit whose file cannot be read now (missing, or a link out of the
    gallery) gets no image, and is marked stale."""
    from .. import visualize
    cells = {}
    image = None
    seen = visualize.View.seen(hit.explanation.b) if hit.explanation is not None else None
    if seen is not None:
        image = seen.photo()
    else:  # the file as read now: never a link out of the gallery (`Index.gallery_image`)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", StaleHit)  # hit.stale says it on the page
                image = visualize.shown(index.gallery_image(hit.index))
        except SimexplainError as exc:
            hit.stale = hit.stale or str(exc)
    if image is not None:
        name = f"hit_{hit.rank:03d}.png"
        image.save(out / name)
        cells["image"] = name
    if seen is not None and hit.explanation is not None:
        name = f"hit_{hit.rank:03d}_overall.png"
        seen.overlay(hit.explanation.overall_b, signed=True).save(out / name)
        cells["overall"] = name
        if hit.region_map is not None:
            name = f"hit_{hit.rank:03d}_region.png"
            seen.overlay(hit.region_map, signed=True).save(out / name)
            cells["region"] = name
    return cells
