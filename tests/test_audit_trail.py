"""Finding 5 (issue #11): the audit trail cannot be flushed from outside, and every event
reaches the logs as one JSON line on stderr, under the servers operators really run."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from tests.conftest import keycard_env
from tests.support import free_port, sign_in, stop_at_callback, wait_until


def _metric(keycard_url: str, name: str, **labels: str) -> float:
    wanted = name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
    for line in requests.get(keycard_url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _audit_events(keycard: Any) -> list[str]:
    return [e["event"] for e in keycard.services.audit.recent(1000)]


def test_finding_5_junk_callbacks_are_counted_not_written_to_the_audit_stream(keycard):
    anonymous = requests.Session()
    name = "keycard_signin_refused_anonymous_total"
    unknown_before = _metric(keycard.url, name, reason="state_unknown")
    missing_before = _metric(keycard.url, name, reason="state_missing")
    for _ in range(20):
        junk = anonymous.get(f"{keycard.url}/auth/github/callback?state="
                             f"{secrets.token_urlsafe(16)}&code=x", timeout=10)
        assert junk.status_code == 400
    assert anonymous.get(f"{keycard.url}/auth/github/callback", timeout=10).status_code == 400
    assert _audit_events(keycard) == []  # nothing an outsider sends reaches the stream
    assert _metric(keycard.url, name, reason="state_unknown") == unknown_before + 20
    assert _metric(keycard.url, name, reason="state_missing") == missing_before + 1


def test_finding_5_refusals_of_real_states_that_name_nobody_are_counted_too(keycard, http):
    """A state costs one anonymous GET /login: a callback with it that GitHub never
    vouched for (carried to another browser, error=access_denied, a made-up code) is a
    metric too, or a script could still flush the stream."""
    name = "keycard_signin_refused_anonymous_total"
    before = {reason: _metric(keycard.url, name, reason=reason)
              for reason in ("state_foreign_browser", "upstream_access_denied",
                             "upstream_bad_credentials")}
    carried = stop_at_callback(http, keycard.url, "alice")
    with requests.Session() as other:  # a real state carried to another browser
        assert other.get(carried, timeout=10).status_code == 400
    for query in ("error=access_denied", "code=made-up"):
        scripted = requests.Session()
        start = scripted.get(keycard.url + "/login", allow_redirects=False, timeout=10)
        state = parse_qs(urlsplit(start.headers["Location"]).query)["state"][0]
        answer = scripted.get(f"{keycard.url}/auth/github/callback?state={state}&{query}",
                              timeout=10)
        if query == "error=access_denied":  # "Sign-in cancelled": a page, not an error
            assert answer.status_code == 200 and "Sign-in cancelled" in answer.text
        else:
            assert 400 <= answer.status_code < 600 and answer.status_code != 500
    assert [e for e in keycard.services.audit.recent(100) if e["event"] == "signin.refused"
            ] == []
    for reason, count in before.items():
        assert _metric(keycard.url, name, reason=reason) == count + 1, reason


def test_finding_5_a_person_github_vouched_for_is_still_audited_by_login(keycard, http):
    page = sign_in(http, keycard.url, "mallory")  # signs in upstream, not a member of acme
    assert page.status_code == 403
    refused = [e for e in keycard.services.audit.recent(100) if e["event"] == "signin.refused"]
    assert [(e["details"]["reason"], e["details"]["login"]) for e in refused] == [
        ("not_a_member", "mallory")]


# -- the JSON lines on a real server's stderr -------------------------------------------------


def _server_command(server: str, port: int) -> list[str]:
    if server == "gunicorn":
        return [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}",
                "--workers", "1", "--worker-class", "gthread", "--threads", "4",
                "--log-level", "warning", "sso:create_app()"]
    return [sys.executable, "-m", "granian", "--interface", "wsgi", "--host", "127.0.0.1",
            "--port", str(port), "--workers", "1", "--blocking-threads", "4", "--no-ws",
            "--log-level", "warning", "--factory", "sso:create_app"]


@pytest.mark.parametrize("server", ["gunicorn", "granian"])
def test_finding_5_every_audit_event_is_one_json_line_on_the_servers_stderr(
        server, redis_server, prefix, upstream, rdb, tmp_path: Path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSO_")}
    env.update(keycard_env(redis_server.url, prefix, upstream.url, port, tmp_path))
    stderr_path = tmp_path / "stderr.log"
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(_server_command(server, port), cwd=tmp_path, env=env,
                                stdout=subprocess.DEVNULL, stderr=stderr,
                                start_new_session=True)
    try:
        def ready() -> bool:
            assert proc.poll() is None, stderr_path.read_text()[-2000:]
            try:
                return requests.get(url + "/readyz", timeout=2).status_code == 200
            except (requests.ConnectionError, requests.Timeout):  # starting, or busy starting
                return False

        wait_until(ready, timeout=60)
        http = requests.Session()
        http.headers["User-Agent"] = "audit-line-test"
        sign_in(http, url, "bob")
        portal = http.get(url + "/", timeout=10)
        token = portal.text.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
        http.post(url + "/logout", data={"csrf_token": token}, allow_redirects=False,
                  timeout=10)
        stream = [fields["event"] for _, fields in rdb.xrange(f"{prefix}audit")]
        assert {"signin.success", "signout"} <= set(stream), stream

        def lines() -> list[dict[str, Any]]:
            found = []
            for raw in stderr_path.read_text().splitlines():
                if raw.startswith("{") and "event" in (line := json.loads(raw)):
                    found.append(line)  # an audit line (log lines have "message")
            return found

        # One JSON line per event in the stream, no more (no duplicate via the root logger).
        wait_until(lambda: Counter(e["event"] for e in lines()) == Counter(stream),
                   timeout=15)
        success = next(e for e in lines() if e["event"] == "signin.success")
        assert success["actor"] == "bob" and success["ip"] == "127.0.0.1"
        assert success["user_agent"] == "audit-line-test"
        assert isinstance(success["ts"], float) and success["details"]["user_id"] == "1002"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
