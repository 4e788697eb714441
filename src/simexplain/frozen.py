"""What a head keeps frozen (values from the real forward pass, no derivative), so that it is
linear in the explained layer's output and decomposes exactly (METHOD.md, "freeze, don't
differentiate"); and raw embeddings (the model's output before its final F.normalize) for
Grad-CAM's "raw" variant.

Frozen by `FreezeScales`, in whatever form the model calls them:
* per-sample scalars: L2 normalisation, the statistics of LayerNorm, RMSNorm and GroupNorm, any
  norm / sqrt / rsqrt / std / var (the denominators of normalisations);
* attention weights: softmax outputs, also inside F.scaled_dot_product_attention and
  F.multi_head_attention_forward (nn.MultiheadAttention, nn.TransformerEncoderLayer), which
  are computed here explicitly so that the weights exist to be frozen;
* elementwise gates: GELU = x * Phi(x), SiLU = x * sigmoid(x), Mish, Hardswish and GLU keep
  their gate factor; a product with a sigmoid, tanh or erf of anything (quick-GELU
  x * sigmoid(1.702 x), the tanh form of GELU written out) keeps that factor; tanh and erf on
  their own (a pooler's tanh) are z * (f(z) / z) with the ratio frozen, as ReLU is z * [z > 0].
With these frozen, a stack of transformer blocks is affine in its input tokens: values,
projections, residual paths and MLPs are linear, so any number of blocks decompose exactly.
What is not covered (e.g. softplus or a sigmoid on its own) is linearised to first order, and
the residual says so.
"""

from __future__ import annotations

import inspect
import math

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from .attention import SOFTMAX, attention_weights, share_key_value_heads

# Ops whose outputs act as per-sample scalars in a head: their value is kept, their tangent
# dropped ("frozen"). They appear as the denominators of normalisations.
_SCALE_OPS = {
    torch.norm, torch.Tensor.norm, torch.linalg.norm, torch.linalg.vector_norm,
    torch.sqrt, torch.Tensor.sqrt, torch.rsqrt, torch.Tensor.rsqrt,
    torch.std, torch.Tensor.std, torch.var, torch.Tensor.var,
}
# Saturating functions whose output, multiplied with something, is a gate (quick-GELU,
# hand-written GELU); tanh and erf are zero at zero, so on their own they are rescale gates.
_GATE_SOURCES = {torch.sigmoid, torch.Tensor.sigmoid, F.sigmoid}
_ODD_GATES = {torch.tanh: torch.tanh, torch.Tensor.tanh: torch.tanh, F.tanh: torch.tanh,
              torch.erf: torch.erf, torch.Tensor.erf: torch.erf, torch.special.erf: torch.erf}
# Arithmetic that keeps a gate a gate when every tensor it reads is one (1 + tanh(.), 0.5 * g).
_GATE_ARITHMETIC = {
    torch.add, torch.Tensor.add, torch.Tensor.__add__, torch.Tensor.__radd__,
    torch.sub, torch.Tensor.sub, torch.Tensor.__sub__, torch.Tensor.__rsub__, torch.rsub,
    torch.mul, torch.Tensor.mul, torch.Tensor.__mul__, torch.Tensor.__rmul__,
    torch.div, torch.Tensor.div, torch.Tensor.__truediv__, torch.neg, torch.Tensor.neg,
    torch.Tensor.__neg__, torch.Tensor.to, torch.Tensor.type_as, torch.Tensor.float,
}
_PRODUCTS = {torch.mul, torch.Tensor.mul, torch.Tensor.__mul__, torch.Tensor.__rmul__}
_RELU = {F.relu, torch.relu, torch.Tensor.relu}
_NORMALIZE_SIG = inspect.signature(F.normalize)
_BATCH_NORM_SIG = inspect.signature(F.batch_norm)
_LAYER_NORM_SIG = inspect.signature(F.layer_norm)
_GROUP_NORM_SIG = inspect.signature(F.group_norm)
_RMS_NORM_SIG = inspect.signature(F.rms_norm)
_SDPA_PARAMS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale",
                "enable_gqa")
_MHA_SIG = inspect.signature(F.multi_head_attention_forward)
_GATED = _RELU | {F.leaky_relu, F.gelu, F.silu, F.mish, F.hardswish, F.glu}
# every call FreezeScales does something with (besides arithmetic on gates)
_HANDLED = ({F.normalize, F.batch_norm, F.layer_norm, F.rms_norm, F.group_norm,
             F.scaled_dot_product_attention, F.multi_head_attention_forward}
            | _SCALE_OPS | SOFTMAX | _GATED | _GATE_SOURCES | set(_ODD_GATES))


class RawEmbeddings(TorchFunctionMode):
    """Within the block, F.normalize is the identity: the model returns its raw
    (pre-normalisation) embedding, which Grad-CAM's "raw" variant needs."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.normalize:
            return _NORMALIZE_SIG.bind(*args, **kwargs).arguments["input"]
        return func(*args, **kwargs)


class FreezeScales(TorchFunctionMode):
    """Run a forward pass with per-sample scalars, attention weights and elementwise gates
    frozen (values unchanged, derivatives dropped); see the module's docstring.

    `record` (a list) collects every frozen value in call order; `replay` (such a list) uses
    them instead of computing them: a second pass over other inputs (e.g. one position of
    the layer output each, batched under vmap) then runs the head as the affine map that the
    frozen values make of it at the real input (`head.tape_contributions`, "batched").
    """

    def __init__(self, record: list | None = None, replay: list | None = None):
        super().__init__()
        self._record, self._replay, self._next = record, replay, 0
        # id -> tensor: gate values made during this pass (kept alive so ids stay unique)
        self._gates: dict[int, torch.Tensor] = {}

    def _keep(self, compute):
        """A frozen value: computed (and recorded), or the next recorded one."""
        if self._replay is not None:
            if self._next >= len(self._replay):
                raise RuntimeError("the replayed pass freezes more values than were recorded")
            value = self._replay[self._next]
            self._next += 1
            return value
        value = compute()
        if self._record is not None:
            self._record.append(value)
        return value

    def _is_gate(self, value) -> bool:
        return isinstance(value, torch.Tensor) and self._gates.get(id(value)) is value

    def _gate(self, out: torch.Tensor) -> torch.Tensor:
        self._gates[id(out)] = out
        return out

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in _HANDLED and not (self._gates and func in _GATE_ARITHMETIC):
            return func(*args, **kwargs)  # most calls: nothing to freeze (kept cheap)
        keep = self._keep
        if func is F.normalize:
            bound = _NORMALIZE_SIG.bind(*args, **kwargs)
            bound.apply_defaults()
            a = bound.arguments
            # detached before the norm: no derivative of the norm is ever computed (cheaper
            # under forward-mode transforms than computing one and dropping it)
            x = a["input"]
            return x / keep(lambda: x.detach().norm(a["p"], a["dim"], keepdim=True)
                            .clamp_min(a["eps"]))
        if func is F.batch_norm:
            bound = _BATCH_NORM_SIG.bind(*args, **kwargs)
            bound.apply_defaults()
            if not bound.arguments["training"]:
                return _batch_norm_eval(**bound.arguments)
        if func is F.layer_norm:
            bound = _LAYER_NORM_SIG.bind(*args, **kwargs)
            bound.apply_defaults()
            return _layer_norm_frozen(keep, **bound.arguments)
        if func is F.rms_norm:
            bound = _RMS_NORM_SIG.bind(*args, **kwargs)
            bound.apply_defaults()
            return _rms_norm_frozen(keep, **bound.arguments)
        if func is F.group_norm:
            bound = _GROUP_NORM_SIG.bind(*args, **kwargs)
            bound.apply_defaults()
            return _group_norm_frozen(keep, **bound.arguments)
        if func in _SCALE_OPS or func in SOFTMAX:  # value kept, derivative never computed
            def value():
                detached = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
                out = func(*detached, **kwargs)
                return out.detach() if isinstance(out, torch.Tensor) else out
            return keep(value)
        if func is F.scaled_dot_product_attention:
            return _attention_frozen(keep, **dict(zip(_SDPA_PARAMS, args)), **kwargs)
        if func is F.multi_head_attention_forward:
            bound = _MHA_SIG.bind(*args, **kwargs)
            bound.apply_defaults()
            out = _multi_head_attention_frozen(keep, **bound.arguments)
            if out is not None:
                return out
        gated = _gated_activation(keep, func, args, kwargs)
        if gated is not None:
            return gated
        if func in _GATE_SOURCES:
            return self._gate(func(*args, **kwargs))
        if func in _ODD_GATES and args and isinstance(args[0], torch.Tensor):
            return self._gate(_rescaled(keep, _ODD_GATES[func], args[0]))
        if func in _GATE_ARITHMETIC:
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            gates = [a for a in tensors if self._is_gate(a)]
            if gates and len(gates) == len(tensors):
                return self._gate(func(*args, **kwargs))
            if gates and func in _PRODUCTS:  # x * gate: the gate's value, no derivative
                args = tuple(keep(lambda a=a: a.detach()) if self._is_gate(a) else a
                             for a in args)
        return func(*args, **kwargs)


def _batch_norm_eval(input, running_mean, running_var, weight, bias, eps, **_):
    # Written out so that running_mean and bias can carry tangents (torch's kernel refuses).
    shape = (1, -1) + (1,) * (input.dim() - 2)
    scale = (running_var + eps).rsqrt()
    if weight is not None:
        scale = scale * weight
    out = (input - running_mean.view(shape)) * scale.view(shape)
    return out if bias is None else out + bias.view(shape)


def _layer_norm_frozen(keep, input, normalized_shape, weight, bias, eps):
    dims = tuple(range(-len(normalized_shape), 0))
    centred = input - input.mean(dim=dims, keepdim=True)
    std = keep(lambda: (input.detach().var(dim=dims, keepdim=True, unbiased=False) + eps).sqrt())
    out = centred / std
    if weight is not None:
        out = out * weight
    return out if bias is None else out + bias


def _rms_norm_frozen(keep, input, normalized_shape, weight, eps):
    dims = tuple(range(-len(normalized_shape), 0))
    if eps is None:
        eps = torch.finfo(input.dtype).eps
    scale = keep(lambda: (input.detach().pow(2).mean(dim=dims, keepdim=True) + eps).rsqrt())
    out = input * scale
    return out if weight is None else out * weight


def _group_norm_frozen(keep, input, num_groups, weight, bias, eps):
    grouped = input.reshape(input.shape[0], num_groups, -1)
    centred = grouped - grouped.mean(-1, keepdim=True)
    std = keep(lambda: (grouped.detach().var(-1, keepdim=True, unbiased=False) + eps).sqrt())
    out = (centred / std).reshape(input.shape)
    shape = (1, -1) + (1,) * (input.dim() - 2)
    if weight is not None:
        out = out * weight.view(shape)
    return out if bias is None else out + bias.view(shape)


# -- elementwise gates ----------------------------------------------------------------------------

def _arg(args, kwargs, index: int, name: str, default=None):
    return args[index] if len(args) > index else kwargs.get(name, default)


def _gated_activation(keep, func, args, kwargs) -> torch.Tensor | None:
    """x * gate(x) with the gate frozen, for the activations that are written that way (ReLU
    too: x * [x > 0], whose derivative is the same); None for any other call."""
    if func in _RELU:
        x = _arg(args, kwargs, 0, "input")
        return x * keep(lambda: (x.detach() > 0).to(x.dtype))
    if func is F.leaky_relu:
        x = _arg(args, kwargs, 0, "input")
        slope = _arg(args, kwargs, 1, "negative_slope", 0.01)
        return x * keep(lambda: torch.where(x.detach() > 0, 1.0, slope).to(x.dtype))
    if func is F.gelu:
        x = _arg(args, kwargs, 0, "input")
        tanh_form = _arg(args, kwargs, 1, "approximate", "none") == "tanh"

        def gate():
            xd = x.detach()
            if tanh_form:
                return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) *
                                               (xd + 0.044715 * xd.pow(3))))
            return 0.5 * (1.0 + torch.erf(xd / math.sqrt(2.0)))
        return x * keep(gate)
    if func is F.silu:
        x = _arg(args, kwargs, 0, "input")
        return x * keep(lambda: torch.sigmoid(x.detach()))
    if func is F.mish:
        x = _arg(args, kwargs, 0, "input")
        return x * keep(lambda: torch.tanh(F.softplus(x.detach())))
    if func is F.hardswish:
        x = _arg(args, kwargs, 0, "input")
        return x * keep(lambda: F.relu6(x.detach() + 3.0) / 6.0)
    if func is F.glu:
        x = _arg(args, kwargs, 0, "input")
        a, b = x.chunk(2, dim=_arg(args, kwargs, 1, "dim", -1))
        return a * keep(lambda: torch.sigmoid(b.detach()))
    return None


def _rescaled(keep, f, z: torch.Tensor) -> torch.Tensor:
    """f(z) as z * (f(z) / z) with the ratio frozen (f odd, f(0) = 0: tanh, erf): linear in z
    with the same value; at z = 0 the ratio is its limit f'(0)."""
    def ratio():
        zd = z.detach()
        small = zd.abs() < 1e-6
        slope = f(torch.full((), 1e-3, dtype=zd.dtype, device=zd.device)) / 1e-3  # ~f'(0)
        return torch.where(small, slope, f(zd) / torch.where(small, torch.ones_like(zd), zd))
    return z * keep(ratio)


# -- attention ------------------------------------------------------------------------------------

def _attention_frozen(keep, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                      scale=None, enable_gqa=False):
    """F.scaled_dot_product_attention written out, with the attention weights frozen; no
    dropout (heads are explained in eval mode)."""
    key, value = share_key_value_heads(query, key, value, enable_gqa)
    return _frozen_weights(keep, query, key, attn_mask, is_causal, scale) @ value


def _frozen_weights(keep, query, key, attn_mask, is_causal, scale):
    """softmax(q k^T * scale + mask) (`attention.attention_weights`), frozen: (..., L, S)."""
    return keep(lambda: attention_weights(query.detach(), key.detach(),
                                          None if attn_mask is None else attn_mask.detach(),
                                          is_causal, scale))


def _additive(mask: torch.Tensor) -> torch.Tensor:
    """nn.MultiheadAttention's mask (bool: True = may not attend; or float, added) as the
    float mask that is added to the logits."""
    if mask.dtype != torch.bool:
        return mask
    return torch.zeros(mask.shape, dtype=torch.float32, device=mask.device).masked_fill(
        mask, float("-inf"))


def _multi_head_attention_frozen(keep, query, key, value, embed_dim_to_check, num_heads,
                                 in_proj_weight, in_proj_bias, bias_k, bias_v, add_zero_attn,
                                 dropout_p, out_proj_weight, out_proj_bias, training=True,
                                 key_padding_mask=None, need_weights=True, attn_mask=None,
                                 use_separate_proj_weight=False, q_proj_weight=None,
                                 k_proj_weight=None, v_proj_weight=None, static_k=None,
                                 static_v=None, average_attn_weights=True, is_causal=False):
    """F.multi_head_attention_forward written out with the attention weights frozen, or None
    for the rare options it does not cover (learned k/v biases, zero attention, static k/v,
    dropout in training): those then run as the model wrote them (first order)."""
    if bias_k is not None or bias_v is not None or add_zero_attn or static_k is not None \
            or static_v is not None or (training and dropout_p > 0):
        return None
    unbatched = query.dim() == 2
    if unbatched:  # (L, E) -> (L, 1, E)
        query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
        if key_padding_mask is not None:
            key_padding_mask = key_padding_mask.unsqueeze(0)
    length, batch, embed = query.shape
    source = key.shape[0]
    head_dim = embed // num_heads
    if use_separate_proj_weight:
        w_q, w_k, w_v = q_proj_weight, k_proj_weight, v_proj_weight
    else:
        w_q, w_k, w_v = in_proj_weight.chunk(3)
    b_q, b_k, b_v = in_proj_bias.chunk(3) if in_proj_bias is not None else (None,) * 3

    def heads(x, w, b, n):  # (n, N, E) -> (N, heads, n, head_dim)
        return F.linear(x, w, b).reshape(n, batch, num_heads, head_dim).permute(1, 2, 0, 3)
    q, k, v = heads(query, w_q, b_q, length), heads(key, w_k, b_k, source), \
        heads(value, w_v, b_v, source)
    mask = None
    if attn_mask is not None:  # (L, S) or (N * heads, L, S); True (bool) = may not attend
        mask = _additive(attn_mask.reshape(-1, num_heads, length, source)
                         if attn_mask.dim() == 3 else attn_mask)
    if key_padding_mask is not None:  # (N, S); True (bool) = padding
        padding = _additive(key_padding_mask[:, None, None, :])
        mask = padding if mask is None else mask + padding
    causal = is_causal and attn_mask is None
    weights = _frozen_weights(keep, q, k, mask, causal, None)
    # as many rows as the weights have (the packed replay's diag(A[s, :]) of one query: N)
    out = (weights @ v).permute(2, 0, 1, 3).reshape(-1, batch, embed)
    out = F.linear(out, out_proj_weight, out_proj_bias)
    if unbatched:
        out = out.squeeze(1)
    if not need_weights:
        return out, None
    shown = weights.mean(1) if average_attn_weights else weights
    return out, (shown.squeeze(0) if unbatched else shown)
