"""``sso sessions``: list and end browser sessions."""

from __future__ import annotations

import click
from flask.cli import with_appcontext

from sso.cli.common import emit, json_option, profile_or_exit
from sso.registry import registry


@click.group("sessions", help="List and end browser sessions.")
def sessions_group() -> None:
    pass


@sessions_group.command("list")
@click.option("--user", "login", required=True, help="GitHub login of the person.")
@json_option
@with_appcontext
def sessions_list(login: str, as_json: bool) -> None:
    profile = profile_or_exit(login)
    rows = [s.as_dict() for s in registry().sessions.list_for_user(profile.user_id)]

    def text() -> None:
        if not rows:
            click.echo(f"{login} has no active session.")
        for row in rows:
            click.echo(f"{row['id']}  {row['login']}  from {row['ip'] or '-'}  {row['user_agent']}")

    emit(rows, as_json, text)


@sessions_group.command("end")
@click.option("--user", "login", required=True, help="GitHub login of the person.")
@json_option
@with_appcontext
def sessions_end(login: str, as_json: bool) -> None:
    profile = profile_or_exit(login)
    ended = registry().accounts.end_all_sessions(profile.user_id)
    registry().audit.record("sessions.ended", actor="cli", subject=profile.login, sessions=ended)
    emit({"user": profile.login, "ended": ended}, as_json,
         lambda: click.echo(f"Ended {ended} session(s) of {profile.login}."))


