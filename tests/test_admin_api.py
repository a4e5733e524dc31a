"""The admin JSON API (``/api/admin/``): authentication, CSRF, rules, people, sessions, audit,
and its OpenAPI description. Real Keycard, upstream and Redis; callers are ``requests``.
"""

from __future__ import annotations

import re

import requests

from tests.support import csrf_token, sign_in

UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}
PLACEHOLDERS = {"login": "bob", "session_id": "A" * 16, "client_id": "A" * 22}


class Api:
    """A signed-in person calling the admin API the way a script in their browser would."""

    def __init__(self, keycard, login: str) -> None:
        self.base = keycard.url + "/api/admin"
        self.http = requests.Session()
        portal = sign_in(self.http, keycard.url, login)
        self.token = csrf_token(portal.text)

    def call(self, method: str, path: str, *, csrf: bool = True, headers: dict | None = None,
             **kwargs) -> requests.Response:
        headers = dict(headers or {})
        if csrf and method in UNSAFE:
            headers["X-CSRFToken"] = self.token
        return self.http.request(method, self.base + path, headers=headers, **kwargs)


def api_routes(keycard) -> list[tuple[str, str, str]]:
    """Every (method, concrete path, OpenAPI path) the app serves under /api/admin."""
    out = []
    for rule in keycard.app.url_map.iter_rules():
        if not rule.rule.startswith("/api/admin"):
            continue
        concrete = re.sub(r"<(?:\w+:)?(\w+)>", lambda m: PLACEHOLDERS[m.group(1)], rule.rule)
        templated = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        out += [(m, concrete, templated) for m in sorted(rule.methods - {"HEAD", "OPTIONS"})]
    return out


def assert_json_error(response: requests.Response, status: int, error: str) -> None:
    assert response.status_code == status, response.text[:300]
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["error"] == error and body["error_description"]


def test_every_endpoint_answers_401_anonymous_and_403_to_non_admins(keycard):
    routes = api_routes(keycard)
    assert len(routes) >= 11
    anonymous = requests.Session()
    bob = Api(keycard, "bob")
    for method, path, _ in routes:
        body = {"target": "acme", "roles": ["x"]} if method in UNSAFE else None
        response = anonymous.request(method, keycard.url + path, json=body)
        assert_json_error(response, 401, "unauthorized")
        assert_json_error(bob.call(method, path.removeprefix("/api/admin"), json=body), 403,
                          "access_denied")
    assert keycard.services.rules.all() == []


def test_unsafe_calls_need_the_csrf_header(keycard):
    alice = Api(keycard, "alice")
    body = {"target": "acme", "roles": ["staff"]}
    assert_json_error(alice.call("POST", "/rules", json=body, csrf=False), 403, "csrf_failed")
    response = alice.http.post(alice.base + "/rules", json=body,
                               headers={"X-CSRFToken": "forged"})
    assert_json_error(response, 403, "csrf_failed")
    response = alice.http.post(alice.base + "/rules", json=body,
                               headers={"X-CSRFToken": alice.token,
                                        "Origin": "https://evil.example"})
    assert response.status_code == 403
    assert keycard.services.rules.all() == []
    assert alice.call("GET", "/rules", csrf=False).status_code == 200  # safe methods need none


def test_rules_crud(keycard):
    alice = Api(keycard, "alice")
    Api(keycard, "bob")
    Api(keycard, "dave")
    response = alice.call("POST", "/rules", json={"target": "acme/platform",
                                                  "roles": ["deployer"]})
    assert response.status_code == 201
    assert response.json()["rule"] == {"kind": "team", "target": "acme/platform",
                                       "roles": ["deployer"], "matches": 2,
                                       "logins": ["alice", "bob"]}
    alice.call("POST", "/rules", json={"target": "acme/platform", "roles": "viewer, ops"})
    alice.call("POST", "/rules", json={"target": "@Dave", "roles": ["oncall"]})
    rules = alice.call("GET", "/rules").json()["rules"]
    assert [(r["target"], r["roles"], r["matches"]) for r in rules] == [
        ("acme/platform", ["deployer", "ops", "viewer"], 2), ("@dave", ["oncall"], 1)]
    assert rules[1]["user_id"] == "1004"

    response = alice.call("DELETE", "/rules", json={"target": "acme/platform",
                                                    "roles": ["ops"]})
    assert response.status_code == 200
    assert response.json()["rule"]["roles"] == ["deployer", "viewer"]
    response = alice.call("DELETE", "/rules", json={"target": "@dave"})
    assert response.json()["rule"] is None and response.json()["removed"]["target"] == "@dave"
    assert_json_error(alice.call("DELETE", "/rules", json={"target": "@dave"}), 404, "not_found")
    assert [r.target for r in keycard.services.rules.all()] == ["acme/platform"]
    changes = keycard.services.audit.query(event="rules.changed", person="alice")
    assert len(changes) == 5 and changes[0]["details"]["after"] is None

    # Each change was applied to the live sessions at once: nothing is left to apply.
    assert alice.call("POST", "/rules/apply").json() == {"changed": 0}


def test_invalid_rule_requests_are_400_json(keycard):
    alice = Api(keycard, "alice")
    cases = [
        {"target": "@nobody", "roles": ["x"]},
        {"target": "acme/a/b", "roles": ["x"]},
        {"target": "acme", "roles": ["Not Valid"]},
        {"target": "acme", "roles": []},
        {"target": "acme", "roles": 7},
        {"target": 7, "roles": ["x"]},
    ]
    for body in cases:
        assert_json_error(alice.call("POST", "/rules", json=body), 400, "invalid_rule")
    response = alice.call("POST", "/rules", data="not json",
                          headers={"Content-Type": "application/json"})
    assert_json_error(response, 400, "invalid_request")
    assert_json_error(alice.call("POST", "/rules", json=["acme"]), 400, "invalid_request")
    assert "GitHub has no user 'nobody'" in alice.call("POST", "/rules", json=cases[0]).json()[
        "error_description"]
    assert_json_error(alice.call("GET", "/nope"), 404, "not_found")
    assert keycard.services.rules.all() == []


def test_people_sessions_and_ending_them(keycard):
    alice, bob = Api(keycard, "alice"), Api(keycard, "bob")
    alice.call("POST", "/rules", json={"target": "acme/platform", "roles": ["deployer"]})
    people = {p["login"]: p for p in alice.call("GET", "/people").json()["people"]}
    assert set(people) == {"alice", "bob"}
    assert people["bob"]["active_sessions"] == 1 and "acme:sre" in people["bob"]["groups"]

    person = alice.call("GET", "/people/BOB").json()
    assert person["person"]["login"] == "bob" and "acme/platform" in person["teams"]
    assert person["roles"] == [{"role": "deployer", "granted_by": ["team rule acme/platform"],
                                "stale": False, "pending": False}]  # applied at once
    admin_roles = alice.call("GET", "/people/alice").json()["roles"]
    pinned = "bootstrap admin (SSO_BOOTSTRAP_ADMINS: login alice, pinned to id 1001)"
    assert {"role": "admin", "granted_by": [pinned],
            "stale": False, "pending": False} in admin_roles
    assert_json_error(alice.call("GET", "/people/nobody"), 404, "not_found")

    sessions = alice.call("GET", "/sessions").json()["sessions"]
    assert sorted(s["login"] for s in sessions) == ["alice", "bob"]
    bob_session = next(s for s in sessions if s["login"] == "bob")
    assert bob_session["user_agent"].startswith("python-requests")
    response = alice.call("DELETE", f"/sessions/{bob_session['id']}")
    assert response.status_code == 200 and response.json()["ended"] == 1
    assert "Sign in with GitHub" in bob.http.get(keycard.url + "/").text
    assert_json_error(alice.call("DELETE", f"/sessions/{bob_session['id']}"), 404, "not_found")
    assert_json_error(alice.call("DELETE", "/sessions/not-an-id"), 404, "not_found")

    bob = Api(keycard, "bob")
    assert alice.call("DELETE", "/people/bob/sessions").json() == {"ended": 1}
    assert "Sign in with GitHub" in bob.http.get(keycard.url + "/").text
    events = alice.call("GET", "/audit", params={"event": "session", "person": "bob"})
    assert [e["event"] for e in events.json()["events"]] == ["sessions.ended", "session.ended"]


def test_audit_filters_and_validation(keycard):
    alice = Api(keycard, "alice")
    Api(keycard, "carol")
    events = alice.call("GET", "/audit").json()["events"]
    assert [(e["event"], e["subject"]) for e in events] == [
        ("signin.success", "carol"), ("signin.success", "alice"),
        ("admin.bootstrap_pinned", "alice")]  # SSO_BOOTSTRAP_ADMINS=alice bound to her id
    assert events[0]["details"]["user_id"] == "1003"
    one = alice.call("GET", "/audit", params={"limit": 1}).json()["events"]
    assert [e["subject"] for e in one] == ["carol"]
    assert alice.call("GET", "/audit", params={"person": "Carol"}).json()["events"][0][
        "actor"] == "carol"
    assert alice.call("GET", "/audit", params={"until": "2001-01-01"}).json()["events"] == []
    for bad in ({"limit": 0}, {"limit": 201}, {"limit": "many"}, {"since": "yesterday"}):
        assert_json_error(alice.call("GET", "/audit", params=bad), 400, "invalid_request")


def test_openapi_document_describes_every_route(keycard):
    alice = Api(keycard, "alice")
    doc = alice.call("GET", "/openapi.json").json()
    assert doc["openapi"] == "3.1.0" and doc["info"]["title"]
    assert doc["servers"] == [{"url": keycard.url}]
    for method, _, templated in api_routes(keycard):
        operation = doc["paths"][templated][method.lower()]
        assert operation["responses"] and operation["operationId"]
        assert {"401", "403"} <= set(operation["responses"])
        for name in re.findall(r"{(\w+)}", templated):
            assert name in {p["name"] for p in operation["parameters"] if p["in"] == "path"}
        if method in {"POST", "DELETE"} and templated == "/api/admin/rules":
            schema = operation["requestBody"]["content"]["application/json"]["schema"]
            assert schema["$ref"].removeprefix("#/components/schemas/") in doc["components"][
                "schemas"]
    assert len(doc["paths"]) == len({t for _, _, t in api_routes(keycard)})


def test_bearer_access_token_with_admin_role_is_accepted_without_csrf(keycard):
    from tests.support import obtain_tokens, sign_in

    registry = keycard.services.clients
    api = f"{keycard.url}/api/admin"
    client, secret = registry.create(name="Admin tool", redirect_uris=["http://127.0.0.1:9/cb"],
                                     trusted=True, audiences=[api])
    alice, bob = requests.Session(), requests.Session()
    sign_in(alice, keycard.url, "alice")
    sign_in(bob, keycard.url, "bob")
    admin_token = obtain_tokens(alice, keycard.url, client.client_id, secret,
                                resource=api)["access_token"]
    user_token = obtain_tokens(bob, keycard.url, client.client_id, secret,
                               resource=api)["access_token"]
    # An admin's token obtained for some other app (not addressed to this API) is refused.
    app_token = obtain_tokens(alice, keycard.url, client.client_id, secret)["access_token"]
    assert requests.get(api + "/rules", headers={
        "Authorization": f"Bearer {app_token}"}).status_code == 401

    created = requests.post(keycard.url + "/api/admin/rules",
                            json={"target": "acme/sre", "roles": ["oncall"]},
                            headers={"Authorization": f"Bearer {admin_token}"})
    assert created.status_code == 201, created.text
    listed = requests.get(keycard.url + "/api/admin/rules",
                          headers={"Authorization": f"Bearer {admin_token}"})
    assert listed.status_code == 200 and "acme/sre" in listed.text
    denied = requests.get(keycard.url + "/api/admin/rules",
                          headers={"Authorization": f"Bearer {user_token}"})
    assert denied.status_code == 403
    forged = requests.get(keycard.url + "/api/admin/rules",
                          headers={"Authorization": "Bearer not.a.token"})
    assert forged.status_code == 401
