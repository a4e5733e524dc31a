"""The processes a bench run starts: a private Redis, the development upstream, Keycard
under granian or gunicorn and (optionally) the oidc-provider peer. All on loopback, all
stopped at exit."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis
import requests

from sso.config import DEV_UPSTREAM_CLIENT_ID, DEV_UPSTREAM_CLIENT_SECRET

ROOT = Path(__file__).resolve().parent.parent
PEER_DIR = Path(__file__).resolve().parent / "peer"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Proc:
    name: str
    proc: subprocess.Popen[bytes]
    url: str
    log: Path | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def tail(self, lines: int = 30) -> str:
        if self.log is None or not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def _wait(check: object, proc: Proc, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():  # type: ignore[operator]
                return
        except (requests.RequestException, redis.RedisError):
            pass
        if proc.proc.poll() is not None or time.monotonic() > deadline:
            proc.stop()
            raise RuntimeError(f"{proc.name} did not start\n{proc.tail()}")
        time.sleep(0.1)


def start_redis(workdir: Path) -> Proc:
    if shutil.which("redis-server") is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    data = Path(tempfile.mkdtemp(prefix="keycard-bench-redis-"))
    log = workdir / "redis.log"
    proc = Proc("redis", subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(data), "--logfile", str(log)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), f"redis://127.0.0.1:{port}/0", log)
    client = redis.Redis.from_url(proc.url)
    _wait(client.ping, proc)
    return proc


def keycard_env(issuer: str, upstream_url: str, redis_url: str) -> dict[str, str]:
    return {
        "SSO_ENV": "development",
        "SSO_ISSUER": issuer,
        "SSO_SECRET_KEY": "bench-secret-key-0123456789-abcdefghijklmnopqrstuvwxyz",
        "SSO_REDIS_URL": redis_url,
        "SSO_REDIS_PREFIX": "bench:",
        "SSO_GITHUB_URL": upstream_url,
        "SSO_GITHUB_API_URL": f"{upstream_url}/api/v3",
        "SSO_GITHUB_CLIENT_ID": DEV_UPSTREAM_CLIENT_ID,
        "SSO_GITHUB_CLIENT_SECRET": DEV_UPSTREAM_CLIENT_SECRET,
        "SSO_GITHUB_ORGS": "acme",
        "SSO_BOOTSTRAP_ADMINS": "alice",
        # The limiter still counts every sign-in (its cost is measured) but never trips.
        "SSO_RATE_LIMITS": "sign_in=100000000/minute,device=100000000/minute",
    }


def _gunicorn(name: str, target: str, port: int, workdir: Path, *, workers: int,
              worker_class: str, threads: int, env: dict[str, str]) -> Proc:
    log = workdir / f"{name}.log"
    cmd = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}",
           "--workers", str(workers), "--worker-class", worker_class,
           "--threads", str(threads), "--timeout", "60", "--log-level", "warning",
           "--error-logfile", str(log), "--capture-output", target]
    if worker_class == "gevent":
        cmd[-1:-1] = ["--worker-connections", "1000"]
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **env}, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    return Proc(name, proc, f"http://127.0.0.1:{port}", log)


def start_upstream(workdir: Path) -> Proc:
    """The development GitHub: one process (its state lives in memory), many threads."""
    port = free_port()
    proc = _gunicorn("upstream", "sso.devupstream:create_upstream_app()", port, workdir,
                     workers=1, worker_class="gthread", threads=16, env={})
    _wait(lambda: requests.get(f"{proc.url}/api/v3/", timeout=2).status_code < 500, proc)
    return proc


def _granian(name: str, target: str, port: int, workdir: Path, *, workers: int,
             threads: int, env: dict[str, str]) -> Proc:
    """Granian: HTTP parsing and connection handling in Rust, the WSGI app on a pool of
    ``threads`` Python threads per worker process."""
    log = workdir / f"{name}.log"
    cmd = [sys.executable, "-m", "granian", "--interface", "wsgi", "--host", "127.0.0.1",
           "--port", str(port), "--workers", str(workers), "--blocking-threads", str(threads),
           "--no-ws", "--log-level", "warning", "--respawn-failed-workers",
           "--respawn-interval", "1", target]
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **env}, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    return Proc(name, proc, f"http://127.0.0.1:{port}", log)


def start_keycard(workdir: Path, upstream_url: str, redis_url: str, *, server: str,
                  workers: int, worker_class: str, threads: int) -> Proc:
    port = free_port()
    env = keycard_env(f"http://127.0.0.1:{port}", upstream_url, redis_url)
    if server == "granian":
        proc = _granian("keycard", "bench.wsgi:app", port, workdir, workers=workers,
                        threads=threads, env=env)
    else:
        proc = _gunicorn("keycard", "bench.wsgi:app", port, workdir, workers=workers,
                         worker_class=worker_class, threads=threads, env=env)
    proc.extra = env

    def ready() -> bool:
        return requests.get(f"{proc.url}/readyz", timeout=2).status_code == 200

    _wait(ready, proc, timeout=60)
    return proc


def ensure_peer_installed() -> str | None:
    """Install the peer's locked dependencies; returns why the peer is skipped, or None."""
    if shutil.which("node") is None:
        return "node is not installed: peer skipped"
    if not (PEER_DIR / "node_modules" / "oidc-provider").is_dir():
        if shutil.which("npm") is None:
            return "npm is not installed: peer skipped"
        done = subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                              cwd=PEER_DIR, capture_output=True, text=True)
        if done.returncode != 0:
            return f"npm ci failed: peer skipped ({done.stderr.strip()[-300:]})"
    return None


def start_peer(workdir: Path) -> Proc:
    port = free_port()
    log = workdir / "peer.log"
    with open(log, "ab") as out:
        proc = Proc("peer", subprocess.Popen(
            ["node", "server.mjs", str(port)], cwd=PEER_DIR, stdout=out,
            stderr=subprocess.STDOUT, env={**os.environ, "NODE_ENV": "production"}),
            f"http://127.0.0.1:{port}", log)
    _wait(lambda: requests.get(f"{proc.url}/.well-known/openid-configuration",
                               timeout=2).status_code == 200, proc)
    return proc


def node_version() -> str:
    if shutil.which("node") is None:
        return "absent"
    return subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
