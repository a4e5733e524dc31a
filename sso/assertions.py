"""Signed identity assertions for forward auth, and the cache that reuses them.

A proxy asks ``/auth/verify`` about every request a page makes; Keycard answers
with the person in headers plus a short ES256 JWT the app can verify against
``/jwks.json``. Signing was the largest cost of a check, so an assertion is
reused while more than half its life is left, for the same person and app.
Only the signature is reused: the session or token behind it is still checked
at every request, so revoking either still takes effect at once.
"""

from __future__ import annotations

import time
from typing import Any

from joserfc import jwt

from sso.cache import ExpiringCache
from sso.oidc.keys import KeyRing
from sso.web.redirects import HOSTNAME

ASSERTION_TTL = 60  # seconds: the app checks it on arrival; it is never stored
ASSERTION_ALG = "ES256"


# Assertions remembered; with hosts limited to real host names (see Asserter.sign) an
# entry stays under a few kilobytes.
ASSERTION_CACHE_SIZE = 4096


class Asserter:
    """Signs forward-auth assertions with the key ring's current ES256 key."""

    def __init__(self, issuer: str, keys: KeyRing) -> None:
        self.issuer = issuer
        self.keys = keys
        # Keyed by everything the assertion says; reused until half its life is left.
        self.cache: ExpiringCache[tuple[Any, ...], str] = ExpiringCache(
            ASSERTION_CACHE_SIZE, clock=time.time)

    def sign(self, identity: dict[str, Any], audience: str) -> str:
        key = self.keys.signing_key(ASSERTION_ALG)
        now = int(time.time())
        # The audience comes from a request header: only a plausible host name is remembered,
        # so nobody can fill the cache with long, ever-changing values.
        cacheable = len(audience) <= 253 and HOSTNAME.fullmatch(audience) is not None
        cache_key = (key.kid, audience, identity["sub"], identity["preferred_username"],
                     identity["email"], tuple(identity["groups"]), tuple(identity["roles"]))
        reused = self.cache.get(cache_key) if cacheable else None
        if reused is not None:
            return reused
        claims: dict[str, Any] = {
            "iss": self.issuer,
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
            self.cache.put(cache_key, assertion, until=now + ASSERTION_TTL // 2)
        return assertion
