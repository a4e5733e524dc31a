"""``sso keys``: make the first token-signing keys, list them and rotate them.

Production never makes keys unasked (a data loss would otherwise silently replace
them, and every token issued before would stop verifying): ``sso keys init`` is the
operator's confirmation, once at installation and again after Redis lost its data."""

from __future__ import annotations

from typing import Any

import click
from flask.cli import with_appcontext

from sso.cli.common import actor, emit, json_option
from sso.cli.output import table, when
from sso.oidc.keys import KeyRing
from sso.registry import registry


def keyring() -> KeyRing:
    return registry().keys


def _table(rows: list[dict[str, Any]]) -> None:
    if not rows:
        click.echo("No signing keys yet: run `sso keys init` (development makes them when "
                   "Keycard first signs).")
        return
    table(["KEY ID", "ALG", "STATE", "CREATED (UTC)", "RETIRES (UTC)"],
          [[r["kid"], r["alg"], r["state"], when(r["created"]), when(r["retire_at"])]
           for r in rows])


@click.group("keys", help="Token-signing keys (published at the JWKS endpoint).")
def keys_group() -> None:
    pass


@keys_group.command("list", help="Active, next and retired keys still in JWKS.")
@json_option
@with_appcontext
def keys_list(as_json: bool) -> None:
    rows = registry().admin.signing_keys()
    emit(rows, as_json, lambda: _table(rows))


@keys_group.command("init", short_help="Make the signing keys that are missing.",
                    help="Make the signing keys that are missing (first installation, "
                                 "or after Redis lost its data); does nothing when all exist.")
@json_option
@with_appcontext
def keys_init(as_json: bool) -> None:
    ring = keyring()
    kids = ring.ensure(confirmed=True)
    if kids:
        registry().audit.record("keys.initialised", actor=actor(), new_kids=kids)
    rows = ring.list()

    def text() -> None:
        click.echo(f"New signing keys: {', '.join(kids)}" if kids
                   else "Signing keys already exist; nothing made.")
        _table(rows)

    emit({"new": kids, "keys": rows}, as_json, text)


@keys_group.command("rotate", help="Start new signing keys; old ones stay in JWKS for --grace.")
@click.option("--grace", default=3600, show_default=True, type=click.IntRange(min=0),
              help="Seconds the old public keys stay published; keep it above the longest "
                   "token lifetime so tokens already issued keep verifying.")
@click.option("--publish-delay", default=0, show_default=True, type=click.IntRange(min=0),
              help="Seconds the new keys are published before they sign, so relying parties "
                   "caching JWKS see them first.")
@json_option
@with_appcontext
def keys_rotate(grace: int, publish_delay: int, as_json: bool) -> None:
    kids = registry().admin.rotate_keys(actor=actor(), grace=grace, publish_delay=publish_delay)
    rows = registry().admin.signing_keys()

    def text() -> None:
        click.echo(f"New signing keys: {', '.join(kids)}")
        _table(rows)

    emit({"new": kids, "keys": rows}, as_json, text)
