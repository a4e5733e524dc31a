"""Issue #12, defect 2: a Redis that is full (``noeviction``, ``maxmemory`` reached) is an
outage like any other: a 503 with ``temporarily_unavailable`` and ``Retry-After``, never
a 500, and the service recovers by itself once memory is freed."""

from __future__ import annotations

from typing import Any

import pytest
import redis
import requests

from tests.oidc.conftest import authorize, refresh, revoke, tokens_for
from tests.support import sign_in, stop_at_callback, wait_until


@pytest.fixture
def keycard(make_keycard: Any, private_redis: Any) -> Any:
    """Keycard on a Redis of this test's own, which the test fills up."""
    return make_keycard(redis_url=private_redis.url)


def fill_until_oom(client: redis.Redis) -> None:
    """Write ballast until Redis (``noeviction``, 2 MB over what is used now) refuses with
    OOM; then keep the cap under the ballast, so that every write, however small, fails."""
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", str(used + 2 * 1024 * 1024))
    blob = "x" * 64 * 1024
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        for i in range(1000):
            client.set(f"ballast:{i}", blob)
    client.config_set("maxmemory", str(used + 1024 * 1024))
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        client.set("probe", "1")


def assert_full_answer(response: requests.Response, *, page: bool = False) -> None:
    assert response.status_code == 503, (response.status_code, response.text[:300])
    assert response.headers["Retry-After"]
    assert "Traceback" not in response.text
    if page:
        assert "store is full" in response.text
    else:
        assert response.json()["error"] == "temporarily_unavailable"
        assert "store is full" in response.json()["error_description"]


def test_defect_2_a_full_redis_answers_503_not_500(keycard, private_redis, make_client, http):
    rp = make_client()
    tokens = tokens_for(http, rp, "bob")
    callback_browser = requests.Session()
    callback = stop_at_callback(callback_browser, keycard.url, "alice")
    client = private_redis.client()
    fill_until_oom(client)

    assert_full_answer(requests.get(keycard.url + "/login", allow_redirects=False), page=True)
    assert_full_answer(callback_browser.get(callback, allow_redirects=False), page=True)
    assert_full_answer(authorize(http, rp), page=True)
    assert_full_answer(refresh(rp, tokens["refresh_token"]))
    assert_full_answer(revoke(rp, tokens["refresh_token"]))

    client.flushall()
    client.config_set("maxmemory", "0")
    wait_until(lambda: requests.get(keycard.url + "/readyz").status_code == 200, timeout=15)
    fresh = requests.Session()
    assert "Bob" in sign_in(fresh, keycard.url, "bob").text
