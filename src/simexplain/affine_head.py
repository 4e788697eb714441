"""Post-pooling heads that are affine once their per-sample scales are frozen, analysed as one
cached matrix (`AffineHeads`, used by `head.tape_contributions`).

After a pooling step most embedding heads are a chain of Linear, BatchNorm in eval mode,
Flatten / view / reshape, Dropout in eval mode, multiplications by a number, and L2
normalisation (F.normalize over the embedding). With the normalisation's per-sample norm frozen
(METHOD.md, "freeze, don't differentiate"), such a chain is e = s (M x) + c(s): one matrix M
(the product of its linear parts, or a diagonal when every part is one), one per-sample scale s
(the product of the frozen inverse norms) and a constant. The contributions are then one matrix
product of the pooled shares, u_p = s M x_p + c / P: no autograd, no forward-mode pass, no
replay of the head under a transform.

What is cached: the chain's stages (each Linear / BatchNorm / number folded into a matrix or a
diagonal and a bias, consecutive ones composed in float64) and M, per model (`SplitModel`),
keyed by the chain's structure, by the identity, `_version` counter and storage address of
every tensor it reads (weights, biases, running statistics) and by the pooled tensor's size,
device and dtype. An in-place update of a parameter (an optimiser step, `load_state_dict`,
`copy_`) bumps its version, a replaced parameter has another identity and new `.data` (e.g.
`Module.to`) another address, so the next call builds the matrix anew. A new entry is checked
once against the autograd path (`head._linear_parts`); an entry that disagrees is refused and
that head keeps the autograd path.

Known heads (`KnownHead`, per input size, dtype and device): once a call was answered by a
checked entry, later calls with inputs of that size run the model with a plain forward hook
on the layer, no recording of the head: the pooling's recorded steps and the cached matrix
give the contributions from the layer output (the same bits as the recorded path). Before
the pass, every tensor they read (the chain's and the pooling's: weights, biases, running
statistics) must still be the model's own parameter or buffer at the same place (submodule
path and name; identity), at the same `_version` and storage address, else the entry is
dropped and the call recorded; after it, the layer must have run once with nothing written
into its output, and the head's embedding must be the model's own (as on the recorded
path). A call that fails those after-checks is recorded instead, and so is every later input
of that size (a head that branches on its input or changes between calls would otherwise pay
two passes each time).

Switches (environment variables, read at each call): SIMEXPLAIN_AFFINE_HEAD=0 turns the cache
and the known heads off (every head is recorded and takes the autograd path);
SIMEXPLAIN_CUDA_GRAPHS=0 turns off the CUDA graphs that replay the cached product on a GPU
once a shape repeats (never used on the CPU).
"""

from __future__ import annotations

import inspect
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch.linalg import vector_norm

from .head_tape import HeadTape
from .token_packing import PackedHead

AFFINE_SWITCH = "SIMEXPLAIN_AFFINE_HEAD"
GRAPH_SWITCH = "SIMEXPLAIN_CUDA_GRAPHS"
# Entries kept per model (input sizes, dtypes and devices each make one); the oldest goes.
MAX_ENTRIES = 16
# A shape is captured as a CUDA graph when it is seen this many times (one-off shapes never are).
GRAPH_AFTER_CALLS = 2
MAX_GRAPHS = 8

_BATCH_NORM_SIG = inspect.signature(F.batch_norm)
_NORMALIZE_SIG = inspect.signature(F.normalize)
# Calls that only reshape each sample (row-major, the batch kept as the first dimension): the
# identity on each sample's flattened values.
_RESHAPES = {torch.flatten, torch.Tensor.flatten, torch.reshape, torch.Tensor.reshape,
             torch.Tensor.view, torch.squeeze, torch.Tensor.squeeze, torch.unsqueeze,
             torch.Tensor.unsqueeze, torch.Tensor.contiguous, torch.clone, torch.Tensor.clone}
_DROPOUTS = {F.dropout, F.dropout1d, F.dropout2d, F.alpha_dropout, F.feature_alpha_dropout}
_TIMES = {torch.mul, torch.Tensor.mul, torch.Tensor.__mul__, torch.Tensor.__rmul__}
_DIVIDED = {torch.div, torch.Tensor.div, torch.Tensor.__truediv__}


def enabled() -> bool:
    """Is the cache on (SIMEXPLAIN_AFFINE_HEAD is not "0")?"""
    return os.environ.get(AFFINE_SWITCH, "1") != "0"


def graphs_enabled(device: torch.device) -> bool:
    """CUDA graphs: on a CUDA device only, unless SIMEXPLAIN_CUDA_GRAPHS is "0"."""
    return device.type == "cuda" and os.environ.get(GRAPH_SWITCH, "1") != "0"


# -- stages ---------------------------------------------------------------------------------------
# A linear part is None (the identity), a 1-D tensor (a diagonal) or a 2-D (out, in) matrix.
Linear = torch.Tensor | None


def _compose(second: Linear, first: Linear) -> Linear:
    """The linear part of `second` after `first`."""
    if first is None or second is None:
        return second if first is None else first
    if first.dim() == 1 and second.dim() == 1:
        return second * first
    if first.dim() == 1:
        return second * first[None, :]
    if second.dim() == 1:
        return second[:, None] * first
    return second @ first


def _apply(linear: Linear, x: torch.Tensor) -> torch.Tensor:
    """The linear part applied to the last dimension of x."""
    if linear is None:
        return x
    return x * linear if linear.dim() == 1 else x @ linear.T


@dataclass
class _Affine:
    """x -> linear x + bias (float64 while being composed)."""

    linear: Linear = None
    bias: torch.Tensor | None = None

    def then(self, other: _Affine) -> _Affine:
        bias = None if self.bias is None else _apply(other.linear, self.bias)
        if other.bias is not None:
            bias = other.bias if bias is None else bias + other.bias
        return _Affine(_compose(other.linear, self.linear), bias)

    def to(self, like: torch.Tensor) -> _Affine:
        move = lambda t: None if t is None else t.to(like)  # noqa: E731
        return _Affine(move(self.linear), move(self.bias))

    def run(self, x: torch.Tensor) -> torch.Tensor:
        x = _apply(self.linear, x)
        return x if self.bias is None else x + self.bias


@dataclass(frozen=True)
class _Scale:
    """F.normalize over each sample's values: x / max(|x|_p, eps), the norm frozen."""

    p: float
    eps: float


# A stage as found on the tape: a recipe for its _Affine (run on a miss only) or a _Scale.
_Spec = Callable[[], _Affine] | _Scale


def _f64(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach().double()


def _stage(func, args: tuple, kwargs: dict, x: torch.Tensor, out: torch.Tensor
           ) -> tuple[tuple, list[torch.Tensor], _Spec] | None:
    """(key, tensors read, spec) of one recorded call on the (B, ...) tensor x, or None where
    the call is not one of the affine or scale steps above."""
    samples = x.shape[0] if x.dim() else -1
    if func in _RESHAPES:
        if out.dim() and out.shape[0] == samples and out.numel() == x.numel():
            return ("reshape",), [], _Affine
        return None
    if func in _DROPOUTS:
        training = args[2] if len(args) > 2 else kwargs.get("training", True)
        return (("dropout",), [], _Affine) if not training else None
    if (func in _TIMES or func in _DIVIDED) and len(args) == 2 and not kwargs:
        number = args[1] if args[0] is x else args[0]
        if not isinstance(number, (int, float)) or isinstance(number, bool) or (
                func in _DIVIDED and (args[0] is not x or number == 0)):
            return None
        factor = 1.0 / number if func in _DIVIDED else float(number)
        size, device = x[0].numel(), x.device  # composed with the weights on their device
        return ("times", factor), [], lambda: _Affine(torch.full(
            (size,), factor, dtype=torch.float64, device=device))
    if x.dim() < 2 or x[0].numel() != x.shape[1]:  # the rest act on (B, C) (or (B, C, 1, 1))
        return None
    if func is F.linear:
        weight = args[1] if len(args) > 1 else kwargs.get("weight")
        bias = args[2] if len(args) > 2 else kwargs.get("bias")
        if x.dim() != 2 or not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            return None
        return ("linear",), [weight] + ([bias] if bias is not None else []), \
            lambda: _Affine(_f64(weight), _f64(bias))
    if func is F.batch_norm:
        bound = _BATCH_NORM_SIG.bind(*args, **kwargs)
        bound.apply_defaults()
        a = bound.arguments
        if a["training"] or a["running_mean"] is None or a["running_var"] is None:
            return None
        read = [a[k] for k in ("running_mean", "running_var", "weight", "bias")
                if a[k] is not None]
        return ("batch_norm", a["eps"]), read, lambda: _batch_norm(**a)
    if func is F.normalize:
        bound = _NORMALIZE_SIG.bind(*args, **kwargs)
        bound.apply_defaults()
        a = bound.arguments
        if a["dim"] not in (1, -1 if x.dim() == 2 else 1) or a["out"] is not None:
            return None
        return ("normalize", a["p"], a["eps"]), [], _Scale(float(a["p"]), float(a["eps"]))
    return None


def _batch_norm(running_mean, running_var, weight, bias, eps, **_) -> _Affine:
    """BatchNorm in eval mode as a diagonal and a bias (as frozen.py's `_batch_norm_eval`)."""
    scale = (running_var.detach().double() + eps).rsqrt()
    if weight is not None:
        scale = scale * weight.detach().double()
    shift = -running_mean.detach().double() * scale
    if bias is not None:
        shift = shift + bias.detach().double()
    return _Affine(scale, shift)


def find_chain(tape: HeadTape, start: int, source: int, output: int,
               offsets: dict[str, torch.Tensor]
               ) -> tuple[tuple, list[torch.Tensor], list[_Spec]] | None:
    """The post-pooling head steps[start:] as a chain of affine and scale stages from slot
    `source` to slot `output`: (key, tensors read, specs), or None for any other head."""
    recorded = tape.recorded()
    keys: list[tuple] = []
    tensors: list[torch.Tensor] = []
    specs: list[_Spec] = []
    current = source
    for step in tape.steps[start:]:
        if step.reads != {current} or len(step.outputs) != 1 or step.outputs[0] is None:
            return None
        args, kwargs = step.arguments(recorded, offsets)
        found = _stage(step.func, args, kwargs, recorded[current], recorded[step.outputs[0]])
        if found is None:
            return None
        keys.append(found[0])
        tensors += found[1]
        specs.append(found[2])
        current = step.outputs[0]
    if current != output:
        return None
    return tuple(keys), tensors, specs


# -- the cached head ------------------------------------------------------------------------------
@dataclass
class AffineHead:
    """A post-pooling head as alternating affine and scale stages, and the product M of all
    its linear parts. `checked`: None until compared with the autograd path, then whether it
    agreed."""

    stages: list[_Affine | _Scale]
    matrix: Linear
    tensors: list[torch.Tensor]  # kept: their identities are part of the key
    checked: bool | None = None
    _graphs: OrderedDict = field(default_factory=OrderedDict)  # shapes -> calls or a graph
    _graphs_failed: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def build(cls, specs: list[_Spec], tensors: list[torch.Tensor], like: torch.Tensor
              ) -> AffineHead:
        stages: list[_Affine | _Scale] = []
        matrix: Linear = None
        pending: _Affine | None = None
        for spec in specs:
            if isinstance(spec, _Scale):
                if pending is not None:
                    stages.append(pending.to(like))
                    pending = None
                stages.append(spec)
                continue
            affine = spec()
            matrix = _compose(affine.linear, matrix)
            pending = affine if pending is None else pending.then(affine)
        if pending is not None:
            stages.append(pending.to(like))
        return cls(stages, None if matrix is None else matrix.to(like), list(tensors))

    def apply(self, pooled: torch.Tensor, shares: torch.Tensor, pooled_constant: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(embedding (B, D), linear parts (B, N, D), constant (B, D)) from the pooled tensor
        (B, ...), each position's share of it (B, N, ...) and the share of the offsets that
        precede the pooled tensor (B, ...; zeros for a plain pooling)."""
        pooled, shares = pooled.flatten(1), shares.flatten(2)
        pooled_constant = pooled_constant.flatten(1)
        if graphs_enabled(pooled.device):
            graphed = self._graph(pooled, shares, pooled_constant)
            if graphed is not None:
                return graphed
        return self._run(pooled, shares, pooled_constant)

    def _run(self, pooled, shares, pooled_constant):
        x, constant, norms = pooled, pooled_constant, []
        for stage in self.stages:
            if isinstance(stage, _Scale):  # the norm at the real input, frozen
                norm = vector_norm(x, stage.p, dim=1, keepdim=True).clamp_min(stage.eps)
                x, constant = x / norm, constant / norm
                norms.append(norm)
            else:
                x, constant = stage.run(x), stage.run(constant)
        linear = _apply(self.matrix, shares)
        if linear is shares and norms:
            linear = linear.clone()  # no linear part at all: the shares are not ours to divide
        for norm in norms:
            linear.div_(norm[:, None])  # in place: a fresh product
        return x, linear, constant

    def _graph(self, pooled, shares, pooled_constant):
        """The product replayed from a CUDA graph once its shapes repeat; None (run eagerly)
        until then, or when capturing failed (then never again for this head)."""
        key = (pooled.shape, shares.shape)
        with self._lock:  # one caller at a time: a graph's buffers are shared
            if self._graphs_failed:
                return None
            entry = self._graphs.get(key, 0)
            if isinstance(entry, int):
                if entry + 1 < GRAPH_AFTER_CALLS:
                    self._graphs[key] = entry + 1
                    return None
                try:
                    entry = _CapturedCall(self._run, (pooled, shares, pooled_constant))
                except RuntimeError:
                    self._graphs_failed = True
                    self._graphs.clear()
                    return None
                self._graphs[key] = entry
                while len(self._graphs) > MAX_GRAPHS:
                    self._graphs.popitem(last=False)
            return entry(pooled, shares, pooled_constant)


class _CapturedCall:
    """fn on fixed-shape CUDA tensors, captured once as a CUDA graph and replayed: inputs are
    copied into the graph's own buffers and the outputs cloned out of them."""

    def __init__(self, fn, inputs: tuple[torch.Tensor, ...]):
        self.inputs = tuple(t.clone() for t in inputs)
        stream = torch.cuda.Stream(device=inputs[0].device)
        stream.wait_stream(torch.cuda.current_stream(inputs[0].device))
        with torch.cuda.stream(stream):  # warm-up off the default stream, as capture needs
            fn(*self.inputs)
        torch.cuda.current_stream(inputs[0].device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = fn(*self.inputs)

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        for buffer, value in zip(self.inputs, inputs):
            buffer.copy_(value)
        self.graph.replay()
        return tuple(t.clone() for t in self.outputs)


# -- heads known by input size ---------------------------------------------------------------
@dataclass
class _Bound:
    """A tensor the known head reads, where the model keeps it (the parameter or buffer `name`
    of the submodule at `path` below the model) and what it was: the model must still hold
    this very tensor there, unchanged."""

    model: torch.nn.Module
    path: tuple[str, ...]
    name: str
    tensor: torch.Tensor
    version: int
    address: int

    def holds(self) -> bool:
        module: torch.nn.Module | None = self.model
        for child in self.path:  # walked each time: a replaced submodule is seen too
            module = module._modules.get(child) if module is not None else None
        if module is None:
            return False
        t = self.tensor
        held: torch.Tensor | None = module._parameters.get(self.name)
        if held is None:
            held = module._buffers.get(self.name)
        return held is t and t._version == self.version and t.data_ptr() == self.address


@dataclass
class KnownHead:
    """What a call with a checked cached head learned from its recording: the pooling (its
    steps kept, `program`), the cached head after it, the offsets it reads and the layer
    output's size, dtype and device; or, for a packed whole head (token_packing.py), all its
    steps and what the packing learned. Later calls with inputs of the same size run the model
    with a plain hook on the layer and compute the contributions from these alone, without
    recording the head again (`head.known_contributions`); every tensor read is checked to be
    still the model's own and unchanged first, and the result against the model's own
    embedding after."""

    program: HeadTape  # the recorded steps only (no recorded values)
    pooling: Any  # head_tape._Pooling; None for a packed whole head
    head: AffineHead | PackedHead  # the cached head after the pooling, or a packed whole head
    offsets: dict[str, torch.Tensor]  # the module's own tensors read (a bias)
    features: tuple  # (shape[1:], dtype, device) of the layer output
    bound: list[_Bound]

    def current(self) -> bool:
        """Does the model still hold every tensor read, unchanged?"""
        return all(b.holds() for b in self.bound)


def bind(model: torch.nn.Module, modules: list[str], tensors: list[torch.Tensor]
         ) -> list[_Bound] | None:
    """Where each tensor lives among the own parameters and buffers of the named submodules of
    the model, or None when one lives elsewhere (a tensor made in the forward pass, a plain
    attribute): such a head is not known by size (its tensors' identity could not be
    checked)."""
    found = dict(model.named_modules())
    homes: dict[int, tuple[str, str]] = {}
    for module_name in modules:
        module = found[module_name]
        for store in (module._parameters, module._buffers):
            for name, held in store.items():
                if held is not None:
                    homes.setdefault(id(held), (module_name, name))
    bound = []
    for t in tensors:
        home = homes.get(id(t))
        if home is None:
            return None
        path = tuple(home[0].split(".")) if home[0] else ()
        try:  # inference tensors have no version counter
            entry = _Bound(model, path, home[1], t, t._version, t.data_ptr())
        except RuntimeError:
            return None
        if not entry.holds():
            return None
        bound.append(entry)
    return bound


class AffineHeads:
    """The cached affine heads of one model (see the module's docstring), and the heads known
    by input size (`KnownHead`)."""

    def __init__(self) -> None:
        self._entries: OrderedDict[tuple, AffineHead] = OrderedDict()
        # input key -> the known head, or None once a call disagreed (recorded from then on)
        self._known: OrderedDict[tuple, KnownHead | None] = OrderedDict()
        self._lock = threading.Lock()  # the web app explains from several threads
        self.known_calls = 0  # calls answered by a known head (tests read it)

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._known.clear()

    def known(self, key: tuple) -> KnownHead | None:
        """The known head for inputs of this key, if it is still the model's (an entry whose
        tensors were replaced or changed is dropped); None when the cache is off."""
        if not enabled():
            return None
        with self._lock:
            known = self._known.get(key)
            if known is not None and not known.current():
                del self._known[key]  # the next recording learns it anew
                return None
            return known

    def remember(self, key: tuple, known: KnownHead) -> None:
        """Known from now on, unless a call with this key has disagreed before."""
        with self._lock:
            if key in self._known and self._known[key] is None:
                return
            self._put_known(key, known)

    def refuse(self, key: tuple) -> None:
        """A call by the known head disagreed with the model (its head branches on the data,
        was changed, or its layer ran twice): inputs of this key are recorded from now on."""
        with self._lock:
            self._put_known(key, None)

    def _put_known(self, key: tuple, known: KnownHead | None) -> None:
        """The newest entry for `key`, the oldest dropped past MAX_ENTRIES (lock held)."""
        self._known[key] = known
        self._known.move_to_end(key)
        while len(self._known) > MAX_ENTRIES:
            self._known.popitem(last=False)

    def answered(self) -> None:
        with self._lock:
            self.known_calls += 1

    def lookup(self, tape: HeadTape, start: int, source: int, output: int,
               offsets: dict[str, torch.Tensor], pooled: torch.Tensor) -> AffineHead | None:
        """The cached head for this post-pooling chain, built (unchecked) on a miss; None when
        the chain is not affine, the cache is off, or the entry was refused."""
        if not enabled():
            return None
        chain = find_chain(tape, start, source, output, offsets)
        if chain is None:
            return None
        structure, tensors, specs = chain
        try:  # inference tensors have no version counter: not cached
            versions = tuple((id(t), t._version, t.data_ptr()) for t in tensors)
        except RuntimeError:
            return None
        key = (structure, versions, tuple(pooled.shape[1:]), pooled.device, pooled.dtype)
        with self._lock:
            head = self._entries.get(key)
            if head is None:
                head = AffineHead.build(specs, tensors, pooled)
                self._entries[key] = head
                while len(self._entries) > MAX_ENTRIES:
                    self._entries.popitem(last=False)
            self._entries.move_to_end(key)
        return None if head.checked is False else head
