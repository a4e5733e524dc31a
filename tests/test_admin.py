"""The admin console (``/admin``) over HTTP: who may use it, CSRF, rules, people, sessions, audit.

Keycard, the development upstream and Redis are real; each person is a
``requests.Session`` that signed in through the upstream.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import pytest
import requests

from tests.support import csrf_token, forms, sign_in

PLACEHOLDERS = {"login": "bob", "short_id": "A" * 16, "client_id": "A" * 22}


def signed_in(keycard, login: str) -> requests.Session:
    http = requests.Session()
    page = sign_in(http, keycard.url, login)
    assert page.status_code == 200 and login in page.text
    return http


def admin_routes(keycard) -> list[tuple[str, str]]:
    """Every (method, path) the app serves under /admin, placeholders filled in."""
    out = []
    for rule in keycard.app.url_map.iter_rules():
        if not rule.rule.startswith("/admin"):
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", lambda m: PLACEHOLDERS[m.group(1)], rule.rule)
        out += [(method, path) for method in sorted(rule.methods - {"HEAD", "OPTIONS"})]
    return out


def post_form(http: requests.Session, keycard, page_path: str, to: str,
              **fields: str) -> requests.Response:
    """Submit the (first) form posting exactly to ``to`` on ``page_path``, as a browser would;
    a destructive action's GET form leads to its confirmation page, whose form is sent."""
    page = http.get(keycard.url + page_path)
    form = next(f for f in forms(page.text) if f.action == to)
    if form.method == "get":
        page = http.get(keycard.url + form.action, params=form.fields)
        assert 'data-testid="confirm"' in page.text, page.text
        form = next(f for f in forms(page.text) if f.action == to and f.method == "post")
    data = {**form.fields, **fields}
    return http.post(keycard.url + form.action, data=data, allow_redirects=False)


def rule_row(html: str, target: str) -> str:
    match = re.search(rf'<tr data-testid="rule-{re.escape(target)}">(.*?)</tr>', html, re.S)
    assert match, f"no row for rule {target}"
    return match.group(1)


# -- who may use the console -------------------------------------------------------------------


def test_console_pages_refuse_non_admins_and_send_anonymous_to_sign_in(keycard):
    routes = admin_routes(keycard)
    assert len(routes) >= 10  # the url_map really lists the console
    bob = signed_in(keycard, "bob")
    token = csrf_token(bob.get(keycard.url + "/").text)
    anonymous = requests.Session()
    for method, path in routes:
        data = {"csrf_token": token, "target": "acme", "roles": "x", "kind": "org"}
        response = bob.request(method, keycard.url + path, data=data, allow_redirects=False)
        assert response.status_code == 403, (method, path)
        assert "Not allowed" in response.text
        if method == "GET":
            response = anonymous.get(keycard.url + path, allow_redirects=False)
            assert response.status_code == 302, path
            location = urlsplit(response.headers["Location"])
            assert location.path == "/login" and "next=%2Fadmin" in location.query, path
    assert keycard.services.rules.all() == []


def test_bootstrap_admin_sees_the_admin_link_and_others_do_not(keycard):
    alice, bob = signed_in(keycard, "alice"), signed_in(keycard, "bob")
    assert 'href="/admin"' in alice.get(keycard.url + "/").text
    assert 'href="/admin"' not in bob.get(keycard.url + "/").text
    response = alice.get(keycard.url + "/admin", allow_redirects=False)
    assert response.status_code == 302 and response.headers["Location"].endswith("/admin/rules")


def test_forged_form_post_without_csrf_token_changes_nothing(keycard):
    alice = signed_in(keycard, "alice")
    response = alice.post(keycard.url + "/admin/rules",
                          data={"target": "acme", "roles": "owner"}, allow_redirects=False)
    assert response.status_code == 403
    assert keycard.services.rules.all() == []


def test_cross_site_origin_post_is_refused_even_with_a_token(keycard):
    alice = signed_in(keycard, "alice")
    token = csrf_token(alice.get(keycard.url + "/admin/rules").text)
    for headers in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
        response = alice.post(keycard.url + "/admin/rules", headers=headers,
                              data={"csrf_token": token, "target": "acme", "roles": "owner"},
                              allow_redirects=False)
        assert response.status_code == 403
    assert keycard.services.rules.all() == []


# -- rules ----------------------------------------------------------------------------------


def test_adding_a_team_rule_previews_and_shows_the_live_count(keycard):
    alice = signed_in(keycard, "alice")
    for login in ("bob", "carol", "dave"):
        signed_in(keycard, login)
    preview = post_form(alice, keycard, "/admin/rules", "/admin/rules", target="acme/platform",
                        roles="deployer", action="preview")
    assert preview.status_code == 200
    assert re.search(r'data-testid="preview-count">2<', preview.text)
    assert "alice, bob" in preview.text  # bob through acme/sre, a child team of platform
    assert keycard.services.rules.all() == []  # a preview changes nothing

    response = post_form(alice, keycard, "/admin/rules", "/admin/rules",
                         target="acme/platform", roles="deployer, viewer", action="add")
    assert response.status_code == 303
    page = alice.get(keycard.url + "/admin/rules")
    assert ("Rule saved: acme/platform → deployer, viewer; roles updated for 2 people now."
            in page.text)
    row = rule_row(page.text, "acme/platform")
    assert 'data-testid="matches">2<' in row and ">bob<" in row and ">carol<" not in row

    post_form(alice, keycard, "/admin/rules", "/admin/rules", target="acme", roles="staff")
    assert 'data-testid="matches">4<' in rule_row(alice.get(keycard.url + "/admin/rules").text,
                                                    "acme")
    event = keycard.services.audit.query(event="rules.changed")[-1]
    assert event["actor"] == "alice" and event["details"]["before"] is None
    assert event["details"]["after"] == {"team": "acme/platform",
                                         "roles": ["deployer", "viewer"]}


def test_user_rules_show_the_current_login_and_refuse_unknown_people(keycard):
    alice = signed_in(keycard, "alice")
    signed_in(keycard, "dave")
    response = post_form(alice, keycard, "/admin/rules", "/admin/rules", target="@nobody",
                         roles="deployer")
    assert response.status_code == 400  # not on GitHub either (item 14)
    assert re.search(r'id="target-error"[^>]*>GitHub has no user &#39;nobody&#39;',
                     response.text)
    response = post_form(alice, keycard, "/admin/rules", "/admin/rules", target="acme",
                         roles="Not A Role")
    assert response.status_code == 400 and "is invalid" in response.text
    assert 'value="acme"' in response.text  # what was typed is kept

    post_form(alice, keycard, "/admin/rules", "/admin/rules", target="@Dave", roles="oncall")
    [rule] = keycard.services.rules.all()
    assert (rule.kind, rule.target, rule.label) == ("user", "1004", "dave")
    assert 'data-testid="matches">1<' in rule_row(alice.get(keycard.url + "/admin/rules").text,
                                                    "@dave")


def test_removing_a_rule_and_apply_now_update_live_sessions(keycard):
    alice, bob = signed_in(keycard, "alice"), signed_in(keycard, "bob")
    post_form(alice, keycard, "/admin/rules", "/admin/rules", target="acme/sre", roles="pager")
    assert "pager" in bob.get(keycard.url + "/").text  # applied at once (issue #14 item 3)
    response = post_form(alice, keycard, "/admin/rules", "/admin/rules/apply")
    assert response.status_code == 303
    assert "Rules applied: 0 people" in alice.get(keycard.url + "/admin/rules").text

    response = post_form(alice, keycard, "/admin/rules", "/admin/rules/remove")
    assert response.status_code == 303
    assert keycard.services.rules.all() == []
    event = keycard.services.audit.query(event="rules.changed")[0]
    assert event["details"]["after"] is None and event["subject"] == "acme/sre"


# -- people and sessions --------------------------------------------------------------------


def test_people_page_lists_everyone_and_explains_roles(keycard):
    alice, bob = signed_in(keycard, "alice"), signed_in(keycard, "bob")
    post_form(alice, keycard, "/admin/rules", "/admin/rules", target="acme/platform",
              roles="deployer")
    people = alice.get(keycard.url + "/admin/people").text
    row = re.search(r'data-testid="person-bob">(.*?)</tr>', people, re.S).group(1)
    assert "Bob Builder" in row and "bob@acme.test" in row and "verified" in row
    assert "acme/platform" in row and 'data-testid="sessions">1<' in row  # #14 item 9
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", row)

    page = alice.get(keycard.url + "/admin/people/bob").text
    role = re.search(r'data-testid="role-deployer">(.*?)</li>', page, re.S).group(1)
    assert "team rule acme/platform" in role and "added at next apply" not in role
    admin_page = alice.get(keycard.url + "/admin/people/alice").text
    assert "bootstrap admin (SSO_BOOTSTRAP_ADMINS: login alice, pinned to id 1001)" in admin_page
    assert alice.get(keycard.url + "/admin/people/nobody").status_code == 404
    bob.close()


def test_ending_a_persons_sessions_from_the_console_signs_them_out(keycard):
    alice, bob = signed_in(keycard, "alice"), signed_in(keycard, "bob")
    second_bob = signed_in(keycard, "bob")
    page = alice.get(keycard.url + "/admin/sessions").text
    assert page.count(">bob</a>") == 2

    # One session, from the company-wide list.
    bob_sid = keycard.services.sessions.list_for_user("1002")[0].sid_hash[:16]
    response = post_form(alice, keycard, "/admin/sessions", f"/admin/sessions/{bob_sid}/end")
    assert response.status_code == 303 and response.headers["Location"] == "/admin/sessions"
    assert len(keycard.services.sessions.list_for_user("1002")) == 1

    # The rest, from bob's page.
    response = post_form(alice, keycard, "/admin/people/bob", "/admin/people/bob/sessions/end")
    assert response.status_code == 303 and response.headers["Location"] == "/admin/people/bob"
    assert "Ended 1 session of @bob." in alice.get(keycard.url + "/admin/people/bob").text
    for browser in (bob, second_bob):
        assert "Sign in with GitHub" in browser.get(keycard.url + "/").text
    assert "Alice Archer" in alice.get(keycard.url + "/").text  # the admin stays signed in
    events = keycard.services.audit.query(event="session")
    assert [e["event"] for e in events] == ["sessions.ended", "session.ended"]
    assert all(e["actor"] == "alice" and e["subject"] == "bob" for e in events)


# -- audit ----------------------------------------------------------------------------------


def _old_event(rdb, prefix: str, when: datetime, event: str, actor: str) -> None:
    ms = int(when.timestamp() * 1000)
    rdb.xadd(f"{prefix}audit", {"time": str(ms / 1000), "event": event, "actor": actor,
                                "subject": actor, "ip": "", "user_agent": "",
                                "details": json.dumps({})}, id=f"{ms}-0")


def audit_rows(http: requests.Session, keycard, **params: str) -> list[tuple[str, str]]:
    page = http.get(keycard.url + "/admin/audit", params=params)
    assert page.status_code == 200, page.text
    return re.findall(r'<code>([\w.]+)</code></td>\s*<td data-label="Actor">(\w*)</td>',
                      page.text)


def test_audit_view_filters_by_person_event_and_time(keycard, rdb, prefix):
    _old_event(rdb, prefix, datetime(2024, 1, 1, 10, tzinfo=UTC), "old.first", "erin")
    _old_event(rdb, prefix, datetime(2024, 1, 2, 23, 59, 59, 500_000, tzinfo=UTC),
               "old.second", "frank")
    alice = signed_in(keycard, "alice")
    signed_in(keycard, "bob")
    post_form(alice, keycard, "/admin/rules", "/admin/rules", target="acme", roles="staff")

    everything = audit_rows(alice, keycard)
    # newest first: the rule, then its roles applied to alice's and bob's live sessions
    assert everything[:3] == [("roles.applied", "alice")] * 2 + [("rules.changed", "alice")]
    assert everything[-2:] == [("old.second", "frank"), ("old.first", "erin")]
    assert audit_rows(alice, keycard, person="BOB") == [("roles.applied", "alice"),
                                                         ("signin.success", "bob")]
    assert {e for e, _ in audit_rows(alice, keycard, event="signin")} == {"signin.success"}
    assert audit_rows(alice, keycard, event="old", person="erin") == [("old.first", "erin")]
    # Days are whole UTC days; a date-time is exact; both bounds are inclusive.
    assert audit_rows(alice, keycard, since="2024-01-02", until="2024-01-02") == [
        ("old.second", "frank")]
    assert audit_rows(alice, keycard, until="2024-01-01T10:00:00Z") == [("old.first", "erin")]
    assert audit_rows(alice, keycard, since="2024-01-01T10:00:00.001", until="2024-01-03") == [
        ("old.second", "frank")]
    today = datetime.now(UTC).date()
    assert len(audit_rows(alice, keycard, since=today.isoformat())) == len(everything) - 2
    assert audit_rows(alice, keycard, since=(today + timedelta(days=1)).isoformat()) == []

    bad = alice.get(keycard.url + "/admin/audit", params={"since": "last tuesday"})
    assert bad.status_code == 400 and 'role="alert"' in bad.text


@pytest.mark.parametrize("limit", [1, 200])
def test_audit_query_pages_through_filtered_events_up_to_the_limit(keycard, limit):
    audit = keycard.services.audit
    for i in range(450):
        audit.record("noise" if i % 3 else "wanted", actor=f"p{i}")
    found = audit.query(event="wanted", limit=limit)
    assert len(found) == min(limit, 150)
    assert found[0]["actor"] == "p447"  # newest first
    assert all(e["event"] == "wanted" for e in found)
