"""The upstream seam, in the spirit of Dex's connector interface.

A connector has three verbs: build the login URL, handle the callback (code ->
identity), and refresh (re-read an identity with the stored upstream token).
Failures are typed: each kind carries the message a person should read and the
HTTP status the page is served with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class UpstreamToken:
    access_token: str
    scope: str = ""


@dataclass(frozen=True)
class Identity:
    """A person as the upstream knows them, normalised."""

    user_id: str  # the upstream's numeric id, as a string: the only stable key
    login: str
    name: str | None
    email: str | None  # the primary verified address, or None
    email_verified: bool
    avatar_url: str | None
    orgs: tuple[str, ...] = ()
    teams: tuple[str, ...] = ()  # "org/team" slugs, parents of nested teams included

    @property
    def groups(self) -> list[str]:
        """``org`` and ``org:team`` strings, as the tokens and the portal show them."""
        return sorted(self.orgs) + sorted(t.replace("/", ":", 1) for t in self.teams)


@dataclass(frozen=True)
class UpstreamUser:
    """An account the upstream knows by login, before it has signed in here."""

    user_id: str  # the numeric id, as a string
    login: str  # as the upstream spells it
    kind: str = "User"  # "User", "Bot" or "Organization" (GitHub answers /users/ for orgs too)


class UpstreamError(Exception):
    """Base of every upstream failure; subclasses say what kind."""

    status = 502
    title = "GitHub sign-in failed"
    audit_reason = "upstream_error"

    def __init__(self, message: str, *, detail: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail  # for logs only, never shown


class AccessDenied(UpstreamError):
    status = 403
    title = "Sign-in cancelled"
    audit_reason = "upstream_access_denied"


class BadCredentials(UpstreamError):
    status = 502
    title = "GitHub rejected the sign-in"
    audit_reason = "upstream_bad_credentials"


class RateLimited(UpstreamError):
    status = 503
    title = "GitHub is rate limiting us"
    audit_reason = "upstream_rate_limited"

    def __init__(self, message: str, *, retry_after: int, detail: str = "") -> None:
        super().__init__(message, detail=detail)
        self.retry_after = retry_after


class SamlSsoRequired(UpstreamError):
    status = 403
    title = "Your organisation requires SAML single sign-on"
    audit_reason = "upstream_saml_required"

    def __init__(self, message: str, *, url: str | None, detail: str = "") -> None:
        super().__init__(message, detail=detail)
        self.url = url


class UpstreamUnavailable(UpstreamError):
    status = 503
    title = "GitHub is not answering"
    audit_reason = "upstream_unavailable"


class UpstreamMalformed(UpstreamError):
    """GitHub's answer could not be used: not JSON, the wrong shape, a field missing, or
    larger than Keycard reads. A 502, never a 500, and for a membership re-check an
    upstream failure like any other (the profile is kept, within its bound)."""

    status = 502
    title = "GitHub answered in an unexpected way"
    audit_reason = "upstream_malformed"


class NotAMember(UpstreamError):
    status = 403
    title = "Not a member of an allowed organisation"
    audit_reason = "not_a_member"


@runtime_checkable
class Connector(Protocol):
    """What the login flow needs from an upstream."""

    name: str

    def login_url(
        self, *, redirect_uri: str, state: str, code_verifier: str, login_hint: str | None = None,
        select_account: bool = False,
    ) -> str:
        """Where to send the browser to sign in upstream (``login_hint`` pre-selects an account;
        ``select_account`` asks the upstream to offer its account picker, not the account the
        browser is signed in with: "Use a different GitHub account")."""
        ...

    def handle_callback(self, *, code: str, redirect_uri: str, code_verifier: str) -> tuple[
        Identity, UpstreamToken
    ]:
        """Exchange the code and read the identity; raise :class:`UpstreamError`."""
        ...

    def refresh(self, token: UpstreamToken) -> Identity:
        """Re-read the identity (membership changes) with the stored token."""
        ...

    def find_user(self, login: str) -> UpstreamUser | None:
        """The account ``login`` names, asked as the OAuth app (no person's token): lets an
        admin bind a rule to someone who has not signed in yet. ``None`` when the upstream
        knows no such login; :class:`UpstreamError` when it cannot answer."""
        ...

    def forget_teams(self) -> None:
        """Team names or nesting changed upstream (a webhook said so): drop any cached
        team hierarchy, so the next read of a person's teams asks again."""
        ...


def valid_login(login: str) -> bool:
    """GitHub's login syntax: 1–39 letters, digits or hyphens (organisation names too)."""
    return 0 < len(login) <= 39 and all(c.isalnum() or c == "-" for c in login)
