"""Provider state in Redis: authorization codes, grants, refresh tokens, revocations, consents.

A *grant* is one chain of tokens for one user and client, born from one code
(its id travels inside every access token's ``jti``). Deleting the grant kills
everything it produced at once: the access tokens (introspection and userinfo
check the grant is alive), and every refresh token of the family. A tombstone
stops a grant that was revoked while being created from coming back.

Single-use records (codes, refresh tokens) are consumed with Lua scripts, so two
concurrent redemptions can never both succeed (Authlib deletes codes only after
saving tokens: its own flow is not atomic).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import EllipsisType
from typing import Any

from sso.crypto import hash_secret, new_secret
from sso.oidc import record_scripts as lua
from sso.storage import Store, guard

CODE_TTL = 60  # seconds; RFC 6749 §4.1.2 allows up to 10 minutes, issue #4 asks ≤ 60 s
USED_CODE_TTL = 600  # remember a redeemed code this long to catch (and punish) replays
TOMBSTONE_TTL = 86_400
CONSENT_TTL = 180 * 86_400
_MARK = "\x00"  # the id's place in a key template (no id holds it)


@dataclass(frozen=True)
class Grant:
    """One user's authorisation of one client, the parent of a token family."""

    grant_id: str
    user_id: str
    client_id: str
    scope: str
    sid: str  # hash of the browser session it came from ("" for device/other flows)
    auth_time: int
    expires_at: int  # absolute end of the family (refresh tokens cannot outlive it)

    @classmethod
    def from_hash(cls, grant_id: str, data: dict[str, str]) -> Grant:
        return cls(grant_id, data["u"], data["c"], data.get("s", ""), data.get("sid", ""),
                   int(data.get("at", 0)), int(data.get("exp", 0)))


@dataclass(frozen=True)
class Exchange:
    """A code's redemption (:meth:`Records.exchange_code`). ``live`` is None when the
    session was not read, ``created`` None when no grant was written (the caller reads and
    writes them), False when the grant had been revoked already (born dead)."""

    status: str  # "fresh", "replayed" or "unknown"
    data: dict[str, Any] | None
    live: bool | None = None
    profile: str | None = None
    created: bool | None = None
    kept: bool = False  # the first refresh token was written with the grant


@dataclass(frozen=True)
class Claim:
    """A refresh token claimed by its own client (:meth:`Records.claim_own_refresh_token`).
    ``grant`` is ``...`` when the grant and profile were not read (the caller reads them and
    writes the rotated token), None when the grant has ended."""

    record: dict[str, Any]
    grant: dict[str, str] | None | EllipsisType = ...
    profile: str | None = None
    rotated: bool = False


def _templates(*builders: Callable[[str], str]) -> list[str]:
    """Each key as (text before the id, text after it), flat: the one-trip scripts' ARGV."""
    parts = []
    for build in builders:
        head, tail = build(_MARK).split(_MARK)  # a key names its id once
        parts += [head, tail]
    return parts


class Records:
    """The storage service behind the OAuth grants and endpoints."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.keys = store.keys
        redis = store.redis
        self._consume_code = redis.register_script(lua.CONSUME_CODE)
        self._claim_refresh = redis.register_script(lua.CLAIM_REFRESH)
        self._grant_and_profile = redis.register_script(lua.GRANT_AND_PROFILE)
        self._session_and_profile = redis.register_script(lua.SESSION_AND_PROFILE)
        self._create_grant_indexed = redis.register_script(lua.CREATE_GRANT_INDEXED)
        self._alive = redis.register_script(lua.ALIVE)
        self._alive_without_grant = redis.register_script(lua.ALIVE_WITHOUT_GRANT)
        self._code_one_trip = redis.register_script(lua.CODE_ONE_TRIP)
        self._refresh_one_trip = redis.register_script(lua.REFRESH_ONE_TRIP)
        self._refresh_and_grant = redis.register_script(lua.REFRESH_AND_GRANT)
        keys = self.keys
        self._grant_template = _templates(keys.grant)
        self._grant_templates = self._grant_template + _templates(keys.user)
        self._code_templates = _templates(
            keys.user, keys.session, keys.grant, keys.grant_tombstone, keys.user_grants,
            keys.client_grants, keys.session_grants)

    # -- authorization codes ------------------------------------------------------------

    @guard
    def save_code(self, code: str, data: dict[str, Any]) -> None:
        self.store.redis.set(self.keys.code(hash_secret(code)), json.dumps(data), ex=CODE_TTL)

    @guard
    def consume_code(self, code: str) -> tuple[str, dict[str, Any] | None]:
        """("fresh", record) the first time; ("replayed", record) after; ("unknown", None)."""
        code_hash = hash_secret(code)
        answer = self._consume_code(
            keys=[self.keys.code(code_hash), self.keys.used_code(code_hash)],
            args=[USED_CODE_TTL])
        status = {1: "fresh", 2: "replayed"}.get(int(answer[0]), "unknown")
        return status, (json.loads(answer[1]) if len(answer) > 1 else None)

    @guard
    def exchange_code(self, code: str, *, client_id: str, redirect_uri: str, challenge: str,
                      scopes: list[str], grant_ttl: int, refresh: tuple[str, int] | None
                      ) -> Exchange:
        """Redeem a code and, for the usual request (see ``CODE_ONE_TRIP``), do in the same
        round trip what :meth:`session_and_profile` and :meth:`create_grant` would: read
        the session's liveness and the profile, and write the grant, its indexes and
        ``refresh`` = (token, idle ttl) when its scope holds offline_access. The caller
        still makes every check; if one fails after ``created``, it ends the grant: nobody
        ever saw its tokens. In a cluster (keys in other slots), only the redemption.
        ``challenge``: the verifier's S256 challenge, "" without a verifier, "!" for none
        the script may accept."""
        if self.keys.cluster:
            return Exchange(*self.consume_code(code))
        code_hash = hash_secret(code)
        token, idle = refresh if refresh is not None else ("", 0)
        answer = self._code_one_trip(
            keys=[self.keys.code(code_hash), self.keys.used_code(code_hash),
                  self.keys.refresh_token(hash_secret(token))],
            args=[USED_CODE_TTL, client_id, redirect_uri, challenge, f" {' '.join(scopes)} ",
                  "1" if refresh is not None else "", max(1, grant_ttl),
                  int(time.time()) + grant_ttl, max(1, idle), *self._code_templates])
        status = {1: "fresh", 2: "replayed"}.get(int(answer[0]), "unknown")
        data = json.loads(answer[1]) if len(answer) > 1 else None
        if len(answer) < 3:
            return Exchange(status, data)
        live, profile, written, kept = answer[2:]
        return Exchange(status, data, bool(live), profile, {1: True, 2: False}.get(written),
                        bool(kept))

    # -- grants -----------------------------------------------------------------------

    @staticmethod
    def new_grant_id() -> str:
        return new_secret(12)

    @guard
    def create_grant(self, grant: Grant, refresh: tuple[str, int, list[str] | None] | None = None
                     ) -> bool:
        """False when the grant was revoked meanwhile (e.g. its code was replayed).

        Two steps, each in one hash slot (a cluster spreads people, sessions, clients and
        grants over its masters): first the grant id goes into the person's, the session's
        and the client's indexes, then the grant is created unless tombstoned. In that
        order every live grant is listed wherever a revocation looks for it; a failure in
        between only leaves an index naming a grant that never came to be (harmless: ending
        it tombstones an id no token carries). ``refresh`` = (token, idle ttl, resources):
        its first refresh token, written with the grant. Outside a cluster all of it is one
        pipeline on one connection, which Redis runs in order: one round trip."""
        ttl = max(1, grant.expires_at - int(time.time()))
        indexes = [self.keys.user_grants(grant.user_id), self.keys.client_grants(grant.client_id)]
        if grant.sid:
            indexes.append(self.keys.session_grants(grant.sid))
        fields = {"u": grant.user_id, "c": grant.client_id, "s": grant.scope, "sid": grant.sid,
                  "at": str(grant.auth_time), "exp": str(grant.expires_at)}
        flat = [item for pair in fields.items() for item in pair]
        new = None
        if refresh is not None:
            token, idle, resources = refresh
            new = self._refresh_record(token, grant.grant_id, grant.client_id, grant.scope,
                                       idle, resources, grant.user_id)
        if not self.keys.cluster:
            keys = [self.keys.grant(grant.grant_id), self.keys.grant_tombstone(grant.grant_id),
                    *indexes, *([new[0]] if new else [])]
            args = [ttl, len(indexes), new[1] if new else "", new[2] if new else 0,
                    grant.grant_id, *flat]
            return bool(self._create_grant_indexed(keys=keys, args=args))
        pipe = self.store.redis.pipeline(transaction=False)
        for index in indexes:  # EVAL, not EVALSHA: a cluster pipeline cannot load scripts
            pipe.execute_command("EVAL", lua.INDEX_GRANT, 1, index, ttl, grant.grant_id)
        pipe.execute()  # no order across nodes: the indexes first, on their own
        pipe = self.store.redis.pipeline(transaction=False)
        pipe.execute_command("EVAL", lua.CREATE_GRANT, 2, self.keys.grant(grant.grant_id),
                             self.keys.grant_tombstone(grant.grant_id), ttl, *flat)
        if new is not None:
            pipe.set(new[0], new[1], ex=new[2])
        return bool(pipe.execute()[0])

    @guard
    def session_and_profile(self, sid_hash: str, user_id: str) -> tuple[bool, str | None]:
        """One round trip for a code exchange: whether the browser session the code came
        from is still live ("" : none to check), and the person's stored profile (raw).
        It reads the session's and the person's keys itself (``SessionStore`` and
        ``Accounts`` own them) only to make the two reads one round trip."""
        keys = [self.keys.user(user_id)] + ([self.keys.session(sid_hash)] if sid_hash else [])
        if not self.keys.cluster:
            profile, live = self._session_and_profile(keys=keys)
            return bool(live), profile
        pipe = self.store.redis.pipeline(transaction=False)
        for key in keys:
            pipe.hget(key, "profile") if key == keys[0] else pipe.exists(key)
        answers = pipe.execute()
        return (bool(answers[1]) if sid_hash else True), answers[0]

    @guard
    def get_grant(self, grant_id: str) -> Grant | None:
        data = self.store.redis.hgetall(self.keys.grant(grant_id))
        return Grant.from_hash(grant_id, data) if data else None

    @guard
    def revoke_grant(self, grant_id: str) -> bool:
        return bool(self._end_grants([grant_id]))

    def _end_grants(self, grant_ids: list[str]) -> int:
        """Delete and tombstone grants, each atomically in its own slot, in one round trip
        per Redis node, confirmed by the replicas a failover would promote
        (``Store.confirmed``); returns how many existed."""
        if not grant_ids:
            return 0

        def write(pipe: Any) -> None:
            for grant_id in grant_ids:
                pipe.execute_command("EVAL", lua.END_GRANT, 2, self.keys.grant(grant_id),
                                     self.keys.grant_tombstone(grant_id), TOMBSTONE_TTL)

        return int(sum(self.store.confirmed(write)))

    def _grant_ids(self, index: str) -> list[str]:
        """The grant ids an index set lists, sorted."""
        return sorted({self.keys.grant_id_of(m) for m in self.store.redis.smembers(index)})

    def _revoke_index(self, index: str) -> int:
        """End every grant an index lists. The grants first, then the index entries read: a
        failure in between leaves the index naming ended grants (harmless), never a live
        grant that no index lists. Only the entries read are removed, so a grant indexed
        meanwhile stays listed for the next revocation."""
        members = list(self.store.redis.smembers(index))
        revoked = self._end_grants(sorted({self.keys.grant_id_of(m) for m in members}))
        if members:
            self.store.redis.srem(index, *members)
        return revoked

    @guard
    def revoke_user_grants(self, user_id: str) -> int:
        """Deprovisioning: every token of the person, for every client."""
        return self._revoke_index(self.keys.user_grants(user_id))

    @guard
    def revoke_client_grants(self, user_id: str, client_id: str) -> int:
        """Withdrawn consent: end the person's tokens at one client."""
        grant_ids = self._grant_ids(self.keys.user_grants(user_id))
        pipe = self.store.redis.pipeline(transaction=False)
        for grant_id in grant_ids:
            pipe.hget(self.keys.grant(grant_id), "c")
        revoked = 0
        for grant_id, owner in zip(grant_ids, pipe.execute(), strict=True):
            if owner == client_id and self.revoke_grant(grant_id):
                revoked += 1
        return revoked

    @guard
    def revoke_all_client_grants(self, client_id: str) -> int:
        """A client deleted (or its tokens revoked at a secret rotation): every grant it
        holds, for everyone, with their refresh tokens and access tokens."""
        return self._revoke_index(self.keys.client_grants(client_id))

    @guard
    def session_grants(self, sid_hash: str) -> list[Grant]:
        """The live grants born in a browser session (the apps it signed in to)."""
        grant_ids = self._grant_ids(self.keys.session_grants(sid_hash))
        pipe = self.store.redis.pipeline(transaction=False)
        for grant_id in grant_ids:
            pipe.hgetall(self.keys.grant(grant_id))
        return [Grant.from_hash(grant_id, data)
                for grant_id, data in zip(grant_ids, pipe.execute(), strict=True) if data]

    @guard
    def revoke_session_grants(self, sid_hash: str) -> int:
        """Signing out of Keycard ends the refresh tokens born in that session."""
        return self._revoke_index(self.keys.session_grants(sid_hash))

    # -- refresh tokens ---------------------------------------------------------------

    @guard
    def save_refresh_token(self, token: str, grant_id: str, client_id: str, scope: str,
                           ttl: int, resources: list[str] | None = None, user_id: str = ""
                           ) -> None:
        self.store.redis.set(*self._refresh_record(token, grant_id, client_id, scope, ttl,
                                                   resources, user_id))

    def _refresh_record(self, token: str, grant_id: str, client_id: str, scope: str, ttl: int,
                        resources: list[str] | None, user_id: str
                        ) -> tuple[str, str, int]:
        """(key, value, ttl) of a new refresh token. ``u``, the person (immutable for the
        grant's life), lets a refresh read the grant and the profile in one round trip."""
        record: dict[str, Any] = {"g": grant_id, "c": client_id, "s": scope, "r": 0}
        if resources:
            record["a"] = resources
        if user_id:
            record["u"] = user_id
        return self.keys.refresh_token(hash_secret(token)), json.dumps(record), max(1, ttl)

    @guard
    def grant_and_profile(self, grant_id: str, user_id: str,
                          rotated: tuple[str, str, str, int] | None
                          ) -> tuple[Grant | None, str | None]:
        """One round trip for a refresh: the grant, the person's stored profile (raw JSON)
        and, when ``rotated`` = (new token, client id, scope, idle ttl), the new refresh
        token written. Written before the caller's checks so that it costs no round trip
        of its own: if they fail, the token was never disclosed and is deleted
        (:meth:`forget_refresh_token`); it is bound to this grant, so it could never
        outlive it either."""
        grant_key, user_key = self.keys.grant(grant_id), self.keys.user(user_id)
        new = None
        if rotated is not None:
            token, client_id, scope, ttl = rotated
            new = self._refresh_record(token, grant_id, client_id, scope, ttl, None, user_id)
        if not self.keys.cluster:
            keys, args = [grant_key, user_key], []
            if new is not None:
                keys.append(new[0])
                args = [new[1], new[2]]
            flat, profile = self._grant_and_profile(keys=keys, args=args)
            data = dict(zip(flat[::2], flat[1::2], strict=True))
        else:
            pipe = self.store.redis.pipeline(transaction=False)
            pipe.hgetall(grant_key)
            pipe.hget(user_key, "profile")
            if new is not None:
                pipe.set(new[0], new[1], ex=new[2])
            data, profile = pipe.execute()[:2]
        return (Grant.from_hash(grant_id, data) if data else None), profile

    @guard
    def forget_refresh_token(self, token: str) -> None:
        self.store.redis.delete(self.keys.refresh_token(hash_secret(token)))

    @guard
    def peek_refresh_token(self, token: str) -> dict[str, Any] | None:
        raw = self.store.redis.get(self.keys.refresh_token(hash_secret(token)))
        return json.loads(raw) if raw else None

    @guard
    def peek_refresh_token_and_grant(self, token: str
                                     ) -> tuple[dict[str, Any] | None, Grant | None]:
        """A refresh token's record, unchanged, and its grant (None: ended): one round trip
        outside a cluster, two in one."""
        key = self.keys.refresh_token(hash_secret(token))
        if self.keys.cluster:
            raw = self.store.redis.get(key)
            record = json.loads(raw) if raw else None
            return record, (self.get_grant(str(record["g"])) if record else None)
        answer = self._refresh_and_grant(keys=[key], args=self._grant_template)
        if not answer:
            return None, None
        record = json.loads(answer[0])
        flat = answer[1] if len(answer) > 1 else []
        data = dict(zip(flat[::2], flat[1::2], strict=True))
        return record, (Grant.from_hash(str(record["g"]), data) if data else None)

    @guard
    def claim_refresh_token(self, token: str) -> tuple[str, dict[str, Any] | None]:
        """Mark a refresh token used: ("fresh", rec) once; ("reused", rec) for any later use."""
        answer = self._claim_refresh(keys=[self.keys.refresh_token(hash_secret(token))])
        status = {1: "fresh", 2: "reused"}.get(int(answer[0]), "unknown")
        return status, (json.loads(answer[1]) if len(answer) > 1 else None)

    @guard
    def claim_own_refresh_token(self, token: str, client_id: str,
                                rotation: tuple[list[str], str, int] | None = None
                                ) -> Claim | None:
        """Claim a refresh token of ``client_id`` that names no RFC 8707 resources, in one
        round trip; None, with nothing changed, for every other case (unknown, reused,
        another client's, with resources), which :meth:`claim_refresh_token`'s caller
        then answers. Outside a cluster, with ``rotation`` = (the client's scopes, new
        token, its idle ttl), the same round trip does :meth:`grant_and_profile`'s work for
        a record that names its person and whose scope is all still allowed."""
        old = self.keys.refresh_token(hash_secret(token))
        if rotation is None or self.keys.cluster:
            answer = self._claim_refresh(keys=[old], args=[client_id])
        else:
            scopes, new, ttl = rotation
            answer = self._refresh_one_trip(
                keys=[old, self.keys.refresh_token(hash_secret(new))],
                args=[client_id, f" {' '.join(scopes)} ", max(1, ttl), *self._grant_templates])
        if int(answer[0]) != 1:
            return None
        record = json.loads(answer[1])
        if len(answer) < 3:
            return Claim(record)
        flat, profile, rotated = answer[2:]
        grant = dict(zip(flat[::2], flat[1::2], strict=True)) or None
        return Claim(record, grant, profile, bool(rotated))

    # -- access tokens ----------------------------------------------------------------

    @guard
    def access_token_alive(self, jti: str, client_id: str = "") -> bool:
        """One round trip: not revoked, and its grant (if any) still exists.

        A token of a grant lives only while its grant record does, so losing that record
        (evicted, deleted) refuses the token: fail closed. A token without a grant (client
        credentials) is looked up in its client's durable revocation set, which eviction
        under a ``volatile-*`` policy never touches, and in the older per-jti record.
        Scripts rather than a pipeline: the pipeline object's set-up cost more CPU than the
        round trip on the introspection hot path (bench profile: a third of a request).
        """
        grant_id = jti.split(".", 1)[0] if "." in jti else ""
        revoked = self.keys.revoked_access_token(jti)
        if grant_id:
            return bool(self._alive(keys=[revoked, self.keys.grant(grant_id)]))
        listed_key = self.keys.revoked_client_tokens(client_id)
        if not self.keys.cluster:
            return bool(self._alive_without_grant(keys=[revoked, listed_key], args=[jti]))
        pipe = self.store.redis.pipeline(transaction=False)
        pipe.exists(revoked)
        pipe.zscore(listed_key, jti)
        found, listed = pipe.execute()
        return not found and listed is None

    @guard
    def revoke_access_token(self, jti: str, expires_at: int, client_id: str) -> None:
        """End an access token in a way no eviction can undo.

        A token of a grant ends its grant (RFC 7009 §2.1 lets revocation reach the tokens
        of the same grant: its refresh tokens and sibling access tokens go too); a deleted
        record cannot come back, where a ``revoked:{jti}`` record, which must carry a TTL,
        could be evicted and the token be alive again (issue #12, defect 2). A token without
        a grant goes into its client's durable set, pruned of expired entries here.
        """
        grant_id = jti.split(".", 1)[0] if "." in jti else ""
        if grant_id:
            self.revoke_grant(grant_id)
            return
        now = int(time.time())
        listed = self.keys.revoked_client_tokens(client_id)

        def write(pipe: Any) -> None:
            pipe.zadd(listed, {jti: expires_at})
            pipe.zremrangebyscore(listed, "-inf", now)
            # Also the per-jti record older processes read, during a rolling upgrade.
            pipe.set(self.keys.revoked_access_token(jti), "1", ex=max(1, expires_at - now))

        self.store.confirmed(write)

    # -- consents ---------------------------------------------------------------------

    @guard
    def consented_scopes(self, user_id: str, client_id: str) -> set[str]:
        raw = self.store.redis.hget(self.keys.user_consents(user_id), client_id)
        return set(json.loads(raw)["scopes"]) if raw else set()

    @guard
    def remember_consent(self, user_id: str, client_id: str, scopes: set[str]) -> None:
        key = self.keys.user_consents(user_id)
        merged = self.consented_scopes(user_id, client_id) | scopes
        record = {"scopes": sorted(merged), "at": int(time.time())}
        pipe = self.store.redis.pipeline(transaction=True)
        pipe.hset(key, client_id, json.dumps(record))
        pipe.expire(key, CONSENT_TTL)
        pipe.execute()

    @guard
    def consents(self, user_id: str) -> dict[str, dict[str, Any]]:
        raw = self.store.redis.hgetall(self.keys.user_consents(user_id))
        return {client_id: json.loads(value) for client_id, value in raw.items()}

    @guard
    def forget_consent(self, user_id: str, client_id: str) -> bool:
        return bool(self.store.redis.hdel(self.keys.user_consents(user_id), client_id))
