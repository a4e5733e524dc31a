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
from sso.oidc.client_file import ImportPlan, plan_import
from sso.oidc.client_registry import ClientRegistry
from sso.oidc.clients import Client, ClientError
from sso.oidc.keys import KeyRing
from sso.roles import ADMIN_ROLE, Rule, evaluate, explain
from sso.rules_store import RuleError, RuleStore, check_roles, describe, parse_target, rule_to_dict
from sso.sessions import SessionInfo, SessionStore
from sso.upstream.base import Connector, UpstreamError
from sso.useragent import describe as describe_device

AUDIT_LIMIT = 200
# A rule change recomputes the live roles of the people it can touch within the request
# (one or two Redis round trips each); beyond this many it leaves them to the next
# membership re-check or "Apply now", so an admin's click never holds a worker for long.
APPLY_NOW_LIMIT = 500
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


class UpstreamLookupError(RuleError):
    """GitHub could not be asked who a login is (down, slow, rate limiting): try later."""


@dataclass(frozen=True)
class RuleChange:
    """What adding or removing a rule did, for the console's message and the API's answer."""

    rule: Rule  # the rule added (as stored) or the rule removed (as it was)
    left: Rule | None  # after a removal: what remains of it (None: gone)
    affected: int  # people who have signed in and match the rule
    applied: int | None  # whose live roles changed now; None: too many, left to re-checks
    notes: tuple[str, ...] = ()  # e.g. "octocat is GitHub user 583231; rule bound to that id"

    def applied_text(self) -> str:
        if self.applied is None:
            return (f"{self.affected} people match, too many to update at once: their roles "
                    "change at their next membership re-check, or press Apply now")
        people = "person" if self.applied == 1 else "people"
        return f"roles updated for {self.applied} {people} now"

    def as_dict(self) -> dict[str, Any]:
        return {"affected": self.affected, "applied": self.applied, "notes": list(self.notes),
                "message": self.applied_text()}


def split_roles_or_none(value: str | list[Any] | None) -> tuple[str, ...]:
    """Like :func:`split_roles`, but nothing is allowed (an app any employee may use)."""
    if value is None or (isinstance(value, str) and not value.strip()) or value == []:
        return ()
    return split_roles(value)


def split_lines(value: str | list[Any] | None) -> list[str]:
    """A textarea (one item per line; commas and spaces also separate) or a JSON list."""
    if value is None:
        return []
    if isinstance(value, str):
        return [part for part in re.split(r"[,\s]+", value) if part]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ClientError("expected a list of strings")
    return [v.strip() for v in value if v.strip()]


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
                 sessions: SessionStore, audit: Audit, clients: ClientRegistry,
                 keys: KeyRing, connector: Connector) -> None:
        self.settings = settings
        self.rules = rules
        self.accounts = accounts
        self.sessions = sessions
        self.audit = audit
        self.clients = clients
        self.keys = keys
        self.connector = connector

    def resolve_user(self, login: str) -> tuple[str, str, str]:
        """A login → (numeric id, login, note). Someone who has signed in is known here;
        anyone else is asked of GitHub (``GET /users/{login}``), and the note says so."""
        login = login.strip().lstrip("@")
        profile = self.accounts.find_by_login(login)
        if profile is not None:
            return profile.user_id, profile.login, ""
        try:
            found = self.connector.find_user(login)
        except UpstreamError as exc:
            raise UpstreamLookupError(
                f"{login} has not signed in to Keycard yet, and GitHub could not be asked "
                f"who they are: {exc.message}") from exc
        if found is None:
            raise RuleError(f"GitHub has no user {login!r}: check the spelling")
        if found.kind == "Organization":
            raise RuleError(f"{found.login} is a GitHub organisation, not a person: write "
                            f"{found.login.lower()} (without @) for an organisation rule")
        return (found.user_id, found.login,
                f"{found.login} is GitHub user {found.user_id}; rule bound to that id")

    def resolve_target(self, text: str) -> tuple[str, str, str]:
        """``ORG``, ``ORG/TEAM`` or ``@login`` → (kind, target, label); users by numeric id."""
        return self.resolve_target_noted(text)[:3]

    def resolve_target_noted(self, text: str) -> tuple[str, str, str, str]:
        """:meth:`resolve_target` and the note of a login resolved through GitHub."""
        if not isinstance(text, str) or not text.strip():
            raise RuleError("enter ORG, ORG/TEAM or @login")
        kind, target = parse_target(text)
        if kind != "user":
            return kind, target, "", ""
        user_id, login, note = self.resolve_user(target)
        return kind, user_id, login, note

    def rule_warnings(self, kind: str, target: str) -> list[str]:
        """Why a well-formed rule may match nobody: an organisation people cannot sign in
        from, or a team nobody who has signed in belongs to (a typo, most often)."""
        if kind == "user":
            return []
        org = target.partition("/")[0]
        allowed = [o.lower() for o in self.settings.github_orgs]
        if allowed and not self.settings.allow_any_github_user and org not in allowed:
            return [f"{org} is not an allowed organisation (SSO_GITHUB_ORGS: "
                    f"{', '.join(allowed)}): nobody from it can sign in, so {target} "
                    "matches nobody"]
        if kind == "team" and not any(target in p.teams for p, _ in self.accounts.directory()):
            return [f"{target} matches nobody: no one who has signed in is in that team "
                    "(check the spelling; it applies once a member signs in)"]
        return []

    def known_roles(self) -> list[str]:
        """Roles already in use (rules, apps, admin): suggestions for the rule form."""
        roles = {ADMIN_ROLE, *(r for rule in self.rules.all() for r in rule.roles)}
        for client in self.clients.list():
            roles.update(client.required_roles)
            roles.update(client.roles)
        return sorted(roles)

    def _rule_subject(self, rule: Rule) -> str:
        return rule.label if rule.kind == "user" else rule.target

    def _apply_for(self, rule: Rule, actor: str) -> tuple[int, int | None]:
        """Recompute now the live roles of the people ``rule`` matches (bounded)."""
        people = [p.user_id for p, _ in self.accounts.directory()
                  if rule.matches(p.user_id, p.orgs, p.teams)]
        return len(people), self.accounts.apply_rules_to(people, actor=actor,
                                                         limit=APPLY_NOW_LIMIT)

    def add_rule(self, target_text: str, roles: str | list[Any] | None, *,
                 actor: str) -> RuleChange:
        """Store the rule, then update the live sessions of the people it matches."""
        checked = split_roles(roles)
        kind, target, label, note = self.resolve_target_noted(target_text)
        store = self.rules
        before = next((r for r in store.all() if (r.kind, r.target) == (kind, target)), None)
        after = store.map(kind, target, checked, label)
        self.audit.record(
            "rules.changed", actor=actor, subject=self._rule_subject(after),
            before=rule_to_dict(before) if before else None, after=rule_to_dict(after),
            **({"resolved": note} if note else {}),
        )
        affected, applied = self._apply_for(after, actor)
        return RuleChange(after, after, affected, applied, (note,) if note else ())

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

    def remove_rule(self, rule: Rule, roles: tuple[str, ...], *,
                    actor: str) -> RuleChange | None:
        """Remove ``roles`` from ``rule`` (the whole rule when empty), then update the live
        sessions of the people it matched; ``None`` when it was already gone."""
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
        affected, applied = self._apply_for(before, actor)
        return RuleChange(before, after, affected, applied)

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

    # -- apps (OIDC clients) and signing keys: the console, the API and the CLI ---------------

    def list_apps(self) -> list[Client]:
        return self.clients.list()

    def get_app(self, client_id: str) -> Client | None:
        return self.clients.get(client_id)

    def create_app(self, fields: dict[str, Any], *, actor: str) -> tuple[Client, str | None]:
        """Register a client (ClientError says why not); its secret is returned once."""
        fields = dict(fields)
        public = fields.pop("public", False)
        if not isinstance(public, bool):
            raise ClientError("public must be true or false")
        if "name" not in fields:
            raise ClientError("a client needs a name")
        client, secret = self.clients.create(public=public, **fields)
        self.record_created(client, actor=actor)
        return client, secret

    def record_created(self, client: Client, *, actor: str, **details: Any) -> None:
        """The one ``client.created`` audit event, whichever way a client was registered."""
        self.audit.record(
            "client.created", actor=actor, subject=client.client_id, name=client.name,
            public=client.public, redirect_uris=client.redirect_uris,
            grant_types=client.grant_types, scopes=client.scopes,
            required_roles=client.required_roles, trusted=client.trusted, **details,
        )

    def update_app(self, client_id: str, changes: dict[str, Any], *, actor: str,
                   **details: Any) -> Client:
        """Apply ``changes`` (validated as a whole; ClientError: nothing is written)."""
        before = self.clients.get(client_id)
        if before is None:
            raise ClientError(f"no client {client_id!r}")
        client = self.clients.update(client_id, **changes)
        changed = sorted(k for k in changes if before.to_dict()[k] != client.to_dict()[k])
        if changed:
            self.audit.record("client.updated", actor=actor, subject=client_id,
                              changes=changed,
                              before={k: before.to_dict()[k] for k in changed},
                              after={k: client.to_dict()[k] for k in changed}, **details)
        return client

    def delete_app(self, client_id: str, *, actor: str) -> Client | None:
        """Remove a client (its grants and tokens end); ``None`` when there was none."""
        client = self.clients.get(client_id)
        if client is None or not self.clients.delete(client_id):
            return None
        self.audit.record("client.deleted", actor=actor, subject=client_id, name=client.name)
        return client

    def rotate_app_secret(self, client_id: str, *, actor: str,
                          revoke_tokens: bool = False) -> str:
        """A new secret, returned once; the old one stops working (ClientError: public or
        unknown client)."""
        secret = self.clients.rotate_secret(client_id, revoke_tokens=revoke_tokens)
        self.audit.record("client.secret_rotated", actor=actor, subject=client_id,
                          revoke_tokens=revoke_tokens)
        return secret

    def plan_app_import(self, text: str) -> ImportPlan:
        """Validate a whole clients file against what is stored (ClientError says where)."""
        return plan_import(text, {c.client_id: c for c in self.clients.list()})

    def import_apps(self, text: str, *, actor: str, source: str) -> tuple[ImportPlan,
                                                                          dict[str, str]]:
        """Create and update every client of the file in one transaction; returns the plan
        applied and the secrets of the new confidential clients (shown once)."""
        plan, secrets = self.clients.apply_import(lambda current: plan_import(text, current))
        for change in plan.changes:
            client = change.after
            if change.before is None:
                self.record_created(client, actor=actor, source=source)
            elif change.fields:
                before = change.before.to_dict()
                after = client.to_dict()
                self.audit.record("client.updated", actor=actor, subject=client.client_id,
                                  changes=list(change.fields),
                                  before={k: before[k] for k in change.fields},
                                  after={k: after[k] for k in change.fields}, source=source)
        return plan, secrets

    def signing_keys(self) -> list[dict[str, Any]]:
        """Every key in JWKS with its state (active, next, retired) and dates."""
        return self.keys.list()

    def rotate_keys(self, *, actor: str, grace: int = 3600,
                    publish_delay: int = 0) -> list[str]:
        """New signing keys (ValueError for negative times); old ones stay for ``grace``."""
        kids = self.keys.rotate(grace_seconds=grace, publish_delay=publish_delay)
        self.audit.record("keys.rotated", actor=actor, new_kids=kids, grace=grace,
                          publish_delay=publish_delay)
        return kids
