"""Audit events as the console shows them: people and apps by name, details as plain pairs.

The stream keeps what happened (ids, raw values); this turns one event into what an
admin reads: a refused sign-in names the GitHub login that tried, a client id becomes the
app's name (the id stays on hover), and details become ``key: value`` lines.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

# Details shown elsewhere in the row (or noise there): not repeated in the list.
_SHOWN = {"client", "login", "user_agent"}


def plain(value: Any) -> str:
    """A detail's value in words: lists joined, nothing as a dash, objects as key: value."""
    if value is None or value == "" or value == []:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(plain(v) for v in value)
    if isinstance(value, dict):
        return "; ".join(f"{k}: {plain(v)}" for k, v in value.items()) or "—"
    if isinstance(value, str):
        return value
    return json.dumps(value)


def app_ref(client_id: str, names: Mapping[str, str]) -> dict[str, str]:
    """``{"id", "name"}``; an app deleted since is named by its id."""
    return {"id": client_id, "name": names.get(client_id, client_id)}


def present(event: Mapping[str, Any], names: Mapping[str, str]) -> dict[str, Any]:
    """One event for the audit page. ``names``: client id → app name."""
    details: dict[str, Any] = dict(event.get("details") or {})
    subject = str(event.get("subject") or "")
    if not subject and details.get("login"):
        subject = str(details["login"])  # refused sign-ins recorded before they named it
    app = None
    if details.get("client"):
        app = app_ref(str(details["client"]), names)
    subject_app = app_ref(subject, names) if subject in names else None
    pairs = [(key, plain(value)) for key, value in details.items()
             if key not in _SHOWN or (key == "login" and details["login"] != subject)]
    if event.get("ip"):
        pairs.append(("ip", str(event["ip"])))
    return {
        "id": event.get("id", ""), "time": event.get("time", 0), "event": event.get("event", ""),
        "actor": event.get("actor", ""), "subject": subject, "subject_app": subject_app,
        "app": app, "details": pairs,
    }
