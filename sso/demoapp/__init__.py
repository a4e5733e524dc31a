"""A small internal app that signs in through Keycard: the relying party of ``sso dev``.

It is deliberately ordinary: Authlib's Flask client pointed at the issuer's
discovery document and nothing else, the way any internal app would integrate.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from authlib.integrations.flask_client import OAuth, OAuthError
from flask import Flask, redirect, render_template, session, url_for
from werkzeug.wrappers import Response

# templates/ and static/: inside the package in an installed wheel, at the top of the
# repository in a checkout (editable install).
ROOT = next((p for p in Path(__file__).resolve().parents[1:3] if (p / "templates").is_dir()),
            Path(__file__).resolve().parents[2])
SCOPES = "openid profile email groups roles"


def create_demo_app(*, issuer: str, client_id: str, client_secret: str, base_url: str) -> Flask:
    app = Flask(__name__, template_folder=str(ROOT / "templates"),
                static_folder=str(ROOT / "static"))
    app.config.update(
        SECRET_KEY=secrets.token_urlsafe(32),
        # Same host as Keycard in development: a distinct cookie name keeps them apart.
        SESSION_COOKIE_NAME="demoapp_session",
        SESSION_COOKIE_SAMESITE="Lax",
    )
    oauth = OAuth(app)
    keycard = oauth.register(
        "keycard",
        client_id=client_id,
        client_secret=client_secret,
        server_metadata_url=f"{issuer}/.well-known/openid-configuration",
        client_kwargs={"scope": SCOPES, "code_challenge_method": "S256"},
    )

    @app.get("/")
    def index() -> str:
        claims: dict[str, Any] | None = session.get("claims")
        return render_template("demoapp/index.html", claims=claims, issuer=issuer)

    @app.get("/login")
    def login() -> Response:
        return keycard.authorize_redirect(f"{base_url}/callback")  # type: ignore[no-any-return]

    @app.get("/callback")
    def callback() -> Response | tuple[str, int]:
        try:
            token = keycard.authorize_access_token()
        except OAuthError as exc:
            return render_template("demoapp/index.html", claims=None, issuer=issuer,
                                   error=exc.description or exc.error), 400
        session["claims"] = dict(token["userinfo"])
        session["id_token"] = token["id_token"]
        return redirect(url_for("index"))

    @app.get("/logout")
    def logout() -> Response:
        """RP-initiated logout: end the Keycard session too, then come back here."""
        id_token = session.pop("id_token", None)
        session.clear()
        metadata = keycard.load_server_metadata()
        params = {"post_logout_redirect_uri": f"{base_url}/", "client_id": client_id}
        if id_token:
            params["id_token_hint"] = id_token
        return redirect(f"{metadata['end_session_endpoint']}?{urlencode(params)}")

    return app
