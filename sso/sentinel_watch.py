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
import weakref
from typing import Any

import redis
from redis.sentinel import SentinelConnectionPool

CHECK_SECONDS = 0.5


def _watch(ref: weakref.ReferenceType[WatchedSentinelPool], stop: threading.Event) -> None:
    while not stop.wait(CHECK_SECONDS):
        pool = ref()
        if pool is None:
            return
        try:
            pool.get_master_address()  # type: ignore[no-untyped-call]  # drops the old one
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
        weakref.finalize(self, self._stop.set)

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
