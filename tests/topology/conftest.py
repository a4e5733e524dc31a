"""Keycard on each Redis topology (issue #12): the ``topology_url`` fixture runs a test
once per name in :data:`TOPOLOGIES`, each name ``x`` served by an ``x_topology`` fixture
whose value has a ``.url`` for ``SSO_REDIS_URL``. Adding a topology is one name here and
one fixture (tests/conftest.py).

Keycard writes under the test's ``prefix``; on a topology other than the session's
``redis_server`` the ``prefix`` fixture cannot clean up, so :func:`keycard_on` deletes the
prefix through Keycard's own client, which reaches every topology.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.conftest import Keycard, RedisServer

TOPOLOGIES = ("standalone", "sentinel", "cluster")


@pytest.fixture
def standalone_topology(redis_server: RedisServer) -> RedisServer:
    """One redis-server: the session's own."""
    return redis_server


@pytest.fixture(params=TOPOLOGIES)
def topology_url(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue(f"{request.param}_topology").url
    return url


def forget_prefix(keycard: Keycard) -> None:
    """Delete every key under the Keycard's prefix, one at a time (keys of a Cluster
    live in several slots)."""
    store = keycard.services.store
    for key in list(store.redis.scan_iter(match=store.keys.prefix + "*", count=1000)):
        store.redis.delete(key)


@pytest.fixture
def keycard_on(make_keycard: Callable[..., Keycard]) -> Iterator[Callable[..., Keycard]]:
    """``make_keycard`` whose keys are removed from the topology afterwards."""
    made: list[Keycard] = []

    def factory(redis_url: str, **overrides: Any) -> Keycard:
        keycard = make_keycard(redis_url=redis_url, **overrides)
        made.append(keycard)
        return keycard

    yield factory
    if made:
        forget_prefix(made[0])  # one prefix per test: every instance shares it
