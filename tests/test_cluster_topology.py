"""Keycard on a real six-node Redis Cluster (tests/topologies.py): issue #12, "Scale out
and survive", defects 5 (edits under WATCH) and 6 (one hash tag for everything), the HTTP
and OIDC journeys, and a master killed under load."""

from __future__ import annotations

import base64
import collections
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import requests

from tests.conftest import Keycard
from tests.device_support import answer_device, poll, register_device_client, start_device
from tests.oidc.conftest import CB, RP, introspect, refresh, revoke, tokens_for
from tests.support import csrf_token, pick_upstream_user, sign_in, wait_until
from tests.topologies import ClusterTopology

pytestmark = pytest.mark.topology("cluster")

APP_HOST = "app.acme.test"


def verify(http: requests.Session, keycard: Keycard, **headers: str) -> requests.Response:
    """``/auth/verify`` as a proxy asks it, about a request for ``APP_HOST``."""
    sent = {"X-Forwarded-Host": APP_HOST, "X-Forwarded-Proto": "https",
            "X-Forwarded-Uri": "/", **headers}
    return http.get(f"{keycard.url}/auth/verify", headers=sent, allow_redirects=False,
                    timeout=10)


def _header(token: str) -> dict[str, Any]:
    head = token.split(".", 1)[0]
    parsed: dict[str, Any] = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    return parsed


def test_defect_5_edits_under_watch_work_on_a_cluster(make_cluster_keycard, tmp_path):
    """Before: "watch() is not supported outside of transactional context" (CLI error,
    ``POST /api/admin/rules`` → 500)."""
    keycard = make_cluster_keycard()
    cli = keycard.app.test_cli_runner()
    mapped = cli.invoke(args=["roles", "map", "acme/platform", "viewer"])
    assert mapped.exit_code == 0, mapped.output
    exported = cli.invoke(args=["roles", "export"])
    assert exported.exit_code == 0, exported.output
    rules = tmp_path / "rules.yaml"
    rules.write_text(exported.output.replace("viewer", "editor"))
    imported = cli.invoke(args=["roles", "import", str(rules)])
    assert imported.exit_code == 0, imported.output
    assert [r.roles for r in keycard.services.rules.all()] == [("editor",)]

    client, _ = keycard.services.clients.create(name="Wiki", redirect_uris=[CB])
    updated = cli.invoke(args=["clients", "update", client.client_id, "--name", "Wiki 2"])
    assert updated.exit_code == 0, updated.output
    rotated = cli.invoke(args=["clients", "rotate-secret", client.client_id, "--json"])
    assert rotated.exit_code == 0, rotated.output
    stored = keycard.services.clients.get(client.client_id)
    assert stored is not None and stored.name == "Wiki 2"
    assert stored.secret_hash != client.secret_hash

    admin = requests.Session()
    token = csrf_token(sign_in(admin, keycard.url, "alice").text)
    answer = admin.post(keycard.url + "/api/admin/rules", headers={"X-CSRFToken": token},
                        json={"target": "acme/sre", "roles": ["oncall"]}, timeout=10)
    assert answer.status_code in (200, 201), answer.text[:300]
    assert ("team", "acme/sre") in {(r.kind, r.target) for r in keycard.services.rules.all()}


def test_browser_code_refresh_introspection_revocation_and_forward_auth(make_cluster_keycard):
    keycard = make_cluster_keycard(SSO_FORWARD_AUTH_DOMAINS="acme.test")
    client, secret = keycard.services.clients.create(
        name="Wiki", redirect_uris=[CB], trusted=True, audiences=[f"https://{APP_HOST}"])
    rp = RP(client, secret, keycard.url)
    browser = requests.Session()
    assert "Bob" in sign_in(browser, keycard.url, "bob").text
    assert verify(browser, keycard).headers["X-Auth-Request-User"] == "bob"
    assert verify(requests.Session(), keycard).status_code == 401

    tokens = tokens_for(browser, rp, login=None, resource=f"https://{APP_HOST}")
    rotated = refresh(rp, tokens["refresh_token"]).json()
    assert "access_token" in rotated, rotated
    assert refresh(rp, tokens["refresh_token"]).status_code == 400  # reuse ends the family
    assert introspect(rp, rotated["access_token"]).json()["active"] is False

    again = tokens_for(browser, rp, login=None, resource=f"https://{APP_HOST}")
    bearer = {"Authorization": f"Bearer {again['access_token']}"}
    assert verify(requests.Session(), keycard, **bearer).status_code == 200
    assert introspect(rp, again["access_token"]).json()["active"] is True
    assert revoke(rp, again["access_token"]).status_code == 200  # by jti, in the grant's slot
    assert introspect(rp, again["access_token"]).json()["active"] is False
    assert verify(requests.Session(), keycard, **bearer).status_code == 401

    third = tokens_for(browser, rp, login=None)
    browser.post(keycard.url + "/logout", data={"csrf_token": csrf_token(
        browser.get(keycard.url + "/").text)}, timeout=10)
    # Signing out ends the session and the grants indexed under it (another slot).
    assert verify(browser, keycard).status_code == 401
    assert introspect(rp, third["access_token"]).json()["active"] is False
    assert refresh(rp, third["refresh_token"]).status_code == 400


def test_client_credentials_device_grant_admin_edits_and_key_rotation(make_cluster_keycard):
    keycard = make_cluster_keycard(SSO_DEVICE_POLL_INTERVAL="1")
    services = keycard.services
    bot, bot_secret = services.clients.create(name="Bot", grant_types=["client_credentials"],
                                              scopes=["roles"], redirect_uris=[])
    machine = RP(bot, bot_secret, keycard.url)
    token = machine.post("/token", {"grant_type": "client_credentials"}).json()
    assert introspect(machine, token["access_token"]).json()["active"] is True
    assert revoke(machine, token["access_token"]).status_code == 200
    assert introspect(machine, token["access_token"]).json()["active"] is False

    # The device grant: code reserved in one slot, request in another.
    browser = requests.Session()
    sign_in(browser, keycard.url, "bob")
    device = register_device_client(keycard)
    started = start_device(keycard.url, device.client_id, "openid offline_access").json()
    assert poll(keycard.url, device.client_id, started["device_code"]).json()["error"] == (
        "authorization_pending")
    answer_device(browser, keycard.url, started["user_code"])
    polled = poll(keycard.url, device.client_id, started["device_code"])
    assert polled.status_code == 200, polled.text
    cli_rp = RP(device, None, keycard.url)
    assert "access_token" in refresh(cli_rp, polled.json()["refresh_token"]).json()

    # Key rotation: new tokens signed by the new key, old ones still valid.
    before = machine.post("/token", {"grant_type": "client_credentials"}).json()
    rotated = keycard.app.test_cli_runner().invoke(args=["keys", "rotate", "--json"])
    assert rotated.exit_code == 0, rotated.output
    after = machine.post("/token", {"grant_type": "client_credentials"}).json()
    assert _header(after["access_token"])["kid"] != _header(before["access_token"])["kid"]
    assert introspect(machine, before["access_token"]).json()["active"] is True

    # Admin edits: sign a person out everywhere (sessions and the person's index live in
    # different slots), delete a client (its grants are indexed in its own slot).
    admin = requests.Session()
    token = csrf_token(sign_in(admin, keycard.url, "alice").text)
    people = admin.get(keycard.url + "/api/admin/people", timeout=10).json()["people"]
    assert {p["login"]: p["active_sessions"] for p in people} == {"alice": 1, "bob": 1}
    ended = admin.delete(keycard.url + "/api/admin/people/bob/sessions",
                         headers={"X-CSRFToken": token}, timeout=10)
    assert ended.json() == {"ended": 1}, ended.text[:300]
    assert verify(browser, keycard).status_code == 401
    tokens = polled.json()
    assert services.clients.delete(device.client_id)
    assert refresh(cli_rp, tokens["refresh_token"]).status_code in (400, 401)


def keys_per_master(topology: ClusterTopology, prefix: str) -> dict[int, int]:
    """Keycard's keys on each master (matched loosely: before the fix the prefix was
    wrapped in braces, ``{kt-...}:``)."""
    match = f"*{prefix.rstrip(':')}*"
    return {master.port: sum(1 for _ in master.client().scan_iter(match=match, count=1000))
            for master in topology.masters()}


def test_defect_6_keys_spread_over_the_three_masters(make_cluster_keycard, cluster_topology,
                                                     prefix, capsys):
    """Before: every key carried the hash tag ``{keycard}``, so one master held all."""
    keycard = make_cluster_keycard()
    client, secret = keycard.services.clients.create(name="Wiki", redirect_uris=[CB],
                                                     trusted=True)
    rp = RP(client, secret, keycard.url)
    rounds = 24
    for n in range(rounds):
        browser = requests.Session()
        sign_in(browser, keycard.url, ("alice", "bob", "carol")[n % 3])
        tokens = tokens_for(browser, rp, login=None)
        refresh(rp, tokens["refresh_token"])
    counts = keys_per_master(cluster_topology, prefix)
    total = sum(counts.values())
    assert total > rounds * 4, counts
    with capsys.disabled():
        print(f"\nkey distribution after {rounds} sign-ins + code + refresh "
              f"({total} keys): " + ", ".join(
                  f"master :{port} {count} ({count / total:.0%})"
                  for port, count in sorted(counts.items())))
    assert len(counts) == 3
    assert max(counts.values()) <= 0.6 * total, counts
    assert min(counts.values()) >= 0.15 * total, counts


# -- a master killed under load ---------------------------------------------------------------


class Load:
    """Threads sending requests whose right answers are known; every answer is classed as
    right, 503 (allowed while Redis fails over) or wrong (anything else: a 500, a refusal
    that should have been a success, a revoked token accepted)."""

    def __init__(self, checks: dict[str, Callable[[], requests.Response]],
                 expected: dict[str, Callable[[requests.Response], bool]]) -> None:
        self.checks = checks
        self.expected = expected
        self.log: list[tuple[float, str, str]] = []  # (time, check, right|503|wrong:...)
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(name,), daemon=True)
                        for name in checks]

    def _run(self, name: str) -> None:
        while not self.stop.is_set():
            try:
                response = self.checks[name]()
                if response.status_code == 503:
                    outcome = "503"
                elif self.expected[name](response):
                    outcome = "right"
                else:
                    outcome = f"wrong:{response.status_code}:{response.text[:120]}"
            except (requests.RequestException, ValueError, KeyError, AssertionError) as exc:
                outcome = f"wrong:{type(exc).__name__}:{exc}"[:200]
            self.log.append((time.monotonic(), name, outcome))

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)

    def since(self, moment: float) -> list[tuple[float, str, str]]:
        return [entry for entry in list(self.log) if entry[0] >= moment]


def test_cluster_master_kill_answers_only_503s_and_recovers_within_10s(
        make_cluster_keycard, cluster_topology, capsys):
    keycard = make_cluster_keycard(SSO_FORWARD_AUTH_DOMAINS="acme.test")
    client, secret = keycard.services.clients.create(name="Wiki", redirect_uris=[CB],
                                                     trusted=True)
    rp = RP(client, secret, keycard.url)
    signed_in = requests.Session()
    sign_in(signed_in, keycard.url, "bob")
    live = tokens_for(signed_in, rp, login=None)["access_token"]
    dead = tokens_for(signed_in, rp, login=None)["access_token"]
    assert revoke(rp, dead).status_code == 200
    config_key = keycard.services.store.keys.rules()
    victim = cluster_topology.master_of(config_key)

    def fresh_sign_in() -> requests.Response:
        # The directory and login index are configuration: every sign-in writes the slot
        # of the master being killed.
        browser = requests.Session()
        page = browser.get(keycard.url + "/login", timeout=10)
        if page.status_code != 200 or "/login/oauth/authorize" not in page.url:
            return page  # a 503 from /login, or a wrong answer
        return pick_upstream_user(browser, page, "carol")

    checks = {
        "sign-in": fresh_sign_in,
        "forward auth": lambda: verify(signed_in, keycard),
        "anonymous": lambda: verify(requests.Session(), keycard),
        "introspect live": lambda: introspect(rp, live),
        "introspect revoked": lambda: introspect(rp, dead),
    }
    expected = {
        "sign-in": lambda r: r.status_code == 200 and "Carol" in r.text,
        "forward auth": lambda r: r.status_code == 200
        and r.headers.get("X-Auth-Request-User") == "bob",
        "anonymous": lambda r: r.status_code == 401,
        "introspect live": lambda r: r.status_code == 200 and r.json()["active"] is True,
        "introspect revoked": lambda r: r.status_code == 200 and r.json()["active"] is False,
    }
    with Load(checks, expected) as load:
        wait_until(lambda: {n for _, n, o in load.log if o == "right"} == set(checks),
                   timeout=15)
        with cluster_topology.killed(victim):
            killed_at = time.monotonic()

            def recovered() -> bool:
                # Every kind of request answered right, twice, after the last 503.
                entries = load.since(killed_at)
                last_503 = max((t for t, _, o in entries if o == "503"), default=killed_at)
                after = collections.Counter(n for t, n, o in entries
                                            if t > last_503 and o == "right")
                return len(after) == len(checks) and min(after.values()) >= 2

            try:
                wait_until(recovered, timeout=30, interval=0.1)
            except AssertionError:
                tail = collections.Counter((n, o[:80]) for t, n, o in load.since(killed_at)
                                           if t > time.monotonic() - 5)
                raise AssertionError(f"not recovered; last 5 s: {tail}") from None
            entries = load.since(killed_at)
            last_503 = max((t for t, _, o in entries if o == "503"), default=killed_at)
            new_master = cluster_topology.master_of(config_key)
    outcomes = collections.Counter(o.split(":", 1)[0] for _, _, o in entries)
    wrong = [(n, o) for _, n, o in entries if o.startswith("wrong")]
    seconds = last_503 - killed_at
    with capsys.disabled():
        print(f"\ncluster master kill (:{victim.port} -> :{new_master.port}): "
              f"{len(entries)} requests, {outcomes['503']} answered 503, "
              f"{len(wrong)} wrong, recovered {seconds:.1f}s after the kill")
    assert new_master.port != victim.port
    assert wrong == [], collections.Counter(o[:150] for _, o in wrong)
    assert seconds < 10


def test_a_cluster_url_may_name_several_nodes_and_the_first_may_be_down(
        make_keycard, make_cluster_keycard, cluster_topology):
    """``redis+cluster://dead:port,live:port``: a process starts and serves while the node
    the URL names first does not answer (it learns the slot map from the next).
    (``make_cluster_keycard`` only for its clean-up of the test's keys.)"""
    from tests.support import free_port
    dead = free_port()
    live = ",".join(f"127.0.0.1:{n.port}" for n in cluster_topology.nodes_alive()[:2])
    keycard = make_keycard(redis_url=f"redis+cluster://127.0.0.1:{dead},{live}")
    assert "Bob Builder" in sign_in(requests.Session(), keycard.url, "bob").text
    assert requests.get(keycard.url + "/readyz", timeout=10).status_code == 200


def test_a_hash_tagged_prefix_keeps_the_one_slot_writes_working(make_cluster_keycard):
    """``SSO_REDIS_PREFIX={tag}:`` on a cluster (the one-slot layout of earlier versions):
    Keycard takes its single-Redis paths (one round trip each), on a cluster client. A
    second sign-in of the same person carries the first session's tokens (SUNIONSTORE,
    which redis-py refuses as a method of a cluster pipeline: a 500 before)."""
    tag = f"{{kt-tag-{time.time_ns()}}}:"
    keycard = make_cluster_keycard(SSO_REDIS_PREFIX=tag)
    try:
        client, secret = keycard.services.clients.create(name="Wiki", redirect_uris=[CB],
                                                         trusted=True)
        rp = RP(client, secret, keycard.url)
        browser = requests.Session()
        tokens = tokens_for(browser, rp, "bob")
        assert refresh(rp, tokens["refresh_token"]).status_code == 200
        again = browser.get(keycard.url + "/login?prompt=login", timeout=10)
        assert pick_upstream_user(browser, again, "bob").status_code < 400
        later = tokens_for(browser, rp, login=None)
        assert introspect(rp, later["refresh_token"]).json()["active"] is True
        page = browser.get(keycard.url + "/", timeout=10)
        browser.post(keycard.url + "/logout", data={"csrf_token": csrf_token(page.text)},
                     timeout=10)
        # the first session's grant was carried to the second: it ended with it
        for token in (tokens["access_token"], later["access_token"], later["refresh_token"]):
            assert introspect(rp, token).json()["active"] is False
    finally:
        node = keycard.services.store.redis
        leftovers = list(node.scan_iter(match=f"{tag}*", count=1000))
        if leftovers:
            node.delete(*leftovers)
