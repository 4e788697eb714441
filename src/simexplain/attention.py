"""The self-attention weights of a forward pass, captured without changing the model.

Attention baselines (attention rollout, Chefer et al.'s gradient-weighted relevance, see
`simexplain.methods`) need the weights A = softmax(Q K^T * scale + mask) of every block, in the
autograd graph when gradients are wanted. Models compute them in three ways, each caught here
by a `torch.overrides.TorchFunctionMode` that is active during one forward pass:

- `F.scaled_dot_product_attention` (Hugging Face "sdpa", timm's fused attention) never
  materialises A: it is computed here explicitly as softmax(Q K^T * scale + mask) @ V, so A
  exists and is the tensor the output is computed from;
- `F.softmax` / `torch.softmax` / `Tensor.softmax` over the last dim of a (B, heads, N, N)
  tensor (Hugging Face "eager", timm's plain attention) is recorded as it is;
- `F.multi_head_attention_forward` (`nn.MultiheadAttention`, `nn.TransformerEncoderLayer`) is
  called with need_weights=True, average_attn_weights=False (callers such as
  TransformerEncoderLayer pass need_weights=False), and the caller gets what it asked for. While
  a mode is active `torch.overrides.has_torch_function` is true, which turns off the fused fast
  paths of TransformerEncoderLayer and MultiheadAttention (`torch._transformer_encoder_layer_fwd`,
  `torch._native_multi_head_attention`) that would bypass Python.

Only self-attention is recorded (square N x N weights). Each record names its block: the
innermost module running at the time that is an item of an `nn.ModuleList` or `nn.Sequential`
(`blocks.3`, `encoder.layer.3`, `encoder.layers.3`); the input and output tokens of every such
item are kept too, so that the last block's are at hand (Grad-CAM on tokens).
"""

from __future__ import annotations

import inspect
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from .head_tape import own_thread

SOFTMAX = frozenset({F.softmax, torch.softmax, torch.Tensor.softmax})  # the softmax calls


@dataclass
class Attention:
    """One self-attention of a forward pass."""

    weights: torch.Tensor  # (B, heads, N, N), rows sum to 1
    block: str  # the block that computed it (see the module docstring), "" outside any
    # the tensor the forward pass multiplied the values by: `weights` itself, or the
    # (B * heads, N, N) tensor it is a view of (multi_head_attention_forward); differentiate
    # with respect to this one and reshape (`gradient`)
    source: torch.Tensor

    def gradient(self, grad: torch.Tensor | None) -> torch.Tensor:
        """d(score)/d(weights) from the gradient with respect to `source` (None: not used)."""
        if grad is None:
            return torch.zeros_like(self.weights)
        return grad.reshape(self.weights.shape)


@dataclass
class Trace:
    """What one forward pass computed: the model's output, its self-attentions in the order
    they ran, and the input and output tokens (B, N, C) of its blocks by name."""

    output: torch.Tensor
    attentions: list[Attention] = field(default_factory=list)
    block_inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    block_outputs: dict[str, torch.Tensor] = field(default_factory=dict)

    def last_block(self, where: str = "output") -> torch.Tensor | None:
        """The tokens entering ("input") or leaving ("output") the block that computed the
        last self-attention; None where there is no attention or they are not (B, N, C)."""
        if not self.attentions:
            return None
        found = self.block_inputs if where == "input" else self.block_outputs
        return found.get(self.attentions[-1].block)

    def detached(self) -> Trace:
        """The same values out of the autograd graph (so that keeping them keeps no graph)."""
        return Trace(self.output.detach(),
                     [Attention(a.weights.detach(), a.block, a.source.detach())
                      for a in self.attentions],
                     {k: v.detach() for k, v in self.block_inputs.items()},
                     {k: v.detach() for k, v in self.block_outputs.items()})


class AttentionCapture(TorchFunctionMode):
    """The mode: records every self-attention computed while it is active."""

    def __init__(self) -> None:
        super().__init__()
        self.attentions: list[Attention] = []
        self.running: list[str] = []  # blocks running now, innermost last

    def _record(self, weights: torch.Tensor, source: torch.Tensor | None = None) -> None:
        block = self.running[-1] if self.running else ""
        self.attentions.append(Attention(weights, block, weights if source is None else source))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        # the mode is off while this runs: the calls below are not intercepted again
        if func is F.scaled_dot_product_attention:
            return self._sdpa(*args, **kwargs)
        if func is F.multi_head_attention_forward:
            return self._multi_head(func, args, kwargs)
        out = func(*args, **kwargs)
        if func in SOFTMAX and _is_attention(out):
            dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
            if dim in (-1, 3):
                self._record(out)
        return out

    def _sdpa(self, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
              scale=None, enable_gqa=False):
        """F.scaled_dot_product_attention, written out so that the weights exist."""
        if query.dim() != 4 or query.shape[-2] != key.shape[-2]:  # not self-attention
            return F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask,
                                                  dropout_p=dropout_p, is_causal=is_causal,
                                                  scale=scale, enable_gqa=enable_gqa)
        key, value = share_key_value_heads(query, key, value, enable_gqa)
        weights = attention_weights(query, key, attn_mask, is_causal, scale)
        self._record(weights)
        if dropout_p > 0:  # sdpa drops out whenever asked to (callers pass 0 in eval)
            weights = F.dropout(weights, p=dropout_p)
        return weights @ value

    def _multi_head(self, func, args, kwargs):
        """multi_head_attention_forward with per-head weights; the caller gets what it asked
        for (need_weights=False: None; averaged over heads by default)."""
        call = inspect.signature(func).bind(*args, **kwargs)
        call.apply_defaults()
        wanted, average = call.arguments["need_weights"], call.arguments["average_attn_weights"]
        call.arguments.update(need_weights=True, average_attn_weights=False)
        out, weights = func(*call.args, **call.kwargs)
        batched = weights.dim() == 4
        per_head = weights if batched else weights.unsqueeze(0)
        if per_head.shape[-1] == per_head.shape[-2]:
            # the returned weights are a view made after the product with the values: the
            # gradient flows through the tensor they view
            self._record(per_head, weights._base if weights._base is not None else weights)
        if not wanted:
            return out, None
        return out, weights.mean(dim=-3) if average else weights


def share_key_value_heads(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          enable_gqa: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Grouped-query attention (`enable_gqa`): each key/value head repeated for the query
    heads that share it, as F.scaled_dot_product_attention does."""
    if enable_gqa and key.shape[-3] != query.shape[-3]:
        repeat = query.shape[-3] // key.shape[-3]
        key = key.repeat_interleave(repeat, dim=-3)
        value = value.repeat_interleave(repeat, dim=-3)
    return key, value


def attention_weights(query: torch.Tensor, key: torch.Tensor,
                      attn_mask: torch.Tensor | None = None, is_causal: bool = False,
                      scale: float | None = None) -> torch.Tensor:
    """A = softmax(Q K^T * scale + mask) (..., L, S), as F.scaled_dot_product_attention
    computes it: a boolean mask marks the pairs that may attend, a float mask is added; the
    softmax in float32 as the fused kernels accumulate, then the inputs' dtype. The one
    written-out attention of the package (the frozen heads of `simexplain.frozen` use it too)."""
    scale = 1 / math.sqrt(query.shape[-1]) if scale is None else scale
    logits = (query @ key.transpose(-2, -1)) * scale
    if is_causal:
        n, m = logits.shape[-2:]
        allowed = torch.ones(n, m, dtype=torch.bool, device=logits.device).tril()
        logits = logits.masked_fill(~allowed, float("-inf"))
    if attn_mask is not None:
        logits = (logits.masked_fill(~attn_mask, float("-inf"))
                  if attn_mask.dtype == torch.bool else logits + attn_mask)
    return logits.softmax(dim=-1, dtype=torch.float32).to(query.dtype)


def _is_attention(t) -> bool:
    return isinstance(t, torch.Tensor) and t.dim() == 4 and t.shape[-1] == t.shape[-2]


def _tokens(value):
    """Tokens (B, N, C) in a block's output or arguments: the tensor itself, or the first
    tensor of a tuple, list or dict (positional arguments; keyword arguments; older layers
    that return tuples)."""
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        value = next((v for v in value if isinstance(v, torch.Tensor)), None)
    return value if isinstance(value, torch.Tensor) and value.dim() == 3 else None


def block_names(model: nn.Module) -> list[str]:
    """Modules that are items of an nn.ModuleList or nn.Sequential: candidate blocks."""
    return [f"{name}.{child}" if name else child
            for name, module in model.named_modules()
            if isinstance(module, (nn.ModuleList, nn.Sequential))
            for child, _ in module.named_children()]


@contextmanager
def capturing(model: nn.Module) -> Iterator[Trace]:
    """Within the block, forward passes of `model` record their self-attentions and block
    outputs into the yielded Trace (its `output` is left for the caller to set)."""
    found = Trace(output=torch.empty(0))
    mode = AttentionCapture()
    modules = dict(model.named_modules())
    hooks = []
    for name in block_names(model):
        def enter(_m, args, kwargs, name=name):
            mode.running.append(name)
            tokens = _tokens(args) if _tokens(args) is not None else _tokens(kwargs)
            if tokens is not None:
                found.block_inputs[name] = tokens

        def leave(_m, _i, out, name=name):
            if mode.running and mode.running[-1] == name:
                mode.running.pop()
            tokens = _tokens(out)
            if tokens is not None:
                found.block_outputs[name] = tokens
        # in this thread only: another thread's pass of a shared model is not this trace's
        hooks += [modules[name].register_forward_pre_hook(own_thread(enter), with_kwargs=True),
                  modules[name].register_forward_hook(own_thread(leave))]
    try:
        with mode:
            yield found
    finally:
        for h in hooks:
            h.remove()
        found.attentions = mode.attentions


def trace(model: nn.Module, x: torch.Tensor, grad: bool = False) -> Trace:
    """Run `model` on x once, recording its self-attentions and block outputs. With grad=True
    they are in the autograd graph (the input is made a leaf that requires grad, so this holds
    for frozen models too)."""
    if grad:
        x = x.detach().requires_grad_(True)
    with torch.set_grad_enabled(grad), capturing(model) as found:
        found.output = model(x)
    return found
