"""The scopes Keycard knows, and the plain words people read for them on consent pages."""

from __future__ import annotations

SUPPORTED_SCOPES = ("openid", "profile", "email", "groups", "roles", "offline_access")

SCOPE_WORDS = {
    "openid": "Know who you are (a stable, opaque identifier)",
    "profile": "See your name, GitHub login and avatar",
    "email": "See your verified email address",
    "groups": "See your GitHub organisations and teams",
    "roles": "See the roles Keycard gives you",
    "offline_access": "Stay signed in when you are away (refresh tokens)",
}
