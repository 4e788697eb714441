"""A user's own model from the command line: `package.module:factory`, a TorchScript file, or a
file written by torch.save(model)."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ModelError, first_line


def load_user_model(spec: str) -> nn.Module:
    """A model from `package.module:factory` (called with no arguments), a TorchScript file,
    or a file written by torch.save(model). Only load files you trust (pickle)."""
    import importlib
    from pathlib import Path

    path = Path(spec)
    if path.suffix in (".pt", ".pth", ".ts", ".jit") or path.exists():
        if path.is_dir():
            raise ModelError(f"{path} is a folder, not a model file (a Hugging Face model "
                             f"saved there is hf:{path})")
        if not path.is_file():
            raise ModelError(f"model file not found: {path}")
        import warnings
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                return unscript(torch.jit.load(str(path), map_location="cpu"))
        except RuntimeError:
            pass  # not TorchScript: try a pickled module
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:  # noqa: BLE001 - any unpickling failure is the same user error
            raise ModelError(
                f"{path}: neither TorchScript nor a saved torch module ({exc})") from None
        if not isinstance(loaded, nn.Module):
            raise ModelError(
                f"{path} holds a {type(loaded).__name__}, not a model; save the module itself "
                "(torch.save(model)) or give module:factory")
        return loaded.eval()
    if ":" not in spec:
        raise ModelError(
            f"cannot find model {spec!r}: give a zoo name (simexplain models), a model file, "
            "or module:factory")
    module_name, factory_name = spec.split(":", 1)
    try:
        factory = getattr(importlib.import_module(module_name), factory_name)
    except Exception as exc:  # noqa: BLE001 - a missing module or name, an empty name, or a
        # module that fails as it is imported: the spec cannot be used either way
        raise ModelError(f"cannot import {spec!r}: {first_line(exc)}") from None
    if not callable(factory):
        raise ModelError(f"{spec} is a {type(factory).__name__}, not a factory to call")
    try:
        built = factory()
    except Exception as exc:  # noqa: BLE001 - the user's factory failing, or needing arguments
        raise ModelError(f"{spec}: calling the factory with no arguments failed: "
                         f"{first_line(exc)}") from None
    if not isinstance(built, nn.Module):
        raise ModelError(f"{spec} returned {type(built).__name__}, not a torch.nn.Module")
    return built.eval()


def _eager_twin(script: torch.jit.ScriptModule) -> nn.Module | None:
    """An eager copy of a scripted standard layer, so that hooks and tangents reach it."""
    kind = script.original_name
    state = script.state_dict()
    layer: nn.Module
    if kind == "Linear":
        layer = nn.Linear(script.in_features, script.out_features, bias="bias" in state)
    elif kind in ("Conv2d", "Conv1d"):
        cls = nn.Conv2d if kind == "Conv2d" else nn.Conv1d
        layer = cls(script.in_channels, script.out_channels, script.kernel_size, script.stride,
                    script.padding, script.dilation, script.groups, bias="bias" in state)
    elif kind in ("BatchNorm1d", "BatchNorm2d"):
        norm = nn.BatchNorm1d if kind == "BatchNorm1d" else nn.BatchNorm2d
        layer = norm(script.num_features, eps=script.eps)
    elif kind == "LayerNorm":
        layer = nn.LayerNorm(script.normalized_shape, eps=script.eps)
    elif kind in ("AdaptiveAvgPool2d", "AdaptiveMaxPool2d"):
        layer = getattr(nn, kind)(script.output_size)
    elif kind == "Flatten":
        layer = nn.Flatten(script.start_dim, script.end_dim)
    elif kind == "LeakyReLU":
        layer = nn.LeakyReLU(script.negative_slope)
    elif kind in ("ReLU", "ReLU6", "Dropout", "Identity", "GELU", "Sigmoid", "Tanh"):
        layer = getattr(nn, kind)()
    else:
        return None
    layer.load_state_dict(state)
    return layer.eval()


class _Scripted(nn.Module):
    """A scripted block kept as a black box (its inside cannot be hooked)."""

    def __init__(self, script: torch.jit.ScriptModule):
        super().__init__()
        self.script = script

    def forward(self, x):
        return self.script(x)


def unscript(script: torch.jit.ScriptModule, top: bool = True) -> nn.Module:
    """Rebuild a scripted nn.Sequential as eager modules: standard layers become eager twins
    (exact head analysis), other blocks stay scripted black boxes that can still be the
    explained layer. A scripted model with a custom forward cannot be split."""
    twin = _eager_twin(script)
    if twin is not None:
        return twin
    if script.original_name == "Sequential":
        from collections import OrderedDict
        return nn.Sequential(OrderedDict(
            # a script module's children are script modules (torch types them as Module)
            (name, unscript(child, top=False))  # type: ignore[arg-type]
            for name, child in script.named_children())).eval()
    if not top:
        return _Scripted(script)
    raise ModelError(
        f"TorchScript model {script.original_name!r} has a custom forward whose submodule "
        "calls cannot be observed; save it as a scripted nn.Sequential, or pass the eager "
        "model as module:factory")
