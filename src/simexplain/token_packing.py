"""Heads with one attention that are read at one token (the class token after the last block):
every position's contribution from one replay of the head ("packed"), instead of one replay per
position (head.py's "batched" path, which costs P + 2 replays of the block).

With its attention weights, norm statistics and gates frozen, such a head is linear in the
layer output X (METHOD.md), and position p's linear part is the head applied to X masked to
token p. Three facts make one replay enough:

* Before the attention each step acts on every token alone, so X itself holds every masked
  input at once: token p of a replay from X holds what the input masked to p has at token p
  (the tokens packed as they are: "diag").
* The attention mixes the tokens with its frozen weights A: the input masked to p gives
  A[:, p] v_p, of which only row s, the token the head reads in the end, reaches the
  embedding. With A replaced by diag(A[s, :]), token p of the attention's output holds
  A[s, p] v_p: what the input masked to p has at token s ("row" packing). A path around the
  attention (the residual) brings X's token s to the input masked to s alone, so it is
  repacked as X at token s and zeros elsewhere.
* After the attention each step again acts on every token alone, with its frozen values
  (statistics, gates) taken at token s for every token, until the head reads token s: there
  every token is one position's value, and the rest of the head runs on each under vmap.

The plan (`plan`) is read off the recorded tape with the shapes of its tensors: which axis is
the token axis after each reshape, transpose or projection. Nothing is assumed about what a
step means, so a recorded call checks the result against the head itself (`packed`): the
head run on X with each token scaled by a random weight must give the parts weighted alike
plus the constant term, which is what the parts leave of the embedding (wrong parts pass only
if their errors cancel for those weights). A head that fails goes on to the batched path. A
head that passes is known for its input and batch size (`PackedHead`, `known_packed`): the
packing holds for a program and its shapes, not for particular values, so later calls replay
the checked program without the check.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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

    select: int  # index of the step that reads token s (on the tape)
    token: int  # s
    tokens: int  # N, the tokens of the layer output
    source: int  # the slot that the select step reads (ROW)
    output: int  # the select step's output slot
    attention: int  # index of the step whose frozen value is the attention weights
    axes: dict[int, int]  # slot -> token axis (DIAG and ROW slots)
    kinds: dict[int, str]  # slot -> kind
    # steps with a ROW input -> that input's slot (their frozen values are taken at token s)
    row_steps: dict[int, int]
    dims: dict[int, int]  # slot -> its number of dimensions (DIAG and ROW slots)
    again: dict[int, int]  # later reads of token s from the same tensor: step -> output slot


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
    not one attention read at one token, as far as the shapes tell. `marks`: `record`'s."""
    features = tape.recorded()[0]
    if features.dim() != 3:
        return None
    reader = _Reader(tape, features.shape[1])
    consumed = [marks[0], *(b - a for a, b in zip(marks, marks[1:]))]
    for i, step in enumerate(tape.steps):
        if in_place(step.func) or not reader.read(i, step, consumed[i]):
            return None
    return reader.plan(output)


class _Reader:
    """Reads the tape step by step: the kind and token axis of each tensor (see the kinds)."""

    def __init__(self, tape: HeadTape, tokens: int):
        self.values = tape.recorded()
        self.tokens = tokens
        self.kinds: dict[int, str] = {0: DIAG}
        self.axes: dict[int, int] = {0: 1}
        self.row_steps: dict[int, int] = {}
        self.attention: int | None = None
        self.select: tuple[int, int, int, int] | None = None  # step, token, source, output
        self.again: dict[int, int] = {}

    def plan(self, output: int) -> Plan | None:
        if self.select is None or self.attention is None or self.kinds.get(output) != TAIL:
            return None
        step, token, source, selected = self.select
        dims = {slot: self.values[slot].dim() for slot in self.axes}
        return Plan(step, token, self.tokens, source, selected, self.attention, self.axes,
                    self.kinds, self.row_steps, dims, self.again)

    def read(self, i: int, step: _Step, consumed: int) -> bool:
        """Take step i (which froze `consumed` values); False where the plan cannot go on."""
        outputs = [slot for slot in step.outputs if slot is not None]
        if not outputs:
            return True  # a query (shape, dtype): nothing to follow
        read = {slot: self.kinds.get(slot) for slot in step.reads}
        if None in read.values():
            return False  # a tensor of a kind that cannot be read on (an output left unused)
        found = set(read.values())
        if self.select is not None:  # after the read of token s: only what came of it
            self.kinds.update({slot: TAIL for slot in outputs})
            if found == {ROW} and (self._selected_token(step), *step.reads) == \
                    self.select[1:3]:  # token s read again (a pooler beside the embedding)
                self.again[i] = outputs[0]
                return True
            return found == {TAIL}
        if step.func in _ATTENTION or (step.func in SOFTMAX and consumed == 1):
            return self._attention(i, step, outputs, consumed)
        if WEIGHTS in found:
            return self._weighted(step, outputs, found)
        if ROW in found:
            return DEAD not in found and self._row(i, step, outputs, read)
        if found == {DIAG}:
            inputs = {(tuple(self.values[s].shape), self.axes[s]) for s in step.reads}
            if len(inputs) == 1:
                shape, axis = inputs.pop()
                if self._follow(step, outputs, torch.Size(shape), axis, DIAG):
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
        if not self._is(value, DIAG) or self.axes[value.index] != axis or \
                out.shape[axis] != self.tokens:
            return False
        self.kinds[outputs[0]], self.axes[outputs[0]] = ROW, axis
        for slot in outputs[1:]:
            self.kinds.pop(slot, None)  # e.g. averaged weights: reading them falls back
        return True

    def _weighted(self, step: _Step, outputs: list[int], found: set) -> bool:
        if step.func in _MATMUL and self._is(step.args[0], WEIGHTS) and \
                self._is(step.args[1], DIAG):
            slot, out = step.args[1].index, outputs[0]
            axis = self.values[out].dim() - 2
            if self.axes[slot] != self.values[slot].dim() - 2 or \
                    self.values[out].shape[axis] != self.tokens:
                return False
            self.kinds[out], self.axes[out] = ROW, axis
            return True
        if found == {WEIGHTS} and len(outputs) == 1:
            self.kinds[outputs[0]] = WEIGHTS  # dropout, a cast
            return True
        return False

    def _row(self, i: int, step: _Step, outputs: list[int], read: dict) -> bool:
        index = self._selected_token(step)
        if index is not None:
            self.select = (i, index, next(iter(step.reads)), outputs[0])
            self.kinds.update({slot: TAIL for slot in outputs})
            return True
        row = next(slot for slot, kind in read.items() if kind == ROW)
        self.row_steps[i] = row
        return self._follow(step, outputs, self.values[row].shape, self.axes[row], ROW)

    def _follow(self, step: _Step, outputs: list[int], shape: torch.Size, axis: int,
                kind: str) -> bool:
        """Give each output of the step the token axis that follows from an input of `shape`
        with the token axis at `axis`; False where an output's shape does not tell."""
        for slot in outputs:
            out_axis = _token_axis(step, shape, axis, self.values[slot].shape, self.tokens)
            if out_axis is None:
                return False
            self.kinds[slot], self.axes[slot] = kind, out_axis
        return True

    def _selected_token(self, step: _Step) -> int | None:
        """The token that the step reads from a ROW tensor (x[:, s], x.select(1, s)), or
        None."""
        if len(step.reads) != 1 or not self._is(step.args[0], ROW):
            return None
        slot = step.args[0].index
        axis, ndim = self.axes[slot], self.values[slot].dim()
        if step.func is torch.Tensor.__getitem__:
            index = step.args[1] if isinstance(step.args[1], tuple) else (step.args[1],)
            picked = index[axis] if len(index) > axis else None
            if not isinstance(picked, int) or isinstance(picked, bool) or any(
                    entry != slice(None) for j, entry in enumerate(index) if j != axis):
                return None
            return picked % self.tokens
        if step.func in _SELECT:
            dim = step.args[1] if len(step.args) > 1 else step.kwargs.get("dim")
            picked = step.args[2] if len(step.args) > 2 else step.kwargs.get("index")
            if isinstance(dim, int) and isinstance(picked, int) and dim % ndim == axis:
                return picked % self.tokens
        return None

    def _is(self, leaf: Any, kind: str) -> bool:
        return isinstance(leaf, _Slot) and self.kinds.get(leaf.index) == kind


def packed(tape: HeadTape, the_plan: Plan, features: torch.Tensor,
           offsets: dict[str, torch.Tensor], frozen: list, marks: list[int], output: int,
           primal: torch.Tensor, head: Callable[..., torch.Tensor] | None
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """(embedding, (B, N, D) linear parts, (B, D) constant) by one packed replay, or None when
    the check fails. `head(x, offsets, freeze)` replays the whole head from the layer output
    for the check (None: no check, for a plan already checked on this program); `frozen` and
    `marks` come from `record`."""
    s, n = the_plan.token, the_plan.tokens
    replayed = list(frozen)
    first = 0
    for i, last in enumerate(marks):
        for k in range(first, last):
            if i == the_plan.attention:  # diag(A[s, :]): token p gets A[s, p] v_p
                replayed[k] = torch.diag_embed(frozen[k][..., s, :])
            elif i in the_plan.row_steps:
                reader = the_plan.row_steps[i]
                replayed[k] = _at_token(frozen[k], the_plan.dims[reader],
                                        the_plan.axes[reader], s, n)
                if replayed[k] is None:
                    return None
        first = last
    zeros = {name: torch.zeros_like(value) for name, value in offsets.items()}
    env: dict[int, torch.Tensor] = {0: features}
    with FreezeScales(replay=replayed[:marks[the_plan.select]]):
        for i, step in enumerate(tape.steps[:the_plan.select]):
            if i in the_plan.row_steps:  # a DIAG input of a ROW step: its token s only
                view = dict(env)
                for slot in step.reads:
                    if the_plan.kinds[slot] == DIAG:
                        view[slot] = _only_token(env[slot], the_plan.axes[slot], s)
                step.run(view, zeros)
                env.update({slot: view[slot] for slot in step.outputs if slot is not None})
            else:
                step.run(env, zeros)
    per_token = env[the_plan.source].movedim(the_plan.axes[the_plan.source], 0)  # (N, ...)
    rest = replayed[marks[the_plan.select]:]

    def tail(value):
        # vmap takes the token axis away: `value` is what the select step gives
        inputs = {slot: value for slot in (the_plan.output, *the_plan.again.values())}
        with FreezeScales(replay=rest):
            return tape.replay(inputs, zeros, the_plan.select + 1, output, the_plan.again)
    linear = vmap(tail)(per_token).transpose(0, 1)  # (B, N, D)

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
