"""``sso users prune``: forget people who have not signed in for ``SSO_FORGET_AFTER_DAYS``."""

from __future__ import annotations

import time

import click
from flask.cli import with_appcontext

from sso.cli.common import actor, emit, json_option
from sso.registry import registry


@click.group("users", help="People who have signed in to Keycard.")
def users_group() -> None:
    pass


@users_group.command("prune", short_help="Forget people gone longer than SSO_FORGET_AFTER_DAYS.",
                     help="Forget people whose last sign-in is older than "
                                   "SSO_FORGET_AFTER_DAYS (Keycard also does it hourly).")
@click.option("--dry-run", is_flag=True, help="Only list who would be forgotten.")
@json_option
@with_appcontext
def users_prune(dry_run: bool, as_json: bool) -> None:
    forgetting = registry().forgetting
    if forgetting.after_days <= 0:
        raise click.ClickException("SSO_FORGET_AFTER_DAYS=0: Keycard never forgets anyone.")
    gone = forgetting.run(dry_run=dry_run, actor=actor())
    verb = "would forget" if dry_run else "forgot"

    def text() -> None:
        click.echo(f"{verb.capitalize()} {len(gone)} person(s) with no sign-in for "
                   f"{forgetting.after_days} days.")
        for person in gone:
            when = time.strftime("%Y-%m-%d", time.gmtime(person.last_sign_in))
            click.echo(f"  {person.user_id:>12}  {', '.join(person.logins) or '-':30}  "
                       f"last sign-in {when}")

    emit({"dry_run": dry_run, "after_days": forgetting.after_days,
          "forgotten": [p.as_dict() for p in gone]}, as_json, text)
