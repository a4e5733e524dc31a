"""The provider's hot-path stand-ins for Authlib parts behave like the parts they replace."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from authlib.integrations.flask_oauth2.requests import FlaskOAuth2Request
from authlib.oauth2.rfc6749 import InsecureTransportError
from flask import Flask, request

from sso.oidc.server import KeycardServer, _Request


def test_fast_request_has_every_attribute_authlib_sets():
    app = Flask(__name__)
    with app.test_request_context("/token", method="POST", base_url="https://sso.acme.test",
                                  data={"grant_type": "client_credentials"}):
        ours = _Request(request, "https://sso.acme.test")
        theirs = FlaskOAuth2Request(request)
        assert set(vars(ours)) == set(vars(theirs))
        assert ours.uri == "https://sso.acme.test/token"
        assert ours.payload.grant_type == theirs.payload.grant_type == "client_credentials"
        assert ours.form == theirs.form


@pytest.mark.parametrize("issuer", ["http://sso.acme.test", "ftp://127.0.0.1"])
def test_the_https_check_authlib_makes_per_request_is_made_once_at_start(issuer, monkeypatch):
    monkeypatch.delenv("AUTHLIB_INSECURE_TRANSPORT", raising=False)
    with pytest.raises(InsecureTransportError):
        KeycardServer(SimpleNamespace(issuer=issuer))
    KeycardServer(SimpleNamespace(issuer="http://127.0.0.1:5000"))  # loopback: allowed
