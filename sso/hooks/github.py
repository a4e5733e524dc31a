"""GitHub organisation webhooks: the delivery says *who* changed, GitHub's API says *what now*.

A delivery is verified (HMAC-SHA256 of the raw body against ``X-Hub-Signature-256``)
before anything in it is read, acted on at most once (its ``X-GitHub-Delivery`` id is
remembered for a day), and never trusted for what it grants: the person's membership is
re-read upstream with their own stored token (:meth:`Accounts.recheck`), so a payload
signed by someone holding the secret can at most end a session, never open one.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import asdict, dataclass
from typing import Any

from sso.accounts import Accounts, Profile
from sso.audit import Audit
from sso.config import Settings
from sso.sessions import SessionStore
from sso.storage import OUTAGE_ERRORS, Store, guard
from sso.upstream.base import Connector, valid_login

DELIVERY_TTL = 86_400  # GitHub redelivers on request for days; a day covers its retries
RECENT_DELIVERIES = 100
MAX_BODY_BYTES = 256 * 1024  # organisation, membership and team payloads are a few KiB
# GitHub gives up on a delivery after 10 s; re-checks past this budget are left to the
# periodic re-check (SSO_MEMBERSHIP_MAX_AGE) and the answer says how many.
TEAM_BUDGET_SECONDS = 6.0
ACTOR = "github-webhook"
DELIVERY_ID = re.compile(r"[A-Za-z0-9-]{1,64}")
EVENT = re.compile(r"[a-z_]{1,64}")


def signature_ok(secret: str, body: bytes, header: str | None) -> bool:
    """``X-Hub-Signature-256`` is ``sha256=`` + the hex HMAC of the raw body (constant time)."""
    if not header or not header.startswith("sha256="):
        return False
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), header.encode("ascii", "replace"))


def team_slug(name: str) -> str:
    """GitHub's slug of a team name (lower case, other characters runs become ``-``)."""
    return re.sub(r"[^a-z0-9_]+", "-", name.lower()).strip("-")


class BadPayload(Exception):
    """A verified delivery whose body is not the shape GitHub documents."""


@dataclass(frozen=True)
class Outcome:
    """What a delivery did. ``status`` 204 means it was not for Keycard."""

    status: int
    result: str  # pong, offboarded, roles_updated, unchanged, ... (a word for machines)
    person: str = ""
    detail: str = ""


def _field(payload: dict[str, Any], *path: str) -> Any:
    value: Any = payload
    for name in path:
        if not isinstance(value, dict):
            return None
        value = value.get(name)
    return value


def _person(user: Any) -> tuple[str, str]:
    """(user id, login) of a GitHub user object in a payload."""
    if not isinstance(user, dict):
        raise BadPayload("the payload names no user")
    ident, login = user.get("id"), user.get("login")
    if not isinstance(ident, int) or isinstance(ident, bool) or ident <= 0:
        raise BadPayload("the user in the payload has no numeric id")
    if not isinstance(login, str) or not valid_login(login):
        raise BadPayload("the user in the payload has no valid login")
    return str(ident), login


class GitHubHooks:
    """Acts on organisation, membership and team events for the allowed organisations."""

    def __init__(self, *, store: Store, settings: Settings, accounts: Accounts,
                 sessions: SessionStore, connector: Connector, audit: Audit,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.settings = settings
        self.accounts = accounts
        self.sessions = sessions
        self.connector = connector
        self.audit = audit
        self.clock = clock
        self.allowed = frozenset(org.lower() for org in settings.github_orgs)

    @guard
    def receive(self, delivery_id: str, event: str, payload: dict[str, Any]) -> Outcome:
        """Act on one verified delivery, once: a replay answers ``duplicate`` and does nothing."""
        redis = self.store.redis
        key = self.store.keys.hook_delivery(delivery_id)
        if not redis.set(key, "1", nx=True, ex=DELIVERY_TTL):
            return Outcome(200, "duplicate", detail="this delivery was already acted on")
        try:
            outcome = self._dispatch(delivery_id, event, payload)
        except BaseException:
            # Not acted on (or not wholly): a redelivery from GitHub's settings page may retry.
            with suppress(*OUTAGE_ERRORS):
                redis.delete(key)
            raise
        action = payload.get("action")
        entry = {"time": round(time.time(), 3), "delivery": delivery_id, "event": event,
                 "action": action if isinstance(action, str) else "", **asdict(outcome)}
        pipe = redis.pipeline(transaction=False)
        pipe.lpush(self.store.keys.hooks_recent(), json.dumps(entry, separators=(",", ":")))
        pipe.ltrim(self.store.keys.hooks_recent(), 0, RECENT_DELIVERIES - 1)
        pipe.execute()
        return outcome

    @guard
    def recent(self, count: int = 20) -> list[dict[str, Any]]:
        """The last deliveries acted on, newest first."""
        rows = self.store.redis.lrange(self.store.keys.hooks_recent(), 0, count - 1)
        return [json.loads(row) for row in rows]

    # -- dispatch ----------------------------------------------------------------------

    def _dispatch(self, delivery: str, event: str, payload: dict[str, Any]) -> Outcome:
        action = payload.get("action")
        if event == "ping":
            return Outcome(200, "pong")
        org = _field(payload, "organization", "login")
        if event not in {"organization", "membership", "team"}:
            return Outcome(204, "ignored", detail=f"{event} events are not used")
        if not isinstance(org, str) or not valid_login(org):
            raise BadPayload("the payload names no organisation")
        if not self.settings.allow_any_github_user and org.lower() not in self.allowed:
            return Outcome(204, "ignored", detail="not an allowed organisation")
        context = {"delivery": delivery, "webhook": f"{event}.{action}", "organization": org}
        if event == "organization" and action in {"member_removed", "member_added"}:
            user_id, login = _person(_field(payload, "membership", "user"))
            if action == "member_removed":
                return self._member_removed(user_id, login, org, context)
            self.audit.record("github.member_added", actor=ACTOR, subject=login,
                              user_id=user_id, **context)
            return self._recheck(user_id, login, context)
        if event == "membership" and action in {"added", "removed"}:
            user_id, login = _person(payload.get("member"))
            return self._recheck(user_id, login, context)
        if event == "team" and action in {"deleted", "edited"}:
            slug = _field(payload, "team", "slug")
            if not isinstance(slug, str) or not slug:
                raise BadPayload("the payload names no team")
            old_name = _field(payload, "changes", "name", "from")
            slugs = {slug.lower()} | ({team_slug(old_name)} if isinstance(old_name, str) else set())
            return self._team_changed(org, slugs, context)
        return Outcome(204, "ignored", detail=f"{event}.{action} is not used")

    def _member_removed(self, user_id: str, login: str, org: str,
                        context: dict[str, Any]) -> Outcome:
        before = self.accounts.get(user_id)
        if before is None:
            return Outcome(200, "unknown_person", login, "never signed in to Keycard")
        # Still in another allowed organisation? Only GitHub can say. If it cannot say
        # right now, and the profile knows no other allowed organisation, access ends:
        # an offboarding signal is never postponed by an outage (fail closed).
        others = {o.lower() for o in before.orgs} & self.allowed - {org.lower()}
        fresh, answered = self.accounts.reread(user_id, actor=ACTOR, now=True,
                                               fail_closed=not others, **context)
        if fresh is None:
            self.audit.record("person.offboarded", actor=ACTOR, subject=before.login,
                              user_id=user_id, **context)
            return Outcome(200, "offboarded", login, "sessions and tokens ended")
        return self._compare(before, fresh, answered, login)

    def _recheck(self, user_id: str, login: str, context: dict[str, Any]) -> Outcome:
        before = self.accounts.get(user_id)
        if before is None:
            return Outcome(200, "unknown_person", login, "never signed in to Keycard")
        fresh, answered = self.accounts.reread(user_id, actor=ACTOR, now=True, **context)
        if fresh is None:
            return Outcome(200, "access_ended", login, "no longer allowed: sessions ended")
        return self._compare(before, fresh, answered, login)

    @staticmethod
    def _compare(before: Profile, fresh: Profile, answered: bool, login: str) -> Outcome:
        if not answered:
            return Outcome(200, "postponed", login,
                           "GitHub did not answer; the periodic re-check will retry")
        if fresh.roles != before.roles:
            return Outcome(200, "roles_updated", login,
                           f"roles {', '.join(before.roles) or '-'} → "
                           f"{', '.join(fresh.roles) or '-'}")
        return Outcome(200, "unchanged", login, "roles unchanged")

    def _team_changed(self, org: str, slugs: set[str], context: dict[str, Any]) -> Outcome:
        """Re-check everyone with a live session who was in the team (by its new or old
        name), as far as GitHub's 10 s answer budget allows."""
        self.connector.forget_teams()
        teams = {f"{org.lower()}/{slug}" for slug in slugs}
        members = [profile for profile, _ in self.accounts.directory()
                   if teams & {t.lower() for t in profile.teams}
                   and self.sessions.list_for_user(profile.user_id)]
        deadline = self.clock() + TEAM_BUDGET_SECONDS
        changed = ended = 0
        left = len(members)
        for profile in members:
            if self.clock() > deadline:
                break
            left -= 1
            fresh, _ = self.accounts.reread(profile.user_id, actor=ACTOR, now=True, **context)
            if fresh is None:
                ended += 1
            elif fresh.roles != profile.roles:
                changed += 1
        detail = (f"{len(members)} people with live sessions were in the team: {changed} "
                  f"changed roles, {ended} lost access")
        if left:
            detail += f", {left} left to the periodic re-check"
        return Outcome(200, "roles_updated" if changed or ended else "unchanged", "", detail)
