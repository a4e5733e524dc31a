"""Tokens: who the subject is, which claims each scope releases, and the JWTs we sign.

Access tokens are RFC 9068 JWTs (``typ: at+jwt``) so resource servers validate them
offline with the JWKS; their ``jti`` starts with the grant id, so revoking a grant
makes every access token it produced inactive at introspection and userinfo.
Refresh tokens are opaque random strings, stored hashed.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from authlib.oauth2.rfc9068 import JWTBearerTokenGenerator
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import Key, KeySet

from sso.accounts import Profile
from sso.cache import ExpiringCache
from sso.crypto import SIGNING_ALGS, new_secret
from sso.oidc.jws import Signer

ID_TOKEN_TTL = 3600


class KeySource(Protocol):
    def signing_key(self, alg: str = "RS256") -> Key: ...
    def signer(self, alg: str = "RS256") -> Signer: ...
    def public_keyset(self) -> KeySet: ...


def subject_for(issuer: str, user_id: str) -> str:
    """Stable, opaque ``sub`` for a person: the upstream id never leaks, renames don't matter.

    Hashing (not HMAC with the secret key) keeps ``sub`` stable when SSO_SECRET_KEY rotates.
    """
    return hashlib.sha256(f"{issuer}|github|{user_id}".encode()).hexdigest()[:32]


def client_subject(client_id: str) -> str:
    """A service's ``sub``; the colon means it can never equal a person's hex ``sub``."""
    return f"client:{client_id}"


def is_client_subject(sub: object) -> bool:
    """A ``sub`` made by :func:`client_subject`: a token with no person behind it."""
    return isinstance(sub, str) and sub.startswith("client:")


@dataclass
class Subject:
    """The "user" Authlib carries through a grant: a person and how they signed in."""

    profile: Profile
    sub: str
    auth_time: int
    sid: str = ""  # hash of the Keycard session the grant came from
    grant_id: str = ""

    def get_user_id(self) -> str:
        return self.sub


def user_claims(profile: Profile, sub: str, scopes: set[str]) -> dict[str, Any]:
    """OIDC Core §5.4: standard claims released per scope (plus groups and roles)."""
    claims: dict[str, Any] = {"sub": sub}
    if "profile" in scopes:
        claims["name"] = profile.name or profile.login
        claims["preferred_username"] = profile.login
        if profile.avatar_url:
            claims["picture"] = profile.avatar_url
    if "email" in scopes and profile.email:
        claims["email"] = profile.email
        claims["email_verified"] = bool(profile.email_verified)
    if "groups" in scopes:
        claims["groups"] = profile.groups
    if "roles" in scopes:
        claims["roles"] = list(profile.roles)
    return claims


class TokenIssuer(JWTBearerTokenGenerator):  # type: ignore[misc]
    """Authlib's RFC 9068 generator with our keys (parsed once), kid, jti and claims."""

    def __init__(self, issuer: str, keys: KeySource) -> None:
        super().__init__(
            issuer,
            alg="RS256",
            refresh_token_generator=self._refresh_token,
            expires_generator=self._expires_in,
        )
        self.keys = keys

    @staticmethod
    def _expires_in(client: Any, grant_type: str) -> int:
        return int(getattr(client, "access_token_ttl", 600))

    @staticmethod
    def _refresh_token(client: Any, grant_type: str, user: Any, scope: str) -> str:
        return new_secret(32)

    def get_jti(self, client: Any, grant_type: str, user: Any, scope: str) -> str:
        grant_id = getattr(user, "grant_id", "")
        return f"{grant_id}.{new_secret(12)}" if grant_id else new_secret(16)

    def get_audiences(self, client: Any, user: Any, scope: str) -> str | list[str]:
        from flask import g

        return self.audience_of(client, g.get("token_audience"))  # RFC 8707, checked

    @staticmethod
    def audience_of(client: Any, audiences: list[str] | None) -> str | list[str]:
        """``aud``: the RFC 8707 resources the grant checked, else the client itself."""
        if not audiences:
            return str(client.get_client_id())
        return audiences[0] if len(audiences) == 1 else list(audiences)

    def get_extra_claims(self, client: Any, grant_type: str, user: Any, scope: str) -> dict[
        str, Any
    ]:
        if isinstance(user, Subject):
            claims = user_claims(user.profile, user.sub, set(scope.split()))
            claims["roles"] = list(user.profile.roles)  # authorisation data, always present
            if user.sid:
                claims["sid"] = user.sid[:22]
            return claims
        return {"roles": list(getattr(client, "roles", []) or [])}

    def access_token_generator(self, client: Any, grant_type: str, user: Any, scope: str) -> str:
        return self.sign_access_token(client, grant_type, user, scope,
                                      self.get_audiences(client, user, scope))

    def sign_access_token(self, client: Any, grant_type: str, user: Any, scope: str,
                          audience: str | list[str]) -> str:
        """The RFC 9068 access token; the audience is given, so no request context is
        needed (the lean token path, sso/oidc/lean.py, has none)."""
        now = int(time.time())
        alg = getattr(client, "id_token_alg", "RS256")
        alg = alg if alg in SIGNING_ALGS else "RS256"
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "exp": now + self._get_expires_in(client, grant_type),
            "aud": audience,
            "sub": user.sub if isinstance(user, Subject) else client_subject(
                client.get_client_id()),
            "client_id": client.get_client_id(),
            "iat": now,
            "jti": self.get_jti(client, grant_type, user, scope),
            "scope": scope,
        }
        if isinstance(user, Subject):
            claims["auth_time"] = user.auth_time
        claims.update(self.get_extra_claims(client, grant_type, user, scope))
        return self.keys.signer(alg).sign(claims, "at+jwt")


class VerifiedTokens:
    """Claims of access tokens whose signature we already checked, per process.

    Resource servers introspect, call userinfo and pass forward auth with the same token
    again and again; a verified signature never changes, so it is checked once. Only good
    signatures are remembered, expiry is re-checked at every use, and liveness (revocation)
    is always asked of Redis by the caller. ``keys`` is asked at every use, hit or not: the
    key ring's periodic re-check is what notices a Redis data loss, which empties this
    cache (``clear``, registered with :class:`sso.epoch.DataLossWatch`) so no signature
    checked against keys Redis no longer has is trusted.
    """

    def __init__(self, size: int = 8192, max_age: float = 60.0) -> None:
        # Bounded life: a key retired early (compromise, ``sso keys rotate --grace 0``) stops
        # validating remembered tokens within a minute.
        self._items: ExpiringCache[str, dict[str, Any]] = ExpiringCache(size, max_age)

    def verify(self, token: str, keys: Callable[[], KeySet], typ: str) -> dict[str, Any]:
        keyset = keys()  # first: it may notice a data loss and clear this cache
        claims = self._items.get(token)
        if claims is None:
            claims = verify_jwt(token, keyset, typ=typ)
            self._items.put(token, claims)
            return claims
        if claims["exp"] < time.time():
            raise InvalidToken("expired")
        return claims

    def clear(self) -> None:
        self._items.clear()


class InvalidToken(Exception):
    """A JWT we did not issue, or no longer accept."""


def verify_jwt(token: str, keys: KeySet, *, typ: str | None = None) -> dict[str, Any]:
    """Verify signature (RS256/ES256 only), ``kid``, ``crit``, ``exp``; return the claims.

    ``alg`` switched to HS256 or ``none``, an embedded ``jwk`` header or an
    unknown ``crit`` are refused: joserfc checks ``crit`` and we pin the algorithms and
    resolve the key by ``kid`` from our own key set only.
    """
    try:
        token_obj = jwt.decode(token, keys, algorithms=list(SIGNING_ALGS))
    except (JoseError, ValueError) as exc:
        raise InvalidToken(str(exc)) from exc
    header = token_obj.header
    if "jwk" in header or "jku" in header or "x5u" in header or not header.get("kid"):
        raise InvalidToken("unexpected key material in header")
    if typ is not None and str(header.get("typ", "")).lower() not in (typ, f"application/{typ}"):
        raise InvalidToken("wrong token type")
    claims = dict(token_obj.claims)
    exp = claims.get("exp")
    if not isinstance(exp, int) or exp < time.time():
        raise InvalidToken("expired")
    return claims
