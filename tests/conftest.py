"""Real servers for every test: a private redis-server, the development upstream over
HTTP, and Keycard itself on loopback. Nothing here touches a Redis someone else uses:
the session starts its own (or uses ``KEYCARD_TEST_REDIS_URL``) and each test writes
under its own key prefix, removed afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from hypothesis import settings as hypothesis_settings

from sso import create_app
from sso.config import DEV_UPSTREAM_CLIENT_ID, DEV_UPSTREAM_CLIENT_SECRET
from sso.crypto import Sealer
from sso.devupstream import UpstreamState, create_upstream_app, load_demo_state
from sso.oidc.keys import ALGORITHMS, KeyRing
from sso.registry import Registry, registry
from sso.storage import StorageUnavailable, Store
from tests.support import LiveServer, free_port, wait_until
from tests.topologies import (
    ClusterTopology,
    SentinelTopology,
    start_cluster_topology,
    start_sentinel_topology,
)

TEST_SECRET = "test-secret-key-that-is-long-enough-0123456789"

# Property tests: reproducible in CI (derandomized), no wall-clock deadline on a busy
# 2-core machine, and no example database written into the checkout.
hypothesis_settings.register_profile("keycard", deadline=None, derandomize=True, database=None)
hypothesis_settings.load_profile("keycard")


@dataclass
class RedisServer:
    url: str
    port: int
    proc: subprocess.Popen[bytes] | None
    workdir: str | None

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=True)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def start(self) -> None:
        """(Re)start the private server on the same port."""
        assert self.workdir is not None, "cannot restart a Redis the tests did not start"
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.workdir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = self.client()

        def up() -> bool:
            try:
                return bool(client.ping())
            except redis.exceptions.ConnectionError:
                return False

        wait_until(up, timeout=15)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    given = os.environ.get("KEYCARD_TEST_REDIS_URL")
    if given:
        yield RedisServer(given, 0, None, None)
        return
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed: run .ci/run or apt-get install redis-server")
    server = RedisServer("", free_port(), None, tempfile.mkdtemp(prefix="keycard-test-redis-"))
    server.url = f"redis://127.0.0.1:{server.port}/0"
    server.start()
    yield server
    server.stop()
    shutil.rmtree(server.workdir or "", ignore_errors=True)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test's own, for tests that stop and restart it."""
    server = RedisServer("", free_port(), None, str(tmp_path))
    server.url = f"redis://127.0.0.1:{server.port}/0"
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def sentinel_topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelTopology]:
    """A master, a replica and three sentinels (``mymaster``, quorum 2), started once per
    session (per xdist worker); ``.url`` is the ``redis+sentinel://`` URL for Keycard.
    Tests that pause or stop a process put it back (see tests/topologies.py)."""
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed: run .ci/run or apt-get install redis-server")
    topology = start_sentinel_topology(tmp_path_factory.mktemp("sentinel"))
    yield topology
    topology.stop()


@pytest.fixture(scope="session")
def cluster_topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterTopology]:
    """Six cluster nodes (three masters with a replica each), started once per session (per
    xdist worker); ``.url`` is the ``redis+cluster://`` URL for Keycard. A test that kills a
    master uses ``ClusterTopology.killed``, which brings the node back (see
    tests/topologies.py)."""
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.fail("redis-server/redis-cli not installed: run .ci/run or apt-get install "
                    "redis-server")
    topology = start_cluster_topology(tmp_path_factory.mktemp("cluster"))
    yield topology
    topology.stop()


@pytest.fixture
def prefix(redis_server: RedisServer) -> Iterator[str]:
    value = f"kt-{uuid.uuid4().hex[:12]}:"
    yield value
    client = redis_server.client()
    keys = list(client.scan_iter(match=f"{value}*", count=1000))
    if keys:
        client.delete(*keys)


@pytest.fixture
def rdb(redis_server: RedisServer) -> redis.Redis:
    return redis_server.client()


@dataclass
class Upstream:
    url: str
    state: UpstreamState


@pytest.fixture(scope="session")
def upstream_server() -> Iterator[LiveServer]:
    """One development upstream per session (per xdist worker); ``upstream`` gives each
    test its own state."""
    server = LiveServer(create_upstream_app(load_demo_state())).start()
    yield server
    server.stop()


@pytest.fixture
def upstream(upstream_server: LiveServer) -> Upstream:
    """The development upstream with a fresh demo state: a new ``UpstreamState`` object
    (users, orgs, teams, codes, tokens, faults, rate counters, requests seen), so nothing
    a previous test changed or issued is visible."""
    state = load_demo_state()
    upstream_server.server.app.extensions["devupstream"] = state  # type: ignore[attr-defined]
    return Upstream(upstream_server.url, state)


@dataclass
class Keycard:
    url: str
    app: Any
    env: dict[str, str]

    @property
    def services(self) -> Registry:
        return registry(self.app)


def keycard_env(redis_url: str, prefix: str, upstream_url: str, port: int,
                tmp: Path, **overrides: str) -> dict[str, str]:
    env = {
        "SSO_ENV": "development",
        "SSO_ISSUER": f"http://127.0.0.1:{port}",
        "SSO_SECRET_KEY": TEST_SECRET,
        "SSO_REDIS_URL": redis_url,
        "SSO_REDIS_PREFIX": prefix,
        "SSO_GITHUB_URL": upstream_url,
        "SSO_GITHUB_API_URL": f"{upstream_url}/api/v3",
        "SSO_GITHUB_CLIENT_ID": DEV_UPSTREAM_CLIENT_ID,
        "SSO_GITHUB_CLIENT_SECRET": DEV_UPSTREAM_CLIENT_SECRET,
        "SSO_GITHUB_ORGS": "acme",
        "SSO_BOOTSTRAP_ADMINS": "alice",
        "SSO_GITHUB_TIMEOUT": "1.5",
    }
    env.update(overrides)
    return env


@pytest.fixture(scope="session")
def signing_key_records(redis_server: RedisServer) -> list[dict[str, Any]]:
    """An RS256 and an ES256 key record, generated once per session by the product's
    ``KeyRing.ensure()`` (under a scratch prefix) and sealed with ``TEST_SECRET``.

    Generating RSA-2048 keys for every test's fresh prefix was a measurable part of the
    suite; ``make_keycard`` copies these instead. Tests of generation and rotation
    themselves (tests/oidc/test_keys.py, ``sso keys rotate``) still generate."""
    client = redis_server.client()
    scratch = f"kt-seed-{uuid.uuid4().hex[:12]}:"
    ring = KeyRing(Store(client, scratch), Sealer(TEST_SECRET))
    try:
        assert len(ring.ensure()) == len(ALGORITHMS)
        return [json.loads(raw) for raw in client.hgetall(ring.hash_key).values()]
    finally:
        keys = list(client.scan_iter(match=f"{scratch}*"))
        if keys:
            client.delete(*keys)


def seed_signing_keys(app: Any, records: list[dict[str, Any]]) -> None:
    """Store the session's key records for a new app, resealed with its secret key, unless
    its Redis prefix already has keys (a second instance) or Redis cannot be reached (the
    app then generates keys itself, as in production)."""
    ring: KeyRing = registry(app).keys
    seed_sealer = Sealer(TEST_SECRET)
    try:
        if ring.refresh().entries:
            return
        ring._write([dict(r, sealed_private=ring.sealer.seal(seed_sealer.open(
            r["sealed_private"]))) for r in records], [])
        ring.refresh()
    except StorageUnavailable:
        return


@pytest.fixture
def make_keycard(
    redis_server: RedisServer, prefix: str, upstream: Upstream, tmp_path: Path,
    signing_key_records: list[dict[str, Any]],
) -> Iterator[Callable[..., Keycard]]:
    servers: list[LiveServer] = []

    def factory(redis_url: str | None = None, **overrides: str) -> Keycard:
        server = LiveServer()
        env = keycard_env(redis_url or redis_server.url, prefix, upstream.url, server.port,
                          tmp_path, **overrides)
        app = create_app(env)
        seed_signing_keys(app, signing_key_records)
        server.start(app)
        servers.append(server)
        return Keycard(server.url, app, env)

    yield factory
    for server in servers:
        server.stop()
        # Its back-channel logout worker (if one started) must not outlive the test's Redis.
        registry(server.server.app).backchannel.stop()


@pytest.fixture
def make_cluster_keycard(
    cluster_topology: ClusterTopology, make_keycard: Callable[..., Keycard], prefix: str,
) -> Iterator[Callable[..., Keycard]]:
    """``make_keycard`` on the Redis Cluster; the test's keys are removed from it after."""

    def factory(**overrides: str) -> Keycard:
        return make_keycard(redis_url=cluster_topology.url, **overrides)

    yield factory
    client = cluster_topology.client()
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def fast_polling_keycard(make_keycard: Callable[..., Keycard]) -> Keycard:
    """Keycard asking devices to poll every second (SSO_DEVICE_POLL_INTERVAL), not the RFC's
    5 s default: ``sso login`` waits a whole interval before each poll."""
    return make_keycard(SSO_DEVICE_POLL_INTERVAL="1")


@pytest.fixture
def keycard(make_keycard: Callable[..., Keycard]) -> Keycard:
    return make_keycard()


@pytest.fixture
def run(keycard: Keycard) -> Callable[..., Any]:
    """``sso`` CLI commands against ``keycard``: ``run("roles", "list")``; ``ok=False`` for a
    command that must fail, cleanly (a non-zero exit, no traceback)."""
    runner = keycard.app.test_cli_runner()

    def invoke(*args: str, ok: bool = True) -> Any:
        result = runner.invoke(args=list(args))
        if ok:
            assert result.exit_code == 0, result.output
        else:
            assert result.exit_code != 0, result.output
            assert "Traceback" not in result.output
        return result

    return invoke


@pytest.fixture
def http() -> Iterator[requests.Session]:
    session = requests.Session()
    yield session
    session.close()
