"""Server-side browser sessions in Redis, plugged into Flask as its session interface.

Why not Flask-Session: it keys Redis by the cookie value itself, so a dump of
Redis is a dump of live bearer cookies, and it has neither an absolute lifetime
nor a per-user index for "sign out everywhere". Here the cookie holds a random
id; Redis holds only its SHA-256.

A session is one Redis string of seven fields joined by the ASCII unit separator
(``\x1f``, which JSON always escapes): absolute expiry, created, user id, IP,
user agent, the Flask session dict as JSON (Flask-Login's user id, CSRF token,
auth time) and the profile snapshot as JSON (what pages and tokens read, so a
request costs one round trip). A string, not a hash: Redis stores hashes with
values over 64 bytes as full hash tables, which cost half a kilobyte more per
session. Reading it slides the idle TTL in the same round trip (a Lua script
that reads the absolute expiry from the front of the value); writing an existing
session only succeeds while it still exists, so a session ended by an admin or
by logout can never be resurrected by a request already in flight.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from flask import Flask, Request, Response
from flask.sessions import SessionInterface, SessionMixin
from werkzeug.datastructures import CallbackDict

from sso.audit import Audit
from sso.crypto import hash_secret, new_secret
from sso.storage import StorageUnavailable, Store, guard

SEP = "\x1f"
# Long enough for today's phone and Edge user agents (130-160 characters): cut at 120, an
# iPhone's Safari or Edge read as another browser in the session lists.
UA_LIMIT = 200
ABS, CREATED, USER, IP, UA, DATA, PROFILE = range(7)

# KEYS[1] session; ARGV now, idle. Returns the value, or false when gone/expired.
_READ = """
local v = redis.call('GET', KEYS[1])
if not v then return false end
local abs = tonumber(string.sub(v, 1, string.find(v, '\\31', 1, true) - 1))
local ttl = math.min(tonumber(ARGV[2]), abs - tonumber(ARGV[1]))
if ttl <= 0 then redis.call('DEL', KEYS[1]); return false end
redis.call('EXPIRE', KEYS[1], ttl)
return v
"""

# KEYS[1] session; ARGV position (0-based), value, ... Updates only a live session.
_UPDATE = """
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local parts, start = {}, 1
while true do
  local i = string.find(v, '\\31', start, true)
  if not i then table.insert(parts, string.sub(v, start)); break end
  table.insert(parts, string.sub(v, start, i - 1))
  start = i + 1
end
for i = 1, #ARGV, 2 do parts[tonumber(ARGV[i]) + 1] = ARGV[i + 1] end
redis.call('SET', KEYS[1], table.concat(parts, '\\31'), 'KEEPTTL')
return 1
"""


def _clean(text: str, limit: int) -> str:
    """Header values go into the record: no separators or control characters."""
    return "".join(c for c in text[:limit] if c >= " " and c != "\x7f")


class ServerSession(CallbackDict[str, Any], SessionMixin):
    """The Flask session object, with the server-side facts beside the dict."""

    def __init__(self, initial: dict[str, Any] | None = None, sid: str | None = None) -> None:
        def on_update(_: Any) -> None:
            self.modified = True

        super().__init__(initial or {}, on_update)
        self.sid = sid
        self.modified = False
        self.profile: dict[str, Any] | None = None
        self.user_id: str | None = None
        self.created = 0
        self.absolute = 0
        self.profile_dirty = False
        self.ended = False
        self.retired_sid: str | None = None  # the id replaced by regenerate(), deleted at save
        self.stale_cookie = False  # the browser sent an id that no longer exists
        self.unavailable: StorageUnavailable | None = None  # Redis failed while loading
        self.carry_grants_from: str | None = None  # old id's hash: its tokens follow the user

    def regenerate(self) -> None:
        """Give this browser a brand-new id (no fixation); the old record goes at save."""
        if self.sid and not self.retired_sid:
            self.retired_sid = self.sid
        self.sid = None
        self.created = 0
        self.modified = True

    def set_profile(self, user_id: str, profile: dict[str, Any]) -> None:
        self.user_id = user_id
        self.profile = profile
        self.profile_dirty = True

    def end(self) -> None:
        """Forget this session here and in Redis; nothing is written back."""
        self.clear()
        self.ended = True
        if self.sid and not self.retired_sid:
            self.retired_sid = self.sid
        self.sid = None


@dataclass(frozen=True)
class SessionInfo:
    """One active session, for listings."""

    sid_hash: str
    user_id: str
    created: int
    expires: int
    ip: str
    user_agent: str
    login: str
    last_active: int = 0  # see SessionStore.last_active

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.sid_hash[:16],
            "user_id": self.user_id,
            "login": self.login,
            "created": self.created,
            "absolute_expiry": self.expires,
            "last_active": self.last_active,
            "ip": self.ip,
            "user_agent": self.user_agent,
        }


class SessionStore:
    """Session records and the per-user index: the service behind sign-out and admin views."""

    def __init__(self, store: Store, *, idle: int, absolute: int,
                 on_end: Callable[[str, str | None], object] = lambda sid_hash, _: None,
                 ) -> None:
        self.store = store
        self.idle = idle
        self.absolute = absolute
        # Told the hash of every session that ends here (the provider revokes the tokens
        # born in it and tells the apps), with the client whose RP-initiated logout ended
        # it, if any: the store announces, so it never needs to know who listens.
        self.on_end = on_end
        self._read = store.redis.register_script(_READ)
        self._update = store.redis.register_script(_UPDATE)

    def key(self, sid: str) -> str:
        return self.store.keys.session(hash_secret(sid))

    @guard
    def load(self, sid: str) -> list[str] | None:
        value = self._read(keys=[self.key(sid)], args=[int(time.time()), self.idle])
        return value.split(SEP) if value else None

    @guard
    def save(self, session: ServerSession, *, ip: str, user_agent: str) -> str | None:
        """Persist; returns the id to put in the cookie (new sessions), else None.

        Outside a cluster a new session is one transaction (one round trip). In a cluster
        (the person's index and each session live on their own master) it is two steps,
        each within one hash slot: first the retired id's record goes, the new hash joins
        the person's index and the old session's grant ids are read; then the new session's
        grant index and its record are written together. Index before record: a session
        that exists is always in its person's index, so "sign out everywhere" finds it; a
        failure in between leaves an index entry naming no session (pruned when listed).
        """
        keys = self.store.keys
        if session.ended:  # signed out: gone for good, even across a failover
            retired = session.retired_sid
            if retired:
                self.store.confirmed(lambda pipe: pipe.delete(self.key(retired)))
            session.retired_sid = None
            return None
        replaced, session.retired_sid = session.retired_sid, None
        first = self.store.redis.pipeline(transaction=not keys.cluster)
        if replaced:
            first.delete(self.key(replaced))
        data = json.dumps(dict(session), separators=(",", ":"))
        profile = json.dumps(session.profile, separators=(",", ":")) if (
            session.profile is not None) else ""
        if session.sid is not None:
            first.execute()
            changes: list[str | int] = [DATA, data]
            if session.profile_dirty:
                changes += [PROFILE, profile]
            self._update(keys=[self.key(session.sid)], args=changes)
            session.profile_dirty = False
            return None
        new_sid = session.sid = new_secret()
        new_hash = hash_secret(new_sid)
        now = int(time.time())
        session.created, session.absolute = now, now + self.absolute
        if session.user_id:
            index = keys.user_sessions(session.user_id)
            first.sadd(index, new_hash)
            first.expire(index, self.absolute)
        carried = session.carry_grants_from
        grants = keys.session_grants(new_hash)
        # Re-sign-in of the same person: the tokens born in the old session now belong to
        # this one, so signing out here still ends them. (The old session is gone, so no
        # grant can join its index any more: codes need a live session.)
        if carried and not keys.cluster:
            # As a raw command: redis-py refuses SUNIONSTORE in a cluster pipeline, which a
            # hash-tagged prefix on a cluster (one slot, keys.cluster False) still uses.
            first.execute_command("SUNIONSTORE", grants, keys.session_grants(carried))
            first.expire(grants, self.absolute)
        elif carried:
            first.smembers(keys.session_grants(carried))
        read = first.execute() if keys.cluster else []
        fields = [str(session.absolute), str(now), session.user_id or "", _clean(ip, 45),
                  _clean(user_agent, UA_LIMIT), data, profile]
        second = self.store.redis.pipeline(transaction=True) if keys.cluster else first
        if carried and keys.cluster and read[-1]:
            second.sadd(grants, *read[-1])
            second.expire(grants, self.absolute)
        session.carry_grants_from = None
        second.set(self.key(new_sid), SEP.join(fields), ex=min(self.idle, self.absolute))
        second.execute()
        session.profile_dirty = False
        return new_sid

    def begin(self, session: ServerSession, user_id: str, profile: dict[str, Any]) -> None:
        """A completed sign-in: a fresh id (a cookie planted earlier is never the signed-in
        one), the profile snapshot and the time of authentication."""
        if session.sid:
            if session.user_id == user_id:
                # Re-sign-in of the same person: the old session's tokens follow them.
                session.carry_grants_from = hash_secret(session.sid)
            else:  # another person's session in this browser ends, and its tokens with it
                self.on_end(hash_secret(session.sid), None)
        session.clear()
        session.regenerate()
        session.set_profile(user_id, profile)
        session["auth_time"] = int(time.time())

    def end(self, session: ServerSession, *, initiator: str | None = None) -> str | None:
        """End this browser's session (deleted at save); returns who was signed in.
        ``initiator``: the client whose RP-initiated logout asked for it."""
        login = (session.profile or {}).get("login") if session.user_id else None
        if session.sid:
            self.on_end(hash_secret(session.sid), initiator)
        session.end()
        return str(login) if login else None

    @guard
    def end_user_sessions(self, user_id: str) -> int:
        """Delete every session of a person (sign out everywhere, deprovisioning).

        The sessions first, then the index entries read (each session has a slot of its
        own in a cluster): a failure in between leaves entries naming ended sessions, never
        a live session no index lists. A session begun meanwhile stays listed."""
        index = self.store.keys.user_sessions(user_id)
        members = sorted(self.store.redis.smembers(index))
        ended = 0
        if members:
            ended = sum(self.store.confirmed(lambda pipe: [
                pipe.delete(self.store.keys.session(h)) for h in members]))
            self.store.redis.srem(index, *members)
        for sid_hash in members:
            self.on_end(sid_hash, None)
        return ended

    @guard
    def end_by_hash(self, user_id: str, sid_hash: str) -> bool:
        [ended] = self.store.confirmed(
            lambda pipe: pipe.delete(self.store.keys.session(sid_hash)))
        self.store.redis.srem(self.store.keys.user_sessions(user_id), sid_hash)
        self.on_end(sid_hash, None)  # even when already gone: its tokens must not outlive it
        return bool(ended)

    @guard
    def update_profiles(self, user_id: str, profile: dict[str, Any]) -> None:
        """Push a re-read profile (new groups/roles) into every live session of the user."""
        data = json.dumps(profile, separators=(",", ":"))
        for sid_hash in self.store.redis.smembers(self.store.keys.user_sessions(user_id)):
            self._update(keys=[self.store.keys.session(sid_hash)], args=[PROFILE, data])

    @guard
    def list_for_user(self, user_id: str) -> list[SessionInfo]:
        index = self.store.keys.user_sessions(user_id)
        hashes = sorted(self.store.redis.smembers(index))
        return self._describe(hashes, prune_index=index)

    @guard
    def list_all(self, user_ids: Iterable[str]) -> list[SessionInfo]:
        """Every live session of these people (the admin's company-wide view)."""
        out: list[SessionInfo] = []
        for user_id in user_ids:
            out.extend(self.list_for_user(user_id))
        return sorted(out, key=lambda s: s.created, reverse=True)

    def last_active(self, now: int, ttl: int, created: int, absolute: int) -> int:
        """When the session was last used, read off its idle TTL instead of a stored time.

        Every request slides the TTL to ``min(idle, absolute - now)`` (``_READ``), so a key
        expiring before the absolute limit was last read ``idle`` seconds before it expires.
        Storing the time would rewrite the record on every request; this costs nothing.
        Within the last ``idle`` seconds of a session's life the TTL no longer tells, and
        the earliest possible time is given instead."""
        expires = now + max(ttl, 0)
        if expires < absolute:
            return max(created, min(now, expires - self.idle))
        return max(created, absolute - self.idle)

    def _describe(self, hashes: Iterable[str], prune_index: str | None = None) -> list[SessionInfo]:
        hashes = list(hashes)
        pipe = self.store.redis.pipeline(transaction=False)
        for sid_hash in hashes:
            pipe.get(self.store.keys.session(sid_hash))
            pipe.ttl(self.store.keys.session(sid_hash))
        answers = pipe.execute()
        now = int(time.time())
        out, gone = [], []
        for sid_hash, value, ttl in zip(hashes, answers[::2], answers[1::2], strict=True):
            if value is None:
                gone.append(sid_hash)
                continue
            row = value.split(SEP)
            login = json.loads(row[PROFILE]).get("login", "") if row[PROFILE] else ""
            created, absolute = int(row[CREATED]), int(row[ABS])
            out.append(SessionInfo(sid_hash, row[USER], created, absolute, row[IP], row[UA],
                                   login, self.last_active(now, int(ttl), created, absolute)))
        if gone and prune_index:
            self.store.redis.srem(prune_index, *gone)
        return out


class RedisSessionInterface(SessionInterface):
    """Flask's session, kept in Redis; the cookie carries only a random id."""

    def __init__(self, sessions: SessionStore, *, cookie_name: str) -> None:
        self.sessions = sessions
        self.cookie_name = cookie_name

    def open_session(self, app: Flask, request: Request) -> ServerSession:
        # API clients send no cookie: skip parsing the header into a dict for them.
        if self.cookie_name not in request.environ.get("HTTP_COOKIE", ""):
            return ServerSession()
        sid = request.cookies.get(self.cookie_name)
        if not sid or len(sid) > 128:
            return ServerSession()
        try:
            record = self.sessions.load(sid)
        except StorageUnavailable as exc:
            # open_session runs outside Flask's error handling: defer the failure to
            # before_request, where the 503 handler can answer it.
            session = ServerSession()
            session.unavailable = exc
            return session
        if record is None:
            session = ServerSession()
            session.stale_cookie = True  # ended or expired: drop the cookie at save
            return session
        session = ServerSession(orjson.loads(record[DATA] or "{}"), sid=sid)
        session.user_id = record[USER] or None
        session.created = int(record[CREATED])
        session.absolute = int(record[ABS])
        if record[PROFILE]:
            session.profile = orjson.loads(record[PROFILE])
        return session

    def save_session(self, app: Flask, session: SessionMixin, response: Response) -> None:
        assert isinstance(session, ServerSession)
        if session.unavailable is not None:
            return
        domain = self.get_cookie_domain(app)
        secure = self.get_cookie_secure(app)
        stale = session.stale_cookie
        if session.ended or (not session and session.sid is None):
            if session.retired_sid:
                self.sessions.save(session, ip="", user_agent="")
            if session.ended or stale:
                response.delete_cookie(
                    self.cookie_name, domain=domain, path="/", secure=secure, httponly=True,
                    samesite="Lax",
                )
            return
        if not (session.modified or session.profile_dirty or session.retired_sid):
            return
        from flask import request

        new_sid = self.sessions.save(
            session,
            ip=request.remote_addr or "",
            user_agent=request.headers.get("User-Agent", ""),
        )
        if new_sid:
            response.set_cookie(
                self.cookie_name,
                new_sid,
                expires=session.absolute,
                domain=domain,
                path="/",
                secure=secure,
                httponly=True,
                samesite="Lax",
            )
        response.vary.add("Cookie")


def raise_if_unavailable() -> None:
    """``before_request`` hook: surface a Redis failure met while opening the session."""
    from flask import session

    if isinstance(session, ServerSession) and session.unavailable is not None:
        raise session.unavailable


def end_browser_session(sessions: SessionStore, audit: Audit, *, reason: str, ip: str,
                        initiator: str | None = None) -> None:
    """Sign this browser out (logout, RP-initiated logout by ``initiator``): its tokens end
    with it, and the other apps it signed in to are told."""
    from flask import session

    if not isinstance(session, ServerSession):
        return
    login = sessions.end(session, initiator=initiator)
    if login:
        audit.record("signout", actor=login, subject=login, reason=reason, ip=ip)
