"""``/healthz`` (the process answers) and ``/readyz`` (it can serve: Redis answers)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from sso.registry import registry
from sso.storage import StorageUnavailable

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    try:
        registry().store.ping()
    except StorageUnavailable as exc:
        return jsonify(status="unavailable", redis="unreachable", detail=str(exc)[:200]), 503
    return jsonify(status="ready", redis="ok"), 200
