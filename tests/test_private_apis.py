"""Where Keycard leans on its dependencies' internals, a dependency upgrade must fail here,
loudly, before it changes behaviour quietly.

Three kinds of reliance, each fenced in one module:
- methods Keycard overrides (Authlib grants and endpoints, Flask's session interface and
  JSON provider, Werkzeug's form loading): each must still exist in the base class, or
  the override silently stops running;
- methods Keycard replaces whole (a few Authlib ones, to add atomicity or policy inside
  them): their source is fingerprinted, so any change upstream asks for a re-read;
- private names Keycard reads or calls (Werkzeug ``_cached_data``, Flask
  ``_prepare_response_obj``, Flask-Login's ``_user_id``/``_id`` session keys).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
from importlib.metadata import version

import flask_login
import pytest
from authlib.oauth2.rfc6749 import grants
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc8628 import DeviceAuthorizationEndpoint, DeviceCodeGrant
from authlib.oidc.rpinitiated import EndSessionEndpoint
from flask import Flask, session
from flask.json.provider import DefaultJSONProvider
from werkzeug.wrappers import Request

# Modules whose classes extend a dependency's; methods they add (not override) are named.
FENCED = ["sso.oidc.grants", "sso.oidc.device", "sso.oidc.endpoints", "sso.oidc.server",
          "sso.web.fastpath", "sso.login.users", "sso.sessions", "sso.sentinel_watch"]
OWN_METHODS = {
    "sso.oidc.grants.OpenIDCode._key",
    "sso.login.users.User.login", "sso.login.users.User.is_admin",
    "sso.sessions.ServerSession.regenerate", "sso.sessions.ServerSession.set_profile",
    "sso.sessions.ServerSession.end",
    "sso.sentinel_watch.WatchedSentinelPool._start_watcher",
}


def _overrides() -> list[tuple[str, type, list[type]]]:
    found = []
    for module_name in FENCED:
        module = importlib.import_module(module_name)
        for cls in vars(module).values():
            if not inspect.isclass(cls) or cls.__module__ != module_name:
                continue
            bases = [b for b in cls.__mro__[1:] if not b.__module__.startswith(("sso", "builtins"))]
            if not bases:
                continue
            for name, value in vars(cls).items():
                if name.startswith("__"):  # constructors and dunders are our own
                    continue
                if callable(value) or isinstance(value, staticmethod | classmethod | property):
                    found.append((f"{module_name}.{cls.__name__}.{name}", cls, bases))
    return found


def test_every_override_still_overrides_something():
    checked = 0
    for qualified, _cls, bases in _overrides():
        name = qualified.rsplit(".", 1)[1]
        if qualified in OWN_METHODS:
            assert not any(name in vars(b) for b in bases), f"{qualified} now shadows a base method"
            continue
        assert any(name in vars(b) for b in bases), (
            f"{qualified} overrides nothing any more: the dependency renamed or removed it")
        checked += 1
    assert checked > 40  # the grants, endpoints, server, request, JSON and session classes


def test_hint_tolerant_endpoints_still_replace_check_params():
    from authlib.oauth2.rfc7662 import IntrospectionEndpoint

    for endpoint in (IntrospectionEndpoint, RevocationEndpoint):
        assert "check_params" in inspect.getsource(endpoint)


def _fingerprint(function: object) -> str:
    source = inspect.getsource(inspect.unwrap(function))  # type: ignore[arg-type]
    return hashlib.sha256(source.encode()).hexdigest()[:16]


# Authlib methods Keycard replaces whole (sso/oidc/grants.py, sso/oidc/device.py). When a
# fingerprint changes, read the new upstream method, carry its changes into ours, then
# update the fingerprint here. Authlib is pinned below 1.10 in pyproject.toml for this.
REPLACED_WHOLE = {
    "RefreshTokenGrant.create_token_response":
        (grants.RefreshTokenGrant.create_token_response, "d24a9d5878dc5d37"),
    "DeviceAuthorizationEndpoint.create_endpoint_response":
        (DeviceAuthorizationEndpoint.create_endpoint_response, "ce6106ae5d46eaba"),
    "DeviceCodeGrant.validate_token_request":
        (DeviceCodeGrant.validate_token_request, "720c270fd7699774"),
    "RevocationEndpoint.authenticate_token":  # sso/oidc/endpoints.py: no revocation oracle
        (RevocationEndpoint.authenticate_token, "d019ce152969029a"),
}


@pytest.mark.parametrize("name", sorted(REPLACED_WHOLE))
def test_methods_replaced_whole_are_unchanged_upstream(name):
    function, expected = REPLACED_WHOLE[name]
    assert _fingerprint(function) == expected, (
        f"Authlib {version('authlib')} changed {name}: re-read it and update Keycard's copy")


def test_the_sentinel_watch_still_moves_the_pool_to_a_new_master():
    # sso/sentinel_watch.py: asking the pool for the master address drops idle connections
    # to a former master, and a connection in use to it is not taken back at release.
    from redis.sentinel import SentinelConnectionPool, SentinelConnectionPoolProxy

    assert "connection_pool.disconnect(" in inspect.getsource(
        SentinelConnectionPoolProxy.get_master_address)
    assert "self.master_address ==" in inspect.getsource(SentinelConnectionPool.owns_connection)


def test_private_names_keycard_relies_on_are_still_there():
    # sso/web/fastpath.py: the form fast path defers to Werkzeug whenever the body was
    # already read (get_data caches it in _cached_data) and replaces _load_form_data.
    assert "_cached_data" in inspect.getsource(Request.get_data)
    assert callable(getattr(Request, "_load_form_data", None))
    # The orjson provider builds the body from Flask's own argument handling.
    assert "_prepare_response_obj" in inspect.getsource(DefaultJSONProvider.response)
    provider = DefaultJSONProvider(Flask(__name__))
    assert provider._app is not None
    # sso/oidc/endpoints.py: the exact post-logout URI check Authlib calls.
    assert "_is_valid_post_logout_redirect_uri(" in inspect.getsource(EndSessionEndpoint)


def test_flask_login_session_keys():
    """login/users.py reads ``_user_id`` without Flask-Login's per-request loader, and
    the sign-in callback drops ``_id`` (only session protection, which is off, uses it)."""
    app = Flask(__name__)
    app.secret_key = "x" * 32
    manager = flask_login.LoginManager(app)
    manager.user_loader(lambda user_id: None)

    class Person(flask_login.UserMixin):  # type: ignore[misc]
        def get_id(self) -> str:
            return "42"

    with app.test_request_context("/"):
        flask_login.login_user(Person())
        assert session["_user_id"] == "42"
        assert "_id" in session
