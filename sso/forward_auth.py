"""The ``forward_auth`` blueprint: Keycard as the authority behind a reverse proxy.

Apps that cannot speak OpenID Connect sit behind nginx (``auth_request``), Traefik
(``ForwardAuth``) or Caddy (``forward_auth``). The proxy asks ``/auth/verify`` about
every request; Keycard answers 200 with the person in ``X-Auth-Request-*`` headers
(plus a 60-second ES256 assertion the app can verify against ``/jwks.json``), 401
when nobody is signed in, 403 when a required role is missing. ``/auth/start``
sends a browser through sign-in and back to the page it wanted, but only to the
domains in ``SSO_FORWARD_AUTH_DOMAINS`` (SECURITY: no open redirects).

The verify view is the hot path: a browser session costs the one Redis round trip
that opening the session already is, a bearer token the one ``token_claims`` makes;
nothing is written (no audit per check) and no decision is cached in the process,
so a revoked session or token stops working at the next request. Only the signed
assertion is reused, for half its life, when the same person asks for the same app.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote, urlsplit

from flask import Blueprint, Response, current_app, jsonify, redirect, request, url_for
from flask_login import current_user
from itsdangerous import BadSignature, URLSafeTimedSerializer
from joserfc import jwt
from werkzeug.wrappers import Response as BaseResponse

from sso.login.users import session_user
from sso.oidc.tokens import subject_for
from sso.registry import services
from sso.web.csrf import csrf, origin_exempt
from sso.web.errors import error_response
from sso.web.redirects import HOSTNAME, safe_return_url

bp = Blueprint("forward_auth", __name__)

ASSERTION_TTL = 60  # seconds: the app checks it on arrival; it is never stored
ASSERTION_ALG = "ES256"
HEADER_PREFIX = "X-Auth-Request-"
# Traefik forwards the original request's method; answer every one of them.
ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


# -- the identity behind a request -------------------------------------------------------


def _bearer() -> str | None:
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    return None


def _identity_from_session() -> dict[str, Any] | None:
    # The user comes from the session opened before the view (one Redis round trip);
    # the user loader re-checks membership upstream only when the snapshot is stale.
    user = session_user()
    if user is None:
        return None
    profile = user.profile
    return {
        "sub": subject_for(services().settings.issuer, profile.user_id),
        "preferred_username": profile.login,
        "email": profile.email if profile.email and profile.email_verified else None,
        "groups": list(profile.groups),
        "roles": list(profile.roles),
    }


def _identity_from_token(token: str) -> dict[str, Any] | None:
    claims = current_app.extensions["keycard.oidc"].provider.token_claims(token)
    if claims is None:
        return None
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


def _addressed_to_this_app(identity: dict[str, Any]) -> bool:
    host = _requested_host()
    return any(urlsplit(str(aud)).hostname == host for aud in identity.get("aud", []))


def _requested_host() -> str:
    """The host the proxied request was for (``X-Forwarded-Host``, else ``Host``), no port."""
    raw = request.headers.get("X-Forwarded-Host") or request.host or ""
    host = raw.split(",", 1)[0].strip().lower()
    if host.startswith("["):  # IPv6 literal
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if ":" in host else host


class AssertionCache:
    """Signed assertions, reused while more than half their life is left.

    Signing was the largest cost of a check, and a proxy asks about every request a
    page makes (its scripts, images, API calls) for the same person and app. Only the
    signature is reused: the session or token behind it is still checked at every
    request, so revoking either still takes effect at once.
    """

    # Entries; cleared whole when full (a dict, no eviction bookkeeping). With hosts limited
    # to real host names (see _assertion) an entry stays under a few kilobytes.
    LIMIT = 4096

    def __init__(self) -> None:
        self._entries: dict[tuple[Any, ...], tuple[str, int]] = {}

    def get(self, key: tuple[Any, ...], now: int) -> str | None:
        found = self._entries.get(key)
        if found is not None and found[1] - now > ASSERTION_TTL // 2:
            return found[0]
        return None

    def put(self, key: tuple[Any, ...], assertion: str, expires: int) -> None:
        if len(self._entries) >= self.LIMIT:
            self._entries.clear()
        self._entries[key] = (assertion, expires)


bp.record_once(lambda state: state.app.extensions.setdefault("keycard.assertions",
                                                             AssertionCache()))


def _assertion(identity: dict[str, Any], audience: str) -> str:
    extensions = current_app.extensions
    key = extensions["keycard.keys"].signing_key(ASSERTION_ALG)
    cache: AssertionCache = extensions["keycard.assertions"]
    now = int(time.time())
    # The audience comes from a request header: only a plausible host name is remembered,
    # so nobody can fill the cache with long, ever-changing values.
    cacheable = len(audience) <= 253 and HOSTNAME.fullmatch(audience) is not None
    cache_key = (key.kid, audience, identity["sub"], identity["preferred_username"],
                 identity["email"], tuple(identity["groups"]), tuple(identity["roles"]))
    reused = cache.get(cache_key, now) if cacheable else None
    if reused is not None:
        return reused
    claims: dict[str, Any] = {
        "iss": services().settings.issuer,
        "sub": identity["sub"],
        "aud": audience,
        "iat": now,
        "exp": now + ASSERTION_TTL,
        "preferred_username": identity["preferred_username"],
        "groups": identity["groups"],
        "roles": identity["roles"],
    }
    if identity["email"]:
        claims["email"] = identity["email"]
        claims["email_verified"] = True
    header = {"alg": ASSERTION_ALG, "typ": "JWT", "kid": key.kid}
    assertion = jwt.encode(header, claims, key, algorithms=[ASSERTION_ALG])
    if cacheable:
        cache.put(cache_key, assertion, claims["exp"])
    return assertion


def _denied(status: int, error: str, description: str, challenge: str) -> Response:
    response = jsonify(error=error, error_description=description)
    response.status_code = status
    response.headers["WWW-Authenticate"] = challenge
    return response


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
    target = safe_return_url(_original_url(), services().settings.forward_auth_domains)
    if target is None:
        return None
    return redirect(services().settings.issuer + "/auth/start?rd=" + quote(target, safe=""))


@bp.route("/auth/verify", methods=ALL_METHODS)
@origin_exempt  # read-only, and called by proxies with the original request's method
@csrf.exempt
def verify() -> BaseResponse:
    token = _bearer()
    identity = _identity_from_token(token) if token else _identity_from_session()
    if token and identity is not None and not _addressed_to_this_app(identity):
        # A token issued to app A must not open app B: bearer tokens are accepted only when
        # their audience names this host (request them with resource=https://HOST, RFC 8707).
        identity = None
    if identity is None:
        if not token:
            sign_in = _sign_in_redirect()
            if sign_in is not None:
                return sign_in
        return _denied(
            401, "unauthorized",
            "The access token is missing, expired, revoked or not ours." if token
            else "Sign in to Keycard first.",
            'Bearer realm="keycard", error="invalid_token"' if token else 'Bearer realm="keycard"',
        )
    wanted = {r.strip() for r in request.args.get("allowed_roles", "").split(",") if r.strip()
              } if request.environ.get("QUERY_STRING") else set()
    if wanted and not wanted & set(identity["roles"]):
        return _denied(403, "insufficient_role",
                       "You are signed in but do not hold a role this app requires.",
                       'Bearer realm="keycard", error="insufficient_scope"')
    headers = [
        (HEADER_PREFIX + "User", identity["preferred_username"]),
        (HEADER_PREFIX + "Sub", identity["sub"]),
        (HEADER_PREFIX + "Groups", ",".join(identity["groups"])),
        (HEADER_PREFIX + "Roles", ",".join(identity["roles"])),
        (HEADER_PREFIX + "Assertion", _assertion(identity, _requested_host())),
    ]
    if identity["email"]:
        headers.append((HEADER_PREFIX + "Email", identity["email"]))
    return current_app.response_class(status=200, headers=headers)


# -- sending a browser through sign-in and back ---------------------------------------------


def _serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(services().settings.secret_key,
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
    rd = safe_return_url(_raw_rd(), services().settings.forward_auth_domains)
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
                                 max_age=services().settings.login_state_seconds)
    except BadSignature:
        rd = None
    # Checked again: the allowed domains may have changed while the person signed in.
    rd = safe_return_url(rd if isinstance(rd, str) else None,
                         services().settings.forward_auth_domains)
    if rd is None:
        return _refused()
    if not current_user.is_authenticated:
        return redirect(url_for("auth.login", next=request.full_path))
    return redirect(rd)

