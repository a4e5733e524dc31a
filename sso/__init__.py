"""Keycard: single sign-on with GitHub federation and an OpenID Connect provider.

:func:`create_app` builds everything; nothing connects or reads the environment
at import time.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from pathlib import Path

from dotenv import dotenv_values
from flask import Flask

from sso import audit, forward_auth, health, logs, metrics, portal, registry
from sso.admin import api as admin_api
from sso.admin import console as admin
from sso.cli import groups as cli_groups
from sso.config import Settings, load_settings
from sso.device import views as device
from sso.hooks import views as hooks
from sso.login import users
from sso.login import views as auth
from sso.oidc import lean
from sso.oidc import views as oidc_views
from sso.sessions import RedisSessionInterface
from sso.upstream.base import Connector
from sso.web import wiring as web

ROOT = Path(__file__).resolve().parent.parent
# templates/ and static/: inside the package in an installed wheel, at the top of the
# repository in a checkout (editable install).
_PACKAGE = Path(__file__).resolve().parent
RESOURCES = _PACKAGE if (_PACKAGE / "templates").is_dir() else ROOT


def create_app(
    settings: Settings | Mapping[str, str] | None = None, *, connector: Connector | None = None
) -> Flask:
    """Build a Keycard app.

    ``settings`` may be a :class:`Settings`, a mapping of ``SSO_*`` variables, or
    ``None`` to read the environment (and ``.env`` in the working directory).
    """
    if not isinstance(settings, Settings):
        if settings is None:
            environ = {**dotenv_values(".env"), **os.environ}
            settings = load_settings({k: v for k, v in environ.items() if v is not None})
        else:
            settings = load_settings(settings)

    app = Flask(
        __name__,
        template_folder=str(RESOURCES / "templates"),
        static_folder=str(RESOURCES / "static"),
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
    )
    logs.install_log_handler()  # JSON lines on stderr, unless logging is configured
    audit.install_log_handler()  # one JSON line per audit event on stderr
    for warning in settings.warnings:  # weak but allowed settings, once per process start
        logging.getLogger("keycard.config").warning("%s", warning)

    reg = registry.build(app, settings, connector)
    app.extensions[registry.EXTENSION] = reg
    # An evicting or forgetful Redis, said once and loudly; in the background, so that a
    # slow or unreachable Redis (a hung sentinel) never holds up the start.
    threading.Thread(target=reg.readiness.log_at_start, args=(settings.redis_url,),
                     name="keycard-redis-check", daemon=True).start()
    cookie = _cookie_name(settings)
    app.session_interface = RedisSessionInterface(reg.sessions, cookie_name=cookie)

    # Innermost: the headers, metrics and ids below wrap them too.
    lean.install(app, reg)
    app.wsgi_app = forward_auth.LeanVerify(app.wsgi_app, reg, cookie)  # type: ignore[method-assign]
    web.init_app(app)
    users.init_app(app)
    for module in (auth, portal, health, admin, admin_api, forward_auth, device, oidc_views,
                   hooks):
        app.register_blueprint(module.bp)
    app.wsgi_app = metrics.RequestMetrics(app.wsgi_app)  # type: ignore[method-assign]
    app.wsgi_app = logs.RequestIds(app.wsgi_app)  # type: ignore[method-assign]
    cli_groups.init_app(app)
    return app


def _cookie_name(settings: Settings) -> str:
    if not settings.secure_cookies:
        return "keycard_session"
    # __Host- forbids a Domain attribute; forward auth across subdomains needs one.
    return "__Secure-keycard" if settings.cookie_domain else "__Host-keycard"
