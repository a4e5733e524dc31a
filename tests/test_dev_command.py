"""``sso dev`` as a newcomer runs it: a subprocess serving Keycard and the dev upstream."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.support import free_port, sign_in, wait_until

SSO = str(Path(sys.executable).parent / "sso")


@pytest.fixture
def dev_server(redis_server, prefix, tmp_path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    port, upstream_port, demo_port = free_port(), free_port(), free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SSO_")},
        "SSO_REDIS_URL": redis_server.url,
        "SSO_REDIS_PREFIX": prefix,
        "SSO_ISSUER": f"http://127.0.0.1:{port}",
    }
    proc = subprocess.Popen(
        [SSO, "dev", "--upstream-port", str(upstream_port), "--demo-port", str(demo_port)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        try:
            return requests.get(url + "/healthz", timeout=1).status_code == 200
        except (requests.ConnectionError, requests.Timeout):  # starting, or busy starting
            return False

    wait_until(up, timeout=30, interval=0.1)
    proc.demo_url = f"http://127.0.0.1:{demo_port}"  # type: ignore[attr-defined]
    proc.upstream_url = f"http://127.0.0.1:{upstream_port}"  # type: ignore[attr-defined]
    yield url, proc
    proc.terminate()
    proc.wait(10)


def test_sso_dev_serves_the_whole_journey(dev_server):
    url, proc = dev_server
    http = requests.Session()
    portal = sign_in(http, url, "alice")
    assert portal.url == url + "/"
    assert "Alice Archer" in portal.text and "acme/platform" in portal.text
    assert '<li class="chip">admin</li>' in portal.text  # a bootstrap admin in the demo
    # The demo internal app is registered and signs in through Keycard without a prompt.
    demo = http.get(proc.demo_url + "/login")
    assert demo.url == proc.demo_url + "/" and "Alice Archer" in demo.text
    assert "acme:platform" in demo.text  # the groups claim it received
    proc.terminate()
    output, _ = proc.communicate(timeout=10)
    assert f"{url}/" in output and "Development GitHub" in output


def test_sso_dev_offboards_through_the_org_webhook_in_seconds(dev_server):
    url, proc = dev_server
    http = requests.Session()
    assert "Bob Builder" in sign_in(http, url, "bob").text
    removed = requests.post(proc.upstream_url + "/_dev/members",
                            data={"org": "acme", "login": "bob", "action": "remove"}, timeout=10)
    assert removed.status_code == 200 and "Removed bob from acme." in removed.text
    # The development GitHub sends the signed organisation webhook; Keycard re-reads bob,
    # finds him gone, and ends his session (no re-check period to wait for).
    wait_until(lambda: "Sign in with GitHub" in http.get(url + "/", timeout=5).text, timeout=10)
    sent = requests.get(proc.upstream_url + "/_dev/hooks", timeout=5).json()["sent"]
    assert [(d["event"], d["action"], d["status"]) for d in sent] == [
        ("organization", "member_removed", 200)]
    proc.terminate()
    output, _ = proc.communicate(timeout=10)
    assert "/_dev/members" in output and '"event":"person.offboarded"' in output


def test_finding_13_sso_devs_request_log_never_shows_codes_or_state(dev_server):
    url, proc = dev_server
    sign_in(requests.Session(), url, "alice")
    proc.terminate()
    output, _ = proc.communicate(timeout=10)
    callbacks = [line for line in output.splitlines() if "GET /auth/github/callback?" in line]
    assert callbacks, output[-2000:]
    for line in callbacks:
        assert "code=[redacted]" in line and "state=[redacted]" in line, line
    assert not re.search(r"[?&](code|state)=(?!\[redacted\])", output), output[-2000:]


def test_sso_dev_refuses_production(tmp_path):
    env = {**os.environ, "SSO_ENV": "production"}
    result = subprocess.run([SSO, "dev"], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode != 0
    assert "production" in result.stderr
