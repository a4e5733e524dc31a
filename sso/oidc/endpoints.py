"""Token introspection (RFC 7662), revocation (RFC 7009) and RP-initiated logout
(OpenID Connect RP-Initiated Logout 1.0): Authlib's endpoints with Keycard's lookups."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from authlib.oauth2.rfc6749.errors import InvalidRequestError
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from authlib.oidc.rpinitiated import EndSessionEndpoint
from flask import request

from sso.crypto import SIGNING_ALGS
from sso.oidc.tokens import InvalidToken
from sso.sessions import end_browser_session

if TYPE_CHECKING:
    from sso.oidc.records import Grant
    from sso.oidc.server import KeycardServer, Provider


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
                 refresh: dict[str, Any] | None = None, raw: str = "",
                 grant: Grant | None = None) -> None:
        self.kind = kind
        self.client_id = client_id
        self.claims = claims or {}
        self.refresh = refresh or {}
        self.raw = raw
        self.grant = grant  # a live refresh token's, read with it

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
        if live_only and not provider.issued_to_live_client(claims):
            return None
        client_id = str(claims.get("client_id", ""))
        if live_only and not provider.records.access_token_alive(str(claims.get("jti", "")),
                                                                 client_id):
            return None
        return TokenRef("access_token", client_id, claims=claims)
    if not live_only:
        record = provider.records.peek_refresh_token(token)
        return None if record is None else TokenRef("refresh_token", str(record["c"]),
                                                    refresh=record, raw=token)
    record, grant = provider.records.peek_refresh_token_and_grant(token)
    if record is None or grant is None or record.get("r") or (
            provider.clients.shared(str(record["c"])) is None):
        return None
    return TokenRef("refresh_token", str(record["c"]), refresh=record, raw=token, grant=grant)


class Introspection(_HintTolerant, IntrospectionEndpoint):  # type: ignore[misc]
    # RFC 7662 §2.1: a client_id alone is no authentication (anyone can
    # send a public client's id): only confidential clients introspect, as announced.
    CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]

    def __init__(self, server: KeycardServer) -> None:
        super().__init__(server)
        self.provider = server.provider

    def query_token(self, token_string: str, token_type_hint: str | None) -> TokenRef | None:
        return lookup_token(self.provider, token_string, live_only=True)

    def check_permission(self, token: TokenRef, client: Any, request: Any) -> bool:
        return may_introspect(token, client)

    def introspect_token(self, token: TokenRef) -> dict[str, Any]:
        return introspection(self.provider, token)


def may_introspect(token: TokenRef, client: Any) -> bool:
    """A token issued to another client (and not addressed to this one) is reported
    exactly as an unknown one."""
    if token.check_client(client):
        return True
    aud = token.claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else list(aud or [])
    return client.get_client_id() in audiences


def introspection(provider: Provider, token: TokenRef) -> dict[str, Any]:
    """RFC 7662 §2.2: what an active token's introspection says (sso/oidc/lean.py too)."""
    if token.kind == "refresh_token":
        grant = token.grant or provider.records.get_grant(token.refresh["g"])
        return {"active": True, "token_type": "refresh_token", "client_id": token.client_id,
                "scope": token.refresh.get("s", ""), "iss": provider.issuer,
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

    def authenticate_token(self, request: Any, client: Any) -> TokenRef | None:
        """Authlib's, except that another client's token is treated as an unknown one.

        Authlib answers 400 for a live token of another client and 200 for an unknown one:
        an oracle telling anyone with a client which strings are live tokens. RFC 7009
        §2.2: answer 200 either way, and revoke nothing that is not the caller's.
        """
        self.check_params(request, client)
        token = self.query_token(request.form["token"], request.form.get("token_type_hint"))
        if token is None or not token.check_client(client):
            return None
        return token

    def revoke_token(self, token: TokenRef, request: Any) -> None:
        records = self.provider.records
        if token.kind == "refresh_token":
            records.revoke_grant(token.refresh["g"])  # RFC 7009 §2.1: ends its access tokens
        else:
            # Ends its grant too, so that no evicted record can bring it back (records.py).
            records.revoke_access_token(str(token.claims.get("jti")), int(token.claims["exp"]),
                                        token.client_id)
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
        provider = self.provider
        # The app that asked knows; the others are told (back-channel logout). Only an app
        # proven by a valid id_token_hint is left out: a bare client_id could silence one.
        client = getattr(end_session_request, "client", None)
        proven = end_session_request.id_token_claims is not None
        initiator = client.get_client_id() if client is not None and proven else None
        end_browser_session(provider.sessions, provider.audit_log, reason="rp_logout",
                            ip=request.remote_addr or "", initiator=initiator)
