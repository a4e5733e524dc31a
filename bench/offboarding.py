"""How fast offboarding reaches an app, end to end (issue #13), and how the back-channel
logout queue behaves while an app is down.

    .venv/bin/python -m bench.offboarding [--runs 20] [--down 60]

Topology on loopback: a private redis-server, the development GitHub, Keycard (threaded
Werkzeug server, membership re-checks an hour apart) and Apache httpd + mod_auth_openidc
protecting an echo app (the same set-up as tests/relying_party/). Each run signs bob in
through Apache, removes him from the organisation at the development GitHub, sends the
signed ``organization`` webhook and times until Apache no longer has his session (it
redirects to Keycard instead of serving the page). Then an app that is down for
``--down`` seconds shows the retries and the delivery once it is back.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import requests
from flask import Flask, request

from bench.servers import free_port, keycard_env, start_redis
from sso import create_app
from sso.devupstream import create_upstream_app, load_demo_state
from sso.metrics import BACKCHANNEL_LOGOUT
from sso.registry import registry
from tests.relying_party.apache import echo_app, running_apache
from tests.support import LiveServer, obtain_tokens, sign_in

SECRET = "bench-offboarding-webhook-secret-0123456789"


def deliver(keycard_url: str, payload: dict[str, Any]) -> requests.Response:
    body = json.dumps(payload).encode()
    signature = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    return requests.post(keycard_url + "/hooks/github", data=body, timeout=15, headers={
        "Content-Type": "application/json", "X-GitHub-Event": "organization",
        "X-GitHub-Delivery": str(uuid.uuid4()), "X-Hub-Signature-256": f"sha256={signature}"})


def removal(login: str, user_id: int) -> dict[str, Any]:
    return {"action": "member_removed", "organization": {"login": "acme", "id": 9001},
            "membership": {"user": {"login": login, "id": user_id}}}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--down", type=float, default=60.0,
                        help="seconds the second app stays down (0 skips that part)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="keycard-offboarding-"))
    redis_proc = start_redis(workdir)
    state = load_demo_state()
    upstream = LiveServer(create_upstream_app(state)).start()
    server = LiveServer()
    env = keycard_env(server.url, upstream.url, redis_proc.url)
    env.update(SSO_GITHUB_WEBHOOK_SECRET=SECRET, SSO_MEMBERSHIP_MAX_AGE="3600")
    app = create_app(env)
    server.start(app)
    services = registry(app)
    port = free_port()
    redirect_uri = f"http://127.0.0.1:{port}/protected/redirect_uri"
    client, secret = services.clients.create(
        name="Apache app", redirect_uris=[redirect_uri], trusted=True,
        backchannel_logout_uri=redirect_uri + "?logout=backchannel")
    echo = LiveServer(echo_app).start()
    answered: list[float] = []
    ended: list[float] = []
    try:
        with running_apache(port, server.url, client.client_id, str(secret), echo.port) as rp:
            for _ in range(args.runs):
                http = requests.Session()
                http.trust_env = False
                sign_in(http, server.url, "bob")
                assert http.get(rp.url + "/protected/page", timeout=15).status_code == 200
                state.remove_user_from_org("acme", "bob")
                started = time.perf_counter()
                assert deliver(server.url, removal("bob", 1002)).json()["result"] == "offboarded"
                answered.append(time.perf_counter() - started)
                while http.get(rp.url + "/protected/page", allow_redirects=False,
                               timeout=15).status_code == 200:
                    if time.perf_counter() - started > 30:
                        raise RuntimeError("Apache kept the session for 30 s")
                    time.sleep(0.005)
                ended.append(time.perf_counter() - started)
                state.add_org_member("acme", "bob")
                state.add_team_member("acme", "sre", "bob")
        print(f"\nOffboarding, {args.runs} runs: organization.member_removed delivered → ...")
        print("| step | median | p90 | min | max |\n|---|---|---|---|---|")
        for name, values in (("Keycard answered the webhook (sessions and tokens ended)",
                              answered),
                             ("Apache's session ended (back-channel logout delivered)", ended)):
            print(f"| {name} | {statistics.median(values) * 1000:.0f} ms | "
                  f"{percentile(values, 0.9) * 1000:.0f} ms | {min(values) * 1000:.0f} ms | "
                  f"{max(values) * 1000:.0f} ms |")
        if args.down:
            down_app(services, server.url, args.down)
    finally:
        echo.stop()
        server.stop()
        upstream.stop()
        redis_proc.stop()
    return 0


def down_app(services: Any, keycard_url: str, down: float) -> None:
    """An app unreachable for ``down`` seconds: its logout waits in Redis and arrives."""
    port = free_port()
    received: list[float] = []
    receiver = Flask("receiver")

    @receiver.post("/bcl")
    def bcl() -> tuple[str, int]:
        assert request.form["logout_token"]
        received.append(time.monotonic())
        return "", 200

    client, secret = services.clients.create(
        name="Down app", redirect_uris=["http://127.0.0.1:9/cb"], trusted=True,
        backchannel_logout_uri=f"http://127.0.0.1:{port}/bcl")
    http = requests.Session()
    sign_in(http, keycard_url, "alice")
    obtain_tokens(http, keycard_url, client.client_id, str(secret))
    failed_before = BACKCHANNEL_LOGOUT.labels("failed")._value.get()
    portal = http.get(keycard_url + "/")
    token = portal.text.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    started = time.monotonic()
    http.post(keycard_url + "/logout", data={"csrf_token": token})
    up_at = started + down
    while time.monotonic() < up_at:
        time.sleep(0.1)
    app_server = LiveServer(receiver, port=port).start()
    try:
        deadline = time.monotonic() + 120
        while not received and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        app_server.stop()
    failed = BACKCHANNEL_LOGOUT.labels("failed")._value.get() - failed_before
    print(f"\nApp down for {down:.0f} s: {failed:.0f} failed attempts (connection refused), "
          f"then delivered {received[0] - up_at:.1f} s after it came back "
          f"({received[0] - started:.1f} s after the sign-out); "
          f"{len(received)} delivery, queue now {services.backchannel.pending()}."
          if received else f"\nApp down for {down:.0f} s: NOT delivered within 120 s.")


if __name__ == "__main__":
    threading.current_thread().name = "offboarding-bench"
    raise SystemExit(main())
