"""Forward auth over real HTTP: ``/auth/verify`` as nginx, Traefik and Caddy call it, and
``/auth/start`` sending a browser through sign-in and back, to the allowed domains only."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs, quote, urljoin, urlsplit

import pytest
import requests
from joserfc import jwt
from joserfc.jwk import KeySet

from sso.assertions import ASSERTION_TTL
from sso.oidc.tokens import subject_for
from tests.support import (
    RP_CALLBACK,
    csrf_token,
    obtain_tokens,
    pick_upstream_user,
    redis_commands_during,
    sign_in,
    wait_until,
)

APP_HOST = "app.acme.test"


@pytest.fixture
def keycard(make_keycard: Callable[..., Any]) -> Any:
    return make_keycard(SSO_FORWARD_AUTH_DOMAINS="acme.test")


def verify(http: requests.Session, keycard: Any, query: str = "", *, method: str = "GET",
           headers: dict[str, str] | None = None) -> requests.Response:
    """Ask ``/auth/verify`` the way a proxy does, about a request for ``APP_HOST``."""
    sent = {"X-Forwarded-Host": APP_HOST, "X-Forwarded-Proto": "https",
            "X-Forwarded-Uri": "/reports?q=1", **(headers or {})}
    return http.request(method, f"{keycard.url}/auth/verify{query}", headers=sent,
                        allow_redirects=False, timeout=10)


def decode_assertion(keycard: Any, assertion: str) -> tuple[dict[str, Any], dict[str, Any]]:
    jwks = requests.get(keycard.url + "/jwks.json", timeout=10).json()
    token = jwt.decode(assertion, KeySet.import_key_set(jwks), algorithms=["ES256"])
    assert token.header["kid"] in {key["kid"] for key in jwks["keys"]}
    registry = jwt.JWTClaimsRegistry(
        iss={"essential": True, "value": keycard.url},
        aud={"essential": True, "value": APP_HOST},
        exp={"essential": True},
        sub={"essential": True},
    )
    registry.validate(token.claims)
    return dict(token.header), dict(token.claims)


def follow_keycard(http: requests.Session, response: requests.Response,
                   keycard: Any) -> requests.Response:
    """Follow redirects while they stay on Keycard or the upstream; stop at the first that
    leaves for an app (whose host does not resolve: the test reads ``Location``)."""
    for _ in range(10):
        if not response.is_redirect:
            return response
        target = urljoin(response.url, response.headers["Location"])
        if urlsplit(target).hostname != "127.0.0.1":
            return response
        response = http.get(target, allow_redirects=False, timeout=10)
    raise AssertionError("redirect loop")


# -- /auth/verify with a browser session ------------------------------------------------------


def test_session_answers_200_with_identity_headers(keycard, http):
    sign_in(http, keycard.url, "bob")
    response = verify(http, keycard)
    assert response.status_code == 200, response.text
    headers = response.headers
    assert headers["X-Auth-Request-User"] == "bob"
    assert headers["X-Auth-Request-Email"] == "bob@acme.test"  # private but verified
    groups = headers["X-Auth-Request-Groups"].split(",")
    assert {"acme", "acme:sre", "acme:platform", "acme:engineering"} <= set(groups)
    assert headers["X-Auth-Request-Sub"] == subject_for(keycard.url, "1002")
    assert "admin" not in headers["X-Auth-Request-Roles"].split(",")
    assert headers["Cache-Control"] == "no-store"


def test_unverified_email_is_never_forwarded(keycard, http):
    sign_in(http, keycard.url, "carol")
    response = verify(http, keycard)
    assert response.status_code == 200
    assert response.headers["X-Auth-Request-User"] == "carol"
    assert "X-Auth-Request-Email" not in response.headers
    _, claims = decode_assertion(keycard, response.headers["X-Auth-Request-Assertion"])
    assert "email" not in claims


def test_assertion_is_a_short_lived_es256_jwt_for_the_requested_host(keycard, http):
    sign_in(http, keycard.url, "bob")
    before = int(time.time())
    response = verify(http, keycard)
    header, claims = decode_assertion(keycard, response.headers["X-Auth-Request-Assertion"])
    assert header["alg"] == "ES256"
    assert claims["aud"] == APP_HOST
    assert claims["exp"] - claims["iat"] == 60 and claims["iat"] >= before
    assert claims["sub"] == response.headers["X-Auth-Request-Sub"]
    assert claims["preferred_username"] == "bob"
    assert claims["email"] == "bob@acme.test"
    assert "acme:platform" in claims["groups"]
    roles = response.headers["X-Auth-Request-Roles"]
    assert claims["roles"] == (roles.split(",") if roles else [])

    # Another app's host (the proxy's X-Forwarded-Host, port dropped) is another audience.
    other = verify(http, keycard, headers={"X-Forwarded-Host": "wiki.acme.test:8443"})
    with pytest.raises(Exception, match="aud"):
        decode_assertion(keycard, other.headers["X-Auth-Request-Assertion"])


def test_assertion_is_reused_for_the_same_person_and_app_only(keycard, http):
    sign_in(http, keycard.url, "bob")
    first = verify(http, keycard).headers["X-Auth-Request-Assertion"]
    assert verify(http, keycard).headers["X-Auth-Request-Assertion"] == first
    other_app = verify(http, keycard, headers={"X-Forwarded-Host": "wiki.acme.test"})
    assert other_app.headers["X-Auth-Request-Assertion"] != first
    carol = requests.Session()
    sign_in(carol, keycard.url, "carol")
    assert verify(carol, keycard).headers["X-Auth-Request-Assertion"] != first


@pytest.mark.parametrize("host", ["x" * 300 + ".acme.test", "app_1.acme.test", "[::1]"])
def test_odd_hosts_are_answered_but_never_fill_the_assertion_cache(keycard, http, host):
    sign_in(http, keycard.url, "bob")
    cache = keycard.services.asserter.cache
    before = len(cache)
    answers = {verify(http, keycard, headers={"X-Forwarded-Host": host})
               .headers["X-Auth-Request-Assertion"] for _ in range(2)}
    assert len(answers) == 2  # signed afresh each time, never remembered
    assert len(cache) == before


def test_assertions_are_reused_only_while_half_their_life_is_left(keycard):
    asserter = keycard.services.asserter
    now = [time.time()]
    asserter.cache.clock = lambda: now[0]
    identity = {"sub": "s", "preferred_username": "bob", "email": None, "groups": [],
                "roles": []}
    first = asserter.sign(identity, "app.acme.test")
    iat = json.loads(base64.urlsafe_b64decode(first.split(".")[1] + "=="))["iat"]
    now[0] = iat + ASSERTION_TTL // 2 - 0.1  # just over half its life left: reused
    assert asserter.sign(identity, "app.acme.test") == first
    assert asserter.sign({**identity, "roles": ["ops"]}, "app.acme.test") != first
    now[0] = iat + ASSERTION_TTL // 2  # half left: signed afresh (ES256 is randomised)
    assert asserter.sign(identity, "app.acme.test") != first


def test_the_assertion_cache_is_bounded(keycard):
    asserter = keycard.services.asserter
    identity = {"sub": "s", "preferred_username": "bob", "email": None, "groups": [],
                "roles": []}
    for i in range(asserter.cache.maxsize + 10):
        asserter.cache.put(("k", i), "x")
    asserter.sign(identity, "app.acme.test")
    assert len(asserter.cache) == asserter.cache.maxsize


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "HEAD", "OPTIONS"])
def test_every_method_is_answered_as_traefik_forwards_it(keycard, http, method):
    sign_in(http, keycard.url, "bob")
    response = verify(http, keycard, method=method,
                      headers={"Origin": "https://evil.test", "Sec-Fetch-Site": "cross-site"})
    assert response.status_code == 200
    assert response.headers["X-Auth-Request-User"] == "bob"


def test_no_session_is_401_with_a_challenge(keycard, http):
    response = verify(http, keycard)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert response.json()["error"] == "unauthorized"
    assert not any(h.startswith("X-Auth-Request-") for h in response.headers)


def test_signed_out_session_is_401(keycard, http):
    portal = sign_in(http, keycard.url, "bob")
    assert verify(http, keycard).status_code == 200
    http.post(keycard.url + "/logout", data={"csrf_token": csrf_token(portal.text)},
              allow_redirects=False, timeout=10)
    assert verify(http, keycard).status_code == 401


def test_admin_ended_session_is_401_at_once(keycard, http):
    sign_in(http, keycard.url, "bob")
    assert verify(http, keycard).status_code == 200
    keycard.services.accounts.end_all_sessions("1002")
    assert verify(http, keycard).status_code == 401  # nothing cached in the process


# -- allowed_roles --------------------------------------------------------------------------


def test_missing_role_is_403(keycard, http):
    sign_in(http, keycard.url, "bob")
    response = verify(http, keycard, "?allowed_roles=admin")
    assert response.status_code == 403
    assert response.json()["error"] == "insufficient_role"


def test_any_of_the_allowed_roles_is_enough(keycard, http):
    sign_in(http, keycard.url, "alice")  # SSO_BOOTSTRAP_ADMINS=alice
    response = verify(http, keycard, "?allowed_roles=auditor,admin")
    assert response.status_code == 200
    assert "admin" in response.headers["X-Auth-Request-Roles"].split(",")


# -- bearer access tokens -------------------------------------------------------------------


@pytest.fixture
def bob_tokens(keycard, http) -> Iterator[tuple[Any, str, dict[str, Any]]]:
    registry = keycard.services.clients
    client, secret = registry.create(name="CLI", redirect_uris=[RP_CALLBACK], trusted=True,
                                     audiences=[f"https://{APP_HOST}"])
    sign_in(http, keycard.url, "bob")
    yield client, secret, obtain_tokens(http, keycard.url, client.client_id, secret,
                                        resource=f"https://{APP_HOST}")


def test_bearer_token_issued_for_another_app_is_refused(keycard, http):
    """A token app A received (its audience is A) must not open app B."""
    registry = keycard.services.clients
    client, secret = registry.create(name="App A", redirect_uris=[RP_CALLBACK], trusted=True)
    sign_in(http, keycard.url, "bob")
    token = obtain_tokens(http, keycard.url, client.client_id, secret)["access_token"]
    response = verify(requests.Session(), keycard, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401


def test_finding_4_a_pinned_aud_decides_the_app_whatever_the_headers_say(keycard, bob_tokens):
    _, _, tokens = bob_tokens  # audience https://app.acme.test
    bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
    anonymous = requests.Session()
    # The headers claim the token's app, the verify URL pins another: refused.
    assert verify(anonymous, keycard, "?aud=https://wiki.acme.test",
                  headers=bearer).status_code == 401
    # Pinned to the token's app, whatever host the headers name: accepted, and the
    # assertion is made out to the pinned app.
    pinned = verify(anonymous, keycard, f"?aud=https://{APP_HOST}",
                    headers={**bearer, "X-Forwarded-Host": "wiki.acme.test"})
    assert pinned.status_code == 200, pinned.text
    _, claims = decode_assertion(keycard, pinned.headers["X-Auth-Request-Assertion"])
    assert claims["aud"] == APP_HOST


@pytest.mark.parametrize("aud", ["wiki.acme.test", "ftp://wiki.acme.test",
                                 "https://user@wiki.acme.test", "https://wiki.acme.test/x",
                                 "https://wiki.acme.test/?a=1", "https://wiki.acme.test:x",
                                 "https://wiki_acme.test", "https://", ""])
def test_finding_4_a_malformed_aud_is_a_400_json_error(keycard, http, aud):
    sign_in(http, keycard.url, "bob")
    response = verify(http, keycard, "?aud=" + quote(aud, safe=""))
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


def test_bearer_access_token_answers_200(keycard, bob_tokens):
    _, _, tokens = bob_tokens
    anonymous = requests.Session()  # no cookie: the token alone
    response = verify(anonymous, keycard,
                      headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert response.status_code == 200, response.text
    assert response.headers["X-Auth-Request-User"] == "bob"
    assert response.headers["X-Auth-Request-Email"] == "bob@acme.test"
    assert "acme:platform" in response.headers["X-Auth-Request-Groups"].split(",")
    _, claims = decode_assertion(keycard, response.headers["X-Auth-Request-Assertion"])
    assert claims["sub"] == subject_for(keycard.url, "1002")


def test_revoked_or_garbage_bearer_is_401(keycard, bob_tokens):
    client, secret, tokens = bob_tokens
    revoked = requests.post(keycard.url + "/revoke", data={"token": tokens["access_token"]},
                            auth=(client.client_id, secret), timeout=10)
    assert revoked.status_code == 200
    anonymous = requests.Session()
    for token in (tokens["access_token"], "garbage", tokens["id_token"]):
        response = verify(anonymous, keycard, headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401, token
        assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


# -- the hot path ---------------------------------------------------------------------------


def test_a_session_check_costs_one_redis_round_trip(keycard, http, rdb, prefix):
    sign_in(http, keycard.url, "bob")
    verify(http, keycard)  # warm the key ring's per-process cache
    commands = redis_commands_during(rdb, prefix, lambda: verify(http, keycard))
    assert [c.split()[0].upper() for c in commands] == ["EVALSHA"], commands


def test_a_bearer_check_costs_only_the_liveness_lookup(keycard, bob_tokens, rdb, prefix):
    _, _, tokens = bob_tokens
    anonymous = requests.Session()
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    verify(anonymous, keycard, headers=headers)
    commands = redis_commands_during(
        rdb, prefix, lambda: verify(anonymous, keycard, headers=headers))
    # token_claims' one round trip: a script asking whether the jti is revoked and
    # whether its grant still lives.
    assert len(commands) == 1, commands
    assert commands[0].split()[0].upper() in {"EVALSHA", "EXISTS"}, commands


# -- redirect mode for Traefik and Caddy ------------------------------------------------------


def test_redirect_mode_sends_a_page_navigation_to_sign_in(keycard, http):
    response = verify(http, keycard, "?redirect=1", headers={"Accept": "text/html"})
    assert response.status_code == 302
    location = response.headers["Location"]
    expected = quote("https://app.acme.test/reports?q=1", safe="")
    assert location == f"{keycard.url}/auth/start?rd={expected}"

    # An API call, or a host outside the allowed domains, gets the plain 401.
    assert verify(http, keycard, "?redirect=1",
                  headers={"Accept": "application/json"}).status_code == 401
    assert verify(http, keycard, "?redirect=1", headers={
        "Accept": "text/html", "X-Forwarded-Host": "evil.test"}).status_code == 401


# -- /auth/start ----------------------------------------------------------------------------


@pytest.mark.parametrize("rd", [
    "https://evil.test/",
    "https://acme.test.evil.test/",
    "https://evil-acme.test/",
    "//acme.test",
    "javascript:alert(1)//app.acme.test",
    "https://user@app.acme.test/",
    "https://app.acme.test@evil.test/",
    "https://app.acme.test\\@evil.test/",
    "https:/\\app.acme.test/",
    "ftp://app.acme.test/",
    "/local/path",
    "",
])
def test_start_refuses_return_addresses_outside_the_allowed_domains(keycard, http, rd):
    response = http.get(keycard.url + "/auth/start", params={"rd": rd}, allow_redirects=False,
                        timeout=10)
    assert response.status_code == 400
    assert "Location" not in response.headers
    assert "this return address is not allowed" in response.text.lower()


def test_start_refuses_even_a_signed_in_user(keycard, http):
    sign_in(http, keycard.url, "bob")
    response = http.get(keycard.url + "/auth/start", params={"rd": "https://evil-acme.test/"},
                        allow_redirects=False, timeout=10)
    assert response.status_code == 400 and "Location" not in response.headers


def test_start_goes_through_sign_in_and_back_to_the_app(keycard, http):
    target = "https://app.acme.test/reports?q=1&page=2"
    # nginx cannot URL-encode $request_uri: the raw form must keep the whole query.
    response = http.get(f"{keycard.url}/auth/start?rd={target}", allow_redirects=False,
                        timeout=10)
    assert response.status_code == 302
    login = urljoin(keycard.url, response.headers["Location"])
    assert urlsplit(login).path == "/login"
    next_path = parse_qs(urlsplit(login).query)["next"][0]
    assert next_path.startswith("/auth/return?")  # /login itself stays local-only
    page = http.get(login, timeout=10)
    back = pick_upstream_user(http, page, "bob", allow_redirects=False)
    final = follow_keycard(http, back, keycard)
    assert final.status_code == 302
    assert final.headers["Location"] == target
    assert verify(http, keycard).status_code == 200


def test_start_sends_a_signed_in_user_straight_back(keycard, http):
    sign_in(http, keycard.url, "bob")
    target = "http://wiki.acme.test:8080/page"
    response = http.get(keycard.url + "/auth/start", params={"rd": target},
                        allow_redirects=False, timeout=10)
    assert response.status_code == 302 and response.headers["Location"] == target


def test_return_refuses_an_address_keycard_did_not_sign(keycard, http):
    sign_in(http, keycard.url, "bob")
    for forged in ("https://evil.test/", "garbage", ""):
        response = http.get(keycard.url + "/auth/return", params={"rd": forged},
                            allow_redirects=False, timeout=10)
        assert response.status_code == 400 and "Location" not in response.headers


# -- cookie scope ---------------------------------------------------------------------------


def test_cookie_domain_scopes_the_session_to_every_app_subdomain(make_keycard, http):
    """Production's shape: https issuer ``sso.acme.test``, ``SSO_COOKIE_DOMAIN=acme.test``.
    Served here over loopback http, so the Secure cookies are handed over explicitly."""
    keycard = make_keycard(SSO_ISSUER="https://sso.acme.test", SSO_COOKIE_DOMAIN="acme.test",
                           SSO_FORWARD_AUTH_DOMAINS="acme.test")
    start = http.get(keycard.url + "/login", allow_redirects=False, timeout=10)
    binding = start.cookies["__Host-keycard-login"]
    page = http.get(start.headers["Location"], timeout=10)
    back = pick_upstream_user(http, page, "bob", allow_redirects=False)
    callback = urlsplit(back.headers["Location"])
    assert callback.netloc == "sso.acme.test"
    done = requests.get(f"{keycard.url}{callback.path}?{callback.query}",
                        headers={"Cookie": f"__Host-keycard-login={binding}"},
                        allow_redirects=False, timeout=10)
    assert done.status_code == 302, done.text[:300]
    cookies = [c for c in done.raw.headers.getlist("Set-Cookie")
               if c.startswith("__Secure-keycard=")]
    assert len(cookies) == 1
    attributes = {part.strip().split("=", 1)[0].lower(): part.strip()
                  for part in cookies[0].split(";")[1:]}
    assert attributes["domain"].lower() == "domain=acme.test"
    assert {"secure", "httponly", "path"} <= set(attributes)
    sid = cookies[0].split(";", 1)[0].split("=", 1)[1]

    # What the browser sends along to any *.acme.test app, nginx passes to /auth/verify.
    response = requests.get(keycard.url + "/auth/verify", timeout=10, headers={
        "Cookie": f"__Secure-keycard={sid}", "X-Forwarded-Host": "wiki.acme.test"})
    assert response.status_code == 200
    assert response.headers["X-Auth-Request-User"] == "bob"


def test_finding_10_deleted_client_bearer_stops_opening_apps(keycard, bob_tokens):
    """Issue #11 item 10: deleting a client ends its access tokens at forward auth within
    the client cache's lifetime, not at the end of their own."""
    client, _, tokens = bob_tokens
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    assert verify(requests.Session(), keycard, headers=headers).status_code == 200
    assert keycard.services.clients.delete(client.client_id)
    wait_until(lambda: verify(requests.Session(), keycard, headers=headers).status_code == 401,
               timeout=10)


def test_behind_trusted_proxies_the_app_host_is_the_trusted_hops_not_the_clients(
        make_keycard, http):
    """With SSO_TRUSTED_PROXY_HOPS=1 the host comes from the hop Keycard trusts (the last
    X-Forwarded-Host value); a value the client put first decides nothing."""
    keycard = make_keycard(SSO_TRUSTED_PROXY_HOPS="1")
    client, secret = keycard.services.clients.create(
        name="CLI", redirect_uris=[RP_CALLBACK], trusted=True, audiences=["https://evil.test"])
    sign_in(http, keycard.url, "bob")
    token = obtain_tokens(http, keycard.url, client.client_id, secret,
                          resource="https://evil.test")["access_token"]
    forged = verify(requests.Session(), keycard, headers={
        "Authorization": f"Bearer {token}", "X-Forwarded-Host": f"evil.test, {APP_HOST}"})
    assert forged.status_code == 401  # a token for evil.test does not open APP_HOST
