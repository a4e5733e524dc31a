"""OpenID Connect on top of the code flow (SECURITY 27-32, 36): ID tokens, max_age and
prompt, userinfo, the request parameters the conformance suite sends, forged JWTs, and
the per-client role gate. Relying parties verify what they get with the published JWKS."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import pytest
import requests
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey

from tests.oidc.conftest import (
    active,
    authorize,
    get_code,
    introspect,
    redeem,
    sent_back,
    through_upstream,
    tokens_for,
    userinfo,
)
from tests.support import sign_in, wait_until


@pytest.fixture
def rp(make_client):
    return make_client(name="Wiki")


def jwks_of(discovery: dict[str, Any]) -> dict[str, Any]:
    response = requests.get(discovery["jwks_uri"], timeout=10)
    assert response.status_code == 200
    found: dict[str, Any] = response.json()
    return found


def verify_id_token(token: str, discovery: dict[str, Any]) -> tuple[dict[str, Any],
                                                                     dict[str, Any]]:
    """Verify as a relying party would: signature against the published JWKS."""
    keys = KeySet.import_key_set(jwks_of(discovery))
    decoded = jwt.decode(token, keys, algorithms=["RS256", "ES256"])
    return dict(decoded.header), dict(decoded.claims)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def at_hash(access_token: str) -> str:
    return b64(hashlib.sha256(access_token.encode("ascii")).digest()[:16])


def sent_to_sign_in(response: requests.Response) -> bool:
    """Keycard's answer sends the browser straight to the upstream's sign-in, whatever
    session it has (issue #15: no /login hop, which could bounce back on a session)."""
    assert response.status_code == 302, (response.status_code, response.text[:300])
    location = urlsplit(urljoin(response.url, response.headers["Location"]))
    assert location.path == "/login/oauth/authorize", location
    return parse_qs(location.query).get("response_type") == ["code"]


def claims_of(token: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(unb64(token.split(".")[1]))
    return found


def header_of(token: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(unb64(token.split(".")[0]))
    return found


# -- 27: nonce -----------------------------------------------------------------------------


def test_nonce_is_echoed_in_the_id_token(bob, rp, discovery):
    tokens = tokens_for(bob, rp, nonce="n-0S6_WzA2Mj")
    _, claims = verify_id_token(tokens["id_token"], discovery)
    assert claims["nonce"] == "n-0S6_WzA2Mj"


def test_code_flow_without_nonce_still_works(bob, rp, discovery):
    tokens = tokens_for(bob, rp, nonce=None)
    _, claims = verify_id_token(tokens["id_token"], discovery)
    assert "nonce" not in claims


# -- 28: the ID token --------------------------------------------------------------------------


def test_id_token_is_rs256_by_default_with_at_hash_iss_aud_and_a_published_kid(
    bob, rp, discovery
):
    tokens = tokens_for(bob, rp, nonce="n1")
    header, claims = verify_id_token(tokens["id_token"], discovery)
    assert header["alg"] == "RS256"
    kids = {key["kid"]: key for key in jwks_of(discovery)["keys"]}
    assert header["kid"] in kids and kids[header["kid"]]["kty"] == "RSA"
    assert claims["iss"] == discovery["issuer"]
    assert claims["aud"] in (rp.client_id, [rp.client_id])
    assert claims["at_hash"] == at_hash(tokens["access_token"])
    assert claims["exp"] > time.time() > claims["iat"] - 5
    assert isinstance(claims["auth_time"], int) and claims["auth_time"] <= time.time()
    assert claims["sub"] and claims["sub"] != "bob"


def test_at_hash_matches_only_its_own_access_token(bob, rp, discovery):
    one = tokens_for(bob, rp)
    two = tokens_for(bob, rp)
    _, claims = verify_id_token(one["id_token"], discovery)
    assert claims["at_hash"] != at_hash(two["access_token"])


def test_client_registered_for_es256_gets_es256_id_tokens(bob, make_client, discovery):
    es = make_client(name="EC app", id_token_alg="ES256")
    tokens = tokens_for(bob, es)
    header, claims = verify_id_token(tokens["id_token"], discovery)
    assert header["alg"] == "ES256"
    kids = {key["kid"]: key for key in jwks_of(discovery)["keys"]}
    assert kids[header["kid"]]["kty"] == "EC"
    assert claims["at_hash"] == at_hash(tokens["access_token"])
    assert claims["aud"] in (es.client_id, [es.client_id])


def test_none_and_hmac_are_never_advertised_nor_published(discovery):
    algs = discovery["id_token_signing_alg_values_supported"]
    assert "none" not in algs and not any(a.startswith("HS") for a in algs)
    assert "RS256" in algs
    keys = jwks_of(discovery)["keys"]
    assert keys and all(k["kty"] in ("RSA", "EC") for k in keys)
    assert not any("d" in k or "p" in k or "k" in k for k in keys)  # public halves only


# -- 29: max_age -------------------------------------------------------------------------------


def test_max_age_1_after_it_passed_forces_a_fresh_sign_in_and_a_newer_auth_time(
    bob, rp, discovery
):
    first = tokens_for(bob, rp)
    _, before = verify_id_token(first["id_token"], discovery)
    wait_until(lambda: time.time() - before["auth_time"] > 1.2, timeout=5)

    response = authorize(bob, rp, max_age="1", nonce="again")
    assert sent_to_sign_in(response)
    back = through_upstream(bob, response, "bob")
    query = sent_back(back)
    assert query["state"] == response.sent["state"]
    token = redeem(rp, query["code"], response.code_verifier)
    _, after = verify_id_token(token.json()["id_token"], discovery)
    assert after["auth_time"] > before["auth_time"]
    assert after["nonce"] == "again"
    assert after["sub"] == before["sub"]


def test_max_age_10000_needs_no_sign_in_and_keeps_auth_time(bob, rp, discovery):
    first = tokens_for(bob, rp)
    _, before = verify_id_token(first["id_token"], discovery)
    response = authorize(bob, rp, max_age="10000")
    query = sent_back(response)  # straight back to the client, no sign-in page
    token = redeem(rp, query["code"], response.code_verifier)
    _, after = verify_id_token(token.json()["id_token"], discovery)
    assert after["auth_time"] == before["auth_time"]


def test_auth_time_is_the_real_sign_in_time(keycard, http, rp, discovery):
    started = int(time.time())
    sign_in(http, keycard.url, "bob")
    ended = time.time()
    tokens = tokens_for(http, rp)
    _, claims = verify_id_token(tokens["id_token"], discovery)
    assert started <= claims["auth_time"] <= ended


def test_max_age_with_prompt_none_after_it_passed_is_login_required(bob, rp, discovery):
    first = tokens_for(bob, rp)
    _, before = verify_id_token(first["id_token"], discovery)
    wait_until(lambda: time.time() - before["auth_time"] > 1.2, timeout=5)
    query = sent_back(authorize(bob, rp, max_age="1", prompt="none"))
    assert query["error"] == "login_required" and query["iss"] == discovery["issuer"]


# -- 30: prompt ----------------------------------------------------------------------------------


def test_prompt_none_without_session_is_login_required_with_state_and_iss(http, rp, discovery):
    response = authorize(http, rp, prompt="none")
    query = sent_back(response)
    assert query["error"] == "login_required"
    assert query["state"] == response.sent["state"]
    assert query["iss"] == discovery["issuer"]
    assert "code" not in query


def test_prompt_none_with_session_and_trusted_client_returns_a_code(bob, rp):
    assert sent_back(authorize(bob, rp, prompt="none"))["code"]


def test_prompt_login_forces_sign_in_despite_a_session(bob, rp):
    response = authorize(bob, rp, prompt="login")
    assert sent_to_sign_in(response)
    # through_upstream asserts the browser really lands on the upstream's sign-in page
    # (a /login that bounced straight back because of the session would fail there).
    back = through_upstream(bob, response, "bob")
    assert sent_back(back)["code"]


def test_prompt_none_and_login_together_is_invalid_request(bob, rp, discovery):
    response = authorize(bob, rp, prompt="none login")
    query = sent_back(response)
    assert query["error"] == "invalid_request"
    assert query["state"] == response.sent["state"]
    assert query["iss"] == discovery["issuer"]


def test_prompt_none_with_session_but_no_consent_is_consent_required(bob, make_client,
                                                                     discovery):
    untrusted = make_client(name="Third party", trusted=False)
    response = authorize(bob, untrusted, prompt="none")
    query = sent_back(response)
    assert query["error"] == "consent_required"
    assert query["state"] == response.sent["state"]
    assert query["iss"] == discovery["issuer"]


# -- 31: userinfo --------------------------------------------------------------------------------


def test_userinfo_by_get_and_post_with_bearer_matches_the_id_token(bob, rp, discovery):
    tokens = tokens_for(bob, rp, scope="openid profile email")
    _, id_claims = verify_id_token(tokens["id_token"], discovery)
    for method in ("GET", "POST"):
        response = userinfo(rp, tokens["access_token"], method)
        assert response.status_code == 200, response.text
        claims = response.json()
        assert claims["sub"] == id_claims["sub"]
        assert claims["preferred_username"] == "bob"
        assert "email" in claims and "groups" not in claims  # only what was asked for
        assert response.headers["Cache-Control"] == "no-store"


def test_userinfo_with_the_token_in_a_post_body(bob, rp):
    tokens = tokens_for(bob, rp, scope="openid")
    response = requests.post(rp.issuer + "/userinfo",
                             data={"access_token": tokens["access_token"]}, timeout=10)
    assert response.status_code == 200
    assert set(response.json()) == {"sub"}


def test_userinfo_with_a_token_without_openid_is_403_insufficient_scope(bob, rp):
    tokens = tokens_for(bob, rp, scope="profile email")
    assert "id_token" not in tokens
    response = userinfo(rp, tokens["access_token"])
    assert response.status_code == 403
    assert response.json()["error"] == "insufficient_scope"
    assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]


@pytest.mark.parametrize("value", ["garbage", "a.b.c", ""])
def test_userinfo_with_a_bad_token_is_401_with_www_authenticate(rp, value):
    headers = {"Authorization": f"Bearer {value}"} if value else {}
    response = requests.get(rp.issuer + "/userinfo", headers=headers, timeout=10)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    if value:
        assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


def test_an_id_token_is_not_an_access_token_at_userinfo(bob, rp):
    tokens = tokens_for(bob, rp)
    assert userinfo(rp, tokens["id_token"]).status_code == 401


# -- 32: parameters the conformance suite sends ----------------------------------------------------


def test_hint_and_locale_parameters_with_prompt_none_cause_no_error(bob, rp, discovery):
    tokens = tokens_for(bob, rp)
    response = authorize(bob, rp, prompt="none", login_hint="bob", ui_locales="fr-CA fr en",
                         claims_locales="de en", acr_values="urn:mace:incommon:iap:silver",
                         display="page", id_token_hint=tokens["id_token"])
    query = sent_back(response)
    assert "error" not in query, query
    assert redeem(rp, query["code"], response.code_verifier).status_code == 200


@pytest.mark.parametrize("display", ["popup", "touch", "wap"])
def test_other_display_values_cause_no_error(bob, rp, display):
    assert "code" in sent_back(authorize(bob, rp, display=display))


# -- 36: forged JWTs -------------------------------------------------------------------------------


def forge(header: dict[str, Any], claims: dict[str, Any],
          sign: Callable[[bytes], bytes] | None) -> str:
    signing_input = (b64(json.dumps(header).encode()) + "." +
                     b64(json.dumps(claims).encode())).encode("ascii")
    signature = sign(signing_input) if sign else b""
    return signing_input.decode("ascii") + "." + b64(signature)


def rs256_with(private_key: Any) -> Callable[[bytes], bytes]:
    def sign(data: bytes) -> bytes:
        signature: bytes = private_key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        return signature

    return sign


@pytest.fixture
def live(bob, rp, keycard):
    """A live access token, its claims, and our RS256 signing key."""
    tokens = tokens_for(bob, rp)
    key = keycard.services.keys.signing_key("RS256")
    return tokens["access_token"], claims_of(tokens["access_token"]), key


def refused(rp, token: str) -> None:
    response = userinfo(rp, token)
    assert response.status_code == 401, (response.status_code, response.text)
    assert "WWW-Authenticate" in response.headers
    found = introspect(rp, token)
    assert found.status_code == 200 and found.json() == {"active": False}


def test_a_token_re_signed_with_our_key_is_accepted_so_the_forgeries_below_mean_something(
    rp, live
):
    _, claims, key = live
    token = forge({"alg": "RS256", "typ": "at+jwt", "kid": key.kid}, claims,
                  rs256_with(key.private_key))
    assert userinfo(rp, token).status_code == 200
    assert active(rp, token)


def test_hs256_keyed_with_our_public_key_is_refused(rp, live):
    _, claims, key = live
    for secret in (key.as_pem(private=False), json.dumps(key.as_dict(private=False)).encode()):
        token = forge({"alg": "HS256", "typ": "at+jwt", "kid": key.kid}, claims,
                      lambda data, secret=secret: hmac.new(secret, data, "sha256").digest())
        refused(rp, token)


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_alg_none_is_refused(rp, live, alg):
    original, claims, key = live
    refused(rp, forge({"alg": alg, "typ": "at+jwt", "kid": key.kid}, claims, None))
    # The real signature left in place does not help either.
    head = b64(json.dumps({"alg": alg, "typ": "at+jwt", "kid": key.kid}).encode())
    refused(rp, head + "." + original.split(".", 1)[1])


def test_embedded_jwk_header_is_refused(rp, live):
    _, claims, key = live
    attacker = RSAKey.generate_key(2048, private=True, parameters={"kid": "attacker"})
    public = attacker.as_dict(private=False)
    for kid in ("attacker", key.kid):
        refused(rp, forge({"alg": "RS256", "typ": "at+jwt", "kid": kid, "jwk": public}, claims,
                          rs256_with(attacker.private_key)))
    # Even our own key embedded, on a token we really signed, is not accepted.
    ours = key.as_dict(private=False)
    refused(rp, forge({"alg": "RS256", "typ": "at+jwt", "kid": key.kid, "jwk": ours}, claims,
                      rs256_with(key.private_key)))


def test_unknown_crit_header_is_refused_even_when_signed_by_us(rp, live):
    _, claims, key = live
    header = {"alg": "RS256", "typ": "at+jwt", "kid": key.kid, "crit": ["x-keycard-test"],
              "x-keycard-test": True}
    refused(rp, forge(header, claims, rs256_with(key.private_key)))


def test_token_signed_by_an_unknown_rsa_key_is_refused(rp, live):
    _, claims, key = live
    stranger = RSAKey.generate_key(2048, private=True)
    for kid in (key.kid, "unknown-kid", None):
        header = {"alg": "RS256", "typ": "at+jwt", **({"kid": kid} if kid else {})}
        refused(rp, forge(header, claims, rs256_with(stranger.private_key)))


def test_token_with_tampered_claims_is_refused(rp, live):
    original, claims, _ = live
    head, _, signature = original.split(".")
    tampered = dict(claims, roles=["admin"])
    refused(rp, head + "." + b64(json.dumps(tampered).encode()) + "." + signature)


def test_forged_id_token_hint_with_alg_none_is_refused_at_end_session(bob, rp, keycard):
    tokens = tokens_for(bob, rp)
    claims = claims_of(tokens["id_token"])
    kid = header_of(tokens["id_token"])["kid"]
    forged = forge({"alg": "none", "kid": kid, "typ": "JWT"}, claims, None)
    response = bob.get(keycard.url + "/end-session", params={"id_token_hint": forged},
                       allow_redirects=False, timeout=10)
    assert response.status_code == 400
    # Still signed in: the forged hint did not sign bob out.
    assert "code" in sent_back(authorize(bob, rp, prompt="none"))


# -- the client's required roles -------------------------------------------------------------------


def test_user_without_the_required_role_gets_a_403_page_and_no_code(bob, make_client):
    admin_only = make_client(name="Admin console", required_roles=["admin"])
    response = authorize(bob, admin_only)
    assert response.status_code == 403
    assert "Location" not in response.headers
    assert "You don&#39;t have access" in response.text or "You don't have access" in \
        response.text
    assert "code=" not in response.text


def test_user_with_the_required_role_gets_a_code(keycard, make_client):
    admin_only = make_client(name="Admin console", required_roles=["admin"])
    with requests.Session() as alice:
        sign_in(alice, keycard.url, "alice")
        code, verifier = get_code(alice, admin_only)
        assert redeem(admin_only, code, verifier).status_code == 200
