"""``sso doctor``: is the Redis Keycard is configured with fit to hold its state?"""

from __future__ import annotations

import sys

import click
import redis
from flask.cli import with_appcontext

from sso.cli.common import emit, json_option
from sso.crypto import SIGNING_ALGS
from sso.redis_checks import Check, data_checks, failing, server_checks
from sso.registry import registry
from sso.storage import StorageUnavailable


def _data() -> list[Check]:
    reg = registry()
    try:
        active = [k["alg"] for k in reg.keys.list() if k["state"] == "active"]
        return data_checks(active_key_algs=active, algorithms=SIGNING_ALGS,
                           clients=len(reg.clients.list()), rules=len(reg.rules.all()),
                           people=reg.accounts.directory_size())
    except (StorageUnavailable, redis.exceptions.RedisError) as exc:
        return [Check("keycard data", f"unreadable: {str(exc)[:120]}", "FAIL",
                      "see the Redis rows above")]


def _table(rows: list[Check]) -> None:
    header = Check("CHECK", "VALUE", "OK", "WHAT TO DO")
    name_w = max(len(r.name) for r in [header, *rows])
    value_w = min(48, max(len(r.value) for r in [header, *rows]))
    click.echo(f"{'CHECK':{name_w}}  {'VALUE':{value_w}}  VERDICT  WHAT TO DO")
    for row in rows:
        colour = {"OK": "green", "WARN": "yellow", "FAIL": "red"}[row.verdict]
        verdict = click.style(f"{row.verdict:7}", fg=colour)
        click.echo(f"{row.name:{name_w}}  {row.value:{value_w}}  {verdict}  {row.advice}")
    worst = "FAIL" if failing(rows) else "WARN" if any(r.verdict == "WARN" for r in rows) else "OK"
    click.echo(f"\n{worst}: " + {"OK": "Redis is fit for Keycard.",
                                 "WARN": "Keycard can run; read the warnings.",
                                 "FAIL": "fix the FAIL rows before relying on Keycard."}[worst])


@click.command("doctor", short_help="Check that Keycard's Redis is fit to hold its state.",
               help="Check the Redis Keycard uses: topology, eviction policy, "
                              "persistence, memory, signing keys. Exit status 1 on a FAIL.")
@json_option
@with_appcontext
def doctor_command(as_json: bool) -> None:
    rows = server_checks(registry().store.redis)
    if not failing(r for r in rows if r.name.startswith("reachable")):
        rows += _data()
    emit({"checks": [r.as_dict() for r in rows], "ok": not failing(rows)}, as_json,
         lambda: _table(rows))
    if failing(rows):
        sys.exit(1)
