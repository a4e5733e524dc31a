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
    try:
        rule = registry().admin.add_rule(body.get("target", ""), body.get("roles"), actor=_actor())
    except RuleError as exc:
        fail(400, "invalid_rule", str(exc))
    return jsonify(rule=registry().admin.rule_view(rule, registry().accounts.directory())), 201


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
    left = registry().admin.remove_rule(rule, checked, actor=_actor())
    people = registry().accounts.directory()
    return jsonify(removed=registry().admin.rule_view(rule, people),
                   rule=registry().admin.rule_view(left, people) if left else None)


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
