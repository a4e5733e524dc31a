"""Forgetting people who stopped signing in (``SSO_FORGET_AFTER_DAYS``, issue #12 defect 8).

The ``users`` directory (user id -> last sign-in) and the ``logins`` index (login -> id)
had no end: every person who ever signed in stayed in them for good, long after their
profile expired. People whose last sign-in is older than the setting are forgotten: out
of both indexes, their remaining records deleted (profile, consents, session and grant
indexes, re-check lock, device-code tries), and whatever access they still hold ended
first (sessions and token grants), so nothing live points at a forgotten person. The
audit trail keeps its entries: it is the record of what happened, bounded by its length.
The bootstrap-admin pins stay too: a pin must never move to another id.

It runs at most once per ``FORGET_EVERY`` per deployment (a lock key with that TTL),
after a sign-in, in batches of ``BATCH``; ``sso users prune`` runs it whole, at will.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from sso.audit import Audit
from sso.sessions import SessionStore
from sso.storage import Store, guard

log = logging.getLogger("keycard.forgetting")

DAY = 86_400
FORGET_EVERY = 3600  # seconds between opportunistic runs, per deployment
BATCH = 500  # people forgotten per opportunistic run (the rest wait for the next one)

# KEYS users; ARGV user id, cutoff → 1 when removed (still not signed in since the cutoff)
_FORGET_IF_STALE = """
local last = redis.call('ZSCORE', KEYS[1], ARGV[1])
if last and tonumber(last) < tonumber(ARGV[2]) then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 1
end
return 0
"""

# KEYS logins; ARGV login, user id → 1 when the login still named that id and is gone
_DROP_LOGIN_OF = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""


@dataclass(frozen=True)
class Forgotten:
    user_id: str
    logins: tuple[str, ...]
    last_sign_in: int

    def as_dict(self) -> dict[str, object]:
        return {"user_id": self.user_id, "logins": list(self.logins),
                "last_sign_in": self.last_sign_in}


class Forgetting:
    """Prunes the people indexes; ``after_days`` 0 means never."""

    def __init__(self, *, store: Store, sessions: SessionStore, audit: Audit, after_days: int,
                 on_access_end: Callable[[str], int] = lambda user_id: 0) -> None:
        self.store = store
        self.keys = store.keys
        self.sessions = sessions
        self.audit = audit
        self.after_days = after_days
        self.on_access_end = on_access_end
        self._forget_if_stale = store.redis.register_script(_FORGET_IF_STALE)
        self._drop_login_of = store.redis.register_script(_DROP_LOGIN_OF)

    def cutoff(self, now: float | None = None) -> float:
        return (time.time() if now is None else now) - self.after_days * DAY

    def maybe_run(self) -> None:
        """After a sign-in: a batch, if no process of the deployment ran one this hour.
        Never raises: a failed prune must not fail the sign-in that triggered it."""
        if self.after_days <= 0:
            return
        try:
            if self.store.redis.set(self.keys.forget_lock(), "1", nx=True, ex=FORGET_EVERY):
                self.run(limit=BATCH)
        except Exception:  # noqa: BLE001 - logged; the next hour tries again
            log.exception("forgetting people who stopped signing in failed")

    @guard
    def stale(self, limit: int | None = None) -> list[tuple[str, int]]:
        """(user id, last sign-in) of the people past the cutoff, oldest first."""
        rows = self.store.redis.zrangebyscore(
            self.keys.users_index(), "-inf", f"({self.cutoff()}", withscores=True,
            start=0 if limit else None, num=limit)
        return [(str(user_id), int(last)) for user_id, last in rows]

    @guard
    def run(self, *, dry_run: bool = False, actor: str = "system",
            limit: int | None = None) -> list[Forgotten]:
        """Forget everyone past the cutoff (up to ``limit``); ``dry_run`` only lists them."""
        if self.after_days <= 0:
            return []
        stale = self.stale(limit)
        if not stale:
            return []
        logins = self._logins_of({user_id for user_id, _ in stale})
        cutoff = self.cutoff()
        gone: list[Forgotten] = []
        for user_id, last in stale:
            named = tuple(sorted(logins.get(user_id, ())))
            if dry_run:
                gone.append(Forgotten(user_id, named, last))
                continue
            # Out of the directory first, and only if still stale: someone signing in right
            # now is kept (their sign-in wrote a newer score).
            if not self._forget_if_stale(keys=[self.keys.users_index()],
                                         args=[user_id, cutoff]):
                continue
            self._forget(user_id, named)
            gone.append(Forgotten(user_id, named, last))
        if gone and not dry_run:
            self.audit.record("person.forgotten", actor=actor, count=len(gone),
                              after_days=self.after_days,
                              logins=[login for f in gone[:100] for login in f.logins[:1]])
        return gone

    def _logins_of(self, user_ids: set[str]) -> dict[str, list[str]]:
        """Every login naming one of these ids (a renamed person has several)."""
        found: dict[str, list[str]] = {}
        for login, user_id in self.store.redis.hscan_iter(self.keys.login_index(), count=1000):
            if user_id in user_ids:
                found.setdefault(user_id, []).append(login)
        return found

    def _forget(self, user_id: str, logins: tuple[str, ...]) -> None:
        self.sessions.end_user_sessions(user_id)
        self.on_access_end(user_id)  # token grants, and the person's grant index with them
        for login in logins:
            self._drop_login_of(keys=[self.keys.login_index()], args=[login, user_id])
        # One DEL per key: on a cluster they need not share a slot.
        pipe = self.store.redis.pipeline(transaction=False)
        for key in (self.keys.user(user_id), self.keys.user_consents(user_id),
                    self.keys.user_sessions(user_id), self.keys.user_grants(user_id),
                    self.keys.recheck_lock(user_id), self.keys.device_tries("user", user_id)):
            pipe.delete(key)
        pipe.execute()
        log.info("forgot user %s (%s): no sign-in for %d days", user_id,
                 json.dumps(list(logins)), self.after_days)
