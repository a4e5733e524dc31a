"""Helpers shared by the command groups."""

from __future__ import annotations

import getpass
import json
from collections.abc import Callable
from typing import Any

import click

from sso.accounts import Profile
from sso.registry import registry


def json_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(func)


def emit(data: Any, as_json: bool, text: Callable[[], None]) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        text()



def actor() -> str:
    """Who ran the command, for the audit trail."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def profile_or_exit(login: str) -> Profile:
    profile = registry().accounts.find_by_login(login.lstrip("@"))
    if profile is None:
        raise click.ClickException(f"no user {login!r} has signed in to Keycard yet")
    return profile
