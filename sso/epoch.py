"""Detects that Redis lost its data, and tells every in-process cache to forget.

Each process caches what it read from Redis (signing keys, verified token signatures,
clients, rules...). Those caches are only as good as the data behind them: after a Redis
restart without persistence (or a FLUSHALL) revocations and keys are gone, yet a cache
would keep trusting them until it expires. A durable *instance epoch* marker (a random
id written once with SET NX) tells: when the marker a process saw has vanished or
changed, the data behind it is gone. The process then logs one ERROR, records a
``storage.data_loss`` audit event and calls every ``clear`` registered here.

The watch never polls on its own: the key ring reads the marker in the same pipelined
round trip as its own periodic re-check (:class:`sso.oidc.keys.KeyRing`), so the cost is
one extra GET per re-check interval per process.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
from collections.abc import Callable

from sso.audit import Audit
from sso.storage import Store, guard

log = logging.getLogger("keycard.storage")


class DataLossWatch:
    """The process's view of the instance epoch, and the caches to drop when it changes."""

    def __init__(self, store: Store, audit: Audit | None = None) -> None:
        self.store = store
        self.audit = audit
        self.key = store.keys.instance_epoch()
        self.seen: str | None = None  # the epoch this process's caches were filled under
        self.losses = 0  # data losses detected by this process
        self._callbacks: list[Callable[[], object]] = []
        self._lock = threading.Lock()

    def on_loss(self, clear: Callable[[], object]) -> None:
        """Call ``clear`` (no arguments, must not raise nor take a lock the caller of
        :meth:`observe` may hold) whenever a data loss is detected."""
        self._callbacks.append(clear)

    @guard
    def check(self) -> bool:
        """Read the marker now (one GET): True when a data loss was detected."""
        marker = self.store.redis.get(self.key)
        return self.observe(None if marker is None else str(marker))

    def observe(self, marker: str | None) -> bool:
        """Compare the marker read from Redis (by the caller, in its own round trip) with
        the one seen before; a missing marker is written. True when data was lost."""
        if marker is not None and marker == self.seen:
            return False  # the hot case: nothing to do, no lock
        with self._lock:
            if marker is None:
                marker = self._establish()
            previous = self.seen
            if marker == previous:
                return False
            self.seen = marker
            if previous is None:
                return False  # first sight in this process: nothing cached to distrust
            self.losses += 1
        self._lost(previous, marker)
        return True

    @guard
    def _establish(self) -> str:
        """Write a new epoch unless another process just did; returns the one in Redis."""
        pipe = self.store.redis.pipeline(transaction=False)
        pipe.set(self.key, secrets.token_urlsafe(16), nx=True)
        pipe.get(self.key)
        return str(pipe.execute()[1])

    def _lost(self, previous: str, current: str) -> None:
        log.error("Redis lost its data (instance epoch %s is now %s): a restart without "
                  "persistence or a flush; dropping every cache that trusted it. Revocations "
                  "and sessions made before are gone",
                  previous, current)
        for clear in self._callbacks:
            try:
                clear()
            except Exception:  # noqa: BLE001 - one cache must not keep the others alive
                log.exception("could not drop a cache after the data loss")
        if self.audit is not None:
            self.audit.record("storage.data_loss", actor="system", previous_epoch=previous,
                              epoch=current, host=socket.gethostname(), pid=os.getpid())
