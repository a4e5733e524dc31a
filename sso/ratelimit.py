"""Request rate limits, counted in Redis with the ``limits`` package (Flask-Limiter's engine).

Fixed windows: one counter per (limit, identity, window), ``INCR`` and ``EXPIRE`` in one
script, so a counted request costs one Redis round trip. The limits and their defaults
are settings (``SSO_RATE_LIMITS``, :data:`sso.config.DEFAULT_RATE_LIMITS`).

Redis unreachable or full: the limiter raises :class:`~sso.storage.StorageUnavailable` like every
other store operation, so the request answers 503 (never a 500, and never an unlimited
pass): every endpoint it guards needs Redis for its own work anyway.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Iterable, Mapping

import limits
import redis
from limits.storage import RedisClusterStorage, RedisStorage, Storage
from limits.strategies import FixedWindowRateLimiter

from sso.storage import OUTAGE_ERRORS, Store, unavailable

#: Identities longer than this (a client_id an attacker chose) are counted by their hash.
MAX_IDENTITY = 80


def _storage(store: Store, url: str) -> Storage:
    """The limits package's Redis storage on Keycard's own connections and key prefix."""
    # limits names its keys "<key_prefix>:<limit key>": so under Keys.rate_limit.
    key_prefix = store.keys.rate_limit("").removesuffix(":")
    client = store.redis
    if isinstance(client, redis.cluster.RedisCluster):
        plain = url.replace("+cluster", "", 1).split("://", 1)[1]
        scheme = "rediss+cluster" if url.startswith("rediss") else "redis+cluster"
        return RedisClusterStorage(f"{scheme}://{plain}", key_prefix=key_prefix)
    return RedisStorage("redis://", connection_pool=client.connection_pool,
                        key_prefix=key_prefix)


def _identity(value: str) -> str:
    if len(value) <= MAX_IDENTITY:
        return value
    return "h-" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:32]


class RateLimiter:
    """Named limits (``sign_in``, ``device``, ``client_auth_failures``) over identities."""

    def __init__(self, store: Store, url: str, configured: Mapping[str, str]) -> None:
        self.items = {name: limits.parse(value) for name, value in configured.items()}
        self._window = FixedWindowRateLimiter(_storage(store, url)) if self.items else None

    def hit(self, name: str, identities: Iterable[str]) -> tuple[str, int] | None:
        """Count one request for each identity; the first one over the limit and the
        seconds it must wait, or None.

        Identities are counted in order and counting stops at the first one over, so put
        the cheapest to forge last (a client IP before a client_id an attacker chose).
        """
        item = self.items.get(name)
        if item is None or self._window is None:
            return None
        for identity in identities:
            who = _identity(identity)
            try:
                if self._window.hit(item, name, who):
                    continue
                reset, _ = self._window.get_window_stats(item, name, who)
            except OUTAGE_ERRORS as exc:
                raise unavailable(exc) from exc
            return identity, max(1, math.ceil(reset - time.time()))
        return None
