"""Issue #12, defect 2: a Redis that may evict or forget Keycard's state is reported.

``sso doctor`` prints the checks (and exits 1 on a FAIL); ``/readyz`` answers 503 in
production when ``maxmemory-policy`` is not ``noeviction`` or nothing persists the data,
stays ready in development (a warning is logged at start), and asks Redis at most once
per cache period however often it is polled. Managed Redis that forbids ``CONFIG`` gives
``unknown`` warnings, never a crash. Real ``redis-server`` processes throughout.
"""

from __future__ import annotations

import json
import logging
import socket
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from sso import create_app
from sso.config import load_settings
from sso.registry import registry
from tests.conftest import keycard_env, seed_signing_keys
from tests.support import LiveServer, free_port, wait_until


def doctor(keycard: Any) -> tuple[int, dict[str, dict[str, Any]]]:
    result = keycard.app.test_cli_runner().invoke(args=["doctor", "--json"])
    assert "Traceback" not in result.output, result.output
    rows = {row["name"]: row for row in json.loads(result.stdout)["checks"]}
    return result.exit_code, rows


def enable_aof(client: redis.Redis) -> None:
    """``appendonly yes``, and wait for the initial AOF (Redis refuses SIGTERM until then)."""
    client.config_set("appendonly", "yes")
    wait_until(lambda: (lambda p: p["aof_enabled"] == 1 and not p["aof_rewrite_in_progress"]
                        and not p["aof_rewrite_scheduled"])(client.info("persistence")),
               timeout=15)


def unfit(client: redis.Redis) -> None:
    """The settings the reliability run used: evict keys with a TTL, persist nothing."""
    client.config_set("maxmemory-policy", "volatile-lru")
    client.config_set("appendonly", "no")
    client.config_set("save", "")


def test_defect_2_doctor_fails_on_an_evicting_redis_without_persistence(make_keycard,
                                                                        private_redis):
    client = private_redis.client()
    unfit(client)
    keycard = make_keycard(redis_url=private_redis.url)
    status, rows = doctor(keycard)
    assert status == 1
    assert rows["maxmemory-policy"]["verdict"] == "FAIL"
    assert rows["maxmemory-policy"]["value"] == "volatile-lru"
    assert "noeviction" in rows["maxmemory-policy"]["advice"]
    assert (rows["persistence"]["value"], rows["persistence"]["verdict"]) == ("none", "FAIL")
    assert rows["topology"]["value"].startswith("standalone")
    assert rows["reachable"]["value"].startswith("yes, Redis ")
    assert rows["signing keys"]["verdict"] == "OK"

    client.config_set("maxmemory-policy", "noeviction")
    enable_aof(client)
    client.config_set("maxmemory", "512mb")
    status, rows = doctor(keycard)
    assert status == 0, rows
    assert rows["persistence"] == {"name": "persistence", "value": "appendonly yes",
                                   "verdict": "OK", "advice": "", "gate": True}
    assert rows["memory"]["verdict"] == "OK" and "%" in rows["memory"]["value"]

    client.config_set("appendonly", "no")
    client.config_set("save", "3600 1")
    status, rows = doctor(keycard)  # RDB alone: a warning, not a failure
    assert status == 0 and rows["persistence"]["verdict"] == "WARN"
    text = keycard.app.test_cli_runner().invoke(args=["doctor"]).output
    assert "CHECK" in text and "WHAT TO DO" in text and "rdb only" in text


def test_defect_2_doctor_fails_when_signing_keys_are_missing(keycard, rdb):
    rdb.delete(keycard.services.store.keys.signing_keys())
    status, rows = doctor(keycard)
    assert status == 1 and rows["signing keys"]["verdict"] == "FAIL"
    assert "missing" in rows["signing keys"]["value"]


@pytest.fixture
def locked_down_redis(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """A Redis like a managed one: CONFIG renamed away, or an ACL user without it."""
    port = free_port()
    extra = ["--rename-command", "CONFIG", ""] if request.param == "renamed" else []
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(tmp_path), *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    client = redis.Redis(port=port, decode_responses=True)

    def up() -> bool:
        try:
            return bool(client.ping())
        except redis.exceptions.ConnectionError:
            return False

    try:
        wait_until(up, timeout=15)
        url = f"redis://127.0.0.1:{port}/0"
        if request.param == "acl":
            client.execute_command("ACL", "SETUSER", "keycard", "on", ">pw", "~*", "&*",
                                   "+@all", "-config")
            url = f"redis://keycard:pw@127.0.0.1:{port}/0"
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.parametrize("locked_down_redis", ["renamed", "acl"], indirect=True)
def test_defect_2_doctor_reports_unknown_when_config_is_forbidden(make_keycard,
                                                                  locked_down_redis):
    keycard = make_keycard(redis_url=locked_down_redis)
    status, rows = doctor(keycard)
    assert status == 0, rows  # unknown is a warning: Keycard cannot tell, the operator can
    assert rows["maxmemory-policy"]["value"] == "noeviction"  # INFO still says it
    assert (rows["persistence"]["value"], rows["persistence"]["verdict"]) == ("unknown", "WARN")
    assert requests.get(keycard.url + "/readyz", timeout=10).status_code == 200


def production_keycard(redis_url: str, prefix: str, upstream: Any, tmp_path: Path,
                       records: list[dict[str, Any]], servers: list[LiveServer]) -> str:
    """Keycard with ``SSO_ENV=production`` on loopback: the validated settings with only the
    mode switched (production refuses the development upstream and an http issuer)."""
    server = LiveServer()
    env = keycard_env(redis_url, prefix, upstream.url, server.port, tmp_path)
    app = create_app(replace(load_settings(env), env="production"))
    assert registry(app).settings.is_production
    seed_signing_keys(app, records)
    servers.append(server.start(app))
    return server.url


@pytest.fixture
def serve_production(prefix: str, upstream: Any, tmp_path: Path,
                     signing_key_records: list[dict[str, Any]]) -> Iterator[Callable[[str], str]]:
    servers: list[LiveServer] = []
    yield lambda url: production_keycard(url, prefix, upstream, tmp_path, signing_key_records,
                                         servers)
    for server in servers:
        server.stop()


def info_calls(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return int(stats.get("cmdstat_info", {}).get("calls", 0))


def test_defect_2_readyz_is_not_ready_in_production_on_an_evicting_redis(
        serve_production, private_redis):
    client = private_redis.client()
    unfit(client)
    url = serve_production(private_redis.url)
    # Judged in the background from the start; until then nothing is known against Redis.
    wait_until(lambda: requests.get(url + "/readyz", timeout=10).status_code == 503)
    answer = requests.get(url + "/readyz", timeout=10)
    assert answer.status_code == 503
    body = answer.json()
    assert body["status"] == "unavailable" and body["redis"] == "unfit"
    assert set(body["problems"]) == {"maxmemory-policy: volatile-lru", "persistence: none"}
    assert str(private_redis.port) not in answer.text

    # Polled like a load balancer does: Redis is not asked again within the cache period.
    before = info_calls(client)
    for _ in range(20):
        assert requests.get(url + "/readyz", timeout=10).status_code == 503
    assert info_calls(client) == before + 1  # the INFO that read `before`, nothing else

    client.config_set("maxmemory-policy", "noeviction")
    enable_aof(client)
    assert requests.get(url + "/readyz", timeout=10).status_code == 503  # still cached


def test_defect_2_readyz_turns_ready_once_redis_is_fixed(serve_production, private_redis,
                                                          monkeypatch):
    monkeypatch.setattr("sso.redis_checks.READY_CACHE_SECONDS", 0.5)
    client = private_redis.client()
    unfit(client)
    url = serve_production(private_redis.url)
    wait_until(lambda: requests.get(url + "/readyz", timeout=10).status_code == 503)
    client.config_set("maxmemory-policy", "noeviction")
    enable_aof(client)
    wait_until(lambda: requests.get(url + "/readyz", timeout=10).status_code == 200,
               timeout=10)


def test_defect_2_readyz_stays_ready_in_development_and_warns_at_start(make_keycard,
                                                                        private_redis,
                                                                        caplog):
    unfit(private_redis.client())
    caplog.set_level(logging.WARNING, logger="keycard.redis")
    keycard = make_keycard(redis_url=private_redis.url)

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "keycard.redis"]

    wait_until(lambda: len(warnings()) == 2)  # logged by a thread, not holding up the start
    assert any("maxmemory-policy: volatile-lru" in w for w in warnings()), warnings()
    assert any("persistence: none" in w for w in warnings()), warnings()
    answer = requests.get(keycard.url + "/readyz", timeout=10)
    assert answer.status_code == 200 and answer.json()["redis"] == "ok"


def test_readyz_stays_503_not_500_when_redis_is_down_in_production(serve_production,
                                                                    private_redis):
    url = serve_production(private_redis.url)
    private_redis.stop()
    answer = requests.get(url + "/readyz", timeout=10)
    assert answer.status_code == 503 and answer.json()["redis"] == "unavailable"


def test_doctor_names_a_sentinel_master(make_keycard, sentinel_topology):
    sentinel_topology.wait_ready()
    keycard = make_keycard(redis_url=sentinel_topology.url)
    _, rows = doctor(keycard)
    assert rows["topology"]["value"] == "sentinel, 1 master(s)"
    assert rows["reachable"]["verdict"] == "OK"
    assert rows["maxmemory-policy"]["value"] == "noeviction"


@pytest.fixture
def three_masters(tmp_path: Path) -> Iterator[list[int]]:
    """A Redis Cluster of three masters (no replicas), for the checks that visit each."""
    ports = [_cluster_port() for _ in range(3)]
    procs = [subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(tmp_path), "--cluster-enabled", "yes",
         "--cluster-config-file", f"nodes-{port}.conf"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        for port in ports]
    try:
        for port in ports:
            wait_until(lambda p=port: _answers(p), timeout=15)
        subprocess.run(["redis-cli", "--cluster", "create",
                        *[f"127.0.0.1:{p}" for p in ports], "--cluster-yes"],
                       check=True, capture_output=True, timeout=60)
        wait_until(lambda: all(redis.Redis(port=p, decode_responses=True).cluster("info")
                               ["cluster_state"] == "ok" for p in ports), timeout=30)
        yield ports
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)


def _cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    while True:
        port = free_port()
        if port + 10_000 < 65_536:
            with socket.socket() as bus:
                try:
                    bus.bind(("127.0.0.1", port + 10_000))
                except OSError:
                    continue
            return port


def _answers(port: int) -> bool:
    try:
        return bool(redis.Redis(port=port).ping())
    except redis.exceptions.ConnectionError:
        return False


def test_defect_2_doctor_checks_every_cluster_master(three_masters):
    from sso.redis_checks import Readiness, failing, server_checks
    from sso.storage import Store, connect

    client = connect(f"redis+cluster://127.0.0.1:{three_masters[0]}/0")
    for port in three_masters:
        enable_aof(redis.Redis(port=port, decode_responses=True))
    rows = {row.name: row for row in server_checks(client)}
    assert rows["topology"].value == "cluster, 3 master(s)"
    assert not failing(rows.values()), rows
    odd = three_masters[1]
    redis.Redis(port=odd).config_set("maxmemory-policy", "allkeys-lru")
    rows = {row.name: row for row in server_checks(client)}
    for port in three_masters:
        row = rows[f"maxmemory-policy [127.0.0.1:{port}]"]
        assert row.verdict == ("FAIL" if port == odd else "OK"), row
    assert Readiness(Store(client, "{kc}:"), production=True).not_ready_because() == [
        "maxmemory-policy: allkeys-lru"]
    client.close()
