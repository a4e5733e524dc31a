"""Revocations and ended sessions are answered only once a replica holds them
(SSO_REDIS_WAIT_REPLICAS, ``Store.confirmed``): a failover cannot bring them back.
The failover itself is exercised in tests/topology/test_sentinel_failover.py."""

from __future__ import annotations

import time

import pytest
import requests

from sso import storage
from sso.config import ConfigError, load_settings
from tests.oidc.conftest import RP


def test_sentinel_urls_wait_for_one_replica_by_default_others_for_none():
    assert load_settings({"SSO_REDIS_URL": "redis+sentinel://h:26379/m"}).redis_wait_replicas == 1
    assert load_settings({"SSO_REDIS_URL": "redis://h:6379/0"}).redis_wait_replicas == 0
    assert load_settings({"SSO_REDIS_URL": "redis+sentinel://h:26379/m",
                          "SSO_REDIS_WAIT_REPLICAS": "0"}).redis_wait_replicas == 0
    with pytest.raises(ConfigError, match="not supported with redis\\+cluster"):
        load_settings({"SSO_REDIS_URL": "redis+cluster://h:7000",
                       "SSO_REDIS_WAIT_REPLICAS": "1"})
    with pytest.raises(ConfigError, match="whole number"):
        load_settings({"SSO_REDIS_WAIT_REPLICAS": "many"})


def wait_calls(client) -> int:
    stats = client.info("commandstats")
    return int(stats.get("cmdstat_wait", {}).get("calls", 0))


def test_a_revocation_on_sentinel_is_confirmed_by_the_replica(make_keycard, sentinel_topology):
    keycard = make_keycard(redis_url=sentinel_topology.url)
    client, secret = keycard.services.clients.create(
        name="Bot", grant_types=["client_credentials"], scopes=["roles"], redirect_uris=[])
    bot = RP(client, secret, keycard.url)
    token = bot.post("/token", {"grant_type": "client_credentials"}).json()["access_token"]
    master = sentinel_topology.master.client()
    try:
        before = wait_calls(master)
        assert bot.post("/revoke", {"token": token}).status_code == 200
        assert wait_calls(master) == before + 1
        assert bot.post("/introspect", {"token": token}).json() == {"active": False}
    finally:
        store = keycard.services.store
        for key in list(master.scan_iter(match=store.keys.prefix + "*")):
            master.delete(key)


def test_an_unconfirmable_revocation_is_a_503_not_a_silent_success(make_keycard,
                                                                    monkeypatch):
    """Standalone Redis told to wait for a replica it does not have: nothing can confirm the
    write, and no sentinel can say that no failover is under way, so the answer is 503
    ("not done, try again") within the bound, never 200."""
    monkeypatch.setattr(storage, "CONFIRM_SECONDS", 0.6)
    keycard = make_keycard(SSO_REDIS_WAIT_REPLICAS="1")
    client, secret = keycard.services.clients.create(
        name="Bot", grant_types=["client_credentials"], scopes=["roles"], redirect_uris=[])
    bot = RP(client, secret, keycard.url)
    token = bot.post("/token", {"grant_type": "client_credentials"}).json()["access_token"]
    started = time.monotonic()
    answer = requests.post(keycard.url + "/revoke", data={"token": token},
                           auth=(client.client_id, secret), timeout=10)
    assert answer.status_code == 503, answer.text
    assert answer.json()["error"] == "temporarily_unavailable"
    assert time.monotonic() - started < 3
