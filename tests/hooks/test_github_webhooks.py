"""GitHub organisation webhooks (issue #13 §1): verified, at most once, acted on at once,
and never trusted for what they grant (membership is re-read from GitHub)."""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from typing import Any

import pytest
import requests

from tests.support import obtain_tokens, sign_in, wait_until

SECRET = "webhook-secret-for-tests-0123456789"
CB = "http://127.0.0.1:9/cb"
USERS = {"alice": 1001, "bob": 1002, "carol": 1003, "dave": 1004, "mallory": 1005}


@pytest.fixture
def keycard(make_keycard: Any) -> Any:
    return make_keycard(SSO_GITHUB_WEBHOOK_SECRET=SECRET, SSO_FORWARD_AUTH_DOMAINS="acme.test")


def deliver(keycard: Any, event: str, payload: dict[str, Any], *, delivery: str | None = None,
            secret: str = SECRET, signature: str | None = None,
            content_type: str = "application/json") -> requests.Response:
    """POST a delivery the way GitHub does: raw JSON body, HMAC-SHA256 signature header."""
    body = json.dumps(payload).encode()
    sig = signature if signature is not None else (
        "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest())
    headers = {"Content-Type": content_type, "X-GitHub-Event": event,
               "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
               "User-Agent": "GitHub-Hookshot/test"}
    if sig:
        headers["X-Hub-Signature-256"] = sig
    return requests.post(keycard.url + "/hooks/github", data=body, headers=headers, timeout=15)


def member_event(action: str, login: str, org: str = "acme") -> dict[str, Any]:
    return {"action": action,
            "membership": {"state": "active", "role": "member",
                           "user": {"login": login, "id": USERS[login], "type": "User"}},
            "organization": {"login": org, "id": 9001},
            "sender": {"login": "alice", "id": 1001}}


def team_membership_event(action: str, login: str, slug: str) -> dict[str, Any]:
    return {"action": action, "scope": "team",
            "member": {"login": login, "id": USERS[login]},
            "team": {"slug": slug, "name": slug.title(), "id": 7005},
            "organization": {"login": "acme", "id": 9001},
            "sender": {"login": "alice", "id": 1001}}


def trusted_client(keycard: Any) -> tuple[Any, str]:
    return keycard.services.clients.create(
        name="RP", redirect_uris=[CB], trusted=True,
        grant_types=["authorization_code", "refresh_token"])


def refresh(keycard: Any, client: Any, secret: str, token: str) -> requests.Response:
    return requests.post(keycard.url + "/token", auth=(client.client_id, secret), timeout=10,
                         data={"grant_type": "refresh_token", "refresh_token": token})


def roles_at_forward_auth(http: requests.Session, keycard: Any) -> set[str] | None:
    answer = http.get(keycard.url + "/auth/verify", allow_redirects=False, timeout=10,
                      headers={"X-Forwarded-Host": "app.acme.test", "X-Forwarded-Proto": "https",
                               "X-Forwarded-Uri": "/"})
    if answer.status_code != 200:
        return None
    return set(filter(None, answer.headers["X-Auth-Request-Roles"].split(",")))


def audit_events(keycard: Any, name: str) -> list[dict[str, Any]]:
    return [e for e in keycard.services.audit.recent(200) if e["event"] == name]


def test_no_secret_means_no_endpoint(make_keycard):
    keycard = make_keycard()
    assert deliver(keycard, "ping", {"zen": "hi"}).status_code == 404


def test_ping_answers_pong(keycard):
    answer = deliver(keycard, "ping", {"zen": "Keep it logically awesome.", "hook_id": 1})
    assert answer.status_code == 200 and answer.json()["result"] == "pong"


@pytest.mark.parametrize("signature", ["", "sha256=" + "0" * 64, "sha1=abc", "sha256=zz"])
def test_unsigned_or_badly_signed_deliveries_are_refused_and_change_nothing(
        keycard, upstream, http, signature):
    sign_in(http, keycard.url, "bob")
    upstream.state.remove_user_from_org("acme", "bob")
    answer = deliver(keycard, "organization", member_event("member_removed", "bob"),
                     signature=signature)
    assert answer.status_code == 401 and answer.json()["error"] == "invalid_signature"
    assert roles_at_forward_auth(http, keycard) is not None  # still signed in
    assert keycard.services.hooks.recent() == []


def test_a_delivery_signed_with_another_secret_is_refused(keycard, upstream, http):
    sign_in(http, keycard.url, "bob")
    upstream.state.remove_user_from_org("acme", "bob")
    answer = deliver(keycard, "organization", member_event("member_removed", "bob"),
                     secret="some-other-secret-0123456789abcdef")
    assert answer.status_code == 401
    assert roles_at_forward_auth(http, keycard) is not None


def test_member_removed_ends_sessions_and_tokens_at_once(keycard, upstream, http):
    client, secret = trusted_client(keycard)
    sign_in(http, keycard.url, "bob")
    tokens = obtain_tokens(http, keycard.url, client.client_id, secret)
    upstream.state.remove_user_from_org("acme", "bob")
    delivery = str(uuid.uuid4())

    answer = deliver(keycard, "organization", member_event("member_removed", "bob"),
                     delivery=delivery)

    assert answer.status_code == 200, answer.text
    assert answer.json() == {"result": "offboarded", "person": "bob",
                             "detail": "sessions and tokens ended"}
    assert roles_at_forward_auth(http, keycard) is None  # the browser session is gone
    assert refresh(keycard, client, secret, tokens["refresh_token"]).json()["error"] == \
        "invalid_grant"
    introspected = requests.post(keycard.url + "/introspect", auth=(client.client_id, secret),
                                 data={"token": tokens["access_token"]}, timeout=10).json()
    assert introspected == {"active": False}
    [offboarded] = audit_events(keycard, "person.offboarded")
    assert offboarded["subject"] == "bob"
    assert offboarded["details"]["delivery"] == delivery
    [ended] = audit_events(keycard, "access.ended")
    assert ended["details"]["delivery"] == delivery and ended["details"]["reason"] == "not_a_member"
    [recent] = keycard.services.hooks.recent()
    assert (recent["delivery"], recent["event"], recent["action"], recent["result"]) == (
        delivery, "organization", "member_removed", "offboarded")


def test_a_replayed_delivery_does_nothing_twice(keycard, upstream, http):
    sign_in(http, keycard.url, "bob")
    delivery = str(uuid.uuid4())
    # Signed, but GitHub still lists bob in acme: re-read, nothing ends.
    first = deliver(keycard, "organization", member_event("member_removed", "bob"),
                    delivery=delivery)
    assert first.json()["result"] == "unchanged"
    upstream.state.remove_user_from_org("acme", "bob")
    again = deliver(keycard, "organization", member_event("member_removed", "bob"),
                    delivery=delivery)
    assert again.status_code == 200 and again.json()["result"] == "duplicate"
    assert roles_at_forward_auth(http, keycard) is not None  # the replay acted on nothing
    assert len(keycard.services.hooks.recent()) == 1


def test_a_signed_payload_cannot_grant_what_github_does_not_say(keycard, http):
    keycard.services.rules.map("team", "acme/security", ("security",))
    sign_in(http, keycard.url, "bob")
    # The payload claims bob joined acme/security; GitHub says he did not.
    answer = deliver(keycard, "membership", team_membership_event("added", "bob", "security"))
    assert answer.status_code == 200 and answer.json()["result"] == "unchanged"
    assert "security" not in (roles_at_forward_auth(http, keycard) or set())


def test_team_membership_added_gives_the_new_role_to_the_next_token_and_forward_auth(
        keycard, upstream, http):
    keycard.services.rules.map("team", "acme/security", ("security",))
    client, secret = trusted_client(keycard)
    sign_in(http, keycard.url, "bob")
    tokens = obtain_tokens(http, keycard.url, client.client_id, secret)
    assert "security" not in roles_at_forward_auth(http, keycard)
    upstream.state.add_team_member("acme", "security", "bob")

    answer = deliver(keycard, "membership", team_membership_event("added", "bob", "security"))

    assert answer.json()["result"] == "roles_updated", answer.text
    assert "security" in roles_at_forward_auth(http, keycard)
    fresh = refresh(keycard, client, secret, tokens["refresh_token"])
    assert fresh.status_code == 200
    claims = requests.get(keycard.url + "/userinfo", timeout=10, headers={
        "Authorization": f"Bearer {fresh.json()['access_token']}"}).json()
    assert "security" in claims["roles"]


def test_a_deleted_team_takes_its_role_from_live_sessions(keycard, upstream, http):
    keycard.services.rules.map("team", "acme/sre", ("oncall",))
    sign_in(http, keycard.url, "bob")
    assert "oncall" in roles_at_forward_auth(http, keycard)
    upstream.state.remove_team_member("acme", "sre", "bob")  # as GitHub does on deletion
    payload = {"action": "deleted", "team": {"slug": "sre", "name": "SRE", "id": 7003},
               "organization": {"login": "acme", "id": 9001}}
    answer = deliver(keycard, "team", payload)
    assert answer.status_code == 200 and answer.json()["result"] == "roles_updated"
    assert "1 changed roles" in answer.json()["detail"]
    assert "oncall" not in roles_at_forward_auth(http, keycard)


def test_a_renamed_team_is_matched_by_its_old_name(keycard, upstream, http):
    keycard.services.rules.map("team", "acme/security", ("security",))
    sign_in(http, keycard.url, "alice")  # in acme/security
    upstream.state.remove_team_member("acme", "security", "alice")  # stands in for the rename
    payload = {"action": "edited", "changes": {"name": {"from": "Security"}},
               "team": {"slug": "appsec", "name": "AppSec", "id": 7005},
               "organization": {"login": "acme", "id": 9001}}
    answer = deliver(keycard, "team", payload)
    assert answer.json()["result"] == "roles_updated", answer.text
    assert "security" not in roles_at_forward_auth(http, keycard)


def test_member_removed_while_github_is_down_fails_closed(keycard, upstream, http):
    sign_in(http, keycard.url, "bob")
    upstream.state.add_fault("/api/v3/user", "server_error", count=-1)
    answer = deliver(keycard, "organization", member_event("member_removed", "bob"))
    assert answer.json()["result"] == "offboarded", answer.text
    assert roles_at_forward_auth(http, keycard) is None
    [ended] = audit_events(keycard, "access.ended")
    assert ended["details"]["reason"] == "membership_unverifiable"


def test_team_change_while_github_is_down_keeps_the_session(keycard, upstream, http):
    sign_in(http, keycard.url, "bob")
    upstream.state.add_fault("/api/v3/user", "server_error", count=-1)
    answer = deliver(keycard, "membership", team_membership_event("removed", "bob", "sre"))
    assert answer.json()["result"] == "postponed", answer.text
    upstream.state.clear_faults()
    assert roles_at_forward_auth(http, keycard) is not None


def test_events_for_other_orgs_or_unused_kinds_are_ignored(keycard, http):
    sign_in(http, keycard.url, "bob")
    other = member_event("member_removed", "bob", org="globex")
    assert deliver(keycard, "organization", other).status_code == 204
    assert deliver(keycard, "push", {"ref": "refs/heads/main"}).status_code == 204
    renamed = {**member_event("member_invited", "bob")}
    assert deliver(keycard, "organization", renamed).status_code == 204
    assert roles_at_forward_auth(http, keycard) is not None


def test_unknown_person_is_answered_without_acting(keycard):
    answer = deliver(keycard, "organization", member_event("member_removed", "dave"))
    assert answer.json()["result"] == "unknown_person"


@pytest.mark.parametrize(("body", "headers", "status"), [
    (b"{not json", {}, 400),
    (b"[1, 2]", {}, 400),
    (json.dumps({"action": "member_removed", "organization": {"login": "acme"},
                 "membership": {"user": {"login": "bob", "id": "1002"}}}).encode(), {}, 400),
    (b"{}", {"X-GitHub-Delivery": "../../etc"}, 400),
    (b"{}", {"X-GitHub-Event": ""}, 400),
    (b"payload=%7B%7D", {"Content-Type": "application/x-www-form-urlencoded"}, 415),
    (b"{" + b" " * (300 * 1024) + b"}", {}, 413),
])
def test_malformed_deliveries_get_a_clear_4xx(keycard, body, headers, status):
    sent = {"Content-Type": "application/json", "X-GitHub-Event": "organization",
            "X-GitHub-Delivery": str(uuid.uuid4()),
            "X-Hub-Signature-256": "sha256=" + hmac.new(SECRET.encode(), body,
                                                        hashlib.sha256).hexdigest(), **headers}
    answer = requests.post(keycard.url + "/hooks/github", data=body, headers=sent, timeout=10)
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]


def test_admins_see_deliveries_in_the_console_and_the_cli(keycard, upstream, http):
    sign_in(http, keycard.url, "bob")
    upstream.state.remove_user_from_org("acme", "bob")
    deliver(keycard, "organization", member_event("member_removed", "bob"))
    admin = requests.Session()
    sign_in(admin, keycard.url, "alice")
    page = admin.get(keycard.url + "/admin/webhooks", timeout=10)
    assert page.status_code == 200
    assert "organization.member_removed" in page.text and "offboarded" in page.text
    result = keycard.app.test_cli_runner().invoke(args=["webhooks", "recent"])
    assert result.exit_code == 0, result.output
    assert "organization.member_removed" in result.output and "bob" in result.output
    assert "offboarded: sessions and tokens ended" in result.output


def test_the_secret_must_be_long(make_keycard):
    from sso.config import ConfigError, load_settings
    with pytest.raises(ConfigError, match="SSO_GITHUB_WEBHOOK_SECRET"):
        load_settings({"SSO_GITHUB_WEBHOOK_SECRET": "short"})


def test_removal_at_the_upstream_reaches_keycard_through_its_webhook(keycard, upstream, http):
    """End to end: the development GitHub delivers the signed webhook itself."""
    upstream.state.webhooks.subscribe("acme", keycard.url + "/hooks/github", SECRET)
    client, secret = trusted_client(keycard)
    sign_in(http, keycard.url, "bob")
    tokens = obtain_tokens(http, keycard.url, client.client_id, secret)
    upstream.state.remove_user_from_org("acme", "bob")
    wait_until(lambda: roles_at_forward_auth(http, keycard) is None, timeout=10)
    assert refresh(keycard, client, secret, tokens["refresh_token"]).status_code == 400
    assert [(d["event"], d["action"], d["status"]) for d in upstream.state.webhooks.sent] == [
        ("organization", "member_removed", 200)]


def test_the_dev_upstreams_members_page_removes_team_memberships_with_a_webhook(
        keycard, upstream, http):
    upstream.state.webhooks.subscribe("acme", keycard.url + "/hooks/github", SECRET)
    keycard.services.rules.map("team", "acme/sre", ("oncall",))
    sign_in(http, keycard.url, "bob")
    assert "oncall" in roles_at_forward_auth(http, keycard)
    page = requests.get(upstream.url + "/_dev/members", timeout=5)
    assert "Remove from team acme/sre" in page.text
    removed = requests.post(upstream.url + "/_dev/members", timeout=5,
                            data={"team": "acme/sre", "login": "bob", "action": "remove-team"})
    assert "Removed bob from team acme/sre." in removed.text
    wait_until(lambda: "oncall" not in roles_at_forward_auth(http, keycard), timeout=10)
    assert [(d["event"], d["action"]) for d in upstream.state.webhooks.sent] == [
        ("membership", "removed")]
