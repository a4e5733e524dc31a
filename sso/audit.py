"""The audit trail: a bounded Redis stream plus one JSON log line per event.

Audit writes must never turn a successful action into a failure, so a Redis
error here is logged and swallowed (the JSON log line is still written).

The stream is capped (``SSO_AUDIT_MAX_EVENTS``); the log line is the durable copy. It goes
to the ``keycard.audit`` logger, one JSON object per line (``{"ts": ..., "event": ...,
"actor": ..., "subject": ..., "ip": ..., "user_agent": ..., "details": {...}}``). Neither
gunicorn nor granian gives that logger a handler, so :func:`install_log_handler` (called
by ``create_app``) writes it to stderr unless the operator configured one already.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, cast

from sso.logs import StderrLines
from sso.metrics import AUDIT_EVENTS
from sso.storage import OUTAGE_ERRORS, Store, guard

log = logging.getLogger("keycard.audit")


def install_log_handler() -> None:
    """Send audit lines to stderr unless the operator configured ``keycard.audit``'s
    handlers (logging config, ``--log-config``). Not propagated: a root handler would
    print each line a second time, wrapped in its own format."""
    if log.handlers:
        return
    handler = StderrLines(logging.INFO)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


class Audit:
    def __init__(self, store: Store, max_events: int) -> None:
        self.store = store
        self.max_events = max_events
        self.key = store.keys.audit()

    def record(
        self,
        event: str,
        *,
        actor: str = "",
        subject: str = "",
        ip: str = "",
        user_agent: str = "",
        **details: Any,
    ) -> None:
        entry = {
            "time": round(time.time(), 3),
            "event": event,
            "actor": actor,
            "subject": subject,
            "ip": ip,
            "user_agent": user_agent[:200],
            "details": details,
        }
        line = {"ts": entry["time"], **{k: v for k, v in entry.items() if k != "time"}}
        log.info("%s", json.dumps(line, separators=(",", ":"), default=str))
        AUDIT_EVENTS.labels(event).inc()
        fields = {k: v if isinstance(v, str) else json.dumps(v) for k, v in entry.items()}
        try:
            self.store.redis.xadd(self.key, fields, maxlen=self.max_events, approximate=True)
        except OUTAGE_ERRORS:
            log.warning("audit event %s not stored: Redis unavailable", event)

    def recent(self, count: int = 100) -> list[dict[str, Any]]:
        """The newest ``count`` events, newest first."""
        return [_decode(i, f) for i, f in self.store.redis.xrevrange(self.key, count=count)]

    def follow(self, after: str, block_ms: int = 5000) -> list[dict[str, Any]]:
        """Events newer than the stream id ``after`` (``$``: from now), waiting up to block_ms."""
        answer = self.store.redis.xread({self.key: after}, block=block_ms, count=100)
        return [_decode(i, f) for _, rows in answer or [] for i, f in rows]

    @guard  # a Redis outage answers 503, like every other read
    def query(
        self,
        person: str | None = None,
        event: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 200,
        app: str | None = None,
        before: str | None = None,
    ) -> list[dict[str, Any]]:
        """Events newest first, filtered: ``person`` matches actor or subject (any case),
        ``event`` is a prefix (``signin`` finds ``signin.success``), ``since``/``until``
        are inclusive epoch seconds, ``app`` a client id (the subject, or the ``client``
        detail), ``before`` a stream id: only older events (the next page).

        Stream IDs are millisecond timestamps, so the time bounds go to Redis as the ID
        range; person, event and app are filtered here, reading the range page by page.
        """
        high = f"{int(until * 1000)}" if until is not None else "+"
        if before:  # paging: an id already shown, so strictly below it
            high = f"({before}"
        low = f"{int(since * 1000)}" if since is not None else "-"
        who = (person or "").strip().lower()
        prefix = (event or "").strip()
        client = (app or "").strip()
        out: list[dict[str, Any]] = []
        page = max(limit, 100) if (who or prefix or client) else limit
        while len(out) < limit:
            rows = cast(list[tuple[str, dict[str, str]]],
                        self.store.redis.xrevrange(self.key, max=high, min=low, count=page))
            for entry_id, fields in rows:
                if who and who not in (fields.get("actor", "").lower(),
                                       fields.get("subject", "").lower()):
                    continue
                if prefix and not fields.get("event", "").startswith(prefix):
                    continue
                if client and not _names_client(fields, client):
                    continue
                out.append(_decode(entry_id, fields))
                if len(out) == limit:
                    break
            if len(rows) < page:
                break
            high = f"({rows[-1][0]}"  # exclusive: continue below the last entry read
        return out


def _names_client(fields: dict[str, str], client_id: str) -> bool:
    if fields.get("subject") == client_id:
        return True
    details = fields.get("details") or ""
    return client_id in details and json.loads(details).get("client") == client_id


def _decode(entry_id: str, fields: dict[str, str]) -> dict[str, Any]:
    item: dict[str, Any] = dict(fields)
    item["id"] = entry_id
    item["time"] = float(item.get("time", 0))
    item["details"] = json.loads(item.get("details") or "{}")
    return item
