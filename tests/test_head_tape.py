"""The fast head-analysis paths (recorded head, pooled shares, forward tangents or reverse-mode
Jacobian) give the same contributions as the reference path (one tangent per position through
the whole model), and those contributions sum to the model's own embedding."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import simexplain.adapters as adapters
from simexplain import SimexplainError
from simexplain.adapters import SplitModel
from simexplain.toy import HEADS, HeadModel, L2Norm, TokenModel, trunk


class Upsampled(nn.Module):
    """Max pooling with ties: nearest upsampling repeats each value four times."""

    def __init__(self, pool: str):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.ReLU(),
                                      nn.Upsample(scale_factor=2, mode="nearest"))
        self.pool = pool
        self.fc = nn.Linear(8, 6)

    def forward(self, x):
        a = self.features(x)
        pooled = F.adaptive_max_pool2d(a, 1).flatten(1) if self.pool == "adaptive" else a.amax((2, 3))
        return F.normalize(self.fc(pooled), dim=1)


class Concat(nn.Module):
    """Average and max pooling concatenated (the layer output is read twice)."""

    def __init__(self):
        super().__init__()
        self.features = trunk()
        self.fc = nn.Linear(64, 8)

    def forward(self, x):
        a = self.features(x)
        return self.fc(torch.cat([a.mean((2, 3)), a.amax((2, 3))], 1))


class ConvHead(nn.Module):
    """A 1x1 convolution, BatchNorm and in-place ReLU before pooling (channels mix per position)."""

    def __init__(self):
        super().__init__()
        self.features = trunk()
        self.head = nn.Sequential(nn.Conv2d(32, 24, 1), nn.BatchNorm2d(24), nn.ReLU(inplace=True),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 8), L2Norm())

    def forward(self, x):
        return self.head(self.features(x))


class FlattenBN(nn.Module):
    """Flatten, Linear, BatchNorm1d (the paper's 7x7 re-identification form), wide embedding."""

    def __init__(self):
        super().__init__()
        self.features = trunk()
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * 8 * 8, 96), nn.BatchNorm1d(96))
        with torch.no_grad():
            self.head[2].running_mean.normal_(0, 0.1)
            self.head[2].running_var.uniform_(0.5, 1.5)

    def forward(self, x):
        return self.head(self.features(x))


class PositionMixer(nn.Module):
    """A Linear over the positions of each channel (view(B, C, P) then Linear(P -> 4)), then
    flatten and Linear: not a pooling head, analysed whole."""

    def __init__(self):
        super().__init__()
        self.features = trunk()
        self.mix = nn.Linear(64, 4)
        self.fc = nn.Linear(32 * 4, 8)

    def forward(self, x):
        a = self.features(x)
        return self.fc(self.mix(a.view(len(a), 32, -1)).flatten(1))


def _model(name):
    torch.manual_seed(0)
    if name in HEADS:
        return HeadModel(head=name).eval(), "features"
    if name.startswith("tokens-"):
        return TokenModel(pool=name[len("tokens-"):]).eval(), "tokens"
    return {"ties-adaptive": lambda: Upsampled("adaptive"), "ties-amax": lambda: Upsampled("amax"),
            "concat": Concat, "conv-head": ConvHead, "flatten-bn": FlattenBN,
            "position-mixer": PositionMixer}[name]().eval(), "features"


# the path `auto` takes on each model (P = 64 positions, D = 8 except flatten-bn)
EXPECTED_PATH = {
    "gap": "mean pooling", "gmp": "argmax pooling", "gem": "mean pooling",
    "flatten": "linear pooling", "mlp": "mean pooling", "mlp-leaky": "mean pooling",
    "layernorm": "mean pooling", "dropout-bn": "mean pooling", "gelu": "mean pooling",
    "softplus": "mean pooling",
    "tokens-norm-mean": "whole head", "tokens-mean": "mean pooling", "tokens-cls": "select pooling",
    "ties-adaptive": "argmax pooling", "ties-amax": "amax pooling", "concat": "whole head",
    "conv-head": "whole head", "flatten-bn": "linear pooling", "position-mixer": "whole head",
}
MODELS = list(EXPECTED_PATH)
# whole heads that are affine once their gates and statistics are frozen: no derivatives (a
# norm per token, then the mean of the tokens: every position from one replay, "packed")
AFFINE_WHOLE_HEADS = {"tokens-norm-mean": "whole head, packed",
                      "conv-head": "whole head, batched", "position-mixer": "whole head, batched"}


def _inputs(n=3, height=32, width=32, seed=1):
    return torch.randn(n, 3, height, width, generator=torch.Generator().manual_seed(seed))


def _no_structure(monkeypatch):
    import simexplain.head as head
    monkeypatch.setattr(head, "find_pooling", lambda *_: None)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("strategy", ["auto", "batched", "forward", "reverse"])
# the reverse path's constant term from its own pullbacks, or (large pullbacks) a forward pass
@pytest.mark.parametrize("largest_pullback", [1 << 24, 0])
def test_fast_paths_equal_the_reference_path(name, strategy, largest_pullback, monkeypatch):
    import simexplain.head as head
    monkeypatch.setattr(head, "PER_ROW_WORK", largest_pullback)
    model, layer = _model(name)
    split = SplitModel(model, layer)
    x = _inputs()
    reference = split.contributions(x, "tangents")
    fast = split.contributions(x, strategy)
    assert reference.path == "tangents"
    assert fast.path.startswith(EXPECTED_PATH[name])
    if strategy not in ("auto", "batched"):
        assert fast.path.endswith(strategy)
    elif name in AFFINE_WHOLE_HEADS:  # affine once frozen: no derivatives at all
        assert fast.path == AFFINE_WHOLE_HEADS[name]
    elif EXPECTED_PATH[name] == "whole head":  # max pooling is not affine: another path
        assert fast.path != "whole head, batched"
    scale = float(reference.positions.abs().max())
    if reference.tokens is not None:
        scale = max(scale, float(reference.tokens.abs().max()))
    torch.testing.assert_close(fast.positions, reference.positions, rtol=0, atol=1e-5 * scale)
    torch.testing.assert_close(fast.constant, reference.constant, rtol=0, atol=1e-5 * scale)
    assert (fast.tokens is None) == (reference.tokens is None) == (not name.startswith("tokens"))
    if fast.tokens is not None:  # the class token's row, kept apart from the grid
        torch.testing.assert_close(fast.tokens, reference.tokens, rtol=0, atol=1e-5 * scale)
    torch.testing.assert_close(fast.residual, reference.residual, rtol=1e-2, atol=1e-6)
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(fast.embedding, expected)
    if name != "softplus":  # exact heads: the contributions sum to the model's own embedding
        total = fast.positions.sum(1) + (0 if fast.tokens is None else fast.tokens.sum(1))
        torch.testing.assert_close(total, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["gap", "gmp", "gem", "flatten", "tokens-mean", "ties-amax"])
@pytest.mark.parametrize("strategy", ["forward", "reverse"])
def test_whole_head_paths_equal_the_pooled_paths(name, strategy, monkeypatch):
    model, layer = _model(name)
    split = SplitModel(model, layer)
    x = _inputs(n=2, seed=2)
    pooled = split.contributions(x, strategy)
    _no_structure(monkeypatch)
    whole = split.contributions(x, strategy)
    assert whole.path == f"whole head, {strategy}"
    torch.testing.assert_close(whole.positions, pooled.positions, rtol=1e-4, atol=1e-6)


def test_ties_in_max_pooling_follow_the_pooling_function():
    """Each maximum is repeated in a 2x2 block: adaptive max pooling gives it to one position
    (at most one per channel carries anything), amax splits it equally over the four."""
    x = _inputs(n=1, seed=3)
    for pool in ("adaptive", "amax"):
        model, layer = _model(f"ties-{pool}")
        c = SplitModel(model, layer).contributions(x)
        assert c.grid == (16, 16)
        linear = (c.positions - c.constant[:, None] / 256)[0]  # (256, D)
        carrying = int((linear.abs().sum(-1) > 1e-9).sum())
        if pool == "adaptive":
            assert 0 < carrying <= 8
        else:
            blocks = linear.view(8, 2, 8, 2, -1)
            assert carrying >= 4
            torch.testing.assert_close(blocks, blocks[:, :1, :, :1].expand_as(blocks))


def test_non_square_grid_and_two_streams():
    model, layer = _model("gmp")
    x = _inputs(n=2, height=32, width=48)
    split = SplitModel(model, layer)
    fast, reference = split.contributions(x), split.contributions(x, "tangents")
    assert fast.grid == (8, 12) and fast.positions.shape == (2, 96, 8)
    torch.testing.assert_close(fast.positions, reference.positions, rtol=1e-4, atol=1e-6)


def test_batch_rows_equal_single_images():
    model, layer = _model("conv-head")
    split = SplitModel(model, layer)
    x = _inputs(n=4, seed=4)
    batch = split.contributions(x).positions
    for i in range(4):
        torch.testing.assert_close(batch[i], split.contributions(x[i:i + 1]).positions[0],
                                   rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("strategy", ["forward", "reverse"])
@pytest.mark.parametrize("structured", [True, False])
def test_chunks_give_the_same_contributions_and_never_rerun_the_trunk(strategy, structured,
                                                                      monkeypatch):
    model, layer = _model("mlp")
    split = SplitModel(model, layer)
    x = _inputs(n=2, seed=9)
    whole = split.contributions(x, strategy).positions
    if not structured:
        _no_structure(monkeypatch)
    runs = []
    model.features[0].register_forward_hook(lambda *_: runs.append(1))
    monkeypatch.setattr(adapters, "TANGENT_BUDGET", 2 * 32 * 64 * 3)  # a few at a time
    chunked = split.contributions(x, strategy).positions
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-7)
    assert len(runs) == 1


def test_a_head_the_tape_cannot_replay_falls_back_to_tangents():
    """Calls made with torch functions disabled are invisible to the recording: the replay
    cannot give the model's embedding, so the reference path is taken."""

    class Hidden(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = trunk()
            self.fc = nn.Linear(32, 8)

        def forward(self, x):
            a = self.features(x)
            with torch._C.DisableTorchFunction():
                return self.fc(a.mean((2, 3)))

    torch.manual_seed(0)
    model = Hidden().eval()
    x = _inputs(n=2)
    c = SplitModel(model, "features").contributions(x)
    assert c.path == "tangents"
    with torch.no_grad():
        torch.testing.assert_close(c.positions.sum(1), model(x), rtol=1e-4, atol=1e-5)


def test_unknown_strategy_is_a_clear_error():
    model, layer = _model("gap")
    with pytest.raises(SimexplainError, match="unknown strategy 'fast'"):
        SplitModel(model, layer).contributions(_inputs(n=1), "fast")


@pytest.mark.parametrize("head", ["gap", "gmp", "flatten"])
@pytest.mark.parametrize("largest", [1 << 17, 0])  # 0: every CPU input counts as large
def test_explain_one_pass_for_both_images_equals_one_image_at_a_time(head, largest,
                                                                      monkeypatch):
    """explain() runs a one-stream pair as one batch of two (large CPU inputs one at a time):
    each side must equal that image decomposed alone, and the pair's score the model's own."""
    from simexplain import Explainer
    import simexplain.explainer as explainer_module
    monkeypatch.setattr(explainer_module, "CPU_PAIR_BATCH_NUMEL", largest)
    torch.manual_seed(1)
    model = HeadModel(head).eval()
    explainer = Explainer(model, "features")
    batches = []
    analyse = explainer.contributions
    monkeypatch.setattr(explainer, "contributions",
                        lambda x, side="a": batches.append(len(x)) or analyse(x, side))
    a, b = torch.randn(1, 3, 32, 32), torch.randn(1, 3, 32, 32)
    result = explainer.explain(a, b)
    assert batches == ([2] if largest else [1, 1])
    for side, x in (("a", a), ("b", b)):
        alone = SplitModel(model, "features").contributions(x)
        torch.testing.assert_close(result._sides(side)[0].contributions, alone.positions[0],
                                   rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        expected = F.cosine_similarity(model(a), model(b)).item()
    assert result.score == pytest.approx(expected, abs=1e-6)


def test_pairwise_map_is_computed_on_first_use_and_total_matches_its_sum():
    from simexplain import Explainer
    torch.manual_seed(2)
    explainer = Explainer(HeadModel("gap").eval(), "features")
    result = explainer.explain(torch.randn(1, 3, 32, 32), torch.randn(1, 3, 32, 32))
    assert "pairwise_flat" not in vars(result)  # the overall maps did not need it
    total = result.total
    assert float(result.pairwise_flat.sum()) == pytest.approx(total, abs=1e-9)
    assert "pairwise_flat" in vars(result)


class ModeAroundLayer(torch.nn.Module):
    """Enters a torch function mode of its own (a device context) around the explained layer
    and leaves it before the head: the mode's exit takes the tape's recording mode off the
    stack."""

    def __init__(self):
        super().__init__()
        self.features = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x):
        with torch.device("cpu"):
            a = self.features(x)
        return F.normalize(self.fc(a.mean((2, 3))), dim=1)


def test_a_recording_cut_short_by_the_models_own_mode_falls_back_to_the_reference_path():
    from torch.overrides import _get_current_function_mode_stack
    model = ModeAroundLayer().eval()
    x = _inputs(n=2)
    assert _get_current_function_mode_stack() == []
    c = SplitModel(model, "features").contributions(x)
    assert _get_current_function_mode_stack() == []  # the stack as it was, nothing left on it
    assert c.path == "tangents"
    with torch.no_grad():
        torch.testing.assert_close(c.positions.sum(1), model(x), rtol=1e-4, atol=1e-5)
    # a model without such a mode is recorded, and leaves the stack as it was too
    fast = SplitModel(HeadModel("gap").eval(), "features").contributions(x)
    assert fast.path.startswith("mean pooling") and _get_current_function_mode_stack() == []


class InplaceHead(torch.nn.Module):
    """A head that starts with in-place calls on the layer output and on the pooled vector
    (as DenseNet's does): the reverse path's pullbacks must not refuse them."""

    def __init__(self):
        super().__init__()
        self.features = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x):
        a = F.relu(self.features(x), inplace=True)
        pooled = a.mean((2, 3))
        pooled.mul_(2.0)
        return F.normalize(self.fc(pooled), dim=1)


@pytest.mark.parametrize("structured", [True, False])
@pytest.mark.parametrize("strategy", ["forward", "reverse"])
def test_in_place_head_calls_keep_the_fast_paths(structured, strategy, monkeypatch):
    model = InplaceHead().eval()
    x = _inputs(n=2)
    reference = SplitModel(model, "features").contributions(x, "tangents")
    if not structured:
        _no_structure(monkeypatch)
    fast = SplitModel(model, "features").contributions(x, strategy)
    assert fast.path.endswith(strategy)  # not the reference path it falls back to
    torch.testing.assert_close(fast.positions, reference.positions, rtol=1e-4, atol=1e-6)


def test_sources_follow_tensors_made_from_the_models_own_back_to_them():
    """What a head makes without reading the layer output (a probe repeated, then scaled) is
    followed back to the tensors it was made from; a call that returns its input as it was
    (contiguous, in place) makes nothing new."""
    from simexplain.head_tape import HeadTape
    tape = HeadTape({})
    probe = torch.nn.Parameter(torch.ones(3))
    other = torch.ones(6)
    with tape:
        same = probe.contiguous()
        repeated = probe.repeat(2)
        scaled = (repeated * other).contiguous()
    assert same is probe and tape.sources([same]) == [same]
    found = tape.sources([scaled, other])
    assert len(found) == 3 and found[0] is probe and found[1] is other and found[2] is other
