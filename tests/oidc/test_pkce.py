"""PKCE (SECURITY 10-14): S256 only, required for public clients at the authorization
endpoint already, verified at the token endpoint, and no downgrade either way."""

from __future__ import annotations

import pytest

from tests.oidc.conftest import (
    authorize,
    get_code,
    new_verifier,
    redeem,
    s256,
    sent_back,
)


@pytest.fixture
def public(make_client):
    rp = make_client(public=True)
    assert rp.secret is None and rp.client.public
    return rp


@pytest.fixture
def confidential(make_client):
    return make_client()


def assert_token_error(response, error: str, status: int = 400) -> None:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.json()["error"] == error, response.text
    assert "access_token" not in response.json()


# -- 10: public clients must send a challenge ----------------------------------------------


def test_public_client_without_code_challenge_is_invalid_request_at_authorize(bob, public):
    response = authorize(bob, public, pkce=False)
    query = sent_back(response)
    assert query["error"] == "invalid_request"
    assert "code" not in query
    assert query["state"] == response.sent["state"] and query["iss"]


def test_confidential_client_registered_with_require_pkce_needs_a_challenge(bob, make_client):
    strict = make_client(require_pkce=True)
    query = sent_back(authorize(bob, strict, pkce=False))
    assert query["error"] == "invalid_request"


def test_public_client_with_pkce_gets_tokens_without_a_secret(bob, public):
    code, verifier = get_code(bob, public)
    response = redeem(public, code, verifier)
    assert response.status_code == 200, response.text
    assert response.json()["access_token"]


def test_public_client_redeeming_without_verifier_is_refused(bob, public):
    code, _ = get_code(bob, public)
    assert_token_error(redeem(public, code), "invalid_request")


# -- 11: S256 only -------------------------------------------------------------------------


def test_plain_method_is_refused(bob, public):
    verifier = new_verifier()
    response = authorize(bob, public, pkce=False, code_challenge=verifier,
                         code_challenge_method="plain")
    query = sent_back(response)
    assert query["error"] == "invalid_request"
    assert "code" not in query


def test_challenge_without_method_is_refused_not_taken_as_plain(bob, confidential):
    verifier = new_verifier()
    response = authorize(bob, confidential, pkce=False, code_challenge=s256(verifier))
    query = sent_back(response)
    assert query["error"] == "invalid_request"
    assert "code" not in query


def test_unknown_method_is_refused(bob, confidential):
    response = authorize(bob, confidential, pkce=False, code_challenge=s256(new_verifier()),
                         code_challenge_method="S512")
    assert sent_back(response)["error"] == "invalid_request"


def test_discovery_lists_only_s256(discovery):
    assert discovery["code_challenge_methods_supported"] == ["S256"]


# -- 12: the verifier ------------------------------------------------------------------------


def test_wrong_verifier_is_invalid_grant(bob, public):
    code, _ = get_code(bob, public)
    assert_token_error(redeem(public, code, new_verifier()), "invalid_grant")


def test_wrong_verifier_for_a_confidential_client_is_invalid_grant(bob, confidential):
    code, _ = get_code(bob, confidential)
    assert_token_error(redeem(confidential, code, new_verifier()), "invalid_grant")


def test_verifier_shorter_than_43_characters_is_invalid_request(bob, public):
    short = "a" * 42
    response = authorize(bob, public, pkce=False, code_challenge=s256(short),
                         code_challenge_method="S256")
    code = sent_back(response)["code"]  # the challenge itself is fine
    assert_token_error(redeem(public, code, short), "invalid_request")


def test_verifier_with_characters_outside_the_alphabet_is_invalid_request(bob, public):
    bad = "a" * 42 + "+"
    response = authorize(bob, public, pkce=False, code_challenge=s256(bad),
                         code_challenge_method="S256")
    code = sent_back(response)["code"]
    assert_token_error(redeem(public, code, bad), "invalid_request")


def test_verifier_sent_as_the_challenge_itself_is_refused(bob, public):
    # A client that "hashes" nothing (plain semantics) must not get through.
    code, verifier = get_code(bob, public)
    assert_token_error(redeem(public, code, s256(verifier)), "invalid_grant")


# -- 13: no downgrade --------------------------------------------------------------------------


def test_code_issued_without_challenge_redeemed_with_a_verifier_is_refused(bob, confidential):
    code, verifier = get_code(bob, confidential, pkce=False)
    assert verifier is None
    response = redeem(confidential, code, new_verifier())
    assert response.status_code == 400, response.text
    assert response.json()["error"] in ("invalid_grant", "invalid_request")
    assert "access_token" not in response.json()


def test_code_issued_with_a_challenge_redeemed_without_verifier_is_refused(bob, confidential):
    code, _ = get_code(bob, confidential)
    assert_token_error(redeem(confidential, code), "invalid_request")


def test_confidential_client_without_pkce_still_works_when_not_required(bob, confidential):
    code, _ = get_code(bob, confidential, pkce=False)
    assert redeem(confidential, code).status_code == 200


# -- 14: confidential client with PKCE ----------------------------------------------------------


def test_confidential_client_with_valid_pkce_succeeds(bob, confidential):
    code, verifier = get_code(bob, confidential, scope="openid offline_access")
    response = redeem(confidential, code, verifier)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"].lower() == "bearer"
    assert body["access_token"] and body["id_token"] and body["refresh_token"]
