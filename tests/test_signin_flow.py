"""The browser sign-in journey through Keycard over HTTP: its refusals and failure pages.

Keycard, the development upstream and Redis are real servers; the "browser" is a
``requests.Session``. Every failure must leave no session and no reusable state behind.
"""

from __future__ import annotations

import re
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import pytest
import requests

from sso.crypto import hash_secret
from tests.support import pick_upstream_user, sign_in, start_sign_in, stop_at_callback

SESSION_COOKIE = "keycard_session"
BINDING_COOKIE = "keycard_login"


def session_keys(rdb, prefix: str) -> list[str]:
    return list(rdb.scan_iter(match=f"{prefix}sess:*"))


def state_keys(rdb, prefix: str) -> list[str]:
    return list(rdb.scan_iter(match=f"{prefix}state:*"))


def assert_signed_out(
    http: requests.Session, rdb, prefix: str, *, reached_callback: bool = True
) -> None:
    assert SESSION_COOKIE not in http.cookies.get_dict()
    if reached_callback:
        assert BINDING_COOKIE not in http.cookies.get_dict()  # single-use, like the state
    assert session_keys(rdb, prefix) == []
    assert state_keys(rdb, prefix) == []


def with_query(url: str, **changes: str | None) -> str:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    for key, value in changes.items():
        if value is None:
            query.pop(key, None)
        else:
            query[key] = value
    return urlunsplit(parts._replace(query=urlencode(query)))


def browser_with_cookies(source: requests.Session) -> requests.Session:
    other = requests.Session()
    for cookie in source.cookies:
        other.cookies.set_cookie(cookie)
    return other


# -- who may not sign in ----------------------------------------------------------------------


def test_item_11_outsider_is_refused_without_learning_the_allowed_org_and_no_session(
    keycard, http, rdb, prefix
):
    page = sign_in(http, keycard.url, "mallory")
    assert page.status_code == 403
    assert "is not a member of an organisation that may use Keycard" in page.text
    assert "mallory" in page.text
    assert "acme" not in page.text.lower()  # issue #14 item 11: the org stays unnamed
    assert "Use a different GitHub account" in page.text
    assert_signed_out(http, rdb, prefix)


def test_item_11_cancel_on_the_upstream_page_is_not_an_error_and_offers_try_again(
    keycard, http, rdb, prefix
):
    page = pick_upstream_user(http, start_sign_in(http, keycard.url, "/admin"), "", deny=True)
    assert page.status_code == 200  # the person's choice, not an error 403
    assert urlsplit(page.url).path == "/auth/github/callback"
    assert "Sign-in cancelled" in page.text
    assert "You cancelled the sign-in on GitHub" in page.text
    assert "Error 403" not in page.text and 'role="alert"' not in page.text
    assert '<a class="button primary" href="/login?next=/admin">Try again</a>' in page.text
    assert_signed_out(http, rdb, prefix)


# -- upstream failures -----------------------------------------------------------------------

UPSTREAM_FAILURES = [
    pytest.param(
        "/login/oauth/access_token", "token_error", {}, 502,
        "GitHub did not accept the sign-in code", id="token-error-in-200-body",
    ),
    pytest.param(
        "/api/v3/user", "unauthorized", {}, 502,
        "GitHub no longer accepts Keycard", id="401-on-user",
    ),
    pytest.param(
        "/api/v3/user", "timeout", {"delay": 3}, 503,
        "GitHub did not answer in time", id="timeout",
    ),
    pytest.param(
        "/api/v3/user", "server_error", {"status": 502}, 503,
        "GitHub is having trouble right now", id="502-unicorn",
    ),
]


@pytest.mark.parametrize(("path", "kind", "params", "status", "text"), UPSTREAM_FAILURES)
def test_upstream_failure_gives_its_own_page_and_leaves_nothing_behind(
    keycard, upstream, http, rdb, prefix, path, kind, params, status, text
):
    upstream.state.add_fault(path, kind, **params)
    page = sign_in(http, keycard.url, "alice")
    assert page.status_code == status, page.text[:500]
    assert text in page.text
    assert "Try signing in again" in page.text
    assert upstream.state.pending_faults() == []  # the fault was really hit
    assert_signed_out(http, rdb, prefix)


def test_primary_rate_limit_page_states_the_wait_and_sends_retry_after(
    keycard, upstream, http, rdb, prefix
):
    upstream.state.add_fault("/api/v3/user", "rate_limit", reset_in=600)
    page = sign_in(http, keycard.url, "alice")
    assert page.status_code == 503
    assert "GitHub is rate limiting us" in page.text
    assert "try again in 10 minutes" in page.text
    assert 590 <= int(page.headers["Retry-After"]) <= 600
    assert_signed_out(http, rdb, prefix)


def test_secondary_rate_limit_page_states_the_wait_and_sends_retry_after(
    keycard, upstream, http, rdb, prefix
):
    upstream.state.add_fault("/api/v3/user/teams", "secondary_rate_limit", retry_after=42)
    page = sign_in(http, keycard.url, "alice")
    assert page.status_code == 503
    assert "try again in 42 seconds" in page.text
    assert page.headers["Retry-After"] == "42"
    assert_signed_out(http, rdb, prefix)


def test_saml_enforcement_page_links_to_the_upstream_authorisation_url(
    keycard, upstream, http, rdb, prefix
):
    upstream.state.add_fault(
        "/api/v3/user/memberships/orgs/acme", "saml", authorization_request="t1ck3t"
    )
    page = sign_in(http, keycard.url, "alice")
    assert page.status_code == 403
    assert "SAML single sign-on" in page.text
    link = re.search(r'<a [^>]*href="([^"]+)"[^>]*>Authorise on GitHub</a>', page.text)
    assert link, page.text
    assert link.group(1) == f"{upstream.url}/orgs/acme/sso?authorization_request=t1ck3t"
    assert_signed_out(http, rdb, prefix)


# -- state: single use, bound to the browser, short-lived -------------------------------------


def test_callback_replayed_a_second_time_is_refused_after_the_first_worked(
    keycard, http, rdb, prefix
):
    callback = stop_at_callback(http, keycard.url, "bob")
    binding = http.cookies.get(BINDING_COOKIE)
    assert binding

    first = http.get(callback)
    assert first.status_code == 200 and "Bob Builder" in first.text
    assert len(session_keys(rdb, prefix)) == 1

    with requests.Session() as replayer:  # even with the original binding cookie
        replayer.cookies.set(BINDING_COOKIE, binding, domain="127.0.0.1", path="/")
        second = replayer.get(callback)
        assert second.status_code == 400
        assert "expired or was already used" in second.text
        assert SESSION_COOKIE not in replayer.cookies.get_dict()
    assert len(session_keys(rdb, prefix)) == 1


def test_callback_whose_state_expired_in_redis_is_refused(keycard, http, rdb, prefix):
    callback = stop_at_callback(http, keycard.url, "alice")
    keys = state_keys(rdb, prefix)
    assert len(keys) == 1
    rdb.delete(*keys)  # what the TTL does after ten minutes
    page = http.get(callback)
    assert page.status_code == 400
    assert "expired or was already used" in page.text
    assert_signed_out(http, rdb, prefix)


def test_callback_with_a_forged_state_is_refused_and_the_real_one_survives(
    keycard, http, rdb, prefix
):
    callback = stop_at_callback(http, keycard.url, "alice")
    forged = with_query(callback, state=secrets.token_urlsafe(32))
    page = http.get(forged)
    assert page.status_code == 400
    assert SESSION_COOKIE not in http.cookies.get_dict()
    assert len(state_keys(rdb, prefix)) == 1  # a guess does not burn the genuine state


def test_item_11_callback_without_state_says_start_again(keycard, http, rdb, prefix):
    callback = stop_at_callback(http, keycard.url, "alice")
    page = http.get(with_query(callback, state=None))
    assert page.status_code == 400
    assert "This sign-in link has expired or was already used — start again." in page.text
    assert "no valid state" not in page.text
    assert '<a class="button primary" href="/login" rel="noreferrer">Start again</a>' in page.text
    assert SESSION_COOKIE not in http.cookies.get_dict()
    assert session_keys(rdb, prefix) == []


def test_callback_carried_to_a_browser_without_the_binding_cookie_is_refused(
    keycard, http, rdb, prefix
):
    callback = stop_at_callback(http, keycard.url, "alice")
    with requests.Session() as other:
        page = other.get(callback)
        assert page.status_code == 400
        assert "started in another browser" in page.text
        assert SESSION_COOKIE not in other.cookies.get_dict()
    assert_signed_out(http, rdb, prefix, reached_callback=False)


def test_callback_carried_to_a_browser_with_its_own_sign_in_is_refused(
    keycard, http, rdb, prefix
):
    victim_callback = stop_at_callback(http, keycard.url, "mallory")
    with requests.Session() as victim:
        start_sign_in(victim, keycard.url)  # the victim has a binding cookie of its own
        assert victim.cookies.get(BINDING_COOKIE)
        assert victim.cookies.get(BINDING_COOKIE) != http.cookies.get(BINDING_COOKIE)
        page = victim.get(victim_callback)
        assert page.status_code == 400
        assert "started in another browser" in page.text
        assert SESSION_COOKIE not in victim.cookies.get_dict()
    assert session_keys(rdb, prefix) == []


def test_two_concurrent_callbacks_with_the_same_state_let_at_most_one_through(
    keycard, http, rdb, prefix
):
    callback = stop_at_callback(http, keycard.url, "bob")
    browsers = [browser_with_cookies(http), browser_with_cookies(http)]
    barrier = threading.Barrier(2)

    def hit(browser: requests.Session) -> requests.Response:
        barrier.wait(timeout=10)
        return browser.get(callback, allow_redirects=False)

    with ThreadPoolExecutor(max_workers=2) as pool:
        responses = list(pool.map(hit, browsers))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [302, 400], [r.text[:200] for r in responses]
    winners = [b for b in browsers if SESSION_COOKIE in b.cookies.get_dict()]
    assert len(winners) == 1
    assert len(session_keys(rdb, prefix)) == 1
    for browser in browsers:
        browser.close()


def test_state_record_lives_at_most_ten_minutes(keycard, http, rdb, prefix):
    start_sign_in(http, keycard.url)
    keys = state_keys(rdb, prefix)
    assert len(keys) == 1
    assert 0 < rdb.ttl(keys[0]) <= 600


def test_upstream_redirect_carries_a_128_bit_state_and_pkce_s256(keycard, http, rdb, prefix):
    response = http.get(f"{keycard.url}/login", allow_redirects=False)
    assert response.status_code == 302
    query = parse_qs(urlsplit(response.headers["Location"]).query)
    state = query["state"][0]
    assert re.fullmatch(r"[A-Za-z0-9_-]{22,}", state), state
    assert query["code_challenge_method"] == ["S256"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", query["code_challenge"][0])
    # Only the state's hash is stored, never the bearer value itself.
    assert state_keys(rdb, prefix) == [f"{prefix}state:{hash_secret(state)}"]

    again = http.get(f"{keycard.url}/login", allow_redirects=False)
    assert parse_qs(urlsplit(again.headers["Location"]).query)["state"][0] != state


# -- where sign-in lands, and the session it creates ------------------------------------------


@pytest.mark.parametrize(
    "next_value", ["//evil.example/x", "https://evil.example", "/\\evil.example"]
)
def test_off_site_next_ends_on_the_portal(keycard, http, next_value):
    page = http.get(f"{keycard.url}/login", params={"next": next_value})
    final = pick_upstream_user(http, page, "alice")
    assert final.status_code == 200
    assert final.url == keycard.url + "/"
    assert all("evil.example" not in r.headers.get("Location", "") for r in final.history)


def test_same_site_next_with_a_query_is_honoured(keycard, http):
    page = http.get(f"{keycard.url}/login", params={"next": "/somewhere?x=1"})
    final = pick_upstream_user(http, page, "alice")
    parts = urlsplit(final.url)
    assert f"{parts.scheme}://{parts.netloc}" == keycard.url
    assert parts.path == "/somewhere"
    assert parts.query == "x=1"


def test_cookie_planted_before_sign_in_is_replaced_by_a_fresh_session_id(
    keycard, http, rdb, prefix
):
    http.cookies.set(SESSION_COOKIE, "attacker-chosen", domain="127.0.0.1", path="/")
    page = sign_in(http, keycard.url, "bob")
    assert page.status_code == 200 and "Bob Builder" in page.text
    sid = http.cookies.get(SESSION_COOKIE)
    assert sid and sid != "attacker-chosen"
    assert session_keys(rdb, prefix) == [f"{prefix}sess:{hash_secret(sid)}"]
    assert rdb.exists(f"{prefix}sess:{hash_secret('attacker-chosen')}") == 0
    with requests.Session() as attacker:
        attacker.cookies.set(SESSION_COOKIE, "attacker-chosen", domain="127.0.0.1", path="/")
        assert "Bob Builder" not in attacker.get(keycard.url + "/").text


def test_live_session_id_planted_before_sign_in_does_not_become_the_victims_session(
    keycard, http, rdb, prefix
):
    with requests.Session() as attacker:
        assert "Dave Diaz" in sign_in(attacker, keycard.url, "dave").text
        planted = attacker.cookies.get(SESSION_COOKIE)
        assert planted
        http.cookies.set(SESSION_COOKIE, planted, domain="127.0.0.1", path="/")

        # The planted id is signed in, so only "sign in as someone else" reaches GitHub.
        upstream_page = http.get(f"{keycard.url}/login", params={"prompt": "login"})
        page = pick_upstream_user(http, upstream_page, "bob")
        assert page.status_code == 200 and "Bob Builder" in page.text
        sid = http.cookies.get(SESSION_COOKIE)
        assert sid and sid != planted
        assert rdb.exists(f"{prefix}sess:{hash_secret(planted)}") == 0
        assert "Bob Builder" not in attacker.get(keycard.url + "/").text
