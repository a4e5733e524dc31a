"""Issue #12 defects 1 and 7: Redis loses its data (a restart without persistence, a
FLUSHALL) under running Keycard instances.

Each test runs its own redis-server (``private_redis``: no RDB, no AOF, so a restart
empties it). Two apps built by ``make_keycard`` with one issuer are two Keycard
instances: separate key rings and caches sharing one Redis. Their key-ring re-check is shortened to
``RECHECK`` seconds so the bound is measured in a second, not five.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import pytest
import requests

from sso import create_app
from sso.oidc.keys import KeyRing
from tests.conftest import keycard_env
from tests.support import free_port, wait_until

RECHECK = 1.0
BOUND = RECHECK + 4  # re-check interval plus a generous margin for a busy machine
APP = "https://app.acme.test"
PRODUCTION = {
    "SSO_ENV": "production",
    # Production refuses the development upstream; client credentials never contact it.
    "SSO_GITHUB_URL": "https://github.com",
    "SSO_GITHUB_API_URL": "https://api.github.com",
    "SSO_GITHUB_CLIENT_ID": "Iv1.keycard-test",
    "SSO_GITHUB_CLIENT_SECRET": "not-used-by-these-tests",
}


def instance(make_keycard: Callable[..., Any], redis_url: str, **env: str) -> Any:
    keycard = make_keycard(redis_url=redis_url, SSO_FORWARD_AUTH_DOMAINS="acme.test", **env)
    ring: KeyRing = keycard.services.keys
    ring.recheck_seconds = RECHECK
    ring.refresh()  # the next re-check is due RECHECK from now, not the default 5 s
    return keycard


def service(keycard: Any) -> tuple[str, str]:
    client, secret = keycard.services.clients.create(
        name="Deploy bot", grant_types=["client_credentials"], scopes=["roles"],
        audiences=[APP])
    return client.client_id, secret


def token_response(keycard: Any, credentials: tuple[str, str]) -> requests.Response:
    return requests.post(keycard.url + "/token", auth=credentials, timeout=10, data={
        "grant_type": "client_credentials", "resource": APP})


def access_token(keycard: Any, credentials: tuple[str, str]) -> str:
    response = token_response(keycard, credentials)
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def jwks(keycard: Any) -> requests.Response:
    return requests.get(keycard.url + "/jwks.json", timeout=10)


def kids(keycard: Any) -> list[str]:
    response = jwks(keycard)
    assert response.status_code == 200, response.text
    return sorted(key["kid"] for key in response.json()["keys"])


def active(keycard: Any, credentials: tuple[str, str], token: str) -> bool:
    answer = requests.post(keycard.url + "/introspect", data={"token": token},
                           auth=credentials, timeout=10).json()
    return answer["active"] is True


def verify(keycard: Any, token: str) -> int:
    return requests.get(keycard.url + "/auth/verify", timeout=10, headers={
        "Authorization": f"Bearer {token}", "X-Forwarded-Host": "app.acme.test",
        "X-Forwarded-Proto": "https", "X-Forwarded-Uri": "/"}).status_code


def events(keycard: Any, name: str) -> list[dict[str, Any]]:
    return [e for e in keycard.services.audit.recent(1000) if e["event"] == name]


def test_defect_1_instances_agree_on_new_keys_within_seconds_after_a_flushall(
        make_keycard, private_redis, caplog):
    """Before: the version counter restarted at "1", the value B had cached, so B kept
    signing with keys Redis no longer had and JWKS differed between instances."""
    a = instance(make_keycard, private_redis.url)
    b = instance(make_keycard, private_redis.url, SSO_ISSUER=a.env["SSO_ISSUER"])
    before = kids(a)
    assert kids(b) == before
    private_redis.client().flushall()  # what a restart without persistence leaves

    # A notices first and (development) makes new keys; then B must follow, not keep its own.
    with caplog.at_level(logging.WARNING, logger="keycard"):
        wait_until(lambda: kids(a) != before, timeout=BOUND)
        after = kids(a)
        wait_until(lambda: kids(b) == after, timeout=BOUND)
    assert not set(after) & set(before)
    credentials = service(a)  # the registrations went with the data
    from_a, from_b = access_token(a, credentials), access_token(b, credentials)
    assert active(b, credentials, from_a) and active(a, credentials, from_b)

    losses = [r for r in caplog.records if r.levelno == logging.ERROR
              and "Redis lost its data" in r.getMessage()]
    assert len(losses) == 2  # once per instance, not once per request
    assert any(r.levelno == logging.WARNING and "replace those Redis lost" in r.getMessage()
               for r in caplog.records)
    assert len(events(a, "storage.data_loss")) == 2


def test_defect_7_revoked_bearer_token_stays_refused_at_auth_verify_after_a_data_loss(
        make_keycard, private_redis):
    """Before: the 60-second cache of verified signatures kept a revoked token alive
    at /auth/verify once the revocation record was gone (here with the client's
    registration restored, as an operator does from a backup after such a loss)."""
    keycard = instance(make_keycard, private_redis.url)
    credentials = service(keycard)
    token = access_token(keycard, credentials)
    assert verify(keycard, token) == 200  # its signature is now cached
    revoked = requests.post(keycard.url + "/revoke", data={"token": token},
                            auth=credentials, timeout=10)
    assert revoked.status_code == 200
    assert verify(keycard, token) == 401

    rdb = private_redis.client()
    key = keycard.services.clients.key(credentials[0])
    registration = rdb.get(key)
    rdb.flushall()
    rdb.set(key, registration)  # configuration restored; revocations are not in backups
    rdb.sadd(keycard.services.clients.index_key, credentials[0])

    wait_until(lambda: verify(keycard, token) == 401, timeout=BOUND)
    for _ in range(5):  # and it stays refused: no cache brings it back
        assert verify(keycard, token) == 401
    assert events(keycard, "storage.data_loss")


def test_defect_7_every_cache_is_dropped_when_the_epoch_changes(make_keycard, private_redis):
    """One registration, every in-process cache that trusted Redis: each is empty after a
    detected loss (the watch costs the key ring's re-check nothing more than a GET)."""
    keycard = instance(make_keycard, private_redis.url)
    services = keycard.services
    credentials = service(keycard)
    token = access_token(keycard, credentials)
    assert verify(keycard, token) == 200
    services.rules.all()
    assert len(services.provider.verified._items) and len(services.asserter.cache)
    assert len(services.clients._cache) and len(services.rules._cached)
    private_redis.client().flushall()
    wait_until(lambda: jwks(keycard).ok and not len(services.provider.verified._items),
               timeout=BOUND)
    assert services.epoch.losses == 1 and not len(services.asserter.cache)
    assert not len(services.clients._cache) and not len(services.rules._cached)


def persist(server: Any) -> None:
    """What production's /readyz also asks of Redis (sso/redis_checks.py): persistence."""
    server.client().config_set("appendonly", "yes")


def test_defect_1_production_refuses_to_sign_after_a_redis_restart_until_sso_keys_init(
        make_keycard, private_redis, caplog):
    """Before: production silently made new keys after the restart, /readyz said 200 and
    nothing was logged. Now: 503s naming the command, /readyz not ready, one ERROR and
    audit events, until `sso keys init`; a real redis-server restart, not a FLUSHALL.
    (AOF is switched on at run time: production's /readyz also wants persistence, and the
    restart, with the command line's ``--appendonly no``, still comes back empty.)"""
    persist(private_redis)
    a = instance(make_keycard, private_redis.url, **PRODUCTION)
    b = instance(make_keycard, private_redis.url, SSO_ISSUER=a.env["SSO_ISSUER"], **PRODUCTION)
    credentials = service(a)
    access_token(a, credentials)
    assert kids(a) == kids(b)
    assert requests.get(a.url + "/readyz", timeout=10).status_code == 200

    private_redis.stop()
    private_redis.start()  # no RDB, no AOF: it comes back empty
    persist(private_redis)
    credentials = service(a)  # an operator re-registers (or restores) the client

    def refused(keycard: Any) -> bool:
        response = token_response(keycard, credentials)
        return response.status_code == 503

    with caplog.at_level(logging.WARNING, logger="keycard"):
        wait_until(lambda: refused(a) and refused(b), timeout=BOUND)
        for keycard in (a, b):
            answer = token_response(keycard, credentials)
            assert answer.json()["error"] == "temporarily_unavailable"
            assert "sso keys init" in answer.json()["error_description"]
            assert jwks(keycard).status_code == 503
            ready = requests.get(keycard.url + "/readyz", timeout=10)
            assert ready.status_code == 503 and ready.json()["keys"] == "missing"
        page = requests.get(a.url + "/jwks.json", headers={"Accept": "text/html"}, timeout=10)
        assert "sso keys init" in page.text
        for _ in range(3):
            token_response(a, credentials)
    missing = [r for r in caplog.records if r.levelno == logging.ERROR
               and "sso keys init" in r.getMessage()]
    assert len(missing) == 2  # once per instance, not per request
    assert len(events(a, "storage.data_loss")) == 2 and len(events(a, "keys.missing")) == 2

    result = a.app.test_cli_runner().invoke(args=["keys", "init"])
    assert result.exit_code == 0, result.output
    assert "New signing keys" in result.output
    assert events(a, "keys.initialised")
    wait_until(lambda: not refused(a) and not refused(b), timeout=BOUND)
    after = kids(a)
    assert kids(b) == after and len(after) == 2
    assert active(b, credentials, access_token(a, credentials))
    for keycard in (a, b):
        assert requests.get(keycard.url + "/readyz", timeout=10).status_code == 200
    again = a.app.test_cli_runner().invoke(args=["keys", "init"])
    assert again.exit_code == 0 and "nothing made" in again.output


def test_defect_1_production_first_start_waits_for_sso_keys_init(private_redis, tmp_path):
    """A first installation in production makes no keys by itself (README: run
    `sso keys init` once); development still does."""
    persist(private_redis)
    env = keycard_env(private_redis.url, "kt-first:", "https://github.com", free_port(),
                      tmp_path, **PRODUCTION)
    app = create_app(env)
    client = app.test_client()
    assert client.get("/jwks.json").status_code == 503
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json["keys"] == "missing"
    assert not private_redis.client().keys("kt-first:keys*")  # nothing made unasked
    result = app.test_cli_runner().invoke(args=["keys", "init", "--json"])
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)["new"]) == 2
    assert client.get("/readyz").status_code == 200
    assert len(client.get("/jwks.json").json["keys"]) == 2
    development = create_app({**env, "SSO_ENV": "development", "SSO_REDIS_PREFIX": "kt-dev:"})
    assert len(development.test_client().get("/jwks.json").json["keys"]) == 2


@pytest.mark.parametrize("marker", ["vanished", "changed"])
def test_defect_7_the_epoch_watch_reports_a_loss_once(make_keycard, private_redis, marker):
    keycard = instance(make_keycard, private_redis.url)
    watch = keycard.services.epoch
    assert not watch.check()  # first sight: nothing to distrust
    first = watch.seen
    rdb = private_redis.client()
    if marker == "vanished":
        rdb.delete(watch.key)
    else:
        rdb.set(watch.key, "another")
    assert watch.check() and watch.losses == 1
    assert watch.seen != first and rdb.get(watch.key) == watch.seen
    assert not watch.check() and watch.losses == 1
