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
                "description": "ORG, ORG/TEAM or @login (the person must have signed in)"},
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
    "AuditEvent": _obj(
        ["id", "time", "event", "actor", "subject", "details"],
        id={**STRING, "description": "stream id (millisecond timestamp-sequence)"},
        time={"type": "number"}, event=STRING, actor=STRING, subject=STRING,
        ip=STRING, user_agent=STRING, details={"type": "object"},
    ),
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
    rule_out = _obj(["rule"], rule=_ref("Rule"))
    return {
        "/api/admin/rules": {
            "get": {"operationId": "listRules", "summary": "Role rules, with who matches each",
                    "responses": {**_ok("The rules", _list_of("rules", "Rule")), **_errors()}},
            "post": {"operationId": "addRule", "summary": "Add roles to a target",
                     "requestBody": _body("RuleInput"),
                     "responses": {**_ok("The rule as stored", rule_out, "201"),
                                   **_errors(400)}},
            "delete": {"operationId": "deleteRule", "summary": "Remove roles or a whole rule",
                       "requestBody": _body("RuleDelete"),
                       "responses": {**_ok("What was removed and what is left", _obj(
                           ["removed", "rule"], removed=_ref("Rule"),
                           rule={"oneOf": [_ref("Rule"), {"type": "null"}]})),
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
                             (403, "Not an admin, or CSRF token missing"), (404, "Not found"))
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Keycard admin API",
            "version": "1",
            "description": (
                "Role rules, people, sessions and the audit trail. Authenticate with an "
                "admin's Keycard browser session; POST and DELETE must also send the "
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
                         "description": "Required on POST and DELETE"},
            },
        },
    }
