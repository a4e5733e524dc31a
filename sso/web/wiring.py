"""Installs the cross-cutting web concerns on the app (see the package docstring)."""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from sso.web.csrf import install_request_guard
from sso.web.errors import register_error_handlers
from sso.web.fastpath import KeycardRequest, OrjsonProvider
from sso.web.headers import SecurityHeaders
from sso.web.templating import init_app as install_templating


def init_app(app: Flask) -> None:
    app.request_class = KeycardRequest
    app.json = OrjsonProvider(app)
    issuer = app.config["SSO_SETTINGS"].issuer
    parts = urlsplit(issuer)
    own_origin = f"{parts.scheme}://{parts.netloc}"
    upstream = urlsplit(app.config["SSO_SETTINGS"].github_url)
    upstream_origin = f"{upstream.scheme}://{upstream.netloc}"
    csp = (
        "default-src 'none'; style-src 'self'; "
        f"img-src 'self' data: https: {upstream_origin}; "
        "frame-ancestors 'none'; base-uri 'none'"
    )

    install_request_guard(app, own_origin)

    defaults = [
        ("Content-Security-Policy", csp),
        ("X-Frame-Options", "DENY"),
        ("X-Content-Type-Options", "nosniff"),
        ("Referrer-Policy", "no-referrer"),
    ]
    if issuer.startswith("https://"):
        defaults.append(("Strict-Transport-Security", "max-age=63072000"))
    # Pages carry personal data, codes or tokens: never cached anywhere (static files may be).
    no_store = [("Cache-Control", "no-store"), ("Pragma", "no-cache")]
    app.wsgi_app = SecurityHeaders(  # type: ignore[method-assign]
        app.wsgi_app, pages=defaults + no_store, static=defaults
    )

    register_error_handlers(app)
    install_templating(app)

    # Behind a reverse proxy every remote_addr is the proxy's: believe X-Forwarded-For,
    # -Proto and -Host from exactly the configured number of hops (0: from nobody, since a
    # client can send those headers itself). Flask and Flask-Login then see the client's address.
    hops = app.config["SSO_SETTINGS"].trusted_proxy_hops
    if hops:
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)
