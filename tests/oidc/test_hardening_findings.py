"""Issue #11 "Security hardening", items 3, 10, 12 and parts of 13: each test is named after
the finding it pins (``test_finding_<n>_...``) and failed before the fix."""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import urljoin

import requests

from sso.oidc.endpoints import lookup_token
from tests.oidc.conftest import (
    CB,
    authorize,
    code_from,
    introspect,
    redeem,
    refresh,
    revoke,
    sent_back,
    tokens_for,
    userinfo,
)
from tests.support import form_with, obtain_tokens, sign_in, wait_until

# -- 3. RFC 8707 resources at the consent decision and the token endpoint ------------------


def test_finding_3_consent_decision_refuses_a_resource_the_client_has_not_registered(
        keycard, http, make_client):
    """An admin approving consent with ``resource=ISSUER/api/admin`` slipped into the form
    gets no code, hence no token the admin API would take."""
    admin_api = keycard.url + "/api/admin"
    rp = make_client(trusted=False, audiences=["https://wiki.acme.test"])
    sign_in(http, keycard.url, "alice")  # a bootstrap admin in the tests
    page = authorize(http, rp, scope="openid roles")
    assert page.status_code == 200, page.text[:300]  # the consent page
    form = form_with(page.text, "/authorize/decision")
    answer = http.post(urljoin(page.url, form.action),
                       data=dict(form.fields, decision="approve", resource=admin_api),
                       allow_redirects=False, timeout=10)
    query = sent_back(answer)
    assert query["error"] == "invalid_target", query
    assert "code" not in query
    assert query["state"] == page.sent["state"]  # type: ignore[attr-defined]


def test_finding_3_the_decision_takes_no_parameters_from_the_query(keycard, http,
                                                                    make_client):
    """Authlib reads request.values (the query wins over the form): a resource, a client or
    an oversized nonce in the decision's query must not slip past the form's checks."""
    admin_api = keycard.url + "/api/admin"
    rp = make_client(trusted=False, audiences=["https://wiki.acme.test"])
    sign_in(http, keycard.url, "alice")
    page = authorize(http, rp, scope="openid roles")
    form = form_with(page.text, "/authorize/decision")
    answer = http.post(urljoin(page.url, form.action) + "?resource=" + admin_api,
                       data=dict(form.fields, decision="approve"), allow_redirects=False,
                       timeout=10)
    assert answer.status_code == 400 and "Location" not in answer.headers


def test_finding_3_trusted_client_decision_posted_directly_is_checked_too(keycard, http,
                                                                          make_client):
    """The decision endpoint can be posted without ever showing the consent page."""
    admin_api = keycard.url + "/api/admin"
    rp = make_client(trusted=True)
    sign_in(http, keycard.url, "alice")
    portal = http.get(keycard.url + "/", timeout=10)
    from tests.support import csrf_token

    data = {"csrf_token": csrf_token(portal.text), "decision": "approve",
            "response_type": "code", "client_id": rp.client_id, "redirect_uri": CB,
            "scope": "openid roles", "state": "s1", "resource": admin_api,
            "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
            "code_challenge_method": "S256"}
    answer = http.post(keycard.url + "/authorize/decision", data=data, allow_redirects=False,
                       timeout=10)
    query = sent_back(answer)
    assert query["error"] == "invalid_target" and "code" not in query, query


def test_finding_3_token_endpoint_rechecks_resources_against_the_client(keycard, bob,
                                                                        make_client, registry):
    """A resource named at /token (code exchange) must be registered, and the resource the
    code was issued for must still be registered when the code is redeemed."""
    wiki = "https://wiki.acme.test"
    rp = make_client(audiences=[wiki])
    first = authorize(bob, rp, scope="openid")
    code = code_from(first.headers["Location"])
    answer = redeem(rp, code, first.code_verifier,  # type: ignore[attr-defined]
                    resource=keycard.url + "/api/admin")
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_target", answer.text

    second = authorize(bob, rp, scope="openid", resource=wiki)
    code = code_from(second.headers["Location"])
    registry.update(rp.client_id, audiences=[])  # the audience withdrawn meanwhile
    answer = redeem(rp, code, second.code_verifier)  # type: ignore[attr-defined]
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_target", answer.text


def test_finding_3_refresh_asking_for_an_unregistered_resource_is_invalid_target(
        keycard, bob, make_client):
    wiki = "https://wiki.acme.test"
    rp = make_client(audiences=[wiki])
    tokens = tokens_for(bob, rp, resource=wiki)
    widened = refresh(rp, tokens["refresh_token"], resource=keycard.url + "/api/admin")
    assert widened.status_code == 400, widened.text
    assert widened.json()["error"] == "invalid_target"
    # The refused request did not burn the refresh token; naming the grant's resource works.
    narrowed = refresh(rp, tokens["refresh_token"], resource=wiki)
    assert narrowed.status_code == 200, narrowed.text
    assert introspect(rp, narrowed.json()["access_token"]).json()["aud"] == wiki


# -- 10. a deleted client's tokens stop working --------------------------------------------


def _bearer(url: str, token: str) -> int:
    return requests.get(url, headers={"Authorization": f"Bearer {token}"},
                        timeout=10).status_code


def test_finding_10_deleted_client_tokens_stop_working(keycard, http, registry):
    admin_api = keycard.url + "/api/admin"
    client, secret = registry.create(name="Admin tool", redirect_uris=[CB], trusted=True,
                                     audiences=[admin_api])
    sign_in(http, keycard.url, "alice")
    tokens = obtain_tokens(http, keycard.url, client.client_id, secret, redirect_uri=CB,
                           resource=admin_api)
    access, refresh_token = tokens["access_token"], tokens["refresh_token"]
    provider = keycard.services.provider
    assert _bearer(keycard.url + "/userinfo", access) == 200
    assert _bearer(admin_api + "/rules", access) == 200
    assert lookup_token(provider, access, live_only=True) is not None

    assert registry.delete(client.client_id)

    # Other processes see the deletion within the client cache's two seconds.
    wait_until(lambda: _bearer(keycard.url + "/userinfo", access) == 401, timeout=10)
    wait_until(lambda: _bearer(admin_api + "/rules", access) == 401, timeout=10)
    # Introspection's lookup (what any resource server introspecting it would get).
    wait_until(lambda: lookup_token(provider, access, live_only=True) is None, timeout=10)
    assert lookup_token(provider, refresh_token, live_only=True) is None
    record = provider.records.peek_refresh_token(refresh_token)
    assert provider.records.get_grant(record["g"]) is None  # the grant itself is revoked


def test_finding_10_rotating_with_revoke_tokens_ends_every_token(keycard, bob, make_client,
                                                                  registry):
    rp = make_client()
    tokens = tokens_for(bob, rp)
    assert userinfo(rp, tokens["access_token"]).status_code == 200
    rp.secret = registry.rotate_secret(rp.client_id, revoke_tokens=True)
    wait_until(lambda: userinfo(rp, tokens["access_token"]).status_code == 401, timeout=10)
    assert not introspect(rp, tokens["access_token"]).json()["active"]
    answer = refresh(rp, tokens["refresh_token"])  # with the new secret
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_grant", answer.text
    # Tokens issued after the rotation work (the rotation second itself is refused).
    wait_until(lambda: userinfo(rp, tokens_for(bob, rp)["access_token"]).status_code == 200,
               timeout=10)


def test_rotating_without_revoke_tokens_keeps_tokens(keycard, bob, make_client, registry):
    rp = make_client()
    tokens = tokens_for(bob, rp)
    rp.secret = registry.rotate_secret(rp.client_id)
    assert userinfo(rp, tokens["access_token"]).status_code == 200
    assert refresh(rp, tokens["refresh_token"]).status_code == 200


# -- 12. standards gaps ---------------------------------------------------------------------


def test_finding_12_request_parameter_is_refused(bob, make_client):
    rp = make_client()
    response = authorize(bob, rp, request="eyJhbGciOiJub25lIn0.e30.")
    query = sent_back(response)
    assert query["error"] == "request_not_supported" and "code" not in query, query
    assert query["state"] == response.sent["state"]  # type: ignore[attr-defined]


def test_finding_12_request_uri_parameter_is_refused(bob, make_client):
    rp = make_client()
    query = sent_back(authorize(bob, rp, request_uri="https://rp.acme.test/req.jwt"))
    assert query["error"] == "request_uri_not_supported" and "code" not in query, query


def test_finding_12_response_mode_other_than_query_is_refused(bob, make_client, discovery):
    assert discovery["response_modes_supported"] == ["query"]
    assert discovery["request_parameter_supported"] is False
    assert discovery["request_uri_parameter_supported"] is False
    rp = make_client()
    for mode in ("form_post", "fragment", "web_message"):
        query = sent_back(authorize(bob, rp, response_mode=mode))
        assert query["error"] == "unsupported_response_mode" and "code" not in query, (mode,
                                                                                      query)
        assert "response_mode" in query["error_description"]
    assert "code" in sent_back(authorize(bob, rp, response_mode="query"))


def test_finding_12_oversized_state_and_nonce_are_refused(bob, make_client):
    rp = make_client()
    big_state = "s" * 513
    response = authorize(bob, rp, state=big_state)
    assert len(response.headers["Location"]) < 1000  # never reflected
    query = sent_back(response)
    assert query["error"] == "invalid_request" and "state" not in query, query
    query = sent_back(authorize(bob, rp, state="ok", nonce="n" * 800_000, method="POST"))
    assert query["error"] == "invalid_request" and query["state"] == "ok", query
    assert "code" in sent_back(authorize(bob, rp, state="s" * 512, nonce="n" * 512))


def test_finding_12_two_client_authentication_methods_are_refused(bob, make_client):
    rp = make_client()
    first = authorize(bob, rp)
    code = code_from(first.headers["Location"])
    # A wrong secret in the Basic header and the right one in the body: refused outright.
    answer = rp.post("/token", {"grant_type": "authorization_code", "code": code,
                                "redirect_uri": rp.redirect_uri,
                                "code_verifier": first.code_verifier,  # type: ignore[attr-defined]
                                "client_id": rp.client_id, "client_secret": rp.secret},
                     auth=(rp.client_id, "wrong"))
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_request", answer.text
    tokens = tokens_for(bob, rp)
    both = rp.post("/introspect", {"token": tokens["access_token"], "client_id": rp.client_id,
                                   "client_secret": rp.secret}, auth=(rp.client_id, "wrong"))
    assert both.status_code == 400 and both.json()["error"] == "invalid_request", both.text


def test_finding_12_revoking_another_clients_token_is_200_and_revokes_nothing(bob,
                                                                               make_client):
    owner, other = make_client(), make_client()
    tokens = tokens_for(bob, owner)
    unknown = revoke(other, secrets.token_urlsafe(32))
    assert unknown.status_code == 200
    for token in (tokens["access_token"], tokens["refresh_token"]):
        answer = revoke(other, token)
        assert (answer.status_code, answer.text) == (unknown.status_code, unknown.text)
        assert introspect(owner, token).json()["active"] is True  # nothing revoked


# -- 13. no end user at userinfo; no clear user code in the device record ------------------


def test_finding_13_client_credentials_token_is_refused_at_userinfo(keycard, registry):
    client, secret = registry.create(name="Bot", grant_types=["client_credentials"],
                                     scopes=["openid", "roles"], redirect_uris=[])
    token = requests.post(keycard.url + "/token", auth=(client.client_id, secret),
                          data={"grant_type": "client_credentials", "scope": "openid roles"},
                          timeout=10).json()["access_token"]
    response = requests.get(keycard.url + "/userinfo",
                            headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "invalid_token"
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


def test_finding_13_device_record_keeps_no_clear_user_code(keycard, rdb, prefix):
    from tests.device_support import register_device_client, start_device

    client = register_device_client(keycard)
    started = start_device(keycard.url, client.client_id).json()
    user_code = started["user_code"]
    from sso.crypto import hash_secret

    # Nor an unkeyed hash of it: 20^8 codes are inverted in seconds by whoever reads Redis.
    forms = {user_code, user_code.replace("-", ""), hash_secret(user_code.replace("-", "")),
             hash_secret(user_code)}
    seen: list[Any] = []
    for key in rdb.scan_iter(match=f"{prefix}*", count=1000):
        kind = rdb.type(key)
        if kind == "hash":
            values = [*rdb.hgetall(key).keys(), *rdb.hgetall(key).values()]
        elif kind == "string":
            values = [rdb.get(key)]
        elif kind == "set":
            values = list(rdb.smembers(key))
        else:
            values = []
        seen.append(key)
        for value in [key, *values]:
            assert not any(code in str(value) for code in forms), (key, value)
    assert any(key.startswith(prefix + "device:") for key in seen), seen
