"""Keycard: single sign-on with GitHub federation and an OpenID Connect provider.

:func:`create_app` builds everything; nothing connects or reads the environment
at import time.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dotenv import dotenv_values
from flask import Flask

from sso import admin, admin_api, auth, device, forward_auth, health, metrics, portal, users, web
from sso.accounts import Accounts
from sso.audit import Audit
from sso.config import Settings, load_settings
from sso.crypto import Sealer
from sso.rules_store import RuleStore
from sso.services import Services
from sso.sessions import RedisSessionInterface, SessionStore
from sso.signin import SignInFlow
from sso.storage import Store, connect
from sso.upstream.github import GitHubConfig, GitHubConnector

ROOT = Path(__file__).resolve().parent.parent


def create_app(
    settings: Settings | Mapping[str, str] | None = None, *, connector: Any = None
) -> Flask:
    """Build a Keycard app.

    ``settings`` may be a :class:`Settings`, a mapping of ``SSO_*`` variables, or
    ``None`` to read the environment (and ``.env`` in the working directory).
    """
    if not isinstance(settings, Settings):
        if settings is None:
            environ = {**dotenv_values(".env"), **__import__("os").environ}
            settings = load_settings({k: v for k, v in environ.items() if v is not None})
        else:
            settings = load_settings(settings)

    app = Flask(
        __name__,
        template_folder=str(ROOT / "templates"),
        static_folder=str(ROOT / "static"),
        instance_path=str(Path.cwd() / "instance"),
    )
    secure = settings.secure_cookies
    app.config.update(
        SECRET_KEY=settings.secret_key,
        SSO_SETTINGS=settings,
        PREFERRED_URL_SCHEME="https" if secure else "http",
        SESSION_COOKIE_SECURE=secure,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_DOMAIN=settings.cookie_domain or False,
        WTF_CSRF_TIME_LIMIT=None,  # tied to the session's own lifetime
        # Referrer-Policy: no-referrer means browsers send no Referer; Origin is checked instead.
        WTF_CSRF_SSL_STRICT=False,
        MAX_CONTENT_LENGTH=1024 * 1024,
        JSON_SORT_KEYS=False,
    )
    logging.getLogger("keycard").setLevel(logging.INFO)

    prefix = settings.redis_prefix
    if "+cluster" in settings.redis_url.split("://", 1)[0] and "{" not in prefix:
        # Scripts and transactions touch several keys: in a cluster they must share a slot.
        prefix = "{" + prefix.rstrip(":") + "}:"
    store = Store(connect(settings.redis_url), prefix)
    sealer = Sealer(settings.secret_key)
    if connector is None:
        connector = GitHubConnector(
            GitHubConfig(
                client_id=settings.github_client_id,
                client_secret=settings.github_client_secret,
                web_url=settings.github_url,
                api_url=settings.github_api_url,
                allowed_orgs=settings.github_orgs if not settings.allow_any_github_user else (),
                timeout=settings.upstream_timeout,
            )
        )
    sessions = SessionStore(
        store, idle=settings.session_idle_seconds, absolute=settings.session_absolute_seconds
    )
    audit = Audit(store, settings.audit_max_events)
    rules = RuleStore(store)
    accounts = Accounts(
        store=store,
        settings=settings,
        connector=connector,
        sealer=sealer,
        sessions=sessions,
        audit=audit,
        rules=rules.all,
    )
    app.extensions["keycard"] = Services(
        settings=settings,
        store=store,
        sealer=sealer,
        connector=connector,
        sessions=sessions,
        audit=audit,
        accounts=accounts,
        signin=SignInFlow(
            store, connector, f"{settings.issuer}/auth/github/callback",
            settings.login_state_seconds,
        ),
        rules=rules,
    )
    app.session_interface = RedisSessionInterface(sessions, cookie_name=_cookie_name(settings))

    web.init_app(app)
    users.init_app(app)
    for module in (auth, portal, health, metrics, admin, admin_api, forward_auth, device):
        app.register_blueprint(module.bp)
    app.wsgi_app = metrics.RequestMetrics(app.wsgi_app)  # type: ignore[method-assign]
    from sso import cli, oidc

    oidc.init_app(app, app.extensions["keycard"])

    cli.init_app(app)
    return app


def _cookie_name(settings: Settings) -> str:
    if not settings.secure_cookies:
        return "keycard_session"
    # __Host- forbids a Domain attribute; forward auth across subdomains needs one.
    return "__Secure-keycard" if settings.cookie_domain else "__Host-keycard"
