"""The ``admin`` blueprint: the console under ``/admin`` (rules, people, sessions, audit).

Views are thin: every operation is the admin service's (:mod:`sso.admin.service`),
which the JSON API (:mod:`sso.admin.api`) calls too, so both surfaces do exactly the
same thing and record the same audit events.

Destructive actions take two steps without JavaScript: the list's button is a GET form
leading to a confirmation page (:func:`confirm_page`, ``admin/confirm.html``) whose
button sends the POST; the POST endpoint itself is unchanged (and still CSRF-checked).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from flask import Blueprint, abort, flash, redirect, render_template, request, session, url_for
from flask_login import current_user
from werkzeug.wrappers import Response

from sso.accounts import Profile
from sso.admin.audit_view import present
from sso.admin.service import AUDIT_LIMIT, matching_logins, split_roles, utc
from sso.crypto import hash_secret
from sso.login.users import login_manager
from sso.registry import registry
from sso.roles import Rule
from sso.rules_store import RuleError
from sso.sessions import ServerSession
from sso.useragent import describe as describe_device
from sso.web.redirects import safe_next

bp = Blueprint("admin", __name__, url_prefix="/admin")

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
    return {"utc": utc, "device": describe_device, "this_session": _this_session()}


def _this_session() -> str:
    """The hash of this browser's session, to mark it ("this browser") in lists."""
    return hash_secret(session.sid) if isinstance(session, ServerSession) and session.sid else ""


def confirm_page(*, title: str, question: str, action: str, button: str, cancel: str,
                 fields: Mapping[str, str] | None = None, consequences: Sequence[str] = (),
                 warning: str = "") -> str:
    """The confirmation step of a destructive action, for any console page to reuse.

    A GET view answers with this page; its one form POSTs ``fields`` (plus the CSRF
    token) to ``action`` with a danger button labelled ``button``; "Cancel" links to
    ``cancel``. ``consequences`` are listed as what will happen; ``warning`` is shown
    first (e.g. "this signs you out")."""
    return render_template("admin/confirm.html", title=title, question=question,
                           action=action, button=button, cancel=cancel,
                           fields=dict(fields or {}), consequences=list(consequences),
                           warning=warning)


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
    people = registry().accounts.directory()
    views = [(rule, registry().admin.rule_view(rule, people)) for rule in registry().rules.all()]
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
            kind, value, label = registry().admin.resolve_target(target)
            rule = Rule(kind, value, split_roles(roles) if roles.strip() else (), label)
            logins = matching_logins(rule, registry().accounts.directory())
            preview = {"target": registry().admin.rule_label(rule), "roles": list(rule.roles),
                       "matches": len(logins), "logins": logins}
            return _rules_page(preview=preview)
        rule = registry().admin.add_rule(target, roles, actor=_actor())
    except RuleError as exc:
        return _rules_page(error=str(exc), status=400)
    flash(f"Rule saved: {registry().admin.rule_label(rule)} → {', '.join(rule.roles)}.")
    return _see_other("admin.rules")


def _find_rule(kind: str, target: str) -> Rule | None:
    return next((r for r in registry().rules.all() if (r.kind, r.target) == (kind, target)), None)


@bp.get("/rules/remove")
def confirm_remove() -> Any:
    kind, target = request.args.get("kind", ""), request.args.get("target", "")
    rule = _find_rule(kind, target)
    if rule is None:
        return _rules_page(error="That rule no longer exists.", status=404)
    label = registry().admin.rule_label(rule)
    logins = matching_logins(rule, registry().accounts.directory())
    who = f"{len(logins)} {'person' if len(logins) == 1 else 'people'}"
    return confirm_page(
        title="Remove rule", question=f"Remove the rule {label} → {', '.join(rule.roles)}?",
        action=url_for("admin.remove"), button="Remove rule", cancel=url_for("admin.rules"),
        fields={"kind": rule.kind, "target": rule.target},
        consequences=[f"It matches {who} who have signed in"
                      + (f": {', '.join(logins)}." if logins else "."),
                      "They lose these roles unless another rule grants them."],
    )


@bp.post("/rules/remove")
def remove() -> Any:
    kind, target = request.form.get("kind", ""), request.form.get("target", "")
    rule = _find_rule(kind, target)
    if rule is None:
        return _rules_page(error="That rule no longer exists.", status=404)
    registry().admin.remove_rule(rule, (), actor=_actor())
    flash(f"Rule removed: {registry().admin.rule_label(rule)}.")
    return _see_other("admin.rules")


@bp.post("/rules/apply")
def apply() -> Response:
    changed = registry().accounts.apply_rules_now(actor=_actor())
    people = "person's" if changed == 1 else "people's"
    flash(f"Rules applied: {changed} {people} roles changed in their live sessions.")
    return _see_other("admin.rules")


@bp.get("/people")
def people() -> str:
    query = request.args.get("q", "").strip()
    page = registry().admin.people_page(query, request.args.get("page"))
    return render_template("admin/people.html", people=page.items, page=page, query=query)


def _person_or_404(login: str) -> Profile:
    profile = registry().accounts.find_by_login(login)
    if profile is None:
        abort(404, f"Nobody with the login {login!r} has signed in to Keycard.")
    return profile


@bp.get("/people/<login>")
def person(login: str) -> str:
    profile = _person_or_404(login)
    last = next((t for p, t in registry().accounts.directory() if p.user_id == profile.user_id), 0)
    return render_template(
        "admin/person.html", profile=profile, last_sign_in=last,
        roles=registry().admin.explain_roles(profile),
        sessions=registry().sessions.list_for_user(profile.user_id),
    )


@bp.get("/people/<login>/sessions/end")
def confirm_end_all(login: str) -> str:
    profile = _person_or_404(login)
    back = safe_next(request.args.get("next"), url_for("admin.person", login=profile.login))
    live = registry().sessions.list_for_user(profile.user_id)
    mine, count = any(s.sid_hash == _this_session() for s in live), len(live)
    return confirm_page(
        title="End sessions", question=f"End {'the' if count == 1 else 'all'} {count} "
        f"session{'' if count == 1 else 's'} of @{profile.login}?",
        action=url_for("admin.end_all", login=profile.login),
        button="End all sessions", cancel=back, fields={"next": back},
        consequences=[f"Every browser @{profile.login} is signed in with is signed out at its "
                      "next request, and the tokens issued in those sessions stop working."],
        warning="This includes this browser: you will be signed out." if mine else "",
    )


@bp.post("/people/<login>/sessions/end")
def end_all(login: str) -> Response:
    profile = _person_or_404(login)
    ended = registry().admin.end_person_sessions(profile, actor=_actor())
    flash(f"Ended {ended} session{'' if ended == 1 else 's'} of @{profile.login}.")
    return redirect(safe_next(request.form.get("next"), url_for("admin.sessions")), code=303)


@bp.get("/sessions")
def sessions() -> str:
    query = request.args.get("q", "").strip()
    page = registry().admin.sessions_page(query, request.args.get("page"))
    return render_template("admin/sessions.html", sessions=page.items, page=page, query=query)


@bp.get("/sessions/<short_id>/end")
def confirm_end_one(short_id: str) -> str:
    info = registry().admin.find_session(short_id)
    if info is None:
        abort(404, "That session has already ended.")
    back = safe_next(request.args.get("next"), url_for("admin.sessions"))
    return confirm_page(
        title="End session", question=f"End this session of @{info.login}?",
        action=url_for("admin.end_one", short_id=short_id), button="End session",
        cancel=back, fields={"next": back},
        consequences=[f"{describe_device(info.user_agent)} at {info.ip or 'an unknown address'}"
                      f", signed in {utc(info.created)}, is signed out at its next request.",
                      "Tokens issued in this session stop working."],
        warning=("This is this browser's session: you will be signed out."
                 if info.sid_hash == _this_session() else ""),
    )


@bp.post("/sessions/<short_id>/end")
def end_one(short_id: str) -> Response:
    info = registry().admin.find_session(short_id)
    if info is None:
        abort(404, "That session has already ended.")
    registry().admin.end_session(info, actor=_actor())
    flash(f"Ended a session of @{info.login}.")
    return redirect(safe_next(request.form.get("next"), url_for("admin.sessions")), code=303)


@bp.get("/audit")
def audit() -> Any:
    error, events = "", []
    try:
        events = registry().admin.audit_events(request.args, AUDIT_LIMIT + 1)
    except ValueError as exc:
        error = str(exc)
    older = ""
    if len(events) > AUDIT_LIMIT:  # one more than shown: there is an older page
        events = events[:AUDIT_LIMIT]
        older = events[-1]["id"]
    apps = {c.client_id: c.name for c in registry().clients.list()}
    page = render_template("admin/audit.html", events=[present(e, apps) for e in events],
                           error=error, filters=request.args, limit=AUDIT_LIMIT, older=older,
                           newest={k: v for k, v in request.args.items() if k != "before"},
                           apps=sorted(apps.items(), key=lambda item: item[1].lower()))
    return page, 400 if error else 200


@bp.get("/webhooks")
def webhooks() -> str:
    services = registry()
    return render_template("admin/webhooks.html", deliveries=services.hooks.recent(50),
                           enabled=services.settings.github_webhook_secret is not None,
                           hook_url=f"{services.settings.issuer}/hooks/github")
