"""The ``portal`` blueprint: ``/``, the employee's home page (or the sign-in page), and the
actions on it: withdrawing an app's access, signing out one of their own sessions.

Every action ends with a message on the page it returns to (a flash), or on the signed-out
page when it ended this browser's session.
"""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, flash, redirect, render_template, request, session, url_for
from flask_login import current_user, login_required
from werkzeug.wrappers import Response

from sso.crypto import hash_secret
from sso.oidc.scopes import scope_words
from sso.registry import registry
from sso.sessions import ServerSession, SessionInfo, end_browser_session
from sso.useragent import describe

bp = Blueprint("portal", __name__)

SHORT_ID = re.compile(r"[A-Za-z0-9_-]{16}")  # the start of the base64url hash of its id


def _apps(profile: Any) -> list[Any]:
    """Registered apps with a home page that this person's roles let them open."""
    clients = registry().clients.list()
    roles = set(profile.roles)
    return sorted(
        (c for c in clients
         if c.home_url and (not c.required_roles or roles & set(c.required_roles))),
        key=lambda c: c.name.lower(),
    )


def _this_session_hash() -> str | None:
    sid = session.sid if isinstance(session, ServerSession) else None
    return hash_secret(sid) if sid else None


def _own_sessions(user_id: str) -> list[dict[str, Any]]:
    """This person's live sessions, this browser's first, then the most recent."""
    here = _this_session_hash()
    rows = [{"id": s.sid_hash[:16], "info": s, "device": describe(s.user_agent),
             "this_browser": s.sid_hash == here}
            for s in registry().sessions.list_for_user(user_id)]
    return sorted(rows, key=lambda r: (not r["this_browser"], -r["info"].created))


@bp.get("/favicon.ico")
def favicon() -> Response:
    """Browsers ask for /favicon.ico whatever the page says: point them at the SVG."""
    return redirect(url_for("static", filename="favicon.svg"), code=301)


@bp.get("/")
def index() -> str:
    if not current_user.is_authenticated:
        return render_template("portal/signin.html")
    profile = current_user.profile
    teams_by_org: dict[str, list[str]] = {}
    for team in profile.teams:
        org, slug = team.split("/", 1)
        teams_by_org.setdefault(org, []).append(slug)
    reg = registry()
    consents = []
    for client_id, record in sorted(reg.records.consents(profile.user_id).items()):
        client = reg.clients.get(client_id)
        if client is not None:
            consents.append({"client": client, "scopes": scope_words(record["scopes"]),
                             "at": record.get("at")})
    return render_template("portal/index.html", profile=profile, teams_by_org=teams_by_org,
                           apps=_apps(profile), consents=consents,
                           sessions=_own_sessions(profile.user_id))


@bp.post("/consents/<client_id>/revoke")
@login_required
def revoke_consent(client_id: str) -> Response:
    """Withdraw consent: the app must ask again, and its tokens for this person end now."""
    profile = current_user.profile
    reg = registry()
    client = reg.clients.get(client_id)
    name = client.name if client is not None else "That app"
    forgot = reg.records.forget_consent(profile.user_id, client_id)
    ended = reg.records.revoke_client_grants(profile.user_id, client_id)
    if forgot:
        reg.audit.record("oauth.consent_revoked", actor=profile.login,
                         subject=profile.login, client=client_id, token_grants=ended)
        flash(f"{name} no longer has access to your account: it was signed out, and it "
              "will ask you again before using your account.")
    else:
        flash(f"{name} had no access to withdraw.")
    return redirect(url_for("portal.index"), code=303)


@bp.post("/sessions/<short_id>/end")
@login_required
def end_session(short_id: str) -> Response:
    """Sign out one of this person's own sessions. Through the session store, like every
    sign-out: the tokens born in that session end, and the apps it reached are told."""
    profile = current_user.profile
    reg = registry()
    found: SessionInfo | None = None
    if SHORT_ID.fullmatch(short_id):
        found = next((s for s in reg.sessions.list_for_user(profile.user_id)
                      if s.sid_hash.startswith(short_id)), None)
    if found is None:
        flash("That session had already ended.")
        return redirect(url_for("portal.index"), code=303)
    if found.sid_hash == _this_session_hash():
        end_browser_session(reg.sessions, reg.audit, reason="user",
                            ip=request.remote_addr or "")
        return redirect(url_for("auth.signed_out"), code=303)
    if reg.sessions.end_by_hash(profile.user_id, found.sid_hash):
        reg.audit.record("session.ended", actor=profile.login, subject=profile.login,
                         session=short_id, user_id=profile.user_id)
    flash(f"Signed out {describe(found.user_agent)} ({found.ip or 'unknown address'}).")
    return redirect(url_for("portal.index"), code=303)
