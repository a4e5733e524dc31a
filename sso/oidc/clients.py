"""Relying parties registered with Keycard, as Authlib sees them, and their validation.

:class:`Client` implements Authlib's ``ClientMixin`` strictly: redirect URIs match
exactly, there is no default redirect URI, and secrets are compared as hashes in
constant time. Storage is :mod:`sso.oidc.client_registry`'s.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from authlib.oauth2.rfc6749 import ClientMixin

from sso.crypto import SIGNING_ALGS, hash_secret, new_secret, same
from sso.oidc.scopes import SUPPORTED_SCOPES
from sso.roles import valid_role

DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
SUPPORTED_GRANT_TYPES = ("authorization_code", "refresh_token", "client_credentials",
                         DEVICE_CODE_GRANT)
CONFIDENTIAL_AUTH_METHODS = ("client_secret_basic", "client_secret_post")
# Key rotation keeps a retired public key for an hour by default (`sso keys rotate
# --grace`); capping access tokens at that hour keeps every live token verifiable.
MAX_ACCESS_TOKEN_TTL = 3600
CLIENT_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class ClientError(ValueError):
    """A client registration or change was refused; the message says why."""


def _default_grants() -> list[str]:
    return ["authorization_code", "refresh_token"]


def _default_scopes() -> list[str]:
    return list(SUPPORTED_SCOPES)


@dataclass
class Client(ClientMixin):  # type: ignore[misc]
    """A registered relying party. ``secret_hash is None`` means a public client."""

    client_id: str
    name: str
    secret_hash: str | None = None
    redirect_uris: list[str] = field(default_factory=list)
    post_logout_redirect_uris: list[str] = field(default_factory=list)
    grant_types: list[str] = field(default_factory=_default_grants)
    scopes: list[str] = field(default_factory=_default_scopes)
    required_roles: list[str] = field(default_factory=list)  # any-of; empty: every employee
    trusted: bool = False  # first-party: no consent screen
    home_url: str | None = None
    require_pkce: bool = False
    id_token_alg: str = "RS256"
    access_token_ttl: int = 600
    refresh_idle_ttl: int = 14 * 86400
    refresh_absolute_ttl: int = 90 * 86400
    roles: list[str] = field(default_factory=list)  # a service client's own roles
    audiences: list[str] = field(default_factory=list)  # RFC 8707 resources it may ask for
    created_at: int = 0
    # Access tokens issued before this second are refused (`sso clients rotate-secret
    # --revoke-tokens`); 0: none.
    tokens_valid_after: int = 0
    # OpenID Connect Back-Channel Logout 1.0: where Keycard POSTs a logout token when a
    # session the app got an ID token in ends; whether the app needs ``sid`` in it.
    backchannel_logout_uri: str | None = None
    backchannel_logout_session_required: bool = False

    def __post_init__(self) -> None:
        # RFC 9700 §2.1.1: public clients must use PKCE, whatever was asked for.
        if self.public:
            self.require_pkce = True

    @property
    def public(self) -> bool:
        return self.secret_hash is None

    # -- Authlib's ClientMixin ------------------------------------------------------------

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        # OIDC Core 3.1.2.1: never fall back to a registered URI; a
        # request without redirect_uri is an error page, not a redirect.
        return None

    def get_allowed_scope(self, scope: str | None) -> str:
        if not scope:
            return ""
        allowed = set(self.scopes)
        return " ".join(_unique(s for s in scope.split() if s in allowed))

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        # RFC 9700 §2.1 / §4.1.3: exact string comparison, no normalisation of any kind.
        if not isinstance(redirect_uri, str):
            return False
        return any(same(redirect_uri, uri) for uri in self.redirect_uris)

    def check_post_logout_redirect_uri(self, uri: str) -> bool:
        """Exact match, as for redirect URIs (OIDC RP-Initiated Logout §3)."""
        if not isinstance(uri, str):
            return False
        return any(same(uri, registered) for registered in self.post_logout_redirect_uris)

    def check_client_secret(self, client_secret: str) -> bool:
        if self.secret_hash is None or not isinstance(client_secret, str):
            return False
        return same(hash_secret(client_secret), self.secret_hash)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if self.public:
            return method == "none"
        return method in CONFIDENTIAL_AUTH_METHODS

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.grant_types

    # -- serialisation --------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe view for the CLI and admin pages: never the secret, nor its hash."""
        data = dataclasses.asdict(self)
        del data["secret_hash"]
        data["public"] = self.public
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Client:
        """Build from a stored record; unknown keys (written by a newer version) are ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def _record(self) -> dict[str, Any]:
        return {**self.to_dict(), "secret_hash": self.secret_hash}


# -- validation ------------------------------------------------------------------------------


def _unique(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_uri(uri: str, what: str = "redirect URI") -> str:
    """Refuse URIs a redirect must never go to; return ``uri`` unchanged (it is matched
    byte for byte later, so it is not normalised here either)."""
    if not isinstance(uri, str) or not uri:
        raise ClientError(f"{what} must not be empty")
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in uri):
        raise ClientError(f"{what} {uri!r} contains whitespace or control characters")
    if "*" in uri:
        raise ClientError(f"{what} {uri!r}: wildcards are not allowed, register each URI")
    if "#" in uri:
        raise ClientError(f"{what} {uri!r} must not contain a fragment (RFC 6749 §3.1.2)")
    parts = urlsplit(uri)
    if "@" in parts.netloc:
        raise ClientError(f"{what} {uri!r} must not contain userinfo (user@host)")
    try:
        host = parts.hostname or ""
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError as exc:
        raise ClientError(f"{what} {uri!r} has an invalid host or port") from exc
    if not host:
        raise ClientError(f"{what} {uri!r} must be an absolute URI with a host")
    if parts.scheme == "https":
        return uri
    if parts.scheme == "http":
        if _is_loopback(host):
            return uri
        # RFC 9700 §2.6: plain http only for native apps on loopback.
        raise ClientError(
            f"{what} {uri!r}: http:// is allowed only on loopback "
            "(127.0.0.1, [::1], localhost); use https://"
        )
    raise ClientError(f"{what} {uri!r} must use https:// (or http:// on loopback)")


def _check_roles(roles: Iterable[str], what: str) -> None:
    for role in roles:
        if not isinstance(role, str) or not valid_role(role):
            raise ClientError(f"{what} {role!r} is invalid: use a-z, 0-9, ':', '_', '-'")


def _check_ttl(value: Any, what: str, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ClientError(f"{what} must be a whole number of seconds from {low} to {high}")


def validate(client: Client) -> Client:
    """Check a client as a whole; raise :class:`ClientError` naming the first problem."""
    if not isinstance(client.name, str) or not client.name.strip():
        raise ClientError("a client needs a name")
    if len(client.name) > 100:
        raise ClientError("name is longer than 100 characters")
    for name in ("redirect_uris", "post_logout_redirect_uris", "grant_types", "scopes",
                 "required_roles", "roles", "audiences"):
        value = getattr(client, name)
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ClientError(f"{name} must be a list of strings")
        setattr(client, name, _unique(value))  # stored as lists, duplicates dropped
    for uri in client.redirect_uris:
        check_uri(uri)
    for uri in client.post_logout_redirect_uris:
        check_uri(uri, "post-logout redirect URI")
    for uri in client.audiences:
        check_uri(uri, "audience")
    if client.home_url is not None:
        check_uri(client.home_url, "home URL")
    if client.backchannel_logout_uri == "":
        client.backchannel_logout_uri = None  # `--backchannel-logout-uri ""` removes it
    if client.backchannel_logout_uri is not None:
        check_uri(client.backchannel_logout_uri, "back-channel logout URI")
    if not client.grant_types:
        raise ClientError("a client needs at least one grant type")
    for grant in client.grant_types:
        if grant not in SUPPORTED_GRANT_TYPES:
            raise ClientError(f"grant type {grant!r} is not supported; choose from "
                              + ", ".join(SUPPORTED_GRANT_TYPES))
    if "authorization_code" in client.grant_types and not client.redirect_uris:
        raise ClientError("the authorization_code grant needs at least one redirect URI")
    if "client_credentials" in client.grant_types and client.public:
        # RFC 6749 §4.4: only a client that can authenticate may act as itself.
        raise ClientError("the client_credentials grant needs a confidential client")
    for scope in client.scopes:
        if scope not in SUPPORTED_SCOPES:
            raise ClientError(f"scope {scope!r} is not supported; choose from "
                              + ", ".join(SUPPORTED_SCOPES))
    _check_roles(client.required_roles, "required role")
    _check_roles(client.roles, "role")
    if client.id_token_alg not in SIGNING_ALGS:
        # An Authlib pitfall: the per-client alg must be allow-listed (never none or HMAC).
        raise ClientError(f"id_token_alg {client.id_token_alg!r} is not supported; choose "
                          + " or ".join(SIGNING_ALGS))
    for flag in ("trusted", "require_pkce", "backchannel_logout_session_required"):
        if not isinstance(getattr(client, flag), bool):
            raise ClientError(f"{flag} must be true or false")
    _check_ttl(client.access_token_ttl, "access_token_ttl", 60, MAX_ACCESS_TOKEN_TTL)
    _check_ttl(client.refresh_absolute_ttl, "refresh_absolute_ttl", 60, 366 * 86400)
    _check_ttl(client.refresh_idle_ttl, "refresh_idle_ttl", 60, client.refresh_absolute_ttl)
    if client.public:
        client.require_pkce = True
    return client


# -- the registry ----------------------------------------------------------------------------

_IMMUTABLE = {"client_id", "secret_hash", "created_at", "tokens_valid_after"}


def check_field_names(fields: dict[str, Any]) -> None:
    known = {f.name for f in dataclasses.fields(Client)}
    bad = (set(fields) - known) | (set(fields) & _IMMUTABLE)
    if bad:
        raise ClientError(f"unknown or read-only client field(s): {', '.join(sorted(bad))}")


def new_client_id() -> str:
    """128 random bits, URL-safe; never starting with "-", which `sso clients show -x...`
    would read as an option."""
    while True:
        value = new_secret(16)
        if not value.startswith("-"):
            return value
