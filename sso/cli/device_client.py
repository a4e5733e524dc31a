"""The HTTP side of ``sso login``: a device-grant client (RFC 8628) of a remote Keycard.

It finds the endpoints in the issuer's discovery document, shows the person a code and
a URL, polls the token endpoint as fast as the server allows (``interval``, plus 5 s
after every ``slow_down``), refreshes and revokes tokens, and verifies every token it
receives against the issuer's JWKS, so a spoofed answer cannot print someone else's
name. Every failure becomes one sentence (:class:`LoginFailed`), never a traceback or the
HTTP library's internals.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import click
import requests
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from sso.crypto import SIGNING_ALGS

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
ALGORITHMS = list(SIGNING_ALGS)  # what Keycard signs with; never "none" or HMAC
TIMEOUT = 10.0
DEVICE_SETUP = "an admin registers one with `sso clients create --device`"


class LoginFailed(click.ClickException):
    """A clear, one-line reason; exits 1 (click prints ``Error: ...``)."""


def _unreachable(what: str, url: str, exc: requests.RequestException) -> LoginFailed:
    """Why a request never got an answer, in words (the exception's text is urllib3's)."""
    if isinstance(exc, requests.exceptions.SSLError):
        reason = "its TLS certificate was not accepted"
    elif isinstance(exc, requests.exceptions.Timeout):
        reason = f"no answer within {TIMEOUT:g} seconds"
    elif isinstance(exc, requests.exceptions.ConnectionError):
        text = repr(exc)
        reason = ("its host name does not resolve" if "NameResolution" in text
                  or "Name or service not known" in text
                  else "nothing is listening there (connection refused)" if "refused" in text
                  else "the connection failed")
    else:
        reason = "the address is not a usable http(s) URL"
    parts = urlsplit(url)
    return LoginFailed(f"Cannot reach {what} at {parts.scheme}://{parts.netloc}: {reason}.")


def call(method: str, url: str, what: str, **kwargs: Any) -> requests.Response:
    try:
        return requests.request(method, url, timeout=TIMEOUT, **kwargs)
    except requests.RequestException as exc:
        raise _unreachable(what, url, exc) from None


def answer(response: requests.Response, what: str) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        raise LoginFailed(f"{what} answered HTTP {response.status_code} without JSON; "
                          "is this address a Keycard?") from None
    if not isinstance(data, dict):
        raise LoginFailed(f"{what} answered something that is not a JSON object.")
    return data


def check_issuer(issuer: str) -> str:
    issuer = issuer.strip().rstrip("/")
    parts = urlsplit(issuer)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise LoginFailed(f"{issuer!r} is not an issuer URL: give Keycard's base URL, e.g. "
                          "https://sso.example.com")
    return issuer


class Issuer:
    """A Keycard as its discovery document describes it."""

    def __init__(self, issuer: str) -> None:
        self.url = check_issuer(issuer)
        meta_url = f"{self.url}/.well-known/openid-configuration"
        response = call("GET", meta_url, "Keycard")
        if response.status_code != 200:
            raise LoginFailed(f"{meta_url} answered HTTP {response.status_code}; "
                              f"is {self.url} a Keycard?")
        meta = answer(response, "Discovery")
        # OIDC Discovery §4.3: the issuer in the document must be the one we asked.
        if meta.get("issuer") != self.url:
            raise LoginFailed(f"The discovery document names issuer {meta.get('issuer')!r}, "
                              f"not {self.url!r}.")
        for name in ("device_authorization_endpoint", "token_endpoint", "jwks_uri"):
            if not meta.get(name):
                raise LoginFailed(f"{self.url} does not announce a {name}.")
        self.meta = meta
        self._keys: KeySet | None = None

    def default_client_id(self) -> str:
        """The device client every ``sso login`` may use (``sso clients create --device``)."""
        url = f"{self.url}/device/cli-client"
        response = call("GET", url, "Keycard")
        if response.status_code == 404:
            raise LoginFailed(f"Keycard at {self.url} has no default device client yet: "
                              f"{DEVICE_SETUP}, or pass --client-id.")
        client_id = answer(response, "Keycard").get("client_id")
        if response.status_code != 200 or not isinstance(client_id, str):
            raise LoginFailed(f"{url} answered HTTP {response.status_code} without a "
                              "client id; pass --client-id.")
        return client_id

    def start(self, client_id: str, scope: str) -> dict[str, Any]:
        response = call("POST", self.meta["device_authorization_endpoint"], "Keycard",
                        data={"client_id": client_id, "scope": scope})
        grant = answer(response, "The device authorization endpoint")
        if response.status_code == 200:
            return grant
        error = grant.get("error")
        if error == "invalid_client":
            raise LoginFailed(f"Keycard at {self.url} does not know the client {client_id!r} "
                              f"(invalid_client): check the client id, or {DEVICE_SETUP}.")
        if error == "unauthorized_client":
            raise LoginFailed(f"The client {client_id!r} may not use the device flow "
                              f"(unauthorized_client): {DEVICE_SETUP}.")
        raise LoginFailed(f"Keycard refused the sign-in: {error or response.status_code}: "
                          f"{grant.get('error_description', '')}".rstrip(": "))

    def poll(self, client_id: str, grant: dict[str, Any],
             sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
        """Ask for tokens until the person decides, the code expires, or Keycard says no."""
        interval = int(grant.get("interval") or 5)
        deadline = time.monotonic() + int(grant.get("expires_in") or 600)
        while True:
            sleep(interval)  # RFC 8628 §3.5: wait at least `interval` between polls
            if time.monotonic() > deadline:
                raise LoginFailed("The code expired before it was approved. Run `sso login` "
                                  "again.")
            response = call("POST", self.meta["token_endpoint"], "Keycard", data={
                "grant_type": DEVICE_GRANT, "device_code": grant["device_code"],
                "client_id": client_id})
            tokens = answer(response, "The token endpoint")
            if response.status_code == 200:
                return tokens
            error = tokens.get("error")
            if error == "authorization_pending":
                continue
            if error == "slow_down":
                interval += 5
                continue
            if error == "access_denied":
                raise LoginFailed("Access was denied: the sign-in was declined in the browser "
                                  "(or you lack a role this application requires).")
            if error == "expired_token":
                raise LoginFailed("The code expired before it was approved. Run `sso login` "
                                  "again.")
            raise LoginFailed(f"Sign-in failed: {error or response.status_code}: "
                              f"{tokens.get('error_description', '')}".rstrip(": "))

    def refresh(self, client_id: str, refresh_token: str) -> dict[str, Any] | None:
        """New tokens, or ``None`` when Keycard no longer honours the refresh token."""
        response = call("POST", self.meta["token_endpoint"], "Keycard", data={
            "grant_type": "refresh_token", "refresh_token": refresh_token,
            "client_id": client_id})
        tokens = answer(response, "The token endpoint")
        if response.status_code == 200:
            return tokens
        if tokens.get("error") in ("invalid_grant", "invalid_client", "unauthorized_client"):
            return None
        raise LoginFailed(f"Keycard refused to refresh the tokens: "
                          f"{tokens.get('error') or response.status_code}.")

    def revoke(self, client_id: str, token: str) -> None:
        endpoint = self.meta.get("revocation_endpoint")
        if not endpoint:
            raise LoginFailed(f"{self.url} does not announce a revocation_endpoint.")
        response = call("POST", endpoint, "Keycard", data={
            "token": token, "token_type_hint": "refresh_token", "client_id": client_id})
        if response.status_code != 200:  # RFC 7009 §2.2: 200 even for an unknown token
            raise LoginFailed(f"Keycard did not revoke the token (HTTP "
                              f"{response.status_code}); the tokens file was kept.")

    def keys(self) -> KeySet:
        if self._keys is None:
            jwks = answer(call("GET", self.meta["jwks_uri"], "Keycard"), "The JWKS")
            try:
                self._keys = KeySet.import_key_set(jwks)  # type: ignore[arg-type]
            except (JoseError, ValueError) as exc:
                raise LoginFailed(f"The issuer's JWKS is not usable: {exc}") from None
        return self._keys

    def verify(self, token: str, audience: str | None) -> dict[str, Any]:
        """Signature (RS256/ES256 from the issuer's JWKS), ``iss``, ``exp`` and ``aud``."""
        try:
            decoded = jwt.decode(token, self.keys(), algorithms=ALGORITHMS)
            rules: dict[str, Any] = {"iss": {"essential": True, "value": self.url},
                                     "exp": {"essential": True}}
            if audience is not None:
                rules["aud"] = {"essential": True, "value": audience}
            jwt.JWTClaimsRegistry(**rules).validate(decoded.claims)
        except (JoseError, ValueError) as exc:
            raise LoginFailed(f"A token from {self.url} did not verify: {exc}") from None
        return dict(decoded.claims)
