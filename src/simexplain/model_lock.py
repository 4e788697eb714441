"""One lock per model, so that threads sharing a model never see the reference path's pass
(head.tangent_contributions): torch.func.functional_call puts its own values into the model's
biases for the length of that pass, and a second such pass at the same time restores the
first one's values for good (the model keeps a plain tensor where its parameter was).

simexplain's forward passes of a model share it (any number at once, `shared`); the reference
path has it alone (`alone`): it waits for the passes under way, and new ones wait for it.
Forward passes that the user's own code runs at the same time are not covered.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import torch


class ModelLock:
    """Shared by forward passes, taken alone by the reference path; a thread already sharing
    the model may share it again (a pass inside a pass) without waiting."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._sharing = 0  # threads inside `shared`
        self._alone = False
        self._waiting = 0  # threads waiting to be alone: new sharers wait behind them
        self._depth = threading.local()

    @contextmanager
    def shared(self) -> Iterator[None]:
        depth = getattr(self._depth, "value", 0)
        if depth == 0:
            with self._changed:
                while self._alone or self._waiting:
                    self._changed.wait()
                self._sharing += 1
        self._depth.value = depth + 1
        try:
            yield
        finally:
            self._depth.value = depth
            if depth == 0:
                with self._changed:
                    self._sharing -= 1
                    self._changed.notify_all()

    @contextmanager
    def alone(self) -> Iterator[None]:
        if getattr(self._depth, "value", 0):
            raise RuntimeError("a thread that shares the model cannot also have it alone")
        with self._changed:
            self._waiting += 1
            try:
                while self._alone or self._sharing:
                    self._changed.wait()
            finally:
                self._waiting -= 1
            self._alone = True
        try:
            yield
        finally:
            with self._changed:
                self._alone = False
                self._changed.notify_all()


_LOCKS: weakref.WeakKeyDictionary[torch.nn.Module, ModelLock] = weakref.WeakKeyDictionary()
_MAKING = threading.Lock()


def lock_of(model: torch.nn.Module) -> ModelLock:
    """The model's lock (one for every SplitModel and Explainer of that model object)."""
    with _MAKING:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = ModelLock()
        return lock
