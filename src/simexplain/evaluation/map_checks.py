"""The three maps against their baselines, across benchmarks: the relative map against Grad-CAM
and the overall map, the default point map against raw feature cosine (paired differences)."""

from __future__ import annotations

import numpy as np

from ..explanation import DEFAULT_POINT_MAP
from .common import paired_difference
from .tables import fmt, fmt_plain

DEFAULT_POINT_METHOD = f"point-{DEFAULT_POINT_MAP}"


def map_checks(results: dict[str, list[dict]]) -> list[list[str]]:
    """Rows: the relative map vs Grad-CAM and vs the overall map, the default point map vs raw
    feature cosine (and the best point-map kind vs cosine), per benchmark and model."""
    rows = []

    def add(bench, model, x, y, values, higher, weights=None, seed=0):
        if x not in values or y not in values:
            return
        a = np.asarray(values[x], dtype=np.float64)
        b = np.asarray(values[y], dtype=np.float64)
        keep = np.isfinite(a) & np.isfinite(b)
        if not keep.any():
            return
        w = None if weights is None else np.asarray(weights, dtype=np.float64)[keep]
        d = paired_difference(a[keep], b[keep], weights=w, seed=seed)
        mean = ((lambda v: float((v * w).sum() / w.sum())) if w is not None
                else (lambda v: float(np.mean(v))))
        better = d["lo"] > 0 if higher else d["hi"] < 0
        worse = d["hi"] < 0 if higher else d["lo"] > 0
        verdict = ("identical" if np.allclose(a[keep], b[keep], atol=1e-9) else
                   f"{x} better" if better else f"{y} better" if worse else "within the CI")
        rows.append([bench, model, f"{x} - {y}",
                     f"{fmt_plain(mean(a[keep]))} vs {fmt_plain(mean(b[keep]))}", fmt(d),
                     verdict])

    for r in results.get("pointing", []):
        values = {m: v["hit"] for m, v in r["per_sample"].items()}
        add("pointing (hit rate)", r["model"], "relative", "gradcam", values, True,
            seed=r["seed"])
        add("pointing (hit rate)", r["model"], "relative", "decomposition", values, True,
            seed=r["seed"])
        add("pointing (hit rate)", r["model"], DEFAULT_POINT_METHOD, "gradcam", values, True,
            seed=r["seed"])
    for r in results.get("localisation", []):
        th = r["settings"]["thresholds"]
        values = {m: np.asarray(v["correct"], dtype=np.float64)[
            :, th.index(r["methods"][m]["best_threshold"])] for m, v in r["per_sample"].items()}
        add("localisation (best t)", r["model"], "relative", "decomposition", values, True,
            seed=r["seed"])
        add("localisation (best t)", r["model"], "relative", "gradcam", values, True,
            seed=r["seed"])
    for r in results.get("faithfulness", []):
        for kind, higher in (("deletion", False), ("insertion", True)):
            values = {m: v[f"{kind}_auc"] for m, v in r["per_sample"].items()}
            add(f"faithfulness ({kind} AUC)", r["model"], "relative", "decomposition", values,
                higher, seed=r["seed"])
    for r in results.get("correspondence", []):
        ps = r["per_sample"]
        values = {m: v["pck@0.1"] for m, v in ps.items() if isinstance(v, dict)}
        add("correspondence (PCK@0.1)", r["model"], DEFAULT_POINT_METHOD, "cosine", values,
            True, weights=ps["points"], seed=r["seed"])
        stereo = r.get("stereo") or {}
        if "per_point" in stereo:
            values = {m: v["pck@0.1"] for m, v in stereo["per_point"].items()}
            add("stereo photos (PCK@0.1)", r["model"], DEFAULT_POINT_METHOD, "cosine", values,
                True, seed=r["seed"])
    return rows
