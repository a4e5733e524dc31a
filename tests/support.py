"""Shared test helpers: live servers on loopback, form parsing, signing in over HTTP."""

from __future__ import annotations

import base64
import json
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urljoin

import requests
from werkzeug.serving import BaseWSGIServer, make_server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll with a deadline instead of sleeping a guessed amount."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


POLL_INTERVAL = 0.01  # seconds between the serve loop's shutdown checks


def accepts(port: int) -> bool:
    """Something listens on 127.0.0.1:``port`` (a server started in another process)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class LiveServer:
    """A real threaded WSGI server on 127.0.0.1, served from a background thread."""

    def __init__(self, app: Any = None, port: int = 0) -> None:
        self.server: BaseWSGIServer = make_server("127.0.0.1", port, app, threaded=True)
        self.server.daemon_threads = True  # type: ignore[attr-defined]
        self.server.block_on_close = False  # type: ignore[attr-defined]
        self.port = self.server.server_port
        self.url = f"http://127.0.0.1:{self.port}"
        # serve_forever() checks for shutdown() once per poll_interval (0.5 s by default):
        # every stop() would wait that long. 10 ms keeps teardown immediate.
        self._thread = threading.Thread(target=self.server.serve_forever,
                                        kwargs={"poll_interval": POLL_INTERVAL}, daemon=True)

    def start(self, app: Any = None) -> LiveServer:
        if app is not None:
            self.server.app = app
        self._thread.start()
        return self

    def stop(self) -> None:
        # Never let a teardown hang the suite: ask the loop to stop, wait a bounded time,
        # then close the socket whatever state the loop is in (handler threads are daemons).
        stopper = threading.Thread(target=self.server.shutdown, daemon=True)
        stopper.start()
        stopper.join(timeout=5)
        self.server.server_close()


@dataclass
class Form:
    action: str
    method: str
    fields: dict[str, str] = field(default_factory=dict)
    buttons: list[tuple[str, str]] = field(default_factory=list)


class _FormParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[Form] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append(Form(a.get("action", ""), a.get("method", "get").lower()))
        elif self.forms and tag == "input" and a.get("name"):
            if a.get("type", "text") not in {"submit", "checkbox", "radio"} or "checked" in a:
                self.forms[-1].fields[a["name"]] = a.get("value", "")
        elif self.forms and tag == "button" and a.get("name"):
            self.forms[-1].buttons.append((a["name"], a.get("value", "")))


def forms(html: str) -> list[Form]:
    parser = _FormParser()
    parser.feed(html)
    return parser.forms


def form_with(html: str, action_part: str) -> Form:
    for form in forms(html):
        if action_part in form.action:
            return form
    raise AssertionError(f"no form posting to {action_part!r} in page")


def csrf_token(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "page has no CSRF token"
    return match.group(1)


def pick_upstream_user(http: requests.Session, page: requests.Response, login: str,
                       *, deny: bool = False, allow_redirects: bool = True) -> requests.Response:
    """On the development upstream's sign-in page, press "Continue as <login>" (or Cancel)."""
    form = form_with(page.text, "/login/oauth/authorize")
    data = dict(form.fields)
    if deny:
        data["deny"] = "1"
    else:
        data["login"] = login
    return http.post(urljoin(page.url, form.action), data=data, allow_redirects=allow_redirects)


def start_sign_in(
    http: requests.Session, keycard_url: str, next_path: str = ""
) -> requests.Response:
    """GET /login and follow to the upstream's page; returns that page."""
    url = f"{keycard_url}/login" + (f"?next={next_path}" if next_path else "")
    page = http.get(url)
    assert page.status_code == 200 and "/login/oauth/authorize" in page.url, page.text[:500]
    return page


def sign_in(http: requests.Session, keycard_url: str, login: str) -> requests.Response:
    """The whole browser journey over HTTP; returns the final response (the portal)."""
    return pick_upstream_user(http, start_sign_in(http, keycard_url), login)


def stop_at_callback(http: requests.Session, keycard_url: str, login: str) -> str:
    """Sign in upstream but stop before Keycard's callback; returns the callback URL."""
    page = start_sign_in(http, keycard_url)
    response = pick_upstream_user(http, page, login, allow_redirects=False)
    assert response.status_code in (302, 303), response.text[:300]
    location = response.headers["Location"]
    assert location.startswith(keycard_url + "/auth/github/callback"), location
    return location


RP_CALLBACK = "http://127.0.0.1:9/cb"  # never contacted: tests read the Location header


def obtain_tokens(
    http: requests.Session,
    keycard_url: str,
    client_id: str,
    secret: str | None,
    *,
    scope: str = "openid profile email groups roles offline_access",
    redirect_uri: str = RP_CALLBACK,
    resource: str | None = None,
) -> dict[str, Any]:
    """Code flow + PKCE with Authlib's client, for a browser (``http``) already signed in."""
    from authlib.common.security import generate_token
    from authlib.integrations.requests_client import OAuth2Session

    meta = requests.get(keycard_url + "/.well-known/openid-configuration").json()
    rp = OAuth2Session(client_id, secret, scope=scope, redirect_uri=redirect_uri,
                       code_challenge_method="S256",
                       token_endpoint_auth_method="client_secret_basic" if secret else "none")
    verifier = generate_token(48)
    extra = {"resource": resource} if resource else {}
    url, _ = rp.create_authorization_url(meta["authorization_endpoint"], code_verifier=verifier,
                                         **extra)
    response = http.get(url, allow_redirects=False)
    assert response.status_code == 302, response.text[:500]
    token: dict[str, Any] = rp.fetch_token(meta["token_endpoint"],
                                           authorization_response=response.headers["Location"],
                                           code_verifier=verifier)
    return token


def redis_commands_during(rdb: Any, prefix: str, action: Callable[[], Any], *,
                          transactions: bool = False) -> list[str]:
    """The commands Keycard sent to Redis under this test's prefix while ``action`` ran
    (MONITOR; commands run inside a Lua script and the key ring's cache check excluded);
    with ``transactions``, also the MULTI and EXEC around them."""
    marker = f"{prefix}marker:{uuid.uuid4().hex}"
    seen: list[str] = []
    with rdb.monitor() as monitor:
        finished = threading.Event()

        def run() -> None:
            action()
            rdb.get(marker)
            finished.set()

        worker = threading.Thread(target=run)
        worker.start()
        for event in monitor.listen():
            command = str(event.get("command", ""))
            if marker in command:
                break
            if event.get("client_type") == "lua" or f"{prefix}keys" in command:
                continue
            if prefix in command or (transactions and command in ("MULTI", "EXEC")):
                seen.append(command)
        worker.join(10)
    wait_until(finished.is_set)
    return seen


def jwt_parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A compact JWS's header and claims, unverified (for comparing two tokens)."""
    header, claims, _ = token.split(".")
    return tuple(json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
                 for part in (header, claims))  # type: ignore[return-value]


def spy_on_layer(app: Any, layer_class: type, paths: Collection[str],
                 reached: Callable[[dict[str, Any]], None]) -> tuple[Any, Callable[[], None]]:
    """The WSGI layer of ``layer_class`` in ``app.wsgi_app``'s chain, with ``reached`` told
    of each request to ``paths`` it hands on while enabled; and the function undoing it."""
    layer: Any = app.wsgi_app
    while not isinstance(layer, layer_class):
        layer = layer.app
    inner = layer.app

    def counting(environ: dict[str, Any], start_response: Any) -> Any:
        if environ["PATH_INFO"] in paths and layer.enabled:
            reached(environ)
        return inner(environ, start_response)

    def restore() -> None:
        layer.app, layer.enabled = inner, True

    layer.app = counting
    return layer, restore


def with_layer_off(layer: Any, send: Callable[[], Any]) -> Any:
    """``send()`` with a lean layer switched off: the full path answers."""
    layer.enabled = False
    try:
        return send()
    finally:
        layer.enabled = True
