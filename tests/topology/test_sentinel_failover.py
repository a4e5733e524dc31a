"""Keycard through Sentinel failovers under a steady load (issue #12, "Failover tests").

Both tests share the session's topology (tests/topologies.py) and leave it whole: after a
failover the roles are swapped in the ``SentinelTopology`` object, and a killed master
is restarted as the new master's replica. Run with ``-s`` to see the measured figures.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from sso.sentinel_watch import CHECK_SECONDS
from tests.conftest import Keycard
from tests.oidc.conftest import CB, RP, tokens_for
from tests.support import sign_in, wait_until
from tests.topology.load import Load, Step
from tests.topology.test_journeys import APP_HOST

pytestmark = [pytest.mark.topology, pytest.mark.xdist_group("sentinel-failover")]


@dataclass
class Tokens:
    bot: RP  # a client-credentials client
    app: RP  # bob's app
    live: str  # bob's access token for APP_HOST
    revoked: str  # another, revoked before any fault


def prepare(keycard: Keycard) -> Tokens:
    clients = keycard.services.clients
    bot, bot_secret = clients.create(name="Bot", grant_types=["client_credentials"],
                                     scopes=["roles"], redirect_uris=[])
    app, app_secret = clients.create(name="App", redirect_uris=[CB], trusted=True,
                                     audiences=[f"https://{APP_HOST}"])
    rp = RP(app, app_secret, keycard.url)
    browser = requests.Session()
    sign_in(browser, keycard.url, "bob")
    live = tokens_for(browser, rp, None, resource=f"https://{APP_HOST}")["access_token"]
    revoked = tokens_for(browser, rp, None, resource=f"https://{APP_HOST}")["access_token"]
    assert rp.post("/revoke", {"token": revoked}).status_code == 200
    return Tokens(RP(bot, bot_secret, keycard.url), rp, live, revoked)


def status(response: requests.Response) -> str:
    return "ok" if response.status_code == 200 else str(response.status_code)


def steps(base: str, tokens: Tokens) -> dict[str, Step]:
    """Token, introspection and forward-auth requests, each checked for a wrong answer."""
    bot, app = tokens.bot, tokens.app

    def token(http: requests.Session) -> str:
        return status(http.post(base + "/token", data={"grant_type": "client_credentials"},
                                auth=bot.auth(), timeout=10))

    def introspect(expected: bool, token: str) -> Step:
        def step(http: requests.Session) -> str:
            answer = http.post(base + "/introspect", data={"token": token}, auth=app.auth(),
                               timeout=10)
            if answer.status_code != 200:
                return str(answer.status_code)
            seen = answer.json()["active"]
            return "ok" if seen is expected else f"WRONG introspection active={seen}"
        return step

    def verify(expected: int, token: str) -> Step:
        def step(http: requests.Session) -> str:
            answer = http.get(base + "/auth/verify", timeout=10, headers={
                "Authorization": f"Bearer {token}", "X-Forwarded-Host": APP_HOST,
                "X-Forwarded-Proto": "https", "X-Forwarded-Uri": "/"})
            if answer.status_code in (expected, 503):
                return "ok" if answer.status_code == expected else "503"
            return f"WRONG verify {answer.status_code}"
        return step

    return {"token": token,
            "introspect live": introspect(True, tokens.live),
            "introspect revoked": introspect(False, tokens.revoked),
            "verify live": verify(200, tokens.live),
            "verify revoked": verify(401, tokens.revoked)}


@pytest.fixture
def keycard(keycard_on: Callable[..., Keycard], sentinel_topology: Any) -> Keycard:
    return keycard_on(sentinel_topology.url, SSO_FORWARD_AUTH_DOMAINS="acme.test")


def jti_of(token: str) -> str:
    payload = token.split(".")[1]
    return str(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["jti"])


def test_a_planned_sentinel_failover_under_load_answers_every_request_and_loses_no_write(
        keycard, sentinel_topology):
    tokens = prepare(keycard)
    revoked: list[tuple[float, str]] = []  # (when, token) revoked during the load

    def revoke(http: requests.Session) -> str:
        minted = http.post(keycard.url + "/token", data={"grant_type": "client_credentials"},
                           auth=tokens.bot.auth(), timeout=10)
        if minted.status_code != 200:
            return str(minted.status_code)
        token = minted.json()["access_token"]
        sent = time.monotonic()
        answer = http.post(keycard.url + "/revoke", data={"token": token},
                           auth=tokens.bot.auth(), timeout=10)
        if answer.status_code == 200:
            revoked.append((sent, token))
        return status(answer)

    with Load({**steps(keycard.url, tokens), "revoke": revoke}) as load:
        load.wait_for(50, since=0)
        fault_at = time.monotonic()
        sentinel_topology.failover()
        settled = time.monotonic()
        # Revocations sent once Keycard had time to see the new master (the watch's
        # period, and a margin for a busy machine) must reach the new master.
        seen_by = settled + CHECK_SECONDS + 1.0
        wait_until(lambda: sum(1 for at, _ in revoked if at > seen_by) >= 10, timeout=20)
    report = load.report("SENTINEL FAILOVER under load", fault_at)
    print(f"  (sentinels agreed on the new master {settled - fault_at:.2f} s after the command)")
    store, master = keycard.services.store, sentinel_topology.master.client()

    def lost(tokens: list[str]) -> list[str]:
        """Revoked tokens the new master does not know as revoked: the demoted master took
        the revocation along, and Sentinel throws its data away when it makes it a replica."""
        listed = store.keys.revoked_client_tokens(tokens_bot_id)
        return [t for t in tokens if master.zscore(listed, jti_of(t)) is None]

    tokens_bot_id = tokens.bot.client_id
    late = [token for at, token in revoked if at > seen_by]
    # During the switch itself (from the promotion to the sentinels' announcement) the
    # master being demoted still takes writes and throws them away when it is demoted:
    # a revocation is answered only once a replica holds it (SSO_REDIS_WAIT_REPLICAS,
    # Store.confirmed), else it is written again through the new master.
    during = [(at, token) for at, token in revoked if fault_at <= at <= seen_by]
    gone = [at - fault_at for at, token in during if lost([token])]
    print(f"  (revocations answered during the switch: {len(during)}, lost: {len(gone)}; "
          f"after it: {len(late)}, lost: {len(lost(late))})")
    sentinel_topology.rejoin()
    assert report.errors == {}, report.line()
    assert not gone, f"{len(gone)} of {len(during)} revocations made during the switch were lost"
    assert not lost(late), f"{len(lost(late))} of {len(late)} revocations went to the old master"


def test_killing_the_sentinel_master_answers_503_then_recovers_by_itself(
        keycard, sentinel_topology):
    tokens = prepare(keycard)
    with Load(steps(keycard.url, tokens)) as load:
        load.wait_for(50, since=0)
        fault_at = time.monotonic()
        sentinel_topology.kill_master()
        promoted = time.monotonic()
        load.wait_for(100, since=promoted)
    report = load.report("kill -9 the Sentinel master under load", fault_at)
    print(f"  (sentinels agreed on the new master {promoted - fault_at:.2f} s after the kill)")
    sentinel_topology.wait_ready()
    assert report.wrong == 0, report.line()
    assert report.recovered_after < 10, report.line()
