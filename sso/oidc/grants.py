"""Authlib grants with Keycard's storage and policy plugged in.

Each class closes a known pitfall of OAuth servers: codes are consumed atomically
and a replay revokes what the code produced; refresh tokens rotate and a reused
one revokes its family; PKCE is S256-only and required for public clients at
the authorization endpoint already; the ID-token algorithm is allow-listed.

Every override must still override something, and the Authlib methods replaced whole
(here and in :mod:`sso.oidc.device`) are fingerprinted: tests/test_private_apis.py fails
when an Authlib upgrade changes them.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from authlib.oauth2.rfc6749 import grants
from authlib.oauth2.rfc6749.errors import (
    InvalidGrantError,
    InvalidRequestError,
    InvalidScopeError,
    OAuth2Error,
)
from authlib.oauth2.rfc6749.util import scope_to_list
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oidc.core import OpenIDCode as _OpenIDCode
from authlib.oidc.core.models import AuthorizationCodeMixin

from sso.crypto import SIGNING_ALGS
from sso.oidc.tokens import ID_TOKEN_TTL, KeySource, Subject, user_claims

if TYPE_CHECKING:
    from sso.oidc.server import Provider

CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]


def provider(grant: Any) -> Provider:
    found: Provider = grant.server.provider
    return found


class AuthorizationCode(AuthorizationCodeMixin):  # type: ignore[misc]
    """A consumed code record, as Authlib's grant and OpenID extension read it."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.code_challenge = data.get("cc")
        self.code_challenge_method = data.get("ccm")

    def get_redirect_uri(self) -> str:
        return str(self.data["ru"])

    def get_scope(self) -> str:
        return str(self.data["s"])

    def get_nonce(self) -> str | None:
        return self.data.get("n")

    def get_auth_time(self) -> int:
        return int(self.data["at"])

    def get_acr(self) -> None:
        return None

    def get_amr(self) -> list[str]:
        return ["github"]


class AuthorizationCodeGrant(grants.AuthorizationCodeGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = CLIENT_AUTH_METHODS
    AUTHORIZATION_CODE_LENGTH = 48  # ≈285 bits from a 62-letter alphabet

    def save_authorization_code(self, code: str, request: Any) -> None:
        user: Subject = request.user
        data = request.payload.data
        provider(self).records.save_code(code, {
            "c": request.client.get_client_id(),
            "ru": request.payload.redirect_uri,
            "s": request.scope,
            "u": user.profile.user_id,
            "sid": user.sid,
            "at": user.auth_time,
            "n": data.get("nonce"),
            "cc": data.get("code_challenge"),
            "ccm": data.get("code_challenge_method"),
            "g": provider(self).records.new_grant_id(),
            "res": request.payload.datalist.get("resource", []),  # checked at /authorize
        })

    def query_authorization_code(self, code: str, client: Any) -> AuthorizationCode | None:
        records = provider(self).records
        status, data = records.consume_code(code)
        if status == "replayed" and data:
            # RFC 6749 §4.1.2 / §10.5: a code used twice revokes what it produced.
            records.revoke_grant(data["g"])
            provider(self).audit("oauth.code_replayed", client=client.get_client_id(),
                                 user_id=data["u"])
            return None
        if status != "fresh" or not data or data["c"] != client.get_client_id():
            return None  # unknown, expired, or another client's code: invalid_grant
        return AuthorizationCode(data)

    def delete_authorization_code(self, authorization_code: AuthorizationCode) -> None:
        """Nothing to do: the code was consumed atomically when it was read."""

    def authenticate_user(self, authorization_code: AuthorizationCode) -> Subject | None:
        data = authorization_code.data
        p = provider(self)
        live, raw = p.records.session_and_profile(data["sid"], data["u"])  # one round trip
        if not live:
            return None  # signed out (or deprovisioned) since the code was issued
        subject = p.subject(data["u"], auth_time=int(data["at"]), sid=data["sid"],
                            client=self.request.client, profile=p.accounts.parse(raw))
        if subject is None:
            return None
        subject.grant_id = data["g"]
        granted = list(data.get("res") or [])
        _address_tokens_to(granted, _requested_resources(self.request, self.request.client,
                                                         granted))
        return subject


def _resources_of(request: Any) -> list[str]:
    return [str(r) for r in request.payload.datalist.get("resource", [])]


def _check_resource(client: Any, resource: str) -> None:
    if resource not in (getattr(client, "audiences", None) or []):
        raise InvalidTargetError(f"The resource {resource!r} is not registered for this "
                                 "client.")


def _requested_resources(request: Any, client: Any, granted: list[str]) -> list[str]:
    """RFC 8707: the resources this token request addresses, checked against what the
    client has registered *now* (an audience removed since the grant is refused) and what
    the grant covers (a token request may narrow it, never widen it)."""
    for resource in granted:
        _check_resource(client, resource)
    requested = _resources_of(request)
    for resource in requested:
        _check_resource(client, resource)
        if resource not in granted:
            raise InvalidTargetError(f"The resource {resource!r} was not part of this grant.")
    return requested or granted


def _address_tokens_to(granted: list[str], audience: list[str] | None = None) -> None:
    """RFC 8707: the access tokens of this grant name its resources (or the narrower ones
    requested now) as their audience; the refresh token keeps the grant's."""
    from flask import g

    g.grant_resources = list(granted)
    g.token_audience = list(granted if audience is None else audience)


class RefreshTokenGrant(grants.RefreshTokenGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = CLIENT_AUTH_METHODS
    INCLUDE_NEW_REFRESH_TOKEN = True  # RFC 9700 §4.14.2: rotate on every use

    def authenticate_refresh_token(self, refresh_token: str) -> RefreshRecord | None:
        record = provider(self).records.peek_refresh_token(refresh_token)
        if record is None:
            return None
        found = RefreshRecord(refresh_token, record)
        client = self.request.client
        if client is not None and found.check_client(client):
            # Checked before the token is claimed: a bad resource must not burn it.
            _requested_resources(self.request, client, found.resources)
        return found

    def create_token_response(self) -> Any:
        # Claim the token before issuing anything: of two concurrent uses one wins, and a
        # token used a second time (even long after) revokes the whole family.
        credential: RefreshRecord = self.request.refresh_token
        records = provider(self).records
        status, record = records.claim_refresh_token(credential.token)
        if status != "fresh" or record is None:
            if record:
                records.revoke_grant(record["g"])
                provider(self).audit("oauth.refresh_reused", client=record["c"])
            raise InvalidGrantError("The refresh token was already used; its family is revoked.")
        return super().create_token_response()

    def authenticate_user(self, refresh_token: RefreshRecord) -> Subject:
        p = provider(self)
        grant = p.records.get_grant(refresh_token.grant_id)
        if grant is None or grant.expires_at < time.time():
            raise InvalidGrantError("The grant behind this refresh token has ended.")
        subject = p.subject(grant.user_id, auth_time=grant.auth_time, sid=grant.sid,
                            client=self.request.client)
        if subject is None:
            raise InvalidGrantError("Your access has ended; sign in again.")
        subject.grant_id = grant.grant_id
        _address_tokens_to(refresh_token.resources, _requested_resources(
            self.request, self.request.client, refresh_token.resources))
        return subject

    def revoke_old_credential(self, refresh_token: RefreshRecord) -> None:
        """Already marked used by :meth:`create_token_response` (kept for reuse detection)."""


class RefreshRecord:
    """A stored refresh token as Authlib's TokenMixin sees it."""

    def __init__(self, token: str, record: dict[str, Any]) -> None:
        self.token = token
        self.grant_id = str(record["g"])
        self.client_id = str(record["c"])
        self.scope = str(record["s"])
        self.resources = list(record.get("a") or [])

    def check_client(self, client: Any) -> bool:
        # RFC 9700 §4.14: refresh tokens are bound to the client they were issued to.
        return bool(self.client_id == client.get_client_id())

    def get_scope(self) -> str:
        return self.scope

    def is_expired(self) -> bool:
        return False

    def is_revoked(self) -> bool:
        return False


class InvalidTargetError(OAuth2Error):  # type: ignore[misc]
    """RFC 8707 §2: the requested resource is not one this client may address."""

    error = "invalid_target"


class ClientCredentialsGrant(grants.ClientCredentialsGrant):  # type: ignore[misc]
    """Machine identity (RFC 6749 §4.4): confidential clients only, no refresh token."""

    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]

    def validate_requested_scope(self) -> None:
        from flask import g

        client = self.request.client
        requested = set(scope_to_list(self.request.payload.scope) or [])
        if not requested <= set(client.scopes):
            raise InvalidScopeError(
                f"This client may only ask for: {' '.join(sorted(client.scopes)) or 'nothing'}.")
        resources = self.request.payload.datalist.get("resource", [])
        for resource in resources:
            if resource not in (client.audiences or []):
                raise InvalidTargetError(f"The resource {resource!r} is not registered for "
                                         "this client.")
        g.token_audience = list(resources)


class S256CodeChallenge(CodeChallenge):  # type: ignore[misc]
    """PKCE per RFC 7636 / RFC 9700 §2.1.1: S256 only, required where the client says."""

    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]
    DEFAULT_CODE_CHALLENGE_METHOD = "S256"

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        client = grant.request.client
        challenge, method = data.get("code_challenge"), data.get("code_challenge_method")
        must = client.public or getattr(client, "require_pkce", False)
        if must and not challenge:
            raise InvalidRequestError("This client must use PKCE: send a 'code_challenge'.")
        if challenge and method != "S256":
            raise InvalidRequestError("Only code_challenge_method=S256 is supported.")
        super().validate_code_challenge(grant, redirect_uri)


class OpenIDCode(_OpenIDCode):  # type: ignore[misc]
    """ID tokens for the code flow; nonce optional (OIDC Core 3.1.2.1 for code flow)."""

    def __init__(self, issuer: str, keys: KeySource) -> None:
        super().__init__(require_nonce=False)
        self.issuer = issuer
        self.keys = keys

    def exists_nonce(self, nonce: str, request: Any) -> bool:
        return False  # codes are single-use, so a nonce cannot be replayed through us

    def get_client_algorithm(self, client: Any) -> str:
        alg = getattr(client, "id_token_alg", "RS256")
        return alg if alg in SIGNING_ALGS else "RS256"

    def resolve_client_private_key(self, client: Any) -> Any:
        return self._key(client)

    def _key(self, client: Any) -> Any:
        # One key per request: the header's kid and the signature must come from the same
        # key even if a rotation lands between Authlib's two calls.
        from flask import g

        alg = self.get_client_algorithm(client)
        cache = g.setdefault("id_token_keys", {})
        if alg not in cache:
            cache[alg] = self.keys.signing_key(alg)
        return cache[alg]

    def get_encode_header(self, client: Any) -> dict[str, str]:
        return {"alg": self.get_client_algorithm(client), "kid": self._key(client).kid,
                "typ": "JWT"}

    def get_client_claims(self, client: Any) -> dict[str, Any]:
        now = int(time.time())
        return {"iss": self.issuer, "aud": [client.get_client_id()], "iat": now,
                "exp": now + ID_TOKEN_TTL}

    def generate_user_info(self, user: Subject, scope: str) -> dict[str, Any]:
        claims = user_claims(user.profile, user.sub, set(scope.split()))
        if user.sid:
            claims["sid"] = user.sid[:22]
        return claims
