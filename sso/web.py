"""Cross-cutting web concerns: security headers, CSRF/Origin checks, safe redirects, errors.

One place turns typed errors into pages (browsers) or JSON (APIs), so no view
formats an error itself and no stack trace ever reaches a client.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

import orjson
from flask import Flask, Request, Response, current_app, jsonify, render_template, request
from flask.json.provider import DefaultJSONProvider
from flask_wtf.csrf import CSRFError, CSRFProtect
from werkzeug.exceptions import BadRequest, ClientDisconnected, Forbidden, HTTPException
from werkzeug.sansio.response import Response as SansIOResponse

from sso.sessions import raise_if_unavailable
from sso.storage import StorageUnavailable
from sso.upstream.base import RateLimited, SamlSsoRequired, UpstreamError

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

log = logging.getLogger("keycard.web")
csrf = CSRFProtect()

UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


def origin_exempt(view: Any) -> Any:
    """For machine endpoints (token, introspection) that are not cookie-authenticated."""
    view.origin_exempt = True
    return view


def safe_next(value: str | None, default: str = "/") -> str:
    """Only same-site paths: ``/x`` yes; ``//evil``, ``/\\evil``, ``https://evil`` no."""
    if not value or not value.startswith("/") or value.startswith(("//", "/\\")):
        return default
    if any(ord(c) < 0x20 or c == "\\" for c in value):
        return default
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return default
    return value


HOSTNAME = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*")


def safe_return_url(url: str | None, allowed_domains: Iterable[str]) -> str | None:
    """An absolute http(s) URL on an allowed domain (or a subdomain of one), else None.

    SECURITY (no open redirects): whole-label match, so ``evil-acme.test`` is not
    ``acme.test``; no userinfo (``https://acme.test@evil``), backslashes, control
    characters, percent-encoded or trailing-dot host names that browsers and parsers
    could read differently.
    """
    if not url or len(url) > 4096 or any(ord(c) <= 0x20 or c in "\\\x7f" for c in url):
        return None
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc or "@" in parts.netloc:
        return None
    if not url.lower().startswith(parts.scheme.lower() + "://"):
        return None
    host = (parts.hostname or "").lower()
    try:
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError:
        return None
    if not HOSTNAME.fullmatch(host):
        return None
    for domain in allowed_domains:
        domain = domain.lower().strip(".")
        if domain and (host == domain or host.endswith("." + domain)):
            return url
    return None


def wants_json() -> bool:
    if request.path.startswith(("/api/", "/oauth/", "/token", "/userinfo", "/introspect",
                                "/revoke", "/device_authorization", "/auth/verify",
                                "/.well-known/", "/jwks.json")):
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


class KeycardRequest(Request):
    """Flask's request with a direct path for the bodies every OAuth endpoint receives.

    Werkzeug's general form parser (stream wrappers, parser objects, option parsing)
    cost ten times what parsing a url-encoded body itself does: a tenth of a token
    or introspection request. Exact ``application/x-www-form-urlencoded`` with a
    ``Content-Length`` within the limit is read here; everything else (multipart,
    charset parameters, chunked bodies, oversize bodies: 413) goes Werkzeug's way.
    Stricter than Werkzeug 3.1 on purpose: a body that is not UTF-8 or has more than
    ``MAX_FIELDS`` fields is a 400 (Werkzeug read the first as an empty form).
    """

    MAX_FIELDS = 1000

    def _load_form_data(self) -> None:
        if "form" in self.__dict__:
            return
        environ = self.environ
        length = environ.get("CONTENT_LENGTH", "")
        limit = self.max_content_length
        if (environ.get("CONTENT_TYPE") != "application/x-www-form-urlencoded"
                or not (length.isascii() and length.isdigit())
                or "HTTP_TRANSFER_ENCODING" in environ or "stream" in self.__dict__
                or getattr(self, "_cached_data", None) is not None
                or (limit is not None and int(length) > limit)):
            super()._load_form_data()
            return
        raw = environ["wsgi.input"].read(int(length))
        if len(raw) != int(length):
            raise ClientDisconnected()  # the body ended early: 400, as Werkzeug answers
        try:
            items = parse_qsl(raw.decode(), keep_blank_values=True,
                              errors="werkzeug.url_quote", max_num_fields=self.MAX_FIELDS)
        except ValueError:  # UnicodeDecodeError included: not UTF-8, or too many fields
            raise BadRequest("The form body could not be read.") from None
        d = self.__dict__
        d["stream"], d["form"] = io.BytesIO(), self.parameter_storage_class(items)
        d["files"] = self.parameter_storage_class()


class OrjsonProvider(DefaultJSONProvider):
    """Flask's JSON through orjson: every token, introspection and API answer is JSON, and
    the standard encoder was the largest single cost of building those responses."""

    OPTIONS = orjson.OPT_NON_STR_KEYS

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        if kwargs:  # indent, separators...: the standard library's formatting
            return super().dumps(obj, **kwargs)
        return orjson.dumps(obj, default=self.default, option=self.OPTIONS).decode()

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return super().loads(s, **kwargs) if kwargs else orjson.loads(s)

    def response(self, *args: Any, **kwargs: Any) -> SansIOResponse:
        if self._app.debug:
            return super().response(*args, **kwargs)  # indented, for people reading it
        body = orjson.dumps(self._prepare_response_obj(args, kwargs), default=self.default,
                            option=self.OPTIONS | orjson.OPT_APPEND_NEWLINE)
        return Response(body, mimetype=self.mimetype)


def init_app(app: Flask) -> None:
    app.request_class = KeycardRequest
    app.json = OrjsonProvider(app)
    csrf.init_app(app)
    app.config["WTF_CSRF_CHECK_DEFAULT"] = False  # checked by guard_request below
    issuer = app.config["SSO_SETTINGS"].issuer
    parts = urlsplit(issuer)
    own_origin = f"{parts.scheme}://{parts.netloc}"
    upstream = urlsplit(app.config["SSO_SETTINGS"].github_url)
    upstream_origin = f"{upstream.scheme}://{upstream.netloc}"
    csp = (
        "default-src 'none'; style-src 'self'; "
        f"img-src 'self' data: https: {upstream_origin}; "
        "frame-ancestors 'none'; base-uri 'none'"
    )

    @app.before_request
    def guard_request() -> None:
        # One hook instead of three: Flask pays for every registered hook on every request.
        raise_if_unavailable()
        if request.method not in UNSAFE_METHODS:
            return
        if app.config["WTF_CSRF_ENABLED"]:
            csrf.protect(apply_exemptions=True)  # WTF_CSRF_CHECK_DEFAULT is off: here instead
        # RFC 9700 §4.7 / SECURITY 35: cross-site form posts are refused before any view
        # runs, whatever the CSRF token says. Like Go's CrossOriginProtection: trust
        # Sec-Fetch-Site when the browser sends it (with Referrer-Policy: no-referrer,
        # Chromium sends "Origin: null" even for same-origin posts), else compare Origin.
        view = app.view_functions.get(request.endpoint or "")
        if getattr(view, "origin_exempt", False):
            return
        site = request.headers.get("Sec-Fetch-Site")
        if site is not None:
            if site not in ("same-origin", "none"):
                raise Forbidden("Cross-site form posts are refused.")
            return
        origin = request.headers.get("Origin")
        if origin is not None and origin != own_origin:
            raise Forbidden("Cross-site form posts are refused.")

    defaults = [
        ("Content-Security-Policy", csp),
        ("X-Frame-Options", "DENY"),
        ("X-Content-Type-Options", "nosniff"),
        ("Referrer-Policy", "no-referrer"),
    ]
    if issuer.startswith("https://"):
        defaults.append(("Strict-Transport-Security", "max-age=63072000"))
    # Pages carry personal data, codes or tokens: never cached anywhere (static files may be).
    no_store = [("Cache-Control", "no-store"), ("Pragma", "no-cache")]
    app.wsgi_app = SecurityHeaders(  # type: ignore[method-assign]
        app.wsgi_app, pages=defaults + no_store, static=defaults
    )

    @app.errorhandler(StorageUnavailable)
    def storage_down(exc: StorageUnavailable) -> Response:
        log.error("redis unavailable: %s", exc)
        response = error_response(
            503,
            "Keycard is temporarily unavailable",
            "Keycard cannot reach its session store right now. Nothing was changed; "
            "please try again in a few seconds.",
            code="temporarily_unavailable",
        )
        response.headers["Retry-After"] = "5"
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
        status = exc.code or 500
        titles = {403: "Not allowed", 404: "Page not found", 405: "Method not allowed"}
        return error_response(
            status, titles.get(status, exc.name), exc.description or exc.name,
            code={403: "access_denied", 404: "not_found"}.get(status, "invalid_request"),
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
