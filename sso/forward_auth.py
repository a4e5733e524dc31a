"""The ``forward_auth`` blueprint: Keycard as the authority behind a reverse proxy.

Apps that cannot speak OpenID Connect sit behind nginx (``auth_request``), Traefik
(``ForwardAuth``) or Caddy (``forward_auth``). The proxy asks ``/auth/verify`` about
every request; Keycard answers 200 with the person in ``X-Auth-Request-*`` headers
(plus a 60-second ES256 assertion the app can verify against ``/jwks.json``), 401
when nobody is signed in, 403 when a required role is missing. ``/auth/start``
sends a browser through sign-in and back to the page it wanted, but only to the
domains in ``SSO_FORWARD_AUTH_DOMAINS`` (no open redirects).

The verify view is the hot path: a browser session costs the one Redis round trip
that opening the session already is, a bearer token the one ``token_claims`` makes;
nothing is written (no audit per check) and no decision is cached in the process,
so a revoked session or token stops working at the next request. Only the signed
assertion is reused, for half its life, when the same person asks for the same app.

Which app a check is about comes from the verify URL when it says so
(``/auth/verify?aud=https://wiki.acme.test``): then only that audience is accepted,
whatever ``X-Forwarded-Host`` or ``Host`` claim, and the assertion is made out to it.
Without ``aud`` the proxy's ``X-Forwarded-Host`` decides, which is only as good as the
proxy's configuration (a client chooses the Host it sends; see docs/forward-auth.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, urlsplit

import orjson
from flask import Blueprint, Response, current_app, jsonify, redirect, request, url_for
from flask_login import current_user
from itsdangerous import BadSignature, URLSafeTimedSerializer
from werkzeug.http import parse_cookie
from werkzeug.sansio.utils import get_host
from werkzeug.wrappers import Response as BaseResponse

from sso.accounts import Profile
from sso.assertions import Asserter
from sso.login.users import session_user
from sso.metrics import ROUTE
from sso.oidc.tokens import subject_for
from sso.registry import registry
from sso.sessions import DATA, PROFILE, USER
from sso.web.bearer import bearer_error, bearer_token
from sso.web.csrf import csrf, origin_exempt
from sso.web.errors import error_response
from sso.web.redirects import HOSTNAME, safe_return_url

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from sso.registry import Registry

bp = Blueprint("forward_auth", __name__)

HEADER_PREFIX = "X-Auth-Request-"
# Traefik forwards the original request's method; answer every one of them.
ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


# -- the identity behind a request -------------------------------------------------------


def identity_of(profile: Profile, issuer: str) -> dict[str, Any]:
    """What the headers and the assertion say of a signed-in person."""
    return {
        "sub": subject_for(issuer, profile.user_id),
        "preferred_username": profile.login,
        "email": profile.email if profile.email and profile.email_verified else None,
        "groups": list(profile.groups),
        "roles": list(profile.roles),
    }


def _identity_from_session() -> dict[str, Any] | None:
    # The user comes from the session opened before the view (one Redis round trip);
    # the user loader re-checks membership upstream only when the snapshot is stale.
    user = session_user()
    return None if user is None else identity_of(user.profile, registry().settings.issuer)


def _identity_from_token(token: str) -> dict[str, Any] | None:
    claims = registry().provider.token_claims(token)
    return None if claims is None else identity_of_token(claims)


def identity_of_token(claims: dict[str, Any]) -> dict[str, Any]:
    """What the headers and the assertion say of a live access token's bearer."""
    sub = str(claims.get("sub", ""))
    verified = claims.get("email_verified") is True
    audience = claims.get("aud")
    return {
        "aud": [audience] if isinstance(audience, str) else list(audience or []),
        "sub": sub,
        # A client-credentials token has no person: its subject ("client:<id>") names it.
        "preferred_username": str(claims.get("preferred_username") or sub),
        "email": claims.get("email") if verified else None,
        "groups": [str(g) for g in claims.get("groups", []) or []],
        "roles": [str(r) for r in claims.get("roles", []) or []],
    }


def _addressed_to(identity: dict[str, Any], host: str) -> bool:
    return any(urlsplit(str(aud)).hostname == host for aud in identity.get("aud", []))


class _BadAudience(ValueError):
    pass


def _pinned_host() -> str | None:
    return pinned_host(request.args.get("aud") if request.environ.get("QUERY_STRING") else None)


def pinned_host(raw: str | None) -> str | None:
    """The app the verify URL names (``?aud=https://HOST[:PORT]``), as a host name; None
    when the URL names none. Anything but a bare http(s) origin is a configuration error."""
    if raw is None:
        return None
    try:
        parts = urlsplit(raw)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError as exc:
        raise _BadAudience from exc
    host = parts.hostname or ""
    if (parts.scheme not in ("http", "https") or len(host) > 253
            or not HOSTNAME.fullmatch(host) or "@" in parts.netloc
            or parts.path not in ("", "/") or parts.query or parts.fragment):
        raise _BadAudience
    return host


def _requested_host() -> str:
    """The host the proxied request was for (``X-Forwarded-Host``, else ``Host``), no port.

    With ``SSO_TRUSTED_PROXY_HOPS`` set, ProxyFix has already put the trusted hop's
    ``X-Forwarded-Host`` into ``request.host``; the raw header's leftmost value would be
    the one a client can forge.
    """
    return requested_host(request.headers.get("X-Forwarded-Host"), request.host,
                          trusted_hops=registry().settings.trusted_proxy_hops)


def requested_host(forwarded: str | None, host: str | None, *, trusted_hops: int) -> str:
    raw = (host or "") if trusted_hops else (forwarded or host or "")
    host = raw.split(",", 1)[0].strip().lower()
    if host.startswith("["):  # IPv6 literal
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if ":" in host else host


def _original_url() -> str | None:
    """The URL the proxy is asking about, from the headers Traefik and Caddy send."""
    host = request.headers.get("X-Forwarded-Host", "").split(",", 1)[0].strip()
    proto = request.headers.get("X-Forwarded-Proto", "").split(",", 1)[0].strip().lower()
    uri = request.headers.get("X-Forwarded-Uri", "/")
    if not host or proto not in ("http", "https") or not uri.startswith("/"):
        return None
    return f"{proto}://{host}{uri}"


def _sign_in_redirect() -> BaseResponse | None:
    """Traefik and Caddy hand a non-2xx answer straight to the browser: when the
    verify URL asks for it (``?redirect=1``), send a page navigation to sign-in."""
    if request.args.get("redirect") not in ("1", "true"):
        return None
    if request.method not in ("GET", "HEAD") or not request.accept_mimetypes.accept_html:
        return None  # an API call or a form post gets the 401, not a page
    target = safe_return_url(_original_url(), registry().settings.forward_auth_domains)
    if target is None:
        return None
    return redirect(registry().settings.issuer + "/auth/start?rd=" + quote(target, safe=""))


@bp.route("/auth/verify", methods=ALL_METHODS)
@origin_exempt  # read-only, and called by proxies with the original request's method
@csrf.exempt
def verify() -> BaseResponse:
    try:
        # Pinned by the proxy's own configuration: headers cannot move a check to another app.
        host = _pinned_host() or _requested_host()
    except _BadAudience:
        answer = jsonify(error="invalid_request",
                         error_description="aud must be an app's origin, like "
                                           "https://wiki.acme.test.")
        answer.status_code = 400
        return answer
    token = bearer_token()
    identity = _identity_from_token(token) if token else _identity_from_session()
    if token and identity is not None and not _addressed_to(identity, host):
        # A token issued to app A must not open app B: bearer tokens are accepted only when
        # their audience names this host (request them with resource=https://HOST, RFC 8707).
        identity = None
    if identity is None:
        if not token:
            sign_in = _sign_in_redirect()
            if sign_in is not None:
                return sign_in
        return bearer_error(
            401, "unauthorized",
            "The access token is missing, expired, revoked or not ours." if token
            else "Sign in to Keycard first.",
            'Bearer realm="keycard", error="invalid_token"' if token else 'Bearer realm="keycard"',
        )
    wanted = request.args.get("allowed_roles", "") if request.environ.get("QUERY_STRING") else ""
    if not holds_a_role(identity, wanted):
        return bearer_error(403, "insufficient_role",
                       "You are signed in but do not hold a role this app requires.",
                       'Bearer realm="keycard", error="insufficient_scope"')
    return current_app.response_class(status=200, headers=answer_headers(
        identity, host, registry().asserter))


def holds_a_role(identity: dict[str, Any], allowed_roles: str) -> bool:
    """``allowed_roles`` (comma-separated, any of them; none listed: anyone)."""
    wanted = {r.strip() for r in allowed_roles.split(",") if r.strip()}
    return not wanted or bool(wanted & set(identity["roles"]))


def answer_headers(identity: dict[str, Any], host: str, asserter: Asserter
                   ) -> list[tuple[str, str]]:
    headers = [
        (HEADER_PREFIX + "User", identity["preferred_username"]),
        (HEADER_PREFIX + "Sub", identity["sub"]),
        (HEADER_PREFIX + "Groups", ",".join(identity["groups"])),
        (HEADER_PREFIX + "Roles", ",".join(identity["roles"])),
        (HEADER_PREFIX + "Assertion", asserter.sign(identity, host)),
    ]
    if identity["email"]:
        headers.append((HEADER_PREFIX + "Email", identity["email"]))
    return headers


# -- sending a browser through sign-in and back ---------------------------------------------


def _serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(registry().settings.secret_key,
                                  salt="keycard.forward-auth.return")


def _raw_rd() -> str | None:
    """``rd`` as nginx sends it: ``$request_uri`` cannot be URL-encoded in nginx's core,
    so ``?rd=https://app/x?a=1&b=2`` means the whole rest of the query, verbatim."""
    query = request.query_string.decode("latin-1")
    if query.lower().startswith(("rd=http://", "rd=https://")):
        return query[3:]
    return request.args.get("rd")


def _refused() -> Response:
    return error_response(
        400, "This return address is not allowed",
        "This return address is not allowed: Keycard only sends you back to the "
        "company's own apps. Open the app again from its usual address.",
        code="invalid_request",
    )


@bp.get("/auth/start")
def start() -> BaseResponse:
    rd = safe_return_url(_raw_rd(), registry().settings.forward_auth_domains)
    if rd is None:
        return _refused()
    if current_user.is_authenticated:
        return redirect(rd)
    # /login stays local-only: the absolute address travels signed, through our own page.
    back = url_for("forward_auth.back", rd=_serializer().dumps(rd))
    return redirect(url_for("auth.login", next=back))


@bp.get("/auth/return")
def back() -> BaseResponse:
    try:
        rd = _serializer().loads(request.args.get("rd", ""),
                                 max_age=registry().settings.login_state_seconds)
    except BadSignature:
        rd = None
    # Checked again: the allowed domains may have changed while the person signed in.
    rd = safe_return_url(rd if isinstance(rd, str) else None,
                         registry().settings.forward_auth_domains)
    if rd is None:
        return _refused()
    if not current_user.is_authenticated:
        return redirect(url_for("auth.login", next=request.full_path))
    return redirect(rd)


# -- the everyday check without Flask ---------------------------------------------------------

VERIFY_QUERY = frozenset({"aud", "allowed_roles"})


class Decline(Exception):
    """Not the everyday answer: the view answers (401, 403, 400, a redirect, a re-check)."""


class LeanVerify:
    """WSGI layer answering the everyday ``/auth/verify``, a 200 for a live session or
    bearer token, without Flask's request machinery (issue #15: a third of the check's CPU).

    Same rules through the same helpers and services: the session record read once (which
    slides its idle expiry), its person as :func:`~sso.login.users.load_user` takes them, a
    token through :meth:`Provider.token_claims`, the same host, roles and headers. Anything
    else goes to the view as it came: no session, an ended or stale one (the view re-checks
    membership upstream and writes), a refused token or role, a bad ``aud``, ``redirect``,
    a repeated parameter. tests/test_forward_auth_lean.py sends each kind both ways."""

    def __init__(self, app: WSGIApplication, reg: Registry, cookie_name: str) -> None:
        self.app = app
        self.enabled = True
        self.reg = reg
        self.cookie_name = cookie_name
        self.issuer = reg.settings.issuer
        self.trusted_hops = reg.settings.trusted_proxy_hops

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse
                 ) -> Iterable[bytes]:
        if (environ.get("PATH_INFO") != "/auth/verify" or not self.enabled
                or environ.get("REQUEST_METHOD") not in ALL_METHODS):
            return self.app(environ, start_response)
        try:
            headers = self._answer(environ)
        except Exception:  # noqa: BLE001 - Decline, or an outage: nothing written, the view answers
            return self.app(environ, start_response)
        environ[ROUTE] = "/auth/verify"
        start_response("200 OK", [*headers, ("Content-Type", "text/html; charset=utf-8"),
                                  ("Content-Length", "0")])  # as Flask lays them out
        return [b""]

    def _answer(self, environ: WSGIEnvironment) -> list[tuple[str, str]]:
        raw = environ.get("QUERY_STRING", "")
        if not raw.isascii():  # Werkzeug decodes raw bytes as UTF-8, strictly: the view's call
            raise Decline
        query: dict[str, str] = {}
        for name, value in parse_qsl(raw, keep_blank_values=True):
            if name not in VERIFY_QUERY or name in query:
                raise Decline
            query[name] = value
        host = pinned_host(query.get("aud")) or requested_host(
            environ.get("HTTP_X_FORWARDED_HOST"), _host(environ), trusted_hops=self.trusted_hops)
        authorization = environ.get("HTTP_AUTHORIZATION")
        if authorization is not None:
            identity = self._bearer(authorization, host)
        else:
            identity = self._session(environ.get("HTTP_COOKIE", ""))
        if not holds_a_role(identity, query.get("allowed_roles", "")):
            raise Decline
        return answer_headers(identity, host, self.reg.asserter)

    def _bearer(self, authorization: str, host: str) -> dict[str, Any]:
        token = authorization[7:].strip() if authorization[:7].lower() == "bearer " else ""
        claims = self.reg.provider.token_claims(token) if token else None
        if claims is None:
            raise Decline
        identity = identity_of_token(claims)
        if not _addressed_to(identity, host):
            raise Decline
        return identity

    def _session(self, cookie_header: str) -> dict[str, Any]:
        if self.cookie_name not in cookie_header:
            raise Decline
        sid = parse_cookie(cookie_header).get(self.cookie_name)
        if not sid or len(sid) > 128:
            raise Decline
        record = self.reg.sessions.load(sid)
        if record is None or not record[PROFILE]:
            raise Decline
        user_id = orjson.loads(record[DATA] or "{}").get("_user_id")
        profile = orjson.loads(record[PROFILE])
        if not isinstance(user_id, str) or not user_id or user_id != record[USER] or (
                self.reg.accounts.is_stale(profile)):
            raise Decline
        return identity_of(Profile.from_dict(profile), self.issuer)


def _host(environ: WSGIEnvironment) -> str:
    """``request.host`` as Werkzeug gives it (no trusted-hosts list is configured)."""
    return str(get_host(environ.get("wsgi.url_scheme", "http"), environ.get("HTTP_HOST"),
                        (environ.get("SERVER_NAME", ""), int(environ.get("SERVER_PORT") or 0))))
