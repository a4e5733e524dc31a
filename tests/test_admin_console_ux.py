"""Issue #14, items 4-6 over HTTP: confirmation steps, "this browser", the audit log's
names, details and paging, people and sessions search, paging, last activity and devices.

Keycard, the development upstream and Redis are real; each person is a
``requests.Session`` that signed in through the upstream.
"""

from __future__ import annotations

import re
import time

import pytest
import requests

from sso.admin import service
from sso.sessions import CREATED, SEP, SessionStore
from sso.useragent import describe
from tests.support import forms, sign_in
from tests.test_admin import post_form, signed_in

FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0"
IPHONE = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
          "(KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1")


def confirm_form(html: str):
    """The confirmation page's form (not the top bar's "Sign out")."""
    return next(f for f in forms(html) if f.method == "post" and f.action != "/logout")


def row(html: str, testid: str) -> str:
    match = re.search(rf'<tr data-testid="{re.escape(testid)}"[^>]*>(.*?)</tr>', html, re.S)
    assert match, f"no row {testid}"
    return match.group(1)


# -- item 4: destructive actions ask first; this browser is marked ------------------------------


def test_item_4_removing_a_rule_asks_first_without_javascript(keycard):
    alice, _ = signed_in(keycard, "alice"), signed_in(keycard, "bob")
    post_form(alice, keycard, "/admin/rules", "/admin/rules", target="acme/sre", roles="pager")
    rules = alice.get(keycard.url + "/admin/rules").text
    remove = next(f for f in forms(rules) if f.action == "/admin/rules/remove")
    assert remove.method == "get" and "csrf_token" not in remove.fields  # only leads to a page

    page = alice.get(keycard.url + "/admin/rules/remove", params=remove.fields)
    assert page.status_code == 200
    assert "Remove the rule acme/sre → pager?" in page.text
    assert "It matches 1 person who have signed in: bob." in page.text
    assert 'href="/admin/rules">Cancel</a>' in page.text
    assert len(keycard.services.rules.all()) == 1  # looking is harmless

    confirm = confirm_form(page.text)
    assert confirm.action == "/admin/rules/remove" and confirm.fields["csrf_token"]
    done = alice.post(keycard.url + confirm.action, data=confirm.fields, allow_redirects=False)
    assert done.status_code == 303 and keycard.services.rules.all() == []
    gone = alice.get(keycard.url + "/admin/rules/remove", params=remove.fields)
    assert gone.status_code == 404 and "That rule no longer exists." in gone.text


def test_item_4_ending_sessions_asks_first_and_marks_this_browser(keycard):
    alice, _ = signed_in(keycard, "alice"), signed_in(keycard, "bob")
    mine = keycard.services.sessions.list_for_user("1001")[0].sid_hash[:16]
    bobs = keycard.services.sessions.list_for_user("1002")[0].sid_hash[:16]
    page = alice.get(keycard.url + "/admin/sessions").text
    assert 'data-testid="this-browser">this browser<' in row(page, f"session-{mine}")
    assert "this-browser" not in row(page, f"session-{bobs}")
    assert 'data-testid="this-browser"' in alice.get(keycard.url + "/admin/people/alice").text
    assert not [f for f in forms(page) if f.method == "post" and "/end" in f.action]

    one = alice.get(keycard.url + f"/admin/sessions/{bobs}/end", params={"next": "/admin/sessions"})
    assert "End this session of @bob?" in one.text and "confirm-warning" not in one.text
    everyone = alice.get(keycard.url + "/admin/people/bob/sessions/end")
    assert "End the 1 session of @bob?" in everyone.text
    assert len(keycard.services.sessions.list_for_user("1002")) == 1  # nothing ended yet

    own = alice.get(keycard.url + f"/admin/sessions/{mine}/end").text
    assert "This is this browser&#39;s session: you will be signed out." in own
    assert "This includes this browser" in alice.get(
        keycard.url + "/admin/people/alice/sessions/end").text
    confirm = confirm_form(one.text)
    assert confirm.fields["next"] == "/admin/sessions"
    alice.post(keycard.url + confirm.action, data=confirm.fields)
    assert keycard.services.sessions.list_for_user("1002") == []
    assert alice.get(keycard.url + f"/admin/sessions/{bobs}/end").status_code == 404


def test_item_4_confirmation_next_stays_on_this_site(keycard):
    alice = signed_in(keycard, "alice")
    page = alice.get(keycard.url + "/admin/people/alice/sessions/end",
                     params={"next": "https://evil.test/x"}).text
    confirm = confirm_form(page)
    assert confirm.fields["next"] == "/admin/people/alice"
    assert 'href="https://evil.test' not in page


# -- item 5: the audit log ---------------------------------------------------------------------


def test_item_5_refused_sign_in_names_the_github_login(keycard):
    signed_in(keycard, "alice")
    outsider = requests.Session()
    refused = sign_in(outsider, keycard.url, "mallory")
    assert refused.status_code == 403
    event = keycard.services.audit.query(event="signin.refused")[0]
    assert event["subject"] == "mallory"

    alice = signed_in(keycard, "alice")
    page = alice.get(keycard.url + "/admin/audit", params={"person": "mallory"}).text
    refusal = row(page, "event-signin.refused")
    assert re.search(r'data-testid="subject">mallory<', refusal)


def test_item_5_apps_by_name_details_as_pairs_and_app_filter(keycard):
    grafana, _ = keycard.services.clients.create(name="Grafana", redirect_uris=[
        "https://grafana.acme.test/cb"])
    wiki, _ = keycard.services.clients.create(name="Wiki", redirect_uris=[
        "https://wiki.acme.test/cb"])
    audit = keycard.services.audit
    audit.record("oauth.consent_revoked", actor="bob", subject="bob", client=grafana.client_id,
                 token_grants=2, scopes=["openid", "roles"])
    audit.record("oauth.consent_revoked", actor="dave", subject="dave", client=wiki.client_id)
    audit.record("client.secret_rotated", actor="alice", subject=grafana.client_id,
                 revoke_tokens=False)
    alice = signed_in(keycard, "alice")
    page = alice.get(keycard.url + "/admin/audit").text
    consent = row(page, "event-oauth.consent_revoked")  # the newest of the two: dave's
    assert f'<abbr title="client id {wiki.client_id}">Wiki</abbr>' in consent
    rotated = row(page, "event-client.secret_rotated")
    assert f'<abbr title="client id {grafana.client_id}">Grafana</abbr>' in rotated
    assert "<dt>revoke_tokens</dt><dd>no</dd>" in rotated
    assert '{"' not in page and "=" not in re.sub(r"<[^>]+>", "", consent)  # no JSON, no k=v
    assert f'<option value="{grafana.client_id}">Grafana</option>' in page

    only = alice.get(keycard.url + "/admin/audit", params={"app": grafana.client_id}).text
    events = re.findall(r'<tr data-testid="event-([\w.]+)"', only)
    assert events == ["client.secret_rotated", "oauth.consent_revoked"]
    assert "<dt>token_grants</dt><dd>2</dd>" in only and "<dd>openid, roles</dd>" in only


def test_item_5_audit_pages_beyond_200_with_an_older_link(keycard):
    audit = keycard.services.audit
    for i in range(450):
        audit.record("bulk.event", actor=f"p{i}")
    alice = signed_in(keycard, "alice")
    seen: list[str] = []
    url: str | None = keycard.url + "/admin/audit?event=bulk"
    pages = 0
    while url:
        page = alice.get(url).text
        pages += 1
        seen += re.findall(r'<td data-label="Actor">(p\d+)</td>', page)
        older = re.search(r'data-testid="older" href="([^"]+)"', page)
        url = keycard.url + older.group(1).replace("&amp;", "&") if older else None
        assert pages <= 3
    assert pages == 3 and seen == [f"p{i}" for i in range(449, -1, -1)]
    bad = alice.get(keycard.url + "/admin/audit", params={"before": "yesterday"})
    assert bad.status_code == 400


def test_item_5_date_filters_are_date_pickers(keycard):
    alice = signed_in(keycard, "alice")
    page = alice.get(keycard.url + "/admin/audit", params={"since": "2024-01-02"}).text
    assert '<input type="date" id="since" name="since" value="2024-01-02">' in page
    assert '<input type="date" id="until" name="until" value="">' in page
    assert '<select id="app" name="app">' in page and 'list="event-names"' in page


# -- item 6: people and sessions lists ---------------------------------------------------------


def test_item_6_people_search_and_paging(keycard, monkeypatch):
    for login in ("alice", "bob", "dave"):
        signed_in(keycard, login)
    alice = signed_in(keycard, "alice")
    found = alice.get(keycard.url + "/admin/people", params={"q": "builder"}).text
    assert re.findall(r'data-testid="person-(\w+)"', found) == ["bob"]
    assert alice.get(keycard.url + "/admin/people", params={"q": "acme:sre bob"}).text.count(
        'data-testid="person-') == 1
    assert "Nobody matches" in alice.get(keycard.url + "/admin/people", params={"q": "zz"}).text

    monkeypatch.setattr(service, "PAGE_SIZE", 2)
    first = alice.get(keycard.url + "/admin/people").text
    assert re.findall(r'data-testid="person-(\w+)"', first) == ["alice", "dave"]
    assert "Page 1 of 2 · 3 in all" in first
    second = alice.get(keycard.url + "/admin/people", params={"page": "2"}).text
    assert re.findall(r'data-testid="person-(\w+)"', second) == ["bob"]
    assert 'rel="prev" href="/admin/people?page=1"' in second


def test_item_6_sessions_show_device_last_active_and_search(keycard, monkeypatch):
    alice = signed_in(keycard, "alice")
    bob = requests.Session()
    bob.headers["User-Agent"] = FIREFOX
    sign_in(bob, keycard.url, "bob")
    page = alice.get(keycard.url + "/admin/sessions").text
    bobs = keycard.services.sessions.list_for_user("1002")[0]
    bob_row = row(page, f"session-{bobs.sid_hash[:16]}")
    assert f'<span title="{FIREFOX}" data-testid="device">Firefox 127 on Linux</span>' in bob_row
    assert re.search(r'data-testid="last-active">\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC<', bob_row)

    found = alice.get(keycard.url + "/admin/sessions", params={"q": "firefox"}).text
    assert re.findall(r'<tr data-testid="session-([\w-]+)"', found) == [bobs.sid_hash[:16]]
    assert "No session matches" in alice.get(keycard.url + "/admin/sessions",
                                             params={"q": "nokia"}).text
    monkeypatch.setattr(service, "PAGE_SIZE", 1)
    paged = alice.get(keycard.url + "/admin/sessions").text
    assert paged.count('<tr data-testid="session-') == 1 and "Page 1 of 2" in paged


def test_item_6_last_active_is_read_off_the_idle_ttl(keycard):
    sessions: SessionStore = keycard.services.sessions
    bob = signed_in(keycard, "bob")
    info = sessions.list_for_user("1002")[0]
    assert abs(info.last_active - time.time()) <= 2  # just signed in
    # As if bob signed in an hour ago and his last request was 600 s ago: the TTL that
    # request set has run down by 600 s.
    key, redis = keycard.services.store.keys.session(info.sid_hash), keycard.services.store.redis
    fields = redis.get(key).split(SEP)
    fields[CREATED] = str(int(time.time()) - 3600)
    redis.set(key, SEP.join(fields), keepttl=True)
    redis.expire(key, sessions.idle - 600)
    assert abs(sessions.list_for_user("1002")[0].last_active - (time.time() - 600)) <= 2
    bob.get(keycard.url + "/")  # a request slides the TTL: active now
    assert abs(sessions.list_for_user("1002")[0].last_active - time.time()) <= 2
    api = signed_in(keycard, "alice").get(keycard.url + "/api/admin/sessions").json()
    assert all(abs(s["last_active"] - time.time()) <= 2 for s in api["sessions"])


def test_item_6_last_active_near_the_absolute_expiry_is_the_earliest_possible(keycard):
    sessions: SessionStore = keycard.services.sessions
    now, idle = 1_000_000, sessions.idle
    created, absolute = now - 5 * idle, now + idle // 2  # the TTL is capped by the absolute
    assert sessions.last_active(now, idle // 2, created, absolute) == absolute - idle
    assert sessions.last_active(now, idle - 60, created, now + 3 * idle) == now - 60
    assert sessions.last_active(now, idle, now, now + 3 * idle) == now


@pytest.mark.parametrize(("agent", "device"), [
    (FIREFOX, "Firefox 127 on Linux"),
    (IPHONE, "Safari 17 on iOS 17"),
    ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
     "Chrome/126.0.0.0 Safari/537.36", "Chrome 126 on macOS"),
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
     "Chrome/126.0.0.0 Safari/537.36 Edg/126.0.0.0", "Edge 126 on Windows"),
    ("Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
     "Chrome/126.0.6478.122 Mobile Safari/537.36", "Chrome 126 on Android"),
    ("curl/8.5.0", "curl 8"),
    ("", "Unknown device"),
    ("something odd", "Unknown device"),
])
def test_item_6_devices_are_named_from_the_user_agent(agent, device):
    assert describe(agent) == device


def test_item_6_paginate_clamps_bad_page_numbers():
    rows = list(range(5))
    assert service.paginate(rows, "2", 2).items == [2, 3]
    assert service.paginate(rows, "99", 2).number == 3
    assert service.paginate(rows, "x", 2).number == 1
    assert service.paginate([], None, 2) == service.Page([], 1, 1, 0)


def test_item_6_long_user_agents_are_kept_whole_enough_to_name_the_browser(keycard):
    edge = ("Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/126.0.6478.122 Mobile Safari/537.36 EdgA/126.0.2592.80")
    assert len(edge) > 120 and len(IPHONE) > 120
    for agent in (edge, IPHONE):
        http = requests.Session()
        http.headers["User-Agent"] = agent
        sign_in(http, keycard.url, "bob")
    devices = {describe(s.user_agent) for s in keycard.services.sessions.list_for_user("1002")}
    assert devices == {"Edge Mobile 126 on Android", "Safari 17 on iOS 17"}


def test_item_5_admin_api_pages_the_audit_trail_and_filters_by_app(keycard):
    grafana, _ = keycard.services.clients.create(name="Grafana", redirect_uris=[
        "https://grafana.acme.test/cb"])
    audit = keycard.services.audit
    for i in range(5):
        audit.record("oauth.token_revoked", client=grafana.client_id if i % 2 else "other",
                     kind="refresh_token", actor=f"p{i}")
    alice = signed_in(keycard, "alice")
    api = keycard.url + "/api/admin/audit"
    first = alice.get(api, params={"event": "oauth", "limit": 2}).json()["events"]
    assert [e["actor"] for e in first] == ["p4", "p3"]
    older = alice.get(api, params={"event": "oauth", "limit": 2, "before": first[-1]["id"]})
    assert [e["actor"] for e in older.json()["events"]] == ["p2", "p1"]
    app = alice.get(api, params={"app": grafana.client_id}).json()["events"]
    assert [e["actor"] for e in app] == ["p3", "p1"]
    bad = alice.get(api, params={"before": "x"})
    assert bad.status_code == 400 and "audit event id" in bad.json()["error_description"]
