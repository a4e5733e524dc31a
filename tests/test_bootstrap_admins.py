"""Issue #11, finding 2: admin by login is claimable once the login is renamed or freed.

``SSO_BOOTSTRAP_ADMINS`` entries are numeric GitHub ids or logins; a login entry is
pinned to the id that first signs in with it. ``@login`` rules store the numeric id.
On the development upstream a login is "freed" by renaming its account, then "claimed"
by a new account (another id) taking the old login.
"""

from __future__ import annotations

from typing import Any

import requests

from tests.support import sign_in

ALICE, BOB = "1001", "1002"


def claim_login(upstream: Any, login: str, old_id: int, new_id: int) -> None:
    """The holder of ``login`` renames their account; a newcomer (in acme) takes the login."""
    upstream.state.users[old_id].login = f"{login}-old"
    upstream.state.add_user(login, f"Not {login}", id=new_id,
                            public_email=f"{login}-new@example.com")
    upstream.state.add_org_member("acme", login)


def person(keycard: Any, login: str) -> requests.Session:
    browser = requests.Session()
    page = sign_in(browser, keycard.url, login)
    assert page.status_code == 200, page.text[:300]
    return browser


def roles(keycard: Any, user_id: str) -> list[str]:
    profile = keycard.services.accounts.get(user_id)
    assert profile is not None
    return profile.roles


def events(keycard: Any, name: str) -> list[dict[str, Any]]:
    return keycard.services.audit.query(event=name, limit=20)


def test_finding_2_a_bootstrap_login_stays_with_the_first_id_that_used_it(
        make_keycard, upstream):
    keycard = make_keycard(SSO_BOOTSTRAP_ADMINS="alice")
    person(keycard, "alice")
    assert roles(keycard, ALICE) == ["admin"]
    assert events(keycard, "admin.bootstrap_pinned")[0]["details"]["user_id"] == ALICE

    claim_login(upstream, "alice", 1001, 5555)
    impostor = person(keycard, "alice")
    assert "admin" not in roles(keycard, "5555")
    assert impostor.get(keycard.url + "/admin", allow_redirects=False).status_code == 403
    (refused,) = events(keycard, "admin.bootstrap_refused")
    assert refused["details"]["user_id"] == "5555" and refused["details"]["pinned_to"] == ALICE

    # The person the operator meant keeps the role under their new login.
    person(keycard, "alice-old")
    assert roles(keycard, ALICE) == ["admin"]
    explained = keycard.services.admin.explain_roles(keycard.services.accounts.get(ALICE))
    assert explained[0]["granted_by"] == [
        "bootstrap admin (SSO_BOOTSTRAP_ADMINS: login alice, pinned to id 1001)"]


def test_finding_2_the_pin_is_shared_by_every_instance_and_survives_restarts(
        make_keycard, upstream):
    first = make_keycard(SSO_BOOTSTRAP_ADMINS="alice")
    person(first, "alice")
    claim_login(upstream, "alice", 1001, 5555)
    second = make_keycard(SSO_BOOTSTRAP_ADMINS="alice")  # same Redis: another process
    person(second, "alice")
    assert "admin" not in roles(second, "5555")


def test_finding_2_numeric_entries_match_ids_only(make_keycard, upstream):
    keycard = make_keycard(SSO_BOOTSTRAP_ADMINS="1002")
    person(keycard, "alice")
    person(keycard, "bob")
    assert "admin" not in roles(keycard, ALICE) and roles(keycard, BOB) == ["admin"]
    upstream.state.users[1002].login = "robert"
    person(keycard, "robert")
    assert roles(keycard, BOB) == ["admin"]
    assert keycard.services.accounts.bootstrap_source(BOB) == (
        "bootstrap admin (SSO_BOOTSTRAP_ADMINS: id 1002)")


def test_finding_2_a_user_rule_does_not_follow_a_reused_login(make_keycard, upstream):
    keycard = make_keycard(SSO_BOOTSTRAP_ADMINS="alice")
    person(keycard, "bob")
    rule = keycard.services.admin.add_rule("@bob", "deployer", actor="alice").rule
    assert (rule.kind, rule.target, rule.label) == ("user", BOB, "bob")  # the id, not the login

    claim_login(upstream, "bob", 1002, 6666)
    person(keycard, "bob")
    assert "deployer" not in roles(keycard, "6666")
    person(keycard, "bob-old")
    assert "deployer" in roles(keycard, BOB)
