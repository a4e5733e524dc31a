"""Server-side browser sessions in Redis, plugged into Flask as its session interface.

Why not Flask-Session: it keys Redis by the cookie value itself, so a dump of
Redis is a dump of live bearer cookies, and it has neither an absolute lifetime
nor a per-user index for "sign out everywhere". Here the cookie holds a random
id; Redis holds only its SHA-256.

A session is one Redis hash: ``d`` (the Flask session dict: Flask-Login's user
id, CSRF token, auth time), ``u`` (user id), ``p`` (the profile snapshot the
pages and tokens read, so a request costs one round trip), ``c``/``a``
(created, absolute expiry), ``ip``/``ua`` for the admin listing. Reading it
slides the idle TTL in the same round trip (a Lua script); writing an existing
session only succeeds while it still exists, so a session ended by an admin or
by logout can never be resurrected by a request already in flight.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from flask import Flask, Request, Response
from flask.sessions import SessionInterface, SessionMixin
from werkzeug.datastructures import CallbackDict

from sso.crypto import hash_secret, new_secret
from sso.storage import StorageUnavailable, Store, guard

# KEYS[1] session; ARGV now, idle. Returns the hash (flat list) or {} when gone/expired.
_READ = """
local v = redis.call('HGETALL', KEYS[1])
if #v == 0 then return v end
local abs = 0
for i = 1, #v, 2 do if v[i] == 'a' then abs = tonumber(v[i + 1]) end end
local ttl = math.min(tonumber(ARGV[2]), abs - tonumber(ARGV[1]))
if ttl <= 0 then redis.call('DEL', KEYS[1]); return {} end
redis.call('EXPIRE', KEYS[1], ttl)
return v
"""

# KEYS[1] session; ARGV field, value, ... Updates only a session that still exists.
_UPDATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""


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

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.sid_hash[:16],
            "user_id": self.user_id,
            "login": self.login,
            "created": self.created,
            "absolute_expiry": self.expires,
            "ip": self.ip,
            "user_agent": self.user_agent,
        }


class SessionStore:
    """Session records and the per-user index: the service behind sign-out and admin views."""

    def __init__(self, store: Store, *, idle: int, absolute: int) -> None:
        self.store = store
        self.idle = idle
        self.absolute = absolute
        self._read = store.redis.register_script(_READ)
        self._update = store.redis.register_script(_UPDATE)

    def key(self, sid: str) -> str:
        return self.store.keys.session(hash_secret(sid))

    @guard
    def load(self, sid: str) -> dict[str, str] | None:
        flat = self._read(keys=[self.key(sid)], args=[int(time.time()), self.idle])
        if not flat:
            return None
        return dict(zip(flat[::2], flat[1::2], strict=True))

    @guard
    def save(self, session: ServerSession, *, ip: str, user_agent: str) -> str | None:
        """Persist; returns the id to put in the cookie (new sessions), else None."""
        keys = self.store.keys
        pipe = self.store.redis.pipeline(transaction=True)
        if session.retired_sid:
            pipe.delete(self.key(session.retired_sid))
            session.retired_sid = None
        if session.ended:
            pipe.execute()
            return None
        fields: dict[str, str] = {"d": json.dumps(dict(session), separators=(",", ":"))}
        if session.profile is not None and session.profile_dirty:
            fields["p"] = json.dumps(session.profile, separators=(",", ":"))
        new_sid: str | None = None
        now = int(time.time())
        if session.sid is None:
            new_sid = session.sid = new_secret()
            session.created, session.absolute = now, now + self.absolute
            fields.update(c=str(now), a=str(session.absolute), ip=ip[:64], ua=user_agent[:200])
            if session.user_id:
                fields["u"] = session.user_id
            key = self.key(new_sid)
            pipe.hset(key, mapping=fields)
            pipe.expire(key, min(self.idle, self.absolute))
            if session.user_id:
                index = keys.user_sessions(session.user_id)
                pipe.sadd(index, hash_secret(new_sid))
                pipe.expire(index, self.absolute)
            pipe.execute()
        else:
            pipe.execute()
            flat = [item for pair in fields.items() for item in pair]
            self._update(keys=[self.key(session.sid)], args=flat)
        session.profile_dirty = False
        return new_sid

    @guard
    def end_user_sessions(self, user_id: str) -> int:
        """Delete every session of a person (sign out everywhere, deprovisioning)."""
        index = self.store.keys.user_sessions(user_id)
        members = self.store.redis.smembers(index)
        pipe = self.store.redis.pipeline(transaction=True)
        for sid_hash in members:
            pipe.delete(self.store.keys.session(sid_hash))
        pipe.delete(index)
        results = pipe.execute()
        return int(sum(results[:-1]))

    @guard
    def end_by_hash(self, user_id: str, sid_hash: str) -> bool:
        pipe = self.store.redis.pipeline(transaction=True)
        pipe.delete(self.store.keys.session(sid_hash))
        pipe.srem(self.store.keys.user_sessions(user_id), sid_hash)
        return bool(pipe.execute()[0])

    @guard
    def update_profiles(self, user_id: str, profile: dict[str, Any]) -> None:
        """Push a re-read profile (new groups/roles) into every live session of the user."""
        data = json.dumps(profile, separators=(",", ":"))
        for sid_hash in self.store.redis.smembers(self.store.keys.user_sessions(user_id)):
            self._update(keys=[self.store.keys.session(sid_hash)], args=["p", data])

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

    def _describe(self, hashes: Iterable[str], prune_index: str | None = None) -> list[SessionInfo]:
        hashes = list(hashes)
        pipe = self.store.redis.pipeline(transaction=False)
        for sid_hash in hashes:
            pipe.hmget(self.store.keys.session(sid_hash), "u", "c", "a", "ip", "ua", "p")
        out, gone = [], []
        for sid_hash, row in zip(hashes, pipe.execute(), strict=True):
            if row[0] is None:
                gone.append(sid_hash)
                continue
            login = json.loads(row[5]).get("login", "") if row[5] else ""
            out.append(
                SessionInfo(sid_hash, row[0], int(row[1]), int(row[2]), row[3] or "",
                            row[4] or "", login)
            )
        if gone and prune_index:
            self.store.redis.srem(prune_index, *gone)
        return out


class RedisSessionInterface(SessionInterface):
    """Flask's session, kept in Redis; the cookie carries only a random id."""

    def __init__(self, sessions: SessionStore, *, cookie_name: str) -> None:
        self.sessions = sessions
        self.cookie_name = cookie_name

    def open_session(self, app: Flask, request: Request) -> ServerSession:
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
        session = ServerSession(json.loads(record.get("d", "{}")), sid=sid)
        session.user_id = record.get("u")
        session.created = int(record.get("c", 0))
        session.absolute = int(record.get("a", 0))
        if record.get("p"):
            session.profile = json.loads(record["p"])
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
