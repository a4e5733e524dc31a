"""Prometheus metrics, served at ``/metrics`` by :mod:`sso.health`: requests by route and
status with their latency, audit events by name, tokens issued by grant type.

Several worker processes (granian, gunicorn) each count their own requests; with
``PROMETHEUS_MULTIPROC_DIR`` set (an empty directory, before the server starts, as
prometheus-client documents) ``/metrics`` adds them up across processes. Without it,
each scrape sees the one process that answered it.

Labels are bounded by construction: route *templates* (``/oauth/<x>``), never paths;
event names and grant types are constants of the code; no person, client or token
ever appears in a label. Counting costs a few microseconds per request, on hot paths too.
With ``SSO_METRICS_TOKEN`` set, reading ``/metrics`` needs it as a bearer token.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    multiprocess,
)

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

REQUESTS = Counter(
    "keycard_http_requests", "HTTP requests answered, by route template, method and status.",
    ["route", "method", "status"],
)
LATENCY = Histogram(
    "keycard_http_request_duration_seconds", "Time to answer, by route template.", ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
)
AUDIT_EVENTS = Counter("keycard_audit_events", "Audit events recorded, by event name.",
                       ["event"])
# Refused sign-in callbacks that name nobody (a made-up or used state, a state carried to
# another browser, GitHub's error= answer, a code GitHub does not accept): anyone can send
# them by the thousand (a state costs one GET /login), so they are counted here rather than
# written one by one to the capped audit stream, where a flood would push every real event
# out. Refusals of a person GitHub vouched for (not a member...) are audited.
SIGNIN_REFUSED_ANONYMOUS = Counter(
    "keycard_signin_refused_anonymous",
    "Upstream callbacks refused before any GitHub identity was known, by reason.",
    ["reason"],
)
TOKENS = Counter("keycard_tokens_issued", "Token responses issued, by grant type.",
                 ["grant_type"])
BACKCHANNEL_LOGOUT = Counter(
    "keycard_backchannel_logout",
    "Back-channel logout tokens, by outcome: queued, delivered, failed (an attempt that "
    "will be retried), dropped (given up after the retry period).",
    ["outcome"],
)

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
ROUTE = "keycard.route"  # set by a WSGI layer that answers without Flask (sso/oidc/lean.py)
UNMATCHED = "<unmatched>"  # 404s and anything no route claims: one label, not one per path


class RequestMetrics:
    """WSGI middleware counting every answer by the route that handled it."""

    def __init__(self, app: WSGIApplication) -> None:
        self.app = app
        # (route, method, status) -> the two metric children: ``labels()`` hashes and locks
        # on every call; routes, methods and statuses are few, so the lookups are kept.
        self._children: dict[tuple[str, str, str], tuple[Any, Any]] = {}

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse
                 ) -> Iterable[bytes]:
        started = time.perf_counter()

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            request = environ.get("werkzeug.request")  # Werkzeug's request puts itself here
            rule = getattr(request, "url_rule", None)
            route = rule.rule if rule is not None else environ.get(ROUTE, UNMATCHED)
            method = environ.get("REQUEST_METHOD", "")
            key = (route, method if method in METHODS else "other", status[:3])
            children = self._children.get(key)
            if children is None:
                children = self._children[key] = (REQUESTS.labels(*key), LATENCY.labels(route))
            children[0].inc()
            children[1].observe(time.perf_counter() - started)
            return start_response(status, headers, exc_info)

        return self.app(environ, start)


def collector() -> CollectorRegistry:
    """This process's counters, or every worker's when they share a multiprocess dir."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry
