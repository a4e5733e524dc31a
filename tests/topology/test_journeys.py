"""The HTTP journeys of Keycard on every Redis topology (issue #12, "Real topologies in
tests and CI"): each test runs once per name in ``TOPOLOGIES`` (tests/topology/conftest.py).

Together they use every kind of Redis command Keycard sends: plain reads and writes, GETDEL
(sign-in state, codes), Lua scripts (codes, grants, refresh tokens, liveness, sessions,
device requests), MULTI pipelines, WATCH transactions (rules, client update and
rotate-secret), sorted sets and hashes (the directory, the key ring), a stream (audit),
the rate limiter's script, SCAN.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import requests
from joserfc import jwt
from joserfc.jwk import KeySet

from tests.conftest import Keycard
from tests.device_support import answer_device, register_device_client, start_device
from tests.device_support import poll as poll_device
from tests.oidc.conftest import CB, RP, active, introspect, refresh, revoke, tokens_for, userinfo
from tests.support import csrf_token, sign_in

pytestmark = pytest.mark.topology

APP_HOST = "app.acme.test"


@pytest.fixture
def keycard(keycard_on: Callable[..., Keycard], topology_url: str) -> Keycard:
    return keycard_on(topology_url, SSO_FORWARD_AUTH_DOMAINS="acme.test",
                      SSO_DEVICE_POLL_INTERVAL="1")


def new_rp(keycard: Keycard, **fields: Any) -> RP:
    fields.setdefault("name", "Journey app")
    fields.setdefault("redirect_uris", [CB])
    fields.setdefault("trusted", True)
    client, secret = keycard.services.clients.create(**fields)
    return RP(client, secret, keycard.url)


def verify(keycard: Keycard, http: requests.Session | None = None, query: str = "",
           **headers: str) -> requests.Response:
    """``/auth/verify`` as a proxy asks it about a request for APP_HOST."""
    sent = {"X-Forwarded-Host": APP_HOST, "X-Forwarded-Proto": "https",
            "X-Forwarded-Uri": "/", **headers}
    return (http or requests.Session()).get(f"{keycard.url}/auth/verify{query}", headers=sent,
                                            allow_redirects=False, timeout=10)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_sign_in_code_refresh_introspection_revocation_and_sign_out(keycard):
    rp = new_rp(keycard, audiences=[f"https://{APP_HOST}"])
    browser = requests.Session()
    portal = sign_in(browser, keycard.url, "bob")
    assert "Bob Builder" in portal.text

    # Forward auth with the browser's session.
    seen = verify(keycard, browser)
    assert seen.status_code == 200 and seen.headers["X-Auth-Request-User"] == "bob"

    # Code flow with PKCE (bob is signed in: no upstream round trip), then refresh.
    tokens = tokens_for(browser, rp, None, resource=f"https://{APP_HOST}")
    assert active(rp, tokens["access_token"])
    assert userinfo(rp, tokens["access_token"]).json()["preferred_username"] == "bob"
    assert verify(keycard, **bearer(tokens["access_token"])).headers[
        "X-Auth-Request-User"] == "bob"
    renewed = refresh(rp, tokens["refresh_token"])
    assert renewed.status_code == 200, renewed.text
    fresh = renewed.json()
    assert fresh["refresh_token"] != tokens["refresh_token"]
    assert introspect(rp, tokens["refresh_token"]).json() == {"active": False}  # rotated

    # Revoking an access token ends it everywhere, at once, and its grant with it (RFC 7009
    # §2.1: no evictable record alone keeps it revoked): the refreshed family ends too.
    assert revoke(rp, tokens["access_token"]).status_code == 200
    assert not active(rp, tokens["access_token"])
    assert verify(keycard, **bearer(tokens["access_token"])).status_code == 401
    assert not active(rp, fresh["access_token"])
    assert refresh(rp, fresh["refresh_token"]).status_code == 400
    # Signing out ends the session and the tokens born in it.
    fresh = tokens_for(browser, rp, None, resource=f"https://{APP_HOST}")
    assert active(rp, fresh["access_token"])
    browser.post(keycard.url + "/logout", data={"csrf_token": csrf_token(portal.text)},
                 allow_redirects=False, timeout=10)
    assert verify(keycard, browser).status_code == 401
    assert not active(rp, fresh["access_token"])
    assert refresh(rp, fresh["refresh_token"]).status_code == 400


def test_client_credentials_and_key_rotation(keycard):
    bot = new_rp(keycard, name="Deploy bot", grant_types=["client_credentials"],
                 scopes=["roles"], redirect_uris=[])
    answer = bot.post("/token", {"grant_type": "client_credentials"})
    assert answer.status_code == 200, answer.text
    before = answer.json()["access_token"]
    assert active(bot, before)

    old_kids = {k["kid"] for k in requests.get(keycard.url + "/jwks.json", timeout=10)
                .json()["keys"]}
    new_kids = set(keycard.services.keys.rotate(grace_seconds=3600))
    jwks = requests.get(keycard.url + "/jwks.json", timeout=10).json()
    assert old_kids | new_kids == {k["kid"] for k in jwks["keys"]}
    after = bot.post("/token", {"grant_type": "client_credentials"}).json()["access_token"]
    signed = jwt.decode(after, KeySet.import_key_set(jwks))
    assert signed.header["kid"] in new_kids
    assert active(bot, before) and active(bot, after)  # the old key still verifies


def test_admin_edits_rules_clients_and_secrets(keycard):
    api = keycard.url + "/api/admin"
    tool = new_rp(keycard, name="Admin tool", audiences=[api])
    alice = requests.Session()
    sign_in(alice, keycard.url, "alice")  # SSO_BOOTSTRAP_ADMINS
    admin = bearer(tokens_for(alice, tool, None, resource=api)["access_token"])

    # Rules: a WATCH transaction on every topology (defect 5).
    created = requests.post(api + "/rules", json={"target": "acme/platform",
                                                  "roles": ["oncall"]},
                            headers=admin, timeout=10)
    assert created.status_code == 201, created.text
    listed = requests.get(api + "/rules", headers=admin, timeout=10).json()["rules"]
    assert any(rule["target"] == "acme/platform" for rule in listed)
    bob = requests.Session()
    sign_in(bob, keycard.url, "bob")  # in acme/platform
    assert "oncall" in verify(keycard, bob).headers["X-Auth-Request-Roles"].split(",")
    assert requests.delete(api + "/rules", json={"target": "acme/platform"}, headers=admin,
                           timeout=10).status_code == 200
    audit = requests.get(api + "/audit", headers=admin, timeout=10)
    assert audit.status_code == 200 and "acme/platform" in audit.text

    # Client update and rotate-secret: WATCH transactions too.
    clients = keycard.services.clients
    assert clients.update(tool.client_id, name="Admin tool 2").name == "Admin tool 2"
    new_secret = clients.rotate_secret(tool.client_id)
    clients._forget(tool.client_id)  # this process's two-second cache
    assert introspect(tool, "x").status_code == 401  # the old secret
    assert introspect(tool, "x", auth=(tool.client_id, new_secret)).status_code == 200


def test_device_grant(keycard):
    cli = register_device_client(keycard)
    started = start_device(keycard.url, cli.client_id, "openid profile offline_access")
    assert started.status_code == 200, started.text
    grant = started.json()
    bob = requests.Session()
    sign_in(bob, keycard.url, "bob")
    answer_device(bob, keycard.url, grant["user_code"])
    done = poll_device(keycard.url, cli.client_id, grant["device_code"])
    assert done.status_code == 200, done.text
    rp = RP(cli, None, keycard.url)
    renewed = refresh(rp, done.json()["refresh_token"])
    assert renewed.status_code == 200, renewed.text
