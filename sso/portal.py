"""The ``portal`` blueprint: ``/``, the employee's home page (or the sign-in page)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, redirect, render_template, url_for
from flask_login import current_user, login_required
from werkzeug.wrappers import Response

from sso.registry import registry

bp = Blueprint("portal", __name__)


def _apps(profile: Any) -> list[Any]:
    """Registered apps with a home page that this person's roles let them open."""
    clients = registry().clients.list()
    roles = set(profile.roles)
    return sorted(
        (c for c in clients
         if c.home_url and (not c.required_roles or roles & set(c.required_roles))),
        key=lambda c: c.name.lower(),
    )


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
            consents.append({"client": client, "scopes": record["scopes"], "at": record["at"]})
    return render_template("portal/index.html", profile=profile, teams_by_org=teams_by_org,
                           apps=_apps(profile), consents=consents)


@bp.post("/consents/<client_id>/revoke")
@login_required
def revoke_consent(client_id: str) -> Response:
    """Withdraw consent: the app must ask again, and its tokens for this person end now."""
    profile = current_user.profile
    records = registry().records
    forgot = records.forget_consent(profile.user_id, client_id)
    ended = records.revoke_client_grants(profile.user_id, client_id)
    if forgot:
        registry().audit.record("oauth.consent_revoked", actor=profile.login,
                                subject=profile.login, client=client_id, token_grants=ended)
    return redirect(url_for("portal.index"), code=303)
