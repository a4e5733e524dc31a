"""The ``portal`` blueprint: ``/``, the employee's home page (or the sign-in page)."""

from __future__ import annotations

from flask import Blueprint, render_template
from flask_login import current_user

bp = Blueprint("portal", __name__)


@bp.get("/")
def index() -> str:
    if not current_user.is_authenticated:
        return render_template("portal/signin.html")
    profile = current_user.profile
    teams_by_org: dict[str, list[str]] = {}
    for team in profile.teams:
        org, slug = team.split("/", 1)
        teams_by_org.setdefault(org, []).append(slug)
    return render_template("portal/index.html", profile=profile, teams_by_org=teams_by_org)
