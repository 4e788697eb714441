"""The explain-ready cache of an index (`Index.build(..., explain=True)`, `simexplain index build
--explain`): each gallery image's per-position contributions u_p (and, for max-pooling and
class-token heads, the positions' projected features), taken from the very forward pass that
gave its embedding, so a build costs about one embedding pass and explaining a hit later needs
no model forward (`Index.explain_hits`, `Index.cached_side`).

In the index folder (each file in the manifest with its size and sha256, see `manifest`):

* explain-contributions.npy, (sum_i P_i, D) float32: image i's rows are offsets[i] to
  offsets[i + 1], the running sum of its P_i = grid height x grid width;
* explain-shapes.npy, (N, 4) int64: each image's model input height, width and feature grid
  height, width (images kept at their aspect ratio have inputs and grids of their own);
* explain-projected.npy, like the contributions, only for heads that have projected features.

The float files are memory-mapped on load: a hit reads only its own rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from collections.abc import Sequence

import numpy as np

from ..errors import SimexplainError
from ..head import Contributions
from .manifest import CONTRIBUTIONS, PROJECTED, SHAPES, damaged


@dataclass
class CachedImage:
    """One gallery image's cached decomposition (float32, on the CPU)."""

    positions: np.ndarray  # (P, D) u_p
    input_size: tuple[int, int]  # (height, width) of the model input it was computed from
    grid: tuple[int, int]  # (H, W) feature grid, H * W = P
    projected: np.ndarray | None = None  # (P, D), see `head.Contributions.projected`

    @classmethod
    def of(cls, c: Contributions, row: int, input_size: Sequence[int]) -> CachedImage:
        """Row `row` of a batch's contributions."""
        if c.tokens is not None:
            # the prefix tokens' rows have no place in the cache's per-grid layout yet
            raise SimexplainError(
                "explain caches do not store the class (prefix) tokens of a transformer's "
                "layer yet: build this index without --explain (hits are then explained from "
                "the images)")

        def rows(t):
            return np.ascontiguousarray(t[row].detach().float().cpu().numpy(), dtype=np.float32)
        return cls(rows(c.positions), (int(input_size[0]), int(input_size[1])),
                   (int(c.grid[0]), int(c.grid[1])),
                   None if c.projected is None else rows(c.projected))


class ExplainCache:
    """The cached decompositions of N gallery images, in gallery row order."""

    def __init__(self, positions: np.ndarray, shapes: np.ndarray,
                 projected: np.ndarray | None = None, where: str | Path | None = None):
        shapes = np.asarray(shapes)
        if shapes.ndim != 2 or shapes.shape[1] != 4 or shapes.dtype.kind not in "iu" \
                or (shapes < 1).any():
            raise SimexplainError(f"explain cache shapes must be (N, 4) positive integers, got "
                                  f"{shapes.dtype} {shapes.shape}")
        counts = shapes[:, 2].astype(np.int64) * shapes[:, 3]
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        if positions.ndim != 2 or positions.shape[0] != self.offsets[-1]:
            raise SimexplainError(f"explain cache: {positions.shape} contributions for grids "
                                  f"of {int(self.offsets[-1])} positions in all")
        if projected is not None and projected.shape != positions.shape:
            raise SimexplainError(f"explain cache: projected features {projected.shape} do not "
                                  f"match the contributions {positions.shape}")
        self.positions = positions
        self.shapes = shapes.astype(np.int64)
        self.projected = projected
        self.where = where  # the folder it was loaded from, named in errors

    @classmethod
    def stack(cls, images: Sequence[CachedImage]) -> ExplainCache:
        """The cache of these images, in order (at least one)."""
        if len({im.projected is None for im in images}) > 1:
            raise SimexplainError("explain cache: some images have projected features, others "
                                  "do not (one model gives both or neither)")
        dims = {im.positions.shape[1] for im in images}
        if len(dims) != 1:
            raise SimexplainError(f"explain cache: contributions of different sizes "
                                  f"{sorted(dims)}")
        shapes = np.asarray([[*im.input_size, *im.grid] for im in images], dtype=np.int64)
        projected = None if images[0].projected is None else np.concatenate(
            [im.projected for im in images])
        return cls(np.concatenate([im.positions for im in images]), shapes, projected)

    @classmethod
    def concat(cls, parts: Sequence[ExplainCache]) -> ExplainCache:
        """One cache of consecutive parts (at least one)."""
        if len(parts) == 1:
            return parts[0]
        if len({p.projected is None for p in parts}) > 1:
            raise SimexplainError("explain cache: parts with and without projected features")
        projected = None if parts[0].projected is None else np.concatenate(
            [p.projected for p in parts])
        return cls(np.concatenate([p.positions for p in parts]),
                   np.concatenate([p.shapes for p in parts]), projected)

    def __len__(self) -> int:
        return len(self.shapes)

    @property
    def dim(self) -> int:
        return int(self.positions.shape[1])

    def image(self, row: int) -> CachedImage:
        """Image `row`'s decomposition (copied out of a memory-mapped file), checked finite."""
        start, stop = int(self.offsets[row]), int(self.offsets[row + 1])
        positions = np.array(self.positions[start:stop], dtype=np.float32)
        projected = None if self.projected is None else np.array(self.projected[start:stop],
                                                                 dtype=np.float32)
        for name, values in ((CONTRIBUTIONS, positions), (PROJECTED, projected)):
            if values is not None and not np.isfinite(values).all():
                raise damaged(Path(self.where or "the index") / name,
                              f"non-finite values for gallery row {row}")
        h, w, gh, gw = (int(v) for v in self.shapes[row])
        return CachedImage(positions, (h, w), (gh, gw), projected)

    def manifest_entry(self) -> dict:
        """What the manifest records of the cache ("explain")."""
        return {"positions": int(self.offsets[-1]), "projected": self.projected is not None}

    def arrays(self) -> dict[str, np.ndarray]:
        """The files to write (name: array)."""
        out = {CONTRIBUTIONS: self.positions, SHAPES: self.shapes}
        if self.projected is not None:
            out[PROJECTED] = self.projected
        return out

    @classmethod
    def load(cls, folder: Path, entry: dict, count: int, dim: int) -> ExplainCache:
        """The cache of an index folder whose files were verified against the manifest
        (`entry`: its "explain" field); anything that does not fit is IndexFormatError."""
        arrays = {}
        for name in (CONTRIBUTIONS, SHAPES) + ((PROJECTED,) if entry["projected"] else ()):
            try:
                arrays[name] = np.load(folder / name, allow_pickle=False,
                                       mmap_mode=None if name == SHAPES else "r")
            except (ValueError, OSError, EOFError) as exc:
                raise damaged(folder / name, f"cannot read the explain cache ({exc})") from None
        total = entry["positions"]
        for name in (CONTRIBUTIONS, PROJECTED):
            if name in arrays and (arrays[name].dtype != np.float32
                                   or arrays[name].shape != (total, dim)):
                raise damaged(folder / name, f"expected float32 of shape ({total}, {dim}), found "
                                             f"{arrays[name].dtype} {arrays[name].shape}")
        shapes = arrays[SHAPES]
        if shapes.dtype != np.int64 or shapes.shape != (count, 4):
            raise damaged(folder / SHAPES, f"expected int64 of shape ({count}, 4), found "
                                           f"{shapes.dtype} {shapes.shape}")
        try:
            return cls(arrays[CONTRIBUTIONS], shapes, arrays.get(PROJECTED), where=folder)
        except SimexplainError as exc:
            raise damaged(folder / SHAPES, str(exc)) from None
