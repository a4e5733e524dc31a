"""The one in-process cache: deadlines, bound, and the oldest entry going first."""

from __future__ import annotations

from sso.cache import ExpiringCache


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_entries_live_until_their_deadline():
    clock = Clock()
    cache: ExpiringCache[str, int] = ExpiringCache(10, ttl=5, clock=clock)
    cache.put("a", 1)
    cache.put("b", 2, until=101)
    assert cache.get("a") == 1 and cache.get("b") == 2
    clock.now = 101
    assert cache.get("b") is None  # the deadline itself is past
    assert cache.get("a") == 1
    clock.now = 105
    assert cache.get("a") is None
    assert cache.get("a", now=104.9) == 1  # an explicit time wins over the clock


def test_bounded_the_oldest_entry_goes_first():
    cache: ExpiringCache[int, int] = ExpiringCache(3, ttl=60)
    for i in range(3):
        cache.put(i, i)
    cache.put(0, 10)  # re-put: now the newest
    cache.put(3, 3)
    assert len(cache) == 3
    assert cache.get(1) is None
    assert [cache.get(k) for k in (0, 2, 3)] == [10, 2, 3]


def test_pop_and_clear():
    cache: ExpiringCache[str, str] = ExpiringCache(4, ttl=60)
    cache.put("a", "x")
    cache.put("b", "y")
    cache.pop("a")
    cache.pop("missing")
    assert cache.get("a") is None and cache.get("b") == "y"
    cache.clear()
    assert len(cache) == 0
