"""Server-side sessions: opaque ids stored hashed, rotation, sign-out, lifetimes, re-check."""

from __future__ import annotations

import base64
import hashlib
import time

import requests

from tests.support import csrf_token, pick_upstream_user, sign_in, wait_until

COOKIE = "keycard_session"


def sid_hash(sid: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(sid.encode()).digest()).rstrip(b"=").decode()


def portal_shows(http: requests.Session, url: str, text: str) -> bool:
    return text in http.get(url + "/").text


def test_cookie_is_opaque_httponly_lax_and_stored_only_hashed(keycard, http, rdb, prefix):
    response = sign_in(http, keycard.url, "alice")
    sid = http.cookies.get(COOKIE)
    assert sid and len(sid) >= 43
    set_cookie = response.history[-1].headers["Set-Cookie"]
    assert "HttpOnly" in set_cookie and "SameSite=Lax" in set_cookie and "Path=/" in set_cookie
    assert "Domain" not in set_cookie
    keys = list(rdb.scan_iter(match=f"{prefix}sess:*"))
    assert keys == [f"{prefix}sess:{sid_hash(sid)}"]
    assert not any(sid in key for key in rdb.scan_iter(match=f"{prefix}*"))
    assert sid not in rdb.get(keys[0])


def test_session_id_rotates_at_every_sign_in(keycard, http):
    sign_in(http, keycard.url, "alice")
    first = http.cookies.get(COOKIE)
    page = http.get(keycard.url + "/login?prompt=login")
    pick_upstream_user(http, page, "alice")
    second = http.cookies.get(COOKIE)
    assert first and second and first != second
    old = requests.get(keycard.url + "/", cookies={COOKIE: first})
    assert "Sign in with GitHub" in old.text


def test_logout_ends_session_server_side_and_old_cookie_is_dead(keycard, http, rdb, prefix):
    portal = sign_in(http, keycard.url, "alice")
    sid = http.cookies.get(COOKIE)
    response = http.post(keycard.url + "/logout", data={"csrf_token": csrf_token(portal.text)},
                         allow_redirects=False)
    assert response.status_code == 303
    assert not list(rdb.scan_iter(match=f"{prefix}sess:*"))
    replay = requests.get(keycard.url + "/", cookies={COOKIE: sid})
    assert "Sign in with GitHub" in replay.text and "Alice Archer" not in replay.text


def test_logout_without_csrf_token_is_refused_and_session_survives(keycard, http):
    sign_in(http, keycard.url, "alice")
    response = http.post(keycard.url + "/logout", data={}, allow_redirects=False)
    assert response.status_code == 403
    assert portal_shows(http, keycard.url, "Alice Archer")


def test_cross_site_origin_post_is_refused_even_with_token(keycard, http):
    portal = sign_in(http, keycard.url, "alice")
    response = http.post(keycard.url + "/logout", data={"csrf_token": csrf_token(portal.text)},
                         headers={"Origin": "https://evil.example"}, allow_redirects=False)
    assert response.status_code == 403
    assert portal_shows(http, keycard.url, "Alice Archer")


def test_sign_out_everywhere_ends_every_session_of_the_user(keycard, rdb, prefix):
    laptop, phone, other = requests.Session(), requests.Session(), requests.Session()
    portal = sign_in(laptop, keycard.url, "alice")
    sign_in(phone, keycard.url, "alice")
    sign_in(other, keycard.url, "bob")
    assert len(list(rdb.scan_iter(match=f"{prefix}sess:*"))) == 3
    laptop.post(keycard.url + "/logout/everywhere", data={"csrf_token": csrf_token(portal.text)})
    assert "Sign in with GitHub" in phone.get(keycard.url + "/").text
    assert "Bob Builder" in other.get(keycard.url + "/").text
    assert len(list(rdb.scan_iter(match=f"{prefix}sess:*"))) == 1


def test_idle_timeout_ends_an_unused_session(make_keycard, http, rdb, prefix):
    keycard = make_keycard(SSO_SESSION_IDLE_SECONDS="1", SSO_SESSION_MAX_SECONDS="3600")
    sign_in(http, keycard.url, "alice")
    key = next(iter(rdb.scan_iter(match=f"{prefix}sess:*")))
    # Left alone (no requests), the record expires on its own after the idle limit.
    wait_until(lambda: not rdb.exists(key), timeout=10)
    assert "Sign in with GitHub" in http.get(keycard.url + "/").text


def test_use_keeps_a_session_alive_until_its_absolute_lifetime(make_keycard, http, rdb, prefix):
    keycard = make_keycard(SSO_SESSION_IDLE_SECONDS="2", SSO_SESSION_MAX_SECONDS="3")
    sign_in(http, keycard.url, "alice")
    key = next(iter(rdb.scan_iter(match=f"{prefix}sess:*")))
    assert 0 < rdb.ttl(key) <= 2
    # Used every 0.5 s, the session outlives its 2 s idle limit but not its 3 s absolute one.
    seen_alive_after_idle_limit = []

    def ended() -> bool:
        alive = "Alice Archer" in http.get(keycard.url + "/").text
        value = rdb.get(key)
        created = value.split("\x1f")[1] if value else None
        if alive and created and time.time() - int(created) > 2.2:
            seen_alive_after_idle_limit.append(True)
        return not alive

    wait_until(ended, timeout=10, interval=0.5)
    assert seen_alive_after_idle_limit


def test_membership_recheck_signs_out_a_user_removed_from_the_org(make_keycard, upstream, http,
                                                                  rdb, prefix):
    keycard = make_keycard(SSO_MEMBERSHIP_MAX_AGE="1")
    sign_in(http, keycard.url, "bob")
    upstream.state.remove_user_from_org("acme", "bob")
    wait_until(lambda: "Sign in with GitHub" in http.get(keycard.url + "/").text, timeout=10,
               interval=0.3)
    assert not list(rdb.scan_iter(match=f"{prefix}sess:*"))
    events = [e["event"] for e in keycard.services.audit.recent()]
    assert "access.ended" in events


def test_membership_recheck_picks_up_a_new_team(make_keycard, upstream, http):
    keycard = make_keycard(SSO_MEMBERSHIP_MAX_AGE="1")
    sign_in(http, keycard.url, "dave")
    assert "acme/security" not in http.get(keycard.url + "/").text
    upstream.state.add_team_member("acme", "security", "dave")
    wait_until(lambda: "acme/security" in http.get(keycard.url + "/").text, timeout=10,
               interval=0.3)
