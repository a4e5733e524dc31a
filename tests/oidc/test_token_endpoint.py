"""The token endpoint (SECURITY 15-21): single-use codes bound to client and redirect,
client authentication, no-store answers, and refresh-token rotation with reuse detection."""

from __future__ import annotations

import math
import threading

import pytest

from sso.crypto import hash_secret
from sso.oidc.tokens import client_subject, subject_for
from tests.oidc.conftest import (
    CB,
    active,
    get_code,
    introspect,
    redeem,
    refresh,
    tokens_for,
    userinfo,
)
from tests.support import wait_until

OTHER_CB = "https://app.example.com/cb"


@pytest.fixture
def rp(make_client):
    return make_client(name="App A", redirect_uris=[CB, OTHER_CB])


@pytest.fixture
def other(make_client):
    return make_client(name="App B")


def assert_error(response, error: str, status: int = 400) -> None:
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert body["error"] == error, body
    assert "access_token" not in body and "refresh_token" not in body


def assert_dead(rp, tokens) -> None:
    """Everything a token response carried is now refused."""
    assert active(rp, tokens["access_token"]) is False
    assert userinfo(rp, tokens["access_token"]).status_code == 401
    if "refresh_token" in tokens:
        assert active(rp, tokens["refresh_token"]) is False
        assert_error(refresh(rp, tokens["refresh_token"]), "invalid_grant")


# -- 15: codes are single-use, and a replay revokes what the code produced ----------------


def test_code_redeemed_twice_at_once_gives_exactly_one_success_and_kills_its_tokens(bob, rp):
    for _ in range(3):  # the race has several interleavings: try a few
        code, verifier = get_code(bob, rp, scope="openid offline_access")
        barrier = threading.Barrier(2)
        answers = []

        def attempt(code=code, verifier=verifier, barrier=barrier, answers=answers):
            barrier.wait()
            answers.append(redeem(rp, code, verifier))

        threads = [threading.Thread(target=attempt) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(15)
        ok = [a for a in answers if a.status_code == 200]
        failed = [a for a in answers if a.status_code != 200]
        assert len(ok) == 1 and len(failed) == 1, [(a.status_code, a.text) for a in answers]
        assert_error(failed[0], "invalid_grant")
        assert_dead(rp, ok[0].json())


def test_code_redeemed_again_later_is_invalid_grant_and_revokes_the_first_tokens(bob, rp):
    code, verifier = get_code(bob, rp, scope="openid offline_access")
    first = redeem(rp, code, verifier)
    assert first.status_code == 200
    tokens = first.json()
    assert active(rp, tokens["access_token"]) and active(rp, tokens["refresh_token"])
    assert_error(redeem(rp, code, verifier), "invalid_grant")
    assert_dead(rp, tokens)
    assert introspect_body(rp, tokens["access_token"]) == {"active": False}


def introspect_body(rp, token):
    response = introspect(rp, token)
    assert response.status_code == 200
    return response.json()


def test_codes_carry_at_least_128_bits(bob, rp):
    codes = [get_code(bob, rp)[0] for _ in range(6)]
    assert len(set(codes)) == len(codes)
    alphabet = set("".join(codes))
    assert alphabet <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
    # Every code draws from an alphabet at least this large, at this length.
    bits = min(len(c) for c in codes) * math.log2(len(alphabet))
    assert bits >= 128, (codes[0], bits)


# -- 16: codes expire ------------------------------------------------------------------------


def test_code_lives_at_most_60_seconds_and_is_invalid_grant_after(bob, rp, keycard, rdb):
    code, verifier = get_code(bob, rp)
    key = keycard.services.store.keys.code(hash_secret(code))
    assert 0 < rdb.ttl(key) <= 60
    rdb.pexpire(key, 1)
    wait_until(lambda: not rdb.exists(key), timeout=5)
    assert_error(redeem(rp, code, verifier), "invalid_grant")


# -- 17: codes are bound to their client and redirect URI ------------------------------------


def test_different_redirect_uri_at_token_endpoint_is_invalid_grant(bob, rp):
    code, verifier = get_code(bob, rp)
    assert_error(redeem(rp, code, verifier, redirect_uri=OTHER_CB), "invalid_grant")


def test_missing_redirect_uri_at_token_endpoint_is_refused(bob, rp):
    code, verifier = get_code(bob, rp)
    response = rp.post("/token", {"grant_type": "authorization_code", "code": code,
                                  "code_verifier": verifier})
    assert response.status_code == 400
    assert response.json()["error"] in ("invalid_grant", "invalid_request")


def test_code_of_client_a_redeemed_by_client_b_is_invalid_grant(bob, rp, other):
    code, verifier = get_code(bob, rp)
    assert_error(redeem(other, code, verifier, redirect_uri=CB), "invalid_grant")


def test_unknown_code_is_invalid_grant(rp):
    assert_error(redeem(rp, "not-a-code-we-issued-" + "x" * 30, "v" * 43), "invalid_grant")


# -- 18: response hygiene and client authentication ------------------------------------------


def test_token_responses_are_never_cached(bob, rp):
    code, verifier = get_code(bob, rp)
    for response in (redeem(rp, code, verifier), redeem(rp, code, verifier)):
        assert response.headers["Cache-Control"] == "no-store"
        assert response.headers["Pragma"] == "no-cache"


def test_bad_secret_via_basic_is_401_invalid_client_with_www_authenticate(bob, rp):
    code, verifier = get_code(bob, rp)
    response = redeem(rp, code, verifier, auth=(rp.client_id, "wrong-secret"))
    assert_error(response, "invalid_client", status=401)
    assert response.headers["WWW-Authenticate"].lower().startswith("basic")
    assert response.headers["Cache-Control"] == "no-store"
    # The refused attempt did not burn the code: the real client still redeems it.
    assert redeem(rp, code, verifier).status_code == 200


def test_bad_secret_in_the_body_is_invalid_client(bob, rp):
    code, verifier = get_code(bob, rp)
    response = redeem(rp, code, verifier, auth=None, client_id=rp.client_id,
                      client_secret="wrong")
    assert response.status_code in (400, 401)
    assert response.json()["error"] == "invalid_client"


def test_confidential_client_without_secret_is_invalid_client(bob, rp):
    code, verifier = get_code(bob, rp)
    response = redeem(rp, code, verifier, auth=None, client_id=rp.client_id)
    assert response.status_code in (400, 401)
    assert response.json()["error"] == "invalid_client"


# -- 19: refresh scope and client binding --------------------------------------------------


def test_wider_scope_on_refresh_is_invalid_scope(bob, rp):
    tokens = tokens_for(bob, rp, scope="openid offline_access")
    assert_error(refresh(rp, tokens["refresh_token"], scope="openid offline_access email"),
                 "invalid_scope")
    # The refused request did not use the token up.
    assert refresh(rp, tokens["refresh_token"]).status_code == 200


def test_narrower_scope_on_refresh_is_granted(bob, rp):
    tokens = tokens_for(bob, rp, scope="openid email offline_access")
    response = refresh(rp, tokens["refresh_token"], scope="openid offline_access")
    assert response.status_code == 200, response.text
    assert set(response.json()["scope"].split()) == {"openid", "offline_access"}


def test_refresh_token_of_client_b_with_client_a_credentials_is_invalid_grant(bob, rp, other):
    tokens = tokens_for(bob, other, scope="openid offline_access")
    assert_error(refresh(rp, tokens["refresh_token"]), "invalid_grant")
    assert refresh(other, tokens["refresh_token"]).status_code == 200


# -- 20: rotation and reuse detection ---------------------------------------------------------


def test_refresh_rotates_and_reusing_rt1_revokes_the_whole_family(bob, rp):
    first = tokens_for(bob, rp, scope="openid offline_access")
    second_response = refresh(rp, first["refresh_token"])
    assert second_response.status_code == 200, second_response.text
    second = second_response.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert active(rp, second["access_token"]) and active(rp, second["refresh_token"])

    assert_error(refresh(rp, first["refresh_token"]), "invalid_grant")
    assert_dead(rp, second)
    assert active(rp, first["access_token"]) is False


def test_refresh_without_offline_access_issues_no_refresh_token(bob, rp):
    tokens = tokens_for(bob, rp, scope="openid profile")
    assert "refresh_token" not in tokens
    assert "offline_access" not in tokens["scope"].split()


def test_client_not_allowed_refresh_grant_gets_no_refresh_token(bob, make_client):
    no_refresh = make_client(grant_types=["authorization_code"])
    tokens = tokens_for(bob, no_refresh, scope="openid offline_access")
    assert "refresh_token" not in tokens


# -- 21: client credentials ------------------------------------------------------------------


def test_a_service_sub_can_never_equal_a_person_sub():
    person = subject_for("https://sso.example.com", "1002")
    service = client_subject("1002")
    assert person != service
    assert all(c in "0123456789abcdef" for c in person) and ":" in service


def test_client_credentials_issue_no_refresh_token_and_a_service_sub(make_client, discovery):
    assert "client_credentials" in discovery["grant_types_supported"]
    service = make_client(grant_types=["client_credentials"], redirect_uris=[])
    response = service.post("/token", {"grant_type": "client_credentials"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert "refresh_token" not in body
    claims = introspect_body(service, body["access_token"])
    assert claims["sub"] == client_subject(service.client_id)

