"""What every page's template may use: the footer's facts and the plain-words filters.

People read teams as ``acme/platform`` everywhere (portal, console, rules); tokens carry
``acme:platform`` in ``groups`` (the OIDC convention): ``team`` turns the one into the
other for display. Dates on pages are for people: ``when`` writes them in words, in UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import Flask

from sso.backup import keycard_version
from sso.useragent import describe


def team(group: str) -> str:
    """A ``groups`` claim value (``org`` or ``org:team``) as people write it."""
    return group.replace(":", "/", 1)


def when(ts: float | int | None) -> str:
    """``3 March 2026, 14:05 UTC``; "unknown" for a missing time."""
    if not ts:
        return "unknown"
    moment = datetime.fromtimestamp(float(ts), UTC)
    return f"{moment.day} {moment:%B %Y, %H:%M} UTC"


def init_app(app: Flask) -> None:
    settings = app.config["SSO_SETTINGS"]
    version = keycard_version()  # read once: it cannot change while the process runs
    app.add_template_filter(team, "team")
    app.add_template_filter(when, "when")
    app.add_template_filter(describe, "device")

    @app.context_processor
    def footer() -> dict[str, Any]:
        return {"keycard_version": version, "support_url": settings.support_url}
