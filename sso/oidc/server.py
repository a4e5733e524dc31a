"""The provider assembled from Authlib parts: grants, endpoints, storage, policy.

Composition, not a god object: :class:`Provider` holds the services the grants
need (records, accounts, keys, clients) and the policy they share (who is the
subject, may this person use this client); Authlib's server dispatches.
"""

from __future__ import annotations

import time
from types import EllipsisType
from typing import Any

import orjson
from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.integrations.flask_oauth2.requests import FlaskOAuth2Payload, FlaskOAuth2Request
from authlib.oauth2.base import OAuth2Error
from authlib.oauth2.rfc6749 import InsecureTransportError, OAuth2Request
from authlib.oauth2.rfc6749.errors import InvalidClientError, InvalidRequestError
from authlib.oauth2.rfc6749.util import extract_basic_authorization
from authlib.oauth2.rfc9207 import IssuerParameter
from flask import Response, request
from flask import request as flask_request

from sso.accounts import Accounts, Profile
from sso.audit import Audit
from sso.metrics import TOKENS
from sso.oidc.client_registry import ClientRegistry
from sso.oidc.device import register_device_flow
from sso.oidc.device_records import DeviceRecords
from sso.oidc.endpoints import EndSession, Introspection, Revocation
from sso.oidc.grants import (
    AuthorizationCodeGrant,
    ClientCredentialsGrant,
    OpenIDCode,
    RefreshTokenGrant,
    S256CodeChallenge,
)
from sso.oidc.keys import KeyRing
from sso.oidc.records import Grant, Records
from sso.oidc.scopes import SUPPORTED_SCOPES
from sso.oidc.tokens import (
    InvalidToken,
    Subject,
    TokenIssuer,
    VerifiedTokens,
    subject_for,
)
from sso.ratelimit import RateLimiter
from sso.sessions import SessionStore


class Provider:
    """Services and policy shared by every grant and endpoint."""

    def __init__(self, *, issuer: str, records: Records, accounts: Accounts, keys: KeyRing,
                 clients: ClientRegistry, audit_log: Audit, sessions: SessionStore,
                 devices: DeviceRecords) -> None:
        self.issuer = issuer
        self.records = records
        self.accounts = accounts
        self.keys = keys
        self.clients = clients
        self.audit_log = audit_log
        self.sessions = sessions
        self.devices = devices
        self.verified = VerifiedTokens()

    def audit(self, event: str, **details: Any) -> None:
        self.audit_log.record(event, ip=request.remote_addr or "", **details)

    def may_use(self, profile: Profile, client: Any) -> bool:
        """A client's required roles are any-of; none means every signed-in employee."""
        required = set(getattr(client, "required_roles", []) or [])
        return not required or bool(required & set(profile.roles))

    def subject(self, user_id: str, *, auth_time: int, sid: str, client: Any,
                profile: Profile | None | EllipsisType = ...) -> Subject | None:
        """The person behind a grant, re-checked upstream when their membership is stale.

        Every grant re-checks (code, refresh, device): a code or an approved device request
        outliving the end of the person's access (lost membership, or a profile GitHub
        could not confirm for ``SSO_MEMBERSHIP_MAX_STALE``) must not mint tokens.
        ``profile``: the stored profile when the caller read it already (in a pipeline)."""
        if profile is ...:
            profile = self.accounts.get(user_id)
        if profile is None:
            return None
        if self.accounts.is_stale(profile.as_dict()):
            # None: access has ended, and Accounts.end_access revoked the token grants.
            profile = self.accounts.recheck(user_id, actor="refresh")
            if profile is None:
                return None
        else:
            profile = self.accounts.with_roles(profile)
        if not self.may_use(profile, client):
            return None
        return Subject(profile, subject_for(self.issuer, user_id), auth_time, sid)

    def token_claims(self, token: str) -> dict[str, Any] | None:
        """Claims of a live access token we issued, or None (bad, expired, revoked)."""
        try:
            claims = self.verified.verify(token, self.keys.public_keyset, "at+jwt")
        except InvalidToken:
            return None
        if claims.get("iss") != self.issuer or not self.issued_to_live_client(claims):
            return None
        if not self.records.access_token_alive(str(claims.get("jti", "")),
                                               str(claims.get("client_id", ""))):
            return None
        return claims

    def issued_to_live_client(self, claims: dict[str, Any]) -> bool:
        """The token's client is still registered and has not revoked its tokens since
        (``sso clients rotate-secret --revoke-tokens``). Cheap: the client comes from the
        registry's in-process cache, so a deletion is seen within its few seconds."""
        client = self.clients.shared(str(claims.get("client_id", "")))
        if client is None:
            return False
        iat = claims.get("iat")
        return isinstance(iat, int) and iat >= client.tokens_valid_after


class _Request(FlaskOAuth2Request):  # type: ignore[misc]
    """Authlib's Flask request, built for the hot path.

    ``OAuth2Request.__init__`` rebuilds ``request.url`` (an IRI round trip) and parses
    it for its https check on every request: together a tenth of an introspection.
    Here the URI is the issuer's, checked once when the server is built, and the same
    attributes are set (tests/oidc/test_provider_internals.py compares them with
    Authlib's). Behind a TLS-terminating proxy ``request.url`` said ``http`` anyway
    where the issuer, which the configuration validates, says ``https``.
    """

    def __init__(self, request: Any, base: str) -> None:
        self.method = request.method
        self.uri = base + request.path
        self.headers = request.headers
        self._body = None
        self.payload = FlaskOAuth2Payload(request)
        self.client = self.auth_method = self.user = None
        self.authorization_code = self.refresh_token = self.credential = None
        self._scope = None
        self._request = request


class TooManyAttempts(OAuth2Error):  # type: ignore[misc]
    """429 after too many failed client authentications (``SSO_RATE_LIMITS``)."""

    error = "temporarily_unavailable"
    status_code = 429

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"Too many failed client authentications: retry in {retry_after} s.")
        self.retry_after = retry_after

    def get_headers(self) -> list[tuple[str, str]]:
        headers: list[tuple[str, str]] = super().get_headers()
        return [*headers, ("Retry-After", str(self.retry_after))]


class KeycardServer(AuthorizationServer):  # type: ignore[misc]
    def __init__(self, provider: Provider, limiter: RateLimiter | None = None) -> None:
        super().__init__()
        self.provider = provider
        self.limiter = limiter
        self._base = provider.issuer.rstrip("/")
        InsecureTransportError.check(self._base)  # once, for every request (see _Request)

    def create_oauth2_request(self, request: Any) -> OAuth2Request:
        return _Request(flask_request, self._base)

    def handle_response(self, status_code: int, payload: Any, headers: Any) -> Response:
        if isinstance(payload, dict):
            payload = orjson.dumps(payload)
        return Response(payload, status=status_code, headers=headers)

    def authenticate_client(self, request: Any, methods: list[str],
                            endpoint: str = "token") -> Any:
        """One authentication method per request; failures counted per client IP and client_id.

        Over either limit, further *failures* answer 429; a client presenting its right
        secret is never refused, whoever else shares its address or guesses at its id
        (secrets are 256 random bits: guessing is not the risk, locking people out is).
        """
        # RFC 6749 §2.3: a client "MUST NOT use more than one authentication method in each
        # request". Authlib tries them in turn, so a wrong secret in the Basic header beside
        # the right one in the body would pass: refuse the pair outright.
        basic = str(request.headers.get("Authorization", "")).lower().startswith("basic ")
        if basic and "client_secret" in request.payload.data:
            raise InvalidRequestError("Use one client authentication method: the HTTP Basic "
                                      "header or client_secret in the body, not both.")
        limiter = self.limiter
        ip = "ip|" + (flask_request.remote_addr or "")
        try:
            return super().authenticate_client(request, methods, endpoint)
        except InvalidClientError:
            if limiter is None:
                raise
            named = request.payload.client_id or extract_basic_authorization(request.headers)[0]
            over = limiter.hit("client_auth_failures", [ip, f"client|{named or ''}"])
            if over is None:
                raise
            raise TooManyAttempts(over[1]) from None

    def query_client(self, client_id: str) -> Any:
        # Authlib only reads the client: the registry's shared copy saves a copy per request.
        return self.provider.clients.shared(client_id) if client_id else None

    def save_token(self, token: dict[str, Any], request: Any) -> None:
        """Persist what the response will carry (the grant, the refresh token)."""
        TOKENS.labels(request.payload.grant_type or "").inc()
        user = request.user
        client = request.client
        if not isinstance(user, Subject):
            return  # client credentials: stateless access token, nothing to store
        scopes = set(str(token.get("scope", "")).split())
        from flask import g

        records = self.provider.records
        grant_type = request.payload.grant_type
        refresh = token.get("refresh_token")
        kept = None
        if refresh and "offline_access" in scopes and client.check_grant_type("refresh_token"):
            kept = (refresh, int(getattr(client, "refresh_idle_ttl", 14 * 86400)),
                    g.get("grant_resources") or None)
        else:
            token.pop("refresh_token", None)
        if grant_type == "authorization_code" or grant_type.endswith("device_code"):
            lifetime = int(getattr(client, "refresh_absolute_ttl", 90 * 86400))
            grant = Grant(user.grant_id, user.profile.user_id, client.get_client_id(),
                          str(token.get("scope", "")), user.sid, user.auth_time,
                          int(time.time()) + lifetime)
            # False: a replay of this code revoked the grant while this (first) redemption
            # was under way. It still answers like the first use always does (a code
            # redeemed twice gives exactly one success), but everything it issues is born dead.
            records.create_grant(grant, kept)
        elif kept is not None:
            records.save_refresh_token(kept[0], user.grant_id, client.get_client_id(),
                                       str(token.get("scope", "")), kept[1], kept[2],
                                       user.profile.user_id)


class Issuer(IssuerParameter):  # type: ignore[misc]
    """RFC 9207: ``iss`` on every authorization response."""

    def __init__(self, issuer: str) -> None:
        self.issuer = issuer

    def get_issuer(self) -> str:
        return self.issuer


def build_server(provider: Provider, app: Any, *, device_poll_interval: int,
                 limiter: RateLimiter | None = None) -> KeycardServer:
    server = KeycardServer(provider, limiter)
    server.init_app(app)
    # an unknown scope is invalid_scope (RFC 6749 §4.1.2.1), not silently
    # dropped. Set after init_app, which resets it from OAUTH2_SCOPES_SUPPORTED.
    server.scopes_supported = list(SUPPORTED_SCOPES)
    server.register_token_generator("default", TokenIssuer(provider.issuer, provider.keys))
    server.register_grant(
        AuthorizationCodeGrant,
        [S256CodeChallenge(required=True), OpenIDCode(provider.issuer, provider.keys)],
    )
    server.register_grant(RefreshTokenGrant)
    server.register_grant(ClientCredentialsGrant)
    register_device_flow(server, provider, device_poll_interval)  # RFC 8628
    server.register_extension(Issuer(provider.issuer))
    server.register_endpoint(Introspection)
    server.register_endpoint(Revocation)
    server.register_endpoint(EndSession)
    return server
