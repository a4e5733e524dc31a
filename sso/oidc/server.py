"""The provider assembled from Authlib parts: grants, endpoints, storage, policy.

Composition, not a god object: :class:`Provider` holds the services the grants
need (records, accounts, keys, clients) and the policy they share (who is the
subject, may this person use this client); Authlib's server dispatches.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.integrations.flask_oauth2.requests import FlaskOAuth2Payload, FlaskOAuth2Request
from authlib.oauth2.rfc6749 import InsecureTransportError, OAuth2Request
from authlib.oauth2.rfc6749.errors import InvalidRequestError
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from authlib.oauth2.rfc9207 import IssuerParameter
from authlib.oidc.rpinitiated import EndSessionEndpoint
from flask import Response, request
from flask import request as flask_request

from sso.accounts import Accounts, Profile
from sso.audit import Audit
from sso.oidc.device import register_device_flow
from sso.metrics import TOKENS
from sso.oidc.grants import (
    AuthorizationCodeGrant,
    ClientCredentialsGrant,
    OpenIDCode,
    RefreshTokenGrant,
    S256CodeChallenge,
)
from sso.oidc.records import Grant, Records
from sso.oidc.tokens import (
    SIGNING_ALGS,
    SUPPORTED_SCOPES,
    InvalidToken,
    Subject,
    TokenIssuer,
    VerifiedTokens,
    subject_for,
)


class Provider:
    """Services and policy shared by every grant and endpoint."""

    def __init__(self, *, issuer: str, records: Records, accounts: Accounts, keys: Any,
                 clients: Any, audit_log: Audit) -> None:
        self.issuer = issuer
        self.records = records
        self.accounts = accounts
        self.keys = keys
        self.clients = clients
        self.audit_log = audit_log
        self.verified = VerifiedTokens()

    def audit(self, event: str, **details: Any) -> None:
        self.audit_log.record(event, ip=request.remote_addr or "", **details)

    def may_use(self, profile: Profile, client: Any) -> bool:
        """A client's required roles are any-of; none means every signed-in employee."""
        required = set(getattr(client, "required_roles", []) or [])
        return not required or bool(required & set(profile.roles))

    def subject(self, user_id: str, *, auth_time: int, sid: str, client: Any,
                recheck: bool = False) -> Subject | None:
        """The person behind a grant, re-checked upstream when their membership is stale."""
        profile = self.accounts.get(user_id)
        if profile is None:
            return None
        if recheck and self.accounts.is_stale(profile.as_dict()):
            profile = self.accounts.recheck(user_id, actor="refresh")
            if profile is None:
                self.records.revoke_user_grants(user_id)
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
        if claims.get("iss") != self.issuer or not self.records.access_token_alive(
            str(claims.get("jti", ""))
        ):
            return None
        return claims


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


class KeycardServer(AuthorizationServer):  # type: ignore[misc]
    def __init__(self, provider: Provider) -> None:
        super().__init__()
        self.provider = provider
        self._base = provider.issuer.rstrip("/")
        InsecureTransportError.check(self._base)  # once, for every request (see _Request)

    def create_oauth2_request(self, request: Any) -> OAuth2Request:
        return _Request(flask_request, self._base)

    def handle_response(self, status_code: int, payload: Any, headers: Any) -> Response:
        if isinstance(payload, dict):
            payload = orjson.dumps(payload)
        return Response(payload, status=status_code, headers=headers)

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
        records = self.provider.records
        grant_type = request.payload.grant_type
        if grant_type == "authorization_code" or grant_type.endswith("device_code"):
            lifetime = int(getattr(client, "refresh_absolute_ttl", 90 * 86400))
            grant = Grant(user.grant_id, user.profile.user_id, client.get_client_id(),
                          str(token.get("scope", "")), user.sid, user.auth_time,
                          int(time.time()) + lifetime)
            # False: a replay of this code revoked the grant while this (first) redemption
            # was under way. It still answers like the first use always does (SECURITY
            # 15: exactly one success), but everything it issues is born dead.
            records.create_grant(grant)
        refresh = token.get("refresh_token")
        if refresh and "offline_access" in scopes and client.check_grant_type("refresh_token"):
            from flask import g

            records.save_refresh_token(refresh, user.grant_id, client.get_client_id(),
                                       str(token.get("scope", "")),
                                       int(getattr(client, "refresh_idle_ttl", 14 * 86400)),
                                       g.get("token_audience") or None)
        else:
            token.pop("refresh_token", None)


class Issuer(IssuerParameter):  # type: ignore[misc]
    """RFC 9207: ``iss`` on every authorization response."""

    def __init__(self, issuer: str) -> None:
        self.issuer = issuer

    def get_issuer(self) -> str:
        return self.issuer


class _HintTolerant:
    """RFC 7009 §2.1 / 7662: an unknown ``token_type_hint`` is ignored, not an error."""

    SUPPORTED_TOKEN_TYPES = ("access_token", "refresh_token")
    CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]

    def check_params(self, request: Any, client: Any) -> None:
        # Authlib's raises unsupported_token_type for an unknown hint; the form is an
        # ImmutableMultiDict here, so dropping the hint is not an option: check only the
        # token (query_token below looks the token up whatever the hint says).
        if "token" not in request.form:
            raise InvalidRequestError()


class TokenRef:
    """A token as the introspection/revocation endpoints see it."""

    def __init__(self, kind: str, client_id: str, claims: dict[str, Any] | None = None,
                 refresh: dict[str, Any] | None = None, raw: str = "") -> None:
        self.kind = kind
        self.client_id = client_id
        self.claims = claims or {}
        self.refresh = refresh or {}
        self.raw = raw

    def check_client(self, client: Any) -> bool:
        return bool(self.client_id == client.get_client_id())

    def get_client_id(self) -> str:
        return self.client_id

    def is_expired(self) -> bool:
        return False

    def is_revoked(self) -> bool:
        return False


def lookup_token(provider: Provider, token: str, *, live_only: bool) -> TokenRef | None:
    """An access token (JWT) or a refresh token (opaque), whatever the hint says."""
    if token.count(".") == 2:
        try:
            claims = provider.verified.verify(token, provider.keys.public_keyset, "at+jwt")
        except InvalidToken:
            return None
        if claims.get("iss") != provider.issuer:
            return None
        if live_only and not provider.records.access_token_alive(str(claims.get("jti", ""))):
            return None
        return TokenRef("access_token", str(claims.get("client_id", "")), claims=claims)
    record = provider.records.peek_refresh_token(token)
    if record is None or (live_only and (record.get("r") or
                                         provider.records.get_grant(record["g"]) is None)):
        return None
    return TokenRef("refresh_token", str(record["c"]), refresh=record, raw=token)


class Introspection(_HintTolerant, IntrospectionEndpoint):  # type: ignore[misc]
    # RFC 7662 §2.1 / SECURITY 26: a client_id alone is no authentication (anyone can
    # send a public client's id): only confidential clients introspect, as announced.
    CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]

    def __init__(self, server: KeycardServer) -> None:
        super().__init__(server)
        self.provider = server.provider

    def query_token(self, token_string: str, token_type_hint: str | None) -> TokenRef | None:
        return lookup_token(self.provider, token_string, live_only=True)

    def check_permission(self, token: TokenRef, client: Any, request: Any) -> bool:
        # SECURITY 26: a token issued to another client (and not addressed to this one)
        # is reported exactly as an unknown one.
        if token.check_client(client):
            return True
        aud = token.claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else list(aud or [])
        return client.get_client_id() in audiences

    def introspect_token(self, token: TokenRef) -> dict[str, Any]:
        if token.kind == "refresh_token":
            grant = self.provider.records.get_grant(token.refresh["g"])
            return {"active": True, "token_type": "refresh_token", "client_id": token.client_id,
                    "scope": token.refresh.get("s", ""), "iss": self.provider.issuer,
                    "exp": grant.expires_at if grant else None}
        claims = token.claims
        payload: dict[str, Any] = {key: claims[key] for key in (
            "scope", "client_id", "sub", "aud", "iss", "exp", "iat", "jti", "auth_time",
            "roles", "groups", "preferred_username") if key in claims}
        payload.update(active=True, token_type="Bearer")
        if "preferred_username" in claims:
            payload["username"] = claims["preferred_username"]
        return payload


class Revocation(_HintTolerant, RevocationEndpoint):  # type: ignore[misc]
    def __init__(self, server: KeycardServer) -> None:
        super().__init__(server)
        self.provider = server.provider

    def query_token(self, token_string: str, token_type_hint: str | None) -> TokenRef | None:
        return lookup_token(self.provider, token_string, live_only=False)

    def revoke_token(self, token: TokenRef, request: Any) -> None:
        records = self.provider.records
        if token.kind == "refresh_token":
            records.revoke_grant(token.refresh["g"])  # RFC 7009 §2.1: ends its access tokens
        else:
            records.revoke_access_token(str(token.claims.get("jti")), int(token.claims["exp"]))
        self.provider.audit("oauth.token_revoked", kind=token.kind, client=token.client_id)


class EndSession(EndSessionEndpoint):  # type: ignore[misc]
    """RP-initiated logout: exact post-logout URI, ``id_token_hint`` verified with our keys."""

    def __init__(self, server: KeycardServer) -> None:
        super().__init__(server)
        self.provider = server.provider

    def get_server_jwks(self) -> Any:
        return self.provider.keys.public_keyset()

    def get_algorithms(self) -> list[str]:
        return list(SIGNING_ALGS)

    def resolve_client_from_id_token_claims(self, id_token_claims: dict[str, Any]) -> Any:
        # Our ID tokens carry aud as a one-element list; Authlib only resolves a string.
        aud = id_token_claims.get("aud")
        if isinstance(aud, list) and len(aud) == 1:
            aud = aud[0]
        return self.server.query_client(aud) if isinstance(aud, str) else None

    def _is_valid_post_logout_redirect_uri(self, client: Any, uri: str) -> bool:
        return uri in (getattr(client, "post_logout_redirect_uris", []) or [])

    def end_session(self, end_session_request: Any) -> None:
        from sso.oidc.views import end_browser_session

        end_browser_session(reason="rp_logout")


def build_server(provider: Provider, app: Any) -> KeycardServer:
    server = KeycardServer(provider)
    server.init_app(app)
    # SECURITY 3: an unknown scope is invalid_scope (RFC 6749 §4.1.2.1), not silently
    # dropped. Set after init_app, which resets it from OAUTH2_SCOPES_SUPPORTED.
    server.scopes_supported = list(SUPPORTED_SCOPES)
    server.register_token_generator("default", TokenIssuer(provider.issuer, provider.keys))
    server.register_grant(
        AuthorizationCodeGrant, [S256CodeChallenge(required=True), OpenIDCode(provider.issuer)]
    )
    server.register_grant(RefreshTokenGrant)
    server.register_grant(ClientCredentialsGrant)
    register_device_flow(server, provider, app)  # RFC 8628: endpoint, grant, records
    server.register_extension(Issuer(provider.issuer))
    server.register_endpoint(Introspection)
    server.register_endpoint(Revocation)
    server.register_endpoint(EndSession)
    return server
