"""A small thread-safe LRU cache bounded by entry count and, optionally, by total cost."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Generic, TypeVar
from collections.abc import Callable, Hashable

V = TypeVar("V")


class LRU(Generic[V]):
    """Least-recently-used mapping.

    max_items: most entries kept. max_cost/cost: optional second bound, e.g. bytes; an entry
    whose own cost exceeds max_cost is still stored (alone), so that a lookup right after a
    put always succeeds.
    """

    def __init__(self, max_items: int, max_cost: float | None = None,
                 cost: Callable[[Any], float] | None = None):
        if max_items < 1:
            raise ValueError("an LRU cache needs max_items >= 1")
        self.max_items = max_items
        self.max_cost = max_cost
        self._cost = cost or (lambda _value: 0.0)
        self._items: OrderedDict[Hashable, tuple[V, float]] = OrderedDict()
        self._total = 0.0
        self._lock = threading.Lock()

    def get(self, key: Hashable, default: V | None = None) -> V | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return default
            self._items.move_to_end(key)
            return item[0]

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._items

    def put(self, key: Hashable, value: V) -> V:
        cost = float(self._cost(value))
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._total -= old[1]
            self._items[key] = (value, cost)
            self._total += cost
            while len(self._items) > self.max_items or (
                    self.max_cost is not None and self._total > self.max_cost
                    and len(self._items) > 1):
                _, (_, dropped) = self._items.popitem(last=False)
                self._total -= dropped
        return value

    def get_or_create(self, key: Hashable, create: Callable[[], V]) -> V:
        """The cached value, or create (outside the lock) and store it."""
        found = self.get(key)
        if found is not None:
            return found
        return self.put(key, create())

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    @property
    def total_cost(self) -> float:
        with self._lock:
            return self._total

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._total = 0.0
