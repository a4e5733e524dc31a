"""The ``sso`` command: a Flask CLI group (``flask --app app ...`` works the same)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import click
from flask import Flask
from flask.cli import FlaskGroup, with_appcontext

from sso.services import services


def _create_app() -> Flask:
    from sso import create_app
    from sso.config import ConfigError

    try:
        return create_app()
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)


def json_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(func)


def emit(data: Any, as_json: bool, text: Callable[[], None]) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        text()


@click.group("sessions", help="List and end browser sessions.")
def sessions_group() -> None:
    pass


def _profile_or_exit(login: str) -> Any:
    profile = services().accounts.find_by_login(login)
    if profile is None:
        raise click.ClickException(f"no user {login!r} has signed in to Keycard yet")
    return profile


@sessions_group.command("list")
@click.option("--user", "login", required=True, help="GitHub login of the person.")
@json_option
@with_appcontext
def sessions_list(login: str, as_json: bool) -> None:
    profile = _profile_or_exit(login)
    rows = [s.as_dict() for s in services().sessions.list_for_user(profile.user_id)]

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
    profile = _profile_or_exit(login)
    ended = services().sessions.end_user_sessions(profile.user_id)
    services().audit.record("sessions.ended", actor="cli", subject=profile.login, sessions=ended)
    emit({"user": profile.login, "ended": ended}, as_json,
         lambda: click.echo(f"Ended {ended} session(s) of {profile.login}."))


@click.command("dev", help="Run Keycard with a development GitHub upstream (no account needed).")
@click.option("--port", default=None, type=int, help="Keycard port (default: from SSO_ISSUER).")
@click.option("--upstream-port", default=5001, show_default=True, type=int)
def dev_command(port: int | None, upstream_port: int) -> None:
    from sso.dev import run_dev

    sys.exit(run_dev(port=port, upstream_port=upstream_port))


def init_app(app: Flask) -> None:
    app.cli.add_command(sessions_group)


def main() -> None:
    cli = FlaskGroup(create_app=_create_app, add_default_commands=True, load_dotenv=True,
                     help="Keycard single sign-on.")
    cli.add_command(dev_command)
    cli.main(prog_name="sso")
