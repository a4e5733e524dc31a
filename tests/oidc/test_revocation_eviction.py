"""Issue #12, defect 2: a revocation must not live in an evictable record alone.

Under a ``volatile-*`` policy a full Redis evicts keys that carry a TTL. The run that
found the defect saw a ``revoked:{jti}`` record evicted and the revoked token answer
``active: true`` again. Here eviction is simulated by deleting the records such a policy
may evict; the revoked token must stay refused at introspection, userinfo and by the
provider check forward auth uses.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis

from tests.oidc.conftest import RP, introspect, refresh, revoke, tokens_for, userinfo


@pytest.fixture
def rp(make_client: Any) -> Any:
    return make_client(name="App A")


def evict(rdb: redis.Redis, prefix: str, *, only: tuple[str, ...] = ()) -> list[str]:
    """Delete what ``volatile-lru`` may evict: every key under ``prefix`` with a TTL (or only
    those whose name after the prefix starts with one of ``only``)."""
    gone = []
    for key in rdb.scan_iter(match=f"{prefix}*", count=1000):
        name = key[len(prefix):]
        if only and not name.startswith(only):
            continue
        if rdb.ttl(key) > 0:
            rdb.delete(key)
            gone.append(name)
    return gone


def refused(keycard: Any, rp: Any, token: str) -> bool:
    answer = introspect(rp, token)
    assert answer.status_code == 200, answer.text
    return (answer.json() == {"active": False}
            and keycard.services.provider.token_claims(token) is None)


def test_defect_2_revocation_survives_eviction_of_the_revoked_record(keycard, bob, rp, rdb,
                                                                      prefix):
    tokens = tokens_for(bob, rp, scope="openid profile offline_access")
    token = tokens["access_token"]
    assert introspect(rp, token).json()["active"] is True
    assert revoke(rp, token).status_code == 200
    # What a volatile-lru eviction takes first: the revocation record nobody reads again
    # (the grant is read at every use of its tokens, so it is the most recently used).
    evict(rdb, prefix, only=("revoked:", "grant-dead:"))
    assert refused(keycard, rp, token)
    assert userinfo(rp, token).status_code == 401
    # RFC 7009 §2.1: the revocation ended the grant, so its refresh token went with it.
    assert refresh(rp, tokens["refresh_token"]).json()["error"] == "invalid_grant"


def test_defect_2_revocation_survives_eviction_of_every_volatile_key_client_credentials(
        keycard, rdb, prefix):
    client, secret = keycard.services.clients.create(
        name="Deploy bot", grant_types=["client_credentials"], scopes=["roles"],
        roles=["deployer"])
    bot = RP(client, secret, keycard.url)
    grant = {"grant_type": "client_credentials"}
    token = bot.post("/token", grant).json()["access_token"]
    kept = bot.post("/token", grant).json()["access_token"]
    assert revoke(bot, token).status_code == 200
    assert refused(keycard, bot, token)
    gone = evict(rdb, prefix)
    assert any(name.startswith("revoked:") for name in gone)  # the old record did go
    assert refused(keycard, bot, token)
    # Only that token: another one of the same client is untouched.
    assert introspect(bot, kept).json()["active"] is True


def test_revoked_client_tokens_are_pruned_once_expired(keycard, rdb):
    records = keycard.services.records
    listed = keycard.services.store.keys.revoked_client_tokens("c1")
    records.revoke_access_token("old-jti", 1, "c1")  # expired long ago
    records.revoke_access_token("live-jti", 2_000_000_000, "c1")
    assert rdb.zrange(listed, 0, -1) == ["live-jti"]
    assert rdb.ttl(listed) == -1  # durable: no eviction policy but allkeys-* can take it
    assert not records.access_token_alive("live-jti", "c1")
    assert records.access_token_alive("other-jti", "c1")
