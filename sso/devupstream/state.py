"""In-memory data model of the GitHub-compatible development upstream.

Everything lives in one :class:`UpstreamState` guarded by a single lock, because the
upstream is served by a threaded WSGI server while tests mutate the same object from
their own thread (e.g. removing a user from an org between two logins).  The model
mirrors only what Keycard's GitHub connector observes: users and their e-mail
addresses, organisation memberships, nested teams, OAuth codes and tokens, and a
fault-injection queue used to rehearse GitHub's failure modes.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .webhooks import OrgWebhooks, org_json, user_json

CODE_TTL_SECONDS = 600
RATE_LIMIT = 5000
RATE_WINDOW_SECONDS = 3600
DEMO_PATH = Path(__file__).with_name("demo.yaml")
_HTTP_FAULTS = frozenset({"unauthorized", "rate_limit", "secondary_rate_limit", "saml"})
FAULT_KINDS = _HTTP_FAULTS | {"server_error", "timeout", "token_error", "redirect"}
ORG_ROLES = frozenset({"admin", "member"})
_ACTIVE = frozenset((role, "active") for role in ORG_ROLES)
PKCE_METHODS = frozenset({"S256", "plain"})


@dataclass
class Email:
    """One address from ``/user/emails``; unverified ones must never be trusted."""

    email: str
    primary: bool = False
    verified: bool = False
    visibility: str | None = None


@dataclass
class User:
    """A GitHub account. ``avatar_url`` is a path made absolute at response time."""

    id: int
    login: str
    name: str | None
    public_email: str | None
    emails: list[Email] = field(default_factory=list)
    avatar_url: str = ""


@dataclass(frozen=True)
class Org:
    """An organisation; ``description`` only exists to fill GitHub's response shape."""

    id: int
    login: str
    description: str | None = None


@dataclass(frozen=True)
class Team:
    """A team; ``parent`` is the slug of the parent team in the same org (or None)."""

    id: int
    org: str
    slug: str
    name: str
    parent: str | None = None


@dataclass(frozen=True)
class IssuedCode:
    """An authorization code: single use, short-lived, bound to the whole request."""

    code: str
    client_id: str
    redirect_uri: str
    user_id: int
    scopes: tuple[str, ...]
    expires_at: float
    code_challenge: str | None = None
    code_challenge_method: str | None = None


@dataclass(frozen=True)
class AccessToken:
    """A ``gho_`` token as GitHub issues them to OAuth apps."""

    token: str
    user_id: int
    scopes: tuple[str, ...]
    client_id: str


@dataclass
class Fault:
    """A scripted failure for the next ``remaining`` requests under ``path_prefix``.

    ``remaining`` of -1 means "until cleared".
    """

    path_prefix: str
    kind: str
    remaining: int
    params: dict[str, Any] = field(default_factory=dict)


class TokenExchangeError(ValueError):
    """Raised by :meth:`UpstreamState.exchange_code`; ``args[0]`` is GitHub's error slug."""


def parse_scopes(raw: str | None) -> tuple[str, ...]:
    """Split a requested scope string (GitHub accepts spaces or commas), de-duplicated."""
    return tuple(dict.fromkeys((raw or "").replace(",", " ").split()))


def pkce_matches(verifier: str, challenge: str, method: str) -> bool:
    """RFC 7636 check for the two methods GitHub supports."""
    if method == "S256":
        digest = hashlib.sha256(verifier.encode("ascii", "replace")).digest()
        computed = base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
    else:
        computed = verifier
    return hmac.compare_digest(computed, challenge)


class UpstreamState:
    """All users, orgs, teams, OAuth clients, codes, tokens and faults of one upstream."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.users: dict[int, User] = {}
        self.orgs: dict[str, Org] = {}
        self.org_members: dict[str, dict[int, str]] = {}
        self.org_pending: dict[str, set[int]] = {}
        self.teams: dict[tuple[str, str], Team] = {}
        self.team_members: dict[tuple[str, str], set[int]] = {}
        self.clients: dict[str, str] = {}
        self.codes: dict[str, IssuedCode] = {}
        self.tokens: dict[str, AccessToken] = {}
        self.faults: list[Fault] = []
        self.requests_seen: list[tuple[str, str]] = []
        self.headers_seen: list[tuple[str, dict[str, str]]] = []  # (path, headers) of API calls
        self._rate: dict[tuple[str, int], int] = {}
        self._next_id = 100_000
        self.webhooks = OrgWebhooks()

    # -- helpers -----------------------------------------------------------------
    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _user(self, login: str) -> User:
        user = self.user_by_login(login)
        if user is None:
            raise KeyError(f"unknown user {login!r}")
        return user

    def _org(self, login: str) -> Org:
        org = self.orgs.get(login.lower())
        if org is None:
            raise KeyError(f"unknown org {login!r}")
        return org

    # -- directory mutation (used by tests and the demo loader) ---------------------
    def add_client(self, client_id: str, client_secret: str) -> None:
        """Register an OAuth app."""
        with self._lock:
            self.clients[client_id] = client_secret

    def add_org(self, login: str, id: int | None = None, description: str | None = None) -> Org:
        """Create an organisation (logins are case-insensitive, as on GitHub)."""
        with self._lock:
            org = Org(id=id or self._new_id(), login=login, description=description)
            self.orgs[login.lower()] = org
            self.org_members.setdefault(login.lower(), {})
            self.org_pending.setdefault(login.lower(), set())
            return org

    def add_user(
        self,
        login: str,
        name: str | None = None,
        *,
        id: int | None = None,
        public_email: str | None = None,
        emails: list[Email] | list[dict[str, Any]] | None = None,
    ) -> User:
        """Create an account. Without ``emails``, ``public_email`` becomes a verified primary."""
        with self._lock:
            if self.user_by_login(login) is not None:
                raise ValueError(f"user {login!r} already exists")
            parsed = [e if isinstance(e, Email) else Email(**e) for e in (emails or [])]
            if not parsed and public_email:
                parsed = [Email(public_email, primary=True, verified=True, visibility="public")]
            uid = id or self._new_id()
            user = User(uid, login, name, public_email, parsed, f"/avatars/{uid}")
            self.users[uid] = user
            return user

    def add_org_member(
        self, org: str, login: str, role: str = "member", state: str = "active"
    ) -> None:
        """Add (or re-role) a member; ``state="pending"`` models an unaccepted invitation."""
        if role not in ORG_ROLES or state not in {"active", "pending"}:
            raise ValueError(f"bad role/state {role!r}/{state!r}")
        with self._lock:
            key = self._org(org).login.lower()
            user = self._user(login)
            added = user.id not in self.org_members[key] and state == "active"
            self.org_members[key][user.id] = role
            if state == "pending":
                self.org_pending[key].add(user.id)
            else:
                self.org_pending[key].discard(user.id)
            if added:
                self._emit_membership(key, "member_added", user)

    def remove_user_from_org(self, org: str, login: str) -> None:
        """Drop the membership and, as GitHub does, every team membership in that org."""
        with self._lock:
            key = self._org(org).login.lower()
            user = self._user(login)
            was_member = self.org_members[key].pop(user.id, None) is not None
            self.org_pending[key].discard(user.id)
            for (team_org, _slug), members in self.team_members.items():
                if team_org == key:
                    members.discard(user.id)
            if was_member:
                self._emit_membership(key, "member_removed", user)

    def _emit_membership(self, org_key: str, action: str, user: User) -> None:
        org = self.orgs[org_key]
        self.webhooks.emit(org_key, "organization", {
            "action": action,
            "membership": {"state": "active", "role": "member",
                           "user": user_json(user.id, user.login)},
            "organization": org_json(org.id, org.login)})

    def _emit_team_membership(self, org_key: str, slug: str, action: str, user: User) -> None:
        org, team = self.orgs[org_key], self.teams[(org_key, slug)]
        self.webhooks.emit(org_key, "membership", {
            "action": action, "scope": "team", "member": user_json(user.id, user.login),
            "team": {"id": team.id, "slug": team.slug, "name": team.name},
            "organization": org_json(org.id, org.login)})

    def add_team(
        self,
        org: str,
        slug: str,
        name: str | None = None,
        parent: str | None = None,
        *,
        id: int | None = None,
    ) -> Team:
        """Create a team; the parent must already exist in the same org."""
        with self._lock:
            key = self._org(org).login.lower()
            if parent is not None and (key, parent) not in self.teams:
                raise KeyError(f"unknown parent team {org}/{parent}")
            team = Team(id or self._new_id(), key, slug, name or slug, parent)
            self.teams[(key, slug)] = team
            self.team_members.setdefault((key, slug), set())
            return team

    def add_team_member(self, org: str, slug: str, login: str) -> None:
        """Add a direct member; like GitHub, this also makes them an org member."""
        with self._lock:
            key = self._org(org).login.lower()
            if (key, slug) not in self.teams:
                raise KeyError(f"unknown team {org}/{slug}")
            user = self._user(login)
            self.org_members[key].setdefault(user.id, "member")
            if user.id not in self.team_members[(key, slug)]:
                self.team_members[(key, slug)].add(user.id)
                self._emit_team_membership(key, slug, "added", user)

    def remove_team_member(self, org: str, slug: str, login: str) -> None:
        """Remove a direct team membership (no-op if absent)."""
        with self._lock:
            user = self._user(login)
            members = self.team_members.get((org.lower(), slug), set())
            if user.id in members:
                members.discard(user.id)
                self._emit_team_membership(org.lower(), slug, "removed", user)

    def user_by_login(self, login: str) -> User | None:
        """The live User object (tests may edit it), matched case-insensitively."""
        with self._lock:
            for user in self.users.values():
                if user.login.lower() == login.lower():
                    return user
            return None

    def revoke_tokens(self, login: str) -> int:
        """Invalidate every token of a user (like revoking the OAuth grant); returns count."""
        with self._lock:
            uid = self._user(login).id
            doomed = [t for t, info in self.tokens.items() if info.user_id == uid]
            for token in doomed:
                del self.tokens[token]
            return len(doomed)

    # -- faults ----------------------------------------------------------------------
    def add_fault(self, path_prefix: str, kind: str, count: int = 1, **params: Any) -> None:
        """Make the next ``count`` requests under ``path_prefix`` fail as ``kind``."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; expected one of {sorted(FAULT_KINDS)}")
        if count == 0 or count < -1:
            raise ValueError("count must be positive or -1 (until cleared)")
        with self._lock:
            self.faults.append(Fault(path_prefix, kind, count, dict(params)))

    def clear_faults(self) -> None:
        """Remove all pending faults."""
        with self._lock:
            self.faults.clear()

    def pending_faults(self) -> list[Fault]:
        """Snapshot of the fault queue (for the /_dev/faults listing)."""
        with self._lock:
            return copy.deepcopy(self.faults)

    def take_fault(self, path: str) -> Fault | None:
        """Consume one use of the first fault matching ``path`` (atomic across threads)."""
        with self._lock:
            for fault in self.faults:
                if path.startswith(fault.path_prefix):
                    if fault.remaining > 0:
                        fault.remaining -= 1
                        if fault.remaining == 0:
                            self.faults.remove(fault)
                    return copy.deepcopy(fault)
            return None

    def record_request(
        self, method: str, path: str, headers: dict[str, str] | None = None
    ) -> None:
        """Remember a request so tests can assert what the connector called and sent."""
        with self._lock:
            self.requests_seen.append((method, path))
            if headers is not None:
                self.headers_seen.append((path, headers))

    def note_api_call(self, key: str) -> tuple[int, int]:
        """Count an API call against ``key``'s hourly budget; returns (used, reset epoch)."""
        reset = (int(time.time()) // RATE_WINDOW_SECONDS + 1) * RATE_WINDOW_SECONDS
        with self._lock:
            used = min(self._rate.get((key, reset), 0) + 1, RATE_LIMIT)
            self._rate[(key, reset)] = used
            return used, reset

    # -- OAuth ---------------------------------------------------------------------
    def client_known(self, client_id: str | None) -> bool:
        with self._lock:
            return bool(client_id) and client_id in self.clients

    def create_code(
        self,
        client_id: str,
        redirect_uri: str,
        login: str,
        scope: str | None,
        code_challenge: str | None = None,
        code_challenge_method: str | None = None,
    ) -> str:
        """Issue a 20-hex-digit code (GitHub's format) valid for ten minutes."""
        method = code_challenge_method or ("plain" if code_challenge else None)
        if method is not None and method not in PKCE_METHODS:
            raise ValueError(f"unsupported code_challenge_method {method!r}")
        with self._lock:
            code = secrets.token_hex(10)
            expires = time.time() + CODE_TTL_SECONDS
            pkce = (code_challenge, method) if code_challenge else (None, None)
            user_id, scopes = self._user(login).id, parse_scopes(scope)
            self.codes[code] = IssuedCode(
                code, client_id, redirect_uri, user_id, scopes, expires, *pkce
            )
            return code

    def exchange_code(
        self,
        client_id: str | None,
        client_secret: str | None,
        code: str | None,
        redirect_uri: str | None = None,
        code_verifier: str | None = None,
    ) -> AccessToken:
        """Trade a code for a token, raising TokenExchangeError with GitHub's error slug.

        A presented code is burnt even when the exchange then fails, so a replayed or
        mismatched code can never be retried into a token.
        """
        with self._lock:
            expected = self.clients.get(client_id or "")
            if expected is None or not hmac.compare_digest(expected, client_secret or ""):
                raise TokenExchangeError("incorrect_client_credentials")
            issued = self.codes.pop(code or "", None)
            if (
                issued is None
                or issued.expires_at < time.time()
                or issued.client_id != client_id
                or issued.user_id not in self.users
            ):
                raise TokenExchangeError("bad_verification_code")
            if redirect_uri and redirect_uri != issued.redirect_uri:
                raise TokenExchangeError("redirect_uri_mismatch")
            challenge, method = issued.code_challenge, issued.code_challenge_method or "plain"
            if challenge and not pkce_matches(code_verifier or "", challenge, method):
                raise TokenExchangeError("bad_verification_code")
            token = AccessToken(
                "gho_" + secrets.token_urlsafe(30), issued.user_id, issued.scopes, client_id
            )
            self.tokens[token.token] = token
            return token

    def token_info(self, token: str) -> tuple[AccessToken, User] | None:
        """Resolve a bearer token to (token, snapshot of its user)."""
        with self._lock:
            info = self.tokens.get(token)
            if info is None or info.user_id not in self.users:
                return None
            return info, copy.deepcopy(self.users[info.user_id])

    # -- directory queries (return snapshots, safe outside the lock) -----------------
    def all_users(self) -> list[User]:
        with self._lock:
            return [copy.deepcopy(u) for u in sorted(self.users.values(), key=lambda u: u.id)]

    def all_orgs(self) -> list[Org]:
        with self._lock:
            return sorted(self.orgs.values(), key=lambda o: o.id)

    def all_teams(self) -> list[Team]:
        with self._lock:
            return sorted(self.teams.values(), key=lambda t: (self.orgs[t.org].id, t.id))

    def org(self, login: str) -> Org | None:
        with self._lock:
            return self.orgs.get(login.lower())

    def membership(self, org: str, user_id: int) -> tuple[str, str] | None:
        """(role, state) of ``user_id`` in ``org``, or None when not a member at all."""
        with self._lock:
            key = org.lower()
            role = self.org_members.get(key, {}).get(user_id)
            if role is None:
                return None
            return role, "pending" if user_id in self.org_pending.get(key, set()) else "active"

    def orgs_for_user(self, user_id: int) -> list[Org]:
        """Orgs with an *active* membership, in org-id order."""
        with self._lock:
            return [o for o in self.all_orgs() if self.membership(o.login, user_id) in _ACTIVE]

    def teams_for_user(self, user_id: int) -> list[Team]:
        """Direct team memberships only, ordered by org then team id."""
        with self._lock:
            return [t for t in self.all_teams() if user_id in self.team_members[(t.org, t.slug)]]

    def team(self, org: str, slug: str) -> Team | None:
        with self._lock:
            return self.teams.get((org.lower(), slug))


def load_demo_state(path: str | Path | None = None) -> UpstreamState:
    """Build a state from a demo YAML file (defaults to the bundled ``demo.yaml``)."""
    data = yaml.safe_load(Path(path or DEMO_PATH).read_text(encoding="utf-8")) or {}
    state = UpstreamState()
    for client_id, secret in (data.get("clients") or {}).items():
        state.add_client(str(client_id), str(secret))
    for org in data.get("orgs") or []:
        state.add_org(org["login"], id=org.get("id"), description=org.get("description"))
        for t in org.get("teams") or []:
            state.add_team(org["login"], t["slug"], t.get("name"), t.get("parent"), id=t.get("id"))
    for user in data.get("users") or []:
        state.add_user(
            user["login"],
            user.get("name"),
            id=user.get("id"),
            public_email=user.get("public_email"),
            emails=user.get("emails"),
        )
        for org_login, role in (user.get("orgs") or {}).items():
            state.add_org_member(org_login, user["login"], role)
        for ref in user.get("teams") or []:
            org_login, slug = ref.split("/", 1)
            state.add_team_member(org_login, slug, user["login"])
    return state
