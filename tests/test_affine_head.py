"""The cached matrix of affine post-pooling heads (affine_head.py): the same contributions as
the reference path (one tangent per position through the whole model), summing to the
model's own forward embedding, on every head of the toy zoo and the zoo's affine heads; built
anew when the weights change; refused when it disagrees with the autograd path; off on
request."""

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from simexplain import Explainer, adapters, affine_head, zoo
from simexplain.toy import HEADS, L2Norm, trunk
from test_head import images, make  # the toy heads and inputs of the head analysis's tests

# Heads whose post-pooling part is Linear / BatchNorm / Dropout / Flatten / L2 only.
AFFINE_HEADS = ("gap", "gmp", "flatten", "dropout-bn")
CACHED = "affine, cached"


def assert_matches_reference(explainer, x, result):
    """Contributions equal the reference path's to ~1e-5 of the embedding's size, and they
    sum to the embedding of the model's own forward pass."""
    stream = explainer.stream_a
    reference = stream.contributions(x, "tangents")
    with torch.no_grad():
        forward = stream.model(x)
    size = float(forward.abs().max())
    assert torch.allclose(result.embedding, forward, atol=1e-6 * size, rtol=0)
    assert (result.positions - reference.positions).abs().max() <= 1e-5 * size
    assert (result.constant - reference.constant).abs().max() <= 1e-5 * size
    assert (result.positions.sum(1) - forward).abs().max() <= 1e-5 * size


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("normalize", [True, False])
def test_every_toy_head_matches_the_reference_path(head, normalize):
    explainer = Explainer(make(head, normalize), "features")
    x = images(2)
    first = explainer.stream_a.contributions(x)  # builds the entry, checks it, answers by it
    cached = explainer.stream_a.contributions(x)
    assert (cached.path.endswith(CACHED)) == (head in AFFINE_HEADS), cached.path
    # the first call already answers from the checked entry: the same bits as every later
    # call, so a query gives the same scores whatever was explained before it
    assert first.path == cached.path
    assert torch.equal(first.positions, cached.positions)
    assert torch.equal(first.constant, cached.constant)
    # the second call was answered by the known head (no recording) exactly for these heads
    assert explainer.stream_a.affine_heads.known_calls == (head in AFFINE_HEADS)
    if head != "softplus":  # softplus is no gate: first order, and tested so in test_head
        assert_matches_reference(explainer, x, cached)
    if cached.projected is not None:  # max pooling: the whole feature vectors mapped too
        uncached = explainer.stream_a.contributions(x, "reverse")
        assert torch.allclose(cached.projected, uncached.projected, atol=1e-6)


def test_a_scalar_multiple_and_a_batch_norm_before_the_flatten_are_folded_in():
    torch.manual_seed(0)
    model = nn.Sequential(trunk(), nn.AdaptiveAvgPool2d(1), nn.BatchNorm2d(32), nn.Flatten(),
                          nn.Linear(32, 16), L2Norm()).eval()
    with torch.no_grad():
        model[2].running_mean.normal_()
        model[2].running_var.uniform_(0.5, 2)
    scaled = nn.Sequential(model, _Times(3.0)).eval()
    explainer = Explainer(scaled, "0.0")
    x = images(2)
    explainer.stream_a.contributions(x)
    cached = explainer.stream_a.contributions(x)
    assert cached.path.endswith(CACHED)
    assert_matches_reference(explainer, x, cached)


class _Times(nn.Module):
    def __init__(self, factor):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor


ZOO_AFFINE = ("fmnist-gap", "fmnist-gmp", "efficientnet-lite0", "facenet")


@pytest.mark.parametrize("name", ZOO_AFFINE)
def test_zoo_models_with_affine_heads(name):
    explainer = zoo.load(name)
    x = torch.cat([explainer.prepare(image).tensor for image in zoo.entry(name).sample_pair()])
    explainer.stream_a.contributions(x)
    cached = explainer.stream_a.contributions(x)
    assert cached.path.endswith(CACHED), cached.path
    uncached = explainer.stream_a.contributions(x, "reverse")  # autograd, no cache
    with torch.no_grad():
        forward = explainer.stream_a.model(x)
    size = float(forward.abs().max())
    assert (cached.positions - uncached.positions).abs().max() <= 1e-5 * size
    assert (cached.positions.sum(1) - forward).abs().max() <= 1e-5 * size


def _linear(model):
    return next(m for m in model.head if isinstance(m, nn.Linear))


def test_an_in_place_parameter_update_gives_the_new_maps():
    model = make("dropout-bn")
    explainer = Explainer(model, "features")
    x = images(2)
    explainer.stream_a.contributions(x)
    before = explainer.stream_a.contributions(x)
    with torch.no_grad():  # an optimiser step's way: in place, the version counter moves
        _linear(model).weight.mul_(-2.0).add_(0.1)
        model.head[-2].running_mean.add_(0.5)
    after = explainer.stream_a.contributions(x)
    assert not torch.allclose(after.positions, before.positions)
    assert_matches_reference(explainer, x, after)
    assert explainer.stream_a.contributions(x).path.endswith(CACHED)


def test_load_state_dict_and_replaced_parameters_give_the_new_maps():
    model, other = make("gap", seed=0), make("gap", seed=7)
    explainer = Explainer(model, "features")
    x = images(2)
    explainer.stream_a.contributions(x)
    explainer.stream_a.contributions(x)
    model.load_state_dict(other.state_dict())
    assert_matches_reference(explainer, x, explainer.stream_a.contributions(x))
    linear = _linear(model)
    linear.weight = nn.Parameter(torch.randn_like(linear.weight))  # a new tensor
    assert_matches_reference(explainer, x, explainer.stream_a.contributions(x))
    linear.weight.data = torch.randn_like(linear.weight)  # new storage, same Parameter
    result = explainer.stream_a.contributions(x)
    assert_matches_reference(explainer, x, result)
    assert explainer.stream_a.contributions(x).path.endswith(CACHED)


def test_other_dtypes_and_batch_sizes_are_entries_of_their_own():
    model = make("flatten")
    explainer = Explainer(model, "features")
    for x in (images(1), images(3), images(2).double()):  # Module.to: new .data, same tensors
        explainer.stream_a.model.to(x.dtype)
        explainer.stream_a.contributions(x)
        result = explainer.stream_a.contributions(x)
        assert result.path == f"linear pooling, {CACHED}"
        assert_matches_reference(explainer, x, result)
    # the cache keys on the pooled size, not the batch: float32 and float64 entries only
    assert len(explainer.stream_a.affine_heads) == 2


def test_an_entry_that_disagrees_with_autograd_is_refused(monkeypatch):
    wrong = affine_head._batch_norm

    def shifted(**arguments):  # a mistake in the folding: the check must catch it
        folded = wrong(**arguments)
        folded.bias = folded.bias + 1.0
        return folded
    monkeypatch.setattr(affine_head, "_batch_norm", shifted)
    explainer = Explainer(make("dropout-bn"), "features")
    x = images(2)
    for _ in range(3):
        result = explainer.stream_a.contributions(x)
        assert not result.path.endswith(CACHED)
        assert_matches_reference(explainer, x, result)


def test_the_switch_turns_the_cache_off(monkeypatch):
    explainer = Explainer(make("gap"), "features")
    x = images(2)
    monkeypatch.setenv(affine_head.AFFINE_SWITCH, "0")
    for _ in range(2):
        result = explainer.stream_a.contributions(x)
        assert result.path == "mean pooling, reverse"
    assert len(explainer.stream_a.affine_heads) == 0
    monkeypatch.setenv(affine_head.AFFINE_SWITCH, "1")
    explainer.stream_a.contributions(x)
    assert explainer.stream_a.contributions(x).path == f"mean pooling, {CACHED}"


def test_cuda_graphs_are_never_used_on_the_cpu(monkeypatch):
    monkeypatch.setenv(affine_head.GRAPH_SWITCH, "1")
    assert not affine_head.graphs_enabled(torch.device("cpu"))

    def no_capture(*_args, **_kwargs):
        raise AssertionError("a CUDA graph was captured on the CPU")
    monkeypatch.setattr(affine_head, "_CapturedCall", no_capture)
    explainer = Explainer(make("gap"), "features")
    x = images(2)
    for _ in range(4):  # the same shape again and again
        result = explainer.stream_a.contributions(x)
    assert result.path.endswith(CACHED)


def test_graph_bookkeeping_captures_a_repeated_shape_once_and_falls_back_on_failure(monkeypatch):
    """The CUDA-graph logic with the capture stood in for (no GPU here): a shape is captured on
    its second call and replayed after; a failed capture leaves the head eager for good."""
    captured = []

    class Recorded:  # replays by calling the function: what a graph replay computes
        def __init__(self, fn, inputs):
            captured.append(tuple(t.shape for t in inputs))
            self.fn = fn

        def __call__(self, *inputs):
            return self.fn(*inputs)
    monkeypatch.setattr(affine_head, "graphs_enabled", lambda device: True)
    monkeypatch.setattr(affine_head, "_CapturedCall", Recorded)
    explainer = Explainer(make("gap"), "features")
    x = images(2)
    eager = explainer.stream_a.contributions(x, "reverse")
    for _ in range(5):
        result = explainer.stream_a.contributions(x)
        assert torch.allclose(result.positions, eager.positions, atol=1e-6)
    assert len(captured) == 1  # one shape, captured once
    explainer.stream_a.contributions(images(3))  # another batch size: a shape of its own
    explainer.stream_a.contributions(images(3))
    assert len(captured) == 2

    def broken(fn, inputs):
        raise RuntimeError("capture failed")
    monkeypatch.setattr(affine_head, "_CapturedCall", broken)
    for n in (4, 4, 4, 5, 5):
        result = explainer.stream_a.contributions(images(n))
        assert result.path.endswith(CACHED)
        assert_matches_reference(explainer, images(n), result)


# -- heads known by input size: later calls without recording the head ----------------------------
class _Counted:
    """Counts the model's forward passes (a forward pre-hook) and the HeadTapes made."""

    def __init__(self, model, monkeypatch):
        self.forwards = self.tapes = 0
        model.register_forward_pre_hook(lambda *_: self._forward())
        made = adapters.HeadTape

        def tape(*args, **kwargs):
            self.tapes += 1
            return made(*args, **kwargs)
        monkeypatch.setattr(adapters, "HeadTape", tape)

    def _forward(self):
        self.forwards += 1

    def reset(self):
        self.forwards = self.tapes = 0


def _known_calls(explainer):
    return explainer.stream_a.affine_heads.known_calls


def _known_after_two_calls(model, monkeypatch):
    """An explainer of `model` whose head is known after two calls on a batch x (the second
    answered without recording), its counter, and x."""
    explainer = Explainer(model, "features")
    counted = _Counted(model, monkeypatch)
    x = images(2)
    explainer.stream_a.contributions(x)
    explainer.stream_a.contributions(x)
    assert _known_calls(explainer) == 1
    return explainer, counted, x


@pytest.mark.parametrize("head", AFFINE_HEADS)
def test_a_known_head_answers_later_calls_without_recording(head, monkeypatch):
    model = make(head)
    explainer = Explainer(model, "features")
    counted = _Counted(model, monkeypatch)
    x = images(2)
    first = explainer.stream_a.contributions(x)
    assert counted.tapes == 1 and _known_calls(explainer) == 0
    counted.reset()
    for other in (x, images(2, seed=5), images(1, seed=6)):  # any batch of this input size
        result = explainer.stream_a.contributions(other)
        assert result.path == first.path
        assert_matches_reference(explainer, other, result)
    counted.reset()
    explainer.stream_a.contributions(x)
    assert counted.tapes == 0 and counted.forwards == 1  # one plain forward pass, no tape
    assert _known_calls(explainer) == 4
    assert torch.equal(explainer.stream_a.contributions(x).positions, first.positions)


class _Switching(nn.Module):
    """A head that changes between calls (a plain attribute, `factor`, no tensor of the
    model): the known head no longer is the model's."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = trunk()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 8)
        self.factor = 1.0

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1)) * self.factor


def test_a_head_that_changes_falls_back_to_the_recording_for_good(monkeypatch):
    model = _Switching().eval()
    explainer, counted, x = _known_after_two_calls(model, monkeypatch)
    model.factor = -2.0
    counted.reset()
    result = explainer.stream_a.contributions(x)
    assert counted.forwards == 2 and counted.tapes == 1  # tried, disagreed, recorded
    assert_matches_reference(explainer, x, result)
    counted.reset()
    for _ in range(2):  # inputs of this size are recorded from now on: no second forward
        result = explainer.stream_a.contributions(x)
        assert_matches_reference(explainer, x, result)
    assert _known_calls(explainer) == 1
    assert result.path == f"mean pooling, {CACHED}"


@pytest.mark.parametrize("change", ["in place", "replaced", "new data", "buffer", "module"])
def test_a_changed_parameter_is_seen_before_the_known_head_runs(change, monkeypatch):
    model = make("dropout-bn")
    explainer = Explainer(model, "features")
    counted = _Counted(model, monkeypatch)
    x = images(2)
    explainer.stream_a.contributions(x)
    before = explainer.stream_a.contributions(x)
    assert _known_calls(explainer) == 1
    linear = _linear(model)
    with torch.no_grad():
        if change == "in place":
            linear.weight.mul_(-2.0)
        elif change == "replaced":
            linear.weight = nn.Parameter(torch.randn_like(linear.weight))
        elif change == "new data":
            linear.weight.data = torch.randn_like(linear.weight)
        elif change == "module":  # a new Linear in the old one's place
            index = list(model.head).index(linear)
            model.head[index] = nn.Linear(linear.in_features, linear.out_features)
        else:
            model.head[-2].running_var = model.head[-2].running_var * 4
    counted.reset()
    after = explainer.stream_a.contributions(x)
    assert counted.forwards == 1 and counted.tapes == 1  # not tried: recorded at once
    assert not torch.allclose(after.positions, before.positions)
    assert_matches_reference(explainer, x, after)
    counted.reset()
    explainer.stream_a.contributions(x)  # known again, with the new weights
    assert counted.tapes == 0 and _known_calls(explainer) == 2


def test_each_input_size_is_known_on_its_own(monkeypatch):
    model = make("gap")
    explainer = Explainer(model, "features")
    counted = _Counted(model, monkeypatch)
    small, large = images(2, size=32), images(2, size=48)
    explainer.stream_a.contributions(small)
    explainer.stream_a.contributions(small)
    counted.reset()
    result = explainer.stream_a.contributions(large)  # another size: recorded first
    assert counted.tapes == 1 and _known_calls(explainer) == 1
    assert result.grid == (12, 12)
    assert_matches_reference(explainer, large, result)
    for x in (large, small, large.double()):
        explainer.stream_a.model.to(x.dtype)
        explainer.stream_a.contributions(x)
        assert_matches_reference(explainer, x, explainer.stream_a.contributions(x))
    # known: small once before, then large and small twice each, large in float64 once (its
    # first call in float64 recorded: another key)
    assert _known_calls(explainer) == 6


class _WritesIntoItsInput(nn.Module):
    """Once `write` is set, the head doubles the layer output in place before pooling."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = trunk()
        self.fc = nn.Linear(32, 8)
        self.write = False

    def forward(self, x):
        a = self.features(x)
        if self.write:
            a.mul_(2.0)
        return self.fc(a.mean((2, 3)))


def test_a_head_that_writes_into_the_layer_output_is_recorded(monkeypatch):
    model = _WritesIntoItsInput().eval()
    explainer, counted, x = _known_after_two_calls(model, monkeypatch)
    model.write = True
    counted.reset()
    result = explainer.stream_a.contributions(x)
    # seen written, then recorded (and, the in-place call being no pooling the tape can
    # replay, answered by the reference path: a third forward pass)
    assert counted.forwards >= 2 and counted.tapes == 1
    assert _known_calls(explainer) == 1
    assert_matches_reference(explainer, x, result)


def test_the_switch_turns_known_heads_off_too(monkeypatch):
    model = make("gap")
    explainer = Explainer(model, "features")
    counted = _Counted(model, monkeypatch)
    x = images(2)
    explainer.stream_a.contributions(x)
    explainer.stream_a.contributions(x)
    monkeypatch.setenv(affine_head.AFFINE_SWITCH, "0")
    counted.reset()
    assert explainer.stream_a.contributions(x).path == "mean pooling, reverse"
    assert counted.tapes == 1 and _known_calls(explainer) == 1


def test_two_stream_models_know_each_stream_on_its_own():
    torch.manual_seed(0)
    street, aerial = make("gap", seed=1), make("dropout-bn", seed=2)
    explainer = Explainer(street, "features", model_b=aerial, layer_b="features")
    a, b = images(1, seed=5, size=32), images(1, seed=6, size=48)
    for _ in range(2):
        result = explainer.explain(a, b)
    assert explainer.stream_a.affine_heads.known_calls == 1
    assert explainer.stream_b.affine_heads.known_calls == 1
    with torch.no_grad():
        expected = torch.nn.functional.cosine_similarity(street(a), aerial(b)).item()
    assert result.score == pytest.approx(expected, abs=1e-6)
    assert float(result.pairwise_flat.sum()) == pytest.approx(expected, abs=1e-5)


class _Meeting(nn.Module):
    """The explained layer of a toy model, wrapped: while `barrier` is set, each call waits
    there for another thread's call, so that two forward passes are inside the layer at once
    (each thread's layer hook registered while the other thread's layer returns)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.barrier = None
        self.met = []  # one entry per call that met the other thread's (append: thread-safe)

    def forward(self, x):
        out = self.inner(x)
        if self.barrier is not None:
            try:
                self.barrier.wait(timeout=30)
                self.met.append(True)
            except threading.BrokenBarrierError:
                pass  # a thread ran a pass more than the other (a refused call, recorded)
        return out


def test_two_threads_explaining_with_one_model_each_get_their_own_maps(monkeypatch):
    """The known head's layer hook takes the layer output of its own thread only: a forward
    pass of the same model in another thread is neither taken for ours (the maps would be of
    the other input) nor counted as a second call of the layer (the head would be refused,
    and every later call recorded)."""
    model = make("dropout-bn")
    model.features = _Meeting(model.features)
    explainer = Explainer(model, "features")
    counted = _Counted(model, monkeypatch)
    pairs = [(images(1, seed=10 + i), images(1, seed=20 + i)) for i in range(2)]
    for a, b in pairs:  # the first records the head, the second is answered by the known head
        explainer.explain(a, b)
    assert _known_calls(explainer) == 1
    counted.reset()
    rounds = 3
    model.features.barrier = threading.Barrier(2)

    def explain_in_turn(a, b):
        return [explainer.explain(a, b) for _ in range(rounds)]
    with ThreadPoolExecutor(2) as pool:
        results = [f.result() for f in [pool.submit(explain_in_turn, *p) for p in pairs]]
    model.features.barrier = None
    # every call was answered by the known head (none refused, none recorded), and met the
    # other thread's in the layer
    assert counted.tapes == 0 and _known_calls(explainer) == 1 + 2 * rounds
    assert counted.forwards == 2 * rounds and len(model.features.met) == 2 * rounds
    for (a, b), explained in zip(pairs, results):
        with torch.no_grad():
            e_a, e_b = model(a)[0], model(b)[0]
        score = float(torch.nn.functional.cosine_similarity(e_a, e_b, dim=0))
        for result in explained:
            assert torch.allclose(result.a.embedding, e_a, atol=1e-6, rtol=0)
            assert torch.allclose(result.b.embedding, e_b, atol=1e-6, rtol=0)
            assert result.score == pytest.approx(score, abs=1e-6)
            assert float(result.pairwise_flat.sum()) == pytest.approx(score, abs=1e-5)
            assert float(result.overall_a_flat.sum()) == pytest.approx(score, abs=1e-5)
            # the maps of this pair: those of the pair explained alone
            alone = explainer.explain(a, b)
            assert torch.equal(result.a.contributions, alone.a.contributions)
            assert torch.equal(result.b.contributions, alone.b.contributions)



def _explained(explainer, work, a, b):
    """What `work` gives for the pair (a, b): the tensors to compare."""
    if work == "explain":
        result = explainer.explain(a, b)
        return result.a.contributions, result.b.contributions, torch.tensor(result.score)
    return explainer.saliency(a, b, "gradcam")  # the layer output captured by a hook


@pytest.mark.parametrize("work", ["explain", "gradcam"])
def test_threads_sharing_a_fresh_model_get_what_each_gets_alone(work):
    """Every hook that simexplain puts on the model acts in its own thread only: the probe's
    (which counts the layer's calls), the recording's and Grad-CAM's capture. Two threads
    explaining with one fresh explainer, each forward pass inside the layer while the other
    thread's runs, get what each gets alone. (Not the reference path, strategy "tangents":
    torch.func.functional_call puts its tangents into the shared model's own biases for the
    duration of its pass.)"""
    model = make("dropout-bn")
    model.features = _Meeting(model.features)
    explainer = Explainer(model, "features")
    forwards = []
    model.register_forward_pre_hook(lambda *_: forwards.append(True))
    pairs = [(images(1, seed=10 + i), images(1, seed=20 + i)) for i in range(2)]
    rounds = 3 if work == "explain" else 1  # explain: probe, recording, then the known head
    model.features.barrier = threading.Barrier(2)

    def explain_in_turn(a, b):
        return [_explained(explainer, work, a, b) for _ in range(rounds)]
    with ThreadPoolExecutor(2) as pool:
        results = [f.result() for f in [pool.submit(explain_in_turn, *p) for p in pairs]]
    model.features.barrier = None
    assert len(model.features.met) == len(forwards)  # every pass met the other thread's
    for (a, b), explained in zip(pairs, results):
        alone = _explained(Explainer(model, "features"), work, a, b)
        for tensors in explained:
            for got, expected in zip(tensors, alone, strict=True):
                assert torch.allclose(got, expected, atol=1e-6, rtol=0)
        if work == "explain":
            with torch.no_grad():
                e_a, e_b = model(a), model(b)
            score = float(torch.nn.functional.cosine_similarity(e_a, e_b))
            assert float(explained[-1][2]) == pytest.approx(score, abs=1e-6)
            assert float(explained[-1][0].sum(0) @ e_b[0]) / float(e_a.norm() * e_b.norm()) \
                == pytest.approx(score, abs=1e-5)
    if work == "explain":  # the first call of each thread recorded, the later ones known
        assert _known_calls(explainer) == 2 * (rounds - 1)

class _SecondCall(nn.Module):
    """Once `twice` is set, the explained layer (a ReLU after the trunk) runs a second time, on
    the trunk's output rolled by one column, and the head pools that second output: the same
    embedding (a mean does not see the order of the positions), maps rolled by one column."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.trunk = trunk()
        self.features = nn.ReLU()
        self.fc = nn.Linear(32, 8)
        self.twice = False

    def forward(self, x):
        t = self.trunk(x)
        a = self.features(t)
        if self.twice:
            a = self.features(t.roll(1, dims=3))
        return self.fc(a.mean((2, 3)))


def test_a_layer_that_runs_twice_once_known_is_recorded(monkeypatch):
    """The known head takes the layer output only when the layer ran once: the first of two
    outputs would give the maps of the wrong output, with the model's own embedding."""
    model = _SecondCall().eval()
    explainer, counted, x = _known_after_two_calls(model, monkeypatch)
    before = explainer.stream_a.contributions(x)
    model.twice = True
    counted.reset()
    result = explainer.stream_a.contributions(x)
    assert_matches_reference(explainer, x, result)
    rolled = before.positions.reshape(2, 8, 8, -1).roll(1, dims=2).reshape(2, 64, -1)
    assert torch.allclose(result.positions, rolled, atol=1e-6)
    assert counted.tapes == 1 and _known_calls(explainer) == 2  # seen twice: refused, recorded


class _PlainTensorHead(nn.Module):
    """A head whose Linear weight is a plain tensor attribute, not a parameter or buffer of
    the model: a known head could not see it replaced."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = trunk()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.weight = torch.randn(8, 32)

    def forward(self, x):
        return F.normalize(F.linear(self.pool(self.features(x)).flatten(1), self.weight), dim=1)


def test_a_head_reading_a_tensor_the_model_does_not_hold_is_never_known(monkeypatch):
    model = _PlainTensorHead().eval()
    explainer = Explainer(model, "features")
    counted = _Counted(model, monkeypatch)
    x = images(2)
    for _ in range(3):
        result = explainer.stream_a.contributions(x)
        assert result.path == f"mean pooling, {CACHED}"  # cached by identity and version
        assert_matches_reference(explainer, x, result)
    assert counted.tapes == 3 and _known_calls(explainer) == 0
    model.weight = torch.randn(8, 32)  # replaced: another tensor, the cache's key changes
    result = explainer.stream_a.contributions(x)
    assert_matches_reference(explainer, x, result)


def test_known_heads_are_kept_for_the_latest_input_sizes_only(monkeypatch):
    monkeypatch.setattr(affine_head, "MAX_ENTRIES", 2)
    model = make("gap")
    explainer = Explainer(model, "features")
    counted = _Counted(model, monkeypatch)
    sizes = (32, 40, 48)
    for size in sizes:  # each size recorded once, then known: the third size evicts the first
        for _ in range(2):
            explainer.stream_a.contributions(images(2, size=size))
    assert _known_calls(explainer) == 3
    counted.reset()
    for size in sizes[1:]:
        explainer.stream_a.contributions(images(2, size=size))
    assert counted.tapes == 0 and _known_calls(explainer) == 5
    x = images(2, size=sizes[0])
    result = explainer.stream_a.contributions(x)  # forgotten: recorded again
    assert counted.tapes == 1 and _known_calls(explainer) == 5
    assert_matches_reference(explainer, x, result)
