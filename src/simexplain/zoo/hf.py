"""Hugging Face `transformers` vision models as embedders, read from local folders only.

    embedder = load_hf("path/to/folder")          # a save_pretrained folder (or HFEmbedder(model))
    embedder(pixel_values)                        # (B, D) embeddings
    hf_layers(embedder)                           # ["blocks.0", ..., "blocks.11"]
    explainer = hf_explainer("path/to/folder")    # what `--model hf:path/to/folder` gives

The embedding (`pooling`): "image_embeds" (the projected embedding of CLIP-style models),
"pooler" (`pooler_output`), "cls" (the class token of the last hidden states, after the final
norm as the model applies it), "mean" (the mean of the patch tokens, without class, register
and distillation tokens), or "auto": image_embeds, else pooler (unless the folder's weights
lack it, so that it would be random), else cls, else mean.

Explained layers: the output of encoder block k is the module `blocks.k` of the embedder, an
identity that receives that block's hidden states, (B, N, C) tokens, whether the block
returns a tensor (transformers 5) or a tuple (4.x). `layer` may also be an int or "block:K"
(K-th block, negative from the end, as Python indexes) or any module name of the embedder.
Default: the block one before the last (block:-2) when the embedding is read from a class
token, which the last block's patch tokens cannot reach any more; the last block (block:-1)
when it pools over the patch tokens.

Preprocessing: the folder's `preprocessor_config.json` (its crop size, else its size; mean,
std, rescale factor, resample filter), the whole image resized to that square (no crop, so
that maps cover the whole image); without the file: the config's image_size, mean and std 0.5.

Nothing is downloaded: every transformers call passes local_files_only=True.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import LayerError, ModelError, SimexplainError, first_line
from ..defaults import MAX_PREFIX_TOKENS
from ..images import Preprocess

if TYPE_CHECKING:
    from ..explainer import Explainer

PREFIX = "hf:"  # a model spec "hf:FOLDER" names a save_pretrained folder (`zoo.resolve`)
POOLINGS = ("auto", "image_embeds", "pooler", "cls", "mean")
# Without a preprocessor_config.json: what most ViT checkpoints on the hub were trained with.
FALLBACK_MEAN = (0.5, 0.5, 0.5)
FALLBACK_STD = (0.5, 0.5, 0.5)
_BLOCK_SPEC = re.compile(r"^(?:block:)?(-?\d+)$")


class _Tap(nn.Module):
    """The explained layer of one encoder block: an identity called with the block's hidden
    states, so that its output is the (B, N, C) token tensor the engine hooks, and what it
    returns (a masked or recorded copy) is what the next block receives."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states


class HFEmbedder(nn.Module):
    """A transformers vision model as an embedding model: `forward(pixel_values)` is the
    (B, D) embedding chosen by `pooling` (see the module's docstring), L2-normalised if
    `normalize`. `random_pooler`: the pooler's weights were not in the checkpoint (so "auto"
    does not pick it). One probe pass, on a blank image of the config's size, learns what
    the model outputs."""

    def __init__(self, model: nn.Module, pooling: str = "auto", normalize: bool = False,
                 random_pooler: bool = False):
        super().__init__()
        if pooling not in POOLINGS:
            raise ModelError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
        if getattr(model, "main_input_name", None) != "pixel_values":
            raise ModelError(
                f"{type(model).__name__} is not a vision model (its input is "
                f"{getattr(model, 'main_input_name', 'unknown')!r}, not pixel_values)")
        self.model = model.eval()
        self.normalize = normalize
        config = _vision_config(model.config)
        self.patch_size = _pair(getattr(config, "patch_size", None), "patch_size", model)
        self.image_size = _pair(getattr(config, "image_size", None), "image_size", model)
        self.num_channels = int(getattr(config, "num_channels", 3))
        self._hf_blocks = tuple(_find_blocks(model, config))  # kept out of the module tree
        self.blocks = nn.ModuleList(_Tap() for _ in self._hf_blocks)
        self._interpolates = "interpolate_pos_encoding" in \
            inspect.signature(model.forward).parameters
        # the final norm when the model applies it to the pooled token only (see _probe),
        # in a tuple: the model's own module, not registered a second time under this one
        self._token_norm: tuple[nn.Module, ...] = ()
        fields, self.prefix_tokens = self._probe()
        self.pooling = _choose_pooling(pooling, fields, self.prefix_tokens, random_pooler,
                                       type(model).__name__)

    @property
    def layers(self) -> list[str]:
        """Names of the explainable layers: the output of each encoder block, in order."""
        return [f"blocks.{i}" for i in range(len(self.blocks))]

    @property
    def default_layer(self) -> str:
        """One block before the last for a class-token embedding, else the last block."""
        from_class_token = self.prefix_tokens > 0 and self.pooling != "mean"
        return self.layers[max(0, len(self.layers) - (2 if from_class_token else 1))]

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self._run(pixel_values)
        if self.pooling == "image_embeds":
            embedding = out.image_embeds
        elif self.pooling == "pooler":
            embedding = out.pooler_output
        else:
            tokens = out.last_hidden_state
            prefix = tokens.shape[1] - self._patches(pixel_values)
            picked = tokens[:, 0] if self.pooling == "cls" else tokens[:, prefix:]
            for norm in self._token_norm:
                picked = norm(picked)
            embedding = picked if self.pooling == "cls" else picked.mean(1)
        return F.normalize(embedding, dim=-1) if self.normalize else embedding

    # -- internals -------------------------------------------------------------------------
    def _run(self, pixel_values: torch.Tensor):
        """The HF model's output (return_dict) with each block's hidden states passed through
        its tap. The hooks live only for this call: the user's model is left as it was."""
        kwargs = {"return_dict": True}
        if self._interpolates and tuple(pixel_values.shape[-2:]) != self.image_size:
            kwargs["interpolate_pos_encoding"] = True  # other sizes: as the model allows
        with self._tapped():
            return self.model(pixel_values, **kwargs)

    @contextlib.contextmanager
    def _tapped(self) -> Iterator[None]:
        def through(tap):
            def hook(_module, _inputs, out):
                if isinstance(out, torch.Tensor):
                    return tap(out)
                return (tap(out[0]), *out[1:])  # transformers 4.x: (hidden_states, ...)
            return hook
        handles = [block.register_forward_hook(through(tap))
                   for block, tap in zip(self._hf_blocks, self.blocks)]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _patches(self, pixel_values: torch.Tensor) -> int:
        height, width = pixel_values.shape[-2:]
        return (height // self.patch_size[0]) * (width // self.patch_size[1])

    def _probe(self) -> tuple[set[str], int]:
        """One pass on a blank image: which embedding fields the model returns, how many
        prefix tokens precede the patches, and whether its final norm (`post_layernorm`,
        CLIP style) is applied to the pooled class token only; then cls/mean apply it to the
        tokens they read, as the model does for its pooler."""
        norm = next((m for n, m in self.model.named_modules()
                     if n.split(".")[-1] == "post_layernorm"), None)
        seen: list[int] = []
        handle = norm.register_forward_pre_hook(lambda _m, args: seen.append(args[0].dim())) \
            if norm is not None else None
        x = torch.zeros(1, self.num_channels, *self.image_size, device=_device(self.model))
        try:
            with torch.no_grad():
                out = self._run(x)
        except Exception as exc:  # noqa: BLE001 - any failure of the model is the same problem
            raise ModelError(f"{type(self.model).__name__} failed on a blank "
                             f"{self.image_size[0]}x{self.image_size[1]} image: "
                             f"{first_line(exc)}") from None
        finally:
            if handle is not None:
                handle.remove()
        if norm is not None and seen and seen[0] == 2:
            self._token_norm = (norm,)
        fields = {k for k in ("image_embeds", "pooler_output", "last_hidden_state")
                  if isinstance(getattr(out, k, None), torch.Tensor)}
        if "last_hidden_state" not in fields or out.last_hidden_state.dim() != 3:
            raise ModelError(f"{type(self.model).__name__} returns no (B, N, C) "
                             "last_hidden_state: not a vision transformer")
        prefix = out.last_hidden_state.shape[1] - self._patches(x)
        if not 0 <= prefix <= MAX_PREFIX_TOKENS:
            raise ModelError(
                f"{type(self.model).__name__} returns {out.last_hidden_state.shape[1]} tokens "
                f"for {self._patches(x)} patches; expected at most {MAX_PREFIX_TOKENS} prefix "
                "tokens (class, registers, distillation) before a grid of patches")
        return fields, prefix


def _choose_pooling(pooling: str, fields: set[str], prefix: int, random_pooler: bool,
                    name: str) -> str:
    """The pooling asked for (checked against what the model returns), or auto's pick."""
    available = {"image_embeds": "image_embeds" in fields,
                 "pooler": "pooler_output" in fields, "cls": prefix > 0, "mean": True}
    if pooling == "auto":
        if available["pooler"] and random_pooler:
            available["pooler"] = False  # untrained weights: the class token instead
        return next(p for p in ("image_embeds", "pooler", "cls", "mean") if available[p])
    if not available[pooling]:
        why = "no class token" if pooling == "cls" else \
            f"no {'image_embeds' if pooling == 'image_embeds' else 'pooler_output'}"
        offered = ", ".join(p for p, ok in available.items() if ok)
        raise ModelError(f"pooling {pooling!r}: {name} has {why}; it offers {offered}")
    return pooling


def _vision_config(config):
    """The vision part of a config (a dual encoder's vision_config), else the config."""
    return getattr(config, "vision_config", None) or config


def _pair(value, what: str, model: nn.Module) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return int(value[0]), int(value[1])
    raise ModelError(f"{type(model).__name__}'s config has no usable {what} ({value!r}): "
                     "not a patch-based vision transformer")


def _device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def _find_blocks(model: nn.Module, config) -> list[nn.Module]:
    """The encoder blocks: the ModuleList of num_hidden_layers modules of one class."""
    depth = getattr(config, "num_hidden_layers", None)
    for _name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0 and \
                (depth is None or len(module) == depth) and \
                len({type(child) for child in module}) == 1:
            return list(module)
    raise ModelError(f"cannot find the encoder blocks of {type(model).__name__} (a list of "
                     f"{depth} layers): not a supported vision transformer")


# -- layers ---------------------------------------------------------------------------------------

def hf_layers(model: nn.Module) -> list[str]:
    """Names of the explainable layers of an HFEmbedder (or of a transformers vision model,
    wrapped with the default pooling): "blocks.0" ... "blocks.{L-1}", block outputs."""
    embedder = model if isinstance(model, HFEmbedder) else HFEmbedder(model)
    return embedder.layers


def layer_name(embedder: HFEmbedder, layer: str | int | None = None) -> str:
    """The module name of the explained layer: None for the default (`default_layer`), an
    int or "block:K" / "K" for block K (Python indexing: -1 is the last block), "blocks.K",
    or any other module name of the embedder."""
    if layer is None:
        return embedder.default_layer
    valid = embedder.layers
    match = _BLOCK_SPEC.match(layer.strip()) if isinstance(layer, str) else None
    if isinstance(layer, int) or match:
        if isinstance(layer, int):
            index = layer
        else:
            assert match is not None
            index = int(match.group(1))
        if not -len(valid) <= index < len(valid):
            raise LayerError(f"block {index} does not exist: the model has {len(valid)} "
                             f"blocks ({valid[0]} ... {valid[-1]}, or block:0 ... block:-1)")
        return valid[index]
    if layer in valid or (layer and layer in dict(embedder.named_modules())):
        return layer
    raise LayerError(f"layer {layer!r} not found in the Hugging Face model; valid layers: "
                     f"{', '.join(valid)} (or block:K, K an index, -1 the last block)")


# -- loading --------------------------------------------------------------------------------------

def _transformers():
    try:
        import transformers
    except ImportError:
        raise ModelError("Hugging Face models need transformers: pip install "
                         "'simexplain[hf]'") from None
    return transformers


@contextlib.contextmanager
def _quiet(transformers) -> Iterator[None]:
    """No progress bars or load reports from transformers while a folder is read."""
    logging = transformers.utils.logging
    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def _model_class(transformers, config, folder: Path):
    """The class to load and the config to load it with (None: the folder's): the saved
    architecture when it is a vision embedding model; the vision tower of a dual encoder
    (CLIPModel -> CLIPVisionModelWithProjection, with the dual encoder's projection size);
    else the base model of the config (a task head, such as a classifier, is dropped)."""
    arch = (getattr(config, "architectures", None) or [""])[0]
    cls = getattr(transformers, arch, None) if arch else None
    if cls is not None and arch.endswith(("Model", "ModelWithProjection")) and \
            getattr(cls, "main_input_name", None) == "pixel_values":
        return cls, None
    vision = getattr(config, "vision_config", None)
    if vision is not None:
        towers = [getattr(transformers, arch[:-len("Model")] + suffix, None)
                  for suffix in ("VisionModelWithProjection", "VisionModel")] \
            if arch.endswith("Model") else []
        tower = next((t for t in towers if t is not None), None)
        if tower is None:
            raise ModelError(f"{folder}: cannot find the vision tower of "
                             f"{arch or config.model_type}")
        if getattr(config, "projection_dim", None) is not None:
            vision.projection_dim = config.projection_dim  # the tower's own default differs
        return tower, vision
    if cls is not None and getattr(cls, "main_input_name", None) != "pixel_values":
        raise ModelError(f"{folder}: {arch} is not a vision model (its input is "
                         f"{getattr(cls, 'main_input_name', 'unknown')!r}, not pixel_values)")
    return transformers.AutoModel, None


def load_hf(folder: str | Path, pooling: str = "auto", normalize: bool = False,
            attn_implementation: str | None = None) -> HFEmbedder:
    """The embedder of a folder written by save_pretrained (config.json and weights), read
    locally (local_files_only). `attn_implementation`: "eager" or "sdpa" (None: what
    transformers picks, sdpa where the model supports it); both are explained the same."""
    if pooling not in POOLINGS:  # before the weights are read
        raise ModelError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
    transformers = _transformers()
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        what = "folder not found" if not folder.exists() else "no config.json"
        raise ModelError(f"{folder}: not a saved Hugging Face model ({what}); give the folder "
                         "written by save_pretrained")
    options: dict[str, Any] = {"local_files_only": True}
    if attn_implementation is not None:
        options["attn_implementation"] = attn_implementation
    with _quiet(transformers):
        try:
            config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
        except (ValueError, KeyError, OSError) as exc:
            raise ModelError(f"{folder}: unreadable config.json ({first_line(exc)})") \
                from None
        cls, tower_config = _model_class(transformers, config, folder)
        if tower_config is not None:
            options["config"] = tower_config
        try:
            model, info = cls.from_pretrained(folder, output_loading_info=True, **options)
        except (ValueError, KeyError, OSError, RuntimeError) as exc:
            raise ModelError(f"{folder}: cannot load the model ({first_line(exc)})") \
                from None
    # float32 whatever the folder's dtype: the decomposition's sums need its precision
    model = model.float()
    random_pooler = any(key.split(".")[0] == "pooler" or ".pooler." in f".{key}"
                        for key in info.get("missing_keys", ()))
    return HFEmbedder(model, pooling=pooling, normalize=normalize, random_pooler=random_pooler)


def hf_preprocess(folder: str | Path | None, config: Any = None) -> Preprocess:
    """The input preprocessing of a model: from the folder's preprocessor_config.json when
    there is one, else the config's image_size with mean and std 0.5 (see the module)."""
    vision = _vision_config(config) if config is not None else None
    channels = int(getattr(vision, "num_channels", 3) or 3)
    path = Path(folder) / "preprocessor_config.json" if folder is not None else None
    if path is None or not path.is_file():
        size = getattr(vision, "image_size", None)
        if size is None:
            raise ModelError("the model's config has no image_size and there is no "
                             "preprocessor_config.json: the input size is unknown")
        size = (size, size) if isinstance(size, int) else tuple(int(v) for v in size)
        return Preprocess(size=size, mean=FALLBACK_MEAN[:channels], std=FALLBACK_STD[:channels],
                          grayscale=channels == 1)
    try:
        settings = json.loads(path.read_text())
        if not isinstance(settings, dict):
            raise ValueError("not a JSON object")
        crop = settings.get("crop_size") if settings.get("do_center_crop", True) else None
        size = _processor_size(crop if crop is not None else settings.get("size"))
        mean, std = settings.get("image_mean", FALLBACK_MEAN), settings.get("image_std",
                                                                            FALLBACK_STD)
        mean = [float(mean)] * channels if isinstance(mean, (int, float)) else \
            [float(v) for v in mean]
        std = [float(std)] * channels if isinstance(std, (int, float)) else \
            [float(v) for v in std]
        if not settings.get("do_normalize", True):
            mean, std = [0.0] * channels, [1.0] * channels
        # Preprocess scales pixels to [0, 1]; the processor multiplies 0..255 by the factor
        scale = float(settings.get("rescale_factor", 1 / 255)) * 255.0 \
            if settings.get("do_rescale", True) else 255.0
        mean, std = [m / scale for m in mean], [s / scale for s in std]
        return Preprocess(size=size, mean=tuple(mean), std=tuple(std),
                          grayscale=channels == 1,
                          resample=_resample_name(settings.get("resample", 2)))
    except (ValueError, TypeError, KeyError, SimexplainError) as exc:
        raise ModelError(f"{path}: cannot read the preprocessing settings ({exc})") from None


def _processor_size(size) -> tuple[int, int]:
    """(height, width) from a processor's size or crop_size: an int, {"height", "width"} or
    {"shortest_edge"} (the input is then that square: the whole image, no crop)."""
    if isinstance(size, int):
        return size, size
    if isinstance(size, dict):
        if "height" in size and "width" in size:
            return int(size["height"]), int(size["width"])
        for key in ("shortest_edge", "longest_edge"):
            if key in size:
                return int(size[key]), int(size[key])
    raise ValueError(f"unsupported size {size!r}")


def _resample_name(value) -> str:
    """A processor's resample (a PIL filter number, or a name) as a Preprocess name."""
    from PIL import Image
    if isinstance(value, str):
        return value.lower()
    return Image.Resampling(int(value)).name.lower()


def hf_explainer(source: str | Path | nn.Module, layer: str | int | None = None,
                 similarity: str | None = None, size: int | tuple[int, int] | None = None,
                 pooling: str = "auto", normalize: bool = False,
                 attn_implementation: str | None = None,
                 model_name: str | None = None) -> Explainer:
    """An Explainer of a save_pretrained folder (or of a transformers model object, which
    then gets the fallback preprocessing): `layer` as `layer_name` (default: `default_layer`),
    cosine similarity unless `similarity`, the folder's preprocessing at its own size unless
    `size` (see `Preprocess.resized`); pooling, normalize, attn_implementation: `load_hf`."""
    from ..explainer import Explainer
    if isinstance(source, nn.Module):
        embedder = source if isinstance(source, HFEmbedder) else \
            HFEmbedder(source, pooling=pooling, normalize=normalize)
        folder = None
    else:
        folder = Path(source)
        embedder = load_hf(folder, pooling=pooling, normalize=normalize,
                           attn_implementation=attn_implementation)
    preprocess = hf_preprocess(folder, embedder.model.config).resized(size)
    name = model_name or (f"{PREFIX}{folder}" if folder is not None
                          else type(embedder.model).__name__)
    return Explainer(embedder, layer_name(embedder, layer), similarity=similarity or "cosine",
                     transform=preprocess, model_name=name)
