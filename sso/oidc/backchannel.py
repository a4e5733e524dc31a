"""OpenID Connect Back-Channel Logout 1.0: tell the apps of an ended session, at least once.

Ending a session never waits for the apps. It enqueues, in Redis, one job per app that
received an ID token in that session (found through the session's grants) and has a
``backchannel_logout_uri``; a worker thread in each Keycard process delivers due jobs.
Any process may deliver any job: a job is claimed by moving its due time a lease ahead,
so a process that dies mid-delivery leaves it to another after the lease. A failed
delivery is retried with capped exponential back-off for up to an hour, then dropped
with an audit event. The queue lives in Redis, so a restart loses nothing.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import requests
from joserfc import jwt

from sso.audit import Audit
from sso.crypto import SIGNING_ALGS, new_secret
from sso.metrics import BACKCHANNEL_LOGOUT
from sso.oidc.client_registry import ClientRegistry
from sso.oidc.clients import Client
from sso.oidc.records import Records
from sso.oidc.tokens import KeySource, subject_for
from sso.storage import OUTAGE_ERRORS, StorageUnavailable, Store, guard

log = logging.getLogger("keycard.backchannel")

LOGOUT_EVENT = "http://schemas.openid.net/event/backchannel-logout"
LOGOUT_TOKEN_TTL = 120  # seconds: the spec asks for a short lifetime
DELIVERY_TIMEOUT = 5.0
GIVE_UP_AFTER = 3600  # seconds from the first attempt
JOB_TTL = GIVE_UP_AFTER + 3600
LEASE_SECONDS = 30.0  # longer than a delivery can take; then another process may retry
BACKOFF = (1.0, 60.0)  # first retry delay, cap: 1, 2, 4 ... 60, 60 s
BATCH = 20
IDLE_EXIT_SECONDS = 30.0  # a worker with nothing queued stops; the next session end wakes one
RESUME_DELAY = 5.0  # seconds after start before looking for jobs left by earlier processes

_UNREACHABLE: tuple[type[Exception], ...] = (StorageUnavailable, *OUTAGE_ERRORS)

# KEYS due; ARGV now, lease_until, limit → the job ids claimed (their due time moved ahead)
_CLAIM = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(due) do redis.call('ZADD', KEYS[1], ARGV[2], id) end
return due
"""


_INSTANCES: weakref.WeakSet[BackchannelLogout] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for instance in list(_INSTANCES):
        instance._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


@dataclass
class LogoutJob:
    """One logout token to deliver to one app."""

    job_id: str
    client_id: str
    user_id: str
    sid: str  # the ``sid`` of the app's ID tokens (a prefix of the session hash)
    first: float  # first enqueued, for the give-up deadline
    attempts: int = 0


class BackchannelLogout:
    """The queue, the logout tokens and the worker of one process."""

    def __init__(self, store: Store, *, issuer: str, records: Records,
                 clients: ClientRegistry, keys: KeySource, audit: Audit,
                 backoff: tuple[float, float] = BACKOFF, give_up_after: float = GIVE_UP_AFTER,
                 timeout: float = DELIVERY_TIMEOUT,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.issuer = issuer
        self.records = records
        self.clients = clients
        self.keys = keys
        self.audit = audit
        self.backoff = backoff
        self.give_up_after = give_up_after
        self.timeout = timeout
        self.clock = clock
        self.queue = store.keys.logout_queue()
        self._claim = store.redis.register_script(_CLAIM)
        self._http = requests.Session()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._stopped = False
        self._resume_cancelled = threading.Event()
        _INSTANCES.add(self)

    # -- enqueueing --------------------------------------------------------------------

    def session_ended(self, sid_hash: str, except_client: str | None = None) -> int:
        """Queue a logout token for every app that got an ID token in the session (but
        ``except_client``, the app whose RP-initiated logout ended it). Never raises for an
        unreachable Redis: the session's end must not fail because of the apps."""
        try:
            return self._enqueue(sid_hash, except_client)
        except StorageUnavailable as exc:
            log.error("back-channel logout for a session could not be queued: %s", exc)
            return 0

    @guard
    def _enqueue(self, sid_hash: str, except_client: str | None) -> int:
        seen: set[str] = set()
        jobs: list[LogoutJob] = []
        now = self.clock()
        for grant in self.records.session_grants(sid_hash):
            if grant.client_id in seen or grant.client_id == except_client:
                continue
            if "openid" not in grant.scope.split():
                continue  # no ID token, no session at the app to end
            client = self.clients.shared(grant.client_id)
            if client is None or not client.backchannel_logout_uri:
                continue
            seen.add(grant.client_id)
            jobs.append(LogoutJob(new_secret(12), grant.client_id, grant.user_id,
                                  sid_hash[:22], now))
        if not jobs:
            return 0
        pipe = self.store.redis.pipeline(transaction=False)
        for job in jobs:
            pipe.set(self.store.keys.logout_job(job.job_id), json.dumps(asdict(job)), ex=JOB_TTL)
        pipe.zadd(self.queue, {job.job_id: now for job in jobs})
        pipe.execute()
        BACKCHANNEL_LOGOUT.labels("queued").inc(len(jobs))
        self.wake()
        return len(jobs)

    def resume(self) -> None:
        """At start: deliver what earlier processes left queued (a restart loses nothing).
        One ZCARD, from a short-lived thread so that start-up never waits on Redis; an
        unreachable Redis is left to the next session end to notice."""

        def check() -> None:
            # A moment after start: the first requests find the Redis master (through the
            # sentinels, say) without this check competing with them.
            if self._resume_cancelled.wait(RESUME_DELAY):
                return
            try:
                if self.pending():
                    self.wake()
            except StorageUnavailable:
                return

        threading.Thread(target=check, name="backchannel-resume", daemon=True).start()

    @guard
    def pending(self) -> int:
        return int(self.store.redis.zcard(self.queue))

    # -- delivering --------------------------------------------------------------------

    @guard
    def run_once(self) -> int:
        """Claim and deliver the jobs that are due; returns how many were claimed."""
        now = self.clock()
        claimed = self._claim(keys=[self.queue], args=[now, now + LEASE_SECONDS, BATCH])
        for job_id in claimed:
            self._attempt(job_id)
        return len(claimed)

    def _attempt(self, job_id: str) -> None:
        redis = self.store.redis
        raw = redis.get(self.store.keys.logout_job(job_id))
        if raw is None:  # delivered by another process, or expired
            redis.zrem(self.queue, job_id)
            return
        job = LogoutJob(**json.loads(raw))
        client = self.clients.shared(job.client_id)
        if client is None or not client.backchannel_logout_uri:
            self._finish(job, "dropped", reason="client gone or no back-channel URI")
            return
        error = self._post(client, job)
        if error is None:
            self._finish(job, "delivered")
            return
        job.attempts += 1
        BACKCHANNEL_LOGOUT.labels("failed").inc()
        if self.clock() - job.first >= self.give_up_after:
            self._finish(job, "dropped", reason=error)
            return
        delay = min(self.backoff[0] * 2 ** (job.attempts - 1), self.backoff[1])
        log.warning("back-channel logout to %s failed (attempt %d, next in %.0f s): %s",
                    client.client_id, job.attempts, delay, error)
        pipe = redis.pipeline(transaction=False)
        pipe.set(self.store.keys.logout_job(job.job_id), json.dumps(asdict(job)), keepttl=True)
        pipe.zadd(self.queue, {job.job_id: self.clock() + delay})
        pipe.execute()

    def _finish(self, job: LogoutJob, outcome: str, reason: str = "") -> None:
        pipe = self.store.redis.pipeline(transaction=False)
        pipe.delete(self.store.keys.logout_job(job.job_id))
        pipe.zrem(self.queue, job.job_id)
        pipe.execute()
        BACKCHANNEL_LOGOUT.labels(outcome).inc()
        if outcome == "dropped":
            self.audit.record("oidc.backchannel_logout_dropped", actor="system",
                              subject=job.client_id, attempts=job.attempts, reason=reason[:200])

    def _post(self, client: Client, job: LogoutJob) -> str | None:
        """Deliver one logout token; ``None`` on success, else why it failed."""
        assert client.backchannel_logout_uri is not None
        try:
            token = self.logout_token(client, job)
            answer = self._http.post(client.backchannel_logout_uri, data={"logout_token": token},
                                     timeout=self.timeout, allow_redirects=False)
        except requests.RequestException as exc:
            return f"{type(exc).__name__}: {exc}"
        if answer.status_code in (200, 204):
            return None
        return f"HTTP {answer.status_code}: {answer.text[:200]}"

    def logout_token(self, client: Client, job: LogoutJob) -> str:
        """The Logout Token (spec §2.4): no nonce, ``typ: logout+jwt``, the ID token's alg."""
        now = int(self.clock())
        alg = client.id_token_alg if client.id_token_alg in SIGNING_ALGS else "RS256"
        claims: dict[str, Any] = {
            "iss": self.issuer, "aud": client.client_id, "iat": now,
            "exp": now + LOGOUT_TOKEN_TTL, "jti": new_secret(16),
            "sub": subject_for(self.issuer, job.user_id), "sid": job.sid,
            "events": {LOGOUT_EVENT: {}},
        }
        key = self.keys.signing_key(alg)
        header = {"alg": alg, "typ": "logout+jwt", "kid": key.kid}
        return jwt.encode(header, claims, key, algorithms=[alg])

    # -- the worker thread -------------------------------------------------------------

    def wake(self) -> None:
        """Make sure a worker runs in this process and looks at the queue now."""
        with self._lock:
            if self._stopped:
                return
            self._wake.set()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="backchannel-logout",
                                                daemon=True)
                self._thread.start()

    def stop(self) -> None:
        self._resume_cancelled.set()
        with self._lock:
            self._stopped = True
            self._wake.set()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=self.timeout + 1)

    def _after_fork(self) -> None:
        # A forked worker process (gunicorn --preload) has no threads: start afresh there.
        self._lock = threading.Lock()
        self._thread = None
        self._wake = threading.Event()
        if not self._stopped:
            self.wake()

    def _run(self) -> None:
        idle_since = time.monotonic()
        complained = 0.0
        while True:
            self._wake.clear()
            wait, busy = 1.0, True
            try:
                if not self._stopped and self.run_once():
                    continue
                nearest = self.store.redis.zrange(self.queue, 0, 0, withscores=True)
                busy = bool(nearest)
                if nearest:
                    wait = max(0.05, min(1.0, float(nearest[0][1]) - self.clock()))
            except _UNREACHABLE as exc:
                # Jobs wait in Redis: keep trying, quietly (once a minute in the log).
                if time.monotonic() - complained > 60:
                    complained = time.monotonic()
                    log.warning("back-channel logout queue unreadable: %s", exc)
            except Exception:  # a bug must not end deliveries for the process's lifetime
                log.exception("back-channel logout worker")
            if busy:
                idle_since = time.monotonic()
            with self._lock:
                idle = time.monotonic() - idle_since > IDLE_EXIT_SECONDS
                if self._stopped or (idle and not self._wake.is_set()):
                    self._thread = None
                    return
            self._wake.wait(wait)
