"""GitHub answers that are slow, huge or the wrong shape (issue #11, findings 1 and 11).

A tiny threaded HTTP server on loopback plays a misbehaving GitHub: it trickles a
body a byte at a time, sends forty megabytes, or answers ``/user`` with ``{}``. The
connector is built directly against it (``GitHubConnector(GitHubConfig(...))``), and
for the sign-in page Keycard's ``SSO_GITHUB_API_URL`` points at it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sso.upstream.base import (
    BadCredentials,
    UpstreamMalformed,
    UpstreamToken,
    UpstreamUnavailable,
)
from sso.upstream.github import MAX_BODY_BYTES, GitHubConfig, GitHubConnector
from tests.support import sign_in

TIMEOUT = 1.0
MARGIN = 0.75  # scheduling slack on a shared 2-core machine
HUGE = 40 * 1024 * 1024

Behaviour = Callable[["_Handler"], None]


@dataclass
class BadGitHub:
    """What each path answers, and what the server managed to send."""

    url: str = ""
    routes: dict[str, Behaviour] = field(default_factory=dict)
    sent: dict[str, int] = field(default_factory=dict)
    finished: set[str] = field(default_factory=set)
    stop: threading.Event = field(default_factory=threading.Event)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def _serve(self) -> None:
        path = self.path.split("?", 1)[0]
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        behaviour = self.server.bad.routes.get(path)
        if behaviour is None:
            self.send_json(404, b'{"message": "Not Found"}')
            return
        try:
            behaviour(self)
            self.server.bad.finished.add(path)
        except OSError:  # the client gave up: what the tests want
            self.close_connection = True

    do_GET = do_POST = _serve

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def send_json(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def count(self, n: int) -> None:
        path = self.path.split("?", 1)[0]
        self.server.bad.sent[path] = self.server.bad.sent.get(path, 0) + n


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    bad: BadGitHub


@pytest.fixture
def bad_github() -> Iterator[BadGitHub]:
    server = _Server(("127.0.0.1", 0), _Handler)
    server.bad = BadGitHub(url=f"http://127.0.0.1:{server.server_address[1]}")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.bad
    server.bad.stop.set()
    server.shutdown()
    server.server_close()


def connector_for(bad: BadGitHub) -> GitHubConnector:
    return GitHubConnector(GitHubConfig(
        client_id="keycard-dev", client_secret="keycard-dev-secret", web_url=bad.url,
        api_url=bad.url + "/api", timeout=TIMEOUT))


def trickle(handler: _Handler) -> None:
    """Headers at once, then a JSON body one byte every tenth of a second (~100 s)."""
    body = b'{"id": 7, "login": "slowpoke", "padding": "' + b"x" * 1000 + b'"}'
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    for byte in body:
        if handler.server.bad.stop.wait(0.1):
            return
        handler.wfile.write(bytes([byte]))
        handler.wfile.flush()
        handler.count(1)


def huge(*, declare_length: bool) -> Behaviour:
    def send(handler: _Handler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        if declare_length:
            handler.send_header("Content-Length", str(HUGE))
        else:
            handler.send_header("Connection", "close")  # body ends when the socket does
            handler.close_connection = True
        handler.end_headers()
        chunk = b"[" + b" " * (64 * 1024 - 1)
        for _ in range(HUGE // len(chunk)):
            if handler.server.bad.stop.is_set():
                return
            handler.wfile.write(chunk)
            handler.count(len(chunk))
            chunk = b" " * len(chunk)
    return send


def answer(status: int, body: bytes) -> Behaviour:
    return lambda handler: handler.send_json(status, body)


def timed(call: Callable[[], object]) -> tuple[BaseException, float]:
    started = time.monotonic()
    with pytest.raises(Exception) as caught:
        call()
    return caught.value, time.monotonic() - started


# -- finding 11: one deadline and a size cap per call -------------------------------------


def test_finding_11_a_trickled_api_answer_fails_at_the_deadline(bad_github):
    bad_github.routes["/api/user"] = trickle
    error, elapsed = timed(lambda: connector_for(bad_github).refresh(UpstreamToken("t")))
    assert isinstance(error, UpstreamUnavailable), repr(error)
    assert elapsed < TIMEOUT + MARGIN, elapsed
    assert "/api/user" not in bad_github.finished


def test_finding_11_a_trickled_token_exchange_fails_at_the_deadline(bad_github):
    bad_github.routes["/login/oauth/access_token"] = trickle
    connector = connector_for(bad_github)
    error, elapsed = timed(lambda: connector.handle_callback(
        code="c", redirect_uri="http://127.0.0.1:9/cb", code_verifier="v" * 43))
    assert isinstance(error, UpstreamUnavailable), repr(error)
    assert elapsed < TIMEOUT + MARGIN, elapsed


def test_finding_11_a_huge_declared_answer_is_refused_unread(bad_github):
    bad_github.routes["/api/user"] = huge(declare_length=True)
    error, elapsed = timed(lambda: connector_for(bad_github).refresh(UpstreamToken("t")))
    assert isinstance(error, UpstreamMalformed), repr(error)
    assert "larger than" in error.detail
    assert elapsed < TIMEOUT, elapsed
    assert "/api/user" not in bad_github.finished


def test_finding_11_a_huge_undeclared_answer_is_read_no_further_than_the_cap(bad_github):
    bad_github.routes["/api/user"] = huge(declare_length=False)
    error, elapsed = timed(lambda: connector_for(bad_github).refresh(UpstreamToken("t")))
    assert isinstance(error, UpstreamMalformed), repr(error)
    assert "larger than" in error.detail
    assert elapsed < TIMEOUT + MARGIN, elapsed
    assert "/api/user" not in bad_github.finished  # gave up long before 40 MiB
    # What the server pushed into the socket: the cap plus what kernel buffers took.
    assert bad_github.sent.get("/api/user", 0) < MAX_BODY_BYTES + 16 * 1024 * 1024


def test_finding_11_a_huge_token_answer_is_refused(bad_github):
    bad_github.routes["/login/oauth/access_token"] = huge(declare_length=False)
    connector = connector_for(bad_github)
    error, _ = timed(lambda: connector.handle_callback(
        code="c", redirect_uri="http://127.0.0.1:9/cb", code_verifier="v" * 43))
    assert isinstance(error, UpstreamMalformed), repr(error)
    assert "/login/oauth/access_token" not in bad_github.finished


def test_ordinary_answers_still_arrive_whole(bad_github):
    bad_github.routes["/login/oauth/access_token"] = answer(
        200, b'{"access_token": "gho_x", "token_type": "bearer", "scope": "read:org"}')
    bad_github.routes["/api/user"] = answer(200, b'{"id": 7, "login": "kim", "name": "Kim"}')
    bad_github.routes["/api/user/emails"] = answer(200, b"[]")
    bad_github.routes["/api/user/orgs"] = answer(200, b"[]")
    bad_github.routes["/api/user/teams"] = answer(200, b"[]")
    identity, token = connector_for(bad_github).handle_callback(
        code="c", redirect_uri="http://127.0.0.1:9/cb", code_verifier="v" * 43)
    assert (identity.user_id, identity.login, token.access_token) == ("7", "kim", "gho_x")


@pytest.mark.parametrize(("status", "body", "error"), [
    (200, b"<html>unicorn</html>", UpstreamUnavailable),
    (502, b'{"access_token": "gho_x"}', UpstreamUnavailable),
    (302, b"", UpstreamUnavailable),  # not followed: the code goes to GitHub only
    (200, b'["gho_x"]', UpstreamMalformed),
    (200, b'{"token_type": "bearer"}', BadCredentials),
    (400, b'{"error": "bad_verification_code", "error_description": "gone"}', BadCredentials),
], ids=["not-json", "5xx", "redirect", "list", "no-token", "error-4xx"])
def test_every_odd_token_answer_is_a_clear_upstream_error(bad_github, status, body, error):
    bad_github.routes["/login/oauth/access_token"] = answer(status, body)
    connector = connector_for(bad_github)
    caught, _ = timed(lambda: connector.handle_callback(
        code="c", redirect_uri="http://127.0.0.1:9/cb", code_verifier="v" * 43))
    assert type(caught) is error, repr(caught)


# -- finding 1: malformed answers are upstream errors, never 500s ---------------------------


MALFORMED_USER = [
    pytest.param(b"{}", id="empty-object"),
    pytest.param(b"[]", id="list"),
    pytest.param(b"<html>unicorn</html>", id="not-json"),
    pytest.param(b'{"login": "kim"}', id="no-id"),
    pytest.param(b'{"id": "7", "login": "kim"}', id="string-id"),
    pytest.param(b'{"id": 7, "login": null}', id="null-login"),
    pytest.param(b"null", id="null"),
]


@pytest.mark.parametrize("body", MALFORMED_USER)
def test_finding_1_a_malformed_user_answer_is_an_upstream_error(bad_github, body):
    bad_github.routes["/api/user"] = answer(200, body)
    with pytest.raises(UpstreamMalformed):
        connector_for(bad_github).refresh(UpstreamToken("t"))


@pytest.mark.parametrize("path,body", [
    ("/api/user/emails", b'["kim@example.com"]'),
    ("/api/user/emails", b'{"email": "kim@example.com"}'),
    ("/api/user/orgs", b'[{"id": 1}]'),
    ("/api/user/teams", b'[{"slug": "sre"}]'),
    ("/api/user/teams", b'[{"slug": "sre", "organization": "acme"}]'),
])
def test_finding_1_a_malformed_membership_answer_is_an_upstream_error(bad_github, path, body):
    for route in ("/api/user/emails", "/api/user/orgs", "/api/user/teams"):
        bad_github.routes[route] = answer(200, b"[]")
    bad_github.routes["/api/user"] = answer(200, b'{"id": 7, "login": "kim"}')
    bad_github.routes[path] = answer(200, body)
    with pytest.raises(UpstreamMalformed):
        connector_for(bad_github).refresh(UpstreamToken("t"))


def test_finding_1_sign_in_with_a_malformed_profile_shows_a_502_page(
        make_keycard, upstream, http, bad_github):
    # The code exchange happens at the development upstream; the REST calls come here.
    bad_github.routes["/api/user"] = answer(200, b"{}")
    keycard = make_keycard(SSO_GITHUB_API_URL=bad_github.url + "/api")
    page = sign_in(http, keycard.url, "alice")
    assert page.status_code == 502, page.text[:500]
    assert "GitHub answered in an unexpected way" in page.text
