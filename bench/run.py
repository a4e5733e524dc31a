"""``python -m bench``: start Redis, the development upstream, Keycard under granian or
gunicorn (and the oidc-provider peer), drive each operation from separate processes and
report what it cost the server. ``--smoke`` does a few hundred requests per operation and
checks errors."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from bench import measure, ops, report, servers

ROOT = servers.ROOT
OPERATIONS = {  # key: label, in the order they run
    "signin": "full browser sign-in",
    "code_exchange": "authorization-code exchange",
    "refresh": "refresh (rotating)",
    "client_credentials": "client credentials",
    "introspection": "introspection",
    "userinfo": "userinfo",
    "jwks": "JWKS",
    "forward_auth_session": "forward auth, session cookie",
    "forward_auth_bearer": "forward auth, bearer token",
}
NOTES = {
    "signin": "one op = authorize → /login → upstream → callback → authorize → token "
              "({n:.0f} Keycard requests); the upstream's CPU is not counted",
    "code_exchange": "pool of codes made just before by GET /authorize; the run ends when "
                     "the pool is empty",
    "refresh": "each request uses the refresh token of the previous answer (one chain per "
               "connection)",
}
EXIT_ERRORS, EXIT_SETUP, EXIT_NO_WRK = 1, 2, 3


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--server", choices=("granian", "gunicorn"), default="granian",
                   help="WSGI server for Keycard (default granian; gunicorn as SPEC deploys it)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--worker-class", choices=("sync", "gthread", "gevent"), default="gthread",
                   help="gunicorn's worker class (gunicorn only)")
    p.add_argument("--threads", type=int, default=4,
                   help="Python threads per worker (gunicorn gthread, granian blocking threads)")
    p.add_argument("--alg", choices=("ES256", "RS256"), default="ES256",
                   help="signing algorithm of the bench clients (ES256: a client setting that "
                        "makes signing ~7x cheaper than RS256)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per operation")
    p.add_argument("--wrk-threads", type=int, default=2)
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--signin-procs", type=int, default=4, help="sign-in driver processes")
    p.add_argument("--code-pool", type=int, default=3000, help="codes for the exchange run")
    p.add_argument("--sessions", type=int, default=10_000, help="sessions for the memory probe")
    p.add_argument("--only", nargs="+", choices=list(OPERATIONS), help="run only these")
    p.add_argument("--no-peer", action="store_true", help="skip oidc-provider")
    p.add_argument("--smoke", action="store_true",
                   help="a few hundred requests per operation, no peer, fail on any error")
    p.add_argument("--docs", type=Path, default=ROOT / "docs" / "benchmarks.md",
                   help="markdown file to update (not in smoke mode)")
    p.add_argument("--no-docs", action="store_true", help="leave docs/ alone")
    args = p.parse_args(argv)
    if args.worker_class == "gevent":
        try:
            import gevent  # noqa: F401
        except ImportError:
            p.error("--worker-class gevent needs gevent: .venv/bin/pip install gevent")
    return args


def ensure_wrk() -> bool:
    """wrk from Debian's packages, installed here when missing (as .ci/run installs Redis)."""
    if shutil.which("wrk"):
        return True
    if shutil.which("apt-get") and os.geteuid() == 0:
        print("Installing wrk from Debian's packages", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], env=env, capture_output=True)
    return shutil.which("wrk") is not None


def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text()
                .splitlines() if line.startswith("model name")), platform.processor())
    redis_v = subprocess.run(["redis-server", "--version"], capture_output=True, text=True)
    wrk_v = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    peer_pkg = servers.PEER_DIR / "node_modules" / "oidc-provider" / "package.json"
    return {
        "nproc": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
        "redis": " ".join(redis_v.stdout.split()[:3]),
        "node": servers.node_version(),
        "wrk": (wrk_v.stdout + wrk_v.stderr).split()[1] if wrk_v.stdout + wrk_v.stderr else "?",
        "peer_version": json.loads(peer_pkg.read_text())["version"] if peer_pkg.exists()
        else "absent",
    }


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.smoke = args.smoke
        self.load = ops.Load(
            threads=args.wrk_threads, connections=args.connections, duration=args.duration,
            max_per_thread=100 if args.smoke else 0,
            signin_procs=2 if args.smoke else args.signin_procs,
            signin_max=10 if args.smoke else 0)
        self.workdir = ROOT / "bench" / "results" / ("smoke" if args.smoke else "full")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.procs: list[servers.Proc] = []
        self.rows: list[dict[str, Any]] = []

    def wanted(self, op: str) -> bool:
        return not self.args.only or op in self.args.only

    def measure(self, op: str, server: str, pid: int, client: redis.Redis | None,
                run: Callable[[], ops.Outcome], note: str = "") -> dict[str, Any]:
        label = OPERATIONS[op]
        print(f"  {label} ({server}) ...", end="", flush=True)
        before = measure.snapshot(pid, client)
        outcome = run()
        after = measure.snapshot(pid, client)
        d = measure.diff(before, after)
        row = {
            "op": op, "label": label, "server": server, "ops": outcome.ops,
            "seconds": outcome.seconds, "ops_per_s": outcome.ops / outcome.seconds
            if outcome.seconds else 0.0, "p50_ms": outcome.p50_ms, "p99_ms": outcome.p99_ms,
            "cpu_seconds": d["cpu_seconds"],
            "ops_per_cpu_s": outcome.ops / d["cpu_seconds"] if d["cpu_seconds"] else None,
            "redis_per_op": d["redis_total"] / outcome.ops if client and outcome.ops else None,
            "redis_commands": d["redis_commands"], "errors": outcome.unexpected,
            "sample": outcome.sample, "note": note.format(**{"n": 0, **{
                k.split("_")[0]: v for k, v in outcome.extra.items()}}) if note else "",
            "extra": outcome.extra,
        }
        if d["pids_changed"]:
            row["note"] = (row["note"] + "; " if row["note"] else "") + (
                f"server processes changed during the run: {d['pids_changed']}")
        if not outcome.ops:
            row["errors"] = max(row["errors"], 1)
            row["sample"] = row["sample"] or "no successful operation at all"
        print(f" {row['ops']} ops in {row['seconds']:.1f} s, {row['errors']} errors", flush=True)
        self.rows.append(row)
        return row

    def missing(self, op: str, why: str) -> None:
        self.rows.append({"op": op, "label": OPERATIONS[op], "server": "keycard",
                          "missing": why, "errors": 0})
        print(f"  {OPERATIONS[op]}: {why}", flush=True)

    def warm(self, url: str, spec: dict[str, Any]) -> None:
        if not self.smoke:
            ops.run_wrk(url, spec, self.load, duration=2)

    def start(self) -> None:
        a = self.args
        print(f"Starting Redis, the development upstream and Keycard "
              f"({report.server_label(vars(a))}); logs in {self.workdir}", flush=True)
        self.redis = servers.start_redis(self.workdir)
        self.procs.append(self.redis)
        self.upstream = servers.start_upstream(self.workdir)
        self.procs.append(self.upstream)
        self.keycard = servers.start_keycard(
            self.workdir, self.upstream.url, self.redis.url, server=a.server, workers=a.workers,
            worker_class=a.worker_class, threads=a.threads)
        self.procs.append(self.keycard)
        self.rdb = redis.Redis.from_url(self.redis.url)

        from sso import create_app
        from sso.registry import registry

        self.app = create_app(self.keycard.extra)  # same Redis and prefix as the server
        clients = registry(self.app).clients
        rp, rp_secret = clients.create(
            name="Bench RP", redirect_uris=[ops.RP_CALLBACK], trusted=True,
            grant_types=["authorization_code", "refresh_token"], id_token_alg=self.args.alg)
        svc, svc_secret = clients.create(
            name="Bench service", grant_types=["client_credentials"], scopes=[],
            roles=["bench"], trusted=True, id_token_alg=self.args.alg,
            audiences=[ops.FORWARDED_APP])
        self.rp = ops.Client(rp.client_id, str(rp_secret))
        self.service = ops.Client(svc.client_id, str(svc_secret))

    def single_specs(self) -> dict[str, Callable[[list[str]], dict[str, Any]]]:
        """The wrk specs after one sign-in, for the tools that look at one operation at a
        time (bench.profile, bench.inprocess)."""
        kc = self.keycard.url
        http, tokens, _ = ops.sign_in(kc, self.upstream.url, self.rp)
        return ops.specs(rp=self.rp, service=self.service, user_token=tokens["access_token"],
                         service_token=ops.client_credentials_token(kc, "/token", self.service),
                         app_token=ops.client_credentials_token(
                             kc, "/token", self.service, resource=ops.FORWARDED_APP),
                         session_cookie=http.cookies.get(ops.COOKIE) or "")

    def keycard_ops(self) -> None:
        kc, up, load = self.keycard.url, self.upstream.url, self.load
        pid, rdb = self.keycard.pid, self.rdb
        browsers, tokens = [], []
        for _ in range(4):  # the browsers the pools come from; warms every worker's caches
            http, token, _ = ops.sign_in(kc, up, self.rp)
            browsers.append(http)
            tokens.append(token)
        user_token = tokens[0]["access_token"]
        service_token = ops.client_credentials_token(kc, "/token", self.service)
        # Forward auth accepts only bearer tokens addressed to the protected app (RFC 8707).
        app_token = ops.client_credentials_token(kc, "/token", self.service,
                                                 resource=ops.FORWARDED_APP)
        spec = ops.specs(rp=self.rp, service=self.service, user_token=user_token,
                         service_token=service_token, app_token=app_token,
                         session_cookie=browsers[0].cookies.get(ops.COOKIE) or "")
        print("Keycard:", flush=True)
        if self.wanted("signin"):
            self.measure("signin", "keycard", pid, rdb,
                         lambda: ops.run_signins(kc, up, self.rp, load), NOTES["signin"]
                         .replace("{n:.0f}", "{keycard:.0f}"))
        if self.wanted("code_exchange"):
            count = min(self.args.code_pool, 2 * load.max_per_thread * load.threads
                        ) if self.smoke else self.args.code_pool
            codes = ops.make_codes(kc, self.rp, browsers, count)
            self.measure("code_exchange", "keycard", pid, rdb, lambda: ops.run_wrk(
                kc, spec["code_exchange"](codes), load), NOTES["code_exchange"])
        if self.wanted("refresh"):
            chains = ops.refresh_chains(kc, self.rp, browsers, load.connections)
            self.measure("refresh", "keycard", pid, rdb, lambda: ops.run_wrk(
                kc, spec["refresh"](chains), load), NOTES["refresh"])
        fa_missing = ops.forward_auth_missing(kc)
        for op in ("client_credentials", "introspection", "userinfo", "jwks",
                   "forward_auth_session", "forward_auth_bearer"):
            if not self.wanted(op):
                continue
            if op.startswith("forward_auth") and fa_missing:
                self.missing(op, "n/a (endpoint missing)")
                continue
            s = spec[op]([])
            self.warm(kc, s)
            self.measure(op, "keycard", pid, rdb, lambda s=s: ops.run_wrk(kc, s, load))

    def peer_ops(self) -> str | None:
        if self.smoke or self.args.no_peer:
            return "skipped (smoke mode)" if self.smoke else "skipped (--no-peer)"
        why = servers.ensure_peer_installed()
        if why:
            return why
        peer = servers.start_peer(self.workdir)
        self.procs.append(peer)
        opaque = ops.client_credentials_token(peer.url, "/token", ops.PEER_CLIENT,
                                              resource=ops.PEER_OPAQUE_RESOURCE)
        print("oidc-provider (node, one process):", flush=True)
        for op, s in ops.peer_specs(opaque).items():
            if self.wanted(op):
                self.warm(peer.url, s)
                self.measure(op, "peer", peer.pid, None,
                             lambda s=s: ops.run_wrk(peer.url, s, self.load))
        return None

    def memory(self) -> dict[str, Any]:
        count = 500 if self.smoke else self.args.sessions
        print(f"Redis memory: writing {count:,} sessions ...", flush=True)
        from sso.registry import registry

        svc = registry(self.app)
        return measure.session_memory(svc.sessions, self.rdb, svc.store.keys.session(""), count)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if not ensure_wrk():
        print("wrk is not installed and could not be installed (apt-get install wrk)",
              file=sys.stderr)
        return EXIT_NO_WRK
    started = time.monotonic()
    bench = Bench(args)
    result: dict[str, Any] = {}
    try:
        bench.start()
        bench.keycard_ops()
        peer_note = bench.peer_ops()
        memory = bench.memory() if not args.only else None
        result = {
            "when": time.strftime("%Y-%m-%d %H:%M %Z"),
            "command": " ".join(["python -m bench", *(argv if argv is not None
                                                      else sys.argv[1:])]),
            "machine": machine(),
            "config": {"server": args.server, "workers": args.workers,
                       "worker_class": args.worker_class, "threads": args.threads,
                       "wrk_threads": args.wrk_threads,
                       "alg": args.alg,
                       "connections": args.connections, "duration": args.duration,
                       "signin_procs": bench.load.signin_procs, "smoke": args.smoke},
            "rows": bench.rows, "peer_note": peer_note, "memory": memory,
            "wall_seconds": round(time.monotonic() - started, 1),
        }
    except (RuntimeError, OSError, redis.RedisError) as exc:
        print(f"\nbench failed: {exc}", file=sys.stderr)
        for proc in bench.procs:
            if proc.tail():
                print(f"--- {proc.name} log ---\n{proc.tail()}", file=sys.stderr)
        return EXIT_SETUP
    finally:
        bench.stop()
    report.print_summary(result)
    report.write_json(result, bench.workdir / "result.json")
    if not args.smoke and not args.no_docs:
        report.write_docs(result, args.docs)
        report.chart(result, args.docs.with_suffix(".png"))
        print(f"\nWrote {args.docs} and {args.docs.with_suffix('.png')}")
    print(f"\nDone in {result['wall_seconds']} s")
    failed = [r for r in bench.rows if r["errors"]]
    if failed:
        print("Operations with errors: " + ", ".join(f"{r['label']} ({r['server']})"
                                                     for r in failed), file=sys.stderr)
    return EXIT_ERRORS if failed and args.smoke else 0
