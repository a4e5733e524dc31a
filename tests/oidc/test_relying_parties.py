"""Two OIDC relying-party libraries not written here drive Keycard over HTTP end to end:
Authlib's client and pyoidc (``oic``). Each finds everything through discovery."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import requests
from authlib.common.security import generate_token
from authlib.integrations.requests_client import OAuth2Session
from authlib.oidc.core import CodeIDToken
from joserfc import jwt
from joserfc.jwk import KeySet
from oic import rndstr
from oic.oic import Client as OicClient
from oic.oic.message import AuthorizationResponse, RegistrationResponse
from oic.utils.authn.client import CLIENT_AUTHN_METHOD

from tests.support import sign_in

CB = "http://127.0.0.1:9/cb"
BYE = "http://127.0.0.1:9/bye"
SCOPE = "openid profile email groups roles offline_access"


def register(keycard, **fields):
    return keycard.services.clients.create(
        name="RP", redirect_uris=[CB], post_logout_redirect_uris=[BYE], trusted=True, **fields)


def introspect(keycard, client, secret, token):
    return requests.post(keycard.url + "/introspect", data={"token": token},
                         auth=(client.client_id, secret)).json()


def test_authlib_client_full_lifecycle(keycard, http):
    client, secret = register(keycard)
    meta = requests.get(keycard.url + "/.well-known/openid-configuration").json()
    assert meta["issuer"] == keycard.url
    rp = OAuth2Session(client.client_id, secret, scope=SCOPE, redirect_uri=CB,
                       code_challenge_method="S256")
    verifier, nonce = generate_token(48), generate_token(20)
    url, state = rp.create_authorization_url(meta["authorization_endpoint"],
                                             code_verifier=verifier, nonce=nonce)
    sign_in(http, keycard.url, "bob")
    location = http.get(url, allow_redirects=False).headers["Location"]
    query = parse_qs(urlsplit(location).query)
    assert query["state"] == [state] and query["iss"] == [keycard.url]
    token = rp.fetch_token(meta["token_endpoint"], authorization_response=location,
                           code_verifier=verifier)

    # ID token: signature with the JWKS, then iss, aud, nonce, exp via Authlib's claims rules.
    keys = KeySet.import_key_set(requests.get(meta["jwks_uri"]).json())
    decoded = jwt.decode(token["id_token"], keys, algorithms=["RS256"])
    claims = CodeIDToken(decoded.claims, decoded.header,
                         {"iss": {"value": meta["issuer"]}, "aud": {"value": client.client_id},
                          "nonce": {"value": nonce}})
    claims.validate()
    assert claims["preferred_username"] == "bob" and "acme:platform" in claims["groups"]

    userinfo = rp.get(meta["userinfo_endpoint"]).json()
    assert userinfo["sub"] == claims["sub"] and userinfo["email"] == "bob@acme.test"

    refreshed = rp.refresh_token(meta["token_endpoint"], refresh_token=token["refresh_token"])
    assert refreshed["refresh_token"] != token["refresh_token"]  # rotated
    assert introspect(keycard, client, secret, refreshed["access_token"])["active"] is True

    revoked = requests.post(meta["revocation_endpoint"],
                            data={"token": refreshed["refresh_token"]},
                            auth=(client.client_id, secret))
    assert revoked.status_code == 200
    assert introspect(keycard, client, secret, refreshed["access_token"]) == {"active": False}

    # RP-initiated logout ends the Keycard session and comes back with state.
    logout = http.get(meta["end_session_endpoint"], params={
        "id_token_hint": token["id_token"], "post_logout_redirect_uri": BYE, "state": "s1"},
        allow_redirects=False)
    assert logout.status_code == 302 and logout.headers["Location"] == f"{BYE}?state=s1"
    assert "Sign in with GitHub" in http.get(keycard.url + "/").text


def test_pyoidc_client_full_lifecycle(keycard, http):
    client, secret = register(keycard)
    rp = OicClient(client_authn_method=CLIENT_AUTHN_METHOD)
    rp.provider_config(keycard.url)  # discovery, issuer checked by the library
    rp.store_registration_info(RegistrationResponse(
        client_id=client.client_id, client_secret=secret, redirect_uris=[CB]))
    state, nonce = rndstr(), rndstr()
    pkce, verifier = rp.add_code_challenge()
    request_args = {"client_id": client.client_id, "response_type": "code",
                    "scope": SCOPE.split(), "nonce": nonce, "redirect_uri": CB,
                    "state": state, **pkce}
    url = rp.construct_AuthorizationRequest(request_args=request_args).request(
        rp.authorization_endpoint)
    sign_in(http, keycard.url, "alice")
    location = http.get(url, allow_redirects=False).headers["Location"]
    answer = rp.parse_response(AuthorizationResponse, info=urlsplit(location).query,
                               sformat="urlencoded")
    assert answer["state"] == state
    # pyoidc verifies the ID token's signature (JWKS), iss, aud, nonce and at_hash here.
    tokens = rp.do_access_token_request(
        state=state, request_args={"code": answer["code"], "redirect_uri": CB,
                                   "code_verifier": verifier},
        authn_method="client_secret_basic")
    id_token = tokens["id_token"]
    assert id_token["nonce"] == nonce and id_token["iss"] == keycard.url
    assert client.client_id in id_token["aud"] and "admin" in id_token["roles"]

    userinfo = rp.do_user_info_request(state=state)
    assert userinfo["sub"] == id_token["sub"] and userinfo["preferred_username"] == "alice"

    first_refresh = tokens["refresh_token"]
    renewed = rp.do_access_token_refresh(state=state, authn_method="client_secret_basic")
    assert renewed["refresh_token"] != first_refresh
    assert introspect(keycard, client, secret, renewed["access_token"])["active"] is True

    revoked = requests.post(rp.provider_info["revocation_endpoint"],
                            data={"token": renewed["access_token"],
                                  "token_type_hint": "access_token"},
                            auth=(client.client_id, secret))
    assert revoked.status_code == 200
    assert introspect(keycard, client, secret, renewed["access_token"]) == {"active": False}

    logout = http.get(rp.provider_info["end_session_endpoint"], params={
        "id_token_hint": tokens["id_token_jwt"], "post_logout_redirect_uri": BYE},
        allow_redirects=False)
    assert logout.headers["Location"] == BYE
    assert "Sign in with GitHub" in http.get(keycard.url + "/").text
