"""Redis: the one client per process, every key name with its lifetime, atomic helpers.

Storage knows nothing above it. Callers get a :class:`Store`; when Redis cannot
be reached every operation raises :class:`StorageUnavailable`, which the error
handlers turn into a 503, and the connection pool reconnects by itself.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, ParamSpec, TypeVar, cast
from urllib.parse import parse_qs, unquote, urlsplit

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

from sso.sentinel_watch import WatchedSentinelPool

P = ParamSpec("P")
T = TypeVar("T")

# Errors that mean "Redis is not answering", as opposed to a bug in a command.
OUTAGE_ERRORS: tuple[type[Exception], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.MasterDownError,
    # maxmemory reached under a no-eviction policy: nothing can be written until an
    # operator frees memory, which Keycard cannot do; like an outage, it passes by itself.
    redis.exceptions.OutOfMemoryError,
)


class StorageUnavailable(Exception):
    """Redis did not answer; the request cannot be served right now."""


class StorageFull(StorageUnavailable):
    """Redis answered but refused to write: its memory is full (``maxmemory``, noeviction)."""


def unavailable(exc: Exception) -> StorageUnavailable:
    """The :class:`StorageUnavailable` for one of :data:`OUTAGE_ERRORS`."""
    if isinstance(exc, redis.exceptions.OutOfMemoryError):
        return StorageFull(str(exc))
    return StorageUnavailable(str(exc))


@dataclass(frozen=True)
class TTL:
    """Lifetimes of short-lived records that no setting governs, in seconds.

    Lifetimes that are settings (sign-in state, session idle and absolute) live in
    :class:`sso.config.Settings`; those that are protocol policy stay beside the code
    that applies them (``CODE_TTL`` in ``sso/oidc/records.py``...). Either way the
    :class:`Keys` method of every key names its lifetime.
    """

    user_profile: int = 90 * 24 * 3600


Lifetime = Literal["ttl", "durable"]


@dataclass(frozen=True)
class KeyPattern:
    """One kind of key, as :attr:`Keys.PATTERNS` lists it.

    ``template`` is the name after the prefix; ``{name}`` stands for one segment without
    a colon, ``{name*}`` for the rest of the name, colons included (an IPv6 address).
    ``lifetime`` is ``"ttl"`` when the key always carries an expiry, ``"durable"`` when it
    lives until something deletes it; ``why`` names the TTL or the reason it has none.
    """

    method: str
    template: str
    lifetime: Lifetime
    why: str

    @property
    def glob(self) -> str:
        """The SCAN ``MATCH`` pattern after the prefix."""
        return re.sub(r"\{[^}]*\}", "*", self.template)

    @property
    def regex(self) -> re.Pattern[str]:
        """Full-match regex of the name after the prefix."""
        parts = re.split(r"(\{[^}]*\})", self.template)
        body = "".join(
            (".+" if part.endswith("*}") else "[^:]+") if part.startswith("{") else re.escape(part)
            for part in parts
        )
        return re.compile(body)


_declared: list[KeyPattern] = []
_Builder = TypeVar("_Builder", bound=Callable[..., str])


def _key(template: str, lifetime: Lifetime, why: str) -> Callable[[_Builder], _Builder]:
    """Declare the pattern a :class:`Keys` method builds (collected in ``Keys.PATTERNS``)."""

    def declare(method: _Builder) -> _Builder:
        _declared.append(KeyPattern(method.__name__, template, lifetime, why))
        return method

    return declare


class Keys:
    """Every Redis key Keycard writes, under one prefix, each with its lifetime.

    Nothing outside this class builds a key name: callers reach these methods as
    ``store.keys.<kind>(...)``. Bearer secrets never appear in key names in clear:
    callers pass their hash. Index sets hold ids (grant ids, session hashes, client ids),
    never key names: keys are built from ids here.
    """

    PATTERNS: ClassVar[tuple[KeyPattern, ...]]

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    # -- browser sign-in and sessions (sso/login/flow.py, sso/sessions.py) -----------------

    @_key("state:{state_hash}", "ttl",
          "settings.login_state_seconds (SignInFlow.ttl); consumed by GETDEL")
    def login_state(self, state_hash: str) -> str:
        return f"{self.prefix}state:{state_hash}"

    @_key("sess:{sid_hash}", "ttl",
          "settings.session_idle_seconds, sliding, capped by settings.session_absolute_seconds")
    def session(self, sid_hash: str) -> str:
        return f"{self.prefix}sess:{sid_hash}"

    @_key("sessgrants:{sid_hash}", "ttl",
          "set of grant ids; TTL only grows, to the longest grant listed (records.create_grant)"
          " or settings.session_absolute_seconds when carried to a new session")
    def session_grants(self, sid_hash: str) -> str:
        return f"{self.prefix}sessgrants:{sid_hash}"

    @_key("user:{user_id}:sessions", "ttl",
          "set of session hashes; settings.session_absolute_seconds, renewed at each sign-in")
    def user_sessions(self, user_id: str) -> str:
        return f"{self.prefix}user:{user_id}:sessions"

    # -- people (sso/accounts.py) ------------------------------------------------------------

    @_key("user:{user_id}", "ttl",
          "profile + sealed upstream token; TTL.user_profile, renewed at each save")
    def user(self, user_id: str) -> str:
        return f"{self.prefix}user:{user_id}"

    @_key("users", "durable",
          "sorted set user id -> last sign-in: the directory admins list and rules match")
    def users_index(self) -> str:
        return f"{self.prefix}users"

    @_key("logins", "durable", "hash login -> user id, kept current at every sign-in")
    def login_index(self) -> str:
        return f"{self.prefix}logins"

    @_key("bootstrap-admins", "durable",
          "hash login -> GitHub id: each login in SSO_BOOTSTRAP_ADMINS bound (HSETNX, once) to"
          " the id that first signed in with it; only that id gets admin through the entry")
    def bootstrap_pins(self) -> str:
        return f"{self.prefix}bootstrap-admins"

    @_key("recheck:{user_id}", "ttl",
          "RECHECK_BACKOFF (sso/accounts.py): one membership re-check at a time, and the"
          " back-off after an upstream failure")
    def recheck_lock(self, user_id: str) -> str:
        return f"{self.prefix}recheck:{user_id}"

    # -- OpenID provider records (sso/oidc/records.py) ---------------------------------------

    @_key("code:{code_hash}", "ttl", "CODE_TTL (sso/oidc/records.py); consumed by GETDEL")
    def code(self, code_hash: str) -> str:
        return f"{self.prefix}code:{code_hash}"

    @_key("code-used:{code_hash}", "ttl",
          "USED_CODE_TTL (sso/oidc/records.py): a redeemed code, to catch replays")
    def used_code(self, code_hash: str) -> str:
        return f"{self.prefix}code-used:{code_hash}"

    @_key("grant:{grant_id}", "ttl", "until the grant's expires_at (end of its token family)")
    def grant(self, grant_id: str) -> str:
        return f"{self.prefix}grant:{grant_id}"

    @_key("grant-dead:{grant_id}", "ttl",
          "TOMBSTONE_TTL (sso/oidc/records.py): a revoked grant cannot come back")
    def grant_tombstone(self, grant_id: str) -> str:
        return f"{self.prefix}grant-dead:{grant_id}"

    @_key("rt:{token_hash}", "ttl", "the refresh token's lifetime, capped by its grant's end")
    def refresh_token(self, token_hash: str) -> str:
        return f"{self.prefix}rt:{token_hash}"

    @_key("revoked:{jti}", "ttl", "until the revoked access token's exp")
    def revoked_access_token(self, jti: str) -> str:
        return f"{self.prefix}revoked:{jti}"

    @_key("clientgrants:{client_id}", "ttl",
          "set of grant ids; TTL only grows, to the longest grant listed (ended with the "
          "client: `sso clients delete`, `rotate-secret --revoke-tokens`)")
    def client_grants(self, client_id: str) -> str:
        return f"{self.prefix}clientgrants:{client_id}"

    @_key("user:{user_id}:grants", "ttl",
          "set of grant ids; TTL only grows, to the longest grant listed")
    def user_grants(self, user_id: str) -> str:
        return f"{self.prefix}user:{user_id}:grants"

    @_key("user:{user_id}:consents", "ttl",
          "hash client id -> scopes; CONSENT_TTL (sso/oidc/records.py), renewed at each consent")
    def user_consents(self, user_id: str) -> str:
        return f"{self.prefix}user:{user_id}:consents"

    # -- device authorization (sso/oidc/device_records.py) ----------------------------------

    @_key("device:{device_hash}", "ttl", "the request's expires_in (DEVICE_CODE_TTL)")
    def device(self, device_hash: str) -> str:
        return f"{self.prefix}device:{device_hash}"

    @_key("device-code:{user_code_hash}", "ttl",
          "user code -> device hash; expires_in, deleted once decided")
    def device_user_code(self, user_code_hash: str) -> str:
        return f"{self.prefix}device-code:{user_code_hash}"

    @_key("device-gone:{device_hash}", "ttl",
          "expires_in + GONE_TTL (sso/oidc/device_records.py): late polls learn why")
    def device_tombstone(self, device_hash: str) -> str:
        return f"{self.prefix}device-gone:{device_hash}"

    @_key("device-tries:{kind}:{who*}", "ttl",
          "wrong user codes per person (kind: user); GUESS_WINDOW (sso/oidc/device_records.py)"
          " from the first miss")
    def device_tries(self, kind: str, who: str) -> str:
        return f"{self.prefix}device-tries:{kind}:{who}"

    # -- clients and signing keys (sso/oidc/client_registry.py, sso/oidc/keys.py) -----------

    @_key("client:{client_id}", "durable", "a registration lives until an admin deletes it")
    def client(self, client_id: str) -> str:
        return f"{self.prefix}client:{client_id}"

    @_key("clients", "durable", "set of client ids, kept with the registrations")
    def clients_index(self) -> str:
        return f"{self.prefix}clients"

    @_key("keys", "durable",
          "signing keys, a field per kid; expired ones are pruned at rotation, not by TTL")
    def signing_keys(self) -> str:
        return f"{self.prefix}keys"

    @_key("keys:version", "durable",
          "counter INCRed at every signing-key change; processes watch it")
    def signing_keys_version(self) -> str:
        return f"{self.prefix}keys:version"

    @_key("keys:lock", "ttl", "LOCK_SECONDS (sso/oidc/keys.py), held while writing keys")
    def signing_keys_lock(self) -> str:
        return f"{self.prefix}keys:lock"

    # -- audit, rules, development -----------------------------------------------------------

    @_key("audit", "durable",
          "stream bounded by length (settings.audit_max_events, XADD MAXLEN), not by time")
    def audit(self) -> str:
        return f"{self.prefix}audit"

    @_key("rules", "durable", "the role rules, edited by admins")
    def rules(self) -> str:
        return f"{self.prefix}rules"

    @_key("rl:{window*}", "ttl",
          "the rate limit's window (sso/ratelimit.py, SSO_RATE_LIMITS): the limits package's"
          " fixed window, INCR and EXPIRE in one script")
    def rate_limit(self, window: str) -> str:
        return f"{self.prefix}rl:{window}"

    @_key("dev:demo-client", "durable",
          "`sso dev` only: the demo app's client id, reused across runs like the client")
    def dev_demo_client(self) -> str:
        return f"{self.prefix}dev:demo-client"

    # -- reading key names back ----------------------------------------------------------------

    def grant_id_of(self, member: str) -> str:
        """The grant id a member of a grant index set names.

        Index sets hold grant ids; before that they held the grant's key name, and such
        members live as long as their set (months): they are read as the id they name,
        so revocation keeps reaching grants created before an upgrade.
        """
        head = self.grant("")
        return member[len(head):] if member.startswith(head) else member

    def patterns_of(self, key: str) -> list[KeyPattern]:
        """The declared patterns a full key name matches (one, for every key Keycard writes)."""
        if not key.startswith(self.prefix):
            return []
        name = key[len(self.prefix):]
        return [p for p in self.PATTERNS if p.regex.fullmatch(name)]


Keys.PATTERNS = tuple(_declared)


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
    # The connections to the sentinels get the same time limits as those to Redis: a
    # sentinel that accepts but never answers (hung, paused, partitioned) must cost one
    # timeout, then discovery asks the next one. No retry: the next sentinel is the retry.
    sentinel_kwargs = {
        "password": query.get("sentinel_password"),
        "socket_timeout": options["socket_timeout"],
        "socket_connect_timeout": options["socket_connect_timeout"],
        "retry": Retry(NoBackoff(), 0),
    }
    sentinel = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call]
        hosts, sentinel_kwargs=sentinel_kwargs, **options
    )
    # The watched pool follows a failover between connections (sso/sentinel_watch.py).
    master = sentinel.master_for(  # type: ignore[no-untyped-call]
        path[0], db=db, password=password, connection_pool_class=WatchedSentinelPool)
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
            raise unavailable(exc) from exc

    return wrapper


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
    def consume_json(self, key: str) -> Any:
        """Read and delete in one atomic step (GETDEL): of concurrent callers one wins."""
        raw = self.redis.getdel(key)
        return None if raw is None else json.loads(raw)

    @guard
    def delete(self, *keys: str) -> int:
        return int(self.redis.delete(*keys)) if keys else 0
