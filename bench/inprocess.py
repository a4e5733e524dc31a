"""``python -m bench.inprocess OP [OP...]``: microseconds per request of Keycard's WSGI app
itself, called in a loop with no HTTP server, no sockets to the client and no load generator
on the same cores. The figure to compare before and after a change to the app's own code: it
moves by a few per cent between runs where the server-level bench moves by fifteen.
``--profile`` prints cProfile's top functions for each operation."""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

from bench import ops
from bench.run import Bench, parse

OPS = ("signin", "code_exchange", "refresh", "client_credentials", "introspection",
       "introspection_refresh", "userinfo", "jwks", "forward_auth_session", "forward_auth_bearer")
POOLED = ("code_exchange", "refresh")  # each request spends a code or a refresh token


def environ_for(url: str, spec: dict[str, Any]) -> Callable[[], dict[str, Any]]:
    """A factory of fresh WSGI environs for one wrk spec (a body stream is read once)."""
    parts = urlsplit(url)
    path, _, query = spec["path"].partition("?")
    body = (spec["body"] or "").encode()
    base = {
        "REQUEST_METHOD": spec["method"], "SCRIPT_NAME": "", "PATH_INFO": path,
        "QUERY_STRING": query, "SERVER_NAME": parts.hostname, "SERVER_PORT": str(parts.port),
        "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1", "wsgi.url_scheme": "http",
        "wsgi.version": (1, 0), "wsgi.errors": sys.stderr, "wsgi.multithread": True,
        "wsgi.multiprocess": True, "wsgi.run_once": False, "HTTP_HOST": parts.netloc,
        "CONTENT_LENGTH": str(len(body)),
    }
    for name, value in spec["headers"].items():
        key = name.upper().replace("-", "_")
        base[key if key == "CONTENT_TYPE" else f"HTTP_{key}"] = value

    def make() -> dict[str, Any]:
        return {**base, "wsgi.input": io.BytesIO(body)}

    return make


def run(app: Any, make: Callable[[], dict[str, Any]], n: int) -> tuple[float, str]:
    """CPU seconds (this process) per request over ``n`` calls, and the last status line."""
    status = [""]

    def start_response(line: str, headers: list[tuple[str, str]], exc: Any = None) -> None:
        status[0] = line

    started = time.process_time()
    for _ in range(n):
        for _chunk in app(make(), start_response):
            pass
    return (time.process_time() - started) / n, status[0]


def pooled(app: Any, url: str, spec: ops.Spec, pool: list[str]) -> Callable[[Any, Any], Any]:
    """A target for :func:`run` that sends one request of a pooled operation: the next code
    of the pool, or the refresh token the previous answer of its chain carried."""
    import orjson

    values = iter(pool)
    template = spec([])
    chained = template["chain"]
    base = environ_for(url, template)()
    current = [next(values)]

    def call(_: Any, start_response: Any) -> list[bytes]:
        body = template["body"].replace("{v}", current[0]).encode()
        environ = {**base, "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body)}
        answer = b"".join(app(environ, start_response))
        current[0] = orjson.loads(answer)[chained] if chained else next(values)
        return []

    return call


def signin_journey(app: Any, keycard: str, upstream: str, rp: ops.Client) -> None:
    """One browser sign-in through Flask's test client (the upstream over HTTP, as in
    production): authorize → upstream → callback → authorize → token."""
    import requests

    browser = app.test_client()

    def follow(url: str) -> str:
        while url.startswith(keycard):
            response = browser.get(url[len(keycard):])
            assert response.status_code in (302, 303), (url, response.status_code)
            url = urljoin(url, response.headers["Location"])
        return url

    location = follow(ops.authorize_url(keycard, rp.client_id))
    form = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()} | {
        "login": ops.LOGIN}
    answer = requests.post(upstream + "/login/oauth/authorize", data=form,
                           allow_redirects=False, timeout=10)
    location = follow(urljoin(location, answer.headers["Location"]))
    code = parse_qs(urlsplit(location).query)["code"][0]
    tokens = browser.post("/token", data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": ops.RP_CALLBACK,
        "code_verifier": ops.VERIFIER}, auth=(rp.client_id, rp.secret))
    assert tokens.status_code == 200, tokens.text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.inprocess")
    p.add_argument("ops", nargs="*", metavar="OP", help=f"any of {', '.join(OPS)} (all)")
    p.add_argument("-n", type=int, default=3000, help="requests per operation")
    p.add_argument("--profile", action="store_true", help="cProfile each operation")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--sort", default="tottime", help="with --profile: tottime or cumulative")
    p.add_argument("--callers", metavar="REGEX", help="with --profile: who calls these")
    args, rest = p.parse_known_args(argv)
    if unknown := set(args.ops) - set(OPS):
        p.error(f"unknown operation(s): {', '.join(sorted(unknown))}")
    bench = Bench(parse(["--no-docs", "--no-peer", *rest]))
    try:
        bench.start()
        kc = bench.keycard.url
        spec = bench.single_specs()
        app = bench.app
        signed_in: list[Any] = []

        def browsers() -> list[Any]:
            if not signed_in:
                signed_in.append(ops.sign_in(kc, bench.upstream.url, bench.rp)[0])
            return signed_in
        print(f"{'operation':24} {'µs/request':>11}  status")
        for op in args.ops or OPS:
            target: Callable[[Any, Any], Any]
            make: Callable[[], dict[str, Any]]
            if op == "signin":  # a journey, not one request: run() calls journey() n times
                def journey(_: Any, __: Any) -> list[bytes]:
                    signin_journey(app, kc, bench.upstream.url, bench.rp)
                    return []
                target, make, args.n = journey, dict, min(args.n, 200)
            elif op in POOLED:  # codes or chain heads made now, through the real server
                count = args.n * (2 if args.profile else 1) + max(args.n // 10, 10) + 2
                if op == "code_exchange":
                    pool = ops.make_codes(kc, bench.rp, browsers(), count)
                else:
                    pool = ops.refresh_chains(kc, bench.rp, browsers(), 1)
                target, make = pooled(app, kc, spec[op], pool), dict
            else:
                target, make = app, environ_for(kc, spec[op]([]))
            run(target, make, max(args.n // 10, 10))  # warm caches
            if args.profile:
                profiler = cProfile.Profile(time.process_time)  # CPU, as the figure
                profiler.enable()
                per, status = run(target, make, args.n)
                profiler.disable()
                out = io.StringIO()
                stats = pstats.Stats(profiler, stream=out).sort_stats(args.sort)
                stats.print_stats(args.top)
                if args.callers:
                    stats.print_callers(args.callers)
                print(out.getvalue())
            per, status = run(target, make, args.n)
            print(f"{op:24} {per * 1e6:11.1f}  {status}", flush=True)
    finally:
        bench.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
