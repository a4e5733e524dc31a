"""The ``admin`` blueprint: the console under ``/admin`` (rules, people, sessions, audit).

Views are thin. The operations the JSON API (:mod:`sso.admin.api`) shares with the
console (changing rules, explaining roles, ending sessions, filtering the audit
trail) are the plain functions at the top, so both surfaces do exactly the same thing
and record the same audit events.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any

from flask import Blueprint, abort, current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user
from werkzeug.wrappers import Response

from sso.accounts import Profile
from sso.login.users import login_manager
from sso.registry import services
from sso.roles import ADMIN_ROLE, Rule, evaluate, explain
from sso.rules_store import RuleError, check_roles, describe, parse_target, rule_to_dict
from sso.sessions import SessionInfo
from sso.web.redirects import safe_next

bp = Blueprint("admin", __name__, url_prefix="/admin")

AUDIT_LIMIT = 200
SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{16}$")  # the first 16 chars of the base64url hash

# -- operations shared with the JSON API -----------------------------------------------------


def split_roles(value: str | list[Any] | None) -> tuple[str, ...]:
    """``"deployer, ops viewer"`` or ``["deployer"]`` → validated, sorted role names."""
    if isinstance(value, str):
        value = [part for part in re.split(r"[,\s]+", value) if part]
    if not isinstance(value, list):
        raise RuleError("roles must be a list of role names")
    return check_roles(value)


def resolve_target(text: str) -> tuple[str, str, str]:
    """``ORG``, ``ORG/TEAM`` or ``@login`` → (kind, target, label); users by numeric id."""
    if not isinstance(text, str) or not text.strip():
        raise RuleError("enter ORG, ORG/TEAM or @login")
    kind, target = parse_target(text)
    if kind != "user":
        return kind, target, ""
    profile = services().accounts.find_by_login(target)
    if profile is None:
        raise RuleError(f"@{target} has never signed in, so Keycard does not know their id")
    return kind, profile.user_id, profile.login


def _rule_subject(rule: Rule) -> str:
    return rule.label if rule.kind == "user" else rule.target


def add_rule(target_text: str, roles: str | list[Any] | None, *, actor: str) -> Rule:
    checked = split_roles(roles)
    kind, target, label = resolve_target(target_text)
    store = services().rules
    before = next((r for r in store.all() if (r.kind, r.target) == (kind, target)), None)
    after = store.map(kind, target, checked, label)
    services().audit.record(
        "rules.changed", actor=actor, subject=_rule_subject(after),
        before=rule_to_dict(before) if before else None, after=rule_to_dict(after),
    )
    return after


def find_rule(target_text: str) -> Rule | None:
    """The stored rule a target names; user rules also by the login they were added with."""
    kind, target = parse_target(target_text)
    for rule in services().rules.all():
        if kind == "user" and rule.kind == "user":
            profile = services().accounts.get(rule.target)
            logins = {rule.label.lower(), profile.login.lower() if profile else ""}
            if target.lower() in logins:
                return rule
        elif (rule.kind, rule.target) == (kind, target):
            return rule
    return None


def remove_rule(rule: Rule, roles: tuple[str, ...], *, actor: str) -> Rule | None:
    """Remove ``roles`` from ``rule`` (the whole rule when empty); returns what is left."""
    store = services().rules
    before = store.unmap(rule.kind, rule.target, roles)
    if before is None:
        return None
    after = next((r for r in store.all() if (r.kind, r.target) == (rule.kind, rule.target)), None)
    services().audit.record(
        "rules.changed", actor=actor, subject=_rule_subject(before),
        before=rule_to_dict(before), after=rule_to_dict(after) if after else None,
    )
    return after


def matching_logins(rule: Rule, people: list[tuple[Profile, int]]) -> list[str]:
    """Who of the known people this rule would give its roles to."""
    return sorted(p.login for p, _ in people if rule.matches(p.user_id, p.orgs, p.teams))


def rule_label(rule: Rule) -> str:
    """``@`` + the person's current login (logins get renamed), else the stored label."""
    if rule.kind != "user":
        return rule.target
    profile = services().accounts.get(rule.target)
    return f"@{profile.login}" if profile else describe(rule)


def rule_view(rule: Rule, people: list[tuple[Profile, int]]) -> dict[str, Any]:
    logins = matching_logins(rule, people)
    view: dict[str, Any] = {"kind": rule.kind, "target": rule_label(rule),
                            "roles": list(rule.roles), "matches": len(logins), "logins": logins}
    if rule.kind == "user":
        view["user_id"] = rule.target
    return view


def person_view(profile: Profile, last_sign_in: int) -> dict[str, Any]:
    return {
        "login": profile.login, "user_id": profile.user_id, "name": profile.name,
        "email": profile.email, "email_verified": profile.email_verified,
        "groups": profile.groups, "roles": list(profile.roles), "last_sign_in": last_sign_in,
        "active_sessions": len(services().sessions.list_for_user(profile.user_id)),
    }


def explain_roles(profile: Profile) -> list[dict[str, Any]]:
    """Each role the current rules give this person, with the rules (or setting) granting it.

    Roles the person holds but no rule grants any more are listed too, marked
    ``stale``: they go at the next sign-in or "Apply now".
    """
    svc = services()
    rules = svc.rules.all()
    granting = explain(profile.user_id, profile.orgs, profile.teams, rules)
    current = evaluate(profile.user_id, profile.login, profile.orgs, profile.teams, rules,
                       svc.settings.bootstrap_admins)
    bootstrap = {a.lower() for a in svc.settings.bootstrap_admins}
    out = []
    for role in sorted({*current, *profile.roles}):
        sources = [f"{r.kind} rule {rule_label(r)}" for r in granting if role in r.roles]
        if role == ADMIN_ROLE and profile.login.lower() in bootstrap:
            sources.append("bootstrap admin (SSO_BOOTSTRAP_ADMINS)")
        out.append({"role": role, "granted_by": sources, "stale": role not in current,
                    "pending": role not in profile.roles})
    return out


def company_sessions() -> list[SessionInfo]:
    return services().sessions.list_all(p.user_id for p, _ in services().accounts.directory())


def find_session(short_id: str) -> SessionInfo | None:
    if not SESSION_ID.fullmatch(short_id):
        return None
    return next((s for s in company_sessions() if s.sid_hash.startswith(short_id)), None)


def end_session(info: SessionInfo, *, actor: str) -> bool:
    ended = services().sessions.end_by_hash(info.user_id, info.sid_hash)
    # The refresh tokens born in that session end with it (a stolen laptop's apps too).
    current_app.extensions["keycard.records"].revoke_session_grants(info.sid_hash)
    if ended:
        services().audit.record("session.ended", actor=actor, subject=info.login,
                                session=info.sid_hash[:16], user_id=info.user_id)
    return ended


def end_person_sessions(profile: Profile, *, actor: str) -> int:
    ended = services().accounts.end_all_sessions(profile.user_id)
    services().audit.record("sessions.ended", actor=actor, subject=profile.login,
                            sessions=ended, user_id=profile.user_id)
    return ended


def parse_time(text: str | None, *, end: bool = False) -> float | None:
    """``YYYY-MM-DD`` (a whole UTC day: its start, or with ``end`` its last millisecond)
    or an ISO datetime (UTC unless it names an offset) → epoch seconds."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            start = datetime(day.year, day.month, day.day, tzinfo=UTC)
            return (start + timedelta(days=1)).timestamp() - 0.001 if end else start.timestamp()
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a date (YYYY-MM-DD) or ISO date-time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def audit_events(args: Mapping[str, str], limit: int = AUDIT_LIMIT) -> list[dict[str, Any]]:
    """The audit trail filtered by ``person``, ``event``, ``since``, ``until`` (ValueError)."""
    return services().audit.query(
        person=args.get("person") or None, event=args.get("event") or None,
        since=parse_time(args.get("since")), until=parse_time(args.get("until"), end=True),
        limit=limit,
    )


def utc(ts: float | int | None) -> str:
    if not ts:
        return "never"
    return datetime.fromtimestamp(float(ts), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


# -- the console -----------------------------------------------------------------------------


@bp.before_request
def require_admin() -> Response | None:
    """Every console page: anonymous → sign-in (then back here); non-admin → 403."""
    if not current_user.is_authenticated:
        return login_manager.unauthorized()  # type: ignore[no-any-return]
    if not current_user.is_admin:
        abort(403, "The admin console is for Keycard administrators (the admin role).")
    return None


@bp.context_processor
def helpers() -> dict[str, Any]:
    return {"utc": utc}


def _actor() -> str:
    return str(current_user.login)


def _see_other(endpoint: str, **values: Any) -> Response:
    return redirect(url_for(endpoint, **values), code=303)  # RFC 9700 §4.12: never 307


@bp.get("/")
@bp.get("")  # registered first, so url_for builds /admin
def index() -> Response:
    return redirect(url_for("admin.rules"))


def _rules_page(error: str = "", preview: dict[str, Any] | None = None,
                status: int = 200) -> tuple[str, int]:
    people = services().accounts.directory()
    views = [(rule, rule_view(rule, people)) for rule in services().rules.all()]
    page = render_template("admin/rules.html", rules=views, error=error, preview=preview,
                           form=request.form, people_count=len(people))
    return page, status


@bp.get("/rules")
def rules() -> tuple[str, int]:
    return _rules_page()


@bp.post("/rules")
def add() -> Any:
    """Add a rule, or (the Preview button) only show who it would match."""
    target, roles = request.form.get("target", ""), request.form.get("roles", "")
    try:
        if request.form.get("action") == "preview":
            kind, value, label = resolve_target(target)
            rule = Rule(kind, value, split_roles(roles) if roles.strip() else (), label)
            logins = matching_logins(rule, services().accounts.directory())
            preview = {"target": rule_label(rule), "roles": list(rule.roles),
                       "matches": len(logins), "logins": logins}
            return _rules_page(preview=preview)
        rule = add_rule(target, roles, actor=_actor())
    except RuleError as exc:
        return _rules_page(error=str(exc), status=400)
    flash(f"Rule saved: {rule_label(rule)} → {', '.join(rule.roles)}.")
    return _see_other("admin.rules")


@bp.post("/rules/remove")
def remove() -> Any:
    kind, target = request.form.get("kind", ""), request.form.get("target", "")
    rule = next((r for r in services().rules.all() if (r.kind, r.target) == (kind, target)), None)
    if rule is None:
        return _rules_page(error="That rule no longer exists.", status=404)
    remove_rule(rule, (), actor=_actor())
    flash(f"Rule removed: {rule_label(rule)}.")
    return _see_other("admin.rules")


@bp.post("/rules/apply")
def apply() -> Response:
    changed = services().accounts.apply_rules_now(actor=_actor())
    people = "person's" if changed == 1 else "people's"
    flash(f"Rules applied: {changed} {people} roles changed in their live sessions.")
    return _see_other("admin.rules")


@bp.get("/people")
def people() -> str:
    rows = [person_view(p, last) for p, last in services().accounts.directory()]
    return render_template("admin/people.html", people=rows)


def _person_or_404(login: str) -> Profile:
    profile = services().accounts.find_by_login(login)
    if profile is None:
        abort(404, f"Nobody with the login {login!r} has signed in to Keycard.")
    return profile


@bp.get("/people/<login>")
def person(login: str) -> str:
    profile = _person_or_404(login)
    last = next((t for p, t in services().accounts.directory() if p.user_id == profile.user_id), 0)
    return render_template(
        "admin/person.html", profile=profile, last_sign_in=last, roles=explain_roles(profile),
        sessions=services().sessions.list_for_user(profile.user_id),
    )


@bp.post("/people/<login>/sessions/end")
def end_all(login: str) -> Response:
    profile = _person_or_404(login)
    ended = end_person_sessions(profile, actor=_actor())
    flash(f"Ended {ended} session{'' if ended == 1 else 's'} of @{profile.login}.")
    return redirect(safe_next(request.form.get("next"), url_for("admin.sessions")), code=303)


@bp.get("/sessions")
def sessions() -> str:
    return render_template("admin/sessions.html", sessions=company_sessions())


@bp.post("/sessions/<short_id>/end")
def end_one(short_id: str) -> Response:
    info = find_session(short_id)
    if info is None:
        abort(404, "That session has already ended.")
    end_session(info, actor=_actor())
    flash(f"Ended a session of @{info.login}.")
    return redirect(safe_next(request.form.get("next"), url_for("admin.sessions")), code=303)


@bp.get("/audit")
def audit() -> Any:
    error, events = "", []
    try:
        events = audit_events(request.args)
    except ValueError as exc:
        error = str(exc)
    page = render_template("admin/audit.html", events=events, error=error, filters=request.args,
                           limit=AUDIT_LIMIT)
    return page, 400 if error else 200
