"""The one in-process cache: bounded, every entry with its own deadline.

Keycard caches only what is safe to be a few seconds stale (client records, rules,
team ancestors) or cannot change (a verified signature, a signed assertion), and
never a decision that revocation must reach at once. Reads take no lock (a dict
lookup is atomic under the GIL) because they are on every hot path; writes do. When
full, the oldest entry goes (an ``OrderedDict`` pops it in constant time): no
bookkeeping on reads, unlike an LRU.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class ExpiringCache(Generic[K, V]):
    def __init__(self, maxsize: int, ttl: float = 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.maxsize = maxsize
        self.ttl = ttl
        self.clock = clock
        self._items: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K, now: float | None = None) -> V | None:
        entry = self._items.get(key)
        if entry is None or entry[0] <= (self.clock() if now is None else now):
            return None
        return entry[1]

    def put(self, key: K, value: V, *, until: float | None = None) -> None:
        """Remember ``value`` until ``until`` (on the cache's clock), else for ``ttl``."""
        deadline = self.clock() + self.ttl if until is None else until
        with self._lock:
            self._items.pop(key, None)  # re-inserted last: the newest entry
            while len(self._items) >= self.maxsize:
                self._items.popitem(last=False)
            self._items[key] = (deadline, value)

    def pop(self, key: K) -> None:
        with self._lock:
            self._items.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)
