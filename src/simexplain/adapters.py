"""Model adapters: a user's model split at the explained layer into trunk and head."""

from __future__ import annotations

import difflib
import math
from contextlib import contextmanager, nullcontext
from collections.abc import Iterator

import torch
from torch import nn

from . import geometry
from .errors import LayerError, ModelError, SimexplainError, first_line
from .affine_head import AffineHead, AffineHeads, KnownHead, bind
from .frozen import RawEmbeddings
from .images import all_finite
from .head import (STRATEGIES, Contributions, head_offsets, known_contributions, mask_shape,
                   tangent_contributions, tape_contributions)
from .head_tape import HeadTape, own_thread, step_reads
from .model_lock import lock_of
from .token_packing import PackedHead


# Floats of tangents (or cotangents) held at once in head analysis (about 1 GB).
TANGENT_BUDGET = 256 * 1024 * 1024


class SplitModel:
    """An embedding model with one named submodule whose output is the explained feature map.

    The layer's output is (B, C, H, W) for CNNs or (B, N, C) tokens for transformers (a square
    grid of tokens, optionally after a few prefix tokens such as a class token).
    """

    def __init__(self, model: nn.Module, layer: str):
        if not isinstance(model, nn.Module):
            raise ModelError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model.eval()
        self._lock = lock_of(self.model)  # shared with every SplitModel of this model
        self.layer_name = layer
        self.layer = self._resolve(model, layer)
        self._probes: dict[tuple[int, ...], tuple[torch.Size, list[str]]] = {}
        # post-pooling heads that are affine, as cached matrices (affine_head.py)
        self.affine_heads = AffineHeads()

    @staticmethod
    def _resolve(model: nn.Module, layer: str) -> nn.Module:
        if not isinstance(layer, str):
            raise LayerError(f"layer must be a name from model.named_modules() (a str), got "
                             f"{type(layer).__name__}")
        modules = dict(model.named_modules())
        if layer in modules and layer != "":
            return modules[layer]
        names = [n for n in modules if n]
        close = difflib.get_close_matches(layer, names, n=5, cutoff=0.5)
        hint = f"; close matches: {', '.join(close)}" if close else ""
        sample = ", ".join(names[-8:])
        raise LayerError(
            f"layer {layer!r} not found in {type(model).__name__}{hint}. "
            f"Layer names come from model.named_modules(), e.g. {sample}")

    @property
    def device(self) -> torch.device:
        for tensor in self.model.parameters():
            return tensor.device
        return torch.device("cpu")

    # -- probing ---------------------------------------------------------------------------
    def _probe(self, x: torch.Tensor) -> tuple[torch.Size, list[str]]:
        """Layer output shape and head modules (those that run after the layer) for x's size."""
        key = tuple(x.shape[1:])
        if key in self._probes:
            return self._probes[key]
        order: list[str] = []
        calls: list[torch.Size] = []
        layer_done_at: list[int] = []
        hooks = []
        for name, module in self.model.named_modules():
            def pre(_m, _i, name=name):
                order.append(name)
            hooks.append(module.register_forward_pre_hook(own_thread(pre)))

        def post(_m, _i, out):
            if not isinstance(out, torch.Tensor):
                raise LayerError(
                    f"layer {self.layer_name!r} returns {type(out).__name__}, not a tensor; "
                    "choose a layer whose output is a feature map")
            calls.append(out.shape)
            layer_done_at.append(len(order))
        hooks.append(self.layer.register_forward_hook(own_thread(post)))
        try:
            with torch.no_grad():
                out = self._run(x[:1])
        finally:
            for h in hooks:
                h.remove()
        if not calls:
            raise LayerError(
                f"layer {self.layer_name!r} is never called in the model's forward pass")
        if len(calls) > 1:
            raise LayerError(
                f"layer {self.layer_name!r} is called {len(calls)} times in one forward pass; "
                "choose a layer that runs once")
        shape = calls[0]
        if len(shape) not in (3, 4):
            raise LayerError(
                f"layer {self.layer_name!r} outputs shape {tuple(shape)}; expected a 4-D "
                "feature map (B, C, H, W) or 3-D tokens (B, N, C)")
        self._check_embedding(out, 1)
        head = order[layer_done_at[0]:]
        self._probes[key] = (shape, head)
        return shape, head

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        try:
            with self._lock.shared():  # never during the reference path's pass
                return self.model(x)
        except SimexplainError:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever the model raises (RuntimeError from
            # torch, an AssertionError or ValueError of its own on the input size) is the same
            # user-facing failure: the model cannot run on this input
            raise ModelError(
                f"the model failed on an input of shape {tuple(x.shape)}: {first_line(exc)}"
            ) from None

    def _check_embedding(self, out: torch.Tensor, batch: int) -> None:
        """The model's output for a batch of `batch` inputs must be finite float embeddings,
        one row an input."""
        if not isinstance(out, torch.Tensor) or out.dim() != 2:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ModelError(f"the model must return embeddings of shape (B, D), got {shape}")
        if not torch.is_floating_point(out):
            raise ModelError(f"the model returned {out.dtype} embeddings; expected floating "
                             "point values")
        if out.shape[0] != batch or out.shape[1] == 0:
            raise ModelError(f"the model returned embeddings of shape {tuple(out.shape)} for "
                             f"{batch} input{'s' if batch != 1 else ''}; expected ({batch}, D) "
                             "with D >= 1")
        if not all_finite(out):
            raise ModelError("the model returned NaN or infinite embeddings")

    def grid(self, x: torch.Tensor) -> tuple[tuple[int, int], int]:
        """(H, W) of the feature grid for x's size, and the number of prefix tokens."""
        shape, _ = self._probe(x)
        if len(shape) == 4:
            return (shape[2], shape[3]), 0
        size = (int(x.shape[-2]), int(x.shape[-1])) if x.dim() == 4 else None
        layout = geometry.token_grid(shape[1], size)
        if layout is None:
            kind = "a square grid" if size is None or size[0] == size[1] else \
                f"a grid of the input's {size[0]}x{size[1]} aspect"
            raise LayerError(
                f"layer {self.layer_name!r} outputs {shape[1]} tokens, which is not {kind} "
                f"(plus at most {geometry.MAX_PREFIX_TOKENS} prefix tokens)")
        return layout

    # -- computations ----------------------------------------------------------------------
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D) embeddings, no gradients."""
        with torch.no_grad():
            out = self._run(x)
        self._check_embedding(out, len(x))
        return out

    def contributions(self, x: torch.Tensor, strategy: str = "auto") -> Contributions:
        """Per-position contributions of the batch x, from one forward pass of the model.

        The head is recorded during that pass (`head_tape.HeadTape`) and analysed on its own, so
        the trunk runs once; see `head.tape_contributions` for the strategies. "tangents" is
        the reference path: one tangent per position through the whole model, the trunk rerun
        for each chunk of TANGENT_BUDGET floats; it is also the fallback for heads the tape
        cannot record or replay.
        """
        if strategy not in STRATEGIES:
            raise SimexplainError(
                f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
        shape, head = self._probe(x)
        grid, prefix = self.grid(x)
        try:
            result = None
            with self._lock.shared():  # the model's tensors are read until the analysis ends
                if strategy == "auto":
                    result = self._known_contributions(x, grid, prefix)
                if result is None and strategy != "tangents":
                    result = self._tape_contributions(x, grid, prefix, strategy)
            if result is None:
                with self._lock.alone():  # functional_call puts values into the model's biases
                    # the offsets of the modules that ran after the layer
                    result = self._tangent_contributions(
                        x, shape, head_offsets(self.model, head), grid, prefix)
                # the other paths checked the model's own output, which their result holds
                self._check_embedding(result.embedding, len(x))
        except RuntimeError as exc:
            raise ModelError(
                f"cannot push contributions through the head after {self.layer_name!r}: "
                f"{first_line(exc)}") from None
        return result

    def _tape_contributions(self, x, grid, prefix, strategy) -> Contributions | None:
        # Every bias and running mean of the model may be an offset: the tape takes as the
        # head's those its recorded calls read, so a head that picks its modules by the data
        # (one Linear of two) has the bias of the one it ran, and the trunk's are never read
        # by a recorded call.
        tape = HeadTape(head_offsets(self.model, [""]))
        with torch.no_grad(), tape.recording(self.layer):
            embedding = self._run(x)
        self._check_embedding(embedding, len(x))
        if not tape.complete:
            return None  # the reference path then
        offsets = tape.offsets_read()
        features = tape.features
        assert features is not None  # a complete tape has recorded the layer

        def remember(tape, pooling, learned):  # later calls of this size: `_known_contributions`
            # a cached head after a pooling reads the pooling's tensors and its own; a packed
            # whole head, what every step reads
            steps = pooling.steps() if pooling is not None else range(len(tape.steps))
            tensors, names = step_reads(tape, steps)
            if isinstance(learned, PackedHead):  # known by batch size too: a probe repeated
                tensors = tape.sources(tensors)  # for the batch is checked as the probe
            own = learned.tensors if isinstance(learned, AffineHead) else []
            bound = bind(self.model, [name for name, _ in self.model.named_modules()],
                         own + tensors + [offsets[name] for name in names])
            if bound is not None:
                key = _input_key(x, batch=isinstance(learned, PackedHead))
                self.affine_heads.remember(key, KnownHead(
                    tape.program(), pooling, learned, {name: offsets[name] for name in names},
                    (tuple(features.shape[1:]), features.dtype, features.device), bound))
        try:
            return tape_contributions(tape, embedding, offsets, grid, prefix, strategy,
                                      budget=TANGENT_BUDGET, affine=self.affine_heads,
                                      remember=remember)
        except RuntimeError:
            return None  # a recorded call that cannot be replayed under the transforms

    def _known_contributions(self, x, grid, prefix) -> Contributions | None:
        """The contributions by the head known for inputs of x's size (affine_head.KnownHead):
        one forward pass with a plain hook on the layer, no recording. None when no head is
        known, or when this call disagreed with it (inputs of this size are then recorded)."""
        for key in (_input_key(x), _input_key(x, batch=True)):
            known = self.affine_heads.known(key)
            if known is not None:
                break
        else:
            return None
        features, embedding = self._forward_seeing_layer(x)
        self._check_embedding(embedding, len(x))
        try:
            result = None if features is None else known_contributions(
                known, features, embedding, grid, prefix)
        except RuntimeError:
            result = None
        if result is None:
            self.affine_heads.refuse(key)
        else:
            self.affine_heads.answered()
        return result

    def _forward_seeing_layer(self, x: torch.Tensor
                              ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(layer output, embedding) of one forward pass without gradients; the layer output
        is None unless the layer ran once in this thread and nothing wrote into its output
        afterwards (an in-place call of the head: the shares would be of other values)."""
        seen: list[tuple[torch.Tensor, int]] = []

        def hook(_module, _inputs, out):
            if isinstance(out, torch.Tensor):
                seen.append((out, out._version))
        handle = self.layer.register_forward_hook(own_thread(hook))
        try:
            with torch.no_grad():
                embedding = self._run(x)
        finally:
            handle.remove()
        if len(seen) != 1 or seen[0][0]._version != seen[0][1]:
            return None, embedding
        return seen[0][0], embedding

    def _tangent_contributions(self, x, shape, offsets, grid, prefix) -> Contributions:
        per_tangent = len(x) * math.prod(shape[1:])
        n_tangents = math.prod(mask_shape(shape)) + 1  # positions + the constant term
        chunk_size = None
        if n_tangents * per_tangent > TANGENT_BUDGET:
            chunk_size = max(1, TANGENT_BUDGET // per_tangent)
        return tangent_contributions(self.model, self.layer, x, shape, offsets, grid, prefix,
                                     chunk_size)

    @contextmanager
    def capture(self, requires_grad: bool = True) -> Iterator[list[torch.Tensor]]:
        """Within the block, each forward pass appends the layer output (a leaf that requires
        grad) to the yielded list, so gradients with respect to it can be taken."""
        captured: list[torch.Tensor] = []

        def hook(_m, _i, out):
            leaf = out.detach().requires_grad_(requires_grad)
            captured.append(leaf)
            return leaf
        handle = self.layer.register_forward_hook(own_thread(hook))
        try:
            yield captured
        finally:
            handle.remove()

    def features_and_embedding(self, x: torch.Tensor, raw: bool = False
                               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer output A (leaf, requires grad) and the embedding computed from it.

        `raw=True` skips the final L2 normalisation (F.normalize) to get raw embeddings.
        """
        with self.capture() as captured, torch.enable_grad(), \
                RawEmbeddings() if raw else nullcontext():
            out = self._run(x)
        self._check_embedding(out.detach(), len(x))
        return captured[0], out


def _input_key(x: torch.Tensor, batch: bool = False) -> tuple:
    """What a known head is known for: the input's size (not the batch), dtype and device;
    and the batch size for a packed whole head, whose program holds it (x.view(B, N, -1))."""
    return (tuple(x.shape[1:]), x.dtype, x.device) + ((len(x),) if batch else ())
