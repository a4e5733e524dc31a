"""A small internal app that signs in through Keycard: the relying party of ``sso dev``.

It is deliberately ordinary: Authlib's Flask client pointed at the issuer's
discovery document and nothing else, the way any internal app would integrate.
"""

from __future__ import annotations

import secrets
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import requests
from authlib.integrations.flask_client import OAuth, OAuthError
from flask import Flask, redirect, render_template, request, session, url_for
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from werkzeug.wrappers import Response

# templates/ and static/: inside the package in an installed wheel, at the top of the
# repository in a checkout (editable install).
ROOT = next((p for p in Path(__file__).resolve().parents[1:3] if (p / "templates").is_dir()),
            Path(__file__).resolve().parents[2])
SCOPES = "openid profile email groups roles"
LOGOUT_EVENT = "http://schemas.openid.net/event/backchannel-logout"


class EndedSessions:
    """Keycard sessions a logout token ended (by ``sid``), so this app ends its own for
    them at their next request: a cookie session cannot be deleted from outside."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ended: dict[str, float] = {}

    def add(self, sid: str) -> None:
        with self._lock:
            now = time.time()
            self._ended = {k: v for k, v in self._ended.items() if now - v < 86_400}
            self._ended[sid] = now

    def __contains__(self, sid: object) -> bool:
        with self._lock:
            return sid in self._ended


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

    ended = EndedSessions()

    def keyset() -> KeySet:
        jwks = requests.get(keycard.load_server_metadata()["jwks_uri"], timeout=5).json()
        return KeySet.import_key_set(jwks)

    @app.get("/")
    def index() -> str:
        claims: dict[str, Any] | None = session.get("claims")
        notice = None
        if claims and claims.get("sid") in ended:
            session.clear()  # Keycard said this session ended (back-channel logout)
            claims, notice = None, "You were signed out at Keycard."
        return render_template("demoapp/index.html", claims=claims, issuer=issuer,
                               notice=notice)

    @app.post("/backchannel-logout")
    def backchannel_logout() -> tuple[str, int, dict[str, str]]:
        """OpenID Connect Back-Channel Logout 1.0 §2.6: validate the logout token, end the
        session it names; 200 when done, 400 for a token that does not validate."""
        headers = {"Cache-Control": "no-store"}
        try:
            token = jwt.decode(request.form.get("logout_token", ""), keyset(),
                               algorithms=["RS256", "ES256"])
            claims = token.claims
            jwt.JWTClaimsRegistry(iss={"essential": True, "value": issuer},
                                  aud={"essential": True, "value": client_id},
                                  iat={"essential": True}, exp={"essential": True},
                                  jti={"essential": True}).validate(claims)
        except (JoseError, ValueError) as exc:
            return f"invalid logout token: {exc}", 400, headers
        events = claims.get("events")
        if (token.header.get("typ") != "logout+jwt" or "nonce" in claims
                or not isinstance(events, dict) or LOGOUT_EVENT not in events
                or not isinstance(claims.get("sid"), str)):
            return "invalid logout token", 400, headers
        ended.add(claims["sid"])
        return "", 200, headers

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
