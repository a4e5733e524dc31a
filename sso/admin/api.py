"""The ``admin_api`` blueprint: the admin console's operations as JSON under ``/api/admin/``.

Same service calls (:mod:`sso.admin.service`) and audit events as the console. Every
endpoint goes through :func:`admin_principal` in ``before_request``, so none can
forget the check. Errors are always JSON ``{"error", "error_description"}``.
"""

from __future__ import annotations

from typing import Any, NoReturn

from flask import Blueprint, Response, abort, g, jsonify, request
from flask.blueprints import BlueprintSetupState
from flask_login import current_user

from sso.admin import service
from sso.admin.openapi import document
from sso.oidc.clients import ClientError
from sso.registry import registry
from sso.rules_store import RuleError
from sso.web.bearer import bearer_token
from sso.web.csrf import csrf
from sso.web.errors import error_response

bp = Blueprint("admin_api", __name__, url_prefix="/api/admin")


def _exempt_from_global_csrf(state: BlueprintSetupState) -> None:
    # The global CSRF check would run before the principal is known, answering an
    # anonymous call 403 instead of 401, and a bearer-token call (#4) needs none:
    # admin_principal() enforces the X-CSRFToken header for cookie-authenticated calls.
    csrf.exempt(bp)


bp.record_once(_exempt_from_global_csrf)


def fail(status: int, code: str, message: str) -> NoReturn:
    abort(error_response(status, code, message, code=code))


def admin_resource() -> str:
    """The RFC 8707 resource identifier of this API (the audience its tokens must carry)."""
    return f"{registry().settings.issuer}/api/admin"


def admin_principal() -> str:
    """The login of the admin making this call, or a 401/403 JSON error.

    The one place that decides who may call the admin API.
    """
    token = bearer_token()
    if token is not None:
        # An access token Keycard issued, carrying the admin role. Bearer calls carry no
        # cookie, so there is nothing to forge cross-site: no CSRF check for them.
        claims = registry().provider.token_claims(token)
        if claims is None:
            fail(401, "invalid_token", "The bearer token is invalid, expired or revoked.")
        audience = claims.get("aud")
        audiences = [audience] if isinstance(audience, str) else list(audience or [])
        if admin_resource() not in audiences:
            # A token an admin obtained for some app must not administer Keycard: only tokens
            # requested for this API (resource=ISSUER/api/admin, RFC 8707) are accepted.
            fail(401, "invalid_token", "The bearer token was not issued for the admin API; "
                 f"request it with resource={admin_resource()}.")
        if "admin" not in (claims.get("roles") or []):
            fail(403, "insufficient_scope", "The admin API needs a token with the admin role.")
        return str(claims.get("preferred_username") or claims["sub"])
    if not current_user.is_authenticated:
        fail(401, "unauthorized", "Sign in to Keycard as an administrator to use the admin API.")
    if not current_user.is_admin:
        fail(403, "access_denied", "The admin API needs the admin role.")
    # Cookie-authenticated: unsafe methods must send the session's CSRF token in the
    # X-CSRFToken header. Raises CSRFError, answered as 403 JSON.
    csrf.protect()
    return str(current_user.login)


@bp.before_request
def authenticate() -> None:
    g.admin_login = admin_principal()


def _actor() -> str:
    return str(g.admin_login)


def _body() -> dict[str, Any]:
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        fail(400, "invalid_request", "The request body must be a JSON object.")
    return data


def _person_or_404(login: str) -> Any:
    profile = registry().accounts.find_by_login(login)
    if profile is None:
        fail(404, "not_found", f"Nobody with the login {login!r} has signed in to Keycard.")
    return profile


# -- rules -------------------------------------------------------------------------------------


@bp.get("/rules")
def list_rules() -> Response:
    reg = registry()
    people = reg.accounts.directory()
    return jsonify(rules=[reg.admin.rule_view(rule, people) for rule in reg.rules.all()])


@bp.post("/rules")
def add_rule() -> tuple[Response, int]:
    body = _body()
    admin = registry().admin
    try:
        change = admin.add_rule(body.get("target", ""), body.get("roles"), actor=_actor())
    except service.UpstreamLookupError as exc:
        fail(503, "upstream_unavailable", str(exc))
    except RuleError as exc:
        fail(400, "invalid_rule", str(exc))
    rule = change.rule
    return jsonify(rule=admin.rule_view(rule, registry().accounts.directory()),
                   warnings=admin.rule_warnings(rule.kind, rule.target),
                   **change.as_dict()), 201


@bp.delete("/rules")
def delete_rule() -> Response:
    body = _body()
    target, roles = body.get("target", ""), body.get("roles")
    try:
        if not isinstance(target, str) or not target.strip():
            raise RuleError("'target' must be ORG, ORG/TEAM or @login")
        checked = service.split_roles(roles) if roles is not None else ()
        rule = registry().admin.find_rule(target)
    except RuleError as exc:
        fail(400, "invalid_rule", str(exc))
    if rule is None:
        fail(404, "not_found", f"There is no rule for {target.strip()}.")
    change = registry().admin.remove_rule(rule, checked, actor=_actor())
    if change is None:
        fail(404, "not_found", f"There is no rule for {target.strip()}.")
    people = registry().accounts.directory()
    left = change.left
    return jsonify(removed=registry().admin.rule_view(rule, people),
                   rule=registry().admin.rule_view(left, people) if left else None,
                   **change.as_dict())


@bp.post("/rules/apply")
def apply_rules() -> Response:
    return jsonify(changed=registry().accounts.apply_rules_now(actor=_actor()))


# -- people and sessions -------------------------------------------------------------------------


@bp.get("/people")
def list_people() -> Response:
    directory = registry().accounts.directory()
    return jsonify(people=[registry().admin.person_view(p, last) for p, last in directory])


@bp.get("/people/<login>")
def get_person(login: str) -> Response:
    profile = _person_or_404(login)
    last = next((t for p, t in registry().accounts.directory() if p.user_id == profile.user_id), 0)
    sessions = registry().sessions.list_for_user(profile.user_id)
    return jsonify(person=registry().admin.person_view(profile, last), orgs=profile.orgs,
                   teams=profile.teams, roles=registry().admin.explain_roles(profile),
                   sessions=[s.as_dict() for s in sessions])


@bp.delete("/people/<login>/sessions")
def end_person_sessions(login: str) -> Response:
    profile = _person_or_404(login)
    return jsonify(ended=registry().admin.end_person_sessions(profile, actor=_actor()))


@bp.get("/sessions")
def list_sessions() -> Response:
    return jsonify(sessions=[s.as_dict() for s in registry().admin.company_sessions()])


@bp.delete("/sessions/<session_id>")
def end_session(session_id: str) -> Response:
    info = registry().admin.find_session(session_id)
    if info is None:
        fail(404, "not_found", "No active session has that id.")
    registry().admin.end_session(info, actor=_actor())
    return jsonify(ended=1, session=info.as_dict())


# -- apps (OIDC clients) and signing keys ----------------------------------------------------

APP_FIELDS = ("name", "redirect_uris", "post_logout_redirect_uris", "grant_types", "scopes",
              "required_roles", "roles", "audiences", "trusted", "home_url", "require_pkce",
              "id_token_alg", "access_token_ttl", "refresh_idle_ttl", "refresh_absolute_ttl",
              "backchannel_logout_uri", "backchannel_logout_session_required")


def _app_fields(body: dict[str, Any], *, creating: bool) -> dict[str, Any]:
    allowed = (*APP_FIELDS, "public") if creating else APP_FIELDS
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        fail(400, "invalid_request", f"Unknown or read-only field(s): {', '.join(unknown)}; "
             f"allowed: {', '.join(allowed)}.")
    fields = dict(body)
    try:
        for name in ("required_roles", "roles"):
            if isinstance(fields.get(name), str):
                fields[name] = list(service.split_roles_or_none(fields[name]))
    except RuleError as exc:
        fail(400, "invalid_client", str(exc))
    return fields


def _app_or_404(client_id: str) -> Any:
    client = registry().admin.get_app(client_id)
    if client is None:
        fail(404, "not_found", f"No app has the client_id {client_id!r}.")
    return client


@bp.get("/apps")
def list_apps() -> Response:
    return jsonify(apps=[c.to_dict() for c in registry().admin.list_apps()])


@bp.post("/apps")
def create_app() -> tuple[Response, int]:
    fields = _app_fields(_body(), creating=True)
    try:
        client, secret = registry().admin.create_app(fields, actor=_actor())
    except (ClientError, TypeError) as exc:
        fail(400, "invalid_client", str(exc))
    return jsonify(app=client.to_dict(), client_id=client.client_id,
                   client_secret=secret), 201


@bp.get("/apps/<client_id>")
def get_app(client_id: str) -> Response:
    return jsonify(app=_app_or_404(client_id).to_dict())


@bp.patch("/apps/<client_id>")
def update_app(client_id: str) -> Response:
    _app_or_404(client_id)
    fields = _app_fields(_body(), creating=False)
    try:
        client = registry().admin.update_app(client_id, fields, actor=_actor())
    except ClientError as exc:
        fail(400, "invalid_client", f"{exc}; nothing was changed")
    return jsonify(app=client.to_dict())


@bp.delete("/apps/<client_id>")
def delete_app(client_id: str) -> Response:
    client = registry().admin.delete_app(client_id, actor=_actor())
    if client is None:
        fail(404, "not_found", f"No app has the client_id {client_id!r}.")
    return jsonify(deleted=client_id, name=client.name)


@bp.post("/apps/<client_id>/secret")
def rotate_app_secret(client_id: str) -> Response:
    _app_or_404(client_id)
    data = request.get_json(silent=True) or {}
    revoke = data.get("revoke_tokens", False) if isinstance(data, dict) else False
    if not isinstance(revoke, bool):
        fail(400, "invalid_request", "'revoke_tokens' must be true or false.")
    try:
        secret = registry().admin.rotate_app_secret(client_id, actor=_actor(),
                                                    revoke_tokens=revoke)
    except ClientError as exc:
        fail(400, "invalid_client", str(exc))
    return jsonify(client_id=client_id, client_secret=secret)


@bp.get("/keys")
def list_keys() -> Response:
    return jsonify(keys=registry().admin.signing_keys())


@bp.post("/keys/rotate")
def rotate_keys() -> Response:
    data = request.get_json(silent=True) or {}
    if not isinstance(data, dict):
        fail(400, "invalid_request", "The request body must be a JSON object.")
    grace, delay = data.get("grace", 3600), data.get("publish_delay", 0)
    for name, value in (("grace", grace), ("publish_delay", delay)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            fail(400, "invalid_request", f"'{name}' must be a whole number of seconds, 0 or more.")
    kids = registry().admin.rotate_keys(actor=_actor(), grace=grace, publish_delay=delay)
    return jsonify(new=kids, keys=registry().admin.signing_keys())


# -- audit and the description of this API -----------------------------------------------------


@bp.get("/audit")
def audit() -> Response:
    try:
        limit = int(request.args.get("limit", service.AUDIT_LIMIT))
    except ValueError:
        fail(400, "invalid_request", "'limit' must be a whole number.")
    if not 1 <= limit <= service.AUDIT_LIMIT:
        fail(400, "invalid_request", f"'limit' must be between 1 and {service.AUDIT_LIMIT}.")
    try:
        events = registry().admin.audit_events(request.args, limit)
    except ValueError as exc:
        fail(400, "invalid_request", str(exc))
    return jsonify(events=events)


@bp.get("/openapi.json")
def openapi() -> Response:
    return jsonify(document(registry().settings.issuer))
