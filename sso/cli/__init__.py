"""The ``sso`` command: Keycard's own command, built on Flask's CLI group (so
``flask --app app ...`` works the same).

One module per command group; each prints text by default and JSON with ``--json``.
The groups that need an app are registered on it by :mod:`sso.cli.groups` (so they
work under ``flask --app app`` too); ``dev``, ``login`` and ``logout`` need none and live
here. Flask's own options and commands (``-A/--app``, ``-e/--env-file``, ``--debug``,
``run``, ``shell``, ``routes``) keep working but are not advertised: a person reading
``sso --help`` sees Keycard, not Flask.
"""

from __future__ import annotations

import copy
import platform
import sys
from importlib import metadata
from typing import Any, TypeVar

import click
from flask import Flask
from flask.cli import FlaskGroup, routes_command, run_command, shell_command

from sso.cli.login import login_command, logout_command

_Hideable = TypeVar("_Hideable", click.Option, click.Command)


def _create_app() -> Flask:
    from sso import create_app
    from sso.config import ConfigError

    try:
        return create_app()
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"


def version_text(verbose: bool) -> str:
    """Keycard's version; with ``verbose``, what a bug report also needs."""
    lines = [f"Keycard {_version('keycard')}"]
    if verbose:
        lines += [f"Python {platform.python_version()}", f"Flask {_version('flask')}",
                  f"Werkzeug {_version('werkzeug')}", f"Authlib {_version('authlib')}",
                  f"redis-py {_version('redis')}"]
    return "\n".join(lines)


def _hidden(thing: _Hideable) -> _Hideable:
    """A copy that works but is left out of ``--help`` (Flask's objects stay untouched)."""
    twin = copy.copy(thing)
    twin.hidden = True
    return twin


def _root(ctx: click.Context, version: bool, verbose: bool) -> None:
    if version:
        click.echo(version_text(verbose))
        ctx.exit()
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


class KeycardGroup(FlaskGroup):
    """Flask's group with Flask's options and default commands hidden, and Keycard's
    ``--version`` (``-v`` adds Python and library versions)."""

    def __init__(self, **extra: Any) -> None:
        super().__init__(
            create_app=_create_app, add_default_commands=False, add_version_option=False,
            load_dotenv=True, invoke_without_command=True, no_args_is_help=True,
            callback=click.pass_context(_root), help="Keycard single sign-on.", **extra)
        self.params = [_hidden(p) if isinstance(p, click.Option) else p
                       for p in self.params] + [
            click.Option(["--version"], is_flag=True, help="Print Keycard's version and exit."),
            click.Option(["-v", "--verbose"], is_flag=True,
                         help="With --version: also the Python and library versions."),
        ]
        for command in (run_command, shell_command, routes_command):
            self.add_command(_hidden(command))


@click.command("dev", short_help="Run Keycard on this machine with a fake GitHub.",
               help="Run Keycard with a development GitHub upstream (no account needed).")
@click.option("--port", default=None, type=int, help="Keycard port (default: from SSO_ISSUER).")
@click.option("--upstream-port", default=5001, show_default=True, type=int,
              help="Port of the development GitHub.")
@click.option("--demo-port", default=5002, show_default=True, type=int,
              help="Port of the demo app that signs in through Keycard.")
def dev_command(port: int | None, upstream_port: int, demo_port: int) -> None:
    from sso.dev import run_dev

    sys.exit(run_dev(port=port, upstream_port=upstream_port, demo_port=demo_port))


def build_cli() -> KeycardGroup:
    cli = KeycardGroup()
    cli.add_command(dev_command)
    cli.add_command(login_command)  # pure HTTP clients: no app, no Redis needed
    cli.add_command(logout_command)
    return cli


def main() -> None:
    build_cli().main(prog_name="sso")
