"""Tokens live and die with the sessions and consents behind them (security review fixes)."""

from __future__ import annotations

import time

import requests

from sso.oidc.records import Grant
from tests.oidc.conftest import (
    active,
    authorize,
    get_code,
    redeem,
    refresh,
    sent_back,
    tokens_for,
)
from tests.support import csrf_token, pick_upstream_user, sign_in


def logout(http: requests.Session, keycard) -> None:
    page = http.get(keycard.url + "/")
    http.post(keycard.url + "/logout", data={"csrf_token": csrf_token(page.text)})


def test_untrusted_app_asking_for_no_scope_still_gets_the_consent_screen(keycard, http,
                                                                         make_client):
    rp = make_client(trusted=False)
    sign_in(http, keycard.url, "bob")
    response = authorize(http, rp, scope=None)
    assert response.status_code == 200 and "Allow" in response.text
    assert "Location" not in response.headers


def test_a_code_cannot_be_redeemed_after_its_session_signed_out(keycard, http, make_client):
    rp = make_client()
    code, verifier = get_code(http, rp, "bob")
    logout(http, keycard)
    answer = redeem(rp, code, verifier)
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_grant"


def test_signing_in_again_keeps_earlier_tokens_bound_to_the_browser(keycard, http,
                                                                      make_client):
    rp = make_client()
    tokens = tokens_for(http, rp, "bob")
    page = http.get(keycard.url + "/login?prompt=login")  # a fresh sign-in, a new session id
    pick_upstream_user(http, page, "bob")
    logout(http, keycard)  # signing out of the new session ends the old session's tokens too
    answer = refresh(rp, tokens["refresh_token"])
    assert answer.json()["error"] == "invalid_grant"
    assert not active(rp, tokens["access_token"])


def test_another_person_signing_in_on_the_same_browser_ends_the_first_ones_tokens(
        keycard, http, make_client):
    rp = make_client()
    tokens = tokens_for(http, rp, "bob")
    page = http.get(keycard.url + "/login?prompt=login")
    pick_upstream_user(http, page, "alice")  # a shared machine: bob's session gives way
    assert refresh(rp, tokens["refresh_token"]).json()["error"] == "invalid_grant"
    assert not active(rp, tokens["access_token"])


def test_signing_out_everywhere_ends_the_tokens_of_every_session(keycard, http,
                                                                  make_client):
    rp = make_client()
    tokens = tokens_for(http, rp, "bob")
    page = http.get(keycard.url + "/")
    ended = http.post(keycard.url + "/logout/everywhere",
                      data={"csrf_token": csrf_token(page.text)})
    assert ended.status_code == 200
    assert refresh(rp, tokens["refresh_token"]).json()["error"] == "invalid_grant"


def test_an_admin_ending_one_session_ends_its_tokens(keycard, http, make_client):
    rp = make_client()
    tokens = tokens_for(http, rp, "bob")
    admin = requests.Session()
    sign_in(admin, keycard.url, "alice")
    page = admin.get(keycard.url + "/admin/people/bob")
    form_action = next(part for part in page.text.split('action="')[1:]
                       if part.startswith("/admin/sessions/")).split('"', 1)[0]
    ended = admin.post(keycard.url + form_action, data={"csrf_token": csrf_token(page.text)})
    assert ended.status_code == 200
    assert refresh(rp, tokens["refresh_token"]).json()["error"] == "invalid_grant"


def test_another_sessions_id_token_hint_asks_before_signing_out(keycard, http, make_client):
    rp = make_client(post_logout_redirect_uris=["http://127.0.0.1:9/bye"])
    attacker = requests.Session()
    attacker_tokens = tokens_for(attacker, rp, "dave")
    sign_in(http, keycard.url, "bob")
    forged = http.get(keycard.url + "/end-session", params={
        "id_token_hint": attacker_tokens["id_token"],
        "post_logout_redirect_uri": "http://127.0.0.1:9/bye"}, allow_redirects=False)
    assert forged.status_code == 200 and "Sign out of Keycard?" in forged.text
    assert "Bob Builder" in http.get(keycard.url + "/").text


def test_non_ascii_digits_in_max_age_are_a_clean_error(keycard, http, make_client):
    rp = make_client()
    sign_in(http, keycard.url, "bob")
    response = authorize(http, rp, max_age="²")
    assert response.status_code == 302
    assert sent_back(response)["error"] == "invalid_request"


def test_a_grant_index_never_expires_before_the_grants_it_lists(keycard, rdb, prefix):
    records = keycard.services.records
    now = int(time.time())
    records.create_grant(Grant("long", "77", "a", "openid", "", now, now + 90 * 86400))
    records.create_grant(Grant("short", "77", "b", "openid", "", now, now + 3600))
    assert rdb.ttl(f"{prefix}user:77:grants") > 80 * 86400
    assert records.revoke_user_grants("77") == 2


def test_logout_without_hint_asks_and_needs_the_forms_csrf_token(keycard, http):
    sign_in(http, keycard.url, "bob")
    page = http.get(keycard.url + "/end-session")
    assert page.status_code == 200 and "Sign out of Keycard?" in page.text
    refused = http.post(keycard.url + "/end-session", data={})
    assert refused.status_code == 403
    assert "Bob Builder" in http.get(keycard.url + "/").text
    confirmed = http.post(keycard.url + "/end-session",
                          data={"csrf_token": csrf_token(page.text)}, allow_redirects=False)
    assert confirmed.status_code == 303
    assert "Sign in with GitHub" in http.get(keycard.url + "/").text


def test_rp_logout_after_the_session_already_ended_goes_straight_back(keycard, http,
                                                                       make_client):
    rp = make_client(post_logout_redirect_uris=["http://127.0.0.1:9/bye"])
    tokens = tokens_for(http, rp, "bob")
    logout(http, keycard)
    back = http.get(keycard.url + "/end-session", params={
        "id_token_hint": tokens["id_token"], "post_logout_redirect_uri": "http://127.0.0.1:9/bye",
        "state": "s"}, allow_redirects=False)
    assert back.status_code == 302 and back.headers["Location"] == "http://127.0.0.1:9/bye?state=s"
