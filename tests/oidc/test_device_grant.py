"""RFC 8628 device grant (SECURITY 22–24): the device authorization endpoint, polling at
the token endpoint, and the ``/device`` verification page, over HTTP against the real
Keycard, the development upstream and Redis."""

from __future__ import annotations

import re
import threading
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from sso.oidc.device_records import (
    GUESS_LIMIT,
    USER_CODE_ALPHABET,
    new_user_code,
    normalise_user_code,
)
from sso.oidc.scopes import SCOPE_WORDS
from sso.oidc.tokens import subject_for, verify_jwt
from tests.device_support import (
    DEVICE_GRANT,
    answer_device,
    decide,
    enter_code,
    poll,
    register_device_client,
    start_device,
)
from tests.support import form_with, pick_upstream_user, sign_in, wait_until

USER_CODE = re.compile(rf"^[{USER_CODE_ALPHABET}]{{4}}-[{USER_CODE_ALPHABET}]{{4}}$")
SCOPE = "openid profile email offline_access"


@pytest.fixture
def cli_client(keycard: Any) -> Any:
    return register_device_client(keycard)


@pytest.fixture
def bob(keycard: Any, http: requests.Session) -> requests.Session:
    """A browser signed in to Keycard as bob."""
    sign_in(http, keycard.url, "bob")
    return http


def started(keycard: Any, client: Any, scope: str = SCOPE) -> dict[str, Any]:
    response = start_device(keycard.url, client.client_id, scope)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


def error_of(response: requests.Response) -> str:
    assert response.status_code in (400, 401, 403), (response.status_code, response.text)
    return str(response.json()["error"])


def events(keycard: Any, name: str) -> list[dict[str, Any]]:
    return [e for e in keycard.services.audit.recent() if e["event"] == name]


# -- codes ------------------------------------------------------------------------------------


def test_user_codes_use_the_rfc_alphabet_in_two_groups_of_four():
    drawn = [new_user_code() for _ in range(1000)]
    assert all(USER_CODE.fullmatch(code) for code in drawn)
    assert set("".join(drawn).replace("-", "")) == set(USER_CODE_ALPHABET)
    assert len(set(drawn)) == len(drawn)


@pytest.mark.parametrize("typed", ["bcdf-ghjk", "BCDFGHJK", " bcdfghjk ", "BcDf GhJk"])
def test_user_codes_are_case_and_dash_insensitive(typed: str):
    assert normalise_user_code(typed) == "BCDFGHJK"


@pytest.mark.parametrize("typed", ["", "BCDF-GHJ", "BCDF-GHJKL", "ABCD-EFGH", "BCDF_GHJK"])
def test_malformed_user_codes_are_refused(typed: str):
    assert normalise_user_code(typed) is None


def test_device_authorization_answers_long_random_device_codes(keycard, cli_client):
    answers = [start_device(keycard.url, cli_client.client_id) for _ in range(5)]
    assert all(a.status_code == 200 for a in answers)
    assert answers[0].headers["Cache-Control"] == "no-store"
    data = [a.json() for a in answers]
    device_codes = {d["device_code"] for d in data}
    assert len(device_codes) == 5
    assert all(len(code) >= 43 for code in device_codes)  # ≥ 256 bits, base64url
    first = data[0]
    assert USER_CODE.fullmatch(first["user_code"])
    assert first["verification_uri"] == f"{keycard.url}/device"
    complete = urlsplit(first["verification_uri_complete"])
    assert complete.path == "/device"
    assert parse_qs(complete.query)["user_code"] == [first["user_code"]]
    assert first["expires_in"] == 600 and first["interval"] == 5


def test_discovery_announces_the_device_endpoint(keycard, discovery):
    assert discovery["device_authorization_endpoint"] == f"{keycard.url}/device_authorization"
    assert DEVICE_GRANT in discovery["grant_types_supported"]


# -- the happy path ---------------------------------------------------------------------------


def test_approval_on_the_page_issues_tokens_exactly_once(keycard, cli_client, bob):
    grant = started(keycard, cli_client)
    pending = poll(keycard.url, cli_client.client_id, grant["device_code"])
    assert error_of(pending) == "authorization_pending"

    # Typed in lower case, without the dash, with spaces around it.
    typed = f" {grant['user_code'].replace('-', '').lower()} "
    done = answer_device(bob, keycard.url, typed)
    assert urlsplit(done.headers["Location"]).path == "/device/done"
    assert "Device connected" in bob.get(keycard.url + done.headers["Location"]).text

    answer = poll(keycard.url, cli_client.client_id, grant["device_code"])
    assert answer.status_code == 200, answer.text
    assert answer.headers["Cache-Control"] == "no-store"
    tokens = answer.json()
    keys = keycard.services.keys.public_keyset()
    id_claims = verify_jwt(tokens["id_token"], keys)
    access_claims = verify_jwt(tokens["access_token"], keys, typ="at+jwt")
    bob_sub = subject_for(keycard.url, "1002")
    assert id_claims["sub"] == access_claims["sub"] == bob_sub
    assert id_claims["aud"] == [cli_client.client_id]
    assert id_claims["preferred_username"] == "bob" and id_claims["amr"] == ["github"]
    assert access_claims["scope"] == SCOPE

    # The device code is dead now: the next poll is invalid_grant (SECURITY 23).
    again = poll(keycard.url, cli_client.client_id, grant["device_code"])
    assert error_of(again) == "invalid_grant"

    # The tokens work like the code flow's: userinfo, and a rotating refresh token.
    info = requests.get(keycard.url + "/userinfo", timeout=10,
                        headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert info.status_code == 200 and info.json()["sub"] == bob_sub
    refreshed = requests.post(keycard.url + "/token", timeout=10, data={
        "grant_type": "refresh_token", "refresh_token": tokens["refresh_token"],
        "client_id": cli_client.client_id})
    assert refreshed.status_code == 200, refreshed.text
    approved = events(keycard, "device.approved")
    assert approved and approved[0]["actor"] == "bob"
    assert approved[0]["details"]["client"] == cli_client.client_id


def test_two_polls_racing_after_approval_get_one_token(keycard, cli_client, bob):
    grant = started(keycard, cli_client)
    answer_device(bob, keycard.url, grant["user_code"])
    results: list[requests.Response] = []
    barrier = threading.Barrier(4)

    def race() -> None:
        barrier.wait()
        results.append(poll(keycard.url, cli_client.client_id, grant["device_code"]))

    threads = [threading.Thread(target=race) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r.status_code for r in results) == [200, 400, 400, 400]
    assert {r.json().get("error") for r in results if r.status_code == 400} == {"invalid_grant"}


# -- polling errors (SECURITY 23) -------------------------------------------------------------


def test_polling_too_fast_answers_slow_down_and_the_interval_grows(keycard, cli_client):
    grant = started(keycard, cli_client)
    records = keycard.services.devices
    assert error_of(poll(keycard.url, cli_client.client_id,
                         grant["device_code"])) == "authorization_pending"
    assert error_of(poll(keycard.url, cli_client.client_id, grant["device_code"])) == "slow_down"
    assert records.peek(grant["device_code"])["iv"] == "10"
    assert error_of(poll(keycard.url, cli_client.client_id, grant["device_code"])) == "slow_down"
    assert records.peek(grant["device_code"])["iv"] == "15"  # persisted, growing by 5 s


def test_the_poll_interval_is_configurable_and_slow_down_still_adds_five_seconds(make_keycard):
    keycard = make_keycard(SSO_DEVICE_POLL_INTERVAL="1")
    client = register_device_client(keycard)
    grant = started(keycard, client)
    assert grant["interval"] == 1
    records = keycard.services.devices
    assert records.peek(grant["device_code"])["iv"] == "1"
    assert error_of(poll(keycard.url, client.client_id,
                         grant["device_code"])) == "authorization_pending"
    # Polls back to back: one comes within the second (a pending answer means a busy
    # machine let a whole interval pass, and the next poll starts counting again).
    wait_until(lambda: error_of(poll(keycard.url, client.client_id,
                                     grant["device_code"])) == "slow_down", interval=0)
    assert records.peek(grant["device_code"])["iv"] == "6"  # RFC 8628 §3.5: +5 s


def test_denied_on_the_page_answers_access_denied(keycard, cli_client, bob):
    grant = started(keycard, cli_client)
    done = answer_device(bob, keycard.url, grant["user_code"], decision="deny")
    assert "Request denied" in bob.get(keycard.url + done.headers["Location"]).text
    assert error_of(poll(keycard.url, cli_client.client_id,
                         grant["device_code"])) == "access_denied"
    denied = events(keycard, "device.denied")
    assert denied and denied[0]["actor"] == "bob"


def test_expired_device_code_answers_expired_token(keycard, cli_client, bob, rdb):
    grant = started(keycard, cli_client)
    key = keycard.services.devices.key(grant["device_code"])
    assert rdb.pexpire(key, 1)
    wait_until(lambda: not rdb.exists(key))
    assert error_of(poll(keycard.url, cli_client.client_id,
                         grant["device_code"])) == "expired_token"
    # The page no longer accepts its user code either.
    page = enter_code(bob, keycard.url, grant["user_code"])
    assert page.status_code == 400 and 'role="alert"' in page.text


def test_unknown_device_code_and_another_clients_code_are_invalid_grant(keycard, cli_client):
    grant = started(keycard, cli_client)
    other = register_device_client(keycard, name="Other CLI")
    assert error_of(poll(keycard.url, cli_client.client_id, "x" * 43)) == "invalid_grant"
    assert error_of(poll(keycard.url, other.client_id, grant["device_code"])) == "invalid_grant"
    # ...and that did not touch the real client's request.
    assert error_of(poll(keycard.url, cli_client.client_id,
                         grant["device_code"])) == "authorization_pending"


# -- the verification page (SECURITY 22, 24) --------------------------------------------------


def test_signed_out_visitor_signs_in_first_and_comes_back_with_the_code(keycard, cli_client,
                                                                      http):
    grant = started(keycard, cli_client)
    response = http.get(grant["verification_uri_complete"], allow_redirects=False, timeout=10)
    assert response.status_code == 302
    target = urlsplit(response.headers["Location"])
    assert target.path == "/login"
    assert parse_qs(target.query)["next"] == [f"/device?user_code={grant['user_code']}"]
    upstream_page = http.get(keycard.url + response.headers["Location"], timeout=10)
    back = pick_upstream_user(http, upstream_page, "bob")
    assert urlsplit(back.url).path == "/device"
    assert form_with(back.text, "/device").fields["user_code"] == grant["user_code"]


def test_page_shows_the_client_and_scopes_and_needs_a_csrf_token(keycard, cli_client, bob):
    grant = started(keycard, cli_client, "openid email")
    page = enter_code(bob, keycard.url, grant["user_code"])
    assert page.status_code == 200
    assert "Deploy CLI" in page.text and grant["user_code"] in page.text
    assert SCOPE_WORDS["email"] in page.text and SCOPE_WORDS["groups"] not in page.text
    assert page.headers["X-Frame-Options"] == "DENY"
    assert page.headers["Referrer-Policy"] == "no-referrer"
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]

    form = form_with(page.text, "/device/decision")
    without_token = {k: v for k, v in form.fields.items() if k != "csrf_token"}
    forged = bob.post(keycard.url + form.action, data=dict(without_token, decision="approve"),
                      allow_redirects=False, timeout=10)
    assert forged.status_code == 403
    cross_site = bob.post(keycard.url + form.action, data=dict(form.fields, decision="approve"),
                          headers={"Origin": "https://evil.example"}, allow_redirects=False,
                          timeout=10)
    assert cross_site.status_code == 403
    assert error_of(poll(keycard.url, cli_client.client_id,
                         grant["device_code"])) == "authorization_pending"
    assert decide(bob, page).status_code == 303  # the real form still works


def test_wrong_codes_are_rate_limited_even_for_the_right_code(keycard, cli_client, bob):
    grant = started(keycard, cli_client)
    wrong = "BBBB-BBBB" if grant["user_code"] != "BBBB-BBBB" else "CCCC-CCCC"
    for _ in range(GUESS_LIMIT):
        page = enter_code(bob, keycard.url, wrong)
        assert page.status_code == 400 and "not valid" in page.text
    blocked = enter_code(bob, keycard.url, grant["user_code"])
    assert blocked.status_code == 429
    assert int(blocked.headers["Retry-After"]) > 0
    assert "Too many" in blocked.text


def test_finding_6_one_persons_wrong_codes_do_not_lock_out_another(keycard, cli_client, bob):
    """Behind the recommended proxy every person has the proxy's address: the guess limit
    is per person, so bob's five typos leave alice (same address) free to approve."""
    grant = started(keycard, cli_client)
    wrong = "BBBB-BBBB" if grant["user_code"] != "BBBB-BBBB" else "CCCC-CCCC"
    for _ in range(GUESS_LIMIT):
        assert enter_code(bob, keycard.url, wrong).status_code == 400
    assert enter_code(bob, keycard.url, grant["user_code"]).status_code == 429
    alice = requests.Session()
    sign_in(alice, keycard.url, "alice")  # the same 127.0.0.1, as behind one proxy
    confirm = enter_code(alice, keycard.url, grant["user_code"])
    assert confirm.status_code == 200, confirm.text[:300]
    assert decide(alice, confirm).status_code == 303
    alice.close()


# -- client policy ----------------------------------------------------------------------------


def test_client_without_the_device_grant_is_unauthorized_client(keycard):
    registry = keycard.services.clients
    client, secret = registry.create(name="Web app", redirect_uris=["http://127.0.0.1:9/cb"])
    auth = (client.client_id, secret)
    refused = start_device(keycard.url, client.client_id, auth=auth)
    assert error_of(refused) == "unauthorized_client"
    assert error_of(poll(keycard.url, client.client_id, "x" * 43,
                         auth=auth)) == "unauthorized_client"


def test_confidential_device_client_authenticates(keycard):
    client, secret = keycard.services.clients.create(
        name="Kiosk", grant_types=[DEVICE_GRANT])
    assert error_of(start_device(keycard.url, client.client_id,
                                 auth=(client.client_id, "wrong"))) == "invalid_client"
    grant = start_device(keycard.url, client.client_id, auth=(client.client_id, secret))
    assert grant.status_code == 200, grant.text


def test_scope_outside_the_clients_registration_is_invalid_scope(keycard):
    client = register_device_client(keycard, scopes=["openid"])
    assert error_of(start_device(keycard.url, client.client_id, "openid email")) == \
        "invalid_scope"
    assert error_of(start_device(keycard.url, client.client_id, "openid nonsense")) == \
        "invalid_scope"


def test_person_lacking_required_roles_is_refused_and_device_gets_access_denied(keycard, bob):
    client = register_device_client(keycard, name="Admin CLI", required_roles=["admin"])
    grant = started(keycard, client)
    page = enter_code(bob, keycard.url, grant["user_code"])
    assert page.status_code == 403
    assert "have access to Admin CLI" in page.text.replace("&#39;", "'")
    assert error_of(poll(keycard.url, client.client_id, grant["device_code"])) == "access_denied"
