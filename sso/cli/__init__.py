"""The ``sso`` command: a Flask CLI group (``flask --app app ...`` works the same).

One module per command group; each prints text by default and JSON with ``--json``.
The groups that need an app are registered on it by :mod:`sso.cli.groups` (so they
work under ``flask --app app`` too); ``dev`` and ``login`` need none and live here.
"""

from __future__ import annotations

import sys

import click
from flask import Flask
from flask.cli import FlaskGroup

from sso.cli.login import login_command


def _create_app() -> Flask:
    from sso import create_app
    from sso.config import ConfigError

    try:
        return create_app()
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)


@click.command("dev", help="Run Keycard with a development GitHub upstream (no account needed).")
@click.option("--port", default=None, type=int, help="Keycard port (default: from SSO_ISSUER).")
@click.option("--upstream-port", default=5001, show_default=True, type=int)
@click.option("--demo-port", default=5002, show_default=True, type=int)
def dev_command(port: int | None, upstream_port: int, demo_port: int) -> None:
    from sso.dev import run_dev

    sys.exit(run_dev(port=port, upstream_port=upstream_port, demo_port=demo_port))


def main() -> None:
    cli = FlaskGroup(create_app=_create_app, add_default_commands=True, load_dotenv=True,
                     help="Keycard single sign-on.")
    cli.add_command(dev_command)
    cli.add_command(login_command)  # a pure HTTP client: no app, no Redis needed
    cli.main(prog_name="sso")
