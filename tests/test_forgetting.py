"""Issue #12, defect 8: the ``users`` directory and the ``logins`` index grew forever.

People whose last sign-in is older than ``SSO_FORGET_AFTER_DAYS`` are forgotten: out of
both indexes, their records deleted, their remaining access ended, the audit trail kept.
Hourly after a sign-in (a lock key), or at will with ``sso users prune``.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import requests

from sso.config import ConfigError, load_settings
from tests.support import RP_CALLBACK, obtain_tokens, sign_in, wait_until

BOB, ALICE, CAROL = "1002", "1001", "1003"
OLD = time.time() - 401 * 86_400  # past the default 400 days


def make_stale(rdb: Any, keycard: Any, user_id: str) -> None:
    rdb.zadd(keycard.services.store.keys.users_index(), {user_id: OLD})


def prune(keycard: Any, *args: str) -> dict[str, Any]:
    result = keycard.app.test_cli_runner().invoke(args=["users", "prune", "--json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def keys_naming(rdb: Any, prefix: str, user_id: str) -> list[str]:
    return sorted(k for k in rdb.scan_iter(match=f"{prefix}*", count=1000)
                  if f":{user_id}" in k[len(prefix) - 1:])


def test_defect_8_users_and_logins_indexes_pruned(keycard, rdb, prefix):
    keys = keycard.services.store.keys
    client, secret = keycard.services.clients.create(name="Wiki", redirect_uris=[RP_CALLBACK],
                                                     trusted=False)
    bob = requests.Session()
    sign_in(bob, keycard.url, "bob")
    # Consent given earlier (untrusted client): the consent record is one of bob's keys.
    keycard.services.records.remember_consent(BOB, client.client_id,
                                              {"openid", "offline_access"})
    tokens = obtain_tokens(bob, keycard.url, client.client_id, secret,
                           scope="openid offline_access")
    assert tokens["refresh_token"]
    sign_in(requests.Session(), keycard.url, "alice")
    rdb.hset(keys.login_index(), "bob-before-rename", BOB)  # a login bob used to have
    make_stale(rdb, keycard, BOB)
    assert keys_naming(rdb, prefix, BOB)  # profile, sessions, grants, consents...

    listed = prune(keycard, "--dry-run")
    assert [p["user_id"] for p in listed["forgotten"]] == [BOB]
    assert sorted(listed["forgotten"][0]["logins"]) == ["bob", "bob-before-rename"]
    assert rdb.zscore(keys.users_index(), BOB) is not None  # a dry run changes nothing

    done = prune(keycard)
    assert [p["user_id"] for p in done["forgotten"]] == [BOB]
    assert rdb.zscore(keys.users_index(), BOB) is None
    assert BOB not in rdb.hvals(keys.login_index())
    assert keys_naming(rdb, prefix, BOB) == []
    # Alice signed in recently: untouched.
    assert rdb.zscore(keys.users_index(), ALICE) is not None
    assert rdb.hget(keys.login_index(), "alice") == ALICE
    assert keycard.services.accounts.find_by_login("alice") is not None
    # Whatever bob still held ended with him (nothing live points at a forgotten person).
    answer = requests.post(keycard.url + "/token", auth=(client.client_id, secret), data={
        "grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}, timeout=10)
    assert answer.json()["error"] == "invalid_grant"
    assert "Sign in with GitHub" in bob.get(keycard.url + "/", timeout=10).text
    # The audit trail keeps what bob did, and says he was forgotten.
    events = keycard.services.audit.recent(100)
    assert any(e["event"] == "signin.success" and e["actor"] == "bob" for e in events)
    forgotten = [e for e in events if e["event"] == "person.forgotten"]
    assert len(forgotten) == 1 and forgotten[0]["details"]["count"] == 1
    assert prune(keycard)["forgotten"] == []  # nothing left to forget

    # Bob comes back: a new person to Keycard, whom it knows again.
    sign_in(requests.Session(), keycard.url, "bob")
    assert rdb.hget(keys.login_index(), "bob") == BOB


def test_defect_8_pruning_runs_after_a_sign_in_at_most_once_an_hour(keycard, rdb):
    keys = keycard.services.store.keys
    sign_in(requests.Session(), keycard.url, "alice")
    sign_in(requests.Session(), keycard.url, "carol")  # the lock is taken, nobody is stale
    assert 3500 < rdb.ttl(keys.forget_lock()) <= 3600
    make_stale(rdb, keycard, CAROL)
    sign_in(requests.Session(), keycard.url, "alice")
    assert rdb.zscore(keys.users_index(), CAROL) is not None  # not before the hour is up

    rdb.delete(keys.forget_lock())  # the hour has passed
    sign_in(requests.Session(), keycard.url, "alice")
    # The prune runs after the response, in steps (directory entry, then logins): wait
    # for the last.
    wait_until(lambda: rdb.zscore(keys.users_index(), CAROL) is None
               and rdb.hget(keys.login_index(), "carol") is None, timeout=10)
    assert rdb.zscore(keys.users_index(), ALICE) is not None


def test_forgetting_can_be_turned_off(make_keycard, rdb):
    keycard = make_keycard(SSO_FORGET_AFTER_DAYS="0")
    sign_in(requests.Session(), keycard.url, "bob")
    make_stale(rdb, keycard, BOB)
    sign_in(requests.Session(), keycard.url, "alice")
    assert not rdb.exists(keycard.services.store.keys.forget_lock())
    result = keycard.app.test_cli_runner().invoke(args=["users", "prune"])
    assert result.exit_code != 0 and "never forgets" in result.output
    assert rdb.zscore(keycard.services.store.keys.users_index(), BOB) is not None


@pytest.mark.parametrize(("value", "expected"), [("", 400), ("0", 0), ("730", 730)])
def test_forget_after_days_setting(value, expected):
    assert load_settings({"SSO_FORGET_AFTER_DAYS": value}).forget_after_days == expected


@pytest.mark.parametrize("value", ["-1", "soon", "40000"])
def test_forget_after_days_refuses_nonsense(value):
    with pytest.raises(ConfigError) as failure:
        load_settings({"SSO_FORGET_AFTER_DAYS": value})
    assert "SSO_FORGET_AFTER_DAYS" in str(failure.value)


def test_a_short_forget_after_days_is_allowed_with_a_warning():
    settings = load_settings({"SSO_FORGET_AFTER_DAYS": "90"})
    assert settings.forget_after_days == 90
    assert any("SSO_FORGET_AFTER_DAYS=90" in w for w in settings.warnings)
