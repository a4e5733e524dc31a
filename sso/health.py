"""Operator endpoints: ``/healthz`` (the process answers), ``/readyz`` (it can serve:
Redis answers and, in production, the signing keys exist (production never makes them
unasked, see :mod:`sso.oidc.keys`) and Redis is configured not to lose Keycard's state
(see :mod:`sso.redis_checks`)) and ``/metrics`` (Prometheus, see :mod:`sso.metrics`).

``/readyz`` tells anyone only whether Keycard is ready; why not (the Redis error, which
names hosts and ports) is for operators presenting ``SSO_METRICS_TOKEN``."""

from __future__ import annotations

import hmac

from flask import Blueprint, Response, jsonify
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sso.metrics import collector
from sso.oidc.keys import INIT_COMMAND
from sso.registry import registry
from sso.storage import StorageUnavailable
from sso.web.bearer import bearer_error, bearer_token

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify(status="ok")


def _is_operator() -> bool:
    """The request carries ``SSO_METRICS_TOKEN`` as its bearer (compared in constant time)."""
    expected = registry().settings.metrics_token
    given = bearer_token()
    return (expected is not None and given is not None
            and hmac.compare_digest(given.encode(), expected.encode()))


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    services = registry()
    try:
        services.store.ping()
        missing = services.keys.missing() if services.settings.is_production else []
    except StorageUnavailable as exc:
        if _is_operator():
            return jsonify(status="unavailable", redis="unavailable",
                           detail=str(exc)[:200]), 503
        return jsonify(status="unavailable", redis="unavailable"), 503
    if missing:
        return jsonify(status="unavailable", redis="ok", keys="missing",
                       detail=f"no signing keys: run `{INIT_COMMAND}`"), 503
    problems = services.readiness.not_ready_because()  # cached, not asked per poll
    if problems:
        return jsonify(status="unavailable", redis="unfit", problems=problems,
                       help="run `sso doctor`"), 503
    return jsonify(status="ready", redis="ok"), 200


@bp.get("/metrics")
def metrics() -> Response:
    # Traffic volumes and failure rates are for operators: with SSO_METRICS_TOKEN set,
    # only a scraper presenting it (Prometheus' `authorization: credentials:`) reads them.
    if registry().settings.metrics_token is not None and not _is_operator():
        return bearer_error(401, "unauthorized", "/metrics needs the SSO_METRICS_TOKEN bearer.",
                            'Bearer realm="keycard-metrics"')
    return Response(generate_latest(collector()), mimetype=CONTENT_TYPE_LATEST)
