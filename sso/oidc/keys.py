"""Signing keys: generated once, stored sealed in Redis, cached per process, rotated safely.

Every instance of Keycard signs with the same keys, so they live in Redis: the
public JWK in clear, the private JWK sealed with ``SSO_SECRET_KEY`` (SPEC storage
rules). Each process parses and decrypts them once and then only watches a *generation*,
a random id replaced at every change, at most every ``recheck_seconds``: a rotation
reaches every process without a restart for the price of one GET every few seconds. A
random id rather than a counter: after Redis lost its data a counter restarts at the
value processes cached, and they went on signing with keys nobody else had.

The same round trip reads the instance epoch (:mod:`sso.epoch`), so a data loss is
noticed within ``recheck_seconds`` and every cache that trusted Redis is dropped. In
production missing keys are never made silently (relying parties would meet an unknown
``kid`` and every issued token would stop verifying): Keycard refuses to sign, says so
in the log, the audit trail, ``/readyz`` and a 503, until an operator runs
``sso keys init`` (or ``sso keys rotate``). Development makes them, with a warning when
they replace keys a data loss took.

A key's state is derived from its timestamps rather than from a background job:
the *active* key of an algorithm is the newest one whose ``activates_at`` has
passed; a newer one not yet activated is *next* (already in JWKS, not yet
signing); older ones are *retired* and stay in JWKS until ``retire_at``, so tokens
they signed still verify.
"""

from __future__ import annotations

import builtins
import json
import logging
import math
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from joserfc.jwk import ECKey, KeyParameters, KeySet, RSAKey
from redis.exceptions import LockError

from sso.audit import Audit
from sso.crypto import SIGNING_ALGS, DecryptionError, Sealer
from sso.epoch import DataLossWatch
from sso.oidc.jws import Signer
from sso.storage import OUTAGE_ERRORS, StorageUnavailable, Store, guard

log = logging.getLogger("keycard.keys")

ALGORITHMS = SIGNING_ALGS  # one key ring per algorithm Keycard signs with
LOCK_SECONDS = 30  # generating an RSA key takes well under a second
LOCK_WAIT_SECONDS = 15

SigningKey = RSAKey | ECKey

INIT_COMMAND = "sso keys init"


class SigningKeysMissing(Exception):
    """Production has no signing key for some algorithm and will not make one unasked."""

    def __init__(self, algs: builtins.list[str]) -> None:
        self.algs = algs
        super().__init__(
            f"No token-signing keys in Redis ({', '.join(algs)}): Keycard does not make new "
            f"ones unasked in production. An operator must run `{INIT_COMMAND}` (first "
            "installation, or after Redis lost its data), or restore them from a backup."
        )


def _generate(alg: str, kid: str) -> SigningKey:
    params: KeyParameters = {"kid": kid, "use": "sig", "alg": alg}
    if alg == "RS256":
        return RSAKey.generate_key(2048, parameters=params, private=True)
    if alg == "ES256":
        return ECKey.generate_key("P-256", parameters=params, private=True)
    raise ValueError(f"unsupported signing algorithm {alg!r}")


def _import(alg: str, jwk: dict[str, Any]) -> SigningKey:
    cls = RSAKey if alg == "RS256" else ECKey
    return cls.import_key(jwk)


def _millis(now: float) -> float:
    """Truncate (never round up) to milliseconds, so a key activated "now" is already
    active when the clock is read again, and the stored JSON stays short."""
    return math.floor(now * 1000) / 1000


def _new_kid(alg: str, now: float) -> str:
    # Readable in `sso keys list` and unique: date plus 64 random bits.
    return f"{alg.lower()}-{time.strftime('%Y%m%d', time.gmtime(now))}-{secrets.token_hex(8)}"


@dataclass(frozen=True)
class _Entry:
    """One stored key, parsed (and, if we can, decrypted) once per process."""

    record: dict[str, Any]
    public: SigningKey
    private: SigningKey | None

    @property
    def kid(self) -> str:
        return str(self.record["kid"])

    @property
    def alg(self) -> str:
        return str(self.record["alg"])

    def expired(self, now: float) -> bool:
        retire_at = self.record.get("retire_at")
        return retire_at is not None and now >= retire_at

    def order(self) -> tuple[float, bool, float, str]:
        # Newest activation wins; on a tie the key not scheduled to retire is the newer one.
        r = self.record
        return (r["activates_at"], r.get("retire_at") is None, r["created"], self.kid)


@dataclass(frozen=True)
class _Snapshot:
    generation: str | None  # the random id written with the keys; None before any key
    entries: dict[str, _Entry] = field(default_factory=dict)

    def states(self, now: float) -> list[tuple[_Entry, str]]:
        """Live keys with their effective state: active first, then next, then retired."""
        result: list[tuple[_Entry, str]] = []
        for alg in ALGORITHMS:
            live = [e for e in self.entries.values() if e.alg == alg and not e.expired(now)]
            started = sorted((e for e in live if e.record["activates_at"] <= now),
                             key=_Entry.order, reverse=True)
            pending = sorted((e for e in live if e.record["activates_at"] > now),
                             key=_Entry.order)
            result += [(e, "active" if i == 0 else "retired") for i, e in enumerate(started)]
            result += [(e, "next") for e in pending]
        rank = {"active": 0, "next": 1, "retired": 2}
        return sorted(result, key=lambda item: (rank[item[1]], ALGORITHMS.index(item[0].alg)))


@dataclass(frozen=True)
class _View:
    """What the hot paths read off a snapshot at one moment, computed once: it stays valid
    until the snapshot changes or the next key activates or retires (``until``)."""

    snapshot: _Snapshot
    since: float
    until: float
    states: list[tuple[_Entry, str]]
    active: dict[str, _Entry]
    keyset: KeySet
    jwks: dict[str, builtins.list[dict[str, Any]]]

    @classmethod
    def build(cls, snapshot: _Snapshot, now: float) -> _View:
        states = snapshot.states(now)
        moments = [t for e in snapshot.entries.values()
                   for t in (e.record["activates_at"], e.record.get("retire_at"))
                   if t is not None and t > now]
        return cls(
            snapshot=snapshot, since=now, until=min(moments, default=math.inf), states=states,
            active={e.alg: e for e, state in states if state == "active"},
            keyset=KeySet([e.public for e, _ in states]),
            jwks={"keys": [KeyRing._public_jwk(e) for e, _ in states]},
        )

    def fresh(self, snapshot: _Snapshot, now: float) -> bool:
        return snapshot is self.snapshot and self.since <= now < self.until


class KeyRing:
    """The signing keys shared by every Keycard process. Thread-safe."""

    def __init__(
        self,
        store: Store,
        sealer: Sealer,
        *,
        recheck_seconds: float = 5.0,
        clock: Callable[[], float] = time.time,
        generate_missing: bool = True,
        watch: DataLossWatch | None = None,
        audit: Audit | None = None,
    ) -> None:
        self.store = store
        self.sealer = sealer
        self.recheck_seconds = recheck_seconds
        self.clock = clock  # wall clock for key lifetimes; tests may move it forward
        # False in production: missing keys wait for `sso keys init` (ensure(confirmed=True)).
        self.generate_missing = generate_missing
        self.watch = watch
        self.audit = audit
        self.hash_key = store.keys.signing_keys()
        self.generation_key = store.keys.signing_keys_generation()
        self.version_key = store.keys.signing_keys_version()
        self.lock_key = store.keys.signing_keys_lock()
        self._snapshot: _Snapshot | None = None
        self._view: _View | None = None
        self._next_check = 0.0
        self._lock = threading.Lock()
        self._signers: dict[str, Signer] = {}  # by kid; a race only makes one twice
        self._reported_missing = False  # logged and audited once per episode, not per request
        if watch is not None:
            watch.on_loss(self._forget)

    # -- reading ------------------------------------------------------------------------------

    def signing_key(self, alg: str = "RS256") -> SigningKey:
        """The active private key for ``alg`` (with its ``kid``), generating the first one
        if this is a fresh installation in development; :class:`SigningKeysMissing` in
        production until an operator made them."""
        if alg not in ALGORITHMS:
            raise ValueError(f"unsupported signing algorithm {alg!r}")
        entry = self._active(self._current(), alg)
        if entry is None:
            self.ensure()
            entry = self._active(self._current(), alg)
        if entry is None:
            raise RuntimeError(f"no active {alg} signing key")
        if entry.private is None:
            raise RuntimeError(
                f"signing key {entry.kid} cannot be decrypted: was SSO_SECRET_KEY changed? "
                "Restore it, or run `sso keys rotate` to make new keys."
            )
        return entry.private

    def signer(self, alg: str = "RS256") -> Signer:
        """A :class:`~sso.oidc.jws.Signer` for the active ``alg`` key (same checks and
        errors as :meth:`signing_key`), made once per key."""
        key = self.signing_key(alg)
        signer = self._signers.get(key.kid or "")
        if signer is None or signer.key is not key:
            signer = self._signers[key.kid or ""] = Signer(key)
        return signer

    def jwks(self) -> dict[str, builtins.list[dict[str, Any]]]:
        """The public JWK Set: active, next and retired-but-not-expired keys (shared: do
        not modify). In production an empty key ring is :class:`SigningKeysMissing`."""
        snapshot = self._current()
        if not snapshot.entries:
            self.ensure()
            snapshot = self._current()
        return self._view_of(snapshot).jwks

    def public_keyset(self) -> KeySet:
        """The same keys as :meth:`jwks`, as a joserfc ``KeySet`` for verification."""
        return self._current_view().keyset

    def missing(self) -> builtins.list[str]:
        """Algorithms without a usable key, from the cached snapshot (for ``/readyz``)."""
        return self._missing(self._current())

    def list(self) -> builtins.list[dict[str, Any]]:
        """Every live key with its effective state, read fresh from Redis (for the CLI)."""
        snapshot = self.refresh()
        return [
            {"kid": e.kid, "alg": e.alg, "state": state, "created": e.record["created"],
             "activates_at": e.record["activates_at"], "retire_at": e.record.get("retire_at")}
            for e, state in snapshot.states(self.clock())
        ]

    def _active(self, snapshot: _Snapshot, alg: str) -> _Entry | None:
        return self._view_of(snapshot).active.get(alg)

    def _current_view(self) -> _View:
        return self._view_of(self._current())

    def _view_of(self, snapshot: _Snapshot) -> _View:
        now = self.clock()
        view = self._view
        if view is None or not view.fresh(snapshot, now):
            view = self._view = _View.build(snapshot, now)  # a race only builds it twice
        return view

    @staticmethod
    def _public_jwk(entry: _Entry) -> dict[str, Any]:
        jwk = dict(entry.public.as_dict(private=False))
        jwk.update(kid=entry.kid, alg=entry.alg, use="sig")
        return jwk

    # -- the per-process cache ----------------------------------------------------------------

    def _current(self) -> _Snapshot:
        """The cached keys, re-read only when the generation changed (checked at most
        every ``recheck_seconds``). During a Redis outage the last keys keep serving."""
        snapshot = self._snapshot
        if snapshot is not None and time.monotonic() < self._next_check:
            return snapshot
        with self._lock:
            snapshot = self._snapshot
            if snapshot is not None and time.monotonic() < self._next_check:
                return snapshot
            try:
                snapshot = self._reload(snapshot)
            except StorageUnavailable:
                if snapshot is None:
                    raise
                log.warning("Redis unavailable: serving the signing keys loaded earlier")
            self._next_check = time.monotonic() + self.recheck_seconds
            return snapshot

    def refresh(self) -> _Snapshot:
        """Re-read from Redis now, whatever the recheck interval says."""
        with self._lock:
            self._snapshot = self._reload(None, reuse=self._snapshot)
            self._next_check = time.monotonic() + self.recheck_seconds
            return self._snapshot

    def _forget(self) -> None:
        """Data loss: drop the snapshot (no lock: called from inside :meth:`_reload`)."""
        self._snapshot = None
        self._view = None
        self._next_check = 0.0

    @guard
    def _reload(self, snapshot: _Snapshot | None, reuse: _Snapshot | None = None) -> _Snapshot:
        # One round trip: the generation and the instance epoch (sso/epoch.py).
        pipe = self.store.redis.pipeline(transaction=False)
        pipe.get(self.generation_key)
        if self.watch is not None:
            pipe.get(self.watch.key)
        answer = [None if raw is None else str(raw) for raw in pipe.execute()]
        generation = answer[0]
        if self.watch is not None and self.watch.observe(answer[1]):
            snapshot = reuse = None  # nothing read before the loss is trusted
        if snapshot is not None and generation == snapshot.generation:
            return snapshot
        known = (snapshot or reuse or _Snapshot(None)).entries
        entries: dict[str, _Entry] = {}
        for field_name, raw in self.store.redis.hgetall(self.hash_key).items():
            kid = str(field_name)
            previous = known.get(kid)
            if previous is not None and previous.record["sealed_private"] == json.loads(raw).get(
                "sealed_private"
            ):
                # Decrypt once per process: only timestamps/state can have changed.
                entries[kid] = _Entry(json.loads(raw), previous.public, previous.private)
            else:
                entries[kid] = self._parse(json.loads(raw))
        self._snapshot = _Snapshot(generation, entries)
        self._reported_missing = False  # a new key ring: report it afresh if it lacks keys
        return self._snapshot

    def _parse(self, record: dict[str, Any]) -> _Entry:
        public = _import(record["alg"], record["public_jwk"])
        try:
            private: SigningKey | None = _import(
                record["alg"], json.loads(self.sealer.open(record["sealed_private"]))
            )
        except DecryptionError:
            log.error("signing key %s cannot be decrypted with this SSO_SECRET_KEY",
                      record["kid"])
            private = None
        return _Entry(record, public, private)

    # -- writing ------------------------------------------------------------------------------

    def ensure(self, *, confirmed: bool = False) -> builtins.list[str]:
        """Generate a key for every algorithm that has none. Safe when several processes
        start at once: they take a Redis lock and re-check under it, so exactly one set of
        keys is created. Returns the new kids (empty when nothing was missing).

        Without ``confirmed`` (an operator's ``sso keys init``) production refuses:
        :class:`SigningKeysMissing`, logged and audited once until keys exist again.
        """
        missing = self._missing(self._current())
        if not missing:
            return []
        if not (confirmed or self.generate_missing):
            self._report_missing(missing)
            raise SigningKeysMissing(missing)
        with self._redis_lock():
            missing = self._missing(self.refresh())
            if not missing:
                return []
            now = _millis(self.clock())
            records = [self._new_record(alg, now, state="active") for alg in missing]
            self._write(records, [])
            kids = ", ".join(r["kid"] for r in records)
            if self.watch is not None and self.watch.losses and not confirmed:
                log.warning("generated signing keys %s to replace those Redis lost: tokens "
                            "signed before no longer verify (production would refuse and "
                            "wait for `%s`)", kids, INIT_COMMAND)
            else:
                log.info("generated signing keys %s", kids)
        self.refresh()
        return [r["kid"] for r in records]

    def _report_missing(self, missing: builtins.list[str]) -> None:
        if self._reported_missing:
            return
        self._reported_missing = True
        log.error("no %s signing key in Redis and production does not make one unasked: "
                  "token and ID-token signing answer 503 and /readyz is not ready until an "
                  "operator runs `%s`", ", ".join(missing), INIT_COMMAND)
        if self.audit is not None:
            self.audit.record("keys.missing", actor="system", algorithms=missing,
                              data_loss=bool(self.watch is not None and self.watch.losses))

    def rotate(self, grace_seconds: int = 3600, publish_delay: int = 0) -> builtins.list[str]:
        """Start a new key per algorithm; returns the new kids.

        The new key is in JWKS at once and signs from ``now + publish_delay``; give relying
        parties time to refetch JWKS in production. Every older key retires
        ``grace_seconds`` after that (keep it above the longest token lifetime), so tokens
        it already signed keep verifying, and then drops out of JWKS.
        """
        if grace_seconds < 0 or publish_delay < 0:
            raise ValueError("grace and publish delay must not be negative")
        with self._redis_lock():
            snapshot = self.refresh()
            now = _millis(self.clock())
            activates_at = now + publish_delay
            states = {e.kid: s for e, s in snapshot.states(now)}
            updates: builtins.list[dict[str, Any]] = []
            expired: builtins.list[str] = []
            for entry in snapshot.entries.values():
                if entry.kid not in states:
                    expired.append(entry.kid)
                    continue
                record = dict(entry.record)
                if record.get("retire_at") is None:
                    # Already-retired keys keep their date: it covers the tokens they signed.
                    record["retire_at"] = activates_at + grace_seconds
                # A stored hint for readers of raw Redis; effective states come from times.
                still_signing = states[entry.kid] == "active" and publish_delay > 0
                record["state"] = "active" if still_signing else "retired"
                updates.append(record)
            state = "next" if publish_delay else "active"
            new = [self._new_record(alg, now, state=state, activates_at=activates_at)
                   for alg in ALGORITHMS]
            self._write(new + updates, expired)
        self.refresh()
        return [r["kid"] for r in new]

    def _missing(self, snapshot: _Snapshot) -> builtins.list[str]:
        """Algorithms with no key that is current or about to be (none without retire_at)."""
        now = self.clock()
        have = {e.alg for e, _ in snapshot.states(now) if e.record.get("retire_at") is None}
        return [alg for alg in ALGORITHMS if alg not in have]

    def _new_record(self, alg: str, now: float, *, state: str,
                    activates_at: float | None = None) -> dict[str, Any]:
        kid = _new_kid(alg, now)
        key = _generate(alg, kid)
        return {
            "kid": kid,
            "alg": alg,
            "state": state,
            "created": now,
            "activates_at": now if activates_at is None else activates_at,
            "retire_at": None,
            "public_jwk": key.as_dict(private=False),
            # SPEC storage rules: private keys only ever reach Redis encrypted.
            "sealed_private": self.sealer.seal(json.dumps(key.as_dict(private=True))),
        }

    @guard
    def _write(self, records: builtins.list[dict[str, Any]], delete: builtins.list[str]) -> None:
        # One transaction: a reader that sees the new generation sees the keys. The counter
        # is only INCRed for processes of an earlier release, during a rolling upgrade.
        pipe = self.store.redis.pipeline(transaction=True)
        if records:
            pipe.hset(self.hash_key, mapping={
                r["kid"]: json.dumps(r, separators=(",", ":")) for r in records
            })
        if delete:
            pipe.hdel(self.hash_key, *delete)
        pipe.set(self.generation_key, secrets.token_urlsafe(16))
        pipe.incr(self.version_key)
        pipe.execute()

    @guard
    def _redis_lock(self) -> Any:
        """One writer at a time across every process (redis-py's token-checked lock)."""
        lock = self.store.redis.lock(self.lock_key, timeout=LOCK_SECONDS,
                                     blocking_timeout=LOCK_WAIT_SECONDS)
        if not lock.acquire():
            raise StorageUnavailable("another process holds the signing-key lock")
        return _Held(lock)


class _Held:
    """Context manager releasing a redis-py lock, even if it expired meanwhile."""

    def __init__(self, lock: Any) -> None:
        self.lock = lock

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        try:
            self.lock.release()
        except LockError:  # it expired: another writer may have it now, nothing to undo
            log.warning("signing-key lock expired before release")
        except OUTAGE_ERRORS:  # its TTL frees it when Redis returns
            log.warning("could not release the signing-key lock: Redis unavailable")
