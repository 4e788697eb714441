"""Head analysis: per-position contributions u_p with sum_p u_p = e.

The model is split at the explained layer into a trunk (up to the layer, output A) and a head
(everything after it). Think of A multiplied by a mask m of ones (one entry per position):

* derivative along m = one-hot at position p   ->  J A_p   (the linear part carried by p)
* derivative along every additive offset of the head (Linear/Conv biases, BatchNorm shifts and
  running means, LayerNorm shifts), each moved by its own value  ->  c (the constant term)

so u_p = J A_p + c / P. For heads that are positively homogeneous once per-sample scalars are
frozen (pooling: average, max, GeM; linear layers; batch norm in eval; ReLU/LeakyReLU gates;
dropout in eval; flatten), Euler's theorem gives e = J A + c exactly. The per-sample scalars
(L2 normalisation, the std of LayerNorm, any norm/sqrt/std in the head) are frozen by
`FreezeScales` (frozen.py): their derivatives are dropped, which is what METHOD.md asks for
("freeze, don't differentiate"). For any other head (GELU, softmax, sigmoid) the same
computation is a first-order linearisation and the residual |sum_p u_p - e| is reported.

How it is computed (cost for P positions, C channels, D embedding dimensions):

* `HeadTape` (head_tape.py) records the head during the model's one forward pass; the head is
  then analysed alone, from the recorded layer output: the trunk never runs again. A head
  already analysed as a cached affine matrix for this input size, or packed (below) for
  this input and batch size, is not recorded again (`known_contributions`,
  affine_head.KnownHead).
* Pooling heads (average, max, GeM, token mean, class token; flatten + Linear, which maps each
  position on its own) are recognised on the tape (`find_pooling`). Each position's share of
  the pooled vector (a P x C matrix: A_pk / P for the average, A_pk at the argmax for max, ...)
  is computed directly and only the post-pooling head is differentiated: O(P C D).
* Any other head is differentiated whole, from the layer output.
* A whole head that is affine once its gates, statistics and attention weights are frozen
  (transformer blocks, conv heads) takes the "batched" path: the head runs as that affine
  map on the layer output masked to each position in turn, all at once under vmap, with no
  derivative at all; an additivity check sends any other head on to the next item.
  A transformer head that pools its tokens once (one attention read at one token: a
  class-token transformer one block deep; a mean of the tokens after the final norm; an
  attention pooling head of one query, SigLIP's) is first tried "packed"
  (token_packing.py): every position from one replay, about one block's work instead of
  P + 2 replays; a check against the head sends any head it misreads on to the batched
  path.
* Otherwise J is applied by forward tangents (one per position) or by a reverse-mode Jacobian
  (one cotangent per embedding dimension), whichever is fewer, in chunks under a budget;
  small heads take the reverse path with one cotangent per image and dimension, which also
  gives the constant term, so that no forward-mode pass (slow per operation) runs.
* `tangent_contributions`, the reference path, pushes one tangent per position through the
  whole model: O(P^2 C). Tests compare every path with it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch.func import functional_call, jvp, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.linalg import vector_norm as norm  # no Tensor.norm dispatch in Python

from . import token_packing
from .affine_head import AffineHead, AffineHeads, KnownHead
from .frozen import FreezeScales
from .head_tape import (HeadTape, find_pooling, own_thread, pooled_shares, replay_pooled,
                        to_positions)


@dataclass
class Contributions:
    """Per-position contributions of one batch of images to their embeddings."""

    embedding: torch.Tensor  # (B, D), the model's own output
    positions: torch.Tensor  # (B, P, D), u_p including the constant term c / P
    grid: tuple[int, int]  # (H, W) of the feature grid, H * W = P
    constant: torch.Tensor  # (B, D), c
    # How they were computed, e.g. "mean pooling, reverse" or "whole head, forward"
    # ("tangents": the reference path).
    path: str = "tangents"
    # (B, P, D) each position's whole feature vector mapped by the head's linear part, J A_p,
    # for heads whose pooling takes a channel from some positions only (max pooling, a class
    # token), where many u_p are 0; None where u_p already is that map (up to 1 / P and the
    # constant): average pooling, flatten heads, heads analysed whole. Point maps of the
    # "match" kinds compare these (METHOD.md, "Point-map kinds").
    projected: torch.Tensor | None = None
    # (B, T, D) the contributions of a transformer's prefix tokens (class, register,
    # distillation tokens), which have no place in the image: reported apart from the grid,
    # never spread over it. None for feature maps and token layers without prefix tokens.
    tokens: torch.Tensor | None = None

    @property
    def residual(self) -> torch.Tensor:
        """(B,) |sum_p u_p + sum_t token_t - e|, relative to |e|: 0 up to float error for
        exact heads."""
        total = self.positions.sum(1)
        if self.tokens is not None:
            total = total + self.tokens.sum(1)
        return norm(total - self.embedding, dim=1) / norm(self.embedding, dim=1).clamp_min(1e-12)

    @functools.cached_property
    def spatial(self) -> torch.Tensor:
        """(B,) bool: does any grid position carry a part of the embedding of its own (beyond
        the evenly spread constant term)? False where the head reads only prefix tokens, e.g.
        a class-token model explained at its last layer: its map has nothing spatial in it.
        Computed once (each row's Side reads it; a pass over all B x P x D values); set by
        `_assemble` from the linear parts it has at hand where there are prefix tokens."""
        return _spatial(self.positions - self.constant[:, None, :] / self.positions.shape[1],
                        self.embedding)

    @functools.cached_property
    def read_back(self) -> ReadBack:
        """The worst row's residual and each row's `spatial`, read from the device in one
        transfer: on a GPU each read stalls until the device is done, and `explain` needs
        both per call. Set by `_checked` together with its own check (one transfer for all)."""
        return _read_back(self)[1]


class ReadBack(NamedTuple):
    """What a caller reads of a batch's Contributions as Python values (`read_back`)."""

    worst_residual: float
    # per row, `Contributions.spatial`; True where there are no prefix tokens, which alone
    # can take what the grid does not carry (the flat map of a conv head with no weights
    # left is still its map)
    spatial: list[bool]


def _read_back(c: Contributions, *extra: torch.Tensor) -> tuple[list[float], ReadBack]:
    """(the scalar tensors `extra` as floats, c's ReadBack), from one device transfer."""
    values = torch.stack([*extra, c.residual.amax()]).float()
    if c.tokens is not None:
        values = torch.cat([values, c.spatial.float()])
    floats = values.tolist()
    n = len(extra)
    spatial = [v > 0.5 for v in floats[n + 1:]] if c.tokens is not None else \
        [True] * len(c.embedding)
    return floats[:n], ReadBack(floats[n], spatial)


def _spatial(linear: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
    """`Contributions.spatial` from the grid's linear parts (B, P, D)."""
    size = norm(embedding, dim=1).clamp_min(1e-12)
    return norm(linear, dim=2).amax(1) > 1e-6 * size


def head_offsets(model: torch.nn.Module, head_modules: list[str]) -> dict[str, torch.Tensor]:
    """The additive offsets (biases, BatchNorm running means) of the head's modules: the
    module's own tensors, so that the tape recognises them by identity."""
    offsets: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())
    for module_name in head_modules:
        module = modules[module_name]
        prefix = f"{module_name}." if module_name else ""
        # with their submodules: a module may hand a child's bias to a functional call without
        # calling the child (nn.MultiheadAttention passes out_proj.bias on)
        for name, param in module.named_parameters():
            if name.endswith("bias") and param is not None:
                offsets.setdefault(prefix + name, param)
        for name, buf in module.named_buffers():
            if name.rsplit(".", 1)[-1] == "running_mean" and buf is not None:
                offsets.setdefault(prefix + name, buf)
    return offsets


def mask_shape(feature_shape: torch.Size) -> tuple[int, ...]:
    """Shape of the position mask broadcast against the layer output (4-D or token 3-D)."""
    if len(feature_shape) == 4:  # (B, C, H, W)
        return (1, 1) + tuple(feature_shape[2:])
    return (1, feature_shape[1], 1)  # (B, N, C) tokens


def tangent_contributions(
    model: torch.nn.Module,
    layer: torch.nn.Module,
    x: torch.Tensor,
    feature_shape: torch.Size,
    offsets: dict[str, torch.Tensor],
    grid: tuple[int, int],
    prefix_tokens: int = 0,
    chunk_size: int | None = None,
) -> Contributions:
    """The reference path (strategy "tangents"): one forward-mode tangent per position, each
    the size of the whole layer output, pushed through the whole model: O(P^2 C), and each
    chunk of `chunk_size` tangents reruns the trunk. Kept for heads the tape cannot replay
    and as the independent computation the tests compare the fast paths with.

    `feature_shape` is the layer's output shape for this input size (from a probe pass).
    functional_call puts the offsets' values into the model's own biases for the pass: the
    caller has the model alone (model_lock; SplitModel.contributions does).
    """
    offsets = {k: v.detach() for k, v in offsets.items()}
    shape = mask_shape(feature_shape)
    n_pos = int(torch.tensor(shape).prod())
    device, dtype = x.device, x.dtype
    ones = torch.ones(shape, device=device, dtype=dtype)

    def forward(mask: torch.Tensor, offset_values: dict[str, torch.Tensor]) -> torch.Tensor:
        handle = layer.register_forward_hook(own_thread(lambda _m, _i, out: out * mask))
        try:
            with FreezeScales():
                return functional_call(model, offset_values, (x,), strict=False)
        finally:
            handle.remove()

    def tangent(mask_t: torch.Tensor, offset_t: dict[str, torch.Tensor]):
        return jvp(forward, (ones, offsets), (mask_t, offset_t))

    # One tangent per position, plus one for the constant term.
    eye = torch.eye(n_pos, device=device, dtype=dtype).view((n_pos,) + shape)
    mask_tangents = torch.cat([eye, torch.zeros((1,) + shape, device=device, dtype=dtype)])
    offset_tangents = {
        k: torch.cat([torch.zeros((n_pos,) + v.shape, device=device, dtype=v.dtype), v[None]])
        for k, v in offsets.items()}
    # Fused attention kernels have no forward-mode derivative: use the plain one.
    with torch.no_grad(), sdpa_kernel([SDPBackend.MATH]):
        primal, tangents = vmap(tangent, chunk_size=chunk_size)(mask_tangents, offset_tangents)
    # primal[0]: the primal is the same in every row
    return _assemble(primal[0], tangents[:n_pos].transpose(0, 1), tangents[n_pos], grid,
                     prefix_tokens)


def _assemble(embedding: torch.Tensor, linear: torch.Tensor, constant: torch.Tensor,
              grid: tuple[int, int], prefix_tokens: int) -> Contributions:
    """Contributions from the linear parts (B, N, D) and the constant term (B, D), which is
    spread evenly over the grid. Prefix tokens of a transformer (class token, registers) have
    no place in the image: their contributions are kept apart (`Contributions.tokens`).
    A `linear` that is no view of another tensor is the caller's fresh result, which this
    takes over: its grid rows become the positions in place (no second P x D tensor); a view
    (of the layer output, of a transform's output that may be expanded) is left as it is."""
    fresh = linear._base is None
    tokens = None
    if prefix_tokens:
        tokens = linear[:, :prefix_tokens]
        linear = linear[:, prefix_tokens:]
    # before the constant: no pass to take it off again; read only next to prefix tokens
    spatial = _spatial(linear, embedding) if prefix_tokens else None
    spread = constant[:, None, :] / linear.shape[1]
    positions = linear.add_(spread) if fresh else linear + spread
    result = Contributions(embedding=embedding, positions=positions, grid=grid,
                           constant=constant, tokens=tokens)
    if spatial is not None:
        result.spatial = spatial
    return result


# -- the head as a tape ---------------------------------------------------------------------------

STRATEGIES = ("auto", "batched", "forward", "reverse", "tangents")
# The reverse path takes the constant term from its own pullbacks (one cotangent per image and
# dimension, B * D, instead of D for all images) when they are cheap: at most this many
# multiply-adds, counting each pullback as a linear map of the pooled tensor to D dimensions.
# Then no forward-mode pass runs, whose fixed cost (about a millisecond per head operation:
# forward-mode arithmetic is slow in torch) dominates small heads; beyond, the extra
# cotangents cost more than it (a 512-d head over 1792 channels: 2e9 against 2e7).
PER_ROW_WORK = 1 << 24


# What a known head (affine_head.KnownHead) is made of.
# Called with (the tape, its pooling, the checked cached head) when a call was answered by the
# cached head, or (the tape, None, what the packed path learned) when by a packed replay.
Remember = Callable[[HeadTape, Any, "AffineHead | token_packing.PackedHead"], None]


def tape_contributions(tape: HeadTape, embedding: torch.Tensor, offsets: dict[str, torch.Tensor],
                       grid: tuple[int, int], prefix_tokens: int = 0, strategy: str = "auto",
                       budget: int = 1 << 28, structured: bool = True,
                       affine: AffineHeads | None = None,
                       remember: Remember | None = None) -> Contributions | None:
    """Contributions from a recorded head, without running the trunk again; None when the
    tape does not reproduce the model's embedding (a call the tape cannot see).

    With a pooling head (`find_pooling`), each position's share of the pooled tensor is
    computed directly (P x C numbers) and only the post-pooling head is differentiated;
    otherwise the whole head is, from the layer output. Either way the linear part
    u_p = J (share of p) comes from forward tangents, one per position ("forward"), or from a
    reverse-mode Jacobian, one cotangent per embedding dimension ("reverse"); "auto" takes
    the fewer, or "reverse" whenever its pullbacks are cheap enough to carry the constant
    term as well (PER_ROW_WORK: then no forward-mode pass runs). Both are chunked to hold
    about `budget` floats at a time.

    With `affine` (the model's cache, affine_head.py) and strategy "auto", a post-pooling head
    that is affine once its scales are frozen is one cached matrix product of the shares
    ("affine, cached"), checked against the path above when first built; `remember` is then
    told what answered.
    """
    features = tape.features
    out_slot = tape.slot_of(embedding)
    if features is None or out_slot is None:
        return None
    module_offsets = offsets  # the module's own tensors: the cache keys on their identity
    offsets = {k: v.detach() for k, v in offsets.items()}
    pooling = find_pooling(tape, features.dim()) if structured else None
    n_pos = to_positions(features).shape[1]
    # Scales are frozen in the head's replays only: the mode intercepts every torch call, and
    # the bookkeeping around the replays needs none of it.
    with torch.no_grad(), sdpa_kernel([SDPBackend.MATH]):
        head = None
        if pooling is not None:
            last = pooling.argument if pooling.kind == "linear" else pooling.pool
            start, source = last + 1, pooling.pooled
            recorded = tape.recorded()[source]  # left intact by an affine chain (no in-place)
            if affine is not None and strategy == "auto":
                head = affine.lookup(tape, start, source, out_slot, module_offsets, recorded)
            pooled, shares, pooled_constant, whole = _pooled_inputs(
                tape, pooling, features, offsets, len(embedding),
                recorded if head is not None and head.checked else None)
        else:
            start, source, pooled = 0, 0, features
            pooled_constant = torch.zeros_like(features)
            shares, whole = None, None  # implicit: A masked to one position
        learned = None  # a packed whole head (token_packing.PackedHead)
        if head is not None and head.checked:
            primal, linear, constant = head.apply(pooled, shares, pooled_constant)
            mode = "affine, cached"
        else:
            primal, linear, constant, mode, learned = _linear_parts(
                tape, (source, start, out_slot), pooled, offsets, shares, pooled_constant,
                n_pos, embedding.shape[1], strategy, budget)
            if head is not None:  # a new cache entry: used once it agrees with this path
                cached = head.apply(pooled, shares, pooled_constant)
                head.checked = _agree((primal, linear, constant), cached)
                if head.checked:  # from the first call on: the same bits whatever came before
                    (primal, linear, constant), mode = cached, "affine, cached"
    path = f"{pooling.kind} pooling, {mode}" if pooling else f"whole head, {mode}"
    result = _checked(primal, linear, constant, embedding, n_pos, whole, grid, prefix_tokens,
                      path)
    if result is not None and remember is not None:
        if head is not None and head.checked:
            remember(tape, pooling, head)
        elif learned is not None:
            remember(tape, None, learned)
    return result


def known_contributions(known: KnownHead, features: torch.Tensor, embedding: torch.Tensor,
                        grid: tuple[int, int], prefix_tokens: int = 0) -> Contributions | None:
    """The contributions by a known head (affine_head.KnownHead) from the layer output and the
    model's embedding of a plain forward pass: the pooling's shares and the cached matrix, as
    `tape_contributions` computes them once the head is cached (the same bits), or the packed
    replay of a whole head's recorded steps, without the recording. None when the head does
    not reproduce the model's embedding (a head that branches on its input or was changed),
    or the layer output is not what it was."""
    if (tuple(features.shape[1:]), features.dtype, features.device) != known.features:
        return None
    offsets = {k: v.detach() for k, v in known.offsets.items()}
    n_pos = to_positions(features).shape[1]
    if isinstance(known.head, token_packing.PackedHead):  # a whole head, replayed packed
        with torch.no_grad(), sdpa_kernel([SDPBackend.MATH]):
            parts = token_packing.known_packed(known.program, known.head, features, offsets)
        return None if parts is None else _checked(
            *parts, embedding, n_pos, None, grid, prefix_tokens, "whole head, packed")
    with torch.no_grad():
        pooled, shares, pooled_constant, whole = _pooled_inputs(
            known.program, known.pooling, features, offsets, len(embedding))
        primal, linear, constant = known.head.apply(pooled, shares, pooled_constant)
    return _checked(primal, linear, constant, embedding, n_pos, whole, grid, prefix_tokens,
                    f"{known.pooling.kind} pooling, affine, cached")


def _checked(primal: torch.Tensor, linear: torch.Tensor, constant: torch.Tensor,
             embedding: torch.Tensor, n_pos: int, whole: torch.Tensor | None,
             grid: tuple[int, int], prefix_tokens: int, path: str) -> Contributions | None:
    """The Contributions of the head's (embedding, linear parts, constant), or None when its
    embedding is not the model's own (to 1e-5 of the embedding's size): the analysed head is
    not the one the model ran. The linear parts' rows after the first `n_pos` are the whole
    feature vectors of a selective pooling (`whole` given)."""
    projected = None
    if whole is not None:
        linear, projected = linear[:, :n_pos], linear[:, n_pos:, :][:, prefix_tokens:]
    # allclose(primal, embedding, rtol=1e-4, atol=1e-5 max|e|), read back with the residual
    # and `spatial` (one transfer); assembling first costs only when the check fails (rare)
    size = embedding.abs()
    excess = ((primal - embedding).abs() - 1e-4 * size).amax()
    result = _assemble(embedding, linear, constant, grid, prefix_tokens)
    (gap, scale), result.read_back = _read_back(result, excess, size.amax())
    if not gap <= 1e-5 * scale + 1e-12:  # a NaN fails too
        return None
    result.path = path
    result.projected = projected
    return result


def _pooled_inputs(tape: HeadTape, pooling, features: torch.Tensor,
                   offsets: dict[str, torch.Tensor], batch: int,
                   pooled: torch.Tensor | None = None):
    """(pooled tensor, each position's share of it (B, N, *pooled dims; N = P, or 2P with
    the whole feature vectors of a selective pooling after them), the offsets' share, the
    whole feature vectors or None). The pooled tensor is replayed unless given (the one the
    forward pass recorded, where nothing wrote into it since); a flatten head's is the sum
    of its shares and the bias (the Linear's large weight read once, for the shares). Scales
    are frozen for the elementwise steps' derivative; without any, values alone are computed
    (the mode's cost on every call spared)."""
    with FreezeScales() if pooling.chain else nullcontext():
        shares, pooled_constant, whole = pooled_shares(tape, pooling, features, offsets)
        if pooling.kind == "linear":
            pooled = shares.sum(1) + pooled_constant
        elif pooled is None:
            pooled = replay_pooled(tape, pooling, features, offsets)
    if whole is not None:  # mapped by J together with the shares, in the same pass
        shares = torch.cat([shares, whole], dim=1)
    shares = shares.reshape(batch, shares.shape[1], *pooled.shape[1:])
    return pooled, shares, pooled_constant.expand_as(pooled), whole


def _agree(reference: tuple, cached: tuple) -> bool:
    """Do the cached head's (embedding, linear parts, constant) match the autograd path's, to
    float error relative to the embedding's size?"""
    scale = float(reference[0].abs().max()) + 1e-12
    return all(torch.allclose(r, c, rtol=1e-4, atol=1e-5 * scale)
               for r, c in zip(reference, cached))


def _linear_parts(tape: HeadTape, slots: tuple[int, int, int], pooled: torch.Tensor,
                  offsets: dict[str, torch.Tensor], shares: torch.Tensor | None,
                  pooled_constant: torch.Tensor, n_pos: int, dim: int, strategy: str,
                  budget: int):
    """(embedding, linear parts, constant, mode, what a packed replay learned or None) of the
    head replayed from slot `source` on (steps[start:], up to slot `out_slot`), by the
    strategy's transform (see `tape_contributions`)."""
    source, start, out_slot = slots

    def post(r, off, frozen=None):
        with frozen or FreezeScales():
            return tape.replay({source: r}, off, start, out_slot)

    batch = len(pooled)
    n_tangents = n_pos if shares is None else shares.shape[1]
    per_row = batch * dim * max(pooled.numel(), batch * dim) * dim <= PER_ROW_WORK
    chunk = max(1, budget // pooled.numel())  # tangents or cotangents at a time
    if shares is None and strategy in ("auto", "batched"):
        # the head replayed once with its frozen values recorded: what both derivative-free
        # paths start from
        frozen: list = []
        primal, marks = token_packing.record(tape, pooled, offsets, slots, frozen)
        plan = token_packing.plan(tape, marks, out_slot)  # a whole head: from slot 0
        if plan is not None:  # tokens pooled once (token_packing): one replay in all
            packed = token_packing.packed(tape, plan, pooled, offsets, frozen, marks, out_slot,
                                          primal, post)
            if packed is not None:
                return (*packed, "packed", token_packing.PackedHead(plan, marks, out_slot))
        # each variant holds the head's intermediate values, not one tangent: fewer at once;
        # None where the head is not affine once frozen
        batched = _batched(post, pooled, offsets, n_pos, max(1, chunk // 8), primal, frozen)
        if batched is not None:
            return (*batched, "batched", None)
    if strategy in ("auto", "batched"):  # the fewer tangents, or a cheap pullback
        mode = "forward" if n_tangents <= dim and not per_row else "reverse"
    else:
        mode = strategy
    if mode == "forward":
        return (*_forward(post, pooled, offsets, shares, pooled_constant, n_tangents, chunk),
                mode, None)
    if per_row:
        return (*_reverse(post, pooled, offsets, shares, pooled_constant, dim, chunk), mode,
                None)
    primal, constant = jvp(post, (pooled, offsets), (pooled_constant, offsets))  # type: ignore[misc]  # torch's stub: a 3-tuple (has_aux)
    _, linear, _ = _reverse(post, pooled, offsets, shares, None, dim, chunk)
    return primal, linear, constant, mode, None


def _one_position(features: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """The layer output with every position but p zeroed (p: a 0-dim index, vmapped)."""
    n_pos = to_positions(features).shape[1]
    mask = (torch.arange(n_pos, device=features.device) == p).to(features.dtype)
    if features.dim() == 4:
        return features * mask.view(1, 1, *features.shape[2:])
    return features * mask.view(1, -1, 1)


def _batched(post, pooled, offsets, n_pos: int, chunk: int, primal: torch.Tensor,
             frozen: list):
    """(embedding, (B, P, D) linear parts, (B, D) constant) without derivatives, or None.

    With its frozen values (attention weights, norm statistics, gates) recorded at the real
    input, the head is an affine map h; run on the layer output masked to one position at a
    time with the offsets (biases) zeroed, on zeros with and without them (P + 2 inputs,
    batched under vmap: plain arithmetic, no forward- or reverse-mode bookkeeping),
    u_p = h(A_p; 0) - h(0; 0) and c = h(0). Exact where h is affine; where it is not (an
    operation that is neither linear nor frozen) the parts do not add up to h(A), and None
    says to take another path. `primal` and `frozen`: h(A) and the values frozen in it
    (token_packing.record)."""

    # index < n_pos: one position; n_pos: zeros without the offsets (what constants the offsets
    # do not hold give); n_pos + 1: zeros with them (c)
    def one(index):
        moved = {k: v * (index == n_pos + 1).to(v.dtype) for k, v in offsets.items()}
        return post(_one_position(pooled, index), moved, FreezeScales(replay=frozen))
    index = torch.arange(n_pos + 2, device=pooled.device)
    try:
        out = vmap(one, chunk_size=chunk)(index)  # (P + 2, B, D)
    except RuntimeError:
        return None  # an operation vmap cannot batch
    constant = out[n_pos + 1]
    linear = (out[:n_pos] - out[n_pos]).transpose(0, 1)
    scale = float(primal.abs().max()) + 1e-12
    if not torch.allclose(linear.sum(1) + constant, primal, rtol=1e-4, atol=1e-5 * scale):
        return None
    return primal, linear, constant


def _forward(post, pooled, offsets, shares, pooled_constant, n_pos: int, chunk: int):
    """(embedding, (B, P, D) linear parts, (B, D) constant) by forward tangents: one per
    position, and one more for the constant term (the offsets moved by their own values)."""
    def push(index, tangent):
        last = (index == n_pos).to(pooled.dtype)  # the constant term's tangent
        offset_tangents = {k: v * last for k, v in offsets.items()}
        if shares is None:
            tangent = _one_position(pooled, index) + pooled_constant * last
        return jvp(post, (pooled, offsets), (tangent, offset_tangents))
    index = torch.arange(n_pos + 1, device=pooled.device)
    if shares is None:
        tangents = torch.zeros(n_pos + 1, device=pooled.device)  # unused: built from the index
        in_dims = (0, 0)
    else:
        tangents = torch.cat([shares, pooled_constant[:, None]], dim=1)
        in_dims = (0, 1)
    primal, out = vmap(push, in_dims=in_dims, chunk_size=chunk)(index, tangents)  # (P+1, B, D)
    return primal[0], out[:n_pos].transpose(0, 1), out[n_pos]


def _reverse(post, pooled, offsets, shares, pooled_constant, dim: int, chunk: int):
    """(embedding, (B, P, D) linear parts, (B, D) constant or None) by a reverse-mode Jacobian
    of the (post-pooling) head, applied to each position's share chunk by chunk.

    With `pooled_constant` given, the constant term comes from the same pullbacks: one
    cotangent per (row, embedding dimension), because the offsets are shared by the rows and
    their gradients would otherwise add up over the batch. Without, one cotangent per
    embedding dimension serves every row at once (the rows of a head do not mix)."""
    # plain autograd with batched cotangents: the same pullbacks as functorch's vjp + vmap,
    # at about half the fixed cost
    pooled_leaf = pooled.detach().requires_grad_()
    offset_leaves = {name: value.detach().requires_grad_() for name, value in offsets.items()}
    with torch.enable_grad():  # a copy in: the head may write into its input (relu_)
        out = post(pooled_leaf.clone(), offset_leaves)
    leaves = (pooled_leaf, *offset_leaves.values())
    batch = len(out)
    per_row = pooled_constant is not None
    eye = torch.eye(dim, dtype=out.dtype, device=out.device)
    if per_row:  # cotangent b * D + d: e_d in row b only
        rows = torch.eye(batch, dtype=out.dtype, device=out.device)
        cotangents = (rows[:, None, :, None] * eye[None, :, None, :]).flatten(0, 1)
    else:  # cotangent d: e_d in every row
        cotangents = eye[:, None, :].expand(dim, *out.shape)
    n_pos = shares.shape[1] if shares is not None else to_positions(pooled).shape[1]
    linear = out.new_zeros(batch, n_pos, dim)
    constant = out.new_zeros(batch, dim) if per_row else None
    for start in range(0, len(cotangents), chunk):
        stop = min(start + chunk, len(cotangents))
        grads = torch.autograd.grad(out, leaves, cotangents[start:stop], retain_graph=True,
                                    allow_unused=True, is_grads_batched=True)
        jac = _or_zeros(grads[0], stop - start, pooled)  # (n, B, *pooled dims)
        jac_offsets = {name: _or_zeros(g, stop - start, offsets[name])
                       for name, g in zip(offset_leaves, grads[1:])}
        for b in range(batch):
            if per_row:  # the cotangents of this chunk that belong to row b
                first, last = max(start, b * dim), min(stop, (b + 1) * dim)
                if first >= last:
                    continue
                picked, dims = slice(first - start, last - start), slice(first - b * dim,
                                                                         last - b * dim)
            else:
                picked, dims = slice(None), slice(start, stop)
            rows_j = jac[picked, b]  # (m, *pooled dims): Jacobian rows of embedding b
            linear[b, :, dims] = _apply_rows(rows_j, pooled[b] if shares is None else shares[b],
                                             shares is not None)
            if per_row:  # the derivative along the offsets, each moved by its own value
                moved = (rows_j * pooled_constant[b]).flatten(1).sum(1)
                for name, value in offsets.items():
                    moved = moved + (jac_offsets[name][picked] * value).flatten(1).sum(1)
                assert constant is not None  # per_row: the constant is computed
                constant[b, dims] = moved
    return out.detach(), linear, constant


def _or_zeros(grad: torch.Tensor | None, n: int, like: torch.Tensor) -> torch.Tensor:
    """A batched gradient, or zeros for an input the output does not depend on."""
    return grad if grad is not None else like.new_zeros((n, *like.shape))


def _apply_rows(rows: torch.Tensor, source: torch.Tensor, shares: bool) -> torch.Tensor:
    """(P, m): m Jacobian rows of one image's embedding (m, *pooled dims) applied to each
    position's share of the pooled tensor (P, *pooled dims), or to the positions of the layer
    output itself (*dims): u_p = J[:, p] A_p, the channels of J * A summed at each position."""
    if shares:
        return source.flatten(1) @ rows.flatten(1).T
    return to_positions(rows * source).sum(-1).T
