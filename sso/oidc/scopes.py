"""The scopes Keycard knows, and the plain words people read for them on consent pages."""

from __future__ import annotations

from collections.abc import Iterable

SUPPORTED_SCOPES = ("openid", "profile", "email", "groups", "roles", "offline_access")

SCOPE_WORDS = {
    "openid": "Know who you are (a stable, opaque identifier)",
    "profile": "See your name, GitHub login and avatar",
    "email": "See your verified email address",
    "groups": "See your GitHub organisations and teams",
    "roles": "See the roles Keycard gives you",
    "offline_access": "Stay signed in when you are away (refresh tokens)",
}


def scope_words(scopes: Iterable[str]) -> list[str]:
    """The plain words for these scopes, in the usual order: the consent and device screens
    and the portal's "Apps you allowed" all say the same thing. Unknown scopes are dropped."""
    given = set(scopes.split()) if isinstance(scopes, str) else set(scopes)
    return [SCOPE_WORDS[s] for s in SUPPORTED_SCOPES if s in given]
