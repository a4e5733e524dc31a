"""The OpenAPI 3.1 description of the admin API (:mod:`sso.admin.api`), as a plain dict.

Served at ``/api/admin/openapi.json``; a test checks every registered route is here.
"""

from __future__ import annotations

from typing import Any

JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _ok(description: str, schema: dict[str, Any], status: str = "200") -> dict[str, Any]:
    return {status: {"description": description, "content": {JSON: {"schema": schema}}}}


def _errors(*statuses: int) -> dict[str, Any]:
    """401 and 403 apply everywhere (not signed in; not an admin or no CSRF token)."""
    return {str(s): {"$ref": f"#/components/responses/E{s}"}
            for s in sorted({401, 403, *statuses})}


def _obj(required: list[str], **props: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": props}


def _list_of(key: str, item: str) -> dict[str, Any]:
    return _obj([key], **{key: {"type": "array", "items": _ref(item)}})


STRING = {"type": "string"}
NULLABLE_STRING = {"type": ["string", "null"]}
INT = {"type": "integer"}
STRINGS = {"type": "array", "items": STRING}
LOGIN = {"name": "login", "in": "path", "required": True, "schema": STRING,
         "description": "GitHub login (case-insensitive)"}

CLIENT = {"name": "client_id", "in": "path", "required": True, "schema": STRING,
          "description": "the app's client_id"}

SCHEMAS: dict[str, Any] = {
    "Error": _obj(["error", "error_description"], error=STRING, error_description=STRING),
    "Rule": _obj(
        ["kind", "target", "roles", "matches", "logins"],
        kind={"enum": ["org", "team", "user"]},
        target={**STRING, "description": "acme, acme/platform or @login (current login)"},
        user_id={**STRING, "description": "GitHub numeric user id (user rules only)"},
        roles=STRINGS,
        matches={**INT, "description": "how many people who have signed in match the rule"},
        logins={**STRINGS, "description": "their logins"},
    ),
    "RuleInput": _obj(
        ["target", "roles"],
        target={**STRING, "examples": ["acme/platform"],
                "description": "ORG, ORG/TEAM or @login (a login nobody has signed in "
                               "with is looked up on GitHub and bound to its numeric id)"},
        roles={"oneOf": [STRINGS, {**STRING, "description": "comma or space separated"}],
               "examples": [["deployer"]]},
    ),
    "RuleDelete": _obj(
        ["target"], target=STRING,
        roles={**STRINGS, "description": "roles to remove; omit to remove the whole rule"},
    ),
    "Person": _obj(
        ["login", "user_id", "groups", "roles", "last_sign_in", "active_sessions"],
        login=STRING, user_id=STRING, name=NULLABLE_STRING, email=NULLABLE_STRING,
        email_verified={"type": "boolean"},
        groups={**STRINGS, "description": "'org' and 'org:team' strings"},
        roles=STRINGS, last_sign_in={**INT, "description": "epoch seconds"},
        active_sessions=INT,
    ),
    "RoleExplanation": _obj(
        ["role", "granted_by", "stale", "pending"], role=STRING, granted_by=STRINGS,
        stale={"type": "boolean", "description": "held, but no rule grants it any more"},
        pending={"type": "boolean", "description": "granted, not yet in live sessions"},
    ),
    "Session": _obj(
        ["id", "user_id", "login", "created", "absolute_expiry", "ip", "user_agent"],
        id={**STRING, "pattern": "^[A-Za-z0-9_-]{16}$"}, user_id=STRING, login=STRING,
        created=INT, absolute_expiry=INT, ip=STRING, user_agent=STRING,
        last_active={**INT, "description": "epoch seconds (in the session's last idle "
                     "period before absolute_expiry: the earliest possible time)"},
    ),
    "App": _obj(
        ["client_id", "name", "public", "redirect_uris", "post_logout_redirect_uris",
         "grant_types", "scopes", "required_roles", "roles", "audiences", "trusted"],
        client_id=STRING, name=STRING,
        public={"type": "boolean", "description": "no secret; PKCE required"},
        redirect_uris=STRINGS, post_logout_redirect_uris=STRINGS,
        grant_types=STRINGS, scopes=STRINGS,
        required_roles={**STRINGS, "description": "any of these; empty: every employee"},
        roles={**STRINGS, "description": "the client's own roles (client credentials)"},
        audiences={**STRINGS, "description": "RFC 8707 resources it may ask tokens for"},
        trusted={"type": "boolean", "description": "first-party: no consent screen"},
        home_url=NULLABLE_STRING, require_pkce={"type": "boolean"}, id_token_alg=STRING,
        access_token_ttl=INT, refresh_idle_ttl=INT, refresh_absolute_ttl=INT,
        backchannel_logout_uri=NULLABLE_STRING,
        backchannel_logout_session_required={"type": "boolean"},
        created_at={**INT, "description": "epoch seconds"}, tokens_valid_after=INT,
    ),
    "AppInput": {
        "type": "object", "additionalProperties": False,
        "description": "On create `name` is required and `public` may be given; on update "
                       "every field is optional and a given list replaces the old one.",
        "properties": {
            "name": STRING, "public": {"type": "boolean"}, "redirect_uris": STRINGS,
            "post_logout_redirect_uris": STRINGS, "grant_types": STRINGS, "scopes": STRINGS,
            "required_roles": {"oneOf": [STRINGS, {**STRING, "description":
                                                    "comma or space separated"}]},
            "roles": STRINGS, "audiences": STRINGS, "trusted": {"type": "boolean"},
            "home_url": NULLABLE_STRING, "require_pkce": {"type": "boolean"},
            "id_token_alg": {"enum": ["RS256", "ES256"]}, "access_token_ttl": INT,
            "refresh_idle_ttl": INT, "refresh_absolute_ttl": INT,
            "backchannel_logout_uri": NULLABLE_STRING,
            "backchannel_logout_session_required": {"type": "boolean"},
        },
    },
    "SigningKey": _obj(
        ["kid", "alg", "state", "created", "activates_at", "retire_at"],
        kid=STRING, alg={"enum": ["RS256", "ES256"]},
        state={"enum": ["active", "next", "retired"]},
        created={"type": "number"}, activates_at={"type": "number"},
        retire_at={"type": ["number", "null"], "description": "when it leaves JWKS"},
    ),
    "AuditEvent": _obj(
        ["id", "time", "event", "actor", "subject", "details"],
        id={**STRING, "description": "stream id (millisecond timestamp-sequence)"},
        time={"type": "number"}, event=STRING, actor=STRING, subject=STRING,
        ip=STRING, user_agent=STRING, details={"type": "object"},
    ),
}

# What a rule change did to live sessions (sso.admin.service.RuleChange.as_dict).
APPLIED: dict[str, Any] = {
    "affected": {**INT, "description": "people who have signed in and match the rule"},
    "applied": {"type": ["integer", "null"],
                "description": "whose live roles changed now; null: too many, they change "
                               "at their next membership re-check or POST /rules/apply"},
    "notes": {**STRINGS, "description": "e.g. a login resolved to its GitHub id"},
    "message": STRING,
}

AUDIT_PARAMS = [
    {"name": "person", "in": "query", "schema": STRING,
     "description": "login matching the actor or the subject"},
    {"name": "event", "in": "query", "schema": STRING,
     "description": "event type prefix, e.g. signin"},
    {"name": "app", "in": "query", "schema": STRING,
     "description": "client id: events about that app (its subject or 'client' detail)"},
    {"name": "before", "in": "query", "schema": STRING,
     "description": "an event id: only older events (the next page)"},
    {"name": "since", "in": "query", "schema": STRING,
     "description": "YYYY-MM-DD or ISO date-time, UTC unless an offset is given"},
    {"name": "until", "in": "query", "schema": STRING,
     "description": "YYYY-MM-DD (inclusive: the whole day) or ISO date-time"},
    {"name": "limit", "in": "query", "schema": {**INT, "minimum": 1, "maximum": 200,
                                                 "default": 200}},
]


def _body(schema: str) -> dict[str, Any]:
    return {"required": True, "content": {JSON: {"schema": _ref(schema)}}}


def _paths() -> dict[str, Any]:
    app_out = _obj(["app"], app=_ref("App"))
    return {
        "/api/admin/rules": {
            "get": {"operationId": "listRules", "summary": "Role rules, with who matches each",
                    "responses": {**_ok("The rules", _list_of("rules", "Rule")), **_errors()}},
            "post": {"operationId": "addRule",
                     "summary": "Add roles to a target; live sessions it matches update now",
                     "requestBody": _body("RuleInput"),
                     "responses": {**_ok("The rule as stored, and what changed now", _obj(
                         ["rule", *APPLIED], rule=_ref("Rule"), **APPLIED,
                         warnings={**STRINGS, "description": "why it may match nobody"}),
                         "201"), **_errors(400, 503)}},
            "delete": {"operationId": "deleteRule", "summary": "Remove roles or a whole rule",
                       "requestBody": _body("RuleDelete"),
                       "responses": {**_ok("What was removed and what is left", _obj(
                           ["removed", "rule", *APPLIED], removed=_ref("Rule"),
                           rule={"oneOf": [_ref("Rule"), {"type": "null"}]}, **APPLIED)),
                           **_errors(400, 404)}},
        },
        "/api/admin/rules/apply": {
            "post": {"operationId": "applyRules",
                     "summary": "Recompute the roles of everyone with a live session",
                     "responses": {**_ok("How many people's roles changed",
                                         _obj(["changed"], changed=INT)), **_errors()}},
        },
        "/api/admin/people": {
            "get": {"operationId": "listPeople", "summary": "Everyone who has signed in",
                    "responses": {**_ok("People, most recent sign-in first",
                                        _list_of("people", "Person")), **_errors()}},
        },
        "/api/admin/people/{login}": {
            "get": {"operationId": "getPerson", "parameters": [LOGIN],
                    "summary": "A person, their roles with the rules granting them, sessions",
                    "responses": {**_ok("The person", _obj(
                        ["person", "orgs", "teams", "roles", "sessions"],
                        person=_ref("Person"), orgs=STRINGS, teams=STRINGS,
                        roles={"type": "array", "items": _ref("RoleExplanation")},
                        sessions={"type": "array", "items": _ref("Session")})),
                        **_errors(404)}},
        },
        "/api/admin/people/{login}/sessions": {
            "delete": {"operationId": "endPersonSessions", "parameters": [LOGIN],
                       "summary": "End every session of a person",
                       "responses": {**_ok("How many sessions ended",
                                           _obj(["ended"], ended=INT)), **_errors(404)}},
        },
        "/api/admin/sessions": {
            "get": {"operationId": "listSessions", "summary": "Every active session",
                    "responses": {**_ok("Sessions, newest first",
                                        _list_of("sessions", "Session")), **_errors()}},
        },
        "/api/admin/sessions/{session_id}": {
            "delete": {"operationId": "endSession", "summary": "End one session",
                       "parameters": [{"name": "session_id", "in": "path", "required": True,
                                       "schema": {**STRING, "pattern": "^[A-Za-z0-9_-]{16}$"}}],
                       "responses": {**_ok("The session ended", _obj(
                           ["ended", "session"], ended=INT, session=_ref("Session"))),
                           **_errors(404)}},
        },
        "/api/admin/apps": {
            "get": {"operationId": "listApps", "summary": "Registered apps (OIDC clients)",
                    "responses": {**_ok("The apps", _list_of("apps", "App")), **_errors()}},
            "post": {"operationId": "createApp",
                     "summary": "Register an app; its secret is in this answer only",
                     "requestBody": _body("AppInput"),
                     "responses": {**_ok("The app and its secret (null for a public app)",
                                         _obj(["app", "client_id", "client_secret"],
                                              app=_ref("App"), client_id=STRING,
                                              client_secret=NULLABLE_STRING), "201"),
                                   **_errors(400)}},
        },
        "/api/admin/apps/{client_id}": {
            "get": {"operationId": "getApp", "parameters": [CLIENT], "summary": "One app",
                    "responses": {**_ok("The app", app_out), **_errors(404)}},
            "patch": {"operationId": "updateApp", "parameters": [CLIENT],
                      "summary": "Change an app (validated whole: nothing changes on error)",
                      "requestBody": _body("AppInput"),
                      "responses": {**_ok("The app as stored", app_out), **_errors(400, 404)}},
            "delete": {"operationId": "deleteApp", "parameters": [CLIENT],
                       "summary": "Delete an app; its grants and tokens end",
                       "responses": {**_ok("What was deleted", _obj(
                           ["deleted", "name"], deleted=STRING, name=STRING)),
                           **_errors(404)}},
        },
        "/api/admin/apps/{client_id}/secret": {
            "post": {"operationId": "rotateAppSecret", "parameters": [CLIENT],
                     "summary": "A new secret, in this answer only; the old one stops working",
                     "requestBody": {"required": False, "content": {JSON: {"schema": _obj(
                         [], revoke_tokens={"type": "boolean", "default": False,
                                            "description": "also end every token issued "
                                                           "to the app so far"})}}},
                     "responses": {**_ok("The new secret", _obj(
                         ["client_id", "client_secret"], client_id=STRING,
                         client_secret=STRING)), **_errors(400, 404)}},
        },
        "/api/admin/keys": {
            "get": {"operationId": "listKeys",
                    "summary": "Signing keys in JWKS: active, next and retired, with dates",
                    "responses": {**_ok("The keys", _list_of("keys", "SigningKey")),
                                  **_errors()}},
        },
        "/api/admin/keys/rotate": {
            "post": {"operationId": "rotateKeys",
                     "summary": "Start new signing keys; old ones stay in JWKS for `grace`",
                     "requestBody": {"required": False, "content": {JSON: {"schema": _obj(
                         [], grace={**INT, "minimum": 0, "default": 3600},
                         publish_delay={**INT, "minimum": 0, "default": 0})}}},
                     "responses": {**_ok("The new key ids and every key", _obj(
                         ["new", "keys"], new=STRINGS,
                         keys={"type": "array", "items": _ref("SigningKey")})),
                         **_errors(400)}},
        },
        "/api/admin/audit": {
            "get": {"operationId": "queryAudit", "summary": "The audit trail, newest first",
                    "parameters": AUDIT_PARAMS,
                    "responses": {**_ok("Matching events", _list_of("events", "AuditEvent")),
                                  **_errors(400)}},
        },
        "/api/admin/openapi.json": {
            "get": {"operationId": "openapi", "summary": "This document",
                    "responses": {**_ok("OpenAPI 3.1 document", {"type": "object"}),
                                  **_errors()}},
        },
    }


def document(server_url: str) -> dict[str, Any]:
    """The whole OpenAPI document for a Keycard served at ``server_url``."""
    responses = {
        f"E{status}": {"description": text, "content": {JSON: {"schema": _ref("Error")}}}
        for status, text in ((400, "Invalid request"), (401, "Not signed in"),
                             (403, "Not an admin, or CSRF token missing"), (404, "Not found"),
                             (503, "GitHub could not be asked (a login lookup)"))
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Keycard admin API",
            "version": "1",
            "description": (
                "Role rules, people, sessions, apps, signing keys and the audit trail. "
                "Authenticate with an admin's Keycard browser session; POST, PATCH and "
                "DELETE must also send the "
                "session's CSRF token in the X-CSRFToken header. Errors are "
                '{"error", "error_description"}.'
            ),
        },
        "servers": [{"url": server_url}],
        "security": [{"session": [], "csrf": []}],
        "paths": _paths(),
        "components": {
            "schemas": SCHEMAS,
            "responses": responses,
            "securitySchemes": {
                "session": {"type": "apiKey", "in": "cookie", "name": "keycard_session",
                            "description": "Keycard session cookie (__Host-keycard on https)"},
                "csrf": {"type": "apiKey", "in": "header", "name": "X-CSRFToken",
                         "description": "Required on POST, PATCH and DELETE"},
            },
        },
    }
