"""Rate limits on views: 429 with ``Retry-After``, a page for browsers, JSON for machines.

The counting is :class:`sso.ratelimit.RateLimiter`'s; views name the limit and how to
reach the limiter (the registry, which this package must not import).
"""

from __future__ import annotations

import base64
import binascii
import functools
from collections.abc import Callable
from typing import Any, TypeVar, cast
from urllib.parse import unquote

from flask import Response, request

from sso.ratelimit import RateLimiter
from sso.web.errors import error_response

F = TypeVar("F", bound=Callable[..., Any])


def too_many_requests(seconds: int) -> Response:
    response = error_response(
        429, "Too many requests",
        f"Too many requests came from your network. Please try again in {seconds} seconds.",
        code="temporarily_unavailable",
    )
    response.headers["Retry-After"] = str(seconds)
    return response


def requesting_client_id() -> str:
    """The client_id a request names (form, or the user part of Basic credentials)."""
    named = request.form.get("client_id")
    if named:
        return named
    parts = request.headers.get("Authorization", "").split(None, 1)
    if len(parts) == 2 and parts[0].lower() == "basic":
        try:
            user = base64.b64decode(parts[1]).decode("utf-8").split(":", 1)[0]
        except (binascii.Error, ValueError):
            return ""
        return unquote(user)
    return ""


def limited(name: str, limiter: Callable[[], RateLimiter], *, per_client: bool = False
            ) -> Callable[[F], F]:
    """Count each request to the view against limit ``name`` per client IP (and per
    client_id with ``per_client``), each endpoint on its own."""

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            who = [f"{request.endpoint}|ip|{request.remote_addr or ''}"]
            if per_client:
                who.append(f"{request.endpoint}|client|{requesting_client_id()}")
            over = limiter().hit(name, who)
            if over is not None:
                return too_many_requests(over[1])
            return view(*args, **kwargs)

        return cast(F, wrapper)

    return decorate
