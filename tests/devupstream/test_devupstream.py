"""Tests of the GitHub-compatible development upstream, driven over real HTTP.

The server runs in a background thread (threaded WSGI, like ``sso dev``) and is spoken
to with ``requests`` so that headers, redirects and encodings are exercised exactly as
Keycard's GitHub connector will see them.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from werkzeug.serving import make_server

from sso.devupstream import UpstreamState, create_upstream_app, load_demo_state

CLIENT_ID, CLIENT_SECRET = "keycard-dev", "keycard-dev-secret"
REDIRECT = "http://127.0.0.1:9/callback"
JSON = {"Accept": "application/json"}


@dataclass
class Upstream:
    state: UpstreamState
    url: str
    http: requests.Session

    def api(self, path: str, token: str | None, **kwargs: object) -> requests.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return self.http.get(f"{self.url}/api/v3{path}", headers=headers, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    state = load_demo_state()
    server = make_server("127.0.0.1", 0, create_upstream_app(state), threaded=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    session = requests.Session()
    try:
        yield Upstream(state, f"http://127.0.0.1:{server.server_port}", session)
    finally:
        session.close()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


class _FormParser(HTMLParser):
    """Collects hidden inputs and the user buttons of the authorize page."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden: dict[str, str] = {}
        self.buttons: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = dict(attrs)
        if tag == "input" and attr.get("type") == "hidden":
            self.hidden[attr["name"] or ""] = attr.get("value") or ""
        if tag == "button":
            self.buttons.append(attr)


def _pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _authorize(up: Upstream, login: str, **params: str) -> dict[str, list[str]]:
    """Walk the picker page and return the query of the redirect back to the client."""
    query = {"client_id": CLIENT_ID, "redirect_uri": REDIRECT, "state": "st8"} | params
    page = up.http.get(f"{up.url}/login/oauth/authorize", params=query)
    assert page.status_code == 200
    parser = _FormParser()
    parser.feed(page.text)
    assert parser.hidden == query
    resp = up.http.post(
        f"{up.url}/login/oauth/authorize",
        data=parser.hidden | {"login": login},
        allow_redirects=False,
    )
    assert resp.status_code == 302
    location = resp.headers["Location"]
    assert location.startswith(REDIRECT + "?")
    return parse_qs(urlsplit(location).query)


def _token(up: Upstream, login: str, scope: str = "read:org user:email") -> str:
    code = _authorize(up, login, scope=scope)["code"][0]
    body = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "code": code}
    resp = up.http.post(f"{up.url}/login/oauth/access_token", data=body, headers=JSON)
    token: str = resp.json()["access_token"]
    return token


def test_full_code_flow_with_pkce_s256(upstream: Upstream) -> None:
    verifier, challenge = _pkce()
    page = upstream.http.get(
        f"{upstream.url}/login/oauth/authorize",
        params={"client_id": CLIENT_ID, "redirect_uri": REDIRECT, "login": "bob"},
    )
    assert "Sign in to GitHub (development upstream)" in page.text
    assert "Continue as <strong>alice</strong>" in page.text
    assert 'href="/static/devupstream.css"' in page.text and "<style" not in page.text
    assert "script-src" not in page.headers["Content-Security-Policy"]
    parser = _FormParser()
    parser.feed(page.text)
    selected = [b["value"] for b in parser.buttons if "selected" in (b.get("class") or "")]
    assert selected == ["bob"] and "login" not in parser.hidden
    assert upstream.http.get(f"{upstream.url}/static/devupstream.css").status_code == 200

    query = _authorize(
        upstream,
        "alice",
        scope="read:org user:email",
        code_challenge=challenge,
        code_challenge_method="S256",
    )
    assert query["state"] == ["st8"]
    form = {
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "code": query["code"][0],
        "redirect_uri": REDIRECT,
        "code_verifier": verifier,
    }
    resp = upstream.http.post(f"{upstream.url}/login/oauth/access_token", data=form, headers=JSON)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("application/json")
    token = resp.json()
    assert token["access_token"].startswith("gho_")
    assert token["token_type"] == "bearer" and token["scope"] == "read:org,user:email"

    user = upstream.api("/user", token["access_token"])
    assert user.status_code == 200
    body = user.json()
    assert (body["login"], body["id"], body["type"]) == ("alice", 1001, "User")
    assert body["email"] == "alice@acme.test" and body["name"] == "Alice Archer"
    assert body["avatar_url"] == f"{upstream.url}/avatars/1001"
    avatar = upstream.http.get(body["avatar_url"])
    assert avatar.headers["Content-Type"].startswith("image/svg+xml") and ">A</text>" in avatar.text

    replay = upstream.http.post(f"{upstream.url}/login/oauth/access_token", data=form, headers=JSON)
    assert replay.status_code == 200 and replay.json()["error"] == "bad_verification_code"


@pytest.mark.parametrize("verifier", [None, "wrong-verifier-wrong-verifier-wrong-verifier"])
def test_pkce_mismatch_is_bad_verification_code(upstream: Upstream, verifier: str | None) -> None:
    _, challenge = _pkce()
    code = _authorize(upstream, "bob", code_challenge=challenge, code_challenge_method="S256")
    form = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "code": code["code"][0]}
    if verifier:
        form["code_verifier"] = verifier
    resp = upstream.http.post(f"{upstream.url}/login/oauth/access_token", data=form, headers=JSON)
    assert resp.status_code == 200 and resp.json()["error"] == "bad_verification_code"


def test_token_errors_are_http_200_bodies(upstream: Upstream) -> None:
    url = f"{upstream.url}/login/oauth/access_token"
    code = _authorize(upstream, "bob")["code"][0]
    bad_secret = {"client_id": CLIENT_ID, "client_secret": "nope", "code": code}
    resp = upstream.http.post(url, data=bad_secret, headers=JSON)
    assert resp.status_code == 200
    assert resp.json()["error"] == "incorrect_client_credentials"
    assert resp.json()["error_uri"].startswith("https://docs.github.com/")

    code = _authorize(upstream, "bob")["code"][0]
    mismatch = {
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "code": code,
        "redirect_uri": "http://elsewhere.test/cb",
    }
    resp = upstream.http.post(url, data=mismatch, headers=JSON)
    assert resp.status_code == 200 and resp.json()["error"] == "redirect_uri_mismatch"

    code = _authorize(upstream, "bob")["code"][0]
    basic = upstream.http.post(
        url, data={"code": code}, auth=(CLIENT_ID, CLIENT_SECRET), headers=JSON
    )
    assert basic.json()["access_token"].startswith("gho_")


def test_token_response_is_form_encoded_by_default(upstream: Upstream) -> None:
    code = _authorize(upstream, "carol", scope="read:org")["code"][0]
    body = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "code": code}
    resp = upstream.http.post(f"{upstream.url}/login/oauth/access_token", data=body)
    assert resp.headers["Content-Type"].startswith("application/x-www-form-urlencoded")
    parsed = parse_qs(resp.text)
    assert parsed["token_type"] == ["bearer"] and parsed["scope"] == ["read:org"]
    assert parsed["access_token"][0].startswith("gho_")
    again = upstream.http.post(f"{upstream.url}/login/oauth/access_token", data=body)
    assert again.status_code == 200 and parse_qs(again.text)["error"] == ["bad_verification_code"]


def test_deny_and_bad_authorize_requests(upstream: Upstream) -> None:
    url = f"{upstream.url}/login/oauth/authorize"
    form = {"client_id": CLIENT_ID, "redirect_uri": REDIRECT + "?x=1", "state": "s", "deny": "1"}
    resp = upstream.http.post(url, data=form, allow_redirects=False)
    assert resp.status_code == 302
    location = resp.headers["Location"]
    assert location.startswith(
        REDIRECT + "?x=1&error=access_denied&error_description="
        "The+user+has+denied+your+application+access."
    )
    assert parse_qs(urlsplit(location).query)["state"] == ["s"]
    unknown_client = {"client_id": "nope", "redirect_uri": REDIRECT}
    assert upstream.http.get(url, params=unknown_client).status_code == 404
    bad_redirect = {"client_id": CLIENT_ID, "redirect_uri": "javascript:x"}
    assert upstream.http.get(url, params=bad_redirect).status_code == 400
    bad_pick = dict(form, deny="", login="nobody")
    assert upstream.http.post(url, data=bad_pick, allow_redirects=False).status_code == 400


def test_api_authentication_and_common_headers(upstream: Upstream) -> None:
    missing = upstream.api("/user", None)
    assert missing.status_code == 401
    assert missing.json() == {
        "message": "Requires authentication",
        "documentation_url": "https://docs.github.com/rest",
    }
    assert upstream.api("/user", "gho_bogus").json()["message"] == "Bad credentials"
    token = _token(upstream, "dave")
    resp = upstream.http.get(
        f"{upstream.url}/api/v3/user",
        headers={"Authorization": f"token {token}", "X-GitHub-Api-Version": "2026-03-10"},
    )
    assert resp.status_code == 200 and resp.json()["email"] is None
    headers = resp.headers
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    assert headers["X-RateLimit-Limit"] == "5000"
    assert int(headers["X-RateLimit-Remaining"]) + int(headers["X-RateLimit-Used"]) == 5000
    assert int(headers["X-RateLimit-Reset"]) > 1_700_000_000
    assert headers["X-GitHub-Api-Version-Selected"] == "2026-03-10"
    assert upstream.api("/user", token).headers["X-GitHub-Api-Version-Selected"] == "2022-11-28"
    assert upstream.api("/no/such/thing", token).json()["message"] == "Not Found"
    assert upstream.state.revoke_tokens("dave") == 1
    assert upstream.api("/user", token).status_code == 401


def test_emails_need_scope(upstream: Upstream) -> None:
    emails = upstream.api("/user/emails", _token(upstream, "bob")).json()
    assert emails == [
        {"email": "bob@acme.test", "primary": True, "verified": True, "visibility": "private"},
        {"email": "bob@old.test", "primary": False, "verified": False, "visibility": None},
    ]
    carol = upstream.api("/user/emails", _token(upstream, "carol")).json()
    assert carol == [
        {"email": "carol@acme.test", "primary": True, "verified": False, "visibility": "private"}
    ]
    no_scope = upstream.api("/user/emails", _token(upstream, "bob", scope="read:org"))
    assert no_scope.status_code == 404 and no_scope.json()["message"] == "Not Found"


def test_orgs_memberships_and_teams(upstream: Upstream) -> None:
    alice, mallory = _token(upstream, "alice"), _token(upstream, "mallory")
    assert [o["login"] for o in upstream.api("/user/orgs", alice).json()] == ["acme"]
    assert [o["id"] for o in upstream.api("/user/orgs", mallory).json()] == [9002]

    member = upstream.api("/user/memberships/orgs/acme", alice).json()
    assert (member["state"], member["role"]) == ("active", "admin")
    assert member["organization"]["login"] == "acme" and member["user"]["login"] == "alice"
    outsider = upstream.api("/user/memberships/orgs/acme", mallory)
    assert outsider.status_code == 404 and outsider.json()["message"] == "Not Found"
    unscoped = _token(upstream, "alice", scope="user:email")
    assert upstream.api("/user/memberships/orgs/acme", unscoped).status_code == 404

    bob_teams = upstream.api("/user/teams", _token(upstream, "bob")).json()
    assert [t["slug"] for t in bob_teams] == ["sre"]  # direct memberships only
    assert bob_teams[0]["parent"]["slug"] == "platform"
    assert bob_teams[0]["organization"]["login"] == "acme" and bob_teams[0]["privacy"] == "closed"
    platform = upstream.api("/orgs/acme/teams/platform", alice).json()
    assert platform["parent"]["slug"] == "engineering" and platform["id"] == 7002
    assert upstream.api("/orgs/acme/teams/platform", mallory).status_code == 404
    assert upstream.api("/orgs/acme/teams/nope", alice).status_code == 404

    upstream.state.remove_user_from_org("acme", "alice")
    assert upstream.api("/user/memberships/orgs/acme", alice).status_code == 404
    assert upstream.api("/user/teams", alice).json() == []
    upstream.state.add_org_member("acme", "alice", state="pending")
    assert upstream.api("/user/memberships/orgs/acme", alice).json()["state"] == "pending"
    assert upstream.api("/user/orgs", alice).json() == []


def test_pagination_of_150_teams(upstream: Upstream) -> None:
    state = upstream.state
    state.add_org("bigcorp", id=9100)
    state.add_user("tess", "Tess Teams", id=2001)
    for index in range(150):
        state.add_team("bigcorp", f"team-{index:03d}", id=50_000 + index)
        state.add_team_member("bigcorp", f"team-{index:03d}", "tess")
    token = _token(upstream, "tess")
    base = f"{upstream.url}/api/v3/user/teams"

    first = upstream.api("/user/teams", token, params={"per_page": 100})
    assert len(first.json()) == 100 and first.json()[0]["slug"] == "team-000"
    assert first.headers["Link"] == (
        f'<{base}?per_page=100&page=2>; rel="next", <{base}?per_page=100&page=2>; rel="last"'
    )
    assert first.links["next"]["url"] == f"{base}?per_page=100&page=2"

    second = upstream.http.get(
        first.links["next"]["url"], headers={"Authorization": f"Bearer {token}"}
    )
    assert [t["id"] for t in second.json()] == list(range(50_100, 50_150))
    assert set(second.links) == {"prev", "first"}
    assert second.links["prev"]["url"] == f"{base}?per_page=100&page=1"

    default = upstream.api("/user/teams", token)
    assert len(default.json()) == 30 and default.links["last"]["url"].endswith("page=5")
    capped = upstream.api("/user/teams", token, params={"per_page": 500})
    assert len(capped.json()) == 100
    single = upstream.api("/user/teams", _token(upstream, "alice"))
    assert [t["slug"] for t in single.json()] == ["platform", "security"]
    assert "Link" not in single.headers


def test_simple_faults(upstream: Upstream) -> None:
    token = _token(upstream, "alice")
    state = upstream.state
    state.add_fault("/api/v3/user", "unauthorized")
    assert upstream.api("/user", token).json()["message"] == "Bad credentials"
    assert upstream.api("/user", token).status_code == 200  # count=1 consumed

    state.add_fault("/api/v3/user/teams", "rate_limit", reset_in=120)
    limited = upstream.api("/user/teams", token)
    assert limited.status_code == 403 and limited.headers["X-RateLimit-Remaining"] == "0"
    assert limited.json()["message"] == "API rate limit exceeded for user ID 1001."
    assert 100 <= int(limited.headers["X-RateLimit-Reset"]) - time.time() <= 121

    state.add_fault("/api/v3/", "secondary_rate_limit")
    secondary = upstream.api("/user/orgs", token)
    assert secondary.status_code == 429 and secondary.headers["Retry-After"] == "60"

    state.add_fault("/api/v3/user/memberships", "saml")
    saml = upstream.api("/user/memberships/orgs/acme", token)
    assert saml.status_code == 403 and "SAML enforcement" in saml.json()["message"]
    assert saml.headers["X-GitHub-SSO"] == (
        f"required; url={upstream.url}/orgs/acme/sso?authorization_request=abc123"
    )

    state.add_fault("/api/v3/user", "server_error", count=2)
    assert upstream.api("/user", token).status_code == 502
    unicorn = upstream.api("/user", token)
    assert unicorn.text == "<html>Unicorn!</html>" and "html" in unicorn.headers["Content-Type"]
    assert upstream.api("/user", token).status_code == 200

    state.add_fault("/api/v3/user", "server_error", count=-1, status=503)
    assert [upstream.api("/user", token).status_code for _ in range(3)] == [503] * 3
    state.clear_faults()
    assert upstream.api("/user", token).status_code == 200
    assert ("GET", "/api/v3/user/memberships/orgs/acme") in state.requests_seen


def test_token_error_and_timeout_faults(upstream: Upstream) -> None:
    upstream.state.add_fault(
        "/login/oauth/access_token", "token_error", error="incorrect_client_credentials"
    )
    code = _authorize(upstream, "bob")["code"][0]
    body = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "code": code}
    url = f"{upstream.url}/login/oauth/access_token"
    faulted = upstream.http.post(url, data=body, headers=JSON)
    assert faulted.status_code == 200
    assert faulted.json()["error"] == "incorrect_client_credentials"
    assert upstream.http.post(url, data=body, headers=JSON).json()["token_type"] == "bearer"

    token = _token(upstream, "bob")
    upstream.state.add_fault("/api/v3/user", "timeout", delay=0.5)
    with pytest.raises(requests.Timeout):
        upstream.api("/user", token, timeout=0.1)
    assert upstream.api("/user", token, timeout=5).json()["login"] == "bob"


def test_fault_control_over_http(upstream: Upstream) -> None:
    token = _token(upstream, "alice")
    faults = f"{upstream.url}/_dev/faults"
    added = upstream.http.post(
        faults,
        json={
            "path": "/api/v3/user",
            "kind": "server_error",
            "count": -1,
            "params": {"status": 500},
        },
    )
    assert added.status_code == 201 and added.json()["faults"][0]["kind"] == "server_error"
    assert upstream.api("/user", token).status_code == 500
    assert upstream.http.post(faults, json={"kind": "bogus"}).status_code == 400
    assert upstream.http.delete(faults).status_code == 204
    assert upstream.api("/user", token).status_code == 200
    index = upstream.http.get(f"{upstream.url}/_dev/")
    assert index.status_code == 200 and "mallory" in index.text


def test_state_api_validates_input() -> None:
    state = UpstreamState()
    state.add_org("acme")
    with pytest.raises(ValueError):
        state.add_fault("/", "bogus")
    with pytest.raises(KeyError):
        state.add_team("acme", "child", parent="missing")
    with pytest.raises(KeyError):
        state.add_org_member("acme", "ghost")
    user = state.add_user("zed", public_email="zed@x.test")
    assert user.emails[0].verified and user.avatar_url == f"/avatars/{user.id}"
