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

from flask import (
    Blueprint,
    abort,
    flash,
    make_response,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_login import current_user
from werkzeug.wrappers import Response

from sso.accounts import Profile
from sso.admin.audit_view import present
from sso.admin.service import (
    AUDIT_LIMIT,
    UpstreamLookupError,
    matching_logins,
    split_lines,
    split_roles,
    split_roles_or_none,
    utc,
)
from sso.crypto import hash_secret
from sso.login.users import login_manager
from sso.oidc.clients import DEVICE_CODE_GRANT, Client, ClientError
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
                status: int = 200, errors: dict[str, str] | None = None,
                warnings: list[str] | None = None) -> tuple[str, int]:
    people = registry().accounts.directory()
    views = [(rule, registry().admin.rule_view(rule, people)) for rule in registry().rules.all()]
    page = render_template("admin/rules.html", rules=views, error=error, preview=preview,
                           form=request.form, people_count=len(people), errors=errors or {},
                           warnings=warnings or [], known_roles=registry().admin.known_roles())
    return page, status


@bp.get("/rules")
def rules() -> tuple[str, int]:
    return _rules_page()


@bp.post("/rules")
def add() -> Any:
    """Add a rule, or (the Preview button) only show who it would match. Each field's error
    is shown next to it; a rule that would match nobody is only added when confirmed."""
    target, roles = request.form.get("target", ""), request.form.get("roles", "")
    action = request.form.get("action", "add")
    admin = registry().admin
    errors: dict[str, str] = {}
    checked: tuple[str, ...] = ()
    try:
        checked = split_roles(roles) if roles.strip() or action != "preview" else ()
    except RuleError as exc:
        errors["roles"] = str(exc)
    status = 400
    try:
        kind, value, label, note = admin.resolve_target_noted(target)
    except UpstreamLookupError as exc:
        errors["target"], status = str(exc), 503
    except RuleError as exc:
        errors["target"] = str(exc)
    if errors:
        return _rules_page(errors=errors, status=status)
    warnings = admin.rule_warnings(kind, value)
    if action == "preview":
        rule = Rule(kind, value, checked, label)
        logins = matching_logins(rule, registry().accounts.directory())
        preview = {"target": admin.rule_label(rule), "roles": list(rule.roles),
                   "matches": len(logins), "logins": logins, "note": note}
        return _rules_page(preview=preview, warnings=warnings)
    if warnings and action != "confirm":
        return _rules_page(warnings=warnings)  # the form offers "Add anyway"
    try:
        change = admin.add_rule(target, roles, actor=_actor())
    except RuleError as exc:  # the rules changed meanwhile, or GitHub answered otherwise
        return _rules_page(errors={"target": str(exc)}, status=400)
    for text in change.notes:
        flash(f"{text}.")
    rule = change.rule
    flash(f"Rule saved: {admin.rule_label(rule)} → {', '.join(rule.roles)}; "
          f"{change.applied_text()}.")
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
    change = registry().admin.remove_rule(rule, (), actor=_actor()) if rule else None
    if rule is None or change is None:
        return _rules_page(error="That rule no longer exists.", status=404)
    flash(f"Rule removed; {change.applied_text()} ({registry().admin.rule_label(rule)} no "
          f"longer gives {', '.join(rule.roles)}).")
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


# -- apps (OIDC clients) ---------------------------------------------------------------------

GRANT_CHOICES = (("authorization_code", "Sign-in (authorization code)"),
                 ("refresh_token", "Refresh tokens"),
                 ("client_credentials", "Machine identity (client credentials)"),
                 (DEVICE_CODE_GRANT, "Device sign-in (CLI tools)"))
LIST_FIELDS = ("redirect_uris", "post_logout_redirect_uris", "audiences")


def _app_or_404(client_id: str) -> Client:
    client = registry().admin.get_app(client_id)
    if client is None:
        abort(404, "No app has that client id: it may have been deleted.")
    return client


def _form_values(client: Client | None) -> dict[str, Any]:
    """What the app form shows: the stored client, or (after an error) what was typed."""
    if client is None or request.method == "POST":
        form = request.form
        values: dict[str, Any] = {name: form.get(name, "") for name in (
            "name", *LIST_FIELDS, "required_roles", "home_url", "backchannel_logout_uri")}
        values.update(grant_types=form.getlist("grant_types") or
                      (["authorization_code", "refresh_token"] if request.method == "GET"
                       else []),
                      public=form.get("public") == "on", trusted=form.get("trusted") == "on",
                      backchannel_logout_session_required=form.get(
                          "backchannel_logout_session_required") == "on")
        return values
    data = client.to_dict()
    values = {name: "\n".join(data[name]) for name in LIST_FIELDS}
    values.update({name: data[name] or "" for name in ("name", "home_url",
                                                        "backchannel_logout_uri")})
    values.update(required_roles=", ".join(client.required_roles),
                  grant_types=client.grant_types, public=client.public, trusted=client.trusted,
                  backchannel_logout_session_required=client.backchannel_logout_session_required)
    return values


def _fields_from_form() -> dict[str, Any]:
    """The form → client fields; absent checkboxes are ``False`` (a browser omits them)."""
    form = request.form
    try:
        required = list(split_roles_or_none(form.get("required_roles")))
    except RuleError as exc:
        raise ClientError(f"required roles: {exc}") from exc
    return {
        "name": form.get("name", "").strip(),
        **{name: split_lines(form.get(name)) for name in LIST_FIELDS},
        "required_roles": required,
        "grant_types": form.getlist("grant_types"),
        "trusted": form.get("trusted") == "on",
        "home_url": form.get("home_url", "").strip() or None,
        "backchannel_logout_uri": form.get("backchannel_logout_uri", "").strip() or None,
        "backchannel_logout_session_required":
            form.get("backchannel_logout_session_required") == "on",
    }


def _app_form(client: Client | None, error: str = "", status: int = 200) -> tuple[str, int]:
    page = render_template("admin/app_form.html", client=client, values=_form_values(client),
                           error=error, grant_choices=GRANT_CHOICES,
                           known_roles=registry().admin.known_roles())
    return page, status


def _secret_page(client: Client, secret: str, headline: str) -> Response:
    """The one time a client secret is ever shown: never cached, never stored."""
    response = make_response(render_template("admin/app_secret.html", client=client,
                                             secret=secret, headline=headline))
    response.headers["Cache-Control"] = "no-store"
    return response


def _confirm(title: str, message: str, button: str, cancel: str,
             extra: str = "") -> str:
    """A destructive action's confirmation step: a page whose form POSTs to the same URL
    with the CSRF token; works without JavaScript. Unlike :func:`confirm_page` its form
    can carry a choice (``extra``: also revoke the tokens; the key rotation's grace)."""
    return render_template("admin/confirm_app.html", title=title, message=message,
                           button=button, cancel=cancel, extra=extra)


@bp.get("/apps")
def apps() -> str:
    return render_template("admin/apps.html", apps=registry().admin.list_apps())


@bp.route("/apps/new", methods=["GET", "POST"])
def app_new() -> Any:
    if request.method == "GET":
        return _app_form(None)
    try:
        fields = _fields_from_form()
        fields["public"] = request.form.get("public") == "on"
        client, secret = registry().admin.create_app(fields, actor=_actor())
    except ClientError as exc:
        return _app_form(None, error=str(exc), status=400)
    if secret is None:
        flash(f"App {client.name!r} registered (public: no secret, PKCE required).")
        return _see_other("admin.app", client_id=client.client_id)
    return _secret_page(client, secret, f"App {client.name!r} registered")


@bp.route("/apps/<client_id>", methods=["GET", "POST"])
def app(client_id: str) -> Any:
    client = _app_or_404(client_id)
    if request.method == "GET":
        return _app_form(client)
    try:
        updated = registry().admin.update_app(client_id, _fields_from_form(), actor=_actor())
    except ClientError as exc:
        return _app_form(client, error=f"{exc}; nothing was changed.", status=400)
    changed = [k for k in _fields_from_form() if client.to_dict()[k] != updated.to_dict()[k]]
    flash(f"Saved {updated.name!r}: " + (", ".join(k.replace("_", " ") for k in changed)
                                          if changed else "nothing changed") + ".")
    return _see_other("admin.app", client_id=client_id)


@bp.route("/apps/<client_id>/rotate-secret", methods=["GET", "POST"])
def app_rotate_secret(client_id: str) -> Any:
    client = _app_or_404(client_id)
    if client.public:
        abort(404, "A public app has no secret to rotate.")
    if request.method == "GET":
        return _confirm(
            f"Rotate the secret of {client.name}?",
            "A new secret is made and shown once. The old one stops working within seconds: "
            "update the app's configuration straight away.",
            "Rotate secret", url_for("admin.app", client_id=client_id),
            extra="revoke_tokens")
    revoke = request.form.get("revoke_tokens") == "on"
    try:
        secret = registry().admin.rotate_app_secret(client_id, actor=_actor(),
                                                    revoke_tokens=revoke)
    except ClientError as exc:
        abort(404, str(exc))
    return _secret_page(client, secret, f"New secret for {client.name!r}")


@bp.route("/apps/<client_id>/delete", methods=["GET", "POST"])
def app_delete(client_id: str) -> Any:
    client = _app_or_404(client_id)
    if request.method == "GET":
        return _confirm(
            f"Delete {client.name}?",
            "The app can no longer sign anyone in, and every token issued to it ends. "
            "This cannot be undone.", "Delete app", url_for("admin.app", client_id=client_id))
    if registry().admin.delete_app(client_id, actor=_actor()) is None:
        abort(404, "That app has already been deleted.")
    flash(f"Deleted {client.name!r} ({client_id}).")
    return _see_other("admin.apps")


# -- signing keys ---------------------------------------------------------------------------


@bp.get("/keys")
def keys() -> str:
    return render_template("admin/keys.html", keys=registry().admin.signing_keys())


@bp.route("/keys/rotate", methods=["GET", "POST"])
def keys_rotate() -> Any:
    if request.method == "GET":
        return _confirm(
            "Rotate the signing keys?",
            "New keys are published at once and sign new tokens; the old ones stay in JWKS "
            "for the grace period, so tokens already issued keep verifying.",
            "Rotate keys", url_for("admin.keys"), extra="grace")
    try:
        grace = int(request.form.get("grace", "3600"))
        delay = int(request.form.get("publish_delay", "0"))
        kids = registry().admin.rotate_keys(actor=_actor(), grace=grace, publish_delay=delay)
    except ValueError:
        return render_template("admin/confirm_app.html", title="Rotate the signing keys?",
                               message="Grace and publish delay are whole numbers of "
                                       "seconds, 0 or more.", button="Rotate keys",
                               cancel=url_for("admin.keys"), extra="grace",
                               error="Enter whole numbers of seconds, 0 or more."), 400
    flash(f"New signing keys: {', '.join(kids)}.")
    return _see_other("admin.keys")
