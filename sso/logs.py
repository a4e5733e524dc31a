"""Keycard's log lines: one JSON object per line on stderr, with a request id.

Neither granian nor gunicorn gives the ``keycard`` logger (or the root logger) a handler,
so without :func:`install_log_handler` Keycard's warnings and errors reached the server's
output only through Python's last-resort handler (bare messages, no time, no level) and
its INFO lines not at all. ``create_app`` calls it once: every ``keycard.*`` record
becomes ``{"ts": "2025-01-31T12:00:00.123Z", "level": "ERROR", "logger": "keycard.web",
"message": "...", "request_id": "..."}`` (``request_id`` inside a request, ``exc`` with
the traceback when there is one). An operator who configured logging (handlers on
``keycard`` or on the root logger: ``--log-config``, ``logging.config``...) keeps theirs.
``keycard.audit`` has its own handler and format (:mod:`sso.audit`) and does not propagate.

:class:`RequestIds` (WSGI) gives each request an id: the caller's ``X-Request-Id`` when
it is short and plain, else a random one, echoed in the response's ``X-Request-Id``.

:class:`Throttle` keeps a repeated line (every request during a Redis outage fails the
same way) to one per interval per kind, counting what it suppressed.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import sys
import threading
import time
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

KEYCARD = "keycard"

_request_id: ContextVar[str | None] = ContextVar("keycard_request_id", default=None)
_SANE_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")


def request_id() -> str | None:
    """The current request's id, or None outside a request."""
    return _request_id.get()


class StderrLines(logging.Handler):
    """Each formatted record as one line on the process's stderr *as it is now* (servers
    and test runners replace ``sys.stderr``; a handler holding the old one would write
    into a closed file)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:  # noqa: BLE001 - logging must never break the request
            self.handleError(record)


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, UTC)
        line: dict[str, Any] = {
            "ts": stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = request_id()
        if rid is not None:
            line["request_id"] = rid
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, separators=(",", ":"), default=str)


def install_log_handler() -> None:
    """JSON lines on stderr for the ``keycard`` tree, unless logging is configured."""
    root = logging.getLogger()
    keycard = logging.getLogger(KEYCARD)
    keycard.setLevel(logging.INFO)
    if keycard.handlers or root.handlers:
        return
    handler = StderrLines(logging.INFO)
    handler.setFormatter(JsonLines())
    keycard.addHandler(handler)


StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class RequestIds:
    """WSGI middleware: a request id for the logs and the ``X-Request-Id`` header."""

    def __init__(self, app: WsgiApp) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Any:
        given = environ.get("HTTP_X_REQUEST_ID", "")
        rid = given if _SANE_ID.fullmatch(given) else secrets.token_hex(8)
        token = _request_id.set(rid)

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            headers.append(("X-Request-Id", rid))  # no view sets it: nothing to replace
            return start_response(status, headers, exc_info)

        try:
            return self.app(environ, start)
        finally:
            _request_id.reset(token)


class Throttle:
    """At most one log line per ``interval`` seconds per kind, in this process."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def allow(self, kind: str) -> int | None:
        """None: stay quiet. A number: log now; it is how many lines were suppressed
        since the last one of this kind."""
        now = time.monotonic()
        with self._lock:
            last = self._last.get(kind)
            if last is not None and now - last < self.interval:
                self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
                return None
            self._last[kind] = now
            return self._suppressed.pop(kind, 0)
