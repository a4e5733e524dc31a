"""People: who may sign in, their stored profile, and the periodic membership re-check.

The user record (``user:<id>``, a Redis hash) holds the last profile read from
the upstream and the upstream token, encrypted. Every live session carries a
copy of the profile, so pages and tokens read it without another round trip;
a re-check rewrites both.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

from sso.audit import Audit
from sso.cache import ExpiringCache
from sso.config import Settings
from sso.crypto import DecryptionError, Sealer
from sso.roles import Rule, evaluate
from sso.sessions import SessionStore
from sso.storage import OUTAGE_ERRORS, Store, guard
from sso.upstream.base import (
    AccessDenied,
    BadCredentials,
    Connector,
    Identity,
    NotAMember,
    SamlSsoRequired,
    UpstreamError,
    UpstreamToken,
)

log = logging.getLogger("keycard.accounts")

RECHECK_BACKOFF = 300  # seconds to wait before asking a failing upstream again
PIN_REREAD = 2.0  # seconds between reads of the bootstrap pins while a login entry is unbound


@dataclass
class Profile:
    """What Keycard knows about a person; the snapshot sessions and tokens use."""

    user_id: str
    login: str
    name: str | None
    email: str | None
    email_verified: bool
    avatar_url: str | None
    orgs: list[str] = field(default_factory=list)
    teams: list[str] = field(default_factory=list)
    roles: list[str] = field(default_factory=list)
    checked_at: int = 0

    @property
    def groups(self) -> list[str]:
        return sorted(self.orgs) + sorted(t.replace("/", ":", 1) for t in self.teams)

    @property
    def display_name(self) -> str:
        return self.name or self.login

    def as_dict(self) -> dict[str, Any]:
        # Not dataclasses.asdict: its recursive deep copy was a seventh of a token refresh.
        return {k: list(v) if isinstance(v, list) else v for k, v in vars(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Profile:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


class Reread(NamedTuple):
    """What a membership re-check found: the profile (``None``: access ended) and whether
    the upstream answered (``False``: it failed, or another re-check or a back-off held it)."""

    profile: Profile | None
    answered: bool


class Accounts:
    """The service behind sign-in completion and membership re-checks."""

    def __init__(
        self,
        *,
        store: Store,
        settings: Settings,
        connector: Connector,
        sealer: Sealer,
        sessions: SessionStore,
        audit: Audit,
        rules: Callable[[], list[Rule]],
        on_access_end: Callable[[str], int] = lambda user_id: 0,
    ) -> None:
        self.store = store
        self.settings = settings
        self.connector = connector
        self.sealer = sealer
        self.sessions = sessions
        self.audit = audit
        self.rules = rules
        # Told the user id whenever their access ends (returns how many token grants
        # ended), so tokens die with sessions without this module knowing about tokens.
        self.on_access_end = on_access_end
        # SSO_BOOTSTRAP_ADMINS: numeric entries are ids; login entries are bound (pinned,
        # durably in Redis) to the id that first signs in with them. Pins are written once,
        # so a complete set is cached for good; while one is missing it is re-read now
        # and then (another process may have written it).
        entries = settings.bootstrap_admins
        self._admin_ids = frozenset(a for a in entries if a.isdigit())
        self._admin_logins = frozenset(a.lower() for a in entries if not a.isdigit())
        self._pins: dict[str, str] = {}
        self._pins_read: ExpiringCache[str, dict[str, str]] = ExpiringCache(1, PIN_REREAD)

    # -- policy ---------------------------------------------------------------------

    def admit(self, identity: Identity) -> None:
        """Refuse people outside the allowed organisations (identity is the numeric id)."""
        if self.settings.allow_any_github_user:
            return
        if not self.settings.github_orgs:
            raise NotAMember(
                "Keycard has no allowed organisation configured yet, so nobody can sign in. "
                "An operator must set SSO_GITHUB_ORGS."
            )
        if not set(identity.orgs) & set(self.settings.github_orgs):
            # The allowed organisations are not named: an outsider learns nothing of them.
            raise NotAMember(
                f"Your GitHub account {identity.login} is not a member of an organisation "
                "that may use Keycard. If you have another GitHub account for work, sign in "
                "with that one; otherwise ask your administrator to invite this account."
            )

    def profile_for(self, identity: Identity) -> Profile:
        """Roles applied to an identity just read from the upstream (sign-in or re-check),
        which is also when a bootstrap login entry is pinned to its first id."""
        self._pin_bootstrap_login(identity)
        roles = evaluate(
            identity.user_id,
            identity.login,
            identity.orgs,
            identity.teams,
            self.rules(),
            self.bootstrap_ids(),
        )
        return Profile(
            user_id=identity.user_id,
            login=identity.login,
            name=identity.name,
            email=identity.email,
            email_verified=identity.email_verified,
            avatar_url=identity.avatar_url,
            orgs=list(identity.orgs),
            teams=list(identity.teams),
            roles=roles,
            checked_at=int(time.time()),
        )

    # -- storage --------------------------------------------------------------------

    @guard
    def complete_sign_in(self, identity: Identity, token: UpstreamToken) -> Profile:
        """An admitted person's profile (roles applied), stored with their upstream token."""
        profile = self.profile_for(identity)
        self.save(profile, token, signed_in=True)
        return profile

    @guard
    def save(self, profile: Profile, token: UpstreamToken | None, *, signed_in: bool) -> None:
        """Write the directory and login index, then the user record.

        In a cluster, two transactions, each within one hash slot (the directory is
        configuration and the record is the person's). Directory first: a profile that
        exists is always listed (admins see it, rule changes reach it); a failure in between
        leaves an id with no profile, which the directory skips. Elsewhere, one transaction
        (one round trip, all or nothing).
        """
        keys = self.store.keys
        fields = {"profile": json.dumps(profile.as_dict(), separators=(",", ":"))}
        if token is not None:
            fields["token"] = self.sealer.seal(json.dumps(token.__dict__))
        now = time.time()
        directory = self.store.redis.pipeline(transaction=True)
        if signed_in:
            directory.zadd(keys.users_index(), {profile.user_id: now})
        directory.hset(keys.login_index(), profile.login.lower(), profile.user_id)
        if keys.cluster:
            directory.execute()
        record = self.store.redis.pipeline(transaction=True) if keys.cluster else directory
        record.hset(keys.user(profile.user_id), mapping=fields)
        record.expire(keys.user(profile.user_id), self.store.ttl.user_profile)
        if signed_in:
            record.hset(keys.user(profile.user_id), "last_login", str(int(now)))
        record.execute()

    @guard
    def get(self, user_id: str) -> Profile | None:
        return self.parse(self.store.redis.hget(self.store.keys.user(user_id), "profile"))

    @staticmethod
    def parse(raw: str | None) -> Profile | None:
        """A stored profile (the ``profile`` field of ``Keys.user``), read by the caller."""
        return Profile.from_dict(json.loads(raw)) if raw else None

    @guard
    def find_by_login(self, login: str) -> Profile | None:
        user_id = self.store.redis.hget(self.store.keys.login_index(), login.lower())
        return self.get(user_id) if user_id else None

    @guard
    def _token(self, user_id: str) -> UpstreamToken | None:
        sealed = self.store.redis.hget(self.store.keys.user(user_id), "token")
        if not sealed:
            return None
        try:
            return UpstreamToken(**json.loads(self.sealer.open(sealed)))
        except DecryptionError:
            log.warning("upstream token of user %s cannot be decrypted", user_id)
            return None

    # -- re-check -------------------------------------------------------------------

    def is_stale(self, profile: dict[str, Any]) -> bool:
        checked = int(profile.get("checked_at", 0))
        return time.time() - checked >= self.settings.membership_max_age

    def unverified_for(self, profile: Profile) -> float:
        """Seconds since the profile was last read successfully from the upstream."""
        return time.time() - profile.checked_at

    def recheck(self, user_id: str, *, actor: str = "system") -> Profile | None:
        """Re-read membership upstream (see :meth:`reread`); ``None``: access has ended."""
        return self.reread(user_id, actor=actor).profile

    @guard
    def reread(self, user_id: str, *, actor: str = "system", now: bool = False,
               fail_closed: bool = False, **details: Any) -> Reread:
        """Re-read membership upstream. A ``None`` profile means access has ended (sessions
        are gone); ``answered`` says whether the upstream was asked and answered.

        When the upstream fails the current profile is kept and the next attempt is
        postponed: a short outage at GitHub must not sign the company out. But only for
        ``settings.membership_max_stale`` after the last successful re-check: past that,
        a failure ends the person's access (fail closed), because a leaver can make the
        re-check fail on purpose (exhausting their own API rate limit, for example).

        A signal that membership changed (a GitHub webhook) asks ``now``: the re-check runs
        even while another one or a back-off holds the lock; with ``fail_closed`` an
        upstream failure ends access at once. ``details`` go into the audit events.
        """
        lock = self.store.keys.recheck_lock(user_id)
        if not self.store.redis.set(lock, "1", nx=True, ex=RECHECK_BACKOFF) and not now:
            # Another request is re-checking (it decides), or the upstream failed a moment
            # ago and we are backing off: a back-off never outlasts the profile's bound, and
            # whatever holds the lock, a profile past the bound is never trusted.
            held = self.get(user_id)
            if held is not None and self.unverified_for(held) > self.settings.membership_max_stale:
                self.end_access(user_id, reason="membership_unverifiable", actor=actor,
                                login=held.login)
                return Reread(None, False)
            return Reread(held, False)
        current = self.get(user_id)
        token = self._token(user_id)
        if current is None or token is None:
            self.end_access(user_id, reason="profile_missing", actor=actor, **details)
            return Reread(None, False)
        try:
            identity = self.connector.refresh(token)
            self.admit(identity)
        except (NotAMember, BadCredentials, SamlSsoRequired, AccessDenied) as exc:
            # Lost membership, a revoked token, SAML enforcement or an org that now blocks
            # Keycard: we can no longer vouch for the person, so access ends until they sign
            # in again (outages and rate limits, below, keep the session).
            self.end_access(user_id, reason=exc.audit_reason, actor=actor, login=current.login,
                            **details)
            self.store.redis.delete(lock)  # a later grant (device, code) must ask again
            return Reread(None, True)
        except UpstreamError as exc:
            left = self.settings.membership_max_stale - self.unverified_for(current)
            if left <= 0 or fail_closed:
                log.warning("membership of %s unverifiable for %ds, access ends: %s",
                            current.login, self.unverified_for(current), exc.detail)
                self.end_access(user_id, reason="membership_unverifiable", actor=actor,
                                login=current.login, upstream=exc.audit_reason,
                                checked_at=current.checked_at, **details)
                self.store.redis.delete(lock)
                return Reread(None, False)
            log.warning("membership re-check of %s postponed: %s", current.login, exc.detail)
            # Ask again after the back-off, or as soon as the bound passes if that is sooner.
            self.store.redis.set(lock, "1", ex=max(1, min(RECHECK_BACKOFF, math.ceil(left))))
            return Reread(current, False)
        fresh = self.profile_for(identity)
        self.save(fresh, None, signed_in=False)
        self.sessions.update_profiles(user_id, fresh.as_dict())
        self.store.redis.delete(lock)
        if (fresh.orgs, fresh.teams, fresh.roles) != (current.orgs, current.teams, current.roles):
            self.audit.record(
                "membership.changed",
                actor=actor,
                subject=fresh.login,
                before={"groups": current.groups, "roles": current.roles},
                after={"groups": fresh.groups, "roles": fresh.roles},
                **details,
            )
        return Reread(fresh, True)

    # -- directory and rule changes ---------------------------------------------------

    @guard
    def directory(self) -> list[tuple[Profile, int]]:
        """Everyone who has signed in, most recent first, with their last sign-in time."""
        rows = self.store.redis.zrevrange(self.store.keys.users_index(), 0, -1, withscores=True)
        pipe = self.store.redis.pipeline(transaction=False)
        for user_id, _ in rows:
            pipe.hget(self.store.keys.user(user_id), "profile")
        out = []
        for (_, last), raw in zip(rows, pipe.execute(), strict=True):
            if raw:
                out.append((Profile.from_dict(json.loads(raw)), int(last)))
        return out

    @guard
    def directory_size(self) -> int:
        return int(self.store.redis.zcard(self.store.keys.users_index()))

    def with_roles(self, profile: Profile, rules: list[Rule] | None = None) -> Profile:
        """The profile with roles recomputed from the current rules (no upstream call)."""
        roles = evaluate(profile.user_id, profile.login, profile.orgs, profile.teams,
                         self.rules() if rules is None else rules,
                         self.bootstrap_ids())
        return replace(profile, roles=roles)

    # -- bootstrap admins ---------------------------------------------------------------

    @guard
    def _pinned(self) -> dict[str, str]:
        """Bootstrap login entry -> the id it is bound to (only the entries bound so far)."""
        if self._admin_logins <= self._pins.keys():
            return self._pins
        if self._pins_read.get("pins") is None:
            stored = self.store.redis.hgetall(self.store.keys.bootstrap_pins())
            self._pins = {login: stored[login] for login in self._admin_logins if login in stored}
            self._pins_read.put("pins", self._pins)
        return self._pins

    def after_data_loss(self) -> None:
        """Redis lost its data (:mod:`sso.epoch`): write back the pins this process
        remembers, since a pin must never move to another id because its record was lost,
        then read them afresh like any other process."""
        pins, self._pins = dict(self._pins), {}
        self._pins_read.clear()
        if not pins:
            return
        try:
            pipe = self.store.redis.pipeline(transaction=False)
            for login, user_id in pins.items():
                pipe.hsetnx(self.store.keys.bootstrap_pins(), login, user_id)
            pipe.execute()
        except OUTAGE_ERRORS:
            log.warning("bootstrap-admin pins not written back after the data loss: Redis "
                        "unavailable")

    def bootstrap_ids(self) -> frozenset[str]:
        """The user ids SSO_BOOTSTRAP_ADMINS makes admins: its numeric entries and the ids its
        login entries are pinned to."""
        if not self._admin_logins:
            return self._admin_ids
        return self._admin_ids | frozenset(self._pinned().values())

    def bootstrap_source(self, user_id: str) -> str | None:
        """Why SSO_BOOTSTRAP_ADMINS makes this id an admin, or None if it does not."""
        if user_id in self._admin_ids:
            return f"bootstrap admin (SSO_BOOTSTRAP_ADMINS: id {user_id})"
        for login, pinned in sorted(self._pinned().items()):
            if pinned == user_id:
                return (f"bootstrap admin (SSO_BOOTSTRAP_ADMINS: login {login}, "
                        f"pinned to id {user_id})")
        return None

    @guard
    def _pin_bootstrap_login(self, identity: Identity) -> None:
        """Bind a bootstrap login entry to the first id GitHub names for it; refuse (and
        record) any other id arriving with that login later (a renamed or freed login)."""
        login = identity.login.lower()
        if login not in self._admin_logins:
            return
        key = self.store.keys.bootstrap_pins()
        pipe = self.store.redis.pipeline(transaction=False)  # one round trip, one slot
        pipe.hsetnx(key, login, identity.user_id)
        pipe.hget(key, login)
        created, pinned = pipe.execute()
        if created:
            self._pins[login] = identity.user_id
            self.audit.record("admin.bootstrap_pinned", actor="system", subject=identity.login,
                              user_id=identity.user_id)
            return
        if pinned:
            self._pins[login] = pinned
        if pinned != identity.user_id:
            log.warning("bootstrap admin login %s is pinned to id %s; id %s refused",
                        login, pinned, identity.user_id)
            self.audit.record("admin.bootstrap_refused", actor="system", subject=identity.login,
                              user_id=identity.user_id, pinned_to=pinned)

    def apply_rules_now(self, *, actor: str) -> int:
        """Recompute the roles of everyone with a live session; returns how many changed."""
        return self._apply_rules([p for p, _ in self.directory()], actor)

    def apply_rules_to(self, user_ids: Collection[str], *, actor: str, limit: int) -> int | None:
        """:meth:`apply_rules_now` for these people only (those a rule change can touch);
        ``None``, changing nothing, when they are more than ``limit``: a request must stay
        short, and their roles then change at the next re-check or "Apply now"."""
        if len(user_ids) > limit:
            return None
        wanted = set(user_ids)
        return self._apply_rules([p for p, _ in self.directory() if p.user_id in wanted], actor)

    def _apply_rules(self, profiles: list[Profile], actor: str) -> int:
        rules = self.rules()
        changed = 0
        for profile in profiles:
            if not self.sessions.list_for_user(profile.user_id):
                continue
            fresh = self.with_roles(profile, rules)
            if fresh.roles == profile.roles:
                continue
            self.save(fresh, None, signed_in=False)
            self.sessions.update_profiles(profile.user_id, fresh.as_dict())
            self.audit.record("roles.applied", actor=actor, subject=profile.login,
                              before=profile.roles, after=fresh.roles)
            changed += 1
        return changed

    def end_access(self, user_id: str, *, reason: str, actor: str, login: str = "",
                   **details: Any) -> int:
        """Deprovision: end every session of the person, and through ``on_access_end`` every
        token grant (refresh tokens and their access tokens, device-flow grants included)."""
        ended = self.sessions.end_user_sessions(user_id)
        tokens = self.on_access_end(user_id)
        self.audit.record(
            "access.ended", actor=actor, subject=login or user_id, reason=reason, sessions=ended,
            token_grants=tokens, **details,
        )
        return ended

    def end_all_sessions(self, user_id: str) -> int:
        """Sign out everywhere: every session and every token the person holds."""
        ended = self.sessions.end_user_sessions(user_id)
        self.on_access_end(user_id)
        return ended
