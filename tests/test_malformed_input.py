"""Malformed input is a 4xx, never a 500 (issue #11, Security hardening item 8).

The named tests pin the inputs that used to end in a traceback; the property test
throws generated paths, query strings, headers and bodies at every rule of the URL map
and asserts that nothing reaches the app's catch-all 500 handler.
"""

from __future__ import annotations

import base64
import logging
import socket
import string
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sso import create_app
from tests.conftest import keycard_env, seed_signing_keys


@pytest.fixture
def keycard(make_keycard: Callable[..., Any]) -> Any:
    return make_keycard(SSO_FORWARD_AUTH_DOMAINS="acme.test")


def _not_utf8_basic() -> str:
    return "Basic " + base64.b64encode(b"\xff\xfe:\xff").decode()


def test_finding_8_bad_ipv6_literal_in_rd_is_400(keycard, http):
    response = http.get(f"{keycard.url}/auth/start?rd=https%3A%2F%2F%5Bx%2F",
                        allow_redirects=False)
    assert response.status_code == 400
    assert "return address is not allowed" in response.text


def test_finding_8_full_width_slash_in_rd_host_is_400(keycard, http):
    # U+FF0F normalises (NFKC) to "/": urlsplit refuses such a netloc with a ValueError.
    response = http.get(f"{keycard.url}/auth/start",
                        params={"rd": "https://app.acme\uff0ftest/x"}, allow_redirects=False)
    assert response.status_code == 400
    response = http.get(f"{keycard.url}/auth/start",
                        params={"rd": "https://evil.example\uff0f.acme.test/"},
                        allow_redirects=False)
    assert response.status_code == 400


def test_finding_8_bad_forwarded_host_on_verify_redirect_is_401(keycard, http):
    response = http.get(f"{keycard.url}/auth/verify?redirect=1", allow_redirects=False,
                        headers={"X-Forwarded-Host": "[x", "X-Forwarded-Proto": "https",
                                 "X-Forwarded-Uri": "/", "Accept": "text/html"})
    assert response.status_code == 401
    assert "Location" not in response.headers


@pytest.mark.parametrize("path", ["/token", "/revoke", "/introspect"])
@pytest.mark.parametrize("header", [
    _not_utf8_basic(),                                   # base64 of bytes that are not UTF-8
    "Basic \xff\xfe",                                    # header bytes that are not ASCII
])
def test_finding_8_basic_credentials_not_utf8_are_invalid_client(keycard, http, path, header):
    response = http.post(f"{keycard.url}{path}", headers={"Authorization": header},
                         data={"grant_type": "client_credentials", "token": "x"})
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    assert response.headers["WWW-Authenticate"].startswith("Basic")
    assert response.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("path", ["/token", "/device_authorization", "/introspect"])
def test_finding_8_authorization_header_without_credentials_is_invalid_client(keycard, http,
                                                                              path):
    # Found by the property test below: Authlib unpacks "Basic " into two words.
    response = http.post(f"{keycard.url}{path}", headers={"Authorization": "Basic "},
                         data={"client_id": "x", "token": "x"})
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"


def test_finding_8_host_label_too_long_is_400(keycard):
    # Found by the property test below: werkzeug cannot IDNA-encode a 64+ character label,
    # and the error page itself then needed a URL adapter.
    with socket.create_connection(("127.0.0.1", int(keycard.url.rsplit(":", 1)[1]))) as conn:
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: " + b"x" * 300 +
                     b"\r\nConnection: close\r\n\r\n")
        head = conn.recv(4096).split(b"\r\n", 1)[0]
    assert head.split()[1] == b"400"


# -- the property test: every rule, random input, no 5xx --------------------------------------


class _Unhandled(logging.Handler):
    """Collects what the catch-all handler in sso/web/errors.py logs."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("unhandled error"):
            self.records.append(record)


@pytest.fixture
def fuzz_app(redis_server, prefix, upstream, tmp_path: Path,
             signing_key_records) -> Iterator[Any]:
    env = keycard_env(redis_server.url, prefix, upstream.url, 5000, tmp_path,
                      SSO_FORWARD_AUTH_DOMAINS="acme.test", SSO_GITHUB_WEBHOOK_SECRET="w" * 32,
                      SSO_RATE_LIMITS="off")
    app = create_app(env)
    seed_signing_keys(app, signing_key_records)
    # Exceptions must reach the catch-all handler (which logs them), not the test client.
    app.config["PROPAGATE_EXCEPTIONS"] = False
    yield app


TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
LATIN1 = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=40)
# Values shaped like what each header expects, and broken in the ways parsers trip on.
HOSTS = ["[x", "[::1]", "[::1", "a:b:c", "acme.test", "app.acme.test, evil", "app.acme.test:x",
         "app.acme\uff0ftest", "\xff\xfe", "", "x" * 300]
HEADERS: dict[str, list[str]] = {
    "Host": HOSTS,
    "X-Forwarded-Host": HOSTS,
    "X-Forwarded-Proto": ["https", "http", "ftp", "HTTPS, http", ""],
    "X-Forwarded-For": ["1.2.3.4", "::1", "x", "1.2.3.4, 5.6.7.8", ""],
    "X-Forwarded-Uri": ["/", "//evil", "/\\x", "x", "/%ff"],
    "X-Forwarded-Method": ["GET", "POST", "\xff"],
    "Authorization": ["Bearer x.y.z", "Bearer ", "Basic Og==", "Basic \xff\xfe", "Basic !!",
                      "Basic " + base64.b64encode(b"\xff:\xfe").decode(),
                      "Basic " + base64.b64encode(b"a:\xff").decode(), "Digest x", "Basic"],
    "Cookie": ["keycard_session=" + "A" * 40, "keycard_session=\xff", "session=x; x=y", "=;"],
    "Content-Type": ["application/json", "application/x-www-form-urlencoded",
                     "multipart/form-data; boundary=x", "multipart/form-data", "text/plain",
                     "application/json; charset=latin-1"],
    "Accept": ["text/html", "application/json", "*/*", "text/html;q=x"],
    "Origin": ["null", "https://evil.test", "http://127.0.0.1:5000", "\xff"],
    "X-Hub-Signature-256": ["sha256=00", "sha256=", "x"],
    "X-GitHub-Event": ["organization", "membership", "ping", "\xff"],
    "X-GitHub-Delivery": ["x", ""],
}
PARAM_NAMES = ["rd", "next", "redirect", "client_id", "redirect_uri", "response_type",
               "scope", "state", "code", "code_challenge", "code_challenge_method", "nonce",
               "prompt", "max_age", "grant_type", "token", "token_type_hint", "refresh_token",
               "device_code", "user_code", "id_token_hint", "post_logout_redirect_uri", "aud",
               "allowed_roles", "error", "q", "page", "login", "decision", "csrf_token",
               "client_secret", "code_verifier", "resource", "format"]
PARAM_VALUES = st.one_of(st.sampled_from([
    "https://[x/", "https://app.acme\uff0ftest/", "https://[::1]:99999/", "http://app.acme.test/x",
    "https://app.acme.test:abc/", "//evil", "/\\evil", "1", "true", "-1", "0" * 30, "",
    "openid profile", "code", "S256", "none login", "authorization_code", "refresh_token",
    "client_credentials", "urn:ietf:params:oauth:grant-type:device_code", "\x00", "%ff%fe",
    "\xff", "a" * 5000,
]), TEXT)
PARAMS = st.dictionaries(st.one_of(st.sampled_from(PARAM_NAMES), TEXT), PARAM_VALUES,
                         max_size=6)
BODIES = st.one_of(st.none(), PARAMS, st.binary(max_size=80),
                   st.sampled_from([b"{}", b"[]", b'{"a":', b"null", b'{"action":"x"}',
                                    b"--x\r\nContent-Disposition: form-data\r\n\r\n--x--"]))
SEGMENT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",),
                                exclude_characters="/?#"), min_size=1, max_size=20)


def _rules(app: Any) -> list[tuple[Any, str]]:
    return [(rule, method) for rule in app.url_map.iter_rules()
            for method in sorted(rule.methods or ())]


def _path(rule: Any, values: dict[str, str]) -> str:
    path = rule.rule
    for name in rule.arguments:
        path = path.replace(f"<{name}>", values.get(name, "x"))
        for converter in ("string", "path", "int", "any"):
            path = path.replace(f"<{converter}:{name}>", values.get(name, "x"))
    return path


def test_finding_8_no_endpoint_answers_5xx_to_random_input(fuzz_app):
    """Every rule of the URL map with every method it allows, random everything else."""
    rules = _rules(fuzz_app)
    covered: set[str] = set()
    caught = _Unhandled()
    web_log = logging.getLogger("keycard.web")
    web_log.addHandler(caught)
    client = fuzz_app.test_client()
    allowed_chars = string.ascii_letters + string.digits

    @settings(max_examples=30, suppress_health_check=[HealthCheck.too_slow])
    @given(data=st.data())
    def one_rule(index: int, data: st.DataObject) -> None:
        rule, method = rules[index]
        values = {name: data.draw(st.one_of(SEGMENT, st.text(allowed_chars, min_size=1)))
                  for name in rule.arguments}
        query = data.draw(PARAMS)
        names = data.draw(st.lists(st.sampled_from(sorted(HEADERS)), max_size=5, unique=True))
        headers = {name: data.draw(st.one_of(st.sampled_from(HEADERS[name]), LATIN1))
                   for name in names}
        body = data.draw(BODIES) if method in ("POST", "PUT", "PATCH", "DELETE") else None
        host = headers.pop("Host", None)
        kwargs: dict[str, Any] = {"query_string": query, "headers": headers}
        if host is not None:
            kwargs["environ_overrides"] = {"HTTP_HOST": host}
        if body is not None:
            kwargs["data"] = body
        response = client.open(_path(rule, values), method=method, **kwargs)
        assert response.status_code < 500, (
            rule.rule, method, query, headers, body, response.status_code)
        assert not caught.records, caught.records[0].exc_info
        covered.add(rule.endpoint)

    try:
        for index in range(len(rules)):
            one_rule(index)
    finally:
        web_log.removeHandler(caught)
    endpoints = {rule.endpoint for rule in fuzz_app.url_map.iter_rules()}
    assert covered == endpoints
