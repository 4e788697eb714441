"""Threads sharing a model (model_lock.py): simexplain's forward passes run side by side, the
reference path's pass (functional_call, which puts values into the model's own biases) runs
alone; two reference passes at once used to leave a plain tensor where a parameter was."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from torch import nn

from simexplain import Explainer
from simexplain.model_lock import ModelLock, lock_of


class _WaitThenShift(nn.Module):
    """Adds its bias (an offset of the head) after waiting at `barrier` for another thread's
    pass: two passes are then inside the head at once, if the lock lets them."""

    def __init__(self, dim: int):
        super().__init__()
        self.bias = nn.Parameter(torch.randn(dim))
        self.barrier: threading.Barrier | None = None
        self.met: list[bool] = []

    def forward(self, x):
        if self.barrier is not None:
            try:
                self.barrier.wait()
                self.met.append(True)
            except threading.BrokenBarrierError:
                pass  # the other pass waited for this one to end (the lock)
        return x + self.bias


class _Model(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(8, 6)
        self.shift = _WaitThenShift(6)

    def forward(self, x):
        return self.shift(self.fc(self.features(x).mean((2, 3))))


def _inputs():
    gen = torch.Generator().manual_seed(3)
    return [torch.randn(1, 3, 8, 8, generator=gen) for _ in range(2)]


@pytest.mark.parametrize("other", ["tangents", "auto", "embed"])
def test_the_reference_path_never_shares_the_model(other):
    model = _Model().eval()
    stream = Explainer(model, "features").stream_a
    x_a, x_b = _inputs()
    alone_a = stream.contributions(x_a, "tangents")
    alone_b = stream.contributions(x_b, "tangents")
    bias = model.shift.bias
    model.shift.barrier = threading.Barrier(2, timeout=2)

    def work_b():
        return stream.embed(x_b) if other == "embed" else stream.contributions(x_b, other)
    with ThreadPoolExecutor(2) as pool:
        got_a, got_b = (f.result() for f in [
            pool.submit(stream.contributions, x_a, "tangents"), pool.submit(work_b)])
    model.shift.barrier = None
    assert not model.shift.met  # the passes never were inside the head at once
    assert model.shift.bias is bias and isinstance(model.shift.bias, nn.Parameter)
    torch.testing.assert_close(got_a.positions, alone_a.positions, rtol=0, atol=1e-6)
    if other == "embed":
        torch.testing.assert_close(got_b, alone_b.embedding, rtol=0, atol=1e-6)
    else:
        torch.testing.assert_close(got_b.positions, alone_b.positions, rtol=0, atol=1e-6)


def test_forward_passes_share_the_model():
    """Two plain passes are inside the head at once: sharing does not serialise them."""
    model = _Model().eval()
    stream = Explainer(model, "features").stream_a
    model.shift.barrier = threading.Barrier(2, timeout=10)
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(stream.embed, _inputs()))
    assert len(model.shift.met) == 2


def test_a_thread_alone_waits_for_sharers_and_new_sharers_wait_for_it():
    lock, order = ModelLock(), []
    entered, release = threading.Event(), threading.Event()

    def share(name, hold):
        with lock.shared():
            order.append(f"{name} in")
            entered.set()
            if hold:
                release.wait(5)
            order.append(f"{name} out")

    def alone():
        with lock.alone():
            order.append("alone")
    first = threading.Thread(target=share, args=("first", True))
    first.start()
    entered.wait(5)
    writer = threading.Thread(target=alone)
    writer.start()
    while not lock._waiting:  # the writer waits for the sharer
        threading.Event().wait(0.01)
    late = threading.Thread(target=share, args=("late", False))
    late.start()
    threading.Event().wait(0.1)
    assert order == ["first in"]  # neither the writer nor the late sharer got in
    release.set()
    for t in (first, writer, late):
        t.join(5)
    assert order == ["first in", "first out", "alone", "late in", "late out"]


def test_nested_sharing_does_not_wait_and_one_lock_per_model():
    lock = ModelLock()
    with lock.shared(), lock.shared():  # a pass inside a pass of the same thread
        with pytest.raises(RuntimeError, match="cannot also have it alone"):
            with lock.alone():
                pass
    with lock.alone():
        pass
    model = _Model()
    assert lock_of(model) is lock_of(model) and lock_of(model) is not lock_of(_Model())
