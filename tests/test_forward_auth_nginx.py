"""Acceptance: a real nginx (Debian's ``nginx-light``) protecting an app with
``auth_request`` against Keycard's ``/auth/verify``.

Topology on loopback: Keycard (the issuer) at ``http://localhost:<port>``, the
protected app (a tiny WSGI echo of the headers it receives) behind nginx at
``http://localhost:<nginx port>``, ``SSO_FORWARD_AUTH_DOMAINS=localhost``. Cookies
ignore ports, so the browser's Keycard cookie reaches nginx's subrequest exactly as a
``Domain=acme.test`` cookie reaches ``app.acme.test`` in production (browsers refuse
``Domain=localhost`` for ``*.localhost``, and Authlib allows a plain-http issuer on
``localhost`` only; ``tests/test_forward_auth.py`` proves the parent-domain cookie).
The Chromium journey through this stack is ``tests/browser/test_forward_auth_journey.py``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from joserfc import jwt
from joserfc.jwk import KeySet

from sso import create_app
from sso.registry import registry
from tests.conftest import RedisServer, Upstream, keycard_env
from tests.support import (
    RP_CALLBACK,
    LiveServer,
    accepts,
    csrf_token,
    free_port,
    obtain_tokens,
    pick_upstream_user,
    sign_in,
    wait_until,
)

HOST = "localhost"
AUTH_HEADERS = ("User", "Email", "Groups", "Roles", "Sub", "Assertion")


def nginx_preamble(tmp: Path) -> str:
    """A foreground nginx with every file it writes under ``tmp``; the ``http`` block is
    left open for the caller's upstreams and servers (and its closing brace)."""
    return f"""
daemon off;
master_process off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log info;
events {{ worker_connections 64; }}

http {{
    access_log {tmp}/access.log;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
"""


def nginx_conf(tmp: Path, port: int, issuer: str, keycard_port: int, app_port: int) -> str:
    """The configuration under test; docs/forward-auth.md shows the same, annotated."""
    forwarded = "\n".join(
        f"            auth_request_set $auth_{h.lower()} $upstream_http_x_auth_request_{h.lower()};"
        f"\n            proxy_set_header X-Auth-Request-{h} $auth_{h.lower()};"
        for h in AUTH_HEADERS
    )
    return nginx_preamble(tmp) + f"""
    upstream keycard {{ server 127.0.0.1:{keycard_port}; }}  # the issuer: {issuer}
    upstream app {{ server 127.0.0.1:{app_port}; }}

    # The protected app.
    server {{
        listen 127.0.0.1:{port};
        server_name {HOST};

        # The subrequest: the browser's headers (its Cookie, any Authorization) go
        # along; the body does not.
        location = /_keycard_verify {{
            internal;
            proxy_pass http://keycard/auth/verify?aud=http://{HOST};
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-Forwarded-Host {HOST};
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Uri $request_uri;
            proxy_set_header X-Forwarded-Method $request_method;
        }}
        location = /_keycard_verify_admin {{
            internal;
            proxy_pass http://keycard/auth/verify?aud=http://{HOST}&allowed_roles=admin;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-Forwarded-Host {HOST};
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Uri $request_uri;
            proxy_set_header X-Forwarded-Method $request_method;
        }}

        # 401 from Keycard: send the browser to sign in, and back here afterwards.
        location @keycard_signin {{
            return 302 {issuer}/auth/start?rd=http://{HOST}:{port}$request_uri;
        }}

        location / {{
            auth_request /_keycard_verify;
            error_page 401 = @keycard_signin;
{forwarded}
            proxy_pass http://app;
        }}

        location /admin/ {{
            auth_request /_keycard_verify_admin;
            error_page 401 = @keycard_signin;
{forwarded}
            proxy_pass http://app;
        }}
    }}

    # Any Host the block above does not name: refused, never served by the first block.
    server {{
        listen 127.0.0.1:{port} default_server;
        server_name _;
        return 421;
    }}
}}
"""


def echo_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """The protected app: shows the X-Auth-Request-* headers it received, as JSON."""
    seen = {
        "X-Auth-Request-" + key[len("HTTP_X_AUTH_REQUEST_"):].title(): value
        for key, value in environ.items() if key.startswith("HTTP_X_AUTH_REQUEST_")
    }
    body = json.dumps({"path": environ.get("PATH_INFO", ""),
                       "query": environ.get("QUERY_STRING", ""), "headers": seen},
                      indent=1, sort_keys=True).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]


@dataclass
class Stack:
    """Keycard, and nginx in front of the app."""

    issuer: str  # Keycard, http://localhost:<port>
    app: str  # the protected app through nginx, http://localhost:<nginx port>
    keycard: Any
    config: str

    def client(self) -> requests.Session:
        session = requests.Session()
        session.trust_env = False  # never an HTTP proxy from the environment
        return session


@contextmanager
def running_nginx(tmp_path: Path, config: str, port: int) -> Iterator[None]:
    """nginx in the foreground with ``config``, until the block ends."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        pytest.fail("nginx is not installed: run .ci/run or apt-get install nginx-light")
    (tmp_path / "nginx.conf").write_text(config)
    stderr = (tmp_path / "nginx.stderr").open("wb")
    proc = subprocess.Popen([nginx, "-p", str(tmp_path), "-c", "nginx.conf"],
                            stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        wait_until(lambda: proc.poll() is not None or accepts(port), timeout=15)
        if proc.poll() is not None:
            raise AssertionError(f"nginx did not start: {(tmp_path / 'nginx.stderr').read_text()}")
        yield
    finally:
        proc.terminate()
        proc.wait(10)
        stderr.close()


@pytest.fixture
def stack(redis_server: RedisServer, prefix: str, upstream: Upstream,
          tmp_path: Path) -> Iterator[Stack]:
    app_server = LiveServer(echo_app).start()
    keycard_server = LiveServer()
    port = free_port()
    issuer = f"http://{HOST}:{keycard_server.port}"
    env = keycard_env(redis_server.url, prefix, upstream.url, keycard_server.port, tmp_path,
                      SSO_ISSUER=issuer, SSO_FORWARD_AUTH_DOMAINS=HOST)
    keycard_app = create_app(env)
    keycard_server.start(keycard_app)
    config = nginx_conf(tmp_path, port, issuer, keycard_server.port, app_server.port)
    try:
        with running_nginx(tmp_path, config, port):
            yield Stack(issuer, f"http://{HOST}:{port}", keycard_app, config)
    finally:
        keycard_server.stop()
        app_server.stop()


def sign_in_through_nginx(stack: Stack, http: requests.Session, login: str,
                          path: str = "/private") -> requests.Response:
    """Open a protected page, get sent to sign in, pick ``login``, land back on it."""
    page = http.get(stack.app + path, timeout=10)
    assert "/login/oauth/authorize" in page.url, (page.status_code, page.url)
    return pick_upstream_user(http, page, login)


def seen_headers(response: requests.Response) -> dict[str, str]:
    assert response.status_code == 200, (response.status_code, response.text[:300])
    found: dict[str, str] = response.json()["headers"]
    return found


def test_anonymous_request_is_sent_to_sign_in_with_the_whole_address(stack):
    http = stack.client()
    response = http.get(stack.app + "/private/report?x=1&y=2", allow_redirects=False,
                        timeout=10)
    assert response.status_code == 302
    expected = f"{stack.issuer}/auth/start?rd={stack.app}/private/report?x=1&y=2"
    assert response.headers["Location"] == expected


def test_sign_in_comes_back_to_the_app_with_the_identity_headers(stack):
    http = stack.client()
    final = sign_in_through_nginx(stack, http, "bob", "/private/report?x=1&y=2")
    assert final.url == stack.app + "/private/report?x=1&y=2"
    assert final.json()["query"] == "x=1&y=2"
    headers = seen_headers(final)
    assert headers["X-Auth-Request-User"] == "bob"
    assert headers["X-Auth-Request-Email"] == "bob@acme.test"
    assert "acme:platform" in headers["X-Auth-Request-Groups"].split(",")

    # The app can check the assertion with Keycard's published keys.
    jwks = http.get(stack.issuer + "/jwks.json", timeout=10).json()
    token = jwt.decode(headers["X-Auth-Request-Assertion"], KeySet.import_key_set(jwks),
                       algorithms=["ES256"])
    jwt.JWTClaimsRegistry(iss={"essential": True, "value": stack.issuer},
                          aud={"essential": True, "value": HOST}).validate(token.claims)
    assert token.claims["sub"] == headers["X-Auth-Request-Sub"]


def test_headers_a_client_forges_never_reach_the_app(stack):
    http = stack.client()
    sign_in_through_nginx(stack, http, "carol")
    forged = {"X-Auth-Request-User": "alice", "X-Auth-Request-Email": "ceo@acme.test",
              "X-Auth-Request-Roles": "admin"}
    headers = seen_headers(http.get(stack.app + "/private", headers=forged, timeout=10))
    assert headers["X-Auth-Request-User"] == "carol"
    assert "X-Auth-Request-Email" not in headers  # carol's address is unverified
    assert "admin" not in headers.get("X-Auth-Request-Roles", "")


def test_admin_location_needs_the_admin_role(stack):
    bob = stack.client()
    sign_in_through_nginx(stack, bob, "bob")
    assert bob.get(stack.app + "/admin/", timeout=10).status_code == 403
    alice = stack.client()
    sign_in_through_nginx(stack, alice, "alice")  # SSO_BOOTSTRAP_ADMINS=alice
    headers = seen_headers(alice.get(stack.app + "/admin/", timeout=10))
    assert "admin" in headers["X-Auth-Request-Roles"].split(",")


def test_return_address_outside_the_allowed_domains_is_refused(stack):
    http = stack.client()
    for rd in ("http://evil.test/", "http://evillocalhost/", "http://localhost.evil.test/",
               "http://user@localhost/"):
        response = http.get(f"{stack.issuer}/auth/start?rd={rd}", allow_redirects=False,
                            timeout=10)
        assert response.status_code == 400, rd
        assert "this return address is not allowed" in response.text.lower()


def test_after_sign_out_the_app_asks_to_sign_in_again(stack):
    http = stack.client()
    sign_in_through_nginx(stack, http, "bob")
    portal = http.get(stack.issuer + "/", timeout=10)
    http.post(stack.issuer + "/logout", data={"csrf_token": csrf_token(portal.text)},
              allow_redirects=False, timeout=10)
    response = http.get(stack.app + "/private", allow_redirects=False, timeout=10)
    assert response.status_code == 302
    assert response.headers["Location"].startswith(stack.issuer + "/auth/start?rd=")


# -- finding 4: one nginx, two apps; the Host a client sends must not choose the app --------

WIKI, FILES = "wiki.acme.test", "files.acme.test"


def app_server_block(listen: str, name: str, forwarded_host: str, keycard_port: int,
                     app_port: int) -> str:
    """docs/forward-auth.md's server block for one app: the verify URL pins the app
    (``?aud=``) and ``X-Forwarded-Host`` is written out, never ``$http_host``."""
    forwarded = "\n".join(
        f"        auth_request_set $auth_{h.lower()} $upstream_http_x_auth_request_{h.lower()};"
        f"\n        proxy_set_header X-Auth-Request-{h} $auth_{h.lower()};"
        for h in AUTH_HEADERS
    )
    return f"""
    server {{
        listen {listen};
        server_name {name};
        location = /_keycard_verify {{
            internal;
            proxy_pass http://127.0.0.1:{keycard_port}/auth/verify?aud=https://{name};
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-Forwarded-Host {forwarded_host};
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Uri $request_uri;
            proxy_set_header X-Forwarded-Method $request_method;
        }}
        location / {{
            auth_request /_keycard_verify;
{forwarded}
            proxy_pass http://127.0.0.1:{app_port};
        }}
    }}
"""


@dataclass
class TwoApps:
    keycard: str
    app: Any  # Keycard's Flask app
    documented: int  # wiki's block and the refusing default_server, as documented
    files_default: int  # files.acme.test as nginx's default server, trusting $http_host


@pytest.fixture
def two_apps(redis_server: RedisServer, prefix: str, upstream: Upstream,
             tmp_path: Path) -> Iterator[TwoApps]:
    app_server = LiveServer(echo_app).start()
    keycard_server = LiveServer()
    env = keycard_env(redis_server.url, prefix, upstream.url, keycard_server.port, tmp_path,
                      SSO_FORWARD_AUTH_DOMAINS="acme.test")
    keycard = f"http://127.0.0.1:{keycard_server.port}"
    keycard_app = create_app(env)
    keycard_server.start(keycard_app)
    documented, files_default = free_port(), free_port()
    k, a = keycard_server.port, app_server.port
    config = nginx_preamble(tmp_path) + f"""
{app_server_block(f"127.0.0.1:{documented}", WIKI, WIKI, k, a)}
    # A Host no block names is refused, never served by whichever block comes first.
    server {{
        listen 127.0.0.1:{documented} default_server;
        server_name _;
        return 421;
    }}
{app_server_block(f"127.0.0.1:{files_default} default_server", FILES, "$http_host", k, a)}
}}
"""
    try:
        with running_nginx(tmp_path, config, files_default):
            yield TwoApps(keycard, keycard_app, documented, files_default)
    finally:
        keycard_server.stop()
        app_server.stop()


def wiki_token(two_apps: TwoApps) -> str:
    """bob's access token for the wiki (audience https://wiki.acme.test, RFC 8707)."""
    client, secret = registry(two_apps.app).clients.create(
        name="Wiki CLI", redirect_uris=[RP_CALLBACK], trusted=True,
        audiences=[f"https://{WIKI}"])
    http = requests.Session()
    http.trust_env = False
    sign_in(http, two_apps.keycard, "bob")
    tokens = obtain_tokens(http, two_apps.keycard, client.client_id, secret,
                           resource=f"https://{WIKI}")
    return str(tokens["access_token"])


def through_nginx(port: int, host: str, token: str | None = None) -> requests.Response:
    """A request to nginx's listener on ``port`` claiming ``Host: host``."""
    headers = {"Host": host, **({"Authorization": f"Bearer {token}"} if token else {})}
    with requests.Session() as http:
        http.trust_env = False
        return http.get(f"http://127.0.0.1:{port}/private", headers=headers,
                        allow_redirects=False, timeout=10)


def test_finding_4_a_token_for_one_app_does_not_open_the_default_server_app(two_apps):
    token = wiki_token(two_apps)
    wiki = through_nginx(two_apps.documented, WIKI, token)
    assert seen_headers(wiki)["X-Auth-Request-User"] == "bob"
    # files.acme.test is nginx's default server and still forwards the client's Host: a
    # request claiming "Host: wiki.acme.test" lands there. The verify URL pins files, so
    # the wiki's token is refused (401, which nginx answers without reaching the app).
    for host in (WIKI, FILES):
        misdirected = through_nginx(two_apps.files_default, host, token)
        assert misdirected.status_code == 401, (host, misdirected.text[:300])


def test_finding_4_the_documented_config_refuses_hosts_it_does_not_name(two_apps):
    token = wiki_token(two_apps)
    for host in (FILES, "evil.test", "127.0.0.1"):
        refused = through_nginx(two_apps.documented, host, token)
        assert refused.status_code == 421, (host, refused.text[:300])
        assert "X-Auth-Request" not in refused.text  # the app never saw it
