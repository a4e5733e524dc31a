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
import requests

from bench import measure, ops, report, servers

ROOT = servers.ROOT
OPERATIONS = {  # key: label, in the order they run
    "signin": "full browser sign-in",
    "code_exchange": "authorization-code exchange",
    "refresh": "refresh (rotating)",
    "client_credentials": "client credentials",
    "introspection": "introspection",
    "introspection_refresh": "introspection, refresh token",
    "userinfo": "userinfo",
    "jwks": "JWKS",
    "forward_auth_session": "forward auth, session cookie",
    "forward_auth_bearer": "forward auth, bearer token",
}
NOTES = {
    "signin": "one op = authorize → upstream → callback → authorize → token "
              "({n:.0f} Keycard requests); the upstream's CPU is not counted",
    "code_exchange": "pool of codes made just before by GET /authorize; the run ends when "
                     "the pool is empty",
    "refresh": "each request uses the refresh token of the previous answer (one chain per "
               "connection)",
}
SIGNING = ("code_exchange", "refresh", "client_credentials")  # one row per algorithm
PEER_OPS = (*SIGNING, "introspection", "introspection_refresh")
# What differs between the two sides, per operation (the rest is the same request, the same
# algorithm for every signature, the same claims in the tokens).
PEER_NOTES = {
    "code_exchange": "both: client_secret_basic, PKCE S256, a code bound to the browser "
                     "session, a JWT access token (the person's claims in it) and an ID token "
                     "signed with the same algorithm, an opaque refresh token. Keycard also "
                     "re-reads the person's profile and membership (Redis) and records the "
                     "grant; the peer looks the session, grant and account up in its own "
                     "memory",
    "refresh": "both rotate the refresh token on every use and issue a new JWT access token; "
               "the peer also signs a new ID token (Keycard does not on refresh) and checks "
               "the session the token is bound to; Keycard re-reads the grant and the person's "
               "profile in Redis",
    "client_credentials": "same request, a JWT access token with the same claims (the "
                          "peer's has no scope claim) and the same algorithm; neither side "
                          "stores it",
    "introspection": "different work: Keycard introspects its JWT access token (signature, "
                     "then one Redis round trip for revocation); oidc-provider keeps no "
                     "record of JWT access tokens, so it introspects an opaque one (a lookup "
                     "in its memory)",
    "introspection_refresh": "the same kind of token: the RP asks about its own opaque refresh "
                             "token; Keycard reads it and its grant in Redis, the peer in "
                             "its memory",
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
    p.add_argument("--alg", choices=ops.ALGS, default="ES256",
                   help="signing algorithm of the bench clients for sign-in, introspection, "
                        "userinfo and forward auth (ES256: a client setting that makes signing "
                        "~7x cheaper than RS256)")
    p.add_argument("--algs", nargs="+", choices=ops.ALGS, default=list(ops.ALGS),
                   help="algorithms of the code exchange, refresh and client credentials rows "
                        "(one row per algorithm, on both sides; default both)")
    p.add_argument("--runs", type=int, default=None,
                   help="runs per row, reported as the median and the spread (default 3; "
                        "1 in --smoke)")
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
    if args.runs is None:
        args.runs = 1 if args.smoke else 3
    if args.runs < 1:
        p.error("--runs must be at least 1")
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


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


SPREAD = ("ops_per_s", "ops_per_cpu_s")


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One row from several runs of an operation: the median of each figure, the min–max of
    the throughput figures, every error, and the runs themselves (paired with the other
    side's runs by index, for the ratios' spread)."""
    row = dict(runs[0])
    for key in ("ops", "seconds", "ops_per_s", "p50_ms", "p99_ms", "cpu_seconds",
                "ops_per_cpu_s", "redis_per_op"):
        values = [r[key] for r in runs if r.get(key) is not None]
        row[key] = median(values) if values else None
    row["spread"] = {key: [min(v), max(v)] for key in SPREAD
                     if (v := [r[key] for r in runs if r.get(key) is not None])}
    row["errors"] = sum(r["errors"] for r in runs)
    row["sample"] = next((r["sample"] for r in runs if r.get("sample")), "")
    row["note"] = "; ".join(dict.fromkeys(r["note"] for r in runs if r.get("note")))
    row["runs"] = [{k: r.get(k) for k in ("ops", "seconds", "ops_per_s", "p50_ms", "p99_ms",
                                          "cpu_seconds", "ops_per_cpu_s", "errors")}
                   for r in runs]
    return row


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
        self.peer: servers.Proc | None = None
        self.peer_note: str | None = None

    def wanted(self, op: str) -> bool:
        return not self.args.only or op in self.args.only

    def measure(self, op: str, server: str, pid: int, client: redis.Redis | None,
                run: Callable[[], ops.Outcome], note: str = "", alg: str = "–"
                ) -> dict[str, Any]:
        """One run of one operation on one server."""
        label = OPERATIONS[op]
        print(f"  {label} ({server}, {alg}) ...", end="", flush=True)
        before = measure.snapshot(pid, client)
        outcome = run()
        after = measure.snapshot(pid, client)
        d = measure.diff(before, after)
        row = {
            "op": op, "label": label, "server": server, "alg": alg, "ops": outcome.ops,
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
        return row

    def missing(self, op: str, why: str) -> None:
        self.rows.append({"op": op, "label": OPERATIONS[op], "server": "keycard",
                          "alg": "–", "missing": why, "errors": 0})
        print(f"  {OPERATIONS[op]}: {why}", flush=True)

    def warm(self, url: str, spec: dict[str, Any]) -> None:
        if not self.smoke and spec["pool"] is None:  # a pool would be used up
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
        # One RP and one service per algorithm: a client's id_token_alg decides the algorithm
        # of its ID tokens and JWT access tokens (sso/oidc/tokens.py).
        self.rps: dict[str, ops.Client] = {}
        self.services: dict[str, ops.Client] = {}
        for alg in ops.ALGS:
            rp, rp_secret = clients.create(
                name=f"Bench RP {alg}", redirect_uris=[ops.RP_CALLBACK], trusted=True,
                grant_types=["authorization_code", "refresh_token"], id_token_alg=alg)
            svc, svc_secret = clients.create(
                name=f"Bench service {alg}", grant_types=["client_credentials"], scopes=[],
                roles=["bench"], trusted=True, id_token_alg=alg, audiences=[ops.FORWARDED_APP])
            self.rps[alg] = ops.Client(rp.client_id, str(rp_secret))
            self.services[alg] = ops.Client(svc.client_id, str(svc_secret))
        self.rp, self.service = self.rps[a.alg], self.services[a.alg]

    def start_peer(self) -> None:
        if self.smoke or self.args.no_peer:
            self.peer_note = "skipped (smoke mode)" if self.smoke else "skipped (--no-peer)"
            return
        if self.args.only and not set(self.args.only) & set(PEER_OPS):
            self.peer_note = "skipped (no operation it can do was asked for)"
            return
        self.peer_note = servers.ensure_peer_installed()
        if self.peer_note is None:
            self.peer = servers.start_peer(self.workdir)
            self.procs.append(self.peer)

    def single_specs(self) -> dict[str, ops.Spec]:
        """The wrk specs after one sign-in, for the tools that look at one operation at a
        time (bench.profile, bench.inprocess)."""
        kc = self.keycard.url
        http, tokens, _ = ops.sign_in(kc, self.upstream.url, self.rp)
        return ops.specs(rp=self.rp, service=self.service, user_token=tokens["access_token"],
                         service_token=ops.client_credentials_token(kc, "/token", self.service),
                         app_token=ops.client_credentials_token(
                             kc, "/token", self.service, resource=ops.FORWARDED_APP),
                         session_cookie=http.cookies.get(ops.COOKIE) or "",
                         refresh_token=tokens["refresh_token"])

    def keycard_jobs(self) -> dict[tuple[str, str], Callable[[], dict[str, Any]]]:
        """(operation, algorithm) → a function that prepares one run's wrk spec (a fresh
        pool of codes or refresh chains for the pooled operations)."""
        kc, up, load = self.keycard.url, self.upstream.url, self.load
        browsers, tokens = [], []
        for _ in range(4):  # the browsers the pools come from; warms every worker's caches
            http, token, _ = ops.sign_in(kc, up, self.rp)
            browsers.append(http)
            tokens.append(token)
        self.browsers = browsers
        common = {
            "user_token": tokens[0]["access_token"],
            "service_token": ops.client_credentials_token(kc, "/token", self.service),
            # Forward auth accepts only bearer tokens addressed to the protected app (RFC 8707)
            "app_token": ops.client_credentials_token(kc, "/token", self.service,
                                                      resource=ops.FORWARDED_APP),
            "session_cookie": browsers[0].cookies.get(ops.COOKIE) or "",
            "refresh_token": tokens[1]["refresh_token"],  # never rotated: only introspected
        }
        code_count = min(self.args.code_pool, 2 * load.max_per_thread * load.threads
                         ) if self.smoke else self.args.code_pool
        jobs: dict[tuple[str, str], Callable[[], dict[str, Any]]] = {}
        for alg in ops.ALGS:
            rp = self.rps[alg]
            spec = ops.specs(rp=rp, service=self.services[alg], **common)
            jobs[("code_exchange", alg)] = lambda s=spec, rp=rp: s["code_exchange"](
                ops.make_codes(kc, rp, browsers, code_count))
            jobs[("refresh", alg)] = lambda s=spec, rp=rp: s["refresh"](
                ops.refresh_chains(kc, rp, browsers, load.connections))
            for op in ("client_credentials", "introspection", "introspection_refresh",
                       "userinfo", "jwks", "forward_auth_session", "forward_auth_bearer"):
                # Access tokens live 10 minutes and a full run is longer: each run of a row
                # that sends one gets tokens minted just before it.
                jobs[(op, alg)] = lambda op=op, alg=alg: ops.specs(
                    rp=self.rps[alg], service=self.services[alg],
                    **{**common, **self.fresh_tokens(browsers)})[op]([])
        return jobs

    def fresh_tokens(self, browsers: list[Any]) -> dict[str, str]:
        """The access tokens the static rows send, minted now (they expire in 10 minutes)."""
        kc = self.keycard.url
        return {
            "user_token": ops.obtain_user_token(kc, self.rp, browsers[0]),
            "service_token": ops.client_credentials_token(kc, "/token", self.service),
            "app_token": ops.client_credentials_token(kc, "/token", self.service,
                                                      resource=ops.FORWARDED_APP),
        }

    def peer_jobs(self) -> dict[tuple[str, str], Callable[[], dict[str, Any]]]:
        """The same for oidc-provider, keyed by the Keycard row each one is compared with."""
        if self.peer is None:
            return {}
        url, load = self.peer.url, self.load
        code_count = self.args.code_pool
        jobs: dict[tuple[str, str], Callable[[], dict[str, Any]]] = {}
        for alg in ops.ALGS:
            rp = ops.PEER_RPS[alg]
            browsers = [ops.peer_browser(url, rp) for _ in range(4)]
            first = ops.make_codes(url, rp, browsers, 1, paths=ops.PEER)[0]
            tokens = ops.exchange(requests.Session(), url, rp, first, ops.PEER)
            opaque = ops.client_credentials_token(url, "/token", ops.PEER_SERVICES[alg],
                                                  resource=ops.PEER_OPAQUE_RESOURCE)
            spec = ops.peer_specs(alg, opaque_token=opaque, refresh_token=tokens["refresh_token"])
            jobs[("code_exchange", alg)] = lambda s=spec, rp=rp, b=browsers: s["code_exchange"](
                ops.make_codes(url, rp, b, code_count, paths=ops.PEER))
            jobs[("refresh", alg)] = lambda s=spec, rp=rp, b=browsers: s["refresh"](
                ops.refresh_chains(url, rp, b, load.connections, ops.PEER))
            for op in ("client_credentials", "introspection", "introspection_refresh"):
                jobs[(op, alg)] = lambda s=spec, op=op: s[op]([])
        return jobs

    def run_ops(self) -> None:
        """Every operation, each run of a compared row interleaved with the peer's (Keycard,
        peer, Keycard, peer, ...): a machine that slows down mid-run slows both sides."""
        kc, up, pid, rdb, runs = self.keycard.url, self.upstream.url, self.keycard.pid, \
            self.rdb, self.args.runs
        kjobs = self.keycard_jobs()
        pjobs = self.peer_jobs()
        fa_missing = ops.forward_auth_missing(kc)
        print(f"Keycard{' beside oidc-provider (node, one process)' if pjobs else ''}, "
              f"{runs} run(s) per row:", flush=True)
        for op in OPERATIONS:
            if not self.wanted(op):
                continue
            if op == "signin":
                note = NOTES["signin"].replace("{n:.0f}", "{keycard:.0f}")
                self.rows.append(aggregate([self.measure(
                    "signin", "keycard", pid, rdb, lambda: ops.run_signins(
                        kc, up, self.rp, self.load), note, alg=self.args.alg)
                    for _ in range(runs)]))
                continue
            if op.startswith("forward_auth") and fa_missing:
                self.missing(op, "n/a (endpoint missing)")
                continue
            for alg in self.args.algs if op in SIGNING else [self.args.alg]:
                self.compare(op, alg, kjobs[(op, alg)], pjobs.get((op, alg)))

    def compare(self, op: str, alg: str, keycard: Callable[[], dict[str, Any]],
                peer: Callable[[], dict[str, Any]] | None) -> None:
        kc_alg = {"introspection_refresh": "opaque", "jwks": "–",
                  "forward_auth_session": "–"}.get(op, alg)
        peer_alg = "opaque" if op.startswith("introspection") else alg
        kc_runs: list[dict[str, Any]] = []
        peer_runs: list[dict[str, Any]] = []
        for i in range(self.args.runs):
            spec = keycard()
            if i == 0:
                self.warm(self.keycard.url, spec)
            kc_runs.append(self.measure(
                op, "keycard", self.keycard.pid, self.rdb, lambda s=spec: ops.run_wrk(
                    self.keycard.url, s, self.load), NOTES.get(op, ""), alg=kc_alg))
            if peer is not None and self.peer is not None:
                pspec = peer()
                if i == 0:
                    self.warm(self.peer.url, pspec)
                peer_runs.append(self.measure(
                    op, "peer", self.peer.pid, None, lambda s=pspec: ops.run_wrk(
                        self.peer.url, s, self.load), PEER_NOTES[op], alg=peer_alg))
        row = aggregate(kc_runs)
        self.rows.append(row)
        if peer_runs:
            prow = aggregate(peer_runs)
            prow["pair"] = [op, kc_alg]  # the Keycard row it is compared with
            self.rows.append(prow)

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
        bench.start_peer()
        bench.run_ops()
        peer_note = bench.peer_note
        memory = bench.memory() if not args.only else None
        result = {
            "when": time.strftime("%Y-%m-%d %H:%M %Z"),
            "command": " ".join(["python -m bench", *(argv if argv is not None
                                                      else sys.argv[1:])]),
            "machine": machine(),
            "config": {"server": args.server, "workers": args.workers,
                       "worker_class": args.worker_class, "threads": args.threads,
                       "wrk_threads": args.wrk_threads,
                       "alg": args.alg, "algs": args.algs, "runs": args.runs,
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
