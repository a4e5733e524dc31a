"""Redis: the one client per process, every key name with its lifetime, atomic helpers.

Storage knows nothing above it. Callers get a :class:`Store`; when Redis cannot
be reached every operation raises :class:`StorageUnavailable`, which the error
handlers turn into a 503, and the connection pool reconnects by itself.
"""

from __future__ import annotations

import functools
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, ParamSpec, TypeVar, cast
from urllib.parse import parse_qs, unquote, urlsplit

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

from sso.sentinel_watch import WatchedSentinelPool, may_skip_confirmation

P = ParamSpec("P")
T = TypeVar("T")

# Errors that mean "Redis is not answering", as opposed to a bug in a command.
OUTAGE_ERRORS: tuple[type[Exception], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.MasterDownError,
    # Redis Cluster: a master died and its slots are not yet served by a promoted replica
    # (every node says CLUSTERDOWN meanwhile), or slots are moving between masters.
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
    redis.exceptions.SlotNotCoveredError,
    # maxmemory reached under a no-eviction policy: nothing can be written until an
    # operator frees memory, which Keycard cannot do; like an outage, it passes by itself.
    redis.exceptions.OutOfMemoryError,
)


# confirmed(): how long one WAIT may block, and how long a write is retried unconfirmed
# (a Sentinel failover takes 1-3 s from the promotion to the announcement, measured).
CONFIRM_WAIT_MS = 250
CONFIRM_SECONDS = 4.0


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

#: The hash tag every configuration key carries in a cluster (``Keys(..., cluster=True)``).
CONFIG_TAG = "config"


@dataclass(frozen=True)
class KeyPattern:
    """One kind of key, as :attr:`Keys.PATTERNS` lists it.

    ``template`` is the name after the prefix; ``{name}`` stands for one segment without
    a colon (or brace), ``{name*}`` for the rest of the name, colons included (an IPv6
    address).
    ``lifetime`` is ``"ttl"`` when the key always carries an expiry, ``"durable"`` when it
    lives until something deletes it; ``why`` names the TTL or the reason it has none.

    ``tag`` is where the key's Redis Cluster hash tag comes from: the name of the template
    segment braced in cluster mode (``sess:{sid_hash}`` → ``sess:{<hash>}``), or
    :data:`CONFIG_TAG` for configuration (cluster mode puts ``{config}:`` after the prefix),
    or ``None`` (no tag: the whole name is hashed; single-key records only). Outside a
    cluster no key carries braces: names are the same as before hash tags existed.
    """

    method: str
    template: str
    lifetime: Lifetime
    why: str
    tag: str | None = None

    @property
    def glob(self) -> str:
        """The SCAN ``MATCH`` pattern after the prefix (standalone and Sentinel)."""
        return self.glob_in(cluster=False)

    @property
    def regex(self) -> re.Pattern[str]:
        """Full-match regex of the name after the prefix (standalone and Sentinel)."""
        return self.regex_in(cluster=False)

    @property
    def params(self) -> tuple[str, ...]:
        """The names of the ``{name}`` segments, in order: the builder method's parameters."""
        return tuple(name.rstrip("*") for name in re.findall(r"\{([^}]*)\}", self.template))

    def glob_in(self, *, cluster: bool) -> str:
        """The SCAN ``MATCH`` pattern after the prefix (braces are not special in globs)."""
        body = re.sub(r"\{[^}]*\}", "*", self.template)
        return "{" + CONFIG_TAG + "}:" + body if cluster and self.tag == CONFIG_TAG else body

    def regex_in(self, *, cluster: bool) -> re.Pattern[str]:
        """Full-match regex of the name after the prefix, in or out of a cluster; a group
        per ``{name}`` segment, in order (in a cluster, its hash-tag braces included)."""
        parts = re.split(r"(\{[^}]*\})", self.template)
        body = "".join(self._segment(part, cluster) for part in parts)
        if cluster and self.tag == CONFIG_TAG:
            body = re.escape("{" + CONFIG_TAG + "}:") + body
        return re.compile(body)

    def _segment(self, part: str, cluster: bool) -> str:
        if not part.startswith("{"):
            return re.escape(part)
        open_ended = part.endswith("*}")
        if cluster and part.strip("{}*") == self.tag:
            # The braced id, then what follows it in the segment (a jti after its grant id).
            return r"(\{[^{}]+\}.*)" if open_ended else r"(\{[^{}:]+\}[^:]*)"
        return "(.+)" if open_ended else "([^:{}]+)"


_declared: list[KeyPattern] = []
_Builder = TypeVar("_Builder", bound=Callable[..., str])


def _key(template: str, lifetime: Lifetime, why: str,
         tag: str | None) -> Callable[[_Builder], _Builder]:
    """Declare the pattern a :class:`Keys` method builds (collected in ``Keys.PATTERNS``)."""
    segments = {s.strip("{}*") for s in re.findall(r"\{[^}]*\}", template)}
    assert tag in (None, CONFIG_TAG) or tag in segments, (template, tag)

    def declare(method: _Builder) -> _Builder:
        _declared.append(KeyPattern(method.__name__, template, lifetime, why, tag))
        return method

    return declare


class Keys:
    """Every Redis key Keycard writes, under one prefix, each with its lifetime.

    Nothing outside this class builds a key name: callers reach these methods as
    ``store.keys.<kind>(...)``. Bearer secrets never appear in key names in clear:
    callers pass their hash. Index sets hold ids (grant ids, session hashes, client ids),
    never key names: keys are built from ids here.

    **Hash tags (Redis Cluster only).** A script or a MULTI may only touch keys of one hash
    slot, and one slot lives on one master. So in a cluster each key carries the hash tag
    of the entity it belongs to (:meth:`_tag`): configuration (clients, signing keys, rules,
    the directory, bootstrap pins, audit) shares ``{config}``; a person's records their user
    id; a session's its hash; a grant's (and its access tokens' revocations, whose ``jti``
    starts with the grant id) its id; a code, a refresh token, a device request theirs.
    Everything else spreads over the masters. Operations that span entities (creating a
    grant and indexing it, ending a session and its tokens) are single-slot steps in a
    failure-safe order, documented where they happen. Outside a cluster (``cluster`` false,
    or a prefix that already holds a hash tag, which pins everything to one slot as before)
    names carry no braces and stay byte for byte what they were.
    """

    PATTERNS: ClassVar[tuple[KeyPattern, ...]]

    def __init__(self, prefix: str, *, cluster: bool = False) -> None:
        self.prefix = prefix
        self.cluster = cluster and "{" not in prefix
        self._config = prefix + ("{" + CONFIG_TAG + "}:" if self.cluster else "")

    def _tag(self, entity: str) -> str:
        """``entity`` as its key's hash tag in a cluster; as it is everywhere else."""
        return "{" + entity + "}" if self.cluster else entity

    # -- browser sign-in and sessions (sso/login/flow.py, sso/sessions.py) -----------------

    @_key("state:{state_hash}", "ttl",
          "settings.login_state_seconds (SignInFlow.ttl); consumed by GETDEL", "state_hash")
    def login_state(self, state_hash: str) -> str:
        return f"{self.prefix}state:{self._tag(state_hash)}"

    @_key("sess:{sid_hash}", "ttl",
          "settings.session_idle_seconds, sliding, capped by settings.session_absolute_seconds",
          "sid_hash")
    def session(self, sid_hash: str) -> str:
        return f"{self.prefix}sess:{self._tag(sid_hash)}"

    @_key("sessgrants:{sid_hash}", "ttl",
          "set of grant ids; TTL only grows, to the longest grant listed (records.create_grant)"
          " or settings.session_absolute_seconds when carried to a new session", "sid_hash")
    def session_grants(self, sid_hash: str) -> str:
        return f"{self.prefix}sessgrants:{self._tag(sid_hash)}"

    @_key("user:{user_id}:sessions", "ttl",
          "set of session hashes; settings.session_absolute_seconds, renewed at each sign-in",
          "user_id")
    def user_sessions(self, user_id: str) -> str:
        return f"{self.prefix}user:{self._tag(user_id)}:sessions"

    # -- people (sso/accounts.py) ------------------------------------------------------------

    @_key("user:{user_id}", "ttl",
          "profile + sealed upstream token; TTL.user_profile, renewed at each save", "user_id")
    def user(self, user_id: str) -> str:
        return f"{self.prefix}user:{self._tag(user_id)}"

    @_key("users", "durable",
          "sorted set user id -> last sign-in: the directory admins list and rules match",
          CONFIG_TAG)
    def users_index(self) -> str:
        return f"{self._config}users"

    @_key("logins", "durable", "hash login -> user id, kept current at every sign-in",
          CONFIG_TAG)
    def login_index(self) -> str:
        return f"{self._config}logins"

    @_key("bootstrap-admins", "durable",
          "hash login -> GitHub id: each login in SSO_BOOTSTRAP_ADMINS bound (HSETNX, once) to"
          " the id that first signed in with it; only that id gets admin through the entry",
          CONFIG_TAG)
    def bootstrap_pins(self) -> str:
        return f"{self._config}bootstrap-admins"

    @_key("forget:lock", "ttl",
          "FORGET_EVERY (sso/forgetting.py): one prune of the people indexes per hour per"
          " deployment, taken after a sign-in", None)
    def forget_lock(self) -> str:
        return f"{self.prefix}forget:lock"

    @_key("recheck:{user_id}", "ttl",
          "RECHECK_BACKOFF (sso/accounts.py): one membership re-check at a time, and the"
          " back-off after an upstream failure", "user_id")
    def recheck_lock(self, user_id: str) -> str:
        return f"{self.prefix}recheck:{self._tag(user_id)}"

    # -- OpenID provider records (sso/oidc/records.py) ---------------------------------------

    @_key("code:{code_hash}", "ttl", "CODE_TTL (sso/oidc/records.py); consumed by GETDEL",
          "code_hash")
    def code(self, code_hash: str) -> str:
        return f"{self.prefix}code:{self._tag(code_hash)}"

    @_key("code-used:{code_hash}", "ttl",
          "USED_CODE_TTL (sso/oidc/records.py): a redeemed code, to catch replays", "code_hash")
    def used_code(self, code_hash: str) -> str:
        return f"{self.prefix}code-used:{self._tag(code_hash)}"

    @_key("grant:{grant_id}", "ttl", "until the grant's expires_at (end of its token family)",
          "grant_id")
    def grant(self, grant_id: str) -> str:
        return f"{self.prefix}grant:{self._tag(grant_id)}"

    @_key("grant-dead:{grant_id}", "ttl",
          "TOMBSTONE_TTL (sso/oidc/records.py): a revoked grant cannot come back", "grant_id")
    def grant_tombstone(self, grant_id: str) -> str:
        return f"{self.prefix}grant-dead:{self._tag(grant_id)}"

    @_key("rt:{token_hash}", "ttl", "the refresh token's lifetime, capped by its grant's end",
          "token_hash")
    def refresh_token(self, token_hash: str) -> str:
        return f"{self.prefix}rt:{self._tag(token_hash)}"

    @_key("revoked:{jti}", "ttl",
          "until the revoked access token's exp; only a copy for older processes: the"
          " revocation itself is the ended grant or Keys.revoked_client_tokens", "jti")
    def revoked_access_token(self, jti: str) -> str:
        # A jti "<grant id>.<random>" is tagged by its grant id: one script reads both.
        grant_id, dot, rest = jti.partition(".")
        return f"{self.prefix}revoked:{self._tag(grant_id)}{dot}{rest}"

    @_key("clientrevoked:{client_id}", "durable",
          "sorted set jti -> exp of revoked client-credentials access tokens (no grant to"
          " end); expired entries pruned at each revocation (records.revoke_access_token)."
          " No TTL on purpose: volatile-* eviction must never bring a revoked token back",
          "client_id")
    def revoked_client_tokens(self, client_id: str) -> str:
        return f"{self.prefix}clientrevoked:{self._tag(client_id)}"

    @_key("clientgrants:{client_id}", "ttl",
          "set of grant ids; TTL only grows, to the longest grant listed (ended with the "
          "client: `sso clients delete`, `rotate-secret --revoke-tokens`)", "client_id")
    def client_grants(self, client_id: str) -> str:
        return f"{self.prefix}clientgrants:{self._tag(client_id)}"

    @_key("user:{user_id}:grants", "ttl",
          "set of grant ids; TTL only grows, to the longest grant listed", "user_id")
    def user_grants(self, user_id: str) -> str:
        return f"{self.prefix}user:{self._tag(user_id)}:grants"

    @_key("user:{user_id}:consents", "ttl",
          "hash client id -> scopes; CONSENT_TTL (sso/oidc/records.py), renewed at each consent",
          "user_id")
    def user_consents(self, user_id: str) -> str:
        return f"{self.prefix}user:{self._tag(user_id)}:consents"

    # -- device authorization (sso/oidc/device_records.py) ----------------------------------

    @_key("device:{device_hash}", "ttl", "the request's expires_in (DEVICE_CODE_TTL)",
          "device_hash")
    def device(self, device_hash: str) -> str:
        return f"{self.prefix}device:{self._tag(device_hash)}"

    @_key("device-code:{user_code_hash}", "ttl",
          "user code -> device hash; expires_in, deleted once decided", "user_code_hash")
    def device_user_code(self, user_code_hash: str) -> str:
        return f"{self.prefix}device-code:{self._tag(user_code_hash)}"

    @_key("device-gone:{device_hash}", "ttl",
          "expires_in + GONE_TTL (sso/oidc/device_records.py): late polls learn why",
          "device_hash")
    def device_tombstone(self, device_hash: str) -> str:
        return f"{self.prefix}device-gone:{self._tag(device_hash)}"

    @_key("device-tries:{kind}:{who*}", "ttl",
          "wrong user codes per person (kind: user); GUESS_WINDOW (sso/oidc/device_records.py)"
          " from the first miss", "who")
    def device_tries(self, kind: str, who: str) -> str:
        return f"{self.prefix}device-tries:{kind}:{self._tag(who)}"

    # -- clients and signing keys (sso/oidc/client_registry.py, sso/oidc/keys.py) -----------

    @_key("client:{client_id}", "durable", "a registration lives until an admin deletes it",
          CONFIG_TAG)
    def client(self, client_id: str) -> str:
        return f"{self._config}client:{client_id}"

    @_key("clients", "durable", "set of client ids, kept with the registrations", CONFIG_TAG)
    def clients_index(self) -> str:
        return f"{self._config}clients"

    @_key("keys", "durable",
          "signing keys, a field per kid; expired ones are pruned at rotation, not by TTL",
          CONFIG_TAG)
    def signing_keys(self) -> str:
        return f"{self._config}keys"

    @_key("keys:version", "durable",
          "counter INCRed at every signing-key change, for processes of earlier releases "
          "(a rolling upgrade); keys:generation is what processes watch now", CONFIG_TAG)
    def signing_keys_version(self) -> str:
        return f"{self._config}keys:version"

    @_key("keys:generation", "durable",
          "random id replaced at every signing-key change; processes compare it (a counter "
          "restarts at 1 after a data loss and would match what they cached)", CONFIG_TAG)
    def signing_keys_generation(self) -> str:
        return f"{self._config}keys:generation"

    @_key("epoch", "durable",
          "random id written once (SET NX): when it vanishes or changes, Redis lost its data "
          "(sso/epoch.py); in a cluster it lives with the configuration", CONFIG_TAG)
    def instance_epoch(self) -> str:
        return f"{self._config}epoch"

    @_key("keys:lock", "ttl", "LOCK_SECONDS (sso/oidc/keys.py), held while writing keys",
          CONFIG_TAG)
    def signing_keys_lock(self) -> str:
        return f"{self._config}keys:lock"

    # -- audit, rules, development -----------------------------------------------------------

    @_key("audit", "durable",
          "stream bounded by length (settings.audit_max_events, XADD MAXLEN), not by time",
          CONFIG_TAG)
    def audit(self) -> str:
        return f"{self._config}audit"

    @_key("rules", "durable", "the role rules, edited by admins", CONFIG_TAG)
    def rules(self) -> str:
        return f"{self._config}rules"

    @_key("rl:{window*}", "ttl",
          "the rate limit's window (sso/ratelimit.py, SSO_RATE_LIMITS): the limits package's"
          " fixed window, INCR and EXPIRE in one script", None)
    def rate_limit(self, window: str) -> str:
        return f"{self.prefix}rl:{window}"

    @_key("logout-due", "durable",
          "sorted set job id -> next attempt time: back-channel logout deliveries to make"
          " (sso/oidc/backchannel.py); a member leaves when its job is delivered or dropped",
          None)
    def logout_queue(self) -> str:
        return f"{self.prefix}logout-due"

    @_key("logout-job:{job_id}", "ttl",
          "JOB_TTL (sso/oidc/backchannel.py): one back-channel logout to deliver, outliving"
          " its retry period", "job_id")
    def logout_job(self, job_id: str) -> str:
        return f"{self.prefix}logout-job:{self._tag(job_id)}"

    @_key("hook:{delivery_id}", "ttl",
          "DELIVERY_TTL (sso/hooks/github.py): a GitHub webhook delivery already acted on",
          "delivery_id")
    def hook_delivery(self, delivery_id: str) -> str:
        return f"{self.prefix}hook:{self._tag(delivery_id)}"

    @_key("hooks:recent", "durable",
          "list bounded by length (RECENT_DELIVERIES, LTRIM): the last webhook deliveries",
          None)
    def hooks_recent(self) -> str:
        return f"{self.prefix}hooks:recent"

    @_key("dev:demo-client", "durable",
          "`sso dev` only: the demo app's client id, reused across runs like the client",
          CONFIG_TAG)
    def dev_demo_client(self) -> str:
        return f"{self._config}dev:demo-client"

    @_key("cli:client", "durable",
          "the default public device client `sso login` uses (`sso clients create --device`, "
          "`sso dev`): its id, served at /device/cli-client", CONFIG_TAG)
    def cli_client(self) -> str:
        return f"{self._config}cli:client"

    # -- reading key names back ----------------------------------------------------------------

    def grant_id_of(self, member: str) -> str:
        """The grant id a member of a grant index set names.

        Index sets hold grant ids; before that they held the grant's key name, and such
        members live as long as their set (months): they are read as the id they name,
        so revocation keeps reaching grants created before an upgrade (outside a cluster:
        cluster key names changed with hash tags, see docs/architecture.md).
        """
        head = f"{self.prefix}grant:"
        return member[len(head):] if member.startswith(head) else member

    def scan_match(self, pattern: KeyPattern) -> str:
        """The SCAN ``MATCH`` argument for every key of one declared pattern."""
        return f"{self.prefix}{pattern.glob_in(cluster=self.cluster)}"

    def args_of(self, key: str, pattern: KeyPattern) -> dict[str, str] | None:
        """The arguments that build ``key`` again with ``pattern``'s method (None when it
        is not such a key): what lets a backup name records independently of the prefix
        and of the topology (hash-tag braces are not part of an id)."""
        if not key.startswith(self.prefix):
            return None
        found = pattern.regex_in(cluster=self.cluster).fullmatch(key[len(self.prefix):])
        if found is None:
            return None
        values = (value.replace("{", "").replace("}", "") for value in found.groups())
        return dict(zip(pattern.params, values, strict=True))

    def build(self, pattern: KeyPattern, args: dict[str, str]) -> str:
        """The key of ``pattern`` for ``args`` (as :meth:`args_of` returns them)."""
        if set(args) != set(pattern.params):
            raise ValueError(f"{pattern.method} takes {pattern.params}, not {sorted(args)}")
        method: Callable[..., str] = getattr(self, pattern.method)
        return method(**args)

    def patterns_of(self, key: str) -> list[KeyPattern]:
        """The declared patterns a full key name matches (one, for every key Keycard writes)."""
        if not key.startswith(self.prefix):
            return []
        name = key[len(self.prefix):]
        return [p for p in self.PATTERNS if p.regex_in(cluster=self.cluster).fullmatch(name)]


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


def _cluster_client(url: str, options: dict[str, Any]) -> redis.Redis:
    """``redis+cluster://[:password@]host:port[,host:port...]`` (``rediss+cluster://``): any
    node that answers gives the slot map; naming several lets a process start while one of
    them is down."""
    parts = urlsplit(url)
    credentials, _, hosts = parts.netloc.rpartition("@")
    nodes = []
    for item in hosts.split(","):
        host, _, port = item.rpartition(":")
        node = redis.cluster.ClusterNode(host or item, int(port or 6379))  # type: ignore[no-untyped-call]
        nodes.append(node)
    first = f"{parts.scheme.replace('+cluster', '')}://"
    first += f"{credentials}@" if credentials else ""
    first += f"{nodes[0].host}:{nodes[0].port}{parts.path}"
    first += f"?{parts.query}" if parts.query else ""
    options.pop("health_check_interval")
    client = redis.cluster.RedisCluster.from_url(first, startup_nodes=nodes, **options)
    return cast(redis.Redis, client)


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
        return _cluster_client(url, options)
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

    def __init__(self, client: redis.Redis, prefix: str, ttl: TTL | None = None, *,
                 wait_replicas: int = 0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        # Typed as Any: with decode_responses=True redis-py returns str, but its stubs say
        # bytes | str everywhere, which would bury real type errors under casts.
        self.redis: Any = client
        self.keys = Keys(prefix, cluster=isinstance(client, redis.cluster.RedisCluster))
        self.ttl = ttl or TTL()
        # Replicas that must hold a revocation or an ended session before Keycard says it
        # is done (SSO_REDIS_WAIT_REPLICAS): see confirmed().
        self.wait_replicas = wait_replicas
        self.clock = clock
        # Whether a write WAIT did not confirm may stand (no failover under way, so no
        # replica is connected at all): known for Sentinel, never assumed elsewhere.
        pool = getattr(client, "connection_pool", None)
        self.may_skip_confirmation: Callable[[], bool] = (
            (lambda: may_skip_confirmation(pool)) if isinstance(pool, WatchedSentinelPool)
            else (lambda: False))

    def confirmed(self, write: Callable[[Any], object]) -> list[Any]:
        """Run the writes ``write`` adds to a pipeline, and with ``wait_replicas`` return
        only once that many replicas hold them (``WAIT`` on the same connection).

        For what must not be undone by a failover: Redis replicates asynchronously, and in
        the second between a replica's promotion and the sentinels' announcement a master
        being demoted still takes writes that its demotion then throws away (a revoked token
        or an ended session would come back). Unconfirmed, the writes are made again (they
        are idempotent), by then through the new master, until ``CONFIRM_SECONDS``; past
        that the caller gets :class:`StorageUnavailable` (a 503: not done, try again).
        Returns the results of ``write``'s commands.
        """
        deadline = self.clock() + CONFIRM_SECONDS
        while True:
            pipe = self.redis.pipeline(transaction=False)
            write(pipe)
            if not self.wait_replicas:
                return list(pipe.execute())
            pipe.execute_command("WAIT", self.wait_replicas, CONFIRM_WAIT_MS)
            results = list(pipe.execute())
            if int(results[-1]) >= self.wait_replicas or self.may_skip_confirmation():
                return results[:-1]
            if self.clock() > deadline:
                raise StorageUnavailable(
                    f"the write was not confirmed by {self.wait_replicas} replica(s) within "
                    f"{CONFIRM_SECONDS:.0f} s (SSO_REDIS_WAIT_REPLICAS)")

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
