"""Redis: the one client per process, every key name with its TTL, atomic helpers.

Storage knows nothing above it. Callers get a :class:`Store`; when Redis cannot
be reached every operation raises :class:`StorageUnavailable`, which the error
handlers turn into a 503, and the connection pool reconnects by itself.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ParamSpec, Protocol, TypeVar, cast
from urllib.parse import parse_qs, unquote, urlsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

P = ParamSpec("P")
T = TypeVar("T")

# Errors that mean "Redis is not answering", as opposed to a bug in a command.
OUTAGE_ERRORS: tuple[type[Exception], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.MasterDownError,
)


class StorageUnavailable(Exception):
    """Redis did not answer; the request cannot be served right now."""


@dataclass(frozen=True)
class TTL:
    """Lifetimes of short-lived records, in seconds, kept beside the key names."""

    login_state: int = 600
    session_idle: int = 8 * 3600
    session_absolute: int = 7 * 24 * 3600
    user_profile: int = 90 * 24 * 3600


class Keys:
    """Every Redis key Keycard writes, under one prefix.

    Bearer secrets never appear in key names in clear: callers pass their hash.
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def login_state(self, state_hash: str) -> str:  # TTL.login_state, consumed by GETDEL
        return f"{self.prefix}state:{state_hash}"

    def session(self, sid_hash: str) -> str:  # TTL.session_idle, sliding, capped by absolute
        return f"{self.prefix}sess:{sid_hash}"

    def session_grants(self, sid_hash: str) -> str:  # set of grant keys; TTL only grows
        return f"{self.prefix}sessgrants:{sid_hash}"

    def user_sessions(self, user_id: str) -> str:  # set of session hashes; TTL = absolute
        return f"{self.prefix}user:{user_id}:sessions"

    def user(self, user_id: str) -> str:  # profile + encrypted upstream token; TTL.user_profile
        return f"{self.prefix}user:{user_id}"

    def users_index(self) -> str:  # sorted set user_id -> last sign-in time (no TTL: a directory)
        return f"{self.prefix}users"

    def login_index(self) -> str:  # hash login -> user_id, kept current at every sign-in
        return f"{self.prefix}logins"


class RedisLike(Protocol):
    """The seam tests and callers rely on: the subset of redis-py Keycard uses."""

    def ping(self) -> Any: ...
    def pipeline(self, transaction: bool = True) -> Any: ...
    def get(self, name: str) -> Any: ...
    def getdel(self, name: str) -> Any: ...


def _sentinel_client(url: str, options: dict[str, Any]) -> redis.Redis:
    """``redis+sentinel://[:password@]host:port[,host:port]/service[/db]``."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    password = unquote(netloc[0].split(":", 1)[-1]) if len(netloc) == 2 else None
    hosts = []
    for item in netloc[-1].split(","):
        host, _, port = item.rpartition(":")
        hosts.append((host or item, int(port or 26379)))
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise ValueError("redis+sentinel URL needs a service name: redis+sentinel://h:26379/mymaster")
    db = int(path[1]) if len(path) > 1 else 0
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    sentinel = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call]
        hosts, sentinel_kwargs={"password": query.get("sentinel_password")}, **options
    )
    master = sentinel.master_for(path[0], db=db, password=password)  # type: ignore[no-untyped-call]
    return cast(redis.Redis, master)


def connect(url: str, *, timeout: float = 2.0) -> redis.Redis:
    """One client (and so one connection pool) for the process, built from ``SSO_REDIS_URL``."""
    options: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "health_check_interval": 30,
        "decode_responses": True,
        # One quick retry hides a dropped idle connection; a real outage still fails fast.
        "retry": Retry(ExponentialBackoff(cap=0.2, base=0.02), 1),
        "retry_on_error": [redis.exceptions.ConnectionError],
    }
    scheme = urlsplit(url).scheme
    if scheme == "redis+sentinel":
        return _sentinel_client(url, options)
    if scheme in {"redis+cluster", "rediss+cluster"}:
        plain = url.replace("+cluster", "", 1)
        options.pop("health_check_interval")
        return cast(redis.Redis, redis.cluster.RedisCluster.from_url(plain, **options))
    if scheme not in {"redis", "rediss", "unix"}:
        raise ValueError(
            f"SSO_REDIS_URL scheme {scheme!r} is not supported: use redis://, rediss://, "
            "redis+sentinel:// or redis+cluster://"
        )
    return redis.Redis.from_url(url, **options)


def guard(func: Callable[P, T]) -> Callable[P, T]:
    """Translate Redis outages into :class:`StorageUnavailable` for the error handlers."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return func(*args, **kwargs)
        except OUTAGE_ERRORS as exc:
            raise StorageUnavailable(str(exc)) from exc

    return wrapper


@contextmanager
def outage_guard() -> Iterator[None]:
    try:
        yield
    except OUTAGE_ERRORS as exc:
        raise StorageUnavailable(str(exc)) from exc


class Store:
    """The storage service: a Redis client, the key names, JSON records, atomic consumption."""

    def __init__(self, client: redis.Redis, prefix: str, ttl: TTL | None = None) -> None:
        # Typed as Any: with decode_responses=True redis-py returns str, but its stubs say
        # bytes | str everywhere, which would bury real type errors under casts.
        self.redis: Any = client
        self.keys = Keys(prefix)
        self.ttl = ttl or TTL()

    @guard
    def ping(self) -> bool:
        return bool(self.redis.ping())

    @guard
    def put_json(self, key: str, value: Any, ttl: int | None, *, only_new: bool = False) -> bool:
        data = json.dumps(value, separators=(",", ":"))
        return bool(self.redis.set(key, data, ex=ttl, nx=only_new))

    @guard
    def get_json(self, key: str) -> Any:
        raw = self.redis.get(key)
        return None if raw is None else json.loads(raw)

    @guard
    def consume_json(self, key: str) -> Any:
        """Read and delete in one atomic step (GETDEL): of concurrent callers one wins."""
        raw = self.redis.getdel(key)
        return None if raw is None else json.loads(raw)

    @guard
    def delete(self, *keys: str) -> int:
        return int(self.redis.delete(*keys)) if keys else 0
