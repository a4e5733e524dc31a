"""The operations the bench drives: wrk specs for single requests, a multi-process Python
driver for the browser sign-in, the token pools they need, and the session-memory probe."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urljoin, urlsplit

import requests

LUA = Path(__file__).resolve().parent / "load.lua"
RP_CALLBACK = "http://127.0.0.1:9/cb"  # never contacted: the driver reads Location headers
SCOPE = "openid profile email groups roles offline_access"
VERIFIER = "bench-pkce-verifier-" + "x" * 40
CHALLENGE = base64.urlsafe_b64encode(hashlib.sha256(VERIFIER.encode()).digest()).rstrip(
    b"=").decode()
LOGIN = "alice"  # acme member with teams: the richest profile of the demo directory
COOKIE = "keycard_session"
FORWARDED_APP = "https://app.bench.test"  # the app forward auth protects in the bench
FORWARDED = {"X-Forwarded-Proto": "http", "X-Forwarded-Host": "app.bench.test",
             "X-Forwarded-Uri": "/dashboard", "X-Forwarded-Method": "GET"}


@dataclass
class Load:
    """How hard and how long: wrk threads/connections, seconds, per-thread request cap."""

    threads: int = 2
    connections: int = 16
    duration: float = 10.0
    max_per_thread: int = 0  # smoke mode: stop after this many requests per wrk thread
    signin_procs: int = 4
    signin_max: int = 0  # smoke mode: journeys per driver process


@dataclass
class Client:
    client_id: str
    secret: str

    @property
    def basic(self) -> str:
        raw = f"{quote(self.client_id, safe='')}:{quote(self.secret, safe='')}"
        return "Basic " + base64.b64encode(raw.encode()).decode()


@dataclass
class Outcome:
    """What a load run saw from the client side (server-side figures come from measure)."""

    ops: int
    unexpected: int
    seconds: float
    p50_ms: float
    p99_ms: float
    sample: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


# -- wrk --------------------------------------------------------------------------------------


def _lua(value: Any) -> str:
    """A Lua literal for JSON-like data (ASCII strings, numbers, lists, string-keyed maps)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "nil"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "{" + ",".join(_lua(v) for v in value) + "}"
    return "{" + ",".join(f"[{json.dumps(k)}]={_lua(v)}" for k, v in value.items()) + "}"


def wrk_spec(method: str, path: str, *, headers: dict[str, str] | None = None,
             body: str | None = None, expect: tuple[int, ...] = (200,),
             pool: list[str] | None = None, chain: str | None = None) -> dict[str, Any]:
    heads = dict(headers or {})
    if body is not None:
        heads.setdefault("Content-Type", "application/x-www-form-urlencoded")
    return {"method": method, "path": path, "headers": heads, "body": body,
            "expect": list(expect), "pool": pool, "chain": chain}


def split_pool(values: list[str], threads: int) -> list[list[str]]:
    return [values[i::threads] for i in range(threads)]


def run_wrk(url: str, spec: dict[str, Any], load: Load, *, duration: float | None = None,
            max_per_thread: int | None = None) -> Outcome:
    """One wrk run; ends early once every thread has run out (cap reached, pool empty)."""
    with tempfile.TemporaryDirectory(prefix="keycard-bench-wrk-") as tmp:
        data = dict(spec)
        if data["pool"] is not None:
            data["pool"] = split_pool(data["pool"], load.threads)
        data["max"] = load.max_per_thread if max_per_thread is None else max_per_thread
        data["stopdir"] = tmp
        datafile = Path(tmp) / "data.lua"
        datafile.write_text("return " + _lua(data) + "\n")
        seconds = duration if duration is not None else load.duration
        proc = subprocess.Popen(
            ["wrk", "-t", str(load.threads), "-c", str(load.connections),
             "-d", f"{max(1, round(seconds))}s", "--timeout", "10s", "-s", str(LUA), url,
             "--", str(datafile)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        while proc.poll() is None:
            if len([p for p in os.listdir(tmp) if p != "data.lua"]) >= load.threads:
                proc.send_signal(signal.SIGINT)  # wrk's sleep ends, threads join, done() runs
                break
            time.sleep(0.02)
        out, _ = proc.communicate(timeout=60)
    line = next((x for x in out.splitlines() if x.startswith("BENCH_RESULT ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{out[-2000:]}")
    r = json.loads(line.removeprefix("BENCH_RESULT "))
    socket_errors = r["connect"] + r["read"] + r["write"] + r["timeout"]
    return Outcome(ops=r["ok"], unexpected=r["unexpected"] + socket_errors,
                   seconds=r["duration_us"] / 1e6, p50_ms=r["p50_us"] / 1000,
                   p99_ms=r["p99_us"] / 1000, sample=r["sample"],
                   extra={"wrk_requests": r["requests"], "socket_errors": socket_errors})


# -- the browser sign-in, over HTTP like a browser ---------------------------------------------


@dataclass(frozen=True)
class Paths:
    """Where a provider serves the code flow, and the scope its RP asks for."""

    authorize: str = "/authorize"
    token: str = "/token"
    introspect: str = "/introspect"
    scope: str = SCOPE


KEYCARD = Paths()
# oidc-provider: its own paths; ``api`` is its resource server's scope (the JWT's scope claim)
PEER = Paths(authorize="/auth", introspect="/token/introspection", scope=SCOPE + " api")


def authorize_url(base: str, client_id: str, paths: Paths = KEYCARD) -> str:
    return base + paths.authorize + "?" + urlencode({
        "response_type": "code", "client_id": client_id, "redirect_uri": RP_CALLBACK,
        "scope": paths.scope, "state": secrets.token_urlsafe(16),
        "nonce": secrets.token_urlsafe(16), "code_challenge": CHALLENGE,
        "code_challenge_method": "S256"})


def _location(response: requests.Response) -> str:
    if response.status_code not in (302, 303):
        raise RuntimeError(f"{response.request.method} {response.url} -> "
                           f"{response.status_code}: {response.text[:200]}")
    return urljoin(response.url, response.headers["Location"])


def exchange(http: requests.Session, base: str, rp: Client, code: str,
             paths: Paths = KEYCARD) -> dict[str, Any]:
    response = http.post(base + paths.token, data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": RP_CALLBACK,
        "code_verifier": VERIFIER}, auth=(rp.client_id, rp.secret))
    if response.status_code != 200:
        raise RuntimeError(f"token endpoint -> {response.status_code}: {response.text[:200]}")
    tokens: dict[str, Any] = response.json()
    return tokens


def sign_in(keycard: str, upstream: str, rp: Client) -> tuple[requests.Session, dict[str, Any],
                                                               int]:
    """authorize → upstream → callback → authorize → code → token, as a new browser.
    Returns the browser, the tokens and how many requests Keycard served."""
    http = requests.Session()
    served = 1
    location = _location(http.get(authorize_url(keycard, rp.client_id), allow_redirects=False))
    while location.startswith(keycard):
        location = _location(http.get(location, allow_redirects=False))
        served += 1
    if not location.startswith(upstream):
        raise RuntimeError(f"expected the upstream's sign-in page, got {location}")
    # The upstream's account picker posts back its query as hidden fields plus the account:
    # that page is the upstream's work, not Keycard's, so the driver posts the choice directly.
    params = dict(parse_qs(urlsplit(location).query))
    form = {k: v[0] for k, v in params.items()} | {"login": LOGIN}
    location = _location(http.post(upstream + "/login/oauth/authorize", data=form,
                                   allow_redirects=False))
    while location.startswith(keycard):
        location = _location(http.get(location, allow_redirects=False))
        served += 1
    code = parse_qs(urlsplit(location).query).get("code", [""])[0]
    if not location.startswith(RP_CALLBACK) or not code:
        raise RuntimeError(f"sign-in ended at {location}")
    tokens = exchange(http, keycard, rp, code)
    if "id_token" not in tokens:
        raise RuntimeError(f"no ID token in {sorted(tokens)}")
    return http, tokens, served + 1


def _signin_worker(job: tuple[str, str, str, str, float, int]) -> dict[str, Any]:
    keycard, upstream, client_id, secret, deadline, cap = job
    rp = Client(client_id, secret)
    latencies: list[float] = []
    errors, served, sample = 0, 0, ""
    while time.time() < deadline and (cap == 0 or len(latencies) + errors < cap):
        start = time.perf_counter()
        try:
            http, _, count = sign_in(keycard, upstream, rp)
            http.close()
        except (RuntimeError, requests.RequestException) as exc:
            errors += 1
            sample = sample or str(exc)[:300]
            continue
        latencies.append(time.perf_counter() - start)
        served += count
    return {"latencies": latencies, "errors": errors, "served": served, "sample": sample}


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(pct / 100 * (len(ordered) - 1))))]


def run_signins(keycard: str, upstream: str, rp: Client, load: Load) -> Outcome:
    started = time.time()
    deadline = started + (load.duration if load.signin_max == 0 else 300)
    jobs = [(keycard, upstream, rp.client_id, rp.secret, deadline, load.signin_max)] * (
        load.signin_procs)
    with ProcessPoolExecutor(load.signin_procs) as pool:
        results = list(pool.map(_signin_worker, jobs))
    seconds = time.time() - started
    latencies = [x for r in results for x in r["latencies"]]
    served = sum(r["served"] for r in results)
    return Outcome(ops=len(latencies), unexpected=sum(r["errors"] for r in results),
                   seconds=seconds, p50_ms=percentile(latencies, 50) * 1000,
                   p99_ms=percentile(latencies, 99) * 1000,
                   sample=next((r["sample"] for r in results if r["sample"]), ""),
                   extra={"keycard_requests_per_op": served / max(1, len(latencies))})


# -- pools ------------------------------------------------------------------------------------


def make_codes(base: str, rp: Client, browsers: list[requests.Session], count: int,
               workers: int = 8, paths: Paths = KEYCARD) -> list[str]:
    """Authorization codes from signed-in browsers (GET /authorize → redirect with ?code=)."""
    cookies = [b.cookies.get_dict() for b in browsers]
    local = threading.local()

    def one(i: int) -> str:
        if not hasattr(local, "http"):
            local.http = requests.Session()
            local.http.cookies.update(cookies[i % len(cookies)])
        location = _location(local.http.get(authorize_url(base, rp.client_id, paths),
                                            allow_redirects=False))
        code = parse_qs(urlsplit(location).query).get("code", [""])[0]
        if not code:
            raise RuntimeError(f"{paths.authorize} did not issue a code: {location}")
        return code

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, range(count)))


def refresh_chains(base: str, rp: Client, browsers: list[requests.Session],
                   count: int, paths: Paths = KEYCARD) -> list[str]:
    """One refresh token per connection: the head of its own rotation chain."""
    codes = make_codes(base, rp, browsers, count, workers=min(8, count), paths=paths)
    http = requests.Session()
    return [exchange(http, base, rp, code, paths)["refresh_token"] for code in codes]


def obtain_user_token(base: str, rp: Client, browser: requests.Session) -> str:
    """A person's access token, from a browser already signed in (code flow)."""
    [code] = make_codes(base, rp, [browser], 1, workers=1)
    return str(exchange(requests.Session(), base, rp, code)["access_token"])


def peer_browser(peer: str, rp: Client) -> requests.Session:
    """A browser signed in at oidc-provider: its login and consent interaction is answered
    at once by the bench's server.mjs, then /auth issues codes directly (like Keycard's
    trusted RP for a signed-in browser)."""
    http = requests.Session()
    location = authorize_url(peer, rp.client_id, PEER)
    for _ in range(5):
        location = _location(http.get(location, allow_redirects=False))
        if location.startswith(RP_CALLBACK):
            return http
    raise RuntimeError(f"oidc-provider's sign-in did not end at the RP: {location}")


def client_credentials_token(url: str, path: str, client: Client, **extra: str) -> str:
    response = requests.post(url + path, data={"grant_type": "client_credentials", **extra},
                             headers={"Authorization": client.basic})
    if response.status_code != 200:
        raise RuntimeError(f"client credentials at {url} -> {response.status_code}: "
                           f"{response.text[:200]}")
    return str(response.json()["access_token"])


# -- the specs --------------------------------------------------------------------------------


def form(**values: str) -> str:
    return urlencode(values).replace("%7Bv%7D", "{v}")


Spec = Callable[[list[str]], dict[str, Any]]


def token_specs(rp: Client, service: Client, paths: Paths, *, refresh_token: str,
                **cc: str) -> dict[str, Spec]:
    """The token endpoint's operations, the same requests at Keycard and at the peer."""
    basic_rp = {"Authorization": rp.basic}
    return {
        "code_exchange": lambda pool: wrk_spec(
            "POST", paths.token, headers=basic_rp, pool=pool,
            body=form(grant_type="authorization_code", code="{v}", redirect_uri=RP_CALLBACK,
                      code_verifier=VERIFIER)),
        "refresh": lambda pool: wrk_spec(
            "POST", paths.token, headers=basic_rp, pool=pool, chain="refresh_token",
            body=form(grant_type="refresh_token", refresh_token="{v}")),
        "client_credentials": lambda _: wrk_spec(
            "POST", paths.token, headers={"Authorization": service.basic},
            body=form(grant_type="client_credentials", **cc)),
        # the RP asks about its own refresh token: opaque on both sides
        "introspection_refresh": lambda _: wrk_spec(
            "POST", paths.introspect, headers=basic_rp,
            body=form(token=refresh_token, token_type_hint="refresh_token")),
    }


def specs(*, rp: Client, service: Client, user_token: str, service_token: str, app_token: str,
          session_cookie: str, refresh_token: str = "") -> dict[str, Spec]:
    """Keycard's wrk operations; each takes the pool it needs (ignored by static ones)."""
    basic_svc = {"Authorization": service.basic}
    return {
        **token_specs(rp, service, KEYCARD, refresh_token=refresh_token),
        "introspection": lambda _: wrk_spec(
            "POST", "/introspect", headers=basic_svc,
            body=form(token=service_token, token_type_hint="access_token")),
        "userinfo": lambda _: wrk_spec(
            "GET", "/userinfo", headers={"Authorization": f"Bearer {user_token}"}),
        "jwks": lambda _: wrk_spec("GET", "/jwks.json"),
        "forward_auth_session": lambda _: wrk_spec(
            "GET", "/auth/verify", headers={**FORWARDED, "Cookie": f"{COOKIE}={session_cookie}"}),
        "forward_auth_bearer": lambda _: wrk_spec(
            "GET", "/auth/verify", headers={**FORWARDED, "Authorization": f"Bearer {app_token}"}),
    }


PEER_JWT_RESOURCE = "https://api.bench.test/jwt"
PEER_OPAQUE_RESOURCE = "https://api.bench.test/opaque"
ALGS = ("RS256", "ES256")
# bench/peer/server.mjs: one service and one RP per algorithm (its id_token_signed_response_alg)
PEER_SERVICES = {alg: Client(f"bench-service-{alg}", "bench-service-secret-0123456789abcdef")
                 for alg in ALGS}
PEER_RPS = {alg: Client(f"bench-rp-{alg}", "bench-rp-secret-0123456789abcdef") for alg in ALGS}


def peer_specs(alg: str, *, opaque_token: str, refresh_token: str) -> dict[str, Spec]:
    """oidc-provider's operations with the clients of ``alg``; its introspection of access
    tokens asks about an opaque one (it keeps no record of JWT access tokens)."""
    service = PEER_SERVICES[alg]
    return {
        **token_specs(PEER_RPS[alg], service, PEER, refresh_token=refresh_token,
                      resource=PEER_JWT_RESOURCE),
        "introspection": lambda _: wrk_spec(
            "POST", PEER.introspect, headers={"Authorization": service.basic},
            body=form(token=opaque_token, token_type_hint="access_token")),
    }


def forward_auth_missing(keycard: str) -> bool:
    """True while ``GET /auth/verify`` is not served (sso/forward_auth.py not there yet)."""
    return requests.get(keycard + "/auth/verify", headers=FORWARDED,
                        allow_redirects=False).status_code == 404
