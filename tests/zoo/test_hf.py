"""Hugging Face vision models as embedders (`simexplain.zoo.hf`, `--model hf:FOLDER`): tiny
random-weight DINOv2 (with registers where transformers has it), CLIP vision with projection
and ViT with pooler, saved with save_pretrained into temporary folders; nothing is downloaded."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers
from PIL import Image
from torch import nn

from simexplain import zoo
from simexplain.cli import main
from simexplain.errors import LayerError, ModelError, SimexplainError
from simexplain.zoo.hf import (
    FALLBACK_MEAN,
    HFEmbedder,
    hf_explainer,
    hf_layers,
    hf_preprocess,
    layer_name,
    load_hf,
)

SIDE, PATCH, DEPTH = 32, 8, 3  # a 4x4 patch grid, three blocks
TINY = dict(hidden_size=32, num_hidden_layers=DEPTH, num_attention_heads=2,
            intermediate_size=64, image_size=SIDE, patch_size=PATCH)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _build(kind: str) -> nn.Module:
    torch.manual_seed(0)
    if kind == "dinov2":
        return transformers.Dinov2Model(transformers.Dinov2Config(**TINY))
    if kind == "dinov2-registers":
        return transformers.Dinov2WithRegistersModel(
            transformers.Dinov2WithRegistersConfig(**TINY, num_register_tokens=4))
    if kind == "clip":
        return transformers.CLIPVisionModelWithProjection(
            transformers.CLIPVisionConfig(**TINY, projection_dim=16))
    if kind == "vit":
        return transformers.ViTModel(transformers.ViTConfig(**TINY), add_pooling_layer=True)
    raise AssertionError(kind)


# what each folder's preprocessor_config.json says (the forms processors write)
PROCESSORS = {
    "dinov2": {"do_resize": True, "size": {"shortest_edge": 40}, "do_center_crop": True,
               "crop_size": {"height": SIDE, "width": SIDE}, "resample": 3,
               "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
               "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]},
    "clip": {"size": {"shortest_edge": SIDE}, "crop_size": SIDE, "do_center_crop": True,
             "resample": 3, "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD)},
    "vit": {"size": {"height": SIDE, "width": SIDE}, "resample": 2,
            "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]},
}
KINDS = ["dinov2", "clip", "vit"] + \
    (["dinov2-registers"] if hasattr(transformers, "Dinov2WithRegistersModel") else [])
PREFIX_TOKENS = {"dinov2": 1, "dinov2-registers": 5, "clip": 1, "vit": 1}
AUTO_POOLING = {"dinov2": "pooler", "dinov2-registers": "pooler", "clip": "image_embeds",
                "vit": "pooler"}


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, tuple[Path, nn.Module]]:
    """kind -> (its save_pretrained folder, the model object itself, eval mode)."""
    root = tmp_path_factory.mktemp("hf")
    out = {}
    for kind in KINDS:
        model = _build(kind).eval()
        folder = root / kind
        model.save_pretrained(folder)
        if kind in PROCESSORS:
            (folder / "preprocessor_config.json").write_text(json.dumps(PROCESSORS[kind]))
        out[kind] = (folder, model)
    return out


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("hf-pictures")
    rng = np.random.default_rng(1)
    paths = []
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 255, (40, 52, 3), dtype=np.uint8)).save(folder / name)
        paths.append(str(folder / name))
    return paths


def _noise_gallery(folder: Path, count: int, seed: int) -> Path:
    """`count` noise photos of 36x44 pixels (another aspect than the models' square input)."""
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (36, 44, 3), dtype=np.uint8)).save(
            folder / f"g{i}.png")
    return folder


def _own(model: nn.Module, x: torch.Tensor):
    """The HF model's own output, computed without the adapter."""
    with torch.no_grad():
        return model(pixel_values=x, return_dict=True)


def _own_embedding(kind: str, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The field the default ("auto") pooling should pick, from the model itself."""
    out = _own(model, x)
    return out.image_embeds if kind == "clip" else out.pooler_output


# -- the embedder ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_embedding_is_the_models_own_output(saved, kind):
    folder, model = saved[kind]
    embedder = load_hf(folder)
    assert embedder.pooling == AUTO_POOLING[kind]
    assert embedder.prefix_tokens == PREFIX_TOKENS[kind]
    x = torch.randn(2, 3, SIDE, SIDE)
    with torch.no_grad():
        got = embedder(x)
    assert torch.allclose(got, _own_embedding(kind, model, x), atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_cls_and_mean_pooling(saved, kind):
    folder, model = saved[kind]
    x = torch.randn(2, 3, SIDE, SIDE)
    prefix = PREFIX_TOKENS[kind]
    out = _own(model, x)
    tokens = out.last_hidden_state
    with torch.no_grad():
        cls = load_hf(folder, pooling="cls")(x)
        mean = load_hf(folder, pooling="mean")(x)
    if kind == "clip":  # CLIP norms the class token only (post_layernorm), as for its pooler
        with torch.no_grad():
            norm = model.vision_model.post_layernorm
            want_cls = model.vision_model(pixel_values=x).pooler_output
            want_mean = norm(tokens[:, prefix:]).mean(1)
    else:  # DINOv2 and ViT norm every token: last_hidden_state is after the final norm
        want_cls, want_mean = tokens[:, 0], tokens[:, prefix:].mean(1)
    assert torch.allclose(cls, want_cls, atol=1e-6, rtol=0)
    assert torch.allclose(mean, want_mean, atol=1e-6, rtol=0)


def test_normalize_flag_gives_unit_embeddings(saved):
    folder, model = saved["vit"]
    x = torch.randn(3, 3, SIDE, SIDE)
    with torch.no_grad():
        got = load_hf(folder, normalize=True)(x)
    assert torch.allclose(got, F.normalize(_own_embedding("vit", model, x), dim=-1), atol=1e-6)


def test_eager_and_sdpa_attention_agree(saved):
    folder, _ = saved["dinov2"]
    default, eager = load_hf(folder), load_hf(folder, attn_implementation="eager")
    assert default.model.config._attn_implementation in ("sdpa", "eager")
    assert eager.model.config._attn_implementation == "eager"
    x = torch.randn(2, 3, SIDE, SIDE)
    with torch.no_grad():
        assert torch.allclose(default(x), eager(x), atol=1e-5)
    # both are explained, alike: the tape replays SDPA's kernel and eager's softmax alike
    by_sdpa = hf_explainer(default, model_name="sdpa").contributions(x)
    by_eager = hf_explainer(eager, model_name="eager").contributions(x)
    scale = float(by_sdpa.positions.abs().max())
    assert torch.allclose(by_sdpa.positions, by_eager.positions, atol=1e-4 * scale, rtol=0)
    assert by_sdpa.path == by_eager.path == "whole head, packed"


def test_a_model_object_and_its_layers(saved):
    _, model = saved["vit"]
    embedder = HFEmbedder(model, pooling="cls")
    assert hf_layers(embedder) == hf_layers(model) == [f"blocks.{i}" for i in range(DEPTH)]
    assert embedder.default_layer == f"blocks.{DEPTH - 2}"
    assert HFEmbedder(model, pooling="mean").default_layer == f"blocks.{DEPTH - 1}"
    names = dict(embedder.named_modules())
    assert all(name in names for name in embedder.layers)
    # the layer override: an int or block:K (Python indexing), blocks.K, any module name
    assert layer_name(embedder, -3) == layer_name(embedder, "block:0") == "blocks.0"
    assert layer_name(embedder, "-1") == layer_name(embedder, "blocks.2") == "blocks.2"
    assert layer_name(embedder, "model.layernorm") == "model.layernorm"
    # the wrapper leaves no hook behind on the user's model
    assert not any(block._forward_hooks for block in model.layers)
    # its weights are the model's, once each (the index's weights fingerprint hashes them)
    assert list(embedder.state_dict()) == [f"model.{k}" for k in model.state_dict()]


def test_clip_cls_applies_the_final_norm_without_registering_it_again(saved):
    _, model = saved["clip"]
    embedder = HFEmbedder(model, pooling="cls")
    assert list(embedder.state_dict()) == [f"model.{k}" for k in model.state_dict()]


def test_other_input_sizes_interpolate_position_embeddings(saved):
    folder, model = saved["vit"]
    embedder = load_hf(folder)
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        want = model(pixel_values=x, interpolate_pos_encoding=True).pooler_output
        assert torch.allclose(embedder(x), want, atol=1e-6)
    explainer = zoo.resolve(f"hf:{folder}", size=48)
    assert explainer.explain(x, x.flip(-1)).a.grid == (6, 6)


def test_a_model_without_class_token_pools_over_patches():
    torch.manual_seed(0)
    siglip = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**TINY)).eval()
    embedder = HFEmbedder(siglip)
    assert embedder.prefix_tokens == 0 and embedder.pooling == "pooler"  # attention pooling
    assert embedder.default_layer == f"blocks.{DEPTH - 1}"  # every patch reaches the pooler
    x = torch.randn(1, 3, SIDE, SIDE)
    with torch.no_grad():
        assert torch.allclose(embedder(x), siglip(pixel_values=x).pooler_output, atol=1e-6)
        assert torch.allclose(HFEmbedder(siglip, pooling="mean")(x),
                              siglip(pixel_values=x).last_hidden_state.mean(1), atol=1e-6)
    with pytest.raises(ModelError, match="no class token"):
        HFEmbedder(siglip, pooling="cls")


def test_a_dual_encoder_folder_gives_its_vision_tower(tmp_path):
    torch.manual_seed(0)
    text = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                intermediate_size=64, vocab_size=64, bos_token_id=0, eos_token_id=1,
                pad_token_id=1)
    clip = transformers.CLIPModel(transformers.CLIPConfig(
        vision_config=TINY, text_config=text, projection_dim=16)).eval()
    clip.save_pretrained(tmp_path)
    embedder = load_hf(tmp_path)
    assert type(embedder.model).__name__ == "CLIPVisionModelWithProjection"
    assert embedder.pooling == "image_embeds"
    x = torch.randn(2, 3, SIDE, SIDE)
    with torch.no_grad():
        want = clip.get_image_features(pixel_values=x)
        want = want if isinstance(want, torch.Tensor) else want.pooler_output  # 4.x: a tensor
        assert torch.allclose(embedder(x), want, atol=1e-6)


def test_a_classifier_folder_gives_its_base_model_without_a_random_pooler(tmp_path):
    torch.manual_seed(0)
    classifier = transformers.ViTForImageClassification(transformers.ViTConfig(**TINY)).eval()
    classifier.save_pretrained(tmp_path)
    embedder = load_hf(tmp_path)
    assert type(embedder.model).__name__ == "ViTModel"
    assert embedder.pooling == "cls"  # the pooler's weights are not in the folder
    x = torch.randn(2, 3, SIDE, SIDE)
    with torch.no_grad():
        want = classifier.vit(pixel_values=x).last_hidden_state[:, 0]
        assert torch.allclose(embedder(x), want, atol=1e-6)


class _TupleBlock(nn.Module):
    """A block as transformers 4.x writes them: it returns (hidden_states, attentions)."""

    def __init__(self, width: int):
        super().__init__()
        self.mix = nn.Linear(width, width)

    def forward(self, hidden):
        return hidden + torch.relu(self.mix(hidden)), None


class _TupleViT(nn.Module):
    main_input_name = "pixel_values"

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.config = SimpleNamespace(patch_size=PATCH, image_size=SIDE, num_channels=3,
                                      num_hidden_layers=2)
        self.patches = nn.Conv2d(3, 16, PATCH, PATCH)
        self.cls = nn.Parameter(torch.randn(1, 1, 16))
        self.layers = nn.ModuleList([_TupleBlock(16) for _ in range(2)])

    def forward(self, pixel_values, return_dict=True):
        hidden = self.patches(pixel_values).flatten(2).transpose(1, 2)
        hidden = torch.cat([self.cls.expand(len(hidden), -1, -1), hidden], dim=1)
        for layer in self.layers:
            hidden = layer(hidden)[0]
        return SimpleNamespace(last_hidden_state=hidden)


def test_blocks_that_return_tuples_are_tapped():
    embedder = HFEmbedder(_TupleViT(), pooling="mean")
    assert embedder.pooling == "mean" and embedder.default_layer == "blocks.1"
    explainer = hf_explainer(embedder, layer="block:0", model_name="tuples")
    x = torch.randn(1, 3, SIDE, SIDE)
    features, embedding = explainer.stream_a.features_and_embedding(x)
    assert features.shape == (1, 17, 16)  # the token tensor, not the block's tuple
    (grad,) = torch.autograd.grad(embedding.sum(), features)
    assert grad[:, 1:].abs().sum() > 0  # what the tap returns is what the next block sees
    c = explainer.contributions(x)
    assert c.grid == (4, 4) and torch.isfinite(c.positions).all()


# -- preprocessing --------------------------------------------------------------------------------

def test_preprocessing_comes_from_the_processor_config(saved):
    folder, model = saved["dinov2"]
    pre = hf_preprocess(folder, model.config)
    assert pre.size == (SIDE, SIDE)  # crop_size: the whole image resized to it, no crop
    assert tuple(pre.mean) == pytest.approx((0.485, 0.456, 0.406))
    assert tuple(pre.std) == pytest.approx((0.229, 0.224, 0.225))
    assert pre.resample == "bicubic" and not pre.keep_aspect
    clip = hf_preprocess(saved["clip"][0], saved["clip"][1].config)
    assert clip.size == (SIDE, SIDE) and tuple(clip.mean) == pytest.approx(CLIP_MEAN)
    vit = hf_preprocess(saved["vit"][0], saved["vit"][1].config)
    assert vit.size == (SIDE, SIDE) and vit.resample == "bilinear"
    # the explainer uses it
    explainer = zoo.resolve(f"hf:{folder}")
    assert explainer.transform_a == pre


def test_preprocessing_rescale_and_fallback(saved, tmp_path):
    _, model = saved["vit"]
    # no file: the config's image_size, mean and std 0.5
    fallback = hf_preprocess(tmp_path, model.config)
    assert fallback.size == (SIDE, SIDE) and tuple(fallback.mean) == FALLBACK_MEAN
    assert hf_preprocess(None, model.config) == fallback
    # a model that wants 0..255 pixels minus a mean of 127.5
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(
        {"size": 24, "do_rescale": False, "image_mean": 127.5, "image_std": 1.0,
         "resample": 0}))
    raw = hf_preprocess(tmp_path, model.config)
    image = Image.fromarray(np.full((24, 24, 3), 200, dtype=np.uint8))
    assert raw.size == (24, 24) and raw.resample == "nearest"
    assert torch.allclose(raw(image), torch.full((3, 24, 24), 200 - 127.5))
    (tmp_path / "preprocessor_config.json").write_text("[1, 2]")
    with pytest.raises(ModelError, match="preprocessing settings"):
        hf_preprocess(tmp_path, model.config)


# -- the explainer, the command line, the web app --------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_resolve_gives_an_explainer_one_block_before_the_end(saved, pictures, kind):
    folder, model = saved[kind]
    explainer = zoo.resolve(f"hf:{folder}")
    assert explainer.model_name == f"hf:{folder}"
    assert explainer.stream_a.layer_name == f"blocks.{DEPTH - 2}"
    assert explainer.similarity.name == "cosine"
    explanation = explainer.explain(*pictures)
    assert np.isfinite(explanation.score)
    assert explanation.a.grid == (SIDE // PATCH, SIDE // PATCH)
    a, b = (explainer.prepare(p).tensor for p in pictures)
    own = _own_embedding(kind, model, torch.cat([a, b]))
    assert explanation.score == pytest.approx(float(F.cosine_similarity(own[:1], own[1:])),
                                              abs=1e-5)
    assert zoo.resolve(f"hf:{folder}", layer="block:-1").stream_a.layer_name == \
        f"blocks.{DEPTH - 1}"


@pytest.mark.parametrize("kind", KINDS)
def test_every_head_path_agrees_with_the_reference_path(saved, kind):
    """The tape's replays (reverse, forward) see the head behind the tap as the tangents
    through the whole model do, whatever the engine's exactness."""
    stream = zoo.resolve(f"hf:{saved[kind][0]}").stream_a
    x = torch.randn(2, 3, SIDE, SIDE)
    reference = stream.contributions(x, strategy="tangents")
    scale = float(reference.positions.abs().max())
    for strategy in ("auto", "reverse", "forward"):
        got = stream.contributions(x, strategy=strategy)
        assert got.path != "tangents"  # the tape recorded and replayed the head
        if strategy == "auto":  # one block read at the class token: one packed replay
            assert got.path == "whole head, packed"
        assert torch.allclose(got.positions, reference.positions, atol=1e-5 * scale, rtol=0)
        assert torch.allclose(got.embedding, reference.embedding, atol=1e-6)


def test_cli_pair_with_a_hf_folder(saved, pictures, tmp_path):
    folder, _ = saved["dinov2"]
    out = tmp_path / "out"
    assert main(["pair", *pictures, "--model", f"hf:{folder}", "--out", str(out)]) == 0
    result = json.loads((out / "result.json").read_text())
    assert np.isfinite(result["score"]) and result["similarity"] == "cosine"
    assert list(result["grid_a"]) == [SIDE // PATCH, SIDE // PATCH]
    assert (out / "overall.png").is_file()
    again = tmp_path / "again"
    assert main(["pair", *pictures, "--model", f"hf:{folder}", "--layer", "block:0",
                 "--out", str(again)]) == 0
    assert json.loads((again / "result.json").read_text())["score"] == \
        pytest.approx(result["score"], abs=1e-5)  # the same embeddings, another layer


def test_cli_index_build_and_search_with_a_hf_folder(saved, pictures, tmp_path, capsys):
    folder, _ = saved["clip"]
    gallery = _noise_gallery(tmp_path / "gallery", 4, seed=2)
    out = tmp_path / "index"
    assert main(["index", "build", str(gallery), "--model", f"hf:{folder}", "--out", str(out),
                 "--quiet"]) == 0
    from simexplain.retrieval import MANIFEST
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["model"] == f"hf:{folder}" and manifest["layer"] == f"blocks.{DEPTH - 2}"
    capsys.readouterr()
    # an index folder is data: the hf: folder its manifest names is not loaded from there
    assert main(["search", str(out), pictures[0], "-k", "2", "--json"]) == 2
    assert f"pass --model hf:{folder}" in capsys.readouterr().err
    # named on the command line, the same model answers the query (fingerprint checked)
    assert main(["search", "--model", f"hf:{folder}", str(out), pictures[0], "-k", "2",
                 "--json"]) == 0
    assert "g" in capsys.readouterr().out


def test_web_app_serves_a_hf_folder(saved):
    from fastapi.testclient import TestClient

    from simexplain.web import create_app
    folder, _ = saved["vit"]
    rng = np.random.default_rng(3)
    samples = [(f"s{i}", Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)))
               for i in range(2)]
    app = create_app(model=f"hf:{folder}", samples=samples, models=[])
    with TestClient(app, base_url="http://localhost") as client:
        models = client.get("/api/models").json()
        assert models["default"] == f"hf:{folder}"
        info = models["models"][0]
        assert info["name"] == f"hf:{folder}" and info["loaded"]
        assert info["similarity"] == "cosine" and info["input_size"] == SIDE
        response = client.post("/api/explain", json={"a": "s0", "b": "s1"})
        assert response.status_code == 200, response.text
        assert np.isfinite(response.json()["score"])


# -- bad input ------------------------------------------------------------------------------------

def test_transformers_not_installed_is_a_clear_error(saved, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import fails
    with pytest.raises(ModelError, match=r"pip install 'simexplain\[hf\]'"):
        load_hf(saved["vit"][0])


def test_a_folder_that_is_not_a_saved_model(tmp_path, pictures):
    with pytest.raises(ModelError, match="not a saved Hugging Face model"):
        zoo.resolve(f"hf:{tmp_path}")
    with pytest.raises(ModelError, match="folder not found"):
        load_hf(tmp_path / "missing")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match="config.json"):
        load_hf(tmp_path)
    # the command line reports it and exits with 2
    assert main(["pair", *pictures, "--model", f"hf:{tmp_path / 'missing'}",
                 "--out", str(tmp_path / "out")]) == 2


def test_a_model_that_is_not_a_vision_model(tmp_path):
    text = transformers.BertModel(transformers.BertConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        vocab_size=64))
    text.save_pretrained(tmp_path)
    with pytest.raises(ModelError, match="not a vision model"):
        load_hf(tmp_path)
    with pytest.raises(ModelError, match="not a vision model"):
        HFEmbedder(text)


def test_unknown_or_unavailable_pooling(saved):
    with pytest.raises(ModelError, match="unknown pooling 'max'.*auto, image_embeds"):
        load_hf(saved["vit"][0], pooling="max")
    with pytest.raises(ModelError, match="has no image_embeds"):
        load_hf(saved["vit"][0], pooling="image_embeds")


def test_unknown_layer_lists_the_valid_ones(saved, pictures, tmp_path, capsys):
    folder, _ = saved["vit"]
    for bad in ("blocks.7", "encoder.nothing", "block:5", 3, -4):
        with pytest.raises(LayerError, match="blocks.0"):
            zoo.resolve(f"hf:{folder}", layer=bad)
    assert main(["pair", *pictures, "--model", f"hf:{folder}", "--layer", "blocks.9",
                 "--out", str(tmp_path)]) == 2
    assert "blocks.0, blocks.1, blocks.2" in capsys.readouterr().err


def test_errors_are_simexplain_errors():
    assert issubclass(ModelError, SimexplainError) and issubclass(LayerError, SimexplainError)


# exactness: needs the frozen-gates engine (issue 22 item 1)

@pytest.mark.parametrize("blocks_before_end", [1, 2])
@pytest.mark.parametrize("kind", KINDS)
def test_decomposition_is_exact(saved, kind, blocks_before_end):
    folder, model = saved[kind]
    explainer = zoo.resolve(f"hf:{folder}", layer=f"block:{-1 - blocks_before_end}")
    x = torch.randn(2, 3, SIDE, SIDE)
    c = explainer.contributions(x)
    embedding = _own_embedding(kind, model, x)  # the HF model itself, not the adapter
    tokens = getattr(c, "tokens", None)
    total = c.positions.sum(1) + (tokens.sum(1) if tokens is not None else 0)
    residual = (total - embedding).norm() / embedding.norm()
    assert residual <= 1e-4, f"{kind}, {blocks_before_end} block(s) deep: residual {residual:.2e}"


@pytest.mark.parametrize("kind", KINDS)
def test_the_map_one_block_deep_is_spatial(saved, pictures, kind):
    folder, _ = saved[kind]
    explanation = zoo.resolve(f"hf:{folder}", layer="block:-2").explain(*pictures)
    overall = np.asarray(explanation.overall_a, dtype=np.float64)
    assert overall.std() > 1e-3 * abs(overall.mean())


@pytest.mark.parametrize("settings,match", [
    ({"size": 24, "resample": "sharp"}, "unknown resample filter 'sharp'"),  # was a ValueError
    ({"size": 0}, r"input size is \(height, width\) in whole pixels >= 1, got \(0, 0\)"),
    ({"size": {"height": -3, "width": 8}}, r"got \(-3, 8\)"),
])
def test_preprocessing_settings_that_cannot_be_used(tmp_path, settings, match):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(settings))
    with pytest.raises(ModelError, match="preprocessor_config.json: cannot read the "
                                         f"preprocessing settings .*{match}"):
        hf_preprocess(tmp_path)


@pytest.mark.parametrize("kind", KINDS)
def test_cli_index_build_explain_with_a_hf_folder(saved, pictures, tmp_path, capsys,
                                                  monkeypatch, kind):
    """`index build --explain` on a class-token transformer: the prefix tokens' rows are
    cached, and hits explained from the cache (no model pass over them) equal the model's
    own `explain` of each pair, token shares included, their rows summing to the model's
    own output."""
    from simexplain.retrieval import MANIFEST, Index
    folder, model = saved[kind]
    gallery = _noise_gallery(tmp_path / "gallery", 5, seed=4)
    out = tmp_path / "index"
    assert main(["index", "build", str(gallery), "--model", f"hf:{folder}", "--out", str(out),
                 "--explain", "--quiet"]) == 0
    assert "with explain cache" in capsys.readouterr().out
    assert json.loads((out / MANIFEST).read_text())["explain"]["tokens"] == PREFIX_TOKENS[kind]
    explainer = zoo.resolve(f"hf:{folder}")
    index = Index.load(out, explainer)
    with monkeypatch.context() as patch:
        def refuse(*args, **kwargs):
            raise AssertionError("the model ran on a hit")
        patch.setattr(explainer, "sides", refuse)
        hits = index.search(pictures[0], k=5, explain=True)
    for hit in hits:
        pair, direct = hit.explanation, explainer.explain(pictures[0], hit.path)
        assert pair.score == pytest.approx(direct.score, abs=1e-5)
        assert pair.token_share_b == pytest.approx(direct.token_share_b, abs=1e-5)
        torch.testing.assert_close(pair.overall_b, direct.overall_b, rtol=1e-4, atol=1e-6)
        side = pair.b
        own = _own_embedding(kind, model, explainer.prepare(hit.path, "b").tensor)[0]
        torch.testing.assert_close(side.contributions.sum(0) + side.tokens.sum(0), own,
                                   rtol=1e-4, atol=1e-5)
