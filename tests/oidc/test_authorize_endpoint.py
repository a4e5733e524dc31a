"""The authorization endpoint (SECURITY 1-9): where it may send the browser back, how
it reports errors, and the headers of its pages. Real Keycard, upstream and Redis;
the client's callback is never contacted, we read ``Location`` headers."""

from __future__ import annotations

from urllib.parse import parse_qs, quote, urljoin, urlsplit

import pytest
import requests

from sso.oidc.clients import ClientError
from tests.oidc.conftest import (
    CB,
    approve,
    authorize,
    code_from,
    get_code,
    redeem,
    sent_back,
)
from tests.support import pick_upstream_user, redis_commands_during

BAD_REDIRECTS = [
    pytest.param(CB + "/", id="trailing-slash"),
    pytest.param("http://127.0.0.1:9/x/../cb", id="dot-dot-segment"),
    pytest.param(CB + "?next=https://evil.example", id="added-query"),
    pytest.param("http://127.0.0.1:9@evil.example/cb", id="userinfo-loopback"),
    pytest.param("https://app@evil.example/cb", id="userinfo-https"),
    pytest.param("HTTP://127.0.0.1:9/cb", id="scheme-case"),
]


def assert_error_page(response, status: int = 400) -> None:
    assert response.status_code == status, (response.status_code, response.text[:300])
    assert "Location" not in response.headers
    assert response.headers["Content-Type"].startswith("text/html")


@pytest.fixture
def rp(make_client):
    return make_client(redirect_uris=[CB, "https://app.example.com/cb"])


# -- 1, 2: never redirect to an address we cannot vouch for --------------------------------


@pytest.mark.parametrize("redirect_uri", BAD_REDIRECTS)
def test_redirect_uri_not_exactly_registered_gets_an_error_page_not_a_redirect(
    bob, rp, redirect_uri
):
    response = authorize(bob, rp, redirect_uri=redirect_uri)
    assert_error_page(response)
    assert "return address" in response.text


def test_userinfo_trick_on_a_registered_https_host_gets_an_error_page(bob, rp):
    response = authorize(bob, rp, redirect_uri="https://app.example.com@evil.example/cb")
    assert_error_page(response)


def test_exactly_registered_second_redirect_uri_is_used(bob, rp):
    response = authorize(bob, rp, redirect_uri="https://app.example.com/cb")
    assert sent_back(response, "https://app.example.com/cb")["code"]


def test_unknown_client_id_gets_an_error_page(bob, rp):
    response = authorize(bob, rp, client_id="no-such-client")
    assert_error_page(response)
    assert "not registered" in response.text


def test_missing_client_id_gets_an_error_page(bob, rp):
    assert_error_page(authorize(bob, rp, client_id=None))


def test_missing_redirect_uri_gets_an_error_page_not_the_first_registered_uri(bob, rp):
    response = authorize(bob, rp, redirect_uri=None)
    assert_error_page(response)


def test_missing_redirect_uri_for_a_single_uri_client_also_gets_an_error_page(bob, make_client):
    one = make_client()
    assert_error_page(authorize(bob, one, redirect_uri=None))


def test_error_page_without_session_does_not_send_to_sign_in_first(http, rp):
    # Even before anyone signs in, a bad redirect is refused on the spot.
    assert_error_page(authorize(http, rp, redirect_uri=CB + "/"))


# -- 3: errors about a valid client + redirect go back to it, with state and iss ----------


@pytest.mark.parametrize(
    ("params", "error"),
    [
        pytest.param({"scope": "openid bogus"}, "invalid_scope", id="unknown-scope"),
        pytest.param({"response_type": None}, "unsupported_response_type", id="no-response-type"),
        pytest.param({"response_type": "token"}, "unsupported_response_type", id="token"),
        pytest.param({"response_type": "code id_token"}, "unsupported_response_type",
                     id="hybrid"),
    ],
)
def test_bad_request_from_a_valid_client_redirects_with_error_state_and_iss(
    bob, rp, discovery, params, error
):
    response = authorize(bob, rp, **params)
    query = sent_back(response)
    assert response.status_code == 302
    assert query["error"] == error
    assert query["state"] == response.sent["state"]
    assert query["iss"] == discovery["issuer"]
    assert "code" not in query


def test_bad_request_without_session_also_redirects_with_the_error(http, rp, discovery):
    response = authorize(http, rp, response_type="token")
    query = sent_back(response)
    assert query["error"] == "unsupported_response_type"
    assert query["iss"] == discovery["issuer"]


# -- 4: repeated parameters refused, unknown ones ignored -----------------------------------


@pytest.mark.parametrize("name", ["scope", "state", "response_type", "code_challenge"])
def test_repeated_parameter_is_invalid_request_sent_back_to_the_client(bob, rp, name):
    response = authorize(bob, rp)
    value = response.sent[name]
    response = authorize(bob, rp, **{name: [value, value]})
    query = sent_back(response)
    assert query["error"] == "invalid_request"
    assert "code" not in query


@pytest.mark.parametrize("name", ["client_id", "redirect_uri"])
def test_repeated_client_id_or_redirect_uri_gets_an_error_page(bob, rp, name):
    value = {"client_id": rp.client_id, "redirect_uri": CB}[name]
    response = authorize(bob, rp, **{name: [value, value]})
    assert_error_page(response)
    assert "repeated" in response.text


def test_unknown_parameter_is_ignored(bob, rp):
    response = authorize(bob, rp, foo="bar", x_custom="1")
    query = sent_back(response)
    assert "error" not in query
    assert code_from(response.headers["Location"])
    assert redeem(rp, query["code"], response.code_verifier).status_code == 200


# -- 5: iss on every authorization response ------------------------------------------------


def test_success_response_carries_iss_and_state(bob, rp, discovery):
    response = authorize(bob, rp)
    query = sent_back(response)
    assert set(query) == {"code", "state", "iss"}
    assert query["iss"] == discovery["issuer"]
    assert query["state"] == response.sent["state"]


def test_consent_denied_response_carries_iss(bob, make_client, discovery):
    untrusted = make_client(trusted=False)
    page = authorize(bob, untrusted)
    assert page.status_code == 200
    answer = approve(bob, page, decision="deny")
    query = sent_back(answer)
    assert query["error"] == "access_denied"
    assert query["iss"] == discovery["issuer"]


def test_discovery_announces_the_iss_parameter(discovery):
    assert discovery["authorization_response_iss_parameter_supported"] is True


# -- 6: a form post that redirects answers 303 ---------------------------------------------


def test_consent_approval_answers_303_with_the_code(bob, make_client, discovery):
    untrusted = make_client(trusted=False)
    page = authorize(bob, untrusted)
    assert page.status_code == 200 and "Allow Test app" in page.text
    answer = approve(bob, page)
    assert answer.status_code == 303
    query = sent_back(answer)
    assert query["iss"] == discovery["issuer"]
    assert redeem(untrusted, query["code"], page.code_verifier).status_code == 200


def test_consent_denial_answers_303(bob, make_client):
    page = authorize(bob, make_client(trusted=False))
    assert approve(bob, page, decision="deny").status_code == 303


def test_authorize_by_post_answers_303(bob, rp):
    response = authorize(bob, rp, method="POST")
    assert response.status_code == 303
    assert sent_back(response)["code"]


# -- 7: registration refuses plain http outside loopback -----------------------------------


@pytest.mark.parametrize("uri", ["http://app.example.com/cb", "http://10.0.0.5/cb",
                                 "http://127.0.0.1.evil.example/cb"])
def test_registering_non_loopback_http_redirect_uri_is_refused(registry, uri):
    with pytest.raises(ClientError, match="loopback"):
        registry.create(name="Plain http", redirect_uris=[uri])


def test_registering_loopback_http_redirect_uri_is_allowed(registry):
    client, _ = registry.create(name="Native", redirect_uris=["http://[::1]:8400/cb"])
    assert client.redirect_uris == ["http://[::1]:8400/cb"]


# -- 8: headers of the authorization endpoint and the consent page -------------------------


def assert_page_headers(response) -> None:
    headers = response.headers
    assert headers["Referrer-Policy"] == "no-referrer"
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert headers["X-Frame-Options"] == "DENY"
    assert not any(h.lower().startswith("access-control-") for h in headers)


def test_authorize_redirect_has_safe_headers(bob, rp):
    response = authorize(bob, rp, headers_probe="1")
    assert response.status_code == 302
    assert_page_headers(response)


def test_authorize_error_page_has_safe_headers(bob, rp):
    response = authorize(bob, rp, redirect_uri=CB + "/")
    assert response.status_code == 400
    assert_page_headers(response)


def test_consent_page_has_safe_headers_and_no_third_party_resources(bob, make_client, keycard):
    page = authorize(bob, make_client(trusted=False))
    assert page.status_code == 200
    assert_page_headers(page)
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    for attr in ("src=", "href="):
        for chunk in page.text.split(attr)[1:]:
            target = chunk[1:].split(chunk[0], 1)[0]
            assert not target.startswith(("http:", "https:", "//")) or target.startswith(
                keycard.url), target


def test_authorize_answers_no_cors_even_when_asked(bob, rp):
    query = dict(authorize(bob, rp).sent)
    response = bob.get(rp.issuer + "/authorize", params=query, allow_redirects=False,
                       headers={"Origin": "https://evil.example"})
    assert response.status_code == 302
    assert_page_headers(response)


# -- 9: POST to the authorization endpoint -------------------------------------------------


def test_authorization_request_by_post_issues_a_redeemable_code(bob, rp, discovery):
    response = authorize(bob, rp, method="POST", nonce="post-nonce")
    query = sent_back(response)
    assert query["iss"] == discovery["issuer"] and query["state"] == response.sent["state"]
    token = redeem(rp, query["code"], response.code_verifier)
    assert token.status_code == 200, token.text
    assert "id_token" in token.json()


def test_a_signed_out_browser_goes_straight_to_github_and_comes_back_with_a_code(rp, http,
                                                                              keycard):
    """Issue #15: no /login hop between /authorize and the upstream, and none between the
    callback and the code (two requests less per sign-in); the state, PKCE and the binding
    cookie are the ones /login would have set."""
    response = authorize(http, rp)
    assert response.status_code == 302
    location = urlsplit(response.headers["Location"])
    assert location.path == "/login/oauth/authorize"
    assert keycard.env["SSO_GITHUB_URL"].endswith(location.netloc)
    query = parse_qs(location.query)
    assert query["code_challenge_method"] == ["S256"] and query["state"][0]
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith("keycard_login=") and "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
    page = http.get(response.headers["Location"], timeout=10)
    to_callback = pick_upstream_user(http, page, "bob", allow_redirects=False)
    assert urlsplit(to_callback.headers["Location"]).path == "/auth/github/callback"
    # The callback answers the authorization request itself: straight back to the app with
    # the code, the new session's cookie on the same answer (no second /authorize hop).
    callback = http.get(to_callback.headers["Location"], allow_redirects=False, timeout=10)
    assert callback.status_code == 302
    assert callback.headers["Location"].startswith(rp.redirect_uri + "?")
    assert sent_back(callback, rp.redirect_uri)["code"]
    assert "keycard_session=" in callback.headers["Set-Cookie"]
    assert http.get(keycard.url + "/", allow_redirects=False, timeout=10).status_code == 200


def _to_callback(http, response):
    page = http.get(urljoin(response.url, response.headers["Location"]), timeout=10)
    to_callback = pick_upstream_user(http, page, "bob", allow_redirects=False)
    return http.get(to_callback.headers["Location"], allow_redirects=False, timeout=10)


def test_a_consent_page_after_sign_in_is_served_at_authorize_where_it_can_be_reloaded(
        make_client, http):
    rp = make_client(name="Needs consent", trusted=False)
    callback = _to_callback(http, authorize(http, rp))
    assert callback.status_code == 302
    assert urlsplit(callback.headers["Location"]).path == "/authorize"
    assert "keycard_session=" in callback.headers["Set-Cookie"]
    page = http.get(urljoin(callback.url, callback.headers["Location"]), timeout=10)
    assert page.status_code == 200 and "/authorize/decision" in page.text


def test_a_second_sign_in_asked_for_after_the_first_keeps_its_binding_cookie(rp, http,
                                                                           keycard):
    """A return address that asks for a fresh sign-in (prompt=login) starts a second one:
    its binding cookie must survive the first callback's clean-up, so it can complete."""
    asked = urlsplit(authorize(http, rp).request.url)  # the app's own request, then...
    fresh = f"{asked.path}?{asked.query}&prompt=login"  # ...a return address that asks again
    first = http.get(keycard.url + "/login?next=" + quote(fresh, safe=""),
                     allow_redirects=False, timeout=10)
    callback = _to_callback(http, first)
    assert callback.status_code == 302
    assert urlsplit(callback.headers["Location"]).path == "/authorize"
    again = http.get(urljoin(callback.url, callback.headers["Location"]),
                     allow_redirects=False, timeout=10)
    assert urlsplit(again.headers["Location"]).path == "/login/oauth/authorize"
    done = _to_callback(http, again)
    assert sent_back(done, rp.redirect_uri)["code"]


def test_an_oversized_authorization_request_stores_nothing_and_says_so(rp, http, keycard,
                                                                      rdb):
    pattern = keycard.services.store.keys.login_state("*")
    before = sum(1 for _ in rdb.scan_iter(match=pattern))
    answer = http.post(keycard.url + "/authorize", allow_redirects=False, timeout=10, data={
        "response_type": "code", "client_id": rp.client_id, "redirect_uri": rp.redirect_uri,
        "scope": "openid", "padding": "x" * 200_000})
    assert answer.status_code == 400 and "too long" in answer.text
    assert sum(1 for _ in rdb.scan_iter(match=pattern)) == before


def round_trips(commands: list[str], prefix: str) -> list[list[tuple[str, str]]]:
    """MONITOR's commands grouped by round trip as (command, kind of key): a transaction
    is one, every other command one (a pipeline without MULTI shows as several)."""
    trips: list[list[tuple[str, str]]] = []
    open_: list[tuple[str, str]] | None = None
    for command in commands:
        name, _, rest = command.partition(" ")
        if name == "MULTI":
            open_ = []
        elif name == "EXEC":
            trips.append(open_ or [])
            open_ = None
        else:
            key = rest.split(" ", 2)[2 if name == "EVALSHA" else 0]
            step = (name.upper(), key.removeprefix(prefix).split(":", 1)[0])
            if open_ is not None:
                open_.append(step)
            else:
                trips.append([step])
    return trips


def test_a_sign_in_writes_the_person_and_the_session_in_one_round_trip_each(
        keycard, make_client, rdb):
    """Issue #15: the callback's writes outside a cluster. The person (directory, login
    index, record) is one transaction, the new session (the person's index and the record)
    another, and the /authorize the callback answers inline is not counted against the
    rate limit a second time."""
    rp = make_client(name="Trips app")
    prefix = keycard.services.store.keys.prefix
    get_code(requests.Session(), rp, scope="openid")  # bob's first sign-in, scripts loaded
    commands = redis_commands_during(rdb, prefix, lambda: get_code(
        requests.Session(), rp, scope="openid"), transactions=True)
    keys = keycard.services.store.keys
    # Not the journey's own: configuration reads whose per-process caches expire every few
    # seconds, and the hourly prune's lock, tried after the callback's answer is sent.
    others = {key.removeprefix(prefix).split(":", 1)[0] for key in (
        keys.client("x"), keys.clients_index(), keys.rules(), keys.bootstrap_pins(),
        keys.instance_epoch(), keys.forget_lock())}
    trips = [trip for trip in round_trips(commands, prefix)
             if trip and trip[0][1] not in others]
    assert [("ZADD", "users"), ("HSET", "logins"), ("HSET", "user"), ("EXPIRE", "user"),
            ("HSET", "user")] in trips, trips
    assert [("SADD", "user"), ("EXPIRE", "user"), ("SET", "sess")] in trips, trips
    limits = [trip for trip in trips if trip[0][1] == "rl"]
    assert len(limits) == 2, trips  # /authorize and the callback: one count per request
    # /authorize: the limit, the sign-in state; the callback: the limit, the state, the
    # person, the audit record, the session, the code
    assert len(trips) == 8, trips
