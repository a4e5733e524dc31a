"""``sso audit tail``: read the audit trail, optionally following new events."""

from __future__ import annotations

import json
import time
from typing import Any

import click
from flask.cli import with_appcontext

from sso.cli.common import json_option
from sso.registry import registry


def _line(event: dict[str, Any], as_json: bool) -> str:
    if as_json:
        return json.dumps(event, sort_keys=True)
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(event["time"]))
    details = " ".join(f"{k}={json.dumps(v)}" for k, v in sorted(event["details"].items()))
    who = f"{event['actor'] or '-'} → {event['subject'] or '-'}"
    return f"{when}Z {event['event']:22} {who:30} {event['ip'] or '-':15} {details}"


@click.group("audit", help="Read the audit trail.")
def audit_group() -> None:
    pass


@audit_group.command("tail", help="Print the latest events (oldest first).")
@click.option("-n", "--lines", default=20, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events as they happen.")
@json_option
@with_appcontext
def audit_tail(lines: int, follow: bool, as_json: bool) -> None:
    audit = registry().audit
    events = list(reversed(audit.recent(lines)))
    for event in events:
        click.echo(_line(event, as_json))
    if not follow:
        return
    last = events[-1]["id"] if events else "$"
    try:
        while True:
            for event in audit.follow(last, block_ms=5000):
                click.echo(_line(event, as_json))
                last = event["id"]
    except KeyboardInterrupt:
        pass
