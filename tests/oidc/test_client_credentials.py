"""Issue #5: machine identity with the client-credentials grant, through a real OAuth
client library (Authlib's) over HTTP."""

from __future__ import annotations

import pytest
import requests
from authlib.integrations.base_client.errors import OAuthError
from authlib.integrations.requests_client import OAuth2Session

API = "https://deploy-api.acme.test"


@pytest.fixture
def service(keycard):
    return keycard.services.clients.create(
        name="Deploy bot", grant_types=["client_credentials"], scopes=["roles"],
        roles=["deployer"], audiences=[API], id_token_alg="ES256")


def fetch(keycard, client_id, secret, **params):
    session = OAuth2Session(client_id, secret)
    return session.fetch_token(keycard.url + "/token", grant_type="client_credentials", **params)


def test_service_gets_a_jwt_with_its_roles_and_introspection_says_active(keycard, service):
    client, secret = service
    token = fetch(keycard, client.client_id, secret, scope="roles", resource=API)
    assert "refresh_token" not in token and token["token_type"] == "Bearer"
    info = requests.post(keycard.url + "/introspect", data={"token": token["access_token"]},
                         auth=(client.client_id, secret)).json()
    assert info["active"] is True and info["roles"] == ["deployer"]
    assert info["sub"] == f"client:{client.client_id}" and info["aud"] == API
    assert info["client_id"] == client.client_id


def test_wrong_secret_is_invalid_client(keycard, service):
    client, _ = service
    with pytest.raises(OAuthError) as failure:
        fetch(keycard, client.client_id, "not-the-secret")
    assert failure.value.error == "invalid_client"


def test_unregistered_scope_is_invalid_scope(keycard, service):
    client, secret = service
    with pytest.raises(OAuthError) as failure:
        fetch(keycard, client.client_id, secret, scope="email")
    assert failure.value.error == "invalid_scope"


def test_unregistered_resource_is_invalid_target(keycard, service):
    client, secret = service
    answer = requests.post(keycard.url + "/token", data={
        "grant_type": "client_credentials", "resource": "https://payroll.acme.test"},
        auth=(client.client_id, secret))
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_target"


def test_client_without_the_grant_is_unauthorized_client(keycard):
    client, secret = keycard.services.clients.create(
        name="Web app", redirect_uris=["https://app.acme.test/cb"])
    with pytest.raises(OAuthError) as failure:
        fetch(keycard, client.client_id, secret)
    assert failure.value.error == "unauthorized_client"


def test_service_token_opens_forward_auth_with_its_roles(keycard, service):
    client, secret = service
    token = fetch(keycard, client.client_id, secret, scope="roles", resource=API)["access_token"]
    answer = requests.get(keycard.url + "/auth/verify?allowed_roles=deployer",
                          headers={"Authorization": f"Bearer {token}",
                                   "X-Forwarded-Host": "deploy-api.acme.test"})
    assert answer.status_code == 200
    assert answer.headers["X-Auth-Request-Roles"] == "deployer"
