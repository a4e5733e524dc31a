"""Rate limits (issue #11, Security hardening item 7): 429 with ``Retry-After``, counted in
Redis under Keycard's prefix, per client IP and per client_id, off the hot paths."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import requests

from sso.config import DEFAULT_RATE_LIMITS
from sso.storage import Keys
from tests.support import sign_in

LOW = "sign_in=3/minute,device=3/minute,client_auth_failures=3/minute"


@pytest.fixture
def keycard(make_keycard: Callable[..., Any]) -> Any:
    return make_keycard(SSO_RATE_LIMITS=LOW)


@pytest.fixture
def service(keycard: Any) -> tuple[Any, str]:
    return keycard.services.clients.create(  # type: ignore[no-any-return]
        name="Deploy bot", grant_types=["client_credentials"], scopes=["roles"],
        roles=["deployer"], audiences=["https://deploy-api.acme.test"])


def token(keycard: Any, client_id: str, secret: str, ip: str | None = None) -> Any:
    data = {"grant_type": "client_credentials"}
    if ip is None:
        return requests.post(keycard.url + "/token", data=data, auth=(client_id, secret),
                             timeout=10)
    # Other client addresses than loopback exist only in the WSGI environ (no traffic).
    client = keycard.app.test_client()
    return client.post("/token", data=data, environ_base={"REMOTE_ADDR": ip},
                       headers={"Authorization": requests.auth._basic_auth_str(client_id,
                                                                               secret)})


def assert_429_json(response: Any) -> None:
    assert response.status_code == 429
    assert int(response.headers["Retry-After"]) >= 1
    body = response.json() if callable(response.json) else response.json
    assert body["error"] == "temporarily_unavailable"


def test_finding_7_failed_client_authentications_are_limited_per_ip(keycard, service):
    client, secret = service
    for _ in range(3):
        assert token(keycard, client.client_id, "wrong").status_code == 401
    assert_429_json(token(keycard, client.client_id, "wrong"))
    assert_429_json(token(keycard, "another-client", "wrong"))  # the address's count
    # A client with its right secret is never refused, even from that address (a NAT or a
    # sidecar shared with a misbehaving app must not stop everyone's tokens).
    assert token(keycard, client.client_id, secret).status_code == 200
    assert token(keycard, client.client_id, secret, ip="10.1.2.3").status_code == 200


def test_finding_7_failed_client_authentications_are_limited_per_client_id(keycard, service):
    client, secret = service
    for i in range(3):
        assert token(keycard, client.client_id, "wrong", ip=f"10.0.0.{i}").status_code == 401
    assert_429_json(token(keycard, client.client_id, "wrong", ip="10.0.0.9"))
    # No lock-out: the real client (right secret) is not refused because others guessed.
    assert token(keycard, client.client_id, secret, ip="10.0.0.10").status_code == 200


def test_finding_7_introspection_and_revocation_failures_count_too(keycard, service):
    client, _ = service
    for path in ("/introspect", "/revoke", "/introspect"):
        response = requests.post(keycard.url + path, data={"token": "x"},
                                 auth=(client.client_id, "wrong"), timeout=10)
        assert response.status_code == 401
    assert_429_json(requests.post(keycard.url + "/revoke", data={"token": "x"},
                                  auth=(client.client_id, "wrong"), timeout=10))


@pytest.mark.parametrize("path", ["/login", "/authorize?client_id=x&redirect_uri=y",
                                  "/auth/github/callback?code=x&state=y"])
def test_finding_7_browser_sign_in_endpoints_are_limited_per_ip(keycard, http, path):
    for _ in range(3):
        assert http.get(keycard.url + path, allow_redirects=False).status_code < 429
    page = http.get(keycard.url + path, allow_redirects=False, headers={"Accept": "text/html"})
    assert page.status_code == 429
    assert int(page.headers["Retry-After"]) >= 1
    assert "Too many requests" in page.text and "<html" in page.text


def test_defect_2_login_state_creation_rate_limited_per_ip(keycard, http, rdb, prefix):
    """Issue #12, defect 2: a flood of anonymous /login filled Redis with sign-in state (and,
    under allkeys-lru, evicted clients and keys). Past the limit an address gets 429 and
    no state record; another address still signs in."""
    states = f"{prefix}{Keys('').login_state('*')}"
    answers = [http.get(keycard.url + "/login", allow_redirects=False).status_code
               for _ in range(20)]
    assert answers == [302] * 3 + [429] * 17
    assert len(list(rdb.scan_iter(match=states, count=1000))) == 3
    other = keycard.app.test_client().get("/login", environ_base={"REMOTE_ADDR": "10.9.8.7"})
    assert other.status_code == 302
    assert len(list(rdb.scan_iter(match=states, count=1000))) == 4


def test_finding_7_each_sign_in_endpoint_has_its_own_count(keycard, http):
    for _ in range(3):
        http.get(keycard.url + "/login", allow_redirects=False)
    assert http.get(keycard.url + "/login", allow_redirects=False).status_code == 429
    assert http.get(keycard.url + "/authorize", allow_redirects=False).status_code < 429


def test_finding_7_device_authorization_is_limited_per_ip_only(keycard):
    public = keycard.services.clients.create(
        name="CLI", redirect_uris=[], public=True,
        grant_types=["urn:ietf:params:oauth:grant-type:device_code"])[0]
    client = keycard.app.test_client()

    def ask(client_id: str, ip: str) -> Any:
        return client.post("/device_authorization", data={"client_id": client_id},
                           environ_base={"REMOTE_ADDR": ip})

    for _ in range(3):
        ask(public.client_id, "10.0.2.1")
    assert_429_json(ask(public.client_id, "10.0.2.1"))  # the address's count
    # Anyone can name a public client: flooding with its id must not lock out its real
    # devices elsewhere (no per-client count before authentication).
    for i in range(5):
        assert ask(public.client_id, f"10.0.1.{i}").status_code == 200


def test_finding_7_counters_live_under_the_prefix_with_a_ttl(keycard, http, rdb, prefix):
    http.get(keycard.url + "/login", allow_redirects=False)
    keys = Keys(prefix)
    found = list(rdb.scan_iter(match=f"{prefix}rl:*"))
    assert found
    for key in found:
        assert [p.method for p in keys.patterns_of(key)] == ["rate_limit"]
        assert 0 < rdb.ttl(key) <= 60


def test_finding_7_hot_paths_count_nothing(keycard, service, rdb, prefix, http):
    client, secret = service
    sign_in(http, keycard.url, "bob")
    before = set(rdb.scan_iter(match=f"{prefix}rl:*"))
    access = token(keycard, client.client_id, secret).json()["access_token"]
    assert requests.post(keycard.url + "/introspect", data={"token": access},
                         auth=(client.client_id, secret), timeout=10).json()["active"]
    assert http.get(keycard.url + "/auth/verify").status_code == 200
    # A service token has no person behind it: userinfo refuses it, counting nothing.
    assert requests.get(keycard.url + "/userinfo", timeout=10,
                        headers={"Authorization": f"Bearer {access}"}).status_code == 401
    assert set(rdb.scan_iter(match=f"{prefix}rl:*")) == before


def test_finding_7_redis_down_is_503_not_500(make_keycard, private_redis):
    keycard = make_keycard(redis_url=private_redis.url, SSO_RATE_LIMITS=LOW)
    private_redis.stop()
    try:
        for path in ("/login", "/authorize?client_id=x"):
            response = requests.get(keycard.url + path, allow_redirects=False, timeout=10)
            assert response.status_code == 503
        response = requests.post(keycard.url + "/device_authorization",
                                 data={"client_id": "x"}, timeout=10)
        assert response.status_code == 503
        assert response.json()["error"] == "temporarily_unavailable"
    finally:
        private_redis.start()


def test_finding_7_limits_can_be_turned_off(make_keycard, http):
    keycard = make_keycard(SSO_RATE_LIMITS="off")
    assert keycard.services.limiter.items == {}
    for _ in range(5):
        assert http.get(keycard.url + "/login", allow_redirects=False).status_code == 302


def test_default_limits_are_generous_for_a_company_behind_one_nat():
    import limits

    assert limits.parse(DEFAULT_RATE_LIMITS["sign_in"]).amount >= 600
    assert limits.parse(DEFAULT_RATE_LIMITS["device"]).amount >= 60
