"""Apache httpd + mod_auth_openidc as the relying party (issue #13 §3): sign-in through it,
claims and role checks, and offboarding reaching its session through back-channel logout."""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.relying_party.apache import ApacheRP, echo_app, running_apache
from tests.support import LiveServer, csrf_token, free_port, sign_in, wait_until

SECRET = "apache-journey-webhook-secret-0123456789"
USERS = {"alice": 1001, "bob": 1002, "dave": 1004}


class Setup:
    def __init__(self, keycard: Any, apache: ApacheRP) -> None:
        self.keycard = keycard
        self.apache = apache

    def browser(self, login: str) -> requests.Session:
        """A browser signed in at Keycard (through the development GitHub)."""
        http = requests.Session()
        http.trust_env = False
        sign_in(http, self.keycard.url, login)
        return http

    def open(self, http: requests.Session, path: str = "/protected/page") -> requests.Response:
        """Open a protected page; Apache sends the browser through Keycard and back."""
        return http.get(self.apache.url + path, timeout=15)

    def apache_session_alive(self, http: requests.Session) -> bool:
        """Apache still has a session: it serves the page instead of sending the browser
        to Keycard's authorization endpoint."""
        answer = http.get(self.apache.url + "/protected/page", allow_redirects=False,
                          timeout=15)
        if answer.status_code == 200:
            return True
        assert answer.status_code == 302, (answer.status_code, answer.text[:300])
        assert answer.headers["Location"].startswith(self.keycard.url + "/authorize")
        return False

    def deliver(self, event: str, payload: dict[str, Any], secret: str = SECRET) -> Any:
        body = json.dumps(payload).encode()
        signature = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        return requests.post(self.keycard.url + "/hooks/github", data=body, timeout=15, headers={
            "Content-Type": "application/json", "X-GitHub-Event": event,
            "X-GitHub-Delivery": str(uuid.uuid4()), "X-Hub-Signature-256": f"sha256={signature}"})


def removed(login: str) -> dict[str, Any]:
    return {"action": "member_removed", "organization": {"login": "acme", "id": 9001},
            "membership": {"user": {"login": login, "id": USERS[login]}}}


@pytest.fixture
def setup(make_keycard: Any) -> Iterator[Setup]:
    # Membership re-checks an hour apart: only the webhook can make offboarding fast.
    keycard = make_keycard(SSO_GITHUB_WEBHOOK_SECRET=SECRET, SSO_MEMBERSHIP_MAX_AGE="3600")
    keycard.services.rules.map("team", "acme/engineering", ("engineer",))
    port = free_port()
    redirect_uri = f"http://127.0.0.1:{port}/protected/redirect_uri"
    client, secret = keycard.services.clients.create(
        name="Apache app", redirect_uris=[redirect_uri], trusted=True,
        backchannel_logout_uri=redirect_uri + "?logout=backchannel",
        backchannel_logout_session_required=True)
    app = LiveServer(echo_app).start()
    try:
        with running_apache(port, keycard.url, client.client_id, str(secret),
                            app.port) as apache:
            yield Setup(keycard, apache)
    finally:
        app.stop()


def test_sign_in_through_apache_passes_the_claims_to_the_app(setup):
    http = setup.browser("bob")
    page = setup.open(http)
    assert page.status_code == 200, (page.status_code, page.text[:500], setup.apache.error_log())
    passed = page.json()["passed"]
    assert passed["REMOTE_USER"] == "bob"
    assert "engineer" in passed["OIDC_CLAIM_roles"].split(",")
    assert "acme:sre" in passed["OIDC_CLAIM_groups"].split(",")
    assert passed["OIDC_CLAIM_email"] == "bob@acme.test"


def test_require_claim_lets_engineers_in_and_keeps_others_out(setup):
    bob = setup.browser("bob")
    assert setup.open(bob, "/engineers/board").status_code == 200
    dave = setup.browser("dave")  # an acme member without a team
    assert setup.open(dave, "/protected/page").status_code == 200
    assert setup.open(dave, "/engineers/board").status_code in (401, 403)


def test_an_org_removal_webhook_ends_the_apache_session_within_seconds(setup, upstream):
    http = setup.browser("bob")
    assert setup.open(http).status_code == 200
    upstream.state.remove_user_from_org("acme", "bob")

    answer = setup.deliver("organization", removed("bob"))

    assert answer.json()["result"] == "offboarded", answer.text
    wait_until(lambda: not setup.apache_session_alive(http), timeout=10)
    assert "Sign in with GitHub" in http.get(setup.keycard.url + "/", timeout=5).text


def test_signing_out_at_keycard_signs_out_of_apache(setup):
    http = setup.browser("bob")
    assert setup.open(http).status_code == 200
    portal = http.get(setup.keycard.url + "/", timeout=5)
    http.post(setup.keycard.url + "/logout", data={"csrf_token": csrf_token(portal.text)},
              timeout=5)
    wait_until(lambda: not setup.apache_session_alive(http), timeout=10)


def test_a_team_removal_drops_the_role_at_keycard_within_seconds(setup, upstream):
    http = setup.browser("bob")
    assert setup.open(http, "/engineers/board").status_code == 200
    upstream.state.remove_team_member("acme", "sre", "bob")
    answer = setup.deliver("membership", {
        "action": "removed", "scope": "team", "member": {"login": "bob", "id": 1002},
        "team": {"slug": "sre", "name": "SRE", "id": 7003},
        "organization": {"login": "acme", "id": 9001}})
    assert answer.json()["result"] == "roles_updated", answer.text
    profile = setup.keycard.services.accounts.get("1002")
    assert "engineer" not in profile.roles
    [session] = setup.keycard.services.sessions.list_for_user("1002")
    assert session.login == "bob"


def test_a_forged_delivery_changes_nothing(setup, upstream):
    http = setup.browser("bob")
    assert setup.open(http).status_code == 200
    upstream.state.remove_user_from_org("acme", "bob")
    answer = setup.deliver("organization", removed("bob"), secret="not-the-secret-at-all-0000")
    assert answer.status_code == 401
    assert setup.apache_session_alive(http)
    assert "Bob Builder" in http.get(setup.keycard.url + "/", timeout=5).text
