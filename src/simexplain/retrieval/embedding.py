"""Gallery files to embeddings, a chunk at a time: what every build engine runs on its part of
the gallery (in this process, or in each Ray worker)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch

from ..errors import ImageError
from .basics import Skipped, file_sha256
from .explain_cache import CachedImage

if TYPE_CHECKING:
    from ..adapters import SplitModel
    from ..explainer import Explainer


class Embedded(NamedTuple):
    """One embedded gallery file."""

    row: int
    sha256: str
    embedding: np.ndarray  # (D,) float32
    cached: CachedImage | None = None  # its contributions, in an explain build


def embed_files(chunk: list[str], offset: int, explainer: Explainer, stream: SplitModel,
                root: Path,
                explain: bool = False) -> tuple[list[Embedded], list[Skipped]]:
    """Prepare, hash and embed gallery files (rows offset, offset + 1, ...): each embedded
    file in row order, and the files skipped (unreadable, or a link out of the gallery
    folder). Images of one input size share a forward pass; with `explain`, that pass also
    gives their contributions (the model's embedding from it is the one kept)."""
    ready: list[tuple[int, str, torch.Tensor]] = []
    skipped: list[Skipped] = []
    real_root = os.path.realpath(root)
    for i, path in enumerate(chunk, offset):
        if not os.path.exists(path):
            skipped.append(Skipped(path, "not found: a link to nothing (broken, or a loop of "
                                         "links), or removed since the folder was listed"))
            continue
        if os.path.commonpath([real_root, os.path.realpath(path)]) != real_root:
            skipped.append(Skipped(path, "a link to a file outside the gallery folder"))
            continue
        try:
            digest = file_sha256(path)
            tensor = explainer.prepare(path, "b").tensor
        except (ImageError, OSError) as exc:
            skipped.append(Skipped(path, str(exc) or type(exc).__name__))
            continue
        ready.append((i, digest, tensor))
    groups: dict[tuple, list] = {}
    for item in ready:
        groups.setdefault(tuple(item[2].shape), []).append(item)
    results: list[Embedded] = []
    for shape, items in groups.items():
        batch = torch.cat([t for _, _, t in items])
        if explain:
            c = explainer.contributions(batch, "b")
            out = c.embedding
        else:
            out = stream.embed(batch)
        vectors = out.detach().float().cpu().numpy()
        cached = CachedImage.each_of(c, shape[2:]) if explain else [None] * len(items)
        for (i, digest, _), vec, image in zip(items, vectors, cached):
            results.append(Embedded(i, digest, vec, image))
    results.sort(key=lambda r: r.row)
    return results, skipped
