"""The browser user for Flask-Login, loaded from the session's profile snapshot."""

from __future__ import annotations

from flask import Flask, session
from flask_login import LoginManager, UserMixin

from sso.accounts import Profile
from sso.registry import registry
from sso.roles import ADMIN_ROLE
from sso.sessions import ServerSession

login_manager = LoginManager()


class User(UserMixin):  # type: ignore[misc]
    """A signed-in person; ``profile`` is the snapshot stored with the session."""

    def __init__(self, profile: Profile) -> None:
        self.profile = profile

    def get_id(self) -> str:
        return self.profile.user_id

    @property
    def login(self) -> str:
        return self.profile.login

    @property
    def is_admin(self) -> bool:
        return ADMIN_ROLE in self.profile.roles


def load_user(user_id: str) -> User | None:
    """Trust only the server-side snapshot; re-check membership when it is too old."""
    if not isinstance(session, ServerSession) or session.profile is None:
        return None
    if session.user_id != user_id:
        return None
    svc = registry()
    if svc.accounts.is_stale(session.profile):
        fresh = svc.accounts.recheck(user_id)
        if fresh is None:
            session.end()
            return None
        session.profile = fresh.as_dict()
    return User(Profile.from_dict(session.profile))


def session_user() -> User | None:
    """This request's signed-in person, for hot paths that need nothing else from
    Flask-Login (which hashes the IP and user agent on every load, even with session
    protection off). Same rules: :func:`load_user` on the id Flask-Login stored."""
    user_id = session.get("_user_id")
    return load_user(user_id) if isinstance(user_id, str) else None


def init_app(app: Flask) -> None:
    login_manager.init_app(app)
    login_manager.login_view = "auth.login"
    login_manager.login_message = ""
    # The server-side session already binds the browser; IP/UA pinning breaks mobile users.
    login_manager.session_protection = None
    login_manager.user_loader(load_user)
