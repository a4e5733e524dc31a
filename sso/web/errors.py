"""One place turns typed errors into pages (browsers) or JSON (APIs).

No view formats an error itself and no stack trace ever reaches a client.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, current_app, jsonify, render_template, request
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import BadHost, HTTPException

from sso.logs import Throttle
from sso.oidc.keys import SigningKeysMissing
from sso.storage import StorageFull, StorageUnavailable
from sso.upstream.base import RateLimited, SamlSsoRequired, UpstreamError

log = logging.getLogger("keycard.web")

# Plain words for the HTTP errors a person can meet without a view having said more.
OWN_WORDS = {
    400: "Keycard could not understand that request. Go back and try again.",
    403: "You are not allowed to open this page.",
    404: "There is no page at this address. The link may be mistyped or out of date.",
    405: "This address does not accept that kind of request. Go back and try again.",
}


def wants_json() -> bool:
    if request.path.startswith(("/api/", "/oauth/", "/token", "/userinfo", "/introspect",
                                "/revoke", "/device_authorization", "/auth/verify",
                                "/.well-known/", "/jwks.json", "/hooks/")):
        return True
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return best == "application/json" and request.accept_mimetypes[best] > request.accept_mimetypes[
        "text/html"
    ]


def error_response(
    status: int, title: str, message: str, *, code: str = "error", **context: Any
) -> Response:
    if wants_json():
        response = jsonify(error=code, error_description=message)
    else:
        response = current_app.make_response(
            render_template("errors/error.html", status=status, title=title, message=message,
                            **context)
        )
    response.status_code = status
    return response


def register_error_handlers(app: Flask) -> None:
    # Every request fails the same way during an outage: one line per interval, not one each.
    throttle = Throttle(app.config["SSO_SETTINGS"].log_repeat_seconds)

    @app.errorhandler(StorageUnavailable)
    def storage_down(exc: StorageUnavailable) -> Response:
        full = isinstance(exc, StorageFull)
        suppressed = throttle.allow("storage_full" if full else "storage_down")
        if suppressed is not None:
            log.error("%s: %s (%d similar lines suppressed)",
                      "redis is full (maxmemory, noeviction)" if full else "redis unavailable",
                      exc, suppressed)
        if full:
            message = ("Keycard's store is full and cannot record anything right now. "
                       "Nothing was changed; please try again in a little while.")
        else:
            message = ("Keycard cannot reach its session store right now. Nothing was "
                       "changed; please try again in a few seconds.")
        response = error_response(
            503, "Keycard is temporarily unavailable", message, code="temporarily_unavailable",
        )
        response.headers["Retry-After"] = "5"
        return response

    @app.errorhandler(SigningKeysMissing)
    def keys_missing(exc: SigningKeysMissing) -> Response:
        # Logged and audited once by the key ring; here only the answer, naming the fix.
        response = error_response(503, "Keycard cannot sign yet", str(exc),
                                  code="temporarily_unavailable")
        response.headers["Retry-After"] = "30"
        return response

    @app.errorhandler(UpstreamError)
    def upstream_failed(exc: UpstreamError) -> Response:
        log.warning("upstream error %s: %s", type(exc).__name__, exc.detail)
        extra: dict[str, Any] = {}
        if isinstance(exc, SamlSsoRequired) and exc.url:
            extra["action_url"], extra["action_label"] = exc.url, "Authorise on GitHub"
        if exc.status in (502, 503) or isinstance(exc, SamlSsoRequired):
            extra.setdefault("retry", True)
        response = error_response(exc.status, exc.title, exc.message, code=exc.audit_reason,
                                  **extra)
        if isinstance(exc, RateLimited):
            response.headers["Retry-After"] = str(exc.retry_after)
        return response

    @app.errorhandler(CSRFError)
    def csrf_failed(exc: CSRFError) -> Response:
        return error_response(
            403,
            "This form has expired",
            "The form was missing its security token or came from another site. "
            "Go back, reload the page and try again.",
            code="csrf_failed",
        )

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        original = getattr(exc, "original_exception", None)
        if isinstance(original, StorageUnavailable):
            # Raised outside the view (the session saved after it): Flask wraps it in a
            # 500; it is an outage all the same.
            return storage_down(original)
        if isinstance(exc, BadHost):
            # A Host werkzeug cannot bind (an IDNA label over 63 characters...): no URL can
            # be built for this request, so no page either; plain text, not a 500.
            return Response("Bad Host header.\n", status=400, mimetype="text/plain")
        status = exc.code or 500
        titles = {403: "Not allowed", 404: "Page not found", 405: "Method not allowed"}
        message = exc.description or exc.name
        if message == type(exc).description and status in OWN_WORDS:
            # Werkzeug's stock sentence ("The requested URL was not found on the server...")
            # is replaced by Keycard's; a description a view gave (abort(404, "...")) stays.
            message = OWN_WORDS[status]
        return error_response(
            status, titles.get(status, exc.name), message,
            code={403: "access_denied", 404: "not_found"}.get(status, "invalid_request"),
            plain=status == 404,  # a wrong address is not an alarm: no red box
        )

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(
            500,
            "Something went wrong",
            "Keycard hit an unexpected error. It has been logged; please try again.",
            code="server_error",
        )
