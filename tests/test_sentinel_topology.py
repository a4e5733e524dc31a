"""Keycard on a real Sentinel topology (tests/topologies.py): issue #12, "Scale out and
survive"."""

from __future__ import annotations

import time

import pytest
import requests

from sso import create_app
from tests.support import LiveServer, sign_in

SOCKET_TIMEOUT = 2.0  # sso.storage.connect's default, for the Redis and the sentinels
BOUND = 2 * SOCKET_TIMEOUT


def timed_get(http: requests.Session, url: str) -> tuple[requests.Response, float]:
    """GET with a client-side limit just above BOUND, so a hang fails as an assertion."""
    started = time.monotonic()
    try:
        response = http.get(url, timeout=BOUND + 1)
    except requests.Timeout:
        pytest.fail(f"GET {url} hung: no answer within {BOUND + 1}s")
    return response, time.monotonic() - started


def test_defect_3_a_hung_sentinel_does_not_block_requests(sentinel_topology, make_keycard,
                                                           prefix):
    first = make_keycard(redis_url=sentinel_topology.url)
    assert "Alice Archer" in sign_in(requests.Session(), first.url, "alice").text

    hung = sentinel_topology.sentinels[0]  # listed first: a new instance asks it first
    server = LiveServer()
    try:
        with hung.paused():
            # A fresh instance: no connection yet, the master must be found through the
            # sentinels, and the first one accepts the connection but never answers.
            env = dict(first.env, SSO_ISSUER=server.url)
            server.start(create_app(env))
            browser = requests.Session()
            times = []
            for path in ("/readyz", "/login", "/readyz"):
                response, took = timed_get(browser, server.url + path)
                assert response.status_code in (200, 503), (path, response.status_code)
                assert took < BOUND, f"{path} took {took:.1f}s with a hung sentinel"
                times.append(took)
            # The hung sentinel was asked, and cost one socket timeout, not more.
            assert max(times) >= SOCKET_TIMEOUT * 0.9, times
            # The journey goes through once the master is known.
            started = time.monotonic()
            assert "Alice Archer" in sign_in(requests.Session(), server.url, "alice").text
            assert time.monotonic() - started < BOUND
    finally:
        server.stop()
        sentinel_topology.restart(hung)  # out of TILT mode, for the failover tests after
        master = sentinel_topology.master.client()
        keys = list(master.scan_iter(match=f"{prefix}*"))
        if keys:
            master.delete(*keys)
