"""Transformer heads that pool their tokens once, explained by one replay of the head
("packed") instead of one replay per position (head.py's "batched" path, which costs P + 2
replays of the block). Three forms:

* one attention read at one token (the class token after the last block, explained one block
  deep);
* no attention, the tokens pooled by a mean, a sum or the read of one token (the mean of the
  patch tokens after the final norm, explained at the last block);
* an attention of one query (a pooling head's learned probe, as SigLIP's or timm's
  AttentionPoolLatent), explained at the last block.

With its attention weights, norm statistics and gates frozen, such a head is linear in the
layer output X (METHOD.md), and position p's linear part is the head applied to X masked to
token p. Three facts make one replay enough:

* Before the attention (or the pooling) each step acts on every token alone, so X itself holds
  every masked input at once: token p of a replay from X holds what the input masked to p has
  at token p (the tokens packed as they are: "diag"). A pooling there takes token p's value
  as position p's (weighted 1 / n for a mean of n tokens; positions left out of a slice give
  nothing).
* The attention mixes the tokens with its frozen weights A: the input masked to p gives
  A[:, p] v_p, of which only row s, the token the head reads in the end (the one query's row
  0), reaches the embedding. With A replaced by diag(A[s, :]), token p of the attention's
  output holds A[s, p] v_p: what the input masked to p has at token s ("row" packing). A path
  around the attention (the residual) brings X's token s to the input masked to s alone, so
  it is repacked as X at token s and zeros elsewhere.
* After the attention each step again acts on every token alone, with its frozen values
  (statistics, gates) taken at token s for every token, until the head reads token s: there
  every token is one position's value, and the rest of the head runs on each under vmap.

Steps whose results do not reach the embedding (a pooler the model computes beside it) are
left out of the plan and of the packed replay.

The plan (`plan`) is read off the recorded tape with the shapes of its tensors: which axis is
the token axis after each reshape, transpose or projection. Nothing is assumed about what a
step means, so a recorded call checks the result against the head itself (`packed`): the
head run on X with each token scaled by a random weight must give the parts weighted alike
plus the constant term, which is what the parts leave of the embedding (wrong parts pass only
if their errors cancel for those weights). A head that fails goes on to the batched path. A
head that passes is known for its input and batch size (`PackedHead`, `known_packed`): the
packing holds for a program and its shapes, not for particular values, so later calls replay
the checked program without the check. A tensor the head makes from the model's own without
reading the layer output (a pooling probe repeated for the batch, a latent query's
projection) is checked as the tensors it was made from (`HeadTape.sources`); a head that reads
a tensor made otherwise during the forward pass is not known.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch.func import vmap

from .attention import SOFTMAX
from .frozen import FreezeScales
from .head_tape import HeadTape, _Slot, _Step, in_place

_ATTENTION = {F.scaled_dot_product_attention, F.multi_head_attention_forward}
_MATMUL = {torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.bmm,
           torch.Tensor.bmm}
_TRANSPOSE = {torch.transpose, torch.Tensor.transpose, torch.swapaxes, torch.Tensor.swapaxes,
              torch.swapdims, torch.Tensor.swapdims}
_PERMUTE = {torch.permute, torch.Tensor.permute}
_SELECT = {torch.select, torch.Tensor.select}
_UNBIND = {torch.unbind, torch.Tensor.unbind}
_SPLIT = {torch.split, torch.Tensor.split, torch.chunk, torch.Tensor.chunk,
          torch.tensor_split, torch.Tensor.tensor_split}
# Kinds of the head's tensors (see the module's docstring): DIAG and ROW tensors have a token
# axis; DEAD ones are read only by frozen values (the attention logits); WEIGHTS are the
# frozen attention weights of a model that multiplies them with its values itself.
# TAIL: what the head computes from token s on (run per position under vmap).
DIAG, ROW, DEAD, WEIGHTS, TAIL = "diag", "row", "dead", "weights", "tail"


@dataclass
class Plan:
    """How to replay a head packed: what each step's tensors are, where their token axis
    lies, and the token s that the head reads."""

    select: int  # index of the step that pools the tokens (on the tape)
    # s: the token the head reads (0 for a one-query attention; None: a mean or sum of them)
    token: int | None
    tokens: int  # N, the tokens of the layer output
    source: int  # the slot whose tokens hold the positions' values at the select step
    output: int  # the select step's output slot (the tail's input)
    attention: int | None  # index of the step whose frozen value is the attention weights
    axes: dict[int, int]  # slot -> token axis (DIAG and ROW slots)
    kinds: dict[int, str]  # slot -> kind
    # steps with a ROW input -> that input's slot (their frozen values are taken at token s)
    row_steps: dict[int, int]
    dims: dict[int, int]  # slot -> its number of dimensions (DIAG and ROW slots)
    again: dict[int, int]  # later reads of token s from the same tensor: step -> output slot
    # the source's tokens: their weight in the select step's output (one-hot for a read
    # token, 1 / n for a mean) and the first one's index in the layer output (a slice)
    weights: tuple[float, ...]
    first: int
    # the select step runs packed (a one-query attention: the source is its output);
    # otherwise the tail starts from its output
    packed_select: bool
    keep: bool  # the tail's input keeps the token axis, of length 1 (one query, keepdim)
    live: frozenset[int]  # the steps whose results reach the embedding


class _Pooling(NamedTuple):
    """The step that pools the tokens, as the plan takes it (see Plan's fields)."""

    select: int
    token: int | None
    source: int
    output: int
    weights: tuple[float, ...]
    first: int
    packed_select: bool
    keep: bool


@dataclass
class PackedHead:
    """What a call answered by the packed path learned: with the program (the recorded steps),
    later calls of the same input size replay it without recording it again
    (`known_packed`)."""

    plan: Plan
    marks: list[int]  # frozen values after each step (`record`): the same program freezes alike
    output: int  # the embedding's slot


def record(tape: HeadTape, source_value: torch.Tensor, offsets: dict[str, torch.Tensor],
           slots: tuple[int, int, int], frozen: list) -> tuple[torch.Tensor, list[int]]:
    """The head's output replayed from slot `source` (steps[start:], up to slot `output`)
    with its scales frozen and recorded into `frozen`, and how many frozen values there were
    after each step."""
    source, start, output = slots
    env = {source: source_value}
    marks = []
    with FreezeScales(record=frozen):
        for step in tape.steps[start:]:
            step.run(env, offsets)
            marks.append(len(frozen))
    return env[output], marks


def plan(tape: HeadTape, marks: list[int], output: int) -> Plan | None:
    """The packed replay of a head recorded from slot 0 (steps[0:]), or None where the head is
    not one of the forms in the module's docstring, as far as the shapes tell. `marks`:
    `record`'s."""
    features = tape.recorded()[0]
    if features.dim() != 3:
        return None
    live = _live(tape.steps, output)
    reader = _Reader(tape, features.shape[1])
    consumed = [marks[0], *(b - a for a, b in zip(marks, marks[1:]))]
    for i, step in enumerate(tape.steps):
        if in_place(step.func):
            return None
        if i in live and not reader.read(i, step, consumed[i]):
            return None
    return reader.plan(output, live)


def _live(steps: list[_Step], output: int) -> frozenset[int]:
    """The steps whose results reach slot `output` (a pooler that the embedding does not use
    is left out of the plan and of the packed replay)."""
    needed, live = {output}, set()
    for i in range(len(steps) - 1, -1, -1):
        if needed.intersection(steps[i].outputs):
            live.add(i)
            needed.update(steps[i].reads)
    return frozenset(live)


class _Reader:
    """Reads the tape step by step: the kind and token axis of each tensor (see the kinds)."""

    def __init__(self, tape: HeadTape, tokens: int):
        self.values = tape.recorded()
        self.tokens = tokens
        self.kinds: dict[int, str] = {0: DIAG}
        self.axes: dict[int, int] = {0: 1}
        # DIAG and ROW slots: how many tokens the token axis holds, and the layer output's
        # index of the first (a slice of the tokens); ROW tensors hold all N
        self.counts: dict[int, int] = {0: tokens}
        self.firsts: dict[int, int] = {0: 0}
        self.row_steps: dict[int, int] = {}
        self.attention: int | None = None
        self.select: _Pooling | None = None  # the step that pools the tokens, once found
        self.again: dict[int, int] = {}

    def plan(self, output: int, live: frozenset[int]) -> Plan | None:
        if self.select is None or self.kinds.get(output) != TAIL:
            return None
        dims = {slot: self.values[slot].dim() for slot in self.axes}
        return Plan(**self.select._asdict(), tokens=self.tokens, attention=self.attention,
                    axes=self.axes, kinds=self.kinds, row_steps=self.row_steps, dims=dims,
                    again=self.again, live=live)

    def read(self, i: int, step: _Step, consumed: int) -> bool:
        """Take step i (which froze `consumed` values); False where the plan cannot go on."""
        outputs = [slot for slot in step.outputs if slot is not None]
        if not outputs:
            return True  # a query (shape, dtype): nothing to follow
        read = {slot: self.kinds.get(slot) for slot in step.reads}
        if None in read.values():
            return False  # a tensor of a kind that cannot be read on (an output left unused)
        found = set(read.values())
        if self.select is not None:  # after the tokens were pooled: only what came of it
            self.kinds.update({slot: TAIL for slot in outputs})
            # token s read again (a pooler beside the embedding)
            if found == {ROW} and (self._selected_token(step, ROW), *step.reads) == \
                    (self.select.token, self.select.source):
                self.again[i] = outputs[0]
                return True
            return found == {TAIL}
        if step.func in _ATTENTION or (step.func in SOFTMAX and consumed == 1):
            return self._attention(i, step, outputs, consumed)
        if WEIGHTS in found:
            return self._weighted(i, step, outputs, found)
        if ROW in found:
            return DEAD not in found and self._row(i, step, outputs, read)
        if found == {DIAG}:
            if self.attention is None and self._pooled(i, step, outputs):
                return True
            inputs = {(tuple(self.values[s].shape), self.axes[s], self.counts[s],
                       self.firsts[s]) for s in step.reads}
            if len(inputs) == 1:
                shape, axis, count, first = inputs.pop()
                if self._sliced(step, outputs, axis, count, first):
                    return True
                if self._follow(step, outputs, torch.Size(shape), axis, DIAG, count, first):
                    return True
        self.kinds.update({slot: DEAD for slot in outputs})  # logits: read by frozen values only
        return True

    def _attention(self, i: int, step: _Step, outputs: list[int], consumed: int) -> bool:
        if self.attention is not None or consumed != 1:
            return False  # two attentions: the packing holds through one only
        self.attention = i
        if step.func in SOFTMAX:  # the model multiplies the weights with its values itself
            self.kinds[outputs[0]] = WEIGHTS
            return True
        value = _value_argument(step)
        out = self.values[outputs[0]]
        axis = out.dim() - 2 if step.func is F.scaled_dot_product_attention else 0
        if not self._whole(value) or self.axes[value.index] != axis:
            return False
        for slot in outputs[1:]:
            self.kinds.pop(slot, None)  # e.g. averaged weights: reading them falls back
        return self._mixed(i, outputs[0], axis)

    def _weighted(self, i: int, step: _Step, outputs: list[int], found: set) -> bool:
        if step.func in _MATMUL and self._is(step.args[0], WEIGHTS) and \
                self._whole(step.args[1]):
            slot, out = step.args[1].index, outputs[0]
            if self.axes[slot] != self.values[slot].dim() - 2:
                return False
            return self._mixed(i, out, self.values[out].dim() - 2)
        if found == {WEIGHTS} and len(outputs) == 1:
            self.kinds[outputs[0]] = WEIGHTS  # dropout, a cast
            return True
        return False

    def _mixed(self, i: int, out: int, axis: int) -> bool:
        """The attention's output `out` (token axis `axis`): N tokens (self-attention) are
        ROW; one (a single query, such as a pooling head's learned probe) is the pooling
        itself, run packed: its row 0 of weights, as diag(A[0, :]), gives every position's
        value at the one token."""
        length = self.values[out].shape[axis]
        if length == self.tokens:
            self.kinds[out], self.axes[out], self.counts[out] = ROW, axis, self.tokens
            return True
        if length != 1:
            return False
        self.select = _Pooling(i, 0, out, out, (1.0,) * self.tokens, 0, True, True)
        self.kinds[out], self.axes[out] = TAIL, axis
        return True

    def _pooled(self, i: int, step: _Step, outputs: list[int]) -> bool:
        """A head without attention that reads one token (x[:, s]) or the mean or sum of the
        tokens: the pooling (each token holds its own position's value before it)."""
        if len(step.reads) != 1 or not self._is(step.args[0], DIAG):
            return False
        source = step.args[0].index
        count, first = self.counts[source], self.firsts[source]
        index, keep = self._selected_token(step, DIAG), False
        if index is not None:
            weights = tuple(float(t == index - first) for t in range(count))
        else:
            reduced = _token_reduction(step, self.axes.get(source), self.values[source])
            if reduced is None:
                return False
            kind, keep = reduced
            weights = (1.0 / count if kind == "mean" else 1.0,) * count
        self.select = _Pooling(i, index, source, outputs[0], weights, first, False, keep)
        self.kinds.update({slot: TAIL for slot in outputs})
        return True

    def _sliced(self, step: _Step, outputs: list[int], axis: int, count: int,
                first: int) -> bool:
        """x[:, a:b] of a DIAG tensor (the patch tokens after the class token): DIAG with
        fewer tokens."""
        if step.func is not torch.Tensor.__getitem__ or len(step.reads) != 1 or \
                len(outputs) != 1 or not self._is(step.args[0], DIAG):
            return False
        entry = _indexed_along(step, axis)
        if not isinstance(entry, slice):
            return False
        start, stop, stride = entry.indices(count)
        if stride != 1 or stop <= start or \
                self.values[outputs[0]].shape[axis] != stop - start:
            return False
        out = outputs[0]
        self.kinds[out], self.axes[out] = DIAG, axis
        self.counts[out], self.firsts[out] = stop - start, first + start
        return True

    def _row(self, i: int, step: _Step, outputs: list[int], read: dict) -> bool:
        index = self._selected_token(step, ROW)
        if index is not None:
            source = next(iter(step.reads))
            self.select = _Pooling(i, index, source, outputs[0], (1.0,) * self.tokens, 0,
                                   False, False)
            self.kinds.update({slot: TAIL for slot in outputs})
            return True
        row = next(slot for slot, kind in read.items() if kind == ROW)
        self.row_steps[i] = row
        return self._follow(step, outputs, self.values[row].shape, self.axes[row], ROW,
                            self.tokens, 0)

    def _follow(self, step: _Step, outputs: list[int], shape: torch.Size, axis: int,
                kind: str, count: int, first: int) -> bool:
        """Give each output of the step the token axis that follows from an input of `shape`
        with its `count` tokens at `axis`; False where an output's shape does not tell."""
        for slot in outputs:
            out_axis = _token_axis(step, shape, axis, self.values[slot].shape, count)
            if out_axis is None:
                return False
            self.kinds[slot], self.axes[slot] = kind, out_axis
            self.counts[slot], self.firsts[slot] = count, first
        return True

    def _selected_token(self, step: _Step, kind: str) -> int | None:
        """The token (of the layer output) that the step reads from a tensor of `kind`
        (x[:, s], x.select(1, s)), or None."""
        if len(step.reads) != 1 or not self._is(step.args[0], kind):
            return None
        slot = step.args[0].index
        axis, ndim, count = self.axes[slot], self.values[slot].dim(), self.counts[slot]
        picked = None
        if step.func is torch.Tensor.__getitem__:
            entry = _indexed_along(step, axis)
            if isinstance(entry, int) and not isinstance(entry, bool):
                picked = entry
        elif step.func in _SELECT:
            dim = step.args[1] if len(step.args) > 1 else step.kwargs.get("dim")
            entry = step.args[2] if len(step.args) > 2 else step.kwargs.get("index")
            if isinstance(dim, int) and isinstance(entry, int) and dim % ndim == axis:
                picked = entry
        return None if picked is None else self.firsts.get(slot, 0) + picked % count

    def _whole(self, leaf: Any) -> bool:
        """A DIAG tensor of all N tokens (what an attention may mix)."""
        return self._is(leaf, DIAG) and self.counts[leaf.index] == self.tokens and \
            self.firsts[leaf.index] == 0

    def _is(self, leaf: Any, kind: str) -> bool:
        return isinstance(leaf, _Slot) and self.kinds.get(leaf.index) == kind


def _indexed_along(step: _Step, axis: int) -> Any:
    """What x[...] (step: Tensor.__getitem__) takes along `axis` (an int, a slice), where it
    takes every element of the other axes it names; None otherwise."""
    index = step.args[1] if isinstance(step.args[1], tuple) else (step.args[1],)
    if len(index) <= axis or any(entry != slice(None) for j, entry in enumerate(index)
                                 if j != axis):
        return None
    return index[axis]


def _token_reduction(step: _Step, axis: int | None, value: torch.Tensor
                     ) -> tuple[str, bool] | None:
    """("mean" or "sum", keepdim) where the step reduces `value` over its token axis alone
    (no dtype), else None."""
    kind = "mean" if step.func in (torch.mean, torch.Tensor.mean) else \
        "sum" if step.func in (torch.sum, torch.Tensor.sum) else None
    if kind is None or axis is None or set(step.kwargs) - {"dim", "keepdim"}:
        return None
    dim = step.args[1] if len(step.args) > 1 else step.kwargs.get("dim")
    if isinstance(dim, (tuple, list)) and len(dim) == 1:
        dim = dim[0]
    keepdim = step.args[2] if len(step.args) > 2 else step.kwargs.get("keepdim", False)
    if not isinstance(dim, int) or isinstance(dim, bool) or dim % value.dim() != axis or \
            not isinstance(keepdim, bool):
        return None
    return kind, keepdim


def packed(tape: HeadTape, the_plan: Plan, features: torch.Tensor,
           offsets: dict[str, torch.Tensor], frozen: list, marks: list[int], output: int,
           primal: torch.Tensor, head: Callable[..., torch.Tensor] | None
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """(embedding, (B, N, D) linear parts, (B, D) constant) by one packed replay, or None when
    the check fails. `head(x, offsets, freeze)` replays the whole head from the layer output
    for the check (None: no check, for a plan already checked on this program); `frozen` and
    `marks` come from `record`."""
    s, n, select = the_plan.token, the_plan.tokens, the_plan.select
    if s is None:  # a mean of the tokens: no attention, no row to take
        s = -1
    per_step = []  # each step's frozen values, as the packed replay takes them
    first = 0
    for i, last in enumerate(marks):
        values = frozen[first:last]
        if i == the_plan.attention:  # diag(A[s, :]): token p gets A[s, p] v_p
            values = [torch.diag_embed(value[..., s, :]) for value in values]
        elif i in the_plan.row_steps:
            reader = the_plan.row_steps[i]
            values = [_at_token(value, the_plan.dims[reader], the_plan.axes[reader], s, n)
                      for value in values]
            if any(value is None for value in values):
                return None
        per_step.append(values)
        first = last
    live = the_plan.live
    end = select + 1 if the_plan.packed_select else select  # the packed part: steps[:end]
    zeros = {name: torch.zeros_like(value) for name, value in offsets.items()}
    env: dict[int, torch.Tensor] = {0: features}
    axis = the_plan.axes[the_plan.source]
    # after the select step: what came of token s (or of the pooled tokens), per position
    rest = [value for i in range(select + 1, len(marks)) if i in live for value in per_step[i]]
    skip = set(the_plan.again) | set(range(select + 1, len(tape.steps))) - live

    def tail(value):
        # vmap takes the token axis away: `value` is what the select step gives
        if the_plan.keep:
            value = value.unsqueeze(axis)
        inputs = {slot: value for slot in (the_plan.output, *the_plan.again.values())}
        with FreezeScales(replay=rest):
            return tape.replay(inputs, zeros, select + 1, output, skip)
    try:
        with FreezeScales(replay=[value for i in range(end) if i in live
                                  for value in per_step[i]]):
            for i in sorted(live.intersection(range(end))):
                step = tape.steps[i]
                if i in the_plan.row_steps:  # a DIAG input of a ROW step: its token s only
                    view = dict(env)
                    for slot in step.reads:
                        if the_plan.kinds[slot] == DIAG:
                            view[slot] = _only_token(env[slot], the_plan.axes[slot], s)
                    step.run(view, zeros)
                    env.update({slot: view[slot] for slot in step.outputs if slot is not None})
                else:
                    step.run(env, zeros)
        tokens = env[the_plan.source].movedim(axis, 0)  # (tokens of the source, ...)
        weights = torch.tensor(the_plan.weights, dtype=tokens.dtype, device=tokens.device)
        tokens = tokens * weights.view(-1, *([1] * (tokens.dim() - 1)))
        per_token = tokens.new_zeros((n, *tokens.shape[1:]))  # (N, ...): a slice's others 0
        per_token[the_plan.first:the_plan.first + len(tokens)] = tokens
        linear = vmap(tail)(per_token).transpose(0, 1)  # (B, N, D)
    except RuntimeError:
        return None  # a step that does not take the packed shapes: the batched path

    # The check: the head replayed once more, from X with each token weighted at random, is
    # the parts weighted alike plus the constant, which is what the parts leave of h(X)
    # (so that a wrong part shows in the weighted sum, not in a total that adds up anyway).
    # Weights in [1, 2): a constant that leaks into every part shows as well.
    constant = primal - linear.sum(1)
    if head is None:
        return primal, linear, constant
    weights = torch.rand(features.shape[:2], generator=torch.Generator().manual_seed(0)
                         ).to(features) + 1.0  # (B, N)
    probed = head(features * weights[..., None], offsets, FreezeScales(replay=frozen))
    if not _agrees((linear * weights[..., None]).sum(1) + constant, probed, primal):
        return None
    return primal, linear, constant


def known_packed(program: HeadTape, known: PackedHead, features: torch.Tensor,
                 offsets: dict[str, torch.Tensor]
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """(embedding, linear parts, constant) of a head answered by the packed path before, from
    its program and a new layer output of the same size, or None where this call freezes
    other values. Not checked again: whether the packing holds depends on the program and
    its shapes (which steps act on each token alone, where the token axes lie, what is
    frozen where), not on the values, and it was checked on this program; the embedding is
    still compared with the model's own (head.known_contributions), as for a known affine
    head."""
    frozen: list = []
    primal, marks = record(program, features, offsets, (0, 0, known.output), frozen)
    if marks != known.marks:
        return None
    return packed(program, known.plan, features, offsets, frozen, marks, known.output, primal,
                  None)


def _agrees(parts: torch.Tensor, head: torch.Tensor, primal: torch.Tensor) -> bool:
    """Do the weighted parts match the head's own replay, to float error relative to the
    embedding's size?"""
    scale = float(primal.abs().max()) + 1e-12
    return torch.allclose(parts, head, rtol=1e-4, atol=1e-5 * scale)


def _value_argument(step: _Step) -> Any:
    """The values that an attention call mixes (its third argument)."""
    return step.args[2] if len(step.args) > 2 else step.kwargs.get("value")


def _token_axis(step: _Step, shape: torch.Size, axis: int, out: torch.Size,
                tokens: int) -> int | None:
    """The token axis of the step's output: moved by a transpose or permute; otherwise the
    axis of the same size after the same number of elements (reshapes, projections and
    elementwise steps keep the axes before it), if exactly one."""
    if shape[axis] != tokens:
        return None
    if step.func in _TRANSPOSE:
        if len(step.args) < 3:
            return None  # dims given by name: not followed
        a, b = (d % len(shape) for d in step.args[1:3])
        return b if axis == a else a if axis == b else axis
    if step.func in _UNBIND or step.func in _SPLIT:  # (dim: the third argument of a split)
        where = 1 if step.func in _UNBIND else 2
        dim = step.args[where] if len(step.args) > where else step.kwargs.get("dim", 0)
        dim %= len(shape)
        if dim == axis:
            return None
        return axis - 1 if step.func in _UNBIND and axis > dim else axis
    if step.func in _PERMUTE:
        dims = step.args[1] if len(step.args) == 2 and not isinstance(step.args[1], int) \
            else step.args[1:]
        dims = [d % len(shape) for d in dims]
        return dims.index(axis) if len(dims) == len(shape) else None
    before = math.prod(shape[:axis])
    found = [k for k in range(len(out)) if out[k] == tokens and math.prod(out[:k]) == before]
    return found[0] if len(found) == 1 else None


def _only_token(x: torch.Tensor, axis: int, s: int) -> torch.Tensor:
    """x with every token but s zeroed (along `axis`)."""
    mask = torch.zeros(x.shape[axis], dtype=x.dtype, device=x.device)
    mask[s] = 1
    return x * mask.view(-1, *([1] * (x.dim() - axis - 1)))


def _at_token(value: Any, ndim: int, axis: int, s: int, tokens: int) -> Any:
    """A frozen value of a ROW step taken at token s for every token, or None where its shape
    does not say where the token axis is."""
    if not isinstance(value, torch.Tensor) or value.dim() != ndim:
        return None if isinstance(value, torch.Tensor) else value
    if value.shape[axis] == 1:
        return value
    if value.shape[axis] != tokens:
        return None
    return value.narrow(axis, s, 1).expand_as(value)
