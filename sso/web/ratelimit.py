"""Rate limits on views: 429 with ``Retry-After``, a page for browsers, JSON for machines.

The counting is :class:`sso.ratelimit.RateLimiter`'s; views name the limit and how to
reach the limiter (the registry, which this package must not import).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar, cast

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


# Set in the WSGI environ once an HTTP request has been counted: a view that another runs
# inside the same request (the sign-in callback answering ``/authorize``) is not counted again.
COUNTED = "keycard.rate_counted"


def limited(name: str, limiter: Callable[[], RateLimiter]) -> Callable[[F], F]:
    """Count each request to the view against limit ``name`` per client IP, each endpoint
    on its own. Never per client_id before the client is authenticated: anyone can name
    a public client, so such a count would let them lock its real users out."""

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not request.environ.get(COUNTED):
                request.environ[COUNTED] = True
                who = [f"{request.endpoint}|ip|{request.remote_addr or ''}"]
                over = limiter().hit(name, who)
                if over is not None:
                    return too_many_requests(over[1])
            return view(*args, **kwargs)

        return cast(F, wrapper)

    return decorate
