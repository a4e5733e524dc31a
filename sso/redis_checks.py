"""Is the Redis Keycard uses fit to hold its state? The checks behind ``sso doctor`` and
``/readyz``.

Keycard keeps everything in Redis, so two settings decide whether it can be trusted
(issue #12, defect 2): ``maxmemory-policy`` must be ``noeviction`` (any other policy lets
a full Redis drop clients, signing keys, rules or grants; a full ``noeviction`` Redis only
refuses writes, which Keycard answers with 503), and something must persist the data
(``appendonly yes`` or an RDB ``save`` schedule), or a restart loses every registration
and key. On Cluster each master is checked. Managed Redis often forbids ``CONFIG``
(renamed, or an ACL without ``+config``): what cannot be read is reported as ``unknown``,
a warning, never a crash. ``INFO`` is read first, as it is more often allowed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import redis

from sso.cache import ExpiringCache
from sso.storage import OUTAGE_ERRORS, Store, connect

log = logging.getLogger("keycard.redis")

Verdict = Literal["OK", "WARN", "FAIL"]
READY_CACHE_SECONDS = 30.0  # /readyz is polled by every load balancer; Redis is asked this often
MEMORY_WARN, MEMORY_FAIL = 80.0, 95.0  # used_memory as % of maxmemory


@dataclass(frozen=True)
class Check:
    """One row of ``sso doctor``: what was checked, what was found, the verdict, what to do.

    ``gate``: a FAIL here makes ``/readyz`` answer 503 in production.
    """

    name: str
    value: str
    verdict: Verdict
    advice: str = ""
    gate: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def topology(client: Any) -> str:
    """``cluster``, ``sentinel`` or ``standalone``, from the client ``storage.connect`` built."""
    if isinstance(client, redis.cluster.RedisCluster):
        return "cluster"
    if isinstance(getattr(client, "connection_pool", None),
                  redis.sentinel.SentinelConnectionPool):
        return "sentinel"
    return "standalone"


def masters(client: Any) -> list[tuple[str, Any]]:
    """(label, client of that node) for every master holding Keycard's data."""
    kind = topology(client)
    if kind == "cluster":
        return [(node.name, client.get_redis_connection(node))
                for node in sorted(client.get_primaries(), key=lambda n: n.name)]
    if kind == "sentinel":
        # The client follows the master the sentinels name; asking them again here would
        # cost a discovery (a timeout per hung sentinel) on top of the one it makes.
        address = client.connection_pool.master_address
        return [(f"{address[0]}:{address[1]}" if address else "master", client)]
    kwargs = client.connection_pool.connection_kwargs
    where = kwargs.get("path") or f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"
    return [(str(where), client)]


def _info(node: Any, section: str) -> dict[str, Any] | None:
    try:
        return dict(node.info(section))
    except redis.exceptions.ResponseError:  # INFO forbidden (ACL) or renamed
        return None


def _config(node: Any, name: str) -> str | None:
    try:
        found = node.config_get(name)
    except redis.exceptions.ResponseError:  # NOPERM, or CONFIG renamed away
        return None
    value = found.get(name) if isinstance(found, dict) else None
    return None if value is None else str(value)


def policy_check(node: Any) -> Check:
    memory = _info(node, "memory") or {}
    policy = memory.get("maxmemory_policy") or _config(node, "maxmemory-policy")
    if policy is None:
        return Check("maxmemory-policy", "unknown", "WARN",
                     "could not read it (INFO and CONFIG refused): make sure it is noeviction",
                     gate=True)
    if policy == "noeviction":
        return Check("maxmemory-policy", policy, "OK", gate=True)
    return Check("maxmemory-policy", policy, "FAIL",
                 "set maxmemory-policy noeviction: under memory pressure this policy deletes "
                 "clients, signing keys, rules or grants", gate=True)


def persistence_check(node: Any) -> Check:
    info = _info(node, "persistence") or {}
    aof = info.get("aof_enabled")
    if aof is None:
        appendonly = _config(node, "appendonly")
        aof = None if appendonly is None else int(appendonly == "yes")
    if aof == 1:
        return Check("persistence", "appendonly yes", "OK", gate=True)
    save = _config(node, "save")
    if save is None:
        return Check("persistence", "unknown", "WARN",
                     "could not read the save schedule (CONFIG refused): make sure appendonly "
                     "yes or an RDB save schedule is set", gate=True)
    if save.strip():
        return Check("persistence", f"rdb only (save {save})", "WARN",
                     "appendonly yes: with RDB alone a restart loses the writes since the last "
                     "snapshot (new clients, revocations)", gate=True)
    return Check("persistence", "none", "FAIL",
                 "set appendonly yes (or a save schedule): a restart now loses every client, "
                 "signing key and rule", gate=True)


def memory_check(node: Any) -> Check:
    memory = _info(node, "memory")
    if memory is None:
        return Check("memory", "unknown", "WARN", "INFO refused: watch memory use elsewhere")
    used, limit = int(memory.get("used_memory", 0)), int(memory.get("maxmemory", 0))
    human = str(memory.get("used_memory_human", used))
    if limit <= 0:
        return Check("memory", f"{human} used, no maxmemory", "WARN",
                     "set maxmemory below the machine's memory, so a full Redis refuses "
                     "writes (503) instead of being killed")
    share = 100.0 * used / limit
    value = f"{human} of {memory.get('maxmemory_human', limit)} ({share:.0f}%)"
    if share >= MEMORY_FAIL:
        return Check("memory", value, "FAIL",
                     "Redis is (nearly) full: writes fail with 503; raise maxmemory")
    if share >= MEMORY_WARN:
        return Check("memory", value, "WARN", "raise maxmemory before it fills up")
    return Check("memory", value, "OK")


def node_checks(node: Any) -> list[Check]:
    """Reachability and version, then the settings; an unreachable node stops there."""
    try:
        node.ping()
        server = _info(node, "server") or {}
    except OUTAGE_ERRORS as exc:
        return [Check("reachable", f"no: {str(exc)[:120]}", "FAIL",
                      "check SSO_REDIS_URL, the network and that Redis runs", gate=True)]
    version = str(server.get("redis_version", "unknown"))
    return [Check("reachable", f"yes, Redis {version}", "OK"),
            policy_check(node), persistence_check(node), memory_check(node)]


def server_checks(client: Any) -> list[Check]:
    """The topology, then every master's checks (named after the master on a cluster)."""
    kind = topology(client)
    try:
        nodes = masters(client)
    except OUTAGE_ERRORS as exc:
        return [Check("topology", kind, "OK"),
                Check("reachable", f"no: {str(exc)[:120]}", "FAIL",
                      "check SSO_REDIS_URL, the network and that Redis runs", gate=True)]
    rows = [Check("topology", f"{kind}, {len(nodes)} master(s)", "OK")]
    for label, node in nodes:
        for check in node_checks(node):
            name = f"{check.name} [{label}]" if kind == "cluster" else check.name
            rows.append(Check(name, check.value, check.verdict, check.advice, check.gate))
    return rows


def data_checks(*, active_key_algs: Iterable[str], algorithms: Iterable[str], clients: int,
                rules: int, people: int) -> list[Check]:
    """What Keycard keeps there: its signing keys (one active per algorithm), clients,
    rules and people (counts, for the operator's eye)."""
    active = set(active_key_algs)
    missing = sorted(set(algorithms) - active)
    keys = (Check("signing keys", f"active: {', '.join(sorted(active))}", "OK") if not missing
            else Check("signing keys", f"missing: {', '.join(missing)}", "FAIL",
                       "start Keycard once (it creates them) or run `sso keys rotate`"))
    return [keys,
            Check("clients", str(clients), "OK"),
            Check("rules", str(rules), "OK" if rules else "WARN",
                  "" if rules else "no role rules: only bootstrap admins get a role"),
            Check("people", str(people), "OK")]


def failing(checks: Iterable[Check]) -> bool:
    return any(c.verdict == "FAIL" for c in checks)


class Readiness:
    """The verdict ``/readyz`` adds to its ping: in production, a Redis that may evict or
    forget Keycard's state is not ready. Cached: load balancers poll ``/readyz`` every few
    seconds, and on a cluster the checks ask every master."""

    def __init__(self, store: Store, *, production: bool,
                 cache_seconds: float | None = None) -> None:
        self.store = store
        self.production = production
        seconds = READY_CACHE_SECONDS if cache_seconds is None else cache_seconds
        self._cache: ExpiringCache[str, list[str]] = ExpiringCache(1, seconds)
        self._asking = threading.Lock()
        self._last: list[str] = []  # until Redis was first asked: nothing known against it

    def problems(self, client: Any = None) -> list[str]:
        """Why Redis's configuration is unfit (gate checks that FAIL), empty when fit or
        when it cannot be told (Redis down: the ping says so; CONFIG refused: unknown).

        One thread asks Redis at a time; the others answer with the last verdict meanwhile
        (a burst of polls when the cache expires, or the check at start still under way
        behind a slow sentinel, must not queue up behind it).
        """
        found = self._cache.get("problems")
        if found is not None:
            return found
        if not self._asking.acquire(blocking=False):
            return self._last
        try:
            try:
                rows = server_checks(self.store.redis if client is None else client)
            except redis.exceptions.RedisError:  # OUTAGE_ERRORS are RedisErrors too
                return self._last  # not cached: ask again at the next poll
            if any(c.name.startswith("reachable") and c.verdict == "FAIL" for c in rows):
                return self._last  # a master is down (the ping tells): judge it once back
            # Named without the node (a cluster master's address is for operators), once.
            found = list(dict.fromkeys(
                f"{c.name.split(' [', 1)[0]}: {c.value}" for c in rows
                if c.gate and c.verdict == "FAIL" and not c.name.startswith("reachable")))
            self._cache.put("problems", found)
            self._last = found
            return found
        finally:
            self._asking.release()

    def not_ready_because(self) -> list[str]:
        """The problems that make ``/readyz`` answer 503: only in production."""
        return self.problems() if self.production else []

    def log_at_start(self, redis_url: str) -> None:
        """Once per process start: loud, so nobody runs on such a Redis unawares.

        Meant for a background thread, with a client of its own: sharing the app's would
        share its sentinel discovery with the first requests (a hung sentinel's timeout
        paid twice)."""
        try:
            client = connect(redis_url)
        except (ValueError, redis.exceptions.RedisError):
            return
        try:
            problems = self.problems(client)
        except Exception:  # noqa: BLE001 - a background check must not die noisily
            log.debug("Redis checks at start failed", exc_info=True)
            return
        finally:
            client.close()
        for problem in problems:
            if self.production:
                log.error("Redis is unfit for Keycard, /readyz answers 503: %s", problem)
            else:
                log.warning("Redis is unfit for Keycard (production would not be ready): %s",
                            problem)
