"""``sso audit tail``: read the audit trail, optionally following new events."""

from __future__ import annotations

import json
from typing import Any

import click
from flask.cli import with_appcontext

from sso.cli.common import json_option
from sso.cli.output import when
from sso.registry import registry

HEADER = ["TIME (UTC)", "EVENT", "ACTOR → SUBJECT", "IP", "DETAILS"]
WIDTHS = [16, 22, 30, 15]  # fixed, so lines printed later by --follow stay aligned


def _cells(event: dict[str, Any]) -> list[str]:
    details = " ".join(f"{k}: {json.dumps(v)}" for k, v in sorted(event["details"].items()))
    who = f"{event['actor'] or '-'} → {event['subject'] or '-'}"
    return [when(event["time"]), event["event"], who, event["ip"] or "-", details]


def _text(cells: list[str]) -> str:
    padded = [c.ljust(w) for c, w in zip(cells, WIDTHS, strict=False)]
    return "  ".join([*padded, cells[-1]]).rstrip()


def _line(event: dict[str, Any], as_json: bool) -> str:
    return json.dumps(event, sort_keys=True) if as_json else _text(_cells(event))


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
    if not as_json:
        click.echo(_text(HEADER) if events or follow else "No audit events yet.")
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
