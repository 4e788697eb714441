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
`FreezeScales`: their derivatives are dropped, which is what METHOD.md asks for ("freeze, don't
differentiate"). For any other head (GELU, softmax, sigmoid) the same computation is a
first-order linearisation and the residual |sum_p u_p - e| is reported.

How it is computed (cost for P positions, C channels, D embedding dimensions):

* `HeadTape` records the head during the model's one forward pass; the head is then analysed
  alone, from the recorded layer output: the trunk never runs again.
* Pooling heads (average, max, GeM, token mean, class token; flatten + Linear, which maps each
  position on its own) are recognised on the tape (`find_pooling`). Each position's share of
  the pooled vector (a P x C matrix: A_pk / P for the average, A_pk at the argmax for max, ...)
  is computed directly and only the post-pooling head is differentiated: O(P C D).
* Any other head is differentiated whole, from the layer output.
* Either way J is applied by forward tangents (one per position) or by a reverse-mode Jacobian
  (one cotangent per embedding dimension), whichever is fewer, in chunks under a budget.
* `tangent_contributions`, the reference path, pushes one tangent per position through the
  whole model: O(P^2 C). Tests compare every path with it.
"""

from __future__ import annotations

import inspect
import math
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.func import functional_call, jvp, vjp, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

# Ops whose outputs act as per-sample scalars in a head: their value is kept, their tangent
# dropped ("frozen"). They appear as the denominators of normalisations.
_SCALE_OPS = {
    torch.norm, torch.Tensor.norm, torch.linalg.norm, torch.linalg.vector_norm,
    torch.sqrt, torch.Tensor.sqrt, torch.rsqrt, torch.Tensor.rsqrt,
    torch.std, torch.Tensor.std, torch.var, torch.Tensor.var,
}
_NORMALIZE_SIG = inspect.signature(F.normalize)
_BATCH_NORM_SIG = inspect.signature(F.batch_norm)
_LAYER_NORM_SIG = inspect.signature(F.layer_norm)


class RawEmbeddings(TorchFunctionMode):
    """Within the block, F.normalize is the identity: the model returns its raw
    (pre-normalisation) embedding, which Grad-CAM's "raw" variant needs."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.normalize:
            return _NORMALIZE_SIG.bind(*args, **kwargs).arguments["input"]
        return func(*args, **kwargs)


class FreezeScales(TorchFunctionMode):
    """Run a forward pass with per-sample scalars frozen (values unchanged, tangents dropped)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.normalize:
            bound = _NORMALIZE_SIG.bind(*args, **kwargs)
            bound.apply_defaults()
            a = bound.arguments
            denom = a["input"].norm(a["p"], a["dim"], keepdim=True).clamp_min(a["eps"])
            return a["input"] / denom.detach()
        if func is F.batch_norm:
            bound = _BATCH_NORM_SIG.bind(*args, **kwargs)
            bound.apply_defaults()
            if not bound.arguments["training"]:
                return _batch_norm_eval(**bound.arguments)
        if func is F.layer_norm:
            bound = _LAYER_NORM_SIG.bind(*args, **kwargs)
            bound.apply_defaults()
            return _layer_norm_frozen(**bound.arguments)
        out = func(*args, **kwargs)
        if func in _SCALE_OPS and isinstance(out, torch.Tensor):
            return out.detach()
        return out


def _batch_norm_eval(input, running_mean, running_var, weight, bias, eps, **_):
    # Written out so that running_mean and bias can carry tangents (torch's kernel refuses).
    shape = (1, -1) + (1,) * (input.dim() - 2)
    scale = (running_var + eps).rsqrt()
    if weight is not None:
        scale = scale * weight
    out = (input - running_mean.view(shape)) * scale.view(shape)
    return out if bias is None else out + bias.view(shape)


def _layer_norm_frozen(input, normalized_shape, weight, bias, eps):
    dims = tuple(range(-len(normalized_shape), 0))
    centred = input - input.mean(dim=dims, keepdim=True)
    std = (input.var(dim=dims, keepdim=True, unbiased=False) + eps).sqrt().detach()
    out = centred / std
    if weight is not None:
        out = out * weight
    return out if bias is None else out + bias


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

    @property
    def residual(self) -> torch.Tensor:
        """(B,) |sum_p u_p - e|, relative to |e|: 0 up to float error for exact heads."""
        total = self.positions.sum(1)
        return (total - self.embedding).norm(dim=1) / self.embedding.norm(dim=1).clamp_min(1e-12)


def head_offsets(model: torch.nn.Module, head_modules: list[str]) -> dict[str, torch.Tensor]:
    """The additive offsets (biases, BatchNorm running means) of the head's modules: the
    module's own tensors, so that the tape recognises them by identity."""
    offsets: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())
    for module_name in head_modules:
        module = modules[module_name]
        prefix = f"{module_name}." if module_name else ""
        for name, param in module.named_parameters(recurse=False):
            if name.endswith("bias") and param is not None:
                offsets[prefix + name] = param
        for name, buf in module.named_buffers(recurse=False):
            if name == "running_mean" and buf is not None:
                offsets[prefix + name] = buf
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
    """
    offsets = {k: v.detach() for k, v in offsets.items()}
    shape = mask_shape(feature_shape)
    n_pos = int(torch.tensor(shape).prod())
    device, dtype = x.device, x.dtype
    ones = torch.ones(shape, device=device, dtype=dtype)

    def forward(mask: torch.Tensor, offset_values: dict[str, torch.Tensor]) -> torch.Tensor:
        handle = layer.register_forward_hook(lambda _m, _i, out: out * mask)
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
    """Contributions from the linear parts (B, N, D) and the constant term (B, D). Prefix
    tokens of a transformer (class token) carry no place in the image: their contributions
    join the constant term, which is then spread evenly over the grid."""
    if prefix_tokens:
        constant = constant + linear[:, :prefix_tokens].sum(1)
        linear = linear[:, prefix_tokens:]
    positions = linear + constant[:, None, :] / linear.shape[1]
    return Contributions(embedding=embedding, positions=positions, grid=grid, constant=constant)


# -- the head as a tape ---------------------------------------------------------------------------
# The trunk runs once: during the model's own forward pass every torch call that reads the
# explained layer's output (or anything computed from it) is recorded, and the recording is
# replayed as a function of that output alone, under whichever transform is cheapest.


@dataclass(frozen=True)
class _Slot:
    """A tensor of the tape: the layer output is slot 0, each recorded result gets the next."""

    index: int


@dataclass(frozen=True)
class _Offset:
    """A head offset (bias, running mean) read by a recorded call; replaced on replay."""

    name: str


@dataclass
class _Step:
    func: object
    args: tuple
    kwargs: dict
    outputs: list[int | None]  # slot of each flattened output leaf (None: not a tensor)
    reads: set[int]  # slots read

    def run(self, env: dict[int, torch.Tensor], offsets: dict[str, torch.Tensor]):
        def value(leaf):
            if isinstance(leaf, _Slot):
                return env[leaf.index]
            return offsets[leaf.name] if isinstance(leaf, _Offset) else leaf
        args, kwargs = tree_map(value, (self.args, self.kwargs))
        out = self.func(*args, **kwargs)
        for slot, leaf in zip(self.outputs, tree_flatten(out)[0]):
            if slot is not None:
                env[slot] = leaf


class HeadTape(TorchFunctionMode):
    """Records the head during one forward pass of the whole model (register `hook` on the
    explained layer). Calls that read no recorded tensor (the trunk, constants) are not
    recorded; values such as shapes are recorded as they were, which is exact for this input."""

    def __init__(self, offsets: dict[str, torch.Tensor]):
        super().__init__()
        self._offset_names = {id(t): name for name, t in offsets.items()}
        self._offset_objects = offsets
        self._known: dict[int, tuple[torch.Tensor, int]] = {}  # id -> (tensor kept alive, slot)
        self.steps: list[_Step] = []
        self.features: torch.Tensor | None = None  # the layer output A
        self._next_slot = 1

    def hook(self, _module, _inputs, out):
        if not isinstance(out, torch.Tensor) or self.features is not None:
            return None
        self.features = out
        fed = out.clone()  # the model goes on with a copy: in-place head ops leave A intact
        self._known[id(fed)] = (fed, 0)
        return fed

    def slot_of(self, leaf) -> int | None:
        """The slot of a recorded tensor (None for anything else)."""
        entry = self._known.get(id(leaf))
        return entry[1] if entry is not None and entry[0] is leaf else None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not self._known:
            return out
        leaves, spec = tree_flatten((args, kwargs))
        reads = {s for s in map(self.slot_of, leaves) if s is not None}
        if not reads:
            return out
        out_leaves = tree_flatten(out)[0]
        name = getattr(func, "__name__", "")
        if not any(isinstance(o, torch.Tensor) for o in out_leaves) and not (
                name.endswith("_") or name == "__setitem__"):
            return out  # a query (size, dim, item): its value is baked into later calls

        def record(leaf):
            slot = self.slot_of(leaf)
            if slot is not None:
                return _Slot(slot)
            offset = self._offset_names.get(id(leaf))
            if offset is not None and self._offset_objects[offset] is leaf:
                return _Offset(offset)
            return leaf
        rec_args, rec_kwargs = tree_unflatten([record(v) for v in leaves], spec)
        outputs: list[int | None] = []
        for leaf in out_leaves:
            if isinstance(leaf, torch.Tensor):
                self._known[id(leaf)] = (leaf, self._next_slot)
                outputs.append(self._next_slot)
                self._next_slot += 1
            else:
                outputs.append(None)
        self.steps.append(_Step(func, rec_args, rec_kwargs, outputs, reads))
        return out

    def replay(self, inputs: dict[int, torch.Tensor], offsets: dict[str, torch.Tensor],
               start: int, output: int) -> torch.Tensor:
        """Rerun steps[start:] from the given slots; the tensor in slot `output`."""
        env = dict(inputs)
        for step in self.steps[start:]:
            step.run(env, offsets)
        return env[output]


# Calls that act on each element alone (with scalar parameters): they keep positions apart, so a
# pooling after them still pools per channel.
_ELEMENTWISE = {
    torch.relu, torch.Tensor.relu, F.relu, torch.clamp, torch.Tensor.clamp, torch.clamp_min,
    torch.Tensor.clamp_min, torch.pow, torch.Tensor.pow, torch.Tensor.__pow__, torch.abs,
    torch.Tensor.abs, F.leaky_relu, F.gelu, torch.sigmoid, torch.Tensor.sigmoid,
    torch.Tensor.__mul__, torch.Tensor.__rmul__, torch.mul, torch.Tensor.mul,
    torch.Tensor.__truediv__, torch.div, torch.Tensor.div,
}
_MEAN = {torch.mean, torch.Tensor.mean}
_SUM = {torch.sum, torch.Tensor.sum}
_AMAX = {torch.amax, torch.Tensor.amax}
_FLATTEN = {torch.flatten, torch.Tensor.flatten, torch.Tensor.reshape, torch.reshape,
            torch.Tensor.view}


@dataclass
class _Pooling:
    """The head read as: elementwise steps, one pooling step (per channel over positions, or
    flatten + Linear, which is per position), then the rest of the head (the post-pooling
    head) from the pooled tensor in slot `pooled`."""

    chain: list[int]  # indices of the elementwise steps
    pool: int  # index of the pooling step
    kind: str  # mean, sum, amax, argmax, select, linear
    pooled: int  # slot of the pooled tensor
    argument: object = None  # select: the token index; linear: the Linear's step


def _reduced_dims(step: _Step) -> set[int] | None:
    dims = step.args[1] if len(step.args) > 1 else step.kwargs.get("dim")
    if dims is None:
        return None
    dims = (dims,) if isinstance(dims, int) else tuple(dims)
    return set(dims)


def _positional(step: _Step, source: int) -> bool:
    """True if the step reads only slot `source` and scalar constants (elementwise-safe)."""
    leaves = tree_flatten((step.args, step.kwargs))[0]
    for leaf in leaves:
        if isinstance(leaf, _Offset):
            return False
        if isinstance(leaf, torch.Tensor) and leaf.numel() != 1:
            return False
    return step.reads == {source}


def find_pooling(tape: HeadTape, ndim: int) -> _Pooling | None:
    """Recognise a pooling head on the tape, or None (the head is then analysed whole)."""
    steps = tape.steps
    readers: dict[int, list[int]] = {}
    for i, step in enumerate(steps):
        for slot in step.reads:
            readers.setdefault(slot, []).append(i)
    position_dims = {2, 3, -2, -1} if ndim == 4 else {1, -2}
    n_pos_dims = 2 if ndim == 4 else 1
    chain: list[int] = []
    current = 0
    while True:
        users = readers.get(current, [])
        if len(users) != 1:
            return None  # read twice (e.g. average and max pooling concatenated): whole head
        i = users[0]
        step = steps[i]
        if not _positional(step, current) or len(step.outputs) < 1 or step.outputs[0] is None:
            return None
        func = step.func
        kind, argument = None, None
        if func in _MEAN or func in _SUM or func in _AMAX:
            dims = _reduced_dims(step)
            if dims is not None and dims <= position_dims and len(
                    {d % ndim for d in dims}) == n_pos_dims:
                kind = "mean" if func in _MEAN else "sum" if func in _SUM else "amax"
        elif func is F.adaptive_avg_pool2d or func is F.adaptive_max_pool2d:
            size = step.args[1] if len(step.args) > 1 else step.kwargs.get("output_size")
            if ndim == 4 and size in (1, (1, 1), [1, 1]) and not (
                    func is F.adaptive_max_pool2d and _returns_indices(step)):
                kind = "mean" if func is F.adaptive_avg_pool2d else "argmax"
        elif func is torch.Tensor.__getitem__ and ndim == 3:
            index = step.args[1]
            if (isinstance(index, tuple) and len(index) == 2 and index[0] == slice(None)
                    and isinstance(index[1], int)):
                kind, argument = "select", index[1]
        elif func in _FLATTEN:
            linear = _flatten_then_linear(steps, readers, i, math.prod(tape.features.shape[1:]))
            if linear is not None:
                return _Pooling(chain, i, "linear", steps[linear].outputs[0], linear)
        elif func in _ELEMENTWISE and len(step.outputs) == 1:
            chain.append(i)
            current = step.outputs[0]
            continue
        if kind is None:
            return None
        return _Pooling(chain, i, kind, step.outputs[0], argument)


def _returns_indices(step: _Step) -> bool:
    flag = step.args[2] if len(step.args) > 2 else step.kwargs.get("return_indices", False)
    return bool(flag)


def _flatten_then_linear(steps: list[_Step], readers: dict[int, list[int]], i: int,
                         numel: int) -> int | None:
    """Index of an F.linear step that alone reads the flattening done by step i and maps all
    `numel` values of an image (a Linear over C * P, not e.g. over positions alone)."""
    flat = steps[i]
    out = flat.outputs[0]
    users = readers.get(out, [])
    if len(users) != 1:
        return None
    step = steps[users[0]]
    if step.func is not F.linear or step.reads != {out} or not isinstance(step.args[0], _Slot):
        return None
    weight = step.args[1] if len(step.args) > 1 else step.kwargs.get("weight")
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or weight.shape[1] != numel:
        return None
    return users[0]


def _to_positions(t: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W, C); tokens (B, N, C) stay as they are."""
    return t.flatten(2).transpose(1, 2) if t.dim() == 4 else t


def _pooled_shares(tape: HeadTape, pooling: _Pooling, features: torch.Tensor,
                   offsets: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(S, pooled constant): S[b, p] is position p's share of the pooled tensor, i.e. the
    tangent of the pooled tensor when only position p of the mask moves (B, P, *pooled dims);
    the pooled constant is its tangent from the offsets (a Linear's bias for flatten heads)."""
    chain_out = tape.steps[pooling.chain[-1]].outputs[0] if pooling.chain else 0

    def chain(a):
        env = {0: a}
        for i in pooling.chain:
            tape.steps[i].run(env, offsets)
        return env[chain_out]
    # Elementwise steps: one tangent (the whole layer output) carries every position at once.
    y, t = jvp(chain, (features,), (features,)) if pooling.chain else (features, features)
    y_pos, t_pos = _to_positions(y), _to_positions(t)  # (B, P, C)
    n_pos = y_pos.shape[1]
    if pooling.kind == "mean":
        shares = t_pos / n_pos
    elif pooling.kind == "sum":
        shares = t_pos
    elif pooling.kind == "amax":  # ties split equally, as amax's own derivative does
        top = (y_pos == y_pos.amax(1, keepdim=True)).to(t_pos.dtype)
        shares = t_pos * top / top.sum(1, keepdim=True)
    elif pooling.kind == "argmax":  # the position max pooling picks, as its derivative does
        _, index = F.adaptive_max_pool2d(y, 1, return_indices=True)
        index = index.flatten(1)[:, None, :]  # (B, 1, C)
        shares = torch.zeros_like(t_pos).scatter(1, index, t_pos.gather(1, index))
    elif pooling.kind == "select":
        shares = torch.zeros_like(t_pos)
        shares[:, pooling.argument] = t_pos[:, pooling.argument]
    else:  # flatten + Linear: W reshaped to (D, P, C) maps each position on its own
        linear = tape.steps[pooling.argument]
        weight = linear.args[1] if len(linear.args) > 1 else linear.kwargs["weight"]
        per_position = _per_position_weight(weight, y.shape[1:])  # (P, C, D)
        shares = torch.bmm(t_pos.transpose(0, 1).contiguous(), per_position).transpose(0, 1)
        bias = linear.args[2] if len(linear.args) > 2 else linear.kwargs.get("bias")
        bias = offsets[bias.name] if isinstance(bias, _Offset) else torch.zeros(())
        return shares, bias.expand(len(y), shares.shape[-1])
    return shares, torch.zeros(())  # pooling has no offsets


# Weights of flatten + Linear heads rearranged as (P, C, D), kept while the weight lives and is
# unchanged: the rearrangement is a strided copy that costs more than the product itself.
_PER_POSITION: dict[int, tuple] = {}  # id(weight) -> (weakref, key, (P, C, D) tensor)


def _per_position_weight(weight: torch.Tensor, feature_shape: torch.Size) -> torch.Tensor:
    key = (weight._version, tuple(feature_shape))
    cached = _PER_POSITION.get(id(weight))
    if cached is not None and cached[0]() is weight and cached[1] == key:
        return cached[2]
    per_position = _to_positions(weight.detach().reshape(weight.shape[0], *feature_shape))
    per_position = per_position.permute(1, 2, 0).contiguous()  # (D, P, C) -> (P, C, D)
    ident = id(weight)
    ref = weakref.ref(weight, lambda _: _PER_POSITION.pop(ident, None))
    _PER_POSITION[ident] = (ref, key, per_position)
    return per_position


def _pooled(tape: HeadTape, pooling: _Pooling, features: torch.Tensor,
            offsets: dict[str, torch.Tensor]) -> torch.Tensor:
    """The pooled tensor, recomputed (a later in-place call may have changed the recorded one)."""
    env = {0: features}
    for i in pooling.chain + [pooling.pool] + (
            [pooling.argument] if pooling.kind == "linear" else []):
        tape.steps[i].run(env, offsets)
    return env[pooling.pooled]


STRATEGIES = ("auto", "forward", "reverse", "tangents")


def tape_contributions(tape: HeadTape, embedding: torch.Tensor, offsets: dict[str, torch.Tensor],
                       grid: tuple[int, int], prefix_tokens: int = 0, strategy: str = "auto",
                       budget: int = 1 << 28, structured: bool = True) -> Contributions | None:
    """Contributions from a recorded head, without running the trunk again; None when the
    tape does not reproduce the model's embedding (a call the tape cannot see).

    With a pooling head (`find_pooling`), each position's share of the pooled tensor is
    computed directly (P x C numbers) and only the post-pooling head is differentiated;
    otherwise the whole head is, from the layer output. Either way the linear part
    u_p = J (share of p) comes from forward tangents, one per position ("forward"), or from a
    reverse-mode Jacobian, one cotangent per embedding dimension ("reverse"); "auto" takes
    the fewer. Both are chunked to hold about `budget` floats at a time.
    """
    features = tape.features
    out_slot = tape.slot_of(embedding)
    if features is None or out_slot is None:
        return None
    offsets = {k: v.detach() for k, v in offsets.items()}
    batch, dim = embedding.shape
    pooling = find_pooling(tape, features.dim()) if structured else None
    with torch.no_grad(), FreezeScales(), sdpa_kernel([SDPBackend.MATH]):
        if pooling is not None:
            last = pooling.argument if pooling.kind == "linear" else pooling.pool
            start, source = last + 1, pooling.pooled
            pooled = _pooled(tape, pooling, features, offsets)
            shares, pooled_constant = _pooled_shares(tape, pooling, features, offsets)
            shares = shares.reshape(batch, shares.shape[1], *pooled.shape[1:])
            pooled_constant = pooled_constant.expand_as(pooled)
        else:
            start, source, pooled = 0, 0, features
            pooled_constant = torch.zeros_like(features)
            shares = None  # implicit: A masked to one position

        def post(r, off):
            return tape.replay({source: r}, off, start, out_slot)

        n_pos = _to_positions(features).shape[1]
        mode = strategy if strategy != "auto" else "forward" if n_pos <= dim else "reverse"
        chunk = max(1, budget // pooled.numel())  # tangents or cotangents at a time
        if mode == "forward":
            primal, linear, constant = _forward(post, pooled, offsets, shares, pooled_constant,
                                                n_pos, chunk)
        else:
            primal, constant = jvp(post, (pooled, offsets), (pooled_constant, offsets))
            linear = _reverse(post, pooled, offsets, shares, dim, chunk)
        scale = float(embedding.abs().max()) + 1e-12
        if not torch.allclose(primal, embedding, rtol=1e-4, atol=1e-5 * scale):
            return None  # the replay is not the model's head
    result = _assemble(embedding, linear, constant, grid, prefix_tokens)
    result.path = f"{pooling.kind} pooling, {mode}" if pooling else f"whole head, {mode}"
    return result


def _one_position(features: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """The layer output with every position but p zeroed (p: a 0-dim index, vmapped)."""
    n_pos = _to_positions(features).shape[1]
    mask = (torch.arange(n_pos, device=features.device) == p).to(features.dtype)
    if features.dim() == 4:
        return features * mask.view(1, 1, *features.shape[2:])
    return features * mask.view(1, -1, 1)


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
        tangents = torch.zeros(n_pos + 1)  # unused: built from the index
        in_dims = (0, 0)
    else:
        tangents = torch.cat([shares, pooled_constant[:, None]], dim=1)
        in_dims = (0, 1)
    primal, out = vmap(push, in_dims=in_dims, chunk_size=chunk)(index, tangents)  # (P+1, B, D)
    return primal[0], out[:n_pos].transpose(0, 1), out[n_pos]


def _reverse(post, pooled, offsets, shares, dim: int, chunk: int) -> torch.Tensor:
    """(B, P, D) by a reverse-mode Jacobian of the (post-pooling) head: one cotangent per
    embedding dimension, contracted with each position's share chunk by chunk."""
    out, pull = vjp(lambda r: post(r, offsets), pooled)
    eye = torch.eye(dim, dtype=out.dtype, device=out.device)
    parts = []
    for rows in eye.split(chunk):
        cotangents = rows[:, None, :].expand(len(rows), *out.shape)
        (jac,) = vmap(pull)(cotangents)  # (d, B, *pooled dims)
        if shares is not None:
            parts.append(torch.einsum("dbr,bpr->bpd", jac.flatten(2), shares.flatten(2)))
        else:  # u_p = J[:, :, p] A[:, p]: sum the channels of J * A at each position
            weighted = (jac * pooled).flatten(0, 1)  # (d * B, ...)
            summed = _to_positions(weighted).sum(-1)  # (d * B, P)
            parts.append(summed.view(len(rows), len(pooled), -1).permute(1, 2, 0))
    return torch.cat(parts, dim=-1)
