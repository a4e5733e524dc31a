"""The admin service: what the console and the JSON API both do.

Changing rules, explaining roles, ending sessions and filtering the audit trail
live here, so both surfaces (:mod:`sso.admin.console`, :mod:`sso.admin.api`) do
exactly the same thing and record the same audit events.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Generic, TypeVar

from sso.accounts import Accounts, Profile
from sso.audit import Audit
from sso.config import Settings
from sso.roles import ADMIN_ROLE, Rule, evaluate, explain
from sso.rules_store import RuleError, RuleStore, check_roles, describe, parse_target, rule_to_dict
from sso.sessions import SessionInfo, SessionStore
from sso.useragent import describe as describe_device

AUDIT_LIMIT = 200
SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{16}$")  # the first 16 chars of the base64url hash
STREAM_ID = re.compile(r"^\d{1,20}-\d{1,20}$")  # an audit event's id, the "older" cursor
PAGE_SIZE = 50  # rows per page of the people and sessions lists

T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list: its rows, its number (from 1), how many pages, how many rows."""

    items: list[T]
    number: int
    pages: int
    total: int


def paginate(rows: Sequence[T], number: str | int | None, size: int | None = None) -> Page[T]:
    """The ``number``th page of ``rows`` (a bad or too large number: the nearest page)."""
    size = size or PAGE_SIZE
    pages = max(1, math.ceil(len(rows) / size))
    try:
        wanted = int(number or 1)
    except (TypeError, ValueError):
        wanted = 1
    wanted = min(max(wanted, 1), pages)
    return Page(list(rows[(wanted - 1) * size:wanted * size]), wanted, pages, len(rows))


def matches(query: str | None, texts: Iterable[str | None]) -> bool:
    """Whether every word of a search box's ``query`` is in one of ``texts`` (any case)."""
    words = (query or "").lower().split()
    haystack = " ".join(t.lower() for t in texts if t)
    return all(word in haystack for word in words)


def split_roles(value: str | list[Any] | None) -> tuple[str, ...]:
    """``"deployer, ops viewer"`` or ``["deployer"]`` → validated, sorted role names."""
    if isinstance(value, str):
        value = [part for part in re.split(r"[,\s]+", value) if part]
    if not isinstance(value, list):
        raise RuleError("roles must be a list of role names")
    return check_roles(value)


def matching_logins(rule: Rule, people: list[tuple[Profile, int]]) -> list[str]:
    """Who of the known people this rule would give its roles to."""
    return sorted(p.login for p, _ in people if rule.matches(p.user_id, p.orgs, p.teams))


def parse_time(text: str | None, *, end: bool = False) -> float | None:
    """``YYYY-MM-DD`` (a whole UTC day: its start, or with ``end`` its last millisecond)
    or an ISO datetime (UTC unless it names an offset) → epoch seconds."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            start = datetime(day.year, day.month, day.day, tzinfo=UTC)
            return (start + timedelta(days=1)).timestamp() - 0.001 if end else start.timestamp()
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a date (YYYY-MM-DD) or ISO date-time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def utc(ts: float | int | None) -> str:
    if not ts:
        return "never"
    return datetime.fromtimestamp(float(ts), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


class AdminService:
    def __init__(self, *, settings: Settings, rules: RuleStore, accounts: Accounts,
                 sessions: SessionStore, audit: Audit) -> None:
        self.settings = settings
        self.rules = rules
        self.accounts = accounts
        self.sessions = sessions
        self.audit = audit

    def resolve_target(self, text: str) -> tuple[str, str, str]:
        """``ORG``, ``ORG/TEAM`` or ``@login`` → (kind, target, label); users by numeric id."""
        if not isinstance(text, str) or not text.strip():
            raise RuleError("enter ORG, ORG/TEAM or @login")
        kind, target = parse_target(text)
        if kind != "user":
            return kind, target, ""
        profile = self.accounts.find_by_login(target)
        if profile is None:
            raise RuleError(f"@{target} has never signed in, so Keycard does not know their id")
        return kind, profile.user_id, profile.login

    def _rule_subject(self, rule: Rule) -> str:
        return rule.label if rule.kind == "user" else rule.target

    def add_rule(self, target_text: str, roles: str | list[Any] | None, *, actor: str) -> Rule:
        checked = split_roles(roles)
        kind, target, label = self.resolve_target(target_text)
        store = self.rules
        before = next((r for r in store.all() if (r.kind, r.target) == (kind, target)), None)
        after = store.map(kind, target, checked, label)
        self.audit.record(
            "rules.changed", actor=actor, subject=self._rule_subject(after),
            before=rule_to_dict(before) if before else None, after=rule_to_dict(after),
        )
        return after

    def find_rule(self, target_text: str) -> Rule | None:
        """The stored rule a target names; user rules also by the login they were added with."""
        kind, target = parse_target(target_text)
        for rule in self.rules.all():
            if kind == "user" and rule.kind == "user":
                profile = self.accounts.get(rule.target)
                logins = {rule.label.lower(), profile.login.lower() if profile else ""}
                if target.lower() in logins:
                    return rule
            elif (rule.kind, rule.target) == (kind, target):
                return rule
        return None

    def remove_rule(self, rule: Rule, roles: tuple[str, ...], *, actor: str) -> Rule | None:
        """Remove ``roles`` from ``rule`` (the whole rule when empty); returns what is left."""
        store = self.rules
        before = store.unmap(rule.kind, rule.target, roles)
        if before is None:
            return None
        after = next((r for r in store.all() if (r.kind, r.target) == (rule.kind, rule.target)),
                     None)
        self.audit.record(
            "rules.changed", actor=actor, subject=self._rule_subject(before),
            before=rule_to_dict(before), after=rule_to_dict(after) if after else None,
        )
        return after

    def rule_label(self, rule: Rule) -> str:
        """``@`` + the person's current login (logins get renamed), else the stored label."""
        if rule.kind != "user":
            return rule.target
        profile = self.accounts.get(rule.target)
        return f"@{profile.login}" if profile else describe(rule)

    def rule_view(self, rule: Rule, people: list[tuple[Profile, int]]) -> dict[str, Any]:
        logins = matching_logins(rule, people)
        view: dict[str, Any] = {"kind": rule.kind, "target": self.rule_label(rule),
                                "roles": list(rule.roles), "matches": len(logins), "logins": logins}
        if rule.kind == "user":
            view["user_id"] = rule.target
        return view

    def person_view(self, profile: Profile, last_sign_in: int) -> dict[str, Any]:
        return {
            "login": profile.login, "user_id": profile.user_id, "name": profile.name,
            "email": profile.email, "email_verified": profile.email_verified,
            "groups": profile.groups, "roles": list(profile.roles), "last_sign_in": last_sign_in,
            "active_sessions": len(self.sessions.list_for_user(profile.user_id)),
        }

    def explain_roles(self, profile: Profile) -> list[dict[str, Any]]:
        """Each role the current rules give this person, with the rules (or setting) granting it.

        Roles the person holds but no rule grants any more are listed too, marked
        ``stale``: they go at the next sign-in or "Apply now".
        """
        svc = self
        rules = svc.rules.all()
        granting = explain(profile.user_id, profile.orgs, profile.teams, rules)
        current = evaluate(profile.user_id, profile.login, profile.orgs, profile.teams, rules,
                           svc.accounts.bootstrap_ids())
        bootstrap = svc.accounts.bootstrap_source(profile.user_id)
        out = []
        for role in sorted({*current, *profile.roles}):
            sources = [f"{r.kind} rule {self.rule_label(r)}" for r in granting if role in r.roles]
            if role == ADMIN_ROLE and bootstrap:
                sources.append(bootstrap)
            out.append({"role": role, "granted_by": sources, "stale": role not in current,
                        "pending": role not in profile.roles})
        return out

    def company_sessions(self) -> list[SessionInfo]:
        return self.sessions.list_all(p.user_id for p, _ in self.accounts.directory())

    def find_session(self, short_id: str) -> SessionInfo | None:
        if not SESSION_ID.fullmatch(short_id):
            return None
        return next((s for s in self.company_sessions() if s.sid_hash.startswith(short_id)), None)

    def end_session(self, info: SessionInfo, *, actor: str) -> bool:
        ended = self.sessions.end_by_hash(info.user_id, info.sid_hash)
        if ended:
            self.audit.record("session.ended", actor=actor, subject=info.login,
                                    session=info.sid_hash[:16], user_id=info.user_id)
        return ended

    def end_person_sessions(self, profile: Profile, *, actor: str) -> int:
        ended = self.accounts.end_all_sessions(profile.user_id)
        self.audit.record("sessions.ended", actor=actor, subject=profile.login,
                                sessions=ended, user_id=profile.user_id)
        return ended

    def audit_events(self, args: Mapping[str, str],
                     limit: int = AUDIT_LIMIT) -> list[dict[str, Any]]:
        """The audit trail filtered by ``person``, ``event``, ``app`` (a client id),
        ``since``, ``until``, and ``before`` (a stream id: the page after it) (ValueError)."""
        before = (args.get("before") or "").strip()
        if before and not STREAM_ID.fullmatch(before):
            raise ValueError(f"{before[:40]!r} is not an audit event id (like 1718000000000-0)")
        return self.audit.query(
            person=args.get("person") or None, event=args.get("event") or None,
            since=parse_time(args.get("since")), until=parse_time(args.get("until"), end=True),
            limit=limit, app=args.get("app") or None, before=before or None,
        )

    def people_page(self, query: str | None, number: str | int | None) -> Page[dict[str, Any]]:
        """People matching a search (login, name, email, groups, roles), most recent first;
        sessions are counted only for the page shown."""
        found = [(p, last) for p, last in self.accounts.directory()
                 if matches(query, [p.login, p.name, p.email, *p.groups, *p.roles])]
        page = paginate(found, number)
        return Page([self.person_view(p, last) for p, last in page.items], page.number,
                    page.pages, page.total)

    def sessions_page(self, query: str | None, number: str | int | None) -> Page[SessionInfo]:
        """Live sessions matching a search (login, IP, device), newest first."""
        found = [s for s in self.company_sessions()
                 if matches(query, [s.login, s.ip, describe_device(s.user_agent)])]
        return paginate(found, number)
