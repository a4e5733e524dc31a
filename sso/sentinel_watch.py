"""Keep a Sentinel client on the current master between connections.

redis-py asks the sentinels where the master is only when it opens a connection. After a
failover the demoted master stays writable until Sentinel turns it into a replica, about
ten seconds later (its role-change grace period): pooled connections kept writing there,
and those writes (tokens, sessions, *revocations*) vanished when it resynced from the new
master. The pool here asks the sentinels every :data:`CHECK_SECONDS` from a background
thread; when the master moved, idle connections are dropped at once and those in use
when they come back (``owns_connection`` compares the address), so the next command
goes to the new master.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from typing import Any

import redis
from redis.sentinel import SentinelConnectionPool

CHECK_SECONDS = 0.5
# After the master moved, connections in use still write to the old one until they are
# handed back: unconfirmed writes are made again for this long (may_skip_confirmation).
SWITCH_GRACE_SECONDS = 4 * CHECK_SECONDS


def _watch(ref: weakref.ReferenceType[WatchedSentinelPool], stop: threading.Event) -> None:
    while not stop.wait(CHECK_SECONDS):
        pool = ref()
        if pool is None:
            return
        try:
            pool.get_master_address()  # drops the old one
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
            pass  # no sentinel answers or no master: requests find out and answer 503
        del pool


class WatchedSentinelPool(SentinelConnectionPool):
    """A master pool whose process (after a fork too) watches the sentinels."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self._watcher_pid = 0
        self._watcher_lock = threading.Lock()
        self._stop = threading.Event()
        self.switched_at = 0.0  # time.monotonic() of the last master change seen
        weakref.finalize(self, self._stop.set)

    def get_master_address(self) -> Any:
        before = getattr(self, "master_address", None)
        address = super().get_master_address()  # type: ignore[no-untyped-call]
        if before is not None and address != before:
            self.switched_at = time.monotonic()
        return address

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        if self._watcher_pid != os.getpid():
            self._start_watcher()
        return super().get_connection(*args, **kwargs)

    def _start_watcher(self) -> None:
        with self._watcher_lock:
            if self._watcher_pid == os.getpid():
                return
            self._watcher_pid = os.getpid()
            threading.Thread(target=_watch, args=(weakref.ref(self), self._stop),
                             name="keycard-sentinel-watch", daemon=True).start()


def may_skip_confirmation(pool: WatchedSentinelPool) -> bool:
    """Whether a write no replica confirmed (WAIT answered 0) may stand.

    Not while a failover is under way: between a replica's promotion and the sentinels'
    announcement the master being demoted still takes writes and then throws them away.
    The leading sentinel flags the master ``failover_in_progress`` for that whole time; after
    it, connections still in use may write to the old master for a moment
    (:data:`SWITCH_GRACE_SECONDS`): either means "write again". Otherwise the master simply
    has no replica connected (it died, or is resyncing after a failover): there is nothing
    to wait for, and refusing every revocation until one is back would trade a theoretical
    loss for a certain outage.
    """
    try:
        pool.get_master_address()
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
        return False
    if time.monotonic() - pool.switched_at < SWITCH_GRACE_SECONDS:
        return False
    for sentinel in pool.sentinel_manager.sentinels:
        try:
            state = sentinel.sentinel_master(pool.service_name)
        except redis.exceptions.RedisError:
            continue
        flags = str(state.get("flags", "")) if isinstance(state, dict) else ""
        if "failover_in_progress" in flags or "o_down" in flags:
            return False
    return True
