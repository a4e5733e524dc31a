"""``sso webhooks recent``: what the GitHub organisation webhook did lately."""

from __future__ import annotations

import time

import click
from flask.cli import with_appcontext

from sso.cli.common import emit, json_option
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
        click.echo(f"{'RECEIVED (UTC)':20} {'EVENT':32} {'PERSON':20} OUTCOME")
        for d in deliveries:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(d["time"]))
            event = f"{d['event']}.{d['action']}" if d.get("action") else d["event"]
            outcome = f"{d['result']}: {d['detail']}" if d.get("detail") else d["result"]
            click.echo(f"{when:20} {event:32} {d.get('person') or '-':20} {outcome}")

    emit(deliveries, as_json, text)
