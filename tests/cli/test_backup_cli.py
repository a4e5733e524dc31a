"""``sso backup`` and ``sso restore`` (issue #12, docs/operations.md): the durable
configuration of one Keycard, as one sealed file, restored into an empty Redis of its own
(``private_redis``) behind a second Keycard."""

from __future__ import annotations

import json
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from authlib.integrations.requests_client import OAuth2Session
from joserfc import jwt
from joserfc.jwk import KeySet

from sso import create_app
from sso.backup import FORMAT, FORMAT_VERSION
from tests.conftest import Keycard, keycard_env
from tests.support import LiveServer, sign_in

API = "https://deploy-api.acme.test"


@dataclass
class Started:
    keycard: Keycard
    server: LiveServer


@pytest.fixture
def start(prefix, upstream, tmp_path) -> Iterator[Callable[..., Started]]:
    """Keycard on a given Redis (and port, to keep an issuer), nothing seeded in it."""
    servers: list[LiveServer] = []

    def factory(redis_url: str, port: int = 0, **overrides: str) -> Started:
        server = LiveServer(port=port)
        env = keycard_env(redis_url, prefix, upstream.url, server.port, tmp_path, **overrides)
        app = create_app(env)
        server.start(app)
        servers.append(server)
        return Started(Keycard(server.url, app, env), server)

    yield factory
    for server in servers:
        server.stop()


@pytest.fixture
def make_target(start, private_redis) -> Callable[..., Keycard]:
    """A second Keycard on the test's private, empty Redis."""
    return lambda **overrides: start(private_redis.url, **overrides).keycard


def cli(keycard: Keycard, *args: str, ok: bool = True) -> Any:
    result = keycard.app.test_cli_runner().invoke(args=list(args))
    if ok:
        assert result.exit_code == 0, result.output
    else:
        assert result.exit_code != 0, result.output
        assert "Traceback" not in result.output and result.exception is not None
    return result


def service_token(keycard: Keycard, client_id: str, secret: str) -> dict[str, Any]:
    session = OAuth2Session(client_id, secret)
    token: dict[str, Any] = session.fetch_token(keycard.url + "/token",
                                                grant_type="client_credentials",
                                                scope="roles", resource=API)
    return token


def configure(keycard: Keycard) -> dict[str, Any]:
    """What a backup must carry: a service client, rules (one making dave an admin), the
    bootstrap admin alice pinned, people signed in, signing keys; and a token signed
    before the backup."""
    services = keycard.services
    client, secret = services.clients.create(
        name="Deploy bot", grant_types=["client_credentials"], scopes=["roles"],
        roles=["deployer"], audiences=[API], id_token_alg="ES256")
    cli(keycard, "roles", "map", "acme/sre", "oncall")
    for login in ("alice", "bob", "dave"):
        sign_in(requests.Session(), keycard.url, login)
    cli(keycard, "roles", "map", "@dave", "admin")
    assert services.store.redis.hgetall(services.store.keys.bootstrap_pins()) == {
        "alice": "1001"}
    token = service_token(keycard, client.client_id, secret)
    return {"client_id": client.client_id, "secret": secret, "token": token["access_token"],
            "jwks": requests.get(keycard.url + "/jwks.json", timeout=10).json()}


@pytest.fixture
def configured(keycard: Keycard) -> dict[str, Any]:
    return configure(keycard)


def backup(keycard: Keycard, tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    path = tmp_path / "keycard.backup"
    data = json.loads(cli(keycard, "backup", str(path), "--json").stdout)
    return path, data


def test_backup_restores_into_an_empty_redis_and_everything_still_works(
        start, redis_server, private_redis, tmp_path):
    source = start(redis_server.url)
    configured = configure(source.keycard)
    path, data = backup(source.keycard, tmp_path)
    header = data["header"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert header["format"] == FORMAT and header["format_version"] == FORMAT_VERSION
    assert header["keycard_version"] and header["created_at"].endswith("Z")
    counts = header["counts"]
    assert counts["client"]["records"] == 1 and counts["clients_index"]["entries"] == 1
    assert counts["signing_keys"]["entries"] == 2  # RS256 and ES256
    assert counts["users_index"]["entries"] == 3 and counts["user"]["records"] == 3
    assert counts["rules"]["records"] == 1 and counts["bootstrap_pins"]["entries"] == 1
    assert "audit" not in counts and "session" not in counts
    text = path.read_text()
    assert configured["secret"] not in text and "Deploy bot" not in text  # sealed
    assert "sealed_private" not in text and "acme/sre" not in text

    # The same issuer (and port) on an empty Redis: the old server goes, the new one comes.
    source.server.stop()
    assert private_redis.client().dbsize() == 0
    target = start(private_redis.url, port=source.server.port).keycard
    assert target.url == source.keycard.url
    human = cli(target, "restore", str(path)).stdout
    assert "Restored" in human and "clients" in human and "signing keys" in human

    # The client authenticates with its old secret, and its token made before the backup
    # is still valid at the restored Keycard: signature, issuer, client and all.
    fresh = service_token(target, configured["client_id"], configured["secret"])
    old = configured["token"]
    info = requests.post(target.url + "/introspect", data={"token": old},
                         auth=(configured["client_id"], configured["secret"]), timeout=10)
    assert info.json()["active"] is True, info.text
    jwks = requests.get(target.url + "/jwks.json", timeout=10).json()
    assert jwks == configured["jwks"]
    keyset = KeySet.import_key_set(jwks)
    for token in (old, fresh["access_token"]):
        assert jwt.decode(token, keyset).claims["client_id"] == configured["client_id"]

    # People, rules and admins are there: bob's team still maps to oncall, dave (by rule)
    # and alice (bootstrap pin) are still admins, bob is not.
    accounts = target.services.accounts
    assert {p.login for p, _ in accounts.directory()} == {"alice", "bob", "dave"}
    browsers = {}
    for login in ("alice", "bob", "dave"):
        browsers[login] = requests.Session()
        sign_in(browsers[login], target.url, login)
    assert "oncall" in accounts.find_by_login("bob").roles
    for login, status in (("alice", 200), ("dave", 200), ("bob", 403)):
        page = browsers[login].get(target.url + "/admin/rules", timeout=10, allow_redirects=False)
        assert page.status_code == status, (login, page.status_code)
    store = target.services.store
    assert store.redis.hgetall(store.keys.bootstrap_pins()) == {"alice": "1001"}


def test_restore_refuses_a_tampered_file_and_writes_nothing(
        keycard, configured, make_target, private_redis, tmp_path):
    path, _ = backup(keycard, tmp_path)
    head, sealed, _ = path.read_text().split("\n")
    target = make_target()
    damaged = tmp_path / "damaged.backup"
    middle = len(sealed) // 2
    flipped = sealed[:middle] + ("A" if sealed[middle] != "A" else "B") + sealed[middle + 1:]
    damaged.write_text(f"{head}\n{flipped}\n")
    assert "damaged or was altered" in cli(target, "restore", str(damaged), ok=False).output
    header = json.loads(head)
    header["counts"]["client"]["records"] = 7  # the clear header alone, altered
    damaged.write_text(f"{json.dumps(header)}\n{sealed}\n")
    assert "header does not match" in cli(target, "restore", str(damaged), ok=False).output
    header = json.loads(head)
    header["format_version"] = FORMAT_VERSION + 1  # made by a newer Keycard
    damaged.write_text(f"{json.dumps(header)}\n{sealed}\n")
    assert "use a newer Keycard" in cli(target, "restore", str(damaged), ok=False).output
    damaged.write_text("not a backup\n")
    assert "not a Keycard backup" in cli(target, "restore", str(damaged), ok=False).output
    assert private_redis.client().dbsize() == 0


def test_restore_refuses_a_file_sealed_with_another_secret_key(
        keycard, configured, make_target, private_redis, tmp_path):
    path, _ = backup(keycard, tmp_path)
    target = make_target(SSO_SECRET_KEY="another-secret-key-that-is-long-enough-9876543210")
    output = cli(target, "restore", str(path), ok=False).output
    assert "sealed with another SSO_SECRET_KEY" in output and "Nothing was written" in output
    assert private_redis.client().dbsize() == 0


def test_restore_into_a_redis_with_configuration_needs_force(keycard, configured, tmp_path):
    path, _ = backup(keycard, tmp_path)
    services = keycard.services
    rdb: redis.Redis = services.store.redis
    version_key = services.store.keys.signing_keys_version()
    version = rdb.get(version_key)
    later, _ = services.clients.create(name="Made after the backup",
                                       grant_types=["client_credentials"])
    refused = cli(keycard, "restore", str(path), ok=False).output
    assert "already holds Keycard configuration" in refused and "clients: 2" in refused
    assert "--force" in refused and services.clients.get(later.client_id) is not None

    result = json.loads(cli(keycard, "restore", str(path), "--force", "--json").stdout)
    assert result["replaced"]["client"] == 2 and result["restored"]["client"]["records"] == 1
    assert rdb.get(services.store.keys.client(later.client_id)) is None  # no orphan left
    assert rdb.smembers(services.store.keys.clients_index()) == {configured["client_id"]}
    # Processes compare this counter for equality: the restore moves it past any value
    # they may hold, so every one reloads the restored keys.
    assert int(rdb.get(version_key)) > int(version)


def test_restore_through_sentinel_writes_to_the_master_in_one_go(
        keycard, configured, start, sentinel_topology, prefix, tmp_path):
    path, data = backup(keycard, tmp_path)
    master = sentinel_topology.master.client()
    try:
        target = start(sentinel_topology.url).keycard
        restored = json.loads(cli(target, "restore", str(path), "--json").stdout)["restored"]
        assert restored == data["header"]["counts"]
        token = service_token(target, configured["client_id"], configured["secret"])
        assert token["access_token"]
        assert master.smembers(target.services.store.keys.clients_index()) == {
            configured["client_id"]}
    finally:
        keys = list(master.scan_iter(match=f"{prefix}*"))
        if keys:
            master.delete(*keys)
