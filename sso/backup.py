"""Backup and restore of Keycard's durable configuration, as one sealed file.

What a backup holds: every key kind ``storage.Keys.PATTERNS`` declares ``durable``
(clients and their index, the role rules, the signing keys and the record processes
watch, the bootstrap-admin pins, the people and logins indexes, and any durable kind
added later), except those in :data:`SKIPPED`, plus people's profiles (a TTL kind, kept
with the lifetime they had left). Sessions, grants, codes and rate-limit windows are
short-lived and stay out: after a restore people sign in again.

Records carry their kind (the ``Keys`` method) and its arguments, never a key name, so
a restore rebuilds every name with ``Keys``: a backup moves between prefixes and Redis
topologies. The file is a clear JSON header line (format, Keycard version, date,
counts, a check value of the key) and one line sealed with a key derived from
``SSO_SECRET_KEY``, which repeats the header so that neither part can be altered alone.
Everything is read, decrypted and checked before the first write.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import redis
from redis.crc import key_slot

from sso.crypto import DecryptionError, Sealer, derive_key
from sso.storage import KeyPattern, Keys, StorageUnavailable, Store, guard

FORMAT = "keycard-backup"
FORMAT_VERSION = 1
SEAL_PURPOSE = "backup-v1"

# Durable kinds a backup leaves out, and why.
SKIPPED = {
    "audit": "a log capped by length, not configuration: its durable copy is the JSON audit "
             "lines on stderr",
    "instance_epoch": "marks this Redis's data (sso/epoch.py), not configuration: a restore "
                      "must not make processes believe the data before a loss is back",
    "hooks_recent": "a log of webhook deliveries, not configuration",
    "logout_queue": "in-flight back-channel logouts: their jobs expire and are not backed up",
}
# The TTL kind kept with the people indexes.
PROFILE = "user"
# Counters that processes compare by equality to know their cache is current: restored to
# a value none of them can hold, so every process reloads (see _restored_counter).
COUNTERS = frozenset({"signing_keys_version"})
# Generation ids processes compare by equality (sso/oidc/keys.py): restored as a new random
# id, so every process reloads the restored keys.
GENERATIONS = frozenset({"signing_keys_generation"})

LABELS = {
    "client": "clients", "clients_index": "client index", "rules": "role rules",
    "signing_keys": "signing keys", "signing_keys_version": "signing-key version",
    "signing_keys_generation": "signing-key generation",
    "bootstrap_pins": "bootstrap-admin pins", "users_index": "people index",
    "login_index": "logins index", "user": "profiles",
    "cli_client": "default CLI client",
}


class BackupError(Exception):
    """The file cannot be used (or written); the message tells the operator why."""


def label(kind: str) -> str:
    return LABELS.get(kind, kind)


def kinds() -> dict[str, KeyPattern]:
    """The key kinds a backup holds, by ``Keys`` method name."""
    chosen = {p.method: p for p in Keys.PATTERNS
              if p.lifetime == "durable" and p.method not in SKIPPED}
    chosen.update({p.method: p for p in Keys.PATTERNS if p.method == PROFILE})
    return chosen


@dataclass(frozen=True)
class Record:
    """One Redis key: its kind, the arguments naming it, its type, value and TTL."""

    kind: str
    args: dict[str, str]
    type: str
    value: Any
    ttl_ms: int | None

    def entries(self) -> int:
        return len(self.value) if self.type != "string" else 1

    def as_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "args": self.args, "type": self.type, "value": self.value,
                "ttl_ms": self.ttl_ms}

    @classmethod
    def from_json(cls, data: Any) -> Record:
        try:
            record = cls(str(data["kind"]), {str(k): str(v) for k, v in data["args"].items()},
                         str(data["type"]), data["value"], data["ttl_ms"])
        except (KeyError, TypeError, AttributeError) as exc:
            raise BackupError(f"malformed record in the backup: {exc!r}") from exc
        if record.kind not in kinds():
            raise BackupError(f"the backup holds records of kind {record.kind!r}, which this "
                              "Keycard does not know: restore it with the version that made it")
        if record.type not in _WRITERS:
            raise BackupError(f"the backup holds a Redis {record.type!r}, which restore does "
                              "not handle")
        return record


@dataclass(frozen=True)
class Contents:
    header: dict[str, Any]
    records: list[Record]


def summary(records: Iterable[Record]) -> dict[str, dict[str, int]]:
    """Records and entries (hash fields, set members...) per kind."""
    counts: dict[str, dict[str, int]] = {}
    for record in records:
        row = counts.setdefault(record.kind, {"records": 0, "entries": 0})
        row["records"] += 1
        row["entries"] += record.entries()
    return dict(sorted(counts.items()))


def keycard_version() -> str:
    try:
        return metadata.version("keycard")
    except metadata.PackageNotFoundError:
        return "unknown"


def key_check(secret_key: str) -> str:
    """A short value that tells which ``SSO_SECRET_KEY`` sealed a file (and reveals nothing
    of it: an HMAC under a key derived for this purpose only)."""
    check = derive_key(secret_key, "backup-key-check")
    return hmac.new(check, FORMAT.encode(), hashlib.sha256).hexdigest()[:16]


# -- reading and writing one key by type -------------------------------------------------------

_READERS: dict[str, Callable[[Any, str], Any]] = {
    "string": lambda pipe, key: pipe.get(key),
    "hash": lambda pipe, key: pipe.hgetall(key),
    "set": lambda pipe, key: pipe.smembers(key),
    "zset": lambda pipe, key: pipe.zrange(key, 0, -1, withscores=True),
    "list": lambda pipe, key: pipe.lrange(key, 0, -1),
}


def _as_json_value(kind: str, raw: Any) -> Any:
    if kind == "set":
        return sorted(raw)
    if kind == "zset":
        return [[member, score] for member, score in raw]
    return raw


_WRITERS: dict[str, Callable[[Any, str, Any], None]] = {
    "string": lambda pipe, key, value: pipe.set(key, value),
    "hash": lambda pipe, key, value: pipe.hset(key, mapping=value),
    "set": lambda pipe, key, value: pipe.sadd(key, *value),
    "zset": lambda pipe, key, value: pipe.zadd(key, {m: float(s) for m, s in value}),
    "list": lambda pipe, key, value: pipe.rpush(key, *value),
}


class Backups:
    """Makes and restores backups of one Keycard's Redis, sealed under its secret key."""

    def __init__(self, store: Store, secret_key: str, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.keys = store.keys
        self.sealer = Sealer(secret_key, SEAL_PURPOSE)
        self.key_check = key_check(secret_key)
        self.clock = clock

    # -- backup -------------------------------------------------------------------------------

    def create(self) -> tuple[str, Contents]:
        """The file's text, and what it holds."""
        records = self.read()
        now = self.clock()
        header = {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "keycard_version": keycard_version(),
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
            "created": now, "sealed_with": "SSO_SECRET_KEY", "key_check": self.key_check,
            "counts": summary(records),
        }
        body = json.dumps({"header": header, "records": [r.as_json() for r in records]},
                          separators=(",", ":"), sort_keys=True)
        text = json.dumps(header, sort_keys=True) + "\n" + self.sealer.seal(body) + "\n"
        return text, Contents(header, records)

    @guard
    def read(self) -> list[Record]:
        """Every record of the backed-up kinds present now, read per slot in a transaction
        (on one Redis: one consistent snapshot)."""
        named = self._existing_names()
        client = self.store.redis
        pipe = client.pipeline(transaction=False)
        for _, key in named:
            pipe.type(key)
        types = [str(t) for t in pipe.execute()] if named else []
        unsupported = [(key, t) for (_, key), t in zip(named, types, strict=True)
                       if t not in _READERS and t != "none"]
        if unsupported:
            raise BackupError(f"cannot back up {unsupported[0][0]}: a Redis {unsupported[0][1]}")
        typed = {key: t for (_, key), t in zip(named, types, strict=True) if t != "none"}
        kind_of = {key: pattern for pattern, key in named}
        records: list[Record] = []
        for group in self._slot_groups(list(typed)):
            pipe = client.pipeline(transaction=True)
            for key in group:
                _READERS[typed[key]](pipe, key)
                pipe.pttl(key)
            answers = pipe.execute()
            for index, key in enumerate(group):
                raw, ttl = answers[2 * index], int(answers[2 * index + 1])
                if raw is None or ttl == -2 or (typed[key] != "string" and not raw):
                    continue  # deleted between the scan and the read
                pattern = kind_of[key]
                args = self.keys.args_of(key, pattern)
                assert args is not None  # the name was chosen by this pattern
                records.append(Record(pattern.method, args, typed[key],
                                      _as_json_value(typed[key], raw),
                                      None if ttl < 0 else ttl))
        return sorted(records, key=lambda r: (r.kind, sorted(r.args.items())))

    def _existing_names(self) -> list[tuple[KeyPattern, str]]:
        """(pattern, key) for every key of the backed-up kinds that exists."""
        client = self.store.redis
        candidates: list[tuple[KeyPattern, str]] = []
        for pattern in kinds().values():
            if pattern.method == PROFILE:
                continue
            if not pattern.params:
                candidates.append((pattern, self.keys.build(pattern, {})))
                continue
            for key in client.scan_iter(match=self.keys.scan_match(pattern), count=1000):
                if self.keys.patterns_of(str(key)) == [pattern]:
                    candidates.append((pattern, str(key)))
        profile = kinds().get(PROFILE)
        if profile is not None:
            for user_id in client.zrange(self.keys.users_index(), 0, -1):
                candidates.append((profile, self.keys.user(str(user_id))))
        pipe = client.pipeline(transaction=False)
        for _, key in candidates:
            pipe.exists(key)
        present = pipe.execute() if candidates else []
        return [item for item, there in zip(candidates, present, strict=True) if there]

    # -- restore ------------------------------------------------------------------------------

    def open(self, text: str) -> Contents:
        """Parse, authenticate and check a backup file's text; nothing is written."""
        head, _, rest = text.partition("\n")
        try:
            header = json.loads(head)
        except ValueError as exc:
            raise BackupError("not a Keycard backup: the first line is not a JSON header") from exc
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise BackupError("not a Keycard backup (no keycard-backup header)")
        version = header.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
            raise BackupError(f"backup format {version!r} is not one this Keycard reads "
                              f"(it reads 1 to {FORMAT_VERSION}): use a newer Keycard")
        if header.get("key_check") != self.key_check:
            raise BackupError("this backup was sealed with another SSO_SECRET_KEY: run the "
                              "restore with the secret key of the Keycard that made it")
        try:
            body = json.loads(self.sealer.open(rest.strip()))
        except (DecryptionError, ValueError) as exc:
            raise BackupError("the backup is damaged or was altered: its sealed part does not "
                              "authenticate") from exc
        if body.get("header") != header:
            raise BackupError("the backup was altered: its header does not match the sealed "
                              "copy")
        records = [Record.from_json(item) for item in body.get("records", [])]
        for record in records:
            self.keys.build(kinds()[record.kind], record.args)  # every name can be built
        return Contents(header, records)

    @guard
    def present(self) -> dict[str, int]:
        """Keys per kind the target already holds of the backed-up kinds: what a restore
        with ``force`` deletes or replaces."""
        return _per_kind(self._existing_names())

    @guard
    def restore(self, contents: Contents, *, force: bool = False) -> dict[str, dict[str, int]]:
        """Write the backup's records; with ``force``, first delete every existing key of the
        backed-up kinds. One transaction per hash slot: on one Redis (standalone, Sentinel),
        a single transaction, so all or nothing."""
        existing = self._existing_names()
        if existing and not force:
            held = ", ".join(f"{label(kind)}: {n}" for kind, n in _per_kind(existing).items())
            raise BackupError(f"refusing to restore into a Redis that already holds Keycard "
                              f"configuration ({held} under this prefix); --force deletes "
                              "them and writes the backup's")
        elapsed_ms = max(0, int((self.clock() - float(contents.header["created"])) * 1000))
        writes: list[tuple[str, Record, int | None]] = []
        for record in contents.records:
            ttl = record.ttl_ms
            if ttl is not None:
                ttl -= elapsed_ms
                if ttl <= 0:
                    continue  # it would have expired by now
            writes.append((self.keys.build(kinds()[record.kind], record.args), record, ttl))
        counters = {key: self._restored_counter(key, record) for key, record, _ in writes
                    if record.kind in COUNTERS}
        counters.update({key: secrets.token_urlsafe(16) for key, record, _ in writes
                         if record.kind in GENERATIONS})
        stale = [key for _, key in existing]
        groups = self._slot_groups(stale + [key for key, _, _ in writes])
        done = 0
        for group in groups:
            members = set(group)
            pipe = self.store.redis.pipeline(transaction=True)
            doomed = [key for key in stale if key in members]
            if doomed:
                pipe.delete(*doomed)
            for key, record, ttl in writes:
                if key not in members:
                    continue
                pipe.delete(key)
                value = counters.get(key, record.value)
                _WRITERS[record.type](pipe, key, value)
                if ttl is not None:
                    pipe.pexpire(key, ttl)
            try:
                pipe.execute()
            except (redis.exceptions.RedisError, StorageUnavailable) as exc:
                if done:  # only possible with several slots (Redis Cluster)
                    raise BackupError(f"restore stopped after {done} of {len(groups)} hash "
                                      f"slots ({exc}): run it again with --force") from exc
                raise
            done += 1
        return summary(record for _, record, _ in writes)

    def _restored_counter(self, key: str, record: Record) -> Any:
        """A watched counter is written as a value no process can have cached: processes
        that ran against this Redis (or the one backed up) cached values near the current
        or the backed-up one, so counting on from the larger of them by a random step makes
        every one of them reload. A value that is not a counter is restored as it was."""
        value = str(record.value)
        if record.type != "string" or not value.isdigit():
            return record.value
        current = self.store.redis.get(key)
        base = max(int(value), int(current) if current and str(current).isdigit() else 0)
        return str(base + 1 + secrets.randbelow(2**32))

    def _slot_groups(self, keys: list[str]) -> list[list[str]]:
        """Keys that may share a transaction: all of them, except on Redis Cluster, where
        a transaction stays within one hash slot."""
        unique = list(dict.fromkeys(keys))
        if not isinstance(self.store.redis, redis.cluster.RedisCluster):
            return [unique] if unique else []
        groups: dict[int, list[str]] = {}
        for key in unique:
            groups.setdefault(key_slot(key.encode()), []).append(key)
        return list(groups.values())


def _per_kind(named: list[tuple[KeyPattern, str]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for pattern, _ in named:
        counts[pattern.method] = counts.get(pattern.method, 0) + 1
    return dict(sorted(counts.items()))


def write_file(path: Path, text: str) -> None:
    """Write ``text`` readable by its owner only (0600), atomically: a new file in the same
    directory, then renamed over ``path``, so no reader ever sees half a backup."""
    directory = path.resolve().parent
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)  # created 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BackupError(f"cannot read {path}: {exc}") from exc
