"""Revocation (RFC 7009) and introspection (RFC 7662), SECURITY 25-26: what a client may
end, what it may learn, and the exact answer for a token it may not know about."""

from __future__ import annotations

import time

import pytest
from joserfc import jwt

from tests.oidc.conftest import (
    active,
    introspect,
    refresh,
    revoke,
    tokens_for,
    userinfo,
)

INACTIVE = {"active": False}


@pytest.fixture
def rp(make_client):
    return make_client(name="App A")


@pytest.fixture
def other(make_client):
    return make_client(name="App B")


@pytest.fixture
def tokens(bob, rp):
    return tokens_for(bob, rp, scope="openid profile offline_access")


def body(response):
    assert response.status_code == 200, (response.status_code, response.text)
    assert response.headers["Cache-Control"] == "no-store"
    return response.json()


# -- 25: revocation ---------------------------------------------------------------------------


def test_revoking_an_unknown_token_answers_200(rp):
    assert revoke(rp, "never-issued-token").status_code == 200
    assert revoke(rp, "aaa.bbb.ccc").status_code == 200


def test_revoking_an_already_revoked_token_answers_200(rp, tokens):
    assert revoke(rp, tokens["access_token"]).status_code == 200
    assert revoke(rp, tokens["access_token"]).status_code == 200
    assert revoke(rp, tokens["refresh_token"]).status_code == 200
    assert revoke(rp, tokens["refresh_token"]).status_code == 200


def test_revoking_an_access_token_makes_it_inactive_everywhere(rp, tokens):
    assert active(rp, tokens["access_token"])
    assert revoke(rp, tokens["access_token"]).status_code == 200
    assert body(introspect(rp, tokens["access_token"])) == INACTIVE
    assert userinfo(rp, tokens["access_token"]).status_code == 401


def test_another_clients_token_stays_active_when_a_client_tries_to_revoke_it(
    rp, other, tokens
):
    response = revoke(other, tokens["access_token"])
    assert response.status_code < 500
    response = revoke(other, tokens["refresh_token"])
    assert response.status_code < 500
    assert active(rp, tokens["access_token"])
    assert active(rp, tokens["refresh_token"])
    assert refresh(rp, tokens["refresh_token"]).status_code == 200


def test_revoking_a_refresh_token_ends_its_access_tokens(rp, tokens):
    rotated = refresh(rp, tokens["refresh_token"]).json()
    assert active(rp, rotated["access_token"])
    assert revoke(rp, rotated["refresh_token"]).status_code == 200
    for access_token in (tokens["access_token"], rotated["access_token"]):
        assert body(introspect(rp, access_token)) == INACTIVE
        assert userinfo(rp, access_token).status_code == 401
    assert refresh(rp, rotated["refresh_token"]).json()["error"] == "invalid_grant"


@pytest.mark.parametrize("hint", ["banana", "id_token", "refresh_token"])
def test_unknown_or_wrong_token_type_hint_is_ignored_at_revocation(rp, tokens, hint):
    assert revoke(rp, tokens["access_token"], token_type_hint=hint).status_code == 200
    assert body(introspect(rp, tokens["access_token"])) == INACTIVE


def test_revocation_without_client_authentication_is_401(rp, tokens):
    response = revoke(rp, tokens["access_token"], auth=None)
    assert response.status_code == 401
    assert active(rp, tokens["access_token"])


def test_revocation_with_a_wrong_secret_is_401_and_revokes_nothing(rp, tokens):
    response = revoke(rp, tokens["access_token"], auth=(rp.client_id, "wrong"))
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    assert active(rp, tokens["access_token"])


# -- 26: introspection ------------------------------------------------------------------------


def test_introspection_of_a_live_token_describes_it(rp, tokens):
    claims = body(introspect(rp, tokens["access_token"]))
    assert claims["active"] is True
    assert claims["client_id"] == rp.client_id
    assert set(claims["scope"].split()) == {"openid", "profile", "offline_access"}
    assert claims["username"] == "bob"
    refresh_claims = body(introspect(rp, tokens["refresh_token"]))
    assert refresh_claims["active"] is True and refresh_claims["client_id"] == rp.client_id


@pytest.mark.parametrize("hint", ["banana", "refresh_token"])
def test_unknown_or_wrong_token_type_hint_is_ignored_at_introspection(rp, tokens, hint):
    assert body(introspect(rp, tokens["access_token"], token_type_hint=hint))["active"] is True


def test_introspection_without_client_authentication_is_401(rp, tokens):
    response = introspect(rp, tokens["access_token"], auth=None)
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    assert "WWW-Authenticate" in response.headers
    assert "active" not in response.json()


def test_introspection_with_a_wrong_secret_is_401(rp, tokens):
    response = introspect(rp, tokens["access_token"], auth=(rp.client_id, "wrong"))
    assert response.status_code == 401
    assert "active" not in response.json()


def test_introspection_by_a_public_client_is_refused(bob, make_client, rp, tokens):
    public = make_client(public=True)
    own = tokens_for(bob, public, scope="openid")
    for token in (own["access_token"], tokens["access_token"]):
        response = introspect(public, token)
        assert response.status_code == 401, response.text
        assert response.json()["error"] == "invalid_client"


def test_revoked_access_token_is_exactly_inactive(rp, tokens):
    revoke(rp, tokens["access_token"])
    assert body(introspect(rp, tokens["access_token"])) == INACTIVE


def test_revoked_refresh_token_is_exactly_inactive(rp, tokens):
    revoke(rp, tokens["refresh_token"])
    assert body(introspect(rp, tokens["refresh_token"])) == INACTIVE


def test_another_clients_tokens_are_exactly_inactive(rp, other, tokens):
    assert active(rp, tokens["access_token"])
    assert body(introspect(other, tokens["access_token"])) == INACTIVE
    assert body(introspect(other, tokens["refresh_token"])) == INACTIVE


def test_unknown_token_is_exactly_inactive(rp):
    assert body(introspect(rp, "not-a-token")) == INACTIVE
    assert body(introspect(rp, "eyJhbGciOiJSUzI1NiJ9.e30.c2ln")) == INACTIVE


def test_expired_access_token_is_exactly_inactive(keycard, rp, tokens):
    # A token we really signed, alive in every way but its exp (waiting 60 s is no test).
    claims = dict(jwt.decode(tokens["access_token"],
                             keycard.services.keys.public_keyset()).claims)
    now = int(time.time())
    claims.update(iat=now - 120, exp=now - 60)
    key = keycard.services.keys.signing_key("RS256")
    expired = jwt.encode({"alg": "RS256", "typ": "at+jwt", "kid": key.kid}, claims, key,
                         algorithms=["RS256"])
    claims.update(exp=now + 60)
    control = jwt.encode({"alg": "RS256", "typ": "at+jwt", "kid": key.kid}, claims, key,
                         algorithms=["RS256"])
    assert body(introspect(rp, control))["active"] is True  # the forgery itself is sound
    assert body(introspect(rp, expired)) == INACTIVE
    assert userinfo(rp, expired).status_code == 401
