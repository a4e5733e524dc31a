"""The client registry against a real Redis: exact redirect matching, hashed secrets,
strict registration rules and the per-process cache."""

from __future__ import annotations

import json

import pytest
import redis
from authlib.oauth2.rfc6749 import ClientMixin

import sso.oidc.clients as clients_module
from sso.crypto import hash_secret
from sso.oidc.client_registry import ClientRegistry
from sso.oidc.clients import Client, ClientError
from sso.oidc.scopes import SUPPORTED_SCOPES
from sso.storage import Store

CALLBACK = "https://app.example.com/callback"


@pytest.fixture
def store(redis_server, prefix) -> Store:
    return Store(redis.Redis.from_url(redis_server.url, decode_responses=True), prefix)


@pytest.fixture
def registry(store) -> ClientRegistry:
    return ClientRegistry(store)


def redis_dump(rdb: redis.Redis, prefix: str) -> str:
    """Every value Keycard wrote under ``prefix``, as one string to search."""
    parts = []
    for key in rdb.scan_iter(match=f"{prefix}*"):
        kind = rdb.type(key)
        if kind == "string":
            parts.append(rdb.get(key))
        elif kind == "set":
            parts.extend(rdb.smembers(key))
        elif kind == "hash":
            parts.extend(f"{k}={v}" for k, v in rdb.hgetall(key).items())
        parts.append(key)
    return "\n".join(parts)


def test_client_satisfies_authlibs_client_mixin():
    assert issubclass(Client, ClientMixin)
    client = Client(client_id="x", name="X", secret_hash=None)
    for name in ("get_client_id", "get_default_redirect_uri", "get_allowed_scope",
                 "check_redirect_uri", "check_client_secret", "check_endpoint_auth_method",
                 "check_response_type", "check_grant_type"):
        assert getattr(Client, name) is not getattr(ClientMixin, name), name
    assert client.get_client_id() == "x"


@pytest.mark.parametrize(
    "candidate",
    [
        CALLBACK + "/",
        "https://app.example.com/x/../callback",
        CALLBACK + "?next=/admin",
        CALLBACK + "#frag",
        "https://app.example.com@evil.example/callback",
        "https://app@evil.example/callback",
        "https://APP.example.com/callback",
        "HTTPS://app.example.com/callback",
        "https://app.example.com:443/callback",
        "https://app.example.com/callback/extra",
        "https://app.example.com/call",
        "https://app.example.com/Callback",
        "https://app.example.com/callback%2F",
        "http://app.example.com/callback",
        "",
        None,
    ],
)
def test_redirect_uri_must_match_exactly(registry, candidate):
    client, _ = registry.create(name="App", redirect_uris=[CALLBACK])
    assert client.check_redirect_uri(CALLBACK) is True
    assert client.check_redirect_uri(candidate) is False


def test_there_is_never_a_default_redirect_uri(registry):
    client, _ = registry.create(name="App", redirect_uris=[CALLBACK])
    assert client.get_default_redirect_uri() is None
    assert registry.get(client.client_id).get_default_redirect_uri() is None


@pytest.mark.parametrize(
    "uri",
    [
        "http://app.example.com/cb",
        "http://10.0.0.1/cb",
        "http://localhost.evil.example/cb",
        "http://127.0.0.1.nip.io/cb",
        "https://*.example.com/cb",
        "https://app.example.com/cb*",
        "https://app.example.com/cb#fragment",
        "https://app.example.com/cb#",
        "https://user@app.example.com/cb",
        "https://user:pw@app.example.com/cb",
        "/relative/cb",
        "app.example.com/cb",
        "com.example.app:/cb",
        "javascript:alert(1)",
        "https:///cb",
        "https://app.example.com:99999/cb",
        "https://app.example.com/c b",
        "",
    ],
)
def test_unsafe_redirect_uris_are_refused_at_registration(registry, uri):
    with pytest.raises(ClientError):
        registry.create(name="App", redirect_uris=[uri])
    with pytest.raises(ClientError):
        registry.create(name="App", redirect_uris=[CALLBACK], post_logout_redirect_uris=[uri])
    assert registry.list() == []


@pytest.mark.parametrize(
    "uri",
    ["http://127.0.0.1:8765/cb", "http://127.9.9.9/cb", "http://[::1]:9000/cb",
     "http://localhost:3000/cb", "https://app.example.com/cb?tenant=a"],
)
def test_https_and_loopback_http_redirect_uris_are_accepted(registry, uri):
    client, _ = registry.create(name="App", redirect_uris=[uri])
    assert client.check_redirect_uri(uri)


def test_http_non_loopback_is_refused_with_a_clear_message(registry):
    with pytest.raises(ClientError, match="loopback"):
        registry.create(name="App", redirect_uris=["http://intranet.example/cb"])
    with pytest.raises(ClientError, match="home URL"):
        registry.create(name="App", redirect_uris=[CALLBACK], home_url="http://intranet/")


def test_secret_is_returned_once_and_stored_only_hashed(registry, rdb, prefix):
    client, secret = registry.create(name="App", redirect_uris=[CALLBACK])
    assert secret and len(secret) >= 43  # 256 bits
    dump = redis_dump(rdb, prefix)
    assert secret not in dump
    assert hash_secret(secret) in dump
    assert "secret" not in json.dumps(client.to_dict())
    stored = registry.get(client.client_id)
    assert stored.check_client_secret(secret)
    assert not stored.check_client_secret(secret[:-1])
    assert not stored.check_client_secret("")
    assert not stored.check_client_secret(hash_secret(secret))  # the hash is not the secret


def test_secret_is_compared_in_constant_time(registry, monkeypatch):
    client, secret = registry.create(name="App", redirect_uris=[CALLBACK])
    calls = []
    real_same = clients_module.same

    def spy(a, b):
        calls.append((a, b))
        return real_same(a, b)

    monkeypatch.setattr(clients_module, "same", spy)
    assert client.check_client_secret(secret)
    assert calls == [(hash_secret(secret), client.secret_hash)]


def test_public_client_has_no_secret_authenticates_only_with_none_and_needs_pkce(registry):
    client, secret = registry.create(name="CLI", public=True, redirect_uris=[CALLBACK],
                                     require_pkce=False)
    assert secret is None and client.public and client.require_pkce
    assert client.check_endpoint_auth_method("none", "token")
    for method in ("client_secret_basic", "client_secret_post", "client_secret_jwt"):
        assert not client.check_endpoint_auth_method(method, "token")
    assert not client.check_client_secret("")
    assert not client.check_client_secret("anything")
    assert registry.get(client.client_id).require_pkce


def test_confidential_client_authenticates_with_basic_or_post_only(registry):
    client, _ = registry.create(name="App", redirect_uris=[CALLBACK])
    assert client.check_endpoint_auth_method("client_secret_basic", "token")
    assert client.check_endpoint_auth_method("client_secret_post", "introspection")
    for method in ("none", "client_secret_jwt", "private_key_jwt", ""):
        assert not client.check_endpoint_auth_method(method, "token")


def test_allowed_scope_is_the_intersection_in_request_order(registry):
    client, _ = registry.create(name="App", redirect_uris=[CALLBACK],
                                scopes=["openid", "email", "profile"])
    assert client.get_allowed_scope("profile admin openid openid groups") == "profile openid"
    assert client.get_allowed_scope("") == ""
    assert client.get_allowed_scope(None) == ""
    assert client.get_allowed_scope("admin") == ""


def test_response_and_grant_types(registry):
    client, _ = registry.create(name="App", redirect_uris=[CALLBACK])
    assert client.check_response_type("code")
    for rt in ("token", "id_token", "code id_token", "none", ""):
        assert not client.check_response_type(rt)
    assert client.check_grant_type("authorization_code")
    assert client.check_grant_type("refresh_token")
    assert not client.check_grant_type("client_credentials")
    assert not client.check_grant_type("password")


def test_defaults_cover_the_oidc_scopes_and_code_flow(registry):
    client, _ = registry.create(name="App", redirect_uris=[CALLBACK])
    assert client.scopes == list(SUPPORTED_SCOPES)
    assert client.grant_types == ["authorization_code", "refresh_token"]
    assert client.id_token_alg == "RS256" and client.access_token_ttl == 600
    assert not client.trusted and client.required_roles == []
    assert len(client.client_id) >= 22 and not client.client_id.startswith("-")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"redirect_uris": []}, "needs at least one redirect URI"),
        ({"grant_types": ["password"]}, "'password' is not supported"),
        ({"grant_types": ["implicit"]}, "not supported"),
        ({"grant_types": []}, "at least one grant type"),
        ({"scopes": ["openid", "admin"]}, "scope 'admin' is not supported"),
        ({"required_roles": ["Not Valid"]}, "required role 'Not Valid' is invalid"),
        ({"roles": ["ok", "BAD"]}, "role 'BAD' is invalid"),
        ({"id_token_alg": "HS256"}, "HS256"),
        ({"id_token_alg": "none"}, "not supported"),
        ({"access_token_ttl": 10}, "access_token_ttl"),
        ({"access_token_ttl": 86400}, "access_token_ttl"),
        ({"refresh_idle_ttl": 100 * 86400}, "refresh_idle_ttl"),
        ({"name": "  "}, "needs a name"),
        ({"audiences": ["http://api.example.com"]}, "audience"),
        ({"client_secret": "chosen"}, "unknown or read-only"),
        ({"client_id": "chosen"}, "unknown or read-only"),
    ],
)
def test_invalid_registrations_are_refused_with_a_clear_message(registry, fields, message):
    base = {"name": "App", "redirect_uris": [CALLBACK]}
    with pytest.raises(ClientError, match=message):
        registry.create(**{**base, **fields})
    assert registry.list() == []


def test_client_credentials_needs_a_confidential_client(registry):
    with pytest.raises(ClientError, match="confidential"):
        registry.create(name="svc", public=True, grant_types=["client_credentials"])
    client, secret = registry.create(name="svc", grant_types=["client_credentials"],
                                     roles=["deployer"])
    assert secret and client.redirect_uris == [] and client.roles == ["deployer"]


def test_device_grant_for_a_public_cli_needs_no_redirect_uri(registry):
    client, secret = registry.create(
        name="cli", public=True, grant_types=["urn:ietf:params:oauth:grant-type:device_code"])
    assert secret is None
    assert client.check_grant_type("urn:ietf:params:oauth:grant-type:device_code")


def test_rotate_secret_invalidates_the_old_secret(registry, rdb, prefix):
    client, old = registry.create(name="App", redirect_uris=[CALLBACK])
    assert registry.get(client.client_id).check_client_secret(old)  # now cached
    new = registry.rotate_secret(client.client_id)
    assert new != old
    fresh = registry.get(client.client_id)
    assert fresh.check_client_secret(new)
    assert not fresh.check_client_secret(old)
    assert new not in redis_dump(rdb, prefix)


def test_rotate_secret_of_a_public_or_unknown_client_is_refused(registry):
    client, _ = registry.create(name="SPA", public=True, redirect_uris=[CALLBACK])
    with pytest.raises(ClientError, match="public"):
        registry.rotate_secret(client.client_id)
    with pytest.raises(ClientError, match="no client"):
        registry.rotate_secret("nope")


def test_get_is_cached_briefly_and_update_clears_the_cache(registry, rdb):
    client, _ = registry.create(name="App", redirect_uris=[CALLBACK])
    key = registry.key(client.client_id)
    assert registry.get(client.client_id).name == "App"
    # Another writer changes Redis behind our back: the hot path does not see it yet...
    record = json.loads(rdb.get(key))
    rdb.set(key, json.dumps({**record, "name": "Changed elsewhere"}))
    assert registry.get(client.client_id).name == "App"
    # ...but our own update clears the local entry at once.
    registry.update(client.client_id, trusted=True)
    fresh = registry.get(client.client_id)
    assert fresh.trusted and fresh.name == "Changed elsewhere"


def test_another_process_sees_changes_after_the_cache_window(store):
    writer = ClientRegistry(store)
    reader = ClientRegistry(store, cache_seconds=0.0)
    client, _ = writer.create(name="App", redirect_uris=[CALLBACK])
    assert reader.get(client.client_id).redirect_uris == [CALLBACK]
    writer.update(client.client_id, redirect_uris=[CALLBACK, CALLBACK + "2"])
    assert reader.get(client.client_id).redirect_uris == [CALLBACK, CALLBACK + "2"]
    writer.delete(client.client_id)
    assert reader.get(client.client_id) is None


def test_callers_cannot_edit_the_cached_client(registry):
    client, _ = registry.create(name="App", redirect_uris=[CALLBACK])
    registry.get(client.client_id).redirect_uris.append("https://evil.example/cb")
    assert registry.get(client.client_id).redirect_uris == [CALLBACK]


def test_update_is_validated_as_a_whole_and_writes_nothing_when_invalid(registry):
    client, secret = registry.create(name="App", redirect_uris=[CALLBACK])
    with pytest.raises(ClientError):
        registry.update(client.client_id, redirect_uris=["http://evil.example/cb"])
    with pytest.raises(ClientError, match="redirect URI"):
        registry.update(client.client_id, redirect_uris=[])  # code flow needs one
    with pytest.raises(ClientError, match="read-only"):
        registry.update(client.client_id, secret_hash=hash_secret("mine"))
    unchanged = registry.get(client.client_id)
    assert unchanged.redirect_uris == [CALLBACK] and unchanged.check_client_secret(secret)
    with pytest.raises(ClientError, match="no client"):
        registry.update("unknown", name="x")


def test_list_delete_and_unknown_ids(registry, rdb, prefix):
    a, _ = registry.create(name="A", redirect_uris=[CALLBACK])
    b, _ = registry.create(name="B", public=True, redirect_uris=[CALLBACK])
    assert {c.client_id for c in registry.list()} == {a.client_id, b.client_id}
    assert registry.get(a.client_id).name == "A"
    assert registry.delete(a.client_id) is True
    assert registry.delete(a.client_id) is False
    assert registry.get(a.client_id) is None
    assert [c.client_id for c in registry.list()] == [b.client_id]
    assert rdb.smembers(f"{prefix}clients") == {b.client_id}
    for garbage in ("", "x" * 200, "../etc", "a b", "*", None):
        assert registry.get(garbage) is None


def test_dict_round_trip_is_json_safe_and_secret_free(registry):
    client, _ = registry.create(name="App", redirect_uris=[CALLBACK], required_roles=["eng"],
                                home_url="https://app.example.com/", trusted=True)
    data = json.loads(json.dumps(client.to_dict()))
    assert "secret_hash" not in data and data["public"] is False
    again = Client.from_dict({**data, "secret_hash": client.secret_hash, "future_field": 1})
    assert again == client
