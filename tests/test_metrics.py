"""``/metrics``: Prometheus text with requests by route template, latency, audit events and
tokens issued; summed across worker processes when PROMETHEUS_MULTIPROC_DIR is set."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import keycard_env
from tests.support import free_port, sign_in, wait_until

ROOT = Path(__file__).resolve().parent.parent


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = requests.get(url + "/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_requests_are_counted_by_route_template_never_by_path(keycard):
    before = scrape(keycard.url)
    for _ in range(3):
        assert requests.get(keycard.url + "/jwks.json", timeout=10).status_code == 200
    probe = f"/no-such-page-{secrets.token_hex(8)}"
    assert requests.get(keycard.url + probe, timeout=10).status_code == 404
    text = requests.get(keycard.url + "/metrics", timeout=10).text
    after = scrape(keycard.url)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("keycard_http_requests_total", route="/jwks.json", method="GET",
                status="200") == 3
    assert grew("keycard_http_requests_total", route="<unmatched>", method="GET",
                status="404") == 1
    assert probe not in text  # a path never becomes a label: no unbounded series
    assert grew("keycard_http_request_duration_seconds_count", route="/jwks.json") == 3


def test_sign_ins_and_tokens_are_counted_without_naming_anyone(keycard, http):
    registry = keycard.services.clients
    client, secret = registry.create(name="Metrics bot", grant_types=["client_credentials"],
                                     scopes=[], roles=["bot"])
    before = scrape(keycard.url)
    sign_in(http, keycard.url, "bob")
    token = requests.post(keycard.url + "/token", data={"grant_type": "client_credentials"},
                          auth=(client.client_id, str(secret)), timeout=10)
    assert token.status_code == 200
    text = requests.get(keycard.url + "/metrics", timeout=10).text
    after = scrape(keycard.url)
    assert value(after, "keycard_audit_events_total", event="signin.success") == value(
        before, "keycard_audit_events_total", event="signin.success") + 1
    assert value(after, "keycard_tokens_issued_total", grant_type="client_credentials") == (
        value(before, "keycard_tokens_issued_total", grant_type="client_credentials") + 1)
    for secret_ish in ("bob", client.client_id, token.json()["access_token"]):
        assert secret_ish not in text


def test_worker_processes_are_summed_with_a_multiprocess_directory(
        redis_server, prefix, upstream, tmp_path):
    port = free_port()
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    env = {**os.environ, **keycard_env(redis_server.url, prefix, upstream.url, port, tmp_path),
           "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    server = subprocess.Popen(
        [sys.executable, "-m", "granian", "--interface", "wsgi", "--factory", "--workers", "2",
         "--blocking-threads", "2", "--host", "127.0.0.1", "--port", str(port),
         "--log-level", "warning", "app:create_app"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        def up() -> bool:
            try:
                return requests.get(url + "/healthz", timeout=2).status_code == 200
            except (requests.ConnectionError, requests.Timeout):  # starting, or busy starting
                return False

        wait_until(up, timeout=30)
        sent = 1  # the probe above

        def both_workers_counted() -> bool:
            # A new connection each time: the kernel spreads them over the two workers,
            # and each worker keeps its counts in its own file.
            nonlocal sent
            assert requests.get(url + "/healthz", timeout=5).status_code == 200
            sent += 1
            return len(list(metrics_dir.glob("counter_*.db"))) == 2

        wait_until(both_workers_counted, timeout=30, interval=0)
        # Every scrape, whichever worker answers it, sees every request of both.
        for _ in range(4):
            seen = value(scrape(url), "keycard_http_requests_total", route="/healthz",
                         method="GET", status="200")
            assert seen == sent
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(15)


def test_a_metrics_token_when_set_is_required_as_a_bearer(make_keycard):
    token = secrets.token_urlsafe(32)
    keycard = make_keycard(SSO_METRICS_TOKEN=token)
    anonymous = requests.get(keycard.url + "/metrics", timeout=10)
    assert anonymous.status_code == 401 and anonymous.json()["error"] == "unauthorized"
    assert anonymous.headers["WWW-Authenticate"].startswith("Bearer")
    wrong = requests.get(keycard.url + "/metrics", timeout=10,
                         headers={"Authorization": "Bearer " + token[:-1] + "x"})
    assert wrong.status_code == 401
    right = requests.get(keycard.url + "/metrics", timeout=10,
                         headers={"Authorization": "Bearer " + token})
    assert right.status_code == 200 and "keycard_http_requests_total" in right.text
