"""``sso dev``: Keycard, the development GitHub upstream and Redis on one machine."""

from __future__ import annotations

import atexit
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import click
import redis
from werkzeug.serving import WSGIRequestHandler, make_server

from sso.config import DEV_UPSTREAM_CLIENT_ID, DEV_UPSTREAM_CLIENT_SECRET
from sso.registry import registry

# Query values that are secrets while they live: the upstream's code and our state on the
# callback, and a device's user code. Single-use and short-lived, but an access log is
# read by more people than should ever hold one.
_SECRET_QUERY = re.compile(r"([?&](?:code|state|user_code)=)[^&\s]*")


def redact_query(line: str) -> str:
    """``line`` with the values of ``code``, ``state`` and ``user_code`` replaced."""
    return _SECRET_QUERY.sub(r"\1[redacted]", line)


class RedactingRequestHandler(WSGIRequestHandler):
    """Werkzeug's request log (one line per request on stderr), without secrets."""

    def log(self, type: str, message: str, *args: Any) -> None:
        super().log(type, message, *(redact_query(a) if isinstance(a, str) else a
                                     for a in args))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except (redis.exceptions.RedisError, ValueError):
        return False


def start_private_redis() -> tuple[str, subprocess.Popen[bytes]]:
    """A throwaway redis-server on a free port, for people who have none running."""
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="keycard-redis-")
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", workdir],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while not redis_answers(url):
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise click.ClickException("redis-server did not start")
        time.sleep(0.05)

    def stop() -> None:
        proc.terminate()
        proc.wait(5)
        shutil.rmtree(workdir, ignore_errors=True)

    atexit.register(stop)
    return url, proc


def dev_environment(upstream_url: str, redis_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.startswith("SSO_")}
    env.setdefault("SSO_ISSUER", "http://127.0.0.1:5000")
    env["SSO_REDIS_URL"] = redis_url
    env["SSO_GITHUB_URL"] = upstream_url
    env["SSO_GITHUB_API_URL"] = f"{upstream_url}/api/v3"
    env["SSO_GITHUB_CLIENT_ID"] = DEV_UPSTREAM_CLIENT_ID
    env["SSO_GITHUB_CLIENT_SECRET"] = DEV_UPSTREAM_CLIENT_SECRET
    env.setdefault("SSO_GITHUB_ORGS", "acme")
    env.setdefault("SSO_BOOTSTRAP_ADMINS", "alice")
    # The development upstream sends organisation webhooks, signed with this secret.
    env.setdefault("SSO_GITHUB_WEBHOOK_SECRET", secrets.token_urlsafe(32))
    return env


def register_demo_client(app: Any, demo_url: str) -> tuple[str, str]:
    """Register (or re-key) the demo app's OIDC client; its id is remembered in Redis."""
    clients = registry(app).clients
    store = registry(app).store
    marker = store.keys.dev_demo_client()
    fields: dict[str, Any] = {"name": "Demo app", "redirect_uris": [f"{demo_url}/callback"],
              "post_logout_redirect_uris": [f"{demo_url}/"], "home_url": f"{demo_url}/",
              "trusted": True, "backchannel_logout_uri": f"{demo_url}/backchannel-logout",
              "backchannel_logout_session_required": True}
    client_id = store.redis.get(marker)
    if client_id and clients.get(client_id) is not None:
        clients.update(client_id, **fields)
        return str(client_id), str(clients.rotate_secret(client_id))
    client, secret = clients.create(**fields)
    store.redis.set(marker, client.client_id)
    return client.client_id, str(secret)


def register_cli_client(app: Any) -> str:
    """The default device client of ``sso login``, registered once and kept across runs
    (its id is remembered in Redis by the client registry)."""
    clients = registry(app).clients
    client = clients.default_device_client() or clients.create_default_device_client()
    return client.client_id


def run_dev(*, port: int | None = None, upstream_port: int = 5001, demo_port: int = 5002) -> int:
    from sso import create_app
    from sso.demoapp import create_demo_app
    from sso.devupstream import create_upstream_app, load_demo_state

    if os.environ.get("SSO_ENV", "development") == "production":
        click.echo("sso dev refuses to run with SSO_ENV=production: it serves a fake GitHub.",
                   err=True)
        return 2
    redis_url = os.environ.get("SSO_REDIS_URL", "redis://127.0.0.1:6379/0")
    if not redis_answers(redis_url):
        if shutil.which("redis-server") is None:
            click.echo(
                f"No Redis answers at {redis_url} and redis-server is not installed.\n"
                "Install it (Debian/Ubuntu: sudo apt-get install redis-server; macOS: brew "
                "install redis) or point SSO_REDIS_URL at a running Redis.",
                err=True,
            )
            return 1
        redis_url, _ = start_private_redis()
        click.echo(f"Started a private Redis for this run at {redis_url}")

    upstream_url = f"http://127.0.0.1:{upstream_port}"
    if port is not None and not os.environ.get("SSO_ISSUER"):
        os.environ["SSO_ISSUER"] = f"http://127.0.0.1:{port}"  # --port moves the issuer too
    env = dev_environment(upstream_url, redis_url)
    issuer = env["SSO_ISSUER"]
    keycard_port = port or urlsplit(issuer).port or 5000

    upstream_state = load_demo_state()
    for org in env["SSO_GITHUB_ORGS"].split(","):
        upstream_state.webhooks.subscribe(org.strip(), f"{issuer}/hooks/github",
                                          env["SSO_GITHUB_WEBHOOK_SECRET"])
    upstream = make_server("127.0.0.1", upstream_port, create_upstream_app(upstream_state),
                           threaded=True, request_handler=RedactingRequestHandler)
    keycard_app = create_app(env)
    keycard = make_server("127.0.0.1", keycard_port, keycard_app, threaded=True,
                          request_handler=RedactingRequestHandler)
    demo_url = f"http://127.0.0.1:{demo_port}"
    client_id, secret = register_demo_client(keycard_app, demo_url)
    register_cli_client(keycard_app)
    demo = make_server("127.0.0.1", demo_port, create_demo_app(
        issuer=issuer, client_id=client_id, client_secret=secret, base_url=demo_url),
        threaded=True, request_handler=RedactingRequestHandler)
    servers: list[Any] = [upstream, keycard, demo]
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for thread in threads:
        thread.start()

    click.echo(
        "\nKeycard development environment\n"
        f"  Keycard (open this):      {issuer}/\n"
        f"  Demo internal app:        {demo_url}/  (signs in through Keycard)\n"
        f"  Development GitHub:       {upstream_url}/  (users: alice, bob, carol, dave, mallory)\n"
        f"  Offboard someone:         {upstream_url}/_dev/members  (GitHub's org webhook "
        "ends their access in seconds)\n"
        f"  Sign in from a terminal:  sso login --issuer {issuer}\n"
        f"  Redis:                    {redis_url}\n"
        f"  Allowed orgs: {env['SSO_GITHUB_ORGS']}   bootstrap admins: "
        f"{env['SSO_BOOTSTRAP_ADMINS']}\n"
        "Press Ctrl+C to stop.",
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    for server in servers:
        server.shutdown()
    return 0
