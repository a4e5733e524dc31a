"""Issue #14 items 2, 3, 14 and 15: apps and keys in the console and the admin API, rules
that take effect at once (with warnings, suggestions and errors beside their field),
roles for people who have not signed in yet (looked up on GitHub), and clients as a
YAML file.

Keycard, the development upstream and Redis are real; people are ``requests.Session``s
that signed in through the upstream; commands run through ``app.test_cli_runner()``.
"""

from __future__ import annotations

import base64
import importlib
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from tests.support import sign_in
from tests.test_admin import post_form, signed_in
from tests.test_admin_api import Api, assert_json_error


class _Fields(HTMLParser):
    """What a browser submits for the form posting to ``action``: inputs, checked
    checkboxes (repeated names included) and textareas."""

    def __init__(self, action: str) -> None:
        super().__init__()
        self.action, self.inside, self.found = action, False, False
        self.fields: list[tuple[str, str]] = []
        self.textarea: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.inside = a.get("action") == self.action
            self.found |= self.inside
        elif self.inside and tag == "input" and a.get("name"):
            kind = a.get("type", "text")
            if kind not in {"submit", "checkbox", "radio"} or "checked" in a:
                self.fields.append((a["name"], a.get("value", "on")))
        elif self.inside and tag == "textarea":
            self.textarea = a["name"]
            self.fields.append((self.textarea, ""))

    def handle_data(self, data: str) -> None:
        if self.textarea is not None:
            name, value = self.fields.pop()
            self.fields.append((name, value + data))

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self.inside = False
        elif tag == "textarea":
            self.textarea = None


def submit(http, keycard, page_path: str, **fields: str):
    """Fill and submit the form of a page that posts back to ``page_path`` (a confirmation
    step, or an app's form), as a browser without JavaScript would: ``name=""`` unticks a
    checkbox or empties a field."""
    page = http.get(keycard.url + page_path)
    assert page.status_code == 200, page.text[:300]
    parser = _Fields(page_path)
    parser.feed(page.text)
    assert parser.found, f"no form posting to {page_path}"
    data = [(k, v) for k, v in parser.fields if k not in fields]
    data += [(k, v) for k, v in fields.items() if v]
    return http.post(keycard.url + page_path, data=data, allow_redirects=False)


def secret_on(page: str) -> str:
    match = re.search(r'data-testid="client-secret">([^<]+)<', page)
    assert match, page[:500]
    return match.group(1)


def events(keycard, prefix: str) -> list[tuple[str, str, str]]:
    return [(e["event"], e["actor"], e["subject"])
            for e in keycard.services.audit.query(event=prefix)]


# -- item 2: apps and keys ----------------------------------------------------------------------


def test_item_2_console_registers_edits_rotates_and_deletes_an_app(keycard):
    alice = signed_in(keycard, "alice")
    listing = alice.get(keycard.url + "/admin/apps")
    assert listing.status_code == 200 and 'href="/admin/apps/new"' in listing.text
    page = submit(
        alice, keycard, "/admin/apps/new", name="Wiki",
        redirect_uris="https://wiki.acme.test/callback\nhttps://wiki.acme.test/cb2",
        post_logout_redirect_uris="https://wiki.acme.test/bye",
        required_roles="staff, wiki-editor", audiences="https://api.acme.test",
        backchannel_logout_uri="https://wiki.acme.test/bcl",
        backchannel_logout_session_required="on", trusted="on",
        home_url="https://wiki.acme.test/")
    assert page.status_code == 200 and page.headers["Cache-Control"] == "no-store"
    assert page.headers["Content-Type"].startswith("text/html")
    [client] = keycard.services.clients.list()
    secret = secret_on(page.text)
    assert client.check_client_secret(secret) and secret not in str(client.to_dict())
    assert (client.name, client.redirect_uris, client.required_roles, client.audiences) == (
        "Wiki", ["https://wiki.acme.test/callback", "https://wiki.acme.test/cb2"],
        ["staff", "wiki-editor"], ["https://api.acme.test"])
    assert client.trusted and client.backchannel_logout_session_required
    assert client.backchannel_logout_uri == "https://wiki.acme.test/bcl"
    app_path = f"/admin/apps/{client.client_id}"
    assert secret not in alice.get(keycard.url + app_path).text  # shown once, never again

    response = submit(alice, keycard, app_path, required_roles="staff",
                      redirect_uris="https://wiki.acme.test/callback", trusted="")
    assert response.status_code == 303 and response.headers["Location"] == app_path
    assert "Saved &#39;Wiki&#39;: redirect uris, required roles, trusted." in alice.get(
        keycard.url + app_path).text
    client = keycard.services.clients.get(client.client_id)
    assert client.required_roles == ["staff"] and not client.trusted
    bad = submit(alice, keycard, app_path, redirect_uris="http://wiki.acme.test/cb")
    assert bad.status_code == 400 and "http:// is allowed only on loopback" in bad.text
    assert keycard.services.clients.get(client.client_id).redirect_uris == [
        "https://wiki.acme.test/callback"]

    # Rotating the secret: a confirmation page first (nothing happens on GET), then once.
    confirm = alice.get(keycard.url + app_path + "/rotate-secret")
    assert 'data-testid="confirm"' in confirm.text and "csrf_token" in confirm.text
    assert keycard.services.clients.get(client.client_id).check_client_secret(secret)
    rotated = submit(alice, keycard, app_path + "/rotate-secret")
    new_secret = secret_on(rotated.text)
    stored = keycard.services.clients.get(client.client_id)
    assert stored.check_client_secret(new_secret) and not stored.check_client_secret(secret)

    assert alice.get(keycard.url + app_path + "/delete").status_code == 200
    assert keycard.services.clients.get(client.client_id) is not None
    response = submit(alice, keycard, app_path + "/delete")
    assert response.status_code == 303 and response.headers["Location"] == "/admin/apps"
    assert keycard.services.clients.list() == []
    assert "Deleted &#39;Wiki&#39;" in alice.get(keycard.url + "/admin/apps").text
    assert events(keycard, "client.") == [
        (e, "alice", client.client_id) for e in ("client.deleted", "client.secret_rotated",
                                                  "client.updated", "client.created")]


def test_item_2_api_apps_and_keys_do_what_the_cli_does(keycard, run):
    alice = Api(keycard, "alice")
    response = alice.call("POST", "/apps", json={
        "name": "Grafana", "redirect_uris": ["https://grafana.acme.test/cb"],
        "required_roles": "ops viewer", "backchannel_logout_uri": "https://grafana.acme.test/b"})
    assert response.status_code == 201, response.text
    body = response.json()
    client_id, secret = body["client_id"], body["client_secret"]
    assert body["app"]["required_roles"] == ["ops", "viewer"] and "secret" not in str(body["app"])
    assert keycard.services.clients.get(client_id).check_client_secret(secret)
    assert [a["client_id"] for a in alice.call("GET", "/apps").json()["apps"]] == [client_id]

    patched = alice.call("PATCH", f"/apps/{client_id}",
                         json={"post_logout_redirect_uris": ["https://grafana.acme.test/"],
                               "trusted": True})
    assert patched.status_code == 200 and patched.json()["app"]["trusted"] is True
    assert_json_error(alice.call("PATCH", f"/apps/{client_id}",
                                 json={"redirect_uris": ["ftp://x"]}), 400, "invalid_client")
    assert_json_error(alice.call("PATCH", f"/apps/{client_id}", json={"client_id": "x"}),
                      400, "invalid_request")
    assert_json_error(alice.call("PATCH", f"/apps/{client_id}", json={"name": "x"},
                                 csrf=False), 403, "csrf_failed")
    rotated = alice.call("POST", f"/apps/{client_id}/secret").json()["client_secret"]
    assert keycard.services.clients.get(client_id).check_client_secret(rotated)

    keys = alice.call("GET", "/keys").json()["keys"]
    assert sorted((k["alg"], k["state"]) for k in keys) == [("ES256", "active"),
                                                            ("RS256", "active")]
    rotation = alice.call("POST", "/keys/rotate", json={"grace": 600})
    assert rotation.status_code == 200 and len(rotation.json()["new"]) == 2
    states = sorted((k["alg"], k["state"]) for k in rotation.json()["keys"])
    assert states == [("ES256", "active"), ("ES256", "retired"), ("RS256", "active"),
                      ("RS256", "retired")]
    assert_json_error(alice.call("POST", "/keys/rotate", json={"grace": -1}), 400,
                      "invalid_request")

    assert alice.call("DELETE", f"/apps/{client_id}").json() == {"deleted": client_id,
                                                                 "name": "Grafana"}
    assert_json_error(alice.call("DELETE", f"/apps/{client_id}"), 404, "not_found")

    # The CLI goes through the same service: the same events, with the same details.
    run("clients", "create", "--name", "Grafana", "--redirect-uri",
        "https://grafana.acme.test/cb", "--require-role", "ops", "--require-role", "viewer")
    run("keys", "rotate", "--grace", "600")
    created = keycard.services.audit.query(event="client.created")
    assert [e["actor"] for e in created][0].startswith("cli") and created[1]["actor"] == "alice"
    assert set(created[0]["details"]) == set(created[1]["details"])
    rotations = keycard.services.audit.query(event="keys.rotated")
    assert [e["actor"] for e in rotations][1] == "alice"
    assert set(rotations[0]["details"]) == set(rotations[1]["details"])


def test_item_2_keys_page_shows_states_and_rotates_only_after_confirmation(keycard):
    alice = signed_in(keycard, "alice")
    page = alice.get(keycard.url + "/admin/keys").text
    assert page.count('data-testid="state">active<') == 2
    assert 'href="/admin/keys/rotate"' in page
    assert 'data-testid="confirm"' in alice.get(keycard.url + "/admin/keys/rotate").text
    assert len(keycard.services.keys.list()) == 2  # the confirmation page changed nothing
    bad = submit(alice, keycard, "/admin/keys/rotate", grace="soon")
    assert bad.status_code == 400 and len(keycard.services.keys.list()) == 2
    response = submit(alice, keycard, "/admin/keys/rotate", grace="900", publish_delay="0")
    assert response.status_code == 303 and response.headers["Location"] == "/admin/keys"
    page = alice.get(keycard.url + "/admin/keys").text
    assert "New signing keys: " in page
    assert page.count('data-testid="state">active<') == 2
    assert page.count('data-testid="state">retired<') == 2
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", page)
    assert events(keycard, "keys.rotated")[0][:2] == ("keys.rotated", "alice")


# -- item 3: rules that take effect -------------------------------------------------------------


def test_item_3_adding_and_removing_a_rule_update_live_sessions_at_once(keycard):
    alice, bob = signed_in(keycard, "alice"), signed_in(keycard, "bob")
    response = post_form(alice, keycard, "/admin/rules", "/admin/rules", target="acme/sre",
                         roles="pager")
    assert response.status_code == 303
    page = alice.get(keycard.url + "/admin/rules").text
    assert "Rule saved: acme/sre → pager; roles updated for 1 person now." in page
    assert "pager" in bob.get(keycard.url + "/").text

    response = post_form(alice, keycard, "/admin/rules", "/admin/rules/remove")
    assert response.status_code == 303
    page = alice.get(keycard.url + "/admin/rules").text
    assert "Rule removed; roles updated for 1 person now" in page
    assert "pager" not in bob.get(keycard.url + "/").text  # no "Apply now" needed
    applied = keycard.services.audit.query(event="roles.applied")
    assert [(e["subject"], e["details"]["after"]) for e in applied][0] == ("bob", [])


def test_item_3_rule_changes_touching_too_many_people_say_when_they_apply(keycard,
                                                                            monkeypatch):
    # The live server runs in this process: it sees the lower bound.
    monkeypatch.setattr(importlib.import_module("sso.admin.service"), "APPLY_NOW_LIMIT", 1)
    alice, bob = signed_in(keycard, "alice"), signed_in(keycard, "bob")
    post_form(alice, keycard, "/admin/rules", "/admin/rules", target="acme", roles="staff")
    page = alice.get(keycard.url + "/admin/rules").text
    assert "2 people match, too many to update at once" in page and "Apply now" in page
    assert "staff" not in bob.get(keycard.url + "/").text
    post_form(alice, keycard, "/admin/rules", "/admin/rules/apply")
    assert "staff" in bob.get(keycard.url + "/").text


def test_item_3_targets_that_match_nobody_are_warned_about_before_they_are_added(keycard):
    alice = signed_in(keycard, "alice")
    page = post_form(alice, keycard, "/admin/rules", "/admin/rules", target="acme/nosuchteam",
                     roles="x", action="add")
    assert page.status_code == 200 and keycard.services.rules.all() == []
    assert re.search(r'data-testid="target-warning"><p>acme/nosuchteam matches nobody', page.text)
    assert re.search(r'aria-describedby="target-hint target-warning"', page.text)
    assert "Add anyway" in page.text
    page = post_form(alice, keycard, "/admin/rules", "/admin/rules", target="globex",
                     roles="x", action="preview")
    assert "globex is not an allowed organisation (SSO_GITHUB_ORGS: acme)" in page.text
    post_form(alice, keycard, "/admin/rules", "/admin/rules", target="acme/nosuchteam",
              roles="x", action="confirm")
    assert [r.target for r in keycard.services.rules.all()] == ["acme/nosuchteam"]
    body = Api(keycard, "alice").call("POST", "/rules", json={"target": "globex",
                                                              "roles": "x"}).json()
    assert body["warnings"][0].startswith("globex is not an allowed organisation")


def test_item_3_form_suggests_roles_splits_on_commas_and_spaces_and_shows_errors_by_field(
        keycard):
    alice = signed_in(keycard, "alice")
    keycard.services.clients.create(name="Wiki", redirect_uris=["https://w.test/cb"],
                                    required_roles=["wiki-editor"])
    post_form(alice, keycard, "/admin/rules", "/admin/rules", target="acme",
              roles="staff,viewer  ops")
    [rule] = keycard.services.rules.all()
    assert rule.roles == ("ops", "staff", "viewer")
    body = Api(keycard, "alice").call("POST", "/rules", json={"target": "acme/platform",
                                                              "roles": "a, b c"}).json()
    assert body["rule"]["roles"] == ["a", "b", "c"]
    page = alice.get(keycard.url + "/admin/rules").text
    datalist = re.search(r'<datalist id="known-roles">(.*?)</datalist>', page, re.S).group(1)
    assert re.findall(r'value="([^"]+)"', datalist) == ["a", "admin", "b", "c", "ops", "staff",
                                                        "viewer", "wiki-editor"]
    assert 'list="known-roles"' in page

    page = post_form(alice, keycard, "/admin/rules", "/admin/rules", target="acme/x/y",
                     roles="Bad Role")
    assert page.status_code == 400
    assert re.search(r'id="roles"[^>]*aria-describedby="roles-hint roles-error"[^>]*'
                     r'aria-invalid="true"', page.text)
    assert re.search(r'id="roles-error"[^>]*>role &#39;Bad&#39; is invalid: use 1 to 64 ',
                     page.text)
    assert re.search(r'id="target-error"[^>]*>&#39;acme/x/y&#39; is not ORG or ORG/TEAM',
                     page.text)
    assert "Each role is 1 to 64 characters" in page.text


# -- item 14: roles for people who have not signed in yet -----------------------------------------


def basic_auth_seen(upstream, login: str) -> list[str]:
    return [h.get("Authorization", "") for path, h in upstream.state.headers_seen
            if path == f"/api/v3/users/{login}"]


def test_item_14_cli_binds_a_rule_to_the_github_id_of_a_login_not_seen_yet(keycard, upstream,
                                                                           run, http):
    upstream.state.add_user("octocat", "The Octocat", id=583231,
                            public_email="octocat@acme.test")
    result = run("roles", "map", "--user", "octocat", "viewer")
    assert "octocat is GitHub user 583231; rule bound to that id" in result.output
    [rule] = keycard.services.rules.all()
    assert (rule.kind, rule.target, rule.label, rule.roles) == ("user", "583231", "octocat",
                                                                ("viewer",))
    expected = base64.b64encode(b"keycard-dev:keycard-dev-secret").decode()
    assert basic_auth_seen(upstream, "octocat") == [f"Basic {expected}"]  # the app's own

    # The new hire signs in for the first time and has the role at once.
    upstream.state.add_org_member("acme", "octocat")
    portal = sign_in(http, keycard.url, "octocat")
    assert "viewer" in portal.text

    result = run("roles", "map", "--user", "nosuchperson", "viewer", ok=False)
    assert result.exit_code == 1
    assert "GitHub has no user 'nosuchperson': check the spelling" in result.output
    result = run("roles", "map", "@acme", "viewer", ok=False)
    assert "acme is a GitHub organisation, not a person" in result.output

    upstream.state.add_fault("/api/v3/users/", "server_error", count=-1)
    result = run("roles", "map", "--user", "hubot", "viewer", ok=False)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert ("hubot has not signed in to Keycard yet, and GitHub could not be asked who they "
            "are: GitHub is having trouble right now.") in result.output
    assert len(keycard.services.rules.all()) == 1


def test_item_14_console_and_api_resolve_logins_through_github(keycard, upstream):
    upstream.state.add_user("octocat", id=583231)
    alice = signed_in(keycard, "alice")
    preview = post_form(alice, keycard, "/admin/rules", "/admin/rules", target="@octocat",
                        roles="viewer", action="preview")
    assert "octocat is GitHub user 583231; rule bound to that id." in preview.text
    response = post_form(alice, keycard, "/admin/rules", "/admin/rules", target="@octocat",
                         roles="viewer")
    assert response.status_code == 303
    page = alice.get(keycard.url + "/admin/rules").text
    assert "octocat is GitHub user 583231; rule bound to that id." in page
    assert 'data-testid="rule-@octocat"' in page
    audit = keycard.services.audit.query(event="rules.changed")[0]["details"]
    assert audit["after"] == {"user": "octocat", "id": 583231, "roles": ["viewer"]}

    api = Api(keycard, "alice")
    upstream.state.add_user("hubot", id=583232)
    body = api.call("POST", "/rules", json={"target": "@hubot", "roles": ["bot"]}).json()
    assert body["notes"] == ["hubot is GitHub user 583232; rule bound to that id"]
    assert body["rule"]["user_id"] == "583232"
    assert_json_error(api.call("POST", "/rules", json={"target": "@ghost404", "roles": ["x"]}),
                      400, "invalid_rule")
    upstream.state.add_fault("/api/v3/users/", "server_error", count=-1)
    assert_json_error(api.call("POST", "/rules", json={"target": "@newbie", "roles": ["x"]}),
                      503, "upstream_unavailable")
    page = post_form(alice, keycard, "/admin/rules", "/admin/rules", target="@newbie",
                     roles="x")
    assert page.status_code == 503
    assert re.search(r'id="target-error"[^>]*>newbie has not signed in to Keycard yet, and '
                     r"GitHub could not be asked", page.text)


def test_item_14_connector_asks_users_as_the_oauth_app(upstream):
    from sso.upstream.base import BadCredentials
    from sso.upstream.github import GitHubConfig, GitHubConnector

    def connector(secret: str) -> GitHubConnector:
        return GitHubConnector(GitHubConfig(
            client_id="keycard-dev", client_secret=secret, web_url=upstream.url,
            api_url=upstream.url + "/api/v3", timeout=1.0))

    found = connector("keycard-dev-secret").find_user("Alice")
    assert (found.user_id, found.login, found.kind) == ("1001", "alice", "User")
    assert connector("keycard-dev-secret").find_user("acme").kind == "Organization"
    assert connector("keycard-dev-secret").find_user("nobody-here") is None
    assert connector("keycard-dev-secret").find_user("not a login") is None
    with pytest.raises(BadCredentials, match="refused Keycard's OAuth app credentials"):
        connector("wrong").find_user("alice")


# -- item 15: clients as a file -----------------------------------------------------------------


def test_item_15_export_never_holds_secrets_and_reimporting_it_changes_nothing(
        keycard, run, tmp_path: Path):
    _, secret = keycard.services.clients.create(
        name="Wiki", redirect_uris=["https://wiki.acme.test/cb"], required_roles=["staff"])
    run("clients", "create", "--name", "CLI tool", "--public", "--redirect-uri",
        "http://127.0.0.1/cb")
    exported = run("clients", "export").stdout
    assert secret not in exported and "secret" not in exported.split("\n", 2)[2]
    data = yaml.safe_load(exported)
    by_name = {c["name"]: c for c in data["clients"]}
    assert set(by_name) == {"Wiki", "CLI tool"} and by_name["CLI tool"]["public"] is True
    assert by_name["Wiki"]["required_roles"] == ["staff"]
    path = tmp_path / "clients.yaml"
    path.write_text(exported)
    before = [c.to_dict() for c in keycard.services.clients.list()]
    assert "No change." in run("clients", "import", str(path)).output
    assert [c.to_dict() for c in keycard.services.clients.list()] == before
    assert keycard.services.audit.query(event="client.updated") == []


def test_item_15_import_creates_and_updates_says_what_changed_and_dry_run_changes_nothing(
        keycard, run, tmp_path: Path):
    wiki, secret = keycard.services.clients.create(
        name="Wiki", redirect_uris=["https://wiki.acme.test/cb"])
    path = tmp_path / "clients.yaml"
    path.write_text(f"""clients:
  - client_id: {wiki.client_id}
    name: Wiki
    redirect_uris: [https://wiki.acme.test/cb, https://wiki.acme.test/cb2]
    required_roles: [staff]
  - name: Grafana
    redirect_uris: [https://grafana.acme.test/cb]
  - client_id: docs-site
    name: Docs
    public: true
    redirect_uris: [http://127.0.0.1:8000/cb]
""")
    dry = run("clients", "import", str(path), "--dry-run").output
    assert "Would change: 2 created, 1 updated, 0 unchanged." in dry
    assert [c.name for c in keycard.services.clients.list()] == ["Wiki"]
    assert keycard.services.clients.get(wiki.client_id).required_roles == []

    result = run("clients", "import", str(path)).output
    assert (f"~ Wiki ({wiki.client_id}): redirect_uris: [https://wiki.acme.test/cb] → "
            "[https://wiki.acme.test/cb, https://wiki.acme.test/cb2]; required_roles: [] → "
            "[staff]") in result
    assert "Changed: 2 created, 1 updated, 0 unchanged." in result
    grafana = next(c for c in keycard.services.clients.list() if c.name == "Grafana")
    new_secret = re.search(r"\+ Grafana: created, client_id \S+\n  client_secret: (\S+)",
                           result).group(1)
    assert grafana.check_client_secret(new_secret)  # printed once, works
    docs = keycard.services.clients.get("docs-site")
    assert docs is not None and docs.public
    assert keycard.services.clients.get(wiki.client_id).check_client_secret(secret)
    # docs-site now exists: a second import updates it (nothing to change); Grafana, named
    # by no client_id, would be registered again.
    again = run("clients", "import", str(path), "--dry-run").output
    assert "Would change: 1 created, 0 updated, 2 unchanged." in again
    sources = {e["details"].get("source") for e in keycard.services.audit.query(event="client.")}
    assert sources == {str(path)}


def test_item_15_an_invalid_file_changes_nothing_and_names_the_line(keycard, run,
                                                                    tmp_path: Path):
    wiki, _ = keycard.services.clients.create(name="Wiki",
                                              redirect_uris=["https://wiki.acme.test/cb"])
    path = tmp_path / "clients.yaml"
    path.write_text(f"""clients:
  - name: Grafana
    redirect_uris: [https://grafana.acme.test/cb]
  - client_id: {wiki.client_id}
    name: Wiki renamed
  - name: Broken
    redirect_uris: [http://broken.acme.test/cb]
""")
    result = run("clients", "import", str(path), ok=False)
    assert result.exit_code == 1
    assert "line 6 (Broken): redirect URI 'http://broken.acme.test/cb': http:// is allowed " \
           "only on loopback" in result.output and "nothing was changed" in result.output
    assert [c.name for c in keycard.services.clients.list()] == ["Wiki"]
    path.write_text("clients:\n  - name: X\n    redirect_uris: [https://x.test/cb]\n"
                    "    client_secret: hunter2\n")
    result = run("clients", "import", str(path), ok=False)
    assert "line 4: secrets are never imported" in result.output
    path.write_text(f"clients:\n  - client_id: {wiki.client_id}\n    public: true\n")
    assert "cannot change kind" in run("clients", "import", str(path), ok=False).output
    assert [c.name for c in keycard.services.clients.list()] == ["Wiki"]
