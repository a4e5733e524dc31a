"""Tokens over time: key rotation with tokens outstanding, membership changes at refresh."""

from __future__ import annotations

import base64
import json
import time

import requests
from joserfc import jwt
from joserfc.jwk import KeySet

from tests.support import csrf_token, obtain_tokens, sign_in, wait_until

CB = "http://127.0.0.1:9/cb"


def trusted_client(keycard):
    return keycard.services.clients.create(
        name="RP", redirect_uris=[CB], trusted=True)


def _header(token: str) -> dict:
    """The unverified JOSE header (only to read ``kid``; signatures are checked below)."""
    head = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))


def jwks(keycard) -> KeySet:
    return KeySet.import_key_set(requests.get(keycard.url + "/jwks.json").json())


def introspect(keycard, client, secret, token) -> dict:
    return requests.post(keycard.url + "/introspect", data={"token": token},
                         auth=(client.client_id, secret)).json()


def test_key_rotation_keeps_old_tokens_valid_and_reaches_a_second_process(make_keycard, http):
    first = make_keycard()
    # Another process behind the same issuer, sharing Redis: its own key cache in memory.
    second = make_keycard(SSO_ISSUER=first.url)
    client, secret = first.services.clients.create(
        name="RP", redirect_uris=[CB], trusted=True,
        grant_types=["authorization_code", "refresh_token", "client_credentials"])
    sign_in(http, first.url, "bob")
    old = obtain_tokens(http, first.url, client.client_id, secret)
    old_kid = _header(old["access_token"])["kid"]
    assert old_kid in {k["kid"] for k in requests.get(second.url + "/jwks.json").json()["keys"]}

    result = first.app.test_cli_runner().invoke(args=["keys", "rotate", "--json"])
    assert result.exit_code == 0, result.output

    new = obtain_tokens(http, first.url, client.client_id, secret)
    new_kid = _header(new["access_token"])["kid"]
    assert new_kid != old_kid
    # Old tokens still verify (old public key kept in JWKS) and are still active.
    for token in (old["access_token"], old["id_token"]):
        jwt.decode(token, jwks(first), algorithms=["RS256"])
    assert introspect(first, client, secret, old["access_token"])["active"] is True

    # The second process picks the rotation up by itself, without a restart.
    def second_signs_with_new_key() -> bool:
        answer = requests.post(second.url + "/token", data={"grant_type": "client_credentials"},
                               auth=(client.client_id, secret))
        return _header(answer.json()["access_token"])["kid"] == new_kid

    wait_until(second_signs_with_new_key, timeout=15, interval=0.5)
    assert introspect(second, client, secret, old["access_token"])["active"] is True
    assert introspect(second, client, secret, new["access_token"])["active"] is True
    assert {old_kid, new_kid} <= {k["kid"] for k in
                                  requests.get(second.url + "/jwks.json").json()["keys"]}


def refresh(keycard, client, secret, refresh_token) -> requests.Response:
    return requests.post(keycard.url + "/token", data={
        "grant_type": "refresh_token", "refresh_token": refresh_token},
        auth=(client.client_id, secret))


def claims_of(token: str, keycard) -> dict:
    return dict(jwt.decode(token, jwks(keycard), algorithms=["RS256", "ES256"]).claims)


def test_team_added_upstream_flows_into_the_next_refreshed_token(make_keycard, upstream, http):
    keycard = make_keycard(SSO_MEMBERSHIP_MAX_AGE="1")
    keycard.app.test_cli_runner().invoke(args=["roles", "map", "acme/security", "security"])
    client, secret = trusted_client(keycard)
    sign_in(http, keycard.url, "bob")
    tokens = obtain_tokens(http, keycard.url, client.client_id, secret)
    assert "security" not in claims_of(tokens["access_token"], keycard)["roles"]

    upstream.state.add_team_member("acme", "security", "bob")
    issued = time.time()
    wait_until(lambda: time.time() - issued > 1.1, timeout=5)  # membership now stale
    answer = refresh(keycard, client, secret, tokens["refresh_token"])
    assert answer.status_code == 200, answer.text
    claims = claims_of(answer.json()["access_token"], keycard)
    assert "security" in claims["roles"] and "acme:security" in claims["groups"]


def test_removal_from_the_org_fails_refresh_and_ends_sessions(make_keycard, upstream, http,
                                                               rdb, prefix):
    keycard = make_keycard(SSO_MEMBERSHIP_MAX_AGE="1")
    client, secret = trusted_client(keycard)
    sign_in(http, keycard.url, "bob")
    tokens = obtain_tokens(http, keycard.url, client.client_id, secret)

    upstream.state.remove_user_from_org("acme", "bob")
    issued = time.time()
    wait_until(lambda: time.time() - issued > 1.1, timeout=5)
    answer = refresh(keycard, client, secret, tokens["refresh_token"])
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_grant"
    assert introspect(keycard, client, secret, tokens["access_token"]) == {"active": False}
    assert not list(rdb.scan_iter(match=f"{prefix}sess:*"))
    assert "Sign in with GitHub" in http.get(keycard.url + "/").text


def test_signing_out_of_keycard_ends_that_sessions_refresh_tokens(keycard, http):
    client, secret = trusted_client(keycard)
    portal = sign_in(http, keycard.url, "bob")
    tokens = obtain_tokens(http, keycard.url, client.client_id, secret)
    http.post(keycard.url + "/logout", data={"csrf_token": csrf_token(portal.text)})
    answer = refresh(keycard, client, secret, tokens["refresh_token"])
    assert answer.json()["error"] == "invalid_grant"
    assert introspect(keycard, client, secret, tokens["access_token"]) == {"active": False}
