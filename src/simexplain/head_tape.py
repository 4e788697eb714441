"""The head recorded during the model's one forward pass (`HeadTape`), replayed as a function of
the explained layer's output alone, and pooling heads recognised on the recording
(`find_pooling`, `pooled_shares`): what lets head.py analyse the head without rerunning the trunk.
"""

from __future__ import annotations

import math
import threading
import weakref
from contextlib import contextmanager
from dataclasses import InitVar, dataclass
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch._C import (_get_function_stack_at, _len_torch_function_stack,
                      _pop_torch_function_stack)
from torch.func import jvp
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_unflatten

# The trunk runs once: during the model's own forward pass every torch call that reads the
# explained layer's output (or anything computed from it) is recorded, and the recording is
# replayed as a function of that output alone, under whichever transform is cheapest.


_IN_PLACE_OPERATORS = {f"__i{op}__" for op in (
    "add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "and", "or", "xor", "lshift",
    "rshift", "matmul")} | {"__setitem__"}


def in_place(func: Callable[..., Any]) -> bool:
    """Does the torch call write into a tensor it is given (relu_, add_, x[i] = v, x += y)?"""
    name = getattr(func, "__name__", "")
    return name in _IN_PLACE_OPERATORS or (name.endswith("_") and not name.endswith("__"))


def own_thread(hook: Callable[..., Any]) -> Callable[..., Any]:
    """A module (pre-)hook that acts only in the thread that made it. Hooks belong to the
    module, so with a model shared by threads every thread's forward pass runs them all:
    another thread's call of the layer must not be taken for ours (recorded, masked,
    captured or counted)."""
    thread = threading.get_ident()

    def in_own_thread(*args: Any) -> Any:
        return hook(*args) if threading.get_ident() == thread else None
    return in_own_thread


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
    func: Callable[..., Any]
    args: tuple
    kwargs: dict
    outputs: list[int | None]  # slot of each flattened output leaf (None: not a tensor)
    reads: set[int]  # slots read
    flat: InitVar[tuple | None] = None  # (leaves, spec) of (args, kwargs), if already made

    def __post_init__(self, flat: tuple | None):
        # flattened once: a replay substitutes the few slot and offset leaves in place
        leaves, spec = flat or tree_flatten((self.args, self.kwargs))
        self._leaves: list[Any] = leaves
        self._spec: Any = spec
        self._holes = [(i, leaf) for i, leaf in enumerate(self._leaves)
                       if isinstance(leaf, (_Slot, _Offset))]
        # Most calls hold their slots and offsets at the top level (F.linear(x, w, b),
        # x.view(2, 17, -1)): a replay puts them there without rebuilding the arguments'
        # structure (pytree's unflatten, a fixed cost on every replayed call).
        top_args = [(i, a) for i, a in enumerate(self.args) if isinstance(a, (_Slot, _Offset))]
        top_kwargs = [(k, v) for k, v in self.kwargs.items() if isinstance(v, (_Slot, _Offset))]
        self._top = (top_args, top_kwargs) if len(top_args) + len(top_kwargs) == len(
            self._holes) else None

    def arguments(self, env: dict[int, torch.Tensor], offsets: dict[str, torch.Tensor]
                  ) -> tuple[tuple, dict]:
        """The call's (args, kwargs) with the slots taken from `env` and the offsets from
        `offsets`."""
        def value(leaf):
            return env[leaf.index] if isinstance(leaf, _Slot) else offsets[leaf.name]
        if self._top is not None:
            top_args, top_kwargs = self._top
            args = list(self.args)
            for i, leaf in top_args:
                args[i] = value(leaf)
            kwargs = {**self.kwargs, **{k: value(leaf) for k, leaf in top_kwargs}} \
                if top_kwargs else self.kwargs
            return tuple(args), kwargs
        leaves = list(self._leaves)
        for i, leaf in self._holes:
            leaves[i] = value(leaf)
        return tree_unflatten(leaves, self._spec)

    def run(self, env: dict[int, torch.Tensor], offsets: dict[str, torch.Tensor]):
        args, kwargs = self.arguments(env, offsets)
        out = self.func(*args, **kwargs)
        if len(self.outputs) == 1 and isinstance(out, torch.Tensor):
            if self.outputs[0] is not None:
                env[self.outputs[0]] = out
            return
        for slot, leaf in zip(self.outputs, tree_flatten(out)[0]):
            if slot is not None:
                env[slot] = leaf


class HeadTape(TorchFunctionMode):
    """Records the head during one forward pass of the whole model (run the pass inside
    `recording(layer)`). Calls that read no recorded tensor (constants) are not recorded;
    values such as shapes are recorded as they were, which is exact for this input."""

    def __init__(self, offsets: dict[str, torch.Tensor]):
        super().__init__()
        self._offset_names = {id(t): name for name, t in offsets.items()}
        self._offset_objects = offsets
        self._known: dict[int, tuple[torch.Tensor, int]] = {}  # id -> (tensor kept alive, slot)
        self._values: dict[int, torch.Tensor] = {}  # slot -> tensor (one tensor may fill two)
        self.steps: list[_Step] = []
        self.features: torch.Tensor | None = None  # the layer output A
        self.complete = True  # False: the recording was cut short (see `recording`)
        self._next_slot = 1
        self._offsets_read: set[str] = set()
        # id -> (tensor, the tensors it was computed from) for the calls that read no recorded
        # tensor (a pooling head's probe repeated for the batch): `sources`
        self._derived: dict[int, tuple[torch.Tensor, list[torch.Tensor]]] = {}

    @contextmanager
    def recording(self, layer: torch.nn.Module) -> Iterator[HeadTape]:
        """Within the block, the model's forward pass is recorded from `layer`'s output on.
        The layer's hook switches the mode on, so the trunk before it runs without the mode's
        cost on every call (milliseconds on small models); the block's end switches it off.
        A mode that the model itself enters around the layer and leaves before its forward
        returns would take this one off the stack: the recording is then cut short
        (`complete` False) and the stack restored as it was before the block."""
        depth = _len_torch_function_stack()
        handle = layer.register_forward_hook(own_thread(self._hook))
        try:
            yield self
        finally:
            handle.remove()
            if self.features is not None:
                if _len_torch_function_stack() != depth + 1 or \
                        _get_function_stack_at(depth) is not self:
                    self.complete = False
                while _len_torch_function_stack() > depth:
                    _pop_torch_function_stack()

    def _hook(self, _module, _inputs, out):
        if not isinstance(out, torch.Tensor) or self.features is not None:
            return None
        self.features = out
        fed = out.clone()  # the model goes on with a copy: in-place head ops leave A intact
        self._known[id(fed)] = (fed, 0)
        self._values[0] = fed
        self.__enter__()  # recorded from here on (`recording` switches it off)
        return fed

    def offsets_read(self) -> dict[str, torch.Tensor]:
        """The offsets that recorded calls read (name -> the model's tensor): the head's, of
        whichever modules it ran this time."""
        return {name: self._offset_objects[name] for name in sorted(self._offsets_read)}

    def program(self) -> HeadTape:
        """The recorded steps alone (what replays need), without the tensors recorded during
        the pass: kept by a known head (affine_head.KnownHead) while the recording goes."""
        copy = HeadTape({})
        copy.steps = self.steps
        return copy

    def sources(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """The tensors with each one that a call of the head computed from other tensors
        without reading a recorded one (`probe.repeat(batch, 1, 1)`, a Linear of a learned
        query) replaced by those, down to tensors no call made: the model's own, which a known
        head can check are unchanged (affine_head.bind). While they are, such a tensor is
        what the recorded call computed, for inputs of the same size and batch (and a call
        that computes another value, at random say, fails the embedding's check)."""
        found: list[torch.Tensor] = []
        for t in tensors:
            entry = self._derived.get(id(t))
            if entry is not None and entry[0] is t:
                found += self.sources(entry[1])
            else:
                found.append(t)
        return found

    def recorded(self) -> dict[int, torch.Tensor]:
        """slot -> the tensor recorded there during the forward pass (the layer output's copy
        in slot 0)."""
        return self._values

    def slot_of(self, leaf: object) -> int | None:
        """The slot of a recorded tensor (None for anything else)."""
        entry = self._known.get(id(leaf))
        return entry[1] if entry is not None and entry[0] is leaf else None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        leaves, spec = tree_flatten((args, kwargs))
        reads = {s for s in map(self.slot_of, leaves) if s is not None}
        if not reads:
            read = [leaf for leaf in leaves if isinstance(leaf, torch.Tensor)]
            for leaf in tree_flatten(out)[0]:  # not a tensor returned as it was (in place)
                if isinstance(leaf, torch.Tensor) and read and \
                        not any(leaf is r for r in read):
                    self._derived[id(leaf)] = (leaf, read)
            return out
        out_leaves = tree_flatten(out)[0]
        if not any(isinstance(o, torch.Tensor) for o in out_leaves) and not in_place(func):
            # a query (size, dim, item; a property such as shape or dtype, `__get__`): its
            # value is baked into later calls
            return out

        def record(leaf):
            slot = self.slot_of(leaf)
            if slot is not None:
                return _Slot(slot)
            offset = self._offset_names.get(id(leaf))
            if offset is not None and self._offset_objects[offset] is leaf:
                self._offsets_read.add(offset)
                return _Offset(offset)
            return leaf
        rec_leaves = [record(v) for v in leaves]
        rec_args, rec_kwargs = tree_unflatten(rec_leaves, spec)
        outputs: list[int | None] = []
        for leaf in out_leaves:
            if isinstance(leaf, torch.Tensor):
                self._known[id(leaf)] = (leaf, self._next_slot)
                self._values[self._next_slot] = leaf
                outputs.append(self._next_slot)
                self._next_slot += 1
            else:
                outputs.append(None)
        self.steps.append(_Step(func, rec_args, rec_kwargs, outputs, reads,
                                (rec_leaves, spec)))
        return out

    def replay(self, inputs: dict[int, torch.Tensor], offsets: dict[str, torch.Tensor],
               start: int, output: int, skip: Iterable[int] = ()) -> torch.Tensor:
        """Rerun steps[start:] from the given slots, but for the steps at the indices in
        `skip` (whose outputs `inputs` holds); the tensor in slot `output`."""
        env = dict(inputs)
        skipped = set(skip)
        for i in range(start, len(self.steps)):
            if i not in skipped:
                self.steps[i].run(env, offsets)
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
    argument: Any = None  # select: the token index (int); linear: the Linear's step (int)

    def steps(self) -> list[int]:
        """Indices of the steps from the layer output to the pooled tensor."""
        return self.chain + [self.pool] + ([self.argument] if self.kind == "linear" else [])


def step_reads(tape: HeadTape, indices: Iterable[int]) -> tuple[list[torch.Tensor], list[str]]:
    """The tensors the steps at `indices` read besides the recorded ones (a Linear's weight, a
    learnt scalar) and the names of the offsets they read (a Linear's bias): for a pooling,
    its steps (`_Pooling.steps`); for a whole head, all."""
    tensors: list[torch.Tensor] = []
    names: list[str] = []
    for i in indices:
        for leaf in tape.steps[i]._leaves:
            if isinstance(leaf, torch.Tensor):
                tensors.append(leaf)
            elif isinstance(leaf, _Offset):
                names.append(leaf.name)
    return tensors, names


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
    assert tape.features is not None  # a tape is analysed once it has recorded the layer
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
            pooled = steps[linear].outputs[0] if linear is not None else None
            if linear is not None and pooled is not None:
                return _Pooling(chain, i, "linear", pooled, linear)
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
    users = readers.get(out, []) if out is not None else []
    if len(users) != 1:
        return None
    step = steps[users[0]]
    if step.func is not F.linear or step.reads != {out} or not isinstance(step.args[0], _Slot):
        return None
    weight = step.args[1] if len(step.args) > 1 else step.kwargs.get("weight")
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or weight.shape[1] != numel:
        return None
    return users[0]


def to_positions(t: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W, C); tokens (B, N, C) stay as they are."""
    return t.flatten(2).transpose(1, 2) if t.dim() == 4 else t


# Poolings that take each channel from some positions only: a position's share of the pooled
# tensor can be zero, so its whole feature vector is mapped as well (`pooled_shares`).
SELECTIVE_POOLING = ("amax", "argmax", "select")


def pooled_shares(tape: HeadTape, pooling: _Pooling, features: torch.Tensor,
                  offsets: dict[str, torch.Tensor]
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(S, pooled constant, F): S[b, p] is position p's share of the pooled tensor, i.e. the
    tangent of the pooled tensor when only position p of the mask moves (B, P, *pooled dims);
    the pooled constant is its tangent from the offsets (a Linear's bias for flatten heads).
    F[b, p] (same shape as S) is position p's whole feature vector in the pooled tensor's
    place, for SELECTIVE_POOLING (max pooling, a class token), else None (S is F / P or F)."""
    chain_out = tape.steps[pooling.chain[-1]].outputs[0] if pooling.chain else 0
    assert chain_out is not None  # a chain step's first output is a recorded tensor

    def chain(a):
        env = {0: a}
        for i in pooling.chain:
            tape.steps[i].run(env, offsets)
        return env[chain_out]
    # Elementwise steps: one tangent (the whole layer output) carries every position at once.
    y, t = jvp(chain, (features,), (features,)) if pooling.chain else (features, features)  # type: ignore[misc]  # torch's stub: a 3-tuple (has_aux)
    y_pos, t_pos = to_positions(y), to_positions(t)  # (B, P, C)
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
        per_position = _per_position_weight(weight, y.shape[1:])  # (P, D, C)
        shares = torch.bmm(t_pos.transpose(0, 1).contiguous(),
                           per_position.transpose(1, 2)).transpose(0, 1)
        bias = linear.args[2] if len(linear.args) > 2 else linear.kwargs.get("bias")
        bias = offsets[bias.name] if isinstance(bias, _Offset) else shares.new_zeros(())
        return shares, bias.expand(len(y), shares.shape[-1]), None
    whole = t_pos if pooling.kind in SELECTIVE_POOLING else None
    return shares, shares.new_zeros(()), whole  # pooling has no offsets


# Weights of flatten + Linear heads rearranged as (P, D, C), kept while the weight lives and is
# unchanged (version, storage, dtype): the rearrangement is a strided copy that costs more than
# the product itself.
_PER_POSITION: dict[int, tuple] = {}  # id(weight) -> (weakref, key, (P, D, C) tensor)


def _per_position_weight(weight: torch.Tensor, feature_shape: torch.Size) -> torch.Tensor:
    # new `.data` (Module.to, a dtype or device change) keeps the tensor and its version: the
    # storage's address and dtype tell
    key = (weight._version, weight.data_ptr(), weight.dtype, tuple(feature_shape))
    cached = _PER_POSITION.get(id(weight))
    if cached is not None and cached[0]() is weight and cached[1] == key:
        return cached[2]
    per_position = to_positions(weight.detach().reshape(weight.shape[0], *feature_shape))
    # (D, P, C) -> (P, D, C): each position's block of W as rows, read transposed by the
    # product (measured faster than a (P, C, D) copy: fewer cache misses on the weight)
    per_position = per_position.transpose(0, 1).contiguous()
    ident = id(weight)
    ref = weakref.ref(weight, lambda _: _PER_POSITION.pop(ident, None))
    _PER_POSITION[ident] = (ref, key, per_position)
    return per_position


def replay_pooled(tape: HeadTape, pooling: _Pooling, features: torch.Tensor,
            offsets: dict[str, torch.Tensor]) -> torch.Tensor:
    """The pooled tensor, recomputed (a later in-place call may have changed the recorded one)."""
    env = {0: features}
    for i in pooling.steps():
        tape.steps[i].run(env, offsets)
    return env[pooling.pooled]
