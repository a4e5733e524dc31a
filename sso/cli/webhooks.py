"""``sso webhooks recent``: what the GitHub organisation webhook did lately."""

from __future__ import annotations

import click
from flask.cli import with_appcontext

from sso.cli.common import emit, json_option
from sso.cli.output import table, when
from sso.registry import registry


@click.group("webhooks", help="GitHub organisation webhook deliveries.")
def webhooks_group() -> None:
    pass


@webhooks_group.command("recent", help="The last deliveries, newest first, and what each did.")
@click.option("-n", "--lines", default=20, show_default=True, type=click.IntRange(1, 100))
@json_option
@with_appcontext
def recent(lines: int, as_json: bool) -> None:
    services = registry()
    deliveries = services.hooks.recent(lines)

    def text() -> None:
        if services.settings.github_webhook_secret is None:
            click.echo("Webhooks are off: SSO_GITHUB_WEBHOOK_SECRET is not set.")
        if not deliveries:
            click.echo("No deliveries yet.")
            return
        rows = []
        for d in deliveries:
            event = f"{d['event']}.{d['action']}" if d.get("action") else d["event"]
            outcome = f"{d['result']}: {d['detail']}" if d.get("detail") else d["result"]
            rows.append([when(d["time"]), event, d.get("person") or "-", outcome])
        table(["RECEIVED (UTC)", "EVENT", "PERSON", "OUTCOME"], rows)

    emit(deliveries, as_json, text)
