"""Security headers on every response, added at the WSGI layer."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment


class SecurityHeaders:
    """WSGI middleware adding the security headers a response does not set itself.

    At the WSGI layer because it runs on every request, hot paths included: a tuple
    list extended once is a fraction of the cost of werkzeug ``Headers`` calls in an
    ``after_request`` hook. Error pages made by Flask's handlers pass through it too.
    """

    def __init__(self, app: WSGIApplication, *, pages: list[tuple[str, str]],
                 static: list[tuple[str, str]]) -> None:
        self.app = app
        self.pages = [(name.lower(), (name, value)) for name, value in pages]
        self.static = [(name.lower(), (name, value)) for name, value in static]

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse
                 ) -> Iterable[bytes]:
        wanted = self.static if environ.get("PATH_INFO", "").startswith("/static/") \
            else self.pages

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            present = {name.lower() for name, _ in headers}
            headers.extend(header for lower, header in wanted if lower not in present)
            return start_response(status, headers, exc_info)

        return self.app(environ, start)
