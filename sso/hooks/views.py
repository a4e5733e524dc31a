"""``POST /hooks/github``: verify, then act; GitHub waits 10 s for the answer."""

from __future__ import annotations

import json

from flask import Blueprint, Response, jsonify, request
from werkzeug.exceptions import NotFound

from sso.hooks.github import DELIVERY_ID, EVENT, MAX_BODY_BYTES, BadPayload, signature_ok
from sso.registry import registry
from sso.web.csrf import csrf, origin_exempt
from sso.web.errors import error_response

bp = Blueprint("hooks", __name__)


def _refuse(status: int, code: str, message: str) -> Response:
    return error_response(status, "Webhook refused", message, code=code)


@bp.post("/hooks/github")
@origin_exempt  # GitHub's servers, not a browser: authenticated by the signature instead
@csrf.exempt
def github() -> Response:
    services = registry()
    secret = services.settings.github_webhook_secret
    if secret is None:
        raise NotFound()  # no secret, no endpoint: nothing unauthenticated to probe
    too_large = f"Deliveries are limited to {MAX_BODY_BYTES} bytes."
    if (request.content_length or 0) > MAX_BODY_BYTES:
        return _refuse(413, "payload_too_large", too_large)
    body = request.stream.read(MAX_BODY_BYTES + 1)
    if len(body) > MAX_BODY_BYTES:
        return _refuse(413, "payload_too_large", too_large)
    # Nothing of the body is read before the signature is: it decides whether it is GitHub.
    if not signature_ok(secret, body, request.headers.get("X-Hub-Signature-256")):
        return _refuse(401, "invalid_signature",
                       "X-Hub-Signature-256 is missing or does not match "
                       "SSO_GITHUB_WEBHOOK_SECRET.")
    delivery = request.headers.get("X-GitHub-Delivery", "")
    event = request.headers.get("X-GitHub-Event", "")
    if not DELIVERY_ID.fullmatch(delivery) or not EVENT.fullmatch(event):
        return _refuse(400, "invalid_request",
                       "X-GitHub-Delivery and X-GitHub-Event must name the delivery and event.")
    if request.mimetype != "application/json":
        return _refuse(415, "unsupported_media_type",
                       "Set the webhook's content type to application/json.")
    try:
        payload = json.loads(body)
    except ValueError:
        return _refuse(400, "invalid_request", "The body is not JSON.")
    if not isinstance(payload, dict):
        return _refuse(400, "invalid_request", "The body is not a JSON object.")
    try:
        outcome = services.hooks.receive(delivery, event, payload)
    except BadPayload as exc:
        return _refuse(400, "invalid_request", str(exc))
    if outcome.status == 204:
        return Response(status=204)
    response = jsonify(result=outcome.result, person=outcome.person, detail=outcome.detail)
    response.status_code = outcome.status
    return response
