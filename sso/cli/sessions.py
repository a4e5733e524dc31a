"""``sso sessions``: list and end browser sessions."""

from __future__ import annotations

import click
from flask.cli import with_appcontext

from sso.cli.common import emit, json_option, profile_or_exit
from sso.cli.output import table, when
from sso.registry import registry


@click.group("sessions", help="List and end browser sessions.")
def sessions_group() -> None:
    pass


@sessions_group.command("list", help="Live sessions, newest first: everyone's, or one person's.")
@click.option("--user", "login", help="GitHub login of the person (default: everyone).")
@json_option
@with_appcontext
def sessions_list(login: str | None, as_json: bool) -> None:
    if login:
        profile = profile_or_exit(login)
        found = sorted(registry().sessions.list_for_user(profile.user_id),
                       key=lambda s: s.created, reverse=True)
    else:
        found = registry().admin.company_sessions()  # what /admin/sessions lists
    rows = [s.as_dict() for s in found]

    def text() -> None:
        if not rows:
            click.echo(f"{login} has no active session." if login else "No active sessions.")
            return
        table(["ID", "PERSON", "STARTED (UTC)", "ENDS BY (UTC)", "IP", "USER AGENT"],
              [[r["id"], r["login"] or r["user_id"], when(r["created"]),
                when(r["absolute_expiry"]), r["ip"] or "-", r["user_agent"] or "-"]
               for r in rows])

    emit(rows, as_json, text)


@sessions_group.command("end", help="End every session of one person (sign out everywhere).")
@click.option("--user", "login", required=True, help="GitHub login of the person.")
@json_option
@with_appcontext
def sessions_end(login: str, as_json: bool) -> None:
    profile = profile_or_exit(login)
    ended = registry().accounts.end_all_sessions(profile.user_id)
    registry().audit.record("sessions.ended", actor="cli", subject=profile.login, sessions=ended)
    emit({"user": profile.login, "ended": ended}, as_json,
         lambda: click.echo(f"Ended {ended} session(s) of {profile.login}."))
