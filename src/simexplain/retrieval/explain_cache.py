"""The explain-ready cache of an index (`Index.build(..., explain=True)`, `simexplain index build
--explain`): each gallery image's per-position contributions u_p (and, for max-pooling and
class-token heads, the positions' projected features; for a transformer's layer with prefix
tokens, those tokens' contributions), taken from the very forward pass that gave its
embedding, so a build costs about one embedding pass and explaining a hit later needs no model
forward (`Index.explain_hits`, `Index.cached_side`).

In the index folder (each file in the manifest with its size and sha256, see `manifest`):

* explain-contributions.npy, (sum_i P_i, D) float32: image i's rows are offsets[i] to
  offsets[i + 1], the running sum of its P_i = grid height x grid width;
* explain-shapes.npy, (N, 4) int64: each image's model input height, width and feature grid
  height, width (images kept at their aspect ratio have inputs and grids of their own);
* explain-projected.npy, like the contributions, only for heads that have projected features;
* explain-tokens.npy, (N, T, D) float32, and explain-spatial.npy, (N,) bool, only for a layer
  with T prefix tokens (class token, registers; `head.Contributions.tokens`): each image's
  token rows (with its grid rows they sum to its embedding) and whether its grid carries
  anything of its own (`Side.spatial`). T is the model's, the same for every image and input
  size. Indexes written before token rows were cached have neither file.

The float files are memory-mapped on load: a hit reads only its own rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from collections.abc import Sequence

import numpy as np

from ..errors import SimexplainError
from ..head import Contributions
from .manifest import CONTRIBUTIONS, PROJECTED, SHAPES, SPATIAL, TOKENS, damaged


@dataclass
class CachedImage:
    """One gallery image's cached decomposition (float32, on the CPU)."""

    positions: np.ndarray  # (P, D) u_p
    input_size: tuple[int, int]  # (height, width) of the model input it was computed from
    grid: tuple[int, int]  # (H, W) feature grid, H * W = P
    projected: np.ndarray | None = None  # (P, D), see `head.Contributions.projected`
    tokens: np.ndarray | None = None  # (T, D) prefix tokens', see `head.Contributions.tokens`
    spatial: bool = True  # see `head.Contributions.spatial`

    @classmethod
    def each_of(cls, c: Contributions, input_size: Sequence[int]) -> list[CachedImage]:
        """Every row of a batch's contributions, in order: each tensor is read to the host
        once for the batch (one read a row would stall a GPU once a row)."""
        def host(t):
            return None if t is None else t.detach().float().cpu().numpy()
        positions, projected, tokens = host(c.positions), host(c.projected), host(c.tokens)
        spatial = c.read_back.spatial  # only means something next to prefix tokens

        def row(t, i):
            return None if t is None else np.ascontiguousarray(t[i], dtype=np.float32)
        size, grid = (int(input_size[0]), int(input_size[1])), (int(c.grid[0]), int(c.grid[1]))
        return [cls(row(positions, i), size, grid, row(projected, i), row(tokens, i),
                    True if tokens is None else spatial[i]) for i in range(len(positions))]


class ExplainCache:
    """The cached decompositions of N gallery images, in gallery row order."""

    def __init__(self, positions: np.ndarray, shapes: np.ndarray,
                 projected: np.ndarray | None = None, tokens: np.ndarray | None = None,
                 spatial: np.ndarray | None = None, where: str | Path | None = None):
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
        _check_tokens(tokens, spatial, len(shapes), positions.shape[1])
        self.positions = positions
        self.shapes = shapes.astype(np.int64)
        self.projected = projected
        self.tokens = tokens  # (N, T, D) prefix tokens' contributions, or None
        self.spatial = spatial  # (N,) bool `Side.spatial`, with the tokens (else None)
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
        same_token_counts([None if im.tokens is None else len(im.tokens) for im in images])
        shapes = np.asarray([[*im.input_size, *im.grid] for im in images], dtype=np.int64)
        projected = None if images[0].projected is None else np.concatenate(
            [im.projected for im in images])
        tokens = spatial = None
        if images[0].tokens is not None:
            tokens = np.stack([im.tokens for im in images if im.tokens is not None])  # all
            spatial = np.asarray([im.spatial for im in images], dtype=bool)
        return cls(np.concatenate([im.positions for im in images]), shapes, projected, tokens,
                   spatial)

    @classmethod
    def concat(cls, parts: Sequence[ExplainCache]) -> ExplainCache:
        """One cache of consecutive parts (at least one)."""
        if len(parts) == 1:
            return parts[0]
        if len({p.projected is None for p in parts}) > 1:
            raise SimexplainError("explain cache: parts with and without projected features")
        same_token_counts([p.token_count for p in parts])

        def joined(name: str) -> np.ndarray | None:
            arrays = [getattr(p, name) for p in parts]
            return None if arrays[0] is None else np.concatenate(arrays)
        return cls(np.concatenate([p.positions for p in parts]),
                   np.concatenate([p.shapes for p in parts]), joined("projected"),
                   joined("tokens"), joined("spatial"))

    def __len__(self) -> int:
        return len(self.shapes)

    @property
    def dim(self) -> int:
        return int(self.positions.shape[1])

    @property
    def token_count(self) -> int | None:
        """T, the prefix tokens cached for each image; None without them."""
        return None if self.tokens is None else int(self.tokens.shape[1])

    def image(self, row: int) -> CachedImage:
        """Image `row`'s decomposition (copied out of a memory-mapped file), checked finite."""
        start, stop = int(self.offsets[row]), int(self.offsets[row + 1])
        positions = np.array(self.positions[start:stop], dtype=np.float32)
        projected = None if self.projected is None else np.array(self.projected[start:stop],
                                                                 dtype=np.float32)
        tokens = None if self.tokens is None else np.array(self.tokens[row], dtype=np.float32)
        for name, values in ((CONTRIBUTIONS, positions), (PROJECTED, projected),
                             (TOKENS, tokens)):
            if values is not None and not np.isfinite(values).all():
                raise damaged(Path(self.where or "the index") / name,
                              f"non-finite values for gallery row {row}")
        h, w, gh, gw = (int(v) for v in self.shapes[row])
        spatial = True if self.spatial is None else bool(self.spatial[row])
        return CachedImage(positions, (h, w), (gh, gw), projected, tokens, spatial)

    def manifest_entry(self) -> dict:
        """What the manifest records of the cache ("explain")."""
        entry: dict = {"positions": int(self.offsets[-1]), "projected": self.projected is not None}
        if self.tokens is not None:
            entry["tokens"] = self.token_count
        return entry

    def arrays(self) -> dict[str, np.ndarray]:
        """The files to write (name: array)."""
        out = {CONTRIBUTIONS: self.positions, SHAPES: self.shapes}
        if self.projected is not None:
            out[PROJECTED] = self.projected
        if self.tokens is not None and self.spatial is not None:  # both or neither (__init__)
            out[TOKENS] = self.tokens
            out[SPATIAL] = self.spatial
        return out

    @classmethod
    def load(cls, folder: Path, entry: dict, count: int, dim: int) -> ExplainCache:
        """The cache of an index folder whose files were verified against the manifest
        (`entry`: its "explain" field); anything that does not fit is IndexFormatError."""
        total, tokens = entry["positions"], entry.get("tokens")
        expected: dict[str, tuple[type, tuple[int, ...]]] = {
            CONTRIBUTIONS: (np.float32, (total, dim)), SHAPES: (np.int64, (count, 4))}
        if entry["projected"]:
            expected[PROJECTED] = (np.float32, (total, dim))
        if tokens:
            expected[TOKENS] = (np.float32, (count, tokens, dim))
            expected[SPATIAL] = (np.bool_, (count,))
        arrays = {}
        for name, (dtype, shape) in expected.items():
            try:
                arrays[name] = np.load(folder / name, allow_pickle=False,
                                       mmap_mode="r" if dtype == np.float32 else None)
            except (ValueError, OSError, EOFError) as exc:
                raise damaged(folder / name, f"cannot read the explain cache ({exc})") from None
            if arrays[name].dtype != dtype or arrays[name].shape != shape:
                raise damaged(folder / name, f"expected {np.dtype(dtype).name} of shape {shape}, "
                                             f"found {arrays[name].dtype} {arrays[name].shape}")
        try:
            return cls(arrays[CONTRIBUTIONS], arrays[SHAPES], arrays.get(PROJECTED),
                       arrays.get(TOKENS), arrays.get(SPATIAL), where=folder)
        except SimexplainError as exc:
            raise damaged(folder / SHAPES, str(exc)) from None


def _check_tokens(tokens: np.ndarray | None, spatial: np.ndarray | None, count: int,
                  dim: int) -> None:
    """The prefix tokens' rows (N, T, D) and spatial flags (N,) fit N images of D dimensions."""
    if (tokens is None) != (spatial is None):
        raise SimexplainError("explain cache: prefix tokens' contributions and spatial flags "
                              "come together")
    if tokens is None or spatial is None:
        return
    if tokens.ndim != 3 or tokens.shape[0] != count or tokens.shape[1] < 1 \
            or tokens.shape[2] != dim:
        raise SimexplainError(f"explain cache: prefix tokens' contributions {tokens.shape} do "
                              f"not fit {count} images of {dim}-d contributions")
    if spatial.shape != (count,) or spatial.dtype != np.bool_:
        raise SimexplainError(f"explain cache: spatial flags {spatial.dtype} {spatial.shape} "
                              f"do not fit {count} images")


def same_token_counts(counts: Sequence[int | None]) -> None:
    """One model gives every image the same prefix tokens (or none): refuse a mix, which
    would come from token counts that `adapters.SplitModel.grid` reads as another grid and
    prefix for some input sizes."""
    if len(set(counts)) > 1:
        shown = sorted({"none" if c is None else str(c) for c in counts})
        raise SimexplainError(f"explain cache: the model's layer gives images different "
                              f"numbers of prefix tokens ({', '.join(shown)}): give it inputs "
                              "of one size (no kept aspect ratio) or build without --explain")
