"""SECURITY 33: the session cookie's attributes under an https issuer (and a parent domain)."""

from __future__ import annotations

from flask import session

from sso import create_app
from tests.conftest import TEST_SECRET


def issue_cookie(redis_server, prefix, **env: str) -> str:
    app = create_app({"SSO_ISSUER": "https://sso.acme.test", "SSO_SECRET_KEY": TEST_SECRET,
                      "SSO_REDIS_URL": redis_server.url, "SSO_REDIS_PREFIX": prefix, **env})
    with app.test_request_context("/", base_url="https://sso.acme.test"):
        session["auth_time"] = 1  # a modified session is saved and gets a cookie
        response = app.make_response("ok")
        app.session_interface.save_session(app, session, response)
        return response.headers["Set-Cookie"]


def test_https_session_cookie_is_host_prefixed_secure_httponly_lax(redis_server, prefix):
    cookie = issue_cookie(redis_server, prefix)
    assert cookie.startswith("__Host-keycard=")
    for attribute in ("Secure", "HttpOnly", "Path=/", "SameSite=Lax"):
        assert attribute in cookie
    assert "Domain" not in cookie


def test_forward_auth_parent_domain_uses_secure_prefix_and_domain(redis_server, prefix):
    cookie = issue_cookie(redis_server, prefix, SSO_COOKIE_DOMAIN="acme.test")
    assert cookie.startswith("__Secure-keycard=")
    assert "Domain=acme.test" in cookie and "Secure" in cookie and "HttpOnly" in cookie
