"""Bearer tokens (RFC 6750): the one place an ``Authorization`` header is read for one,
and the one shape of the error a resource answers when it is missing or not good enough.

Userinfo, forward auth, the admin API and ``/metrics`` all use these; what a valid
token is stays each caller's business (the provider's ``token_claims``, or the
metrics token compared in constant time).
"""

from __future__ import annotations

from flask import Response, jsonify, request


def bearer_token() -> str | None:
    """The credentials of an ``Authorization: Bearer`` header (RFC 6750 §2.1), else None.

    An empty string means the scheme was sent without a token; callers decide whether
    that is an invalid token (the admin API) or no authentication (userinfo, forward auth).
    """
    header = request.headers.get("Authorization", "")
    if header[:7].lower() != "bearer ":
        return None
    return header[7:].strip()


def bearer_error(status: int, error: str, description: str, challenge: str) -> Response:
    """A JSON error with its ``WWW-Authenticate`` challenge (RFC 6750 §3)."""
    response = jsonify(error=error, error_description=description)
    response.status_code = status
    response.headers["WWW-Authenticate"] = challenge
    return response
