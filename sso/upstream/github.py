"""GitHub (github.com or Enterprise Server) as the upstream. Every GitHub quirk lives here.

Quirks handled: token errors returned with HTTP 200, private profile emails,
unverified emails, paginated ``/user/teams`` and ``/user/orgs`` (``Link:
rel="next"``), nested teams whose ancestors GitHub does not list, orgs hidden
from ``/user/orgs`` by OAuth-app restrictions (we ask per-org membership
instead), primary and secondary rate limits, SAML SSO enforcement
(``X-GitHub-SSO``), 5xx "unicorn" pages and timeouts, and answers that are slow,
huge or the wrong shape.

Every call has one deadline (``SSO_GITHUB_TIMEOUT``, the whole call: connecting, the
answer's headers and its body) and a size cap (``MAX_BODY_BYTES``): the body is read in
chunks against both, so a reply trickled a byte at a time or one of forty megabytes
fails as an :class:`UpstreamError` instead of holding a worker or its memory. (While
the status line and headers arrive, the bound is per read, ``SSO_GITHUB_TIMEOUT`` each,
on at most http.client's 100 header lines of 64 KiB; the body is bounded in total.)
Answers of the wrong shape (``{}`` for ``/user``, a list for an object, a non-JSON
body) raise :class:`UpstreamMalformed`, a 502, never a 500.

Two HTTP stacks toward GitHub, on purpose, both set up once per process from the
same proxy and CA-bundle settings (``_environment``): the OAuth token exchange goes
through Authlib's client, which is built on requests (PKCE, token-error parsing and
client authentication are Authlib's, not ours); the REST calls, four or more per
sign-in and per membership re-check, go straight to a urllib3 pool, because requests
wrapped them at about half again the CPU per call (bench.profile signin, #6). Both
keep connections alive; neither follows a redirect off the API host.
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode, urljoin, urlsplit

import certifi
import orjson
import requests
import urllib3
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri
from authlib.oauth2.rfc7636 import create_s256_code_challenge

from sso.cache import ExpiringCache
from sso.config import ConfigError
from sso.upstream.base import (
    AccessDenied,
    BadCredentials,
    Identity,
    RateLimited,
    SamlSsoRequired,
    UpstreamError,
    UpstreamMalformed,
    UpstreamToken,
    UpstreamUnavailable,
    UpstreamUser,
    valid_login,
)

API_VERSION = "2022-11-28"
SCOPES = "read:org user:email"
MAX_PAGES = 50  # 5 000 teams at per_page=100: far beyond any real user, bounds a looping Link
MAX_REDIRECTS = 3  # GitHub answers 301/307 for renamed orgs and teams
REDIRECTS = frozenset({301, 302, 303, 307, 308})
PARENT_CACHE_SECONDS = 300  # team hierarchy changes rarely; membership itself is never cached
MAX_BODY_BYTES = 5 * 1024 * 1024  # a page of 100 teams is ~100 KiB; beyond this, refuse
READ_CHUNK = 64 * 1024


@dataclass(frozen=True)
class GitHubConfig:
    client_id: str
    client_secret: str
    web_url: str = "https://github.com"
    api_url: str = "https://api.github.com"
    allowed_orgs: tuple[str, ...] = ()  # empty: report every org the user is in
    timeout: float = 10.0


class GitHubConnector:
    """Signs people in with GitHub's OAuth web flow and reads who they are."""

    name = "github"

    def __init__(self, config: GitHubConfig) -> None:
        self.config = config
        # Keep-alive toward the upstream, pooled for the process, straight through urllib3
        # (requests wraps it at about half again the CPU per call; a requests session per
        # token exchange, as Authlib's client is, cost a tenth of a sign-in): one pool for
        # the web host (the token exchange), one for the API host (four or more calls per
        # sign-in). On GitHub Enterprise Server both are the same host.
        self._environment = _environment((config.web_url, config.api_url))
        self._api_pool = _pool_for(config.api_url, *self._environment, timeout=config.timeout)
        self._web_pool = _pool_for(config.web_url, *self._environment, timeout=config.timeout)
        # "org/slug" -> (expires, parent "org/slug" or None): the ancestors GitHub does not
        # list, learned once per few minutes per process instead of at every sign-in.
        # ("" when the team has none: the cache answers None for "not known").
        self._parents: ExpiringCache[str, str] = ExpiringCache(10_000, PARENT_CACHE_SECONDS)

    # -- the three verbs -------------------------------------------------------------

    def login_url(
        self, *, redirect_uri: str, state: str, code_verifier: str, login_hint: str | None = None,
        select_account: bool = False,
    ) -> str:
        extra = {"login": login_hint} if login_hint and valid_login(login_hint) else {}
        if select_account:
            extra["prompt"] = "select_account"  # GitHub's multi-account picker
        # Authlib's request encoding, without a client session (a requests session each).
        return str(prepare_grant_uri(
            f"{self.config.web_url}/login/oauth/authorize", self.config.client_id, "code",
            redirect_uri=redirect_uri, scope=SCOPES, state=state,
            code_challenge=create_s256_code_challenge(code_verifier),
            code_challenge_method="S256", allow_signup="false",
            **extra,  # GitHub's own "suggest this account" parameter
        ))

    def handle_callback(
        self, *, code: str, redirect_uri: str, code_verifier: str
    ) -> tuple[Identity, UpstreamToken]:
        token = self._exchange(code, redirect_uri, code_verifier)
        return self.refresh(token), token

    def refresh(self, token: UpstreamToken) -> Identity:
        api = _Api(self._api_pool, self.config, token.access_token)
        try:
            user = api.get("/user")
            if not isinstance(user, dict):
                raise TypeError(f"/user is a {type(user).__name__}, not an object")
            user_id, login = user["id"], user["login"]
            if isinstance(user_id, bool) or not isinstance(user_id, int) or user_id <= 0:
                raise ValueError(f"/user id {user_id!r} is not a positive integer")
            if not isinstance(login, str) or not login:  # EMU logins have "_": no syntax check
                raise ValueError(f"/user login {login!r} is not a login")
            email, verified = _pick_email(user, api)
            orgs = self._orgs(api)
            teams = self._teams(api, set(orgs))
            name, avatar = user.get("name"), user.get("avatar_url")
            return Identity(
                user_id=str(user_id),
                login=login,
                name=str(name) if name else None,
                email=email,
                email_verified=verified,
                avatar_url=str(avatar) if avatar else None,
                orgs=tuple(sorted(orgs)),
                teams=tuple(sorted(teams)),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            # GitHub's documented shapes are read without ceremony above; anything else
            # (a member missing, a list where an object belongs) is GitHub's fault: a 502.
            raise UpstreamMalformed(
                "GitHub answered in an unexpected way. Please try again in a minute.",
                detail=f"malformed profile or membership: {exc!r}",
            ) from exc

    def find_user(self, login: str) -> UpstreamUser | None:
        """``GET /users/{login}`` authenticated as the OAuth app (HTTP basic with its client
        id and secret, which GitHub accepts for OAuth apps: the app's rate limit, not the
        anonymous one). Same deadline, size cap and failure translation as every call."""
        if not valid_login(login):
            return None  # GitHub has no such login; never put it in a URL
        pair = f"{self.config.client_id}:{self.config.client_secret}".encode()
        api = _Api(self._api_pool, self.config, base64.b64encode(pair).decode(), scheme="Basic")
        try:
            user = api.get(f"/users/{quote(login)}", missing_ok=True)
        except BadCredentials as exc:
            raise BadCredentials(
                "GitHub refused Keycard's OAuth app credentials (SSO_GITHUB_CLIENT_ID and "
                "SSO_GITHUB_CLIENT_SECRET).", detail=exc.detail,
            ) from exc
        if user is None:
            return None
        try:
            user_id, found, kind = user["id"], user["login"], user.get("type") or "User"
            if isinstance(user_id, bool) or not isinstance(user_id, int) or user_id <= 0:
                raise ValueError(f"/users id {user_id!r} is not a positive integer")
            if not isinstance(found, str) or not found or not isinstance(kind, str):
                raise ValueError(f"/users login {found!r} is not a login")
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise UpstreamMalformed("GitHub answered in an unexpected way.",
                                    detail=f"malformed /users/{login}: {exc!r}") from exc
        return UpstreamUser(user_id=str(user_id), login=found, kind=kind)

    # -- token exchange --------------------------------------------------------------

    def _exchange(self, code: str, redirect_uri: str, code_verifier: str) -> UpstreamToken:
        """RFC 6749 §4.1.3 with PKCE and ``client_secret_post``, as GitHub takes it: one POST
        within the deadline and the size cap. GitHub answers errors with HTTP 200 and an
        ``error`` member (RFC 6749 §5.2 shape)."""
        url = f"{self.config.web_url}/login/oauth/access_token"
        deadline = time.monotonic() + self.config.timeout
        body = urlencode({
            "grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri,
            "code_verifier": code_verifier, "client_id": self.config.client_id,
            "client_secret": self.config.client_secret})
        try:
            answer = self._web_pool.request(
                "POST", url, body=body, redirect=False, preload_content=False,
                headers={"Accept": "application/json", "User-Agent": "Keycard-SSO",
                         "Content-Type": "application/x-www-form-urlencoded"},
                timeout=urllib3.Timeout(total=self.config.timeout))
        except urllib3.exceptions.HTTPError as exc:  # timeouts, refused, reset, TLS
            raise UpstreamUnavailable(
                "GitHub did not answer in time. Please try again in a minute.", detail=repr(exc)
            ) from exc
        raw = _read_whole(answer, deadline, url)
        try:
            if answer.status >= 500:
                raise ValueError(answer.status)
            data = orjson.loads(raw)
        except ValueError:
            raise UpstreamUnavailable(
                "GitHub answered with an error. Please try again in a minute.",
                # Not the body: a malformed answer may still hold a token.
                detail=f"token endpoint answered {answer.status} "
                       f"({answer.headers.get('Content-Type', 'no type')}, {len(raw)} bytes)",
            ) from None
        if not isinstance(data, dict):
            raise UpstreamMalformed("GitHub answered in an unexpected way.",
                                    detail=f"token endpoint answered a {type(data).__name__}")
        if "error" in data:
            raise BadCredentials(
                "GitHub did not accept the sign-in code. It may have expired: please try again.",
                detail=f"token endpoint error: {data.get('error')}: "
                       f"{data.get('error_description')}",
            )
        access_token = data.get("access_token")
        if not isinstance(access_token, str) or not access_token:
            raise BadCredentials("GitHub returned no access token.", detail=str(sorted(data)))
        return UpstreamToken(access_token=access_token, scope=str(data.get("scope", "")))

    # -- membership ------------------------------------------------------------------

    def _orgs(self, api: _Api) -> list[str]:
        if not self.config.allowed_orgs:
            return [str(o["login"]).lower() for o in api.paginate("/user/orgs")]
        # /user/orgs hides orgs that restrict OAuth apps; the membership endpoint is exact.
        member_of = []
        for org in self.config.allowed_orgs:
            data = api.get(f"/user/memberships/orgs/{quote(org)}", missing_ok=True)
            if data and data.get("state") == "active":
                member_of.append(org.lower())
        return member_of

    def _teams(self, api: _Api, orgs: set[str]) -> set[str]:
        teams: set[str] = set()
        parents: dict[str, str | None] = {}  # "org/slug" -> parent slug, learned as we go
        for team in api.paginate("/user/teams"):
            org = str(team["organization"]["login"]).lower()
            if org not in orgs:
                continue
            key = f"{org}/{team['slug']}"
            teams.add(key)
            parent = team.get("parent")
            parents[key] = f"{org}/{parent['slug']}" if parent else None
        # GitHub lists direct memberships only: walk each chain up to its root.
        for key in list(teams):
            seen = {key}
            parent_key = parents.get(key)
            while parent_key and parent_key not in seen:
                seen.add(parent_key)
                teams.add(parent_key)
                if parent_key not in parents:
                    parents[parent_key] = self._parent_of(api, parent_key)
                parent_key = parents[parent_key]
        return teams

    def forget_teams(self) -> None:
        self._parents.clear()

    def _parent_of(self, api: _Api, team: str) -> str | None:
        cached = self._parents.get(team)
        if cached is not None:
            return cached or None
        org, slug = team.split("/", 1)
        data = api.get(f"/orgs/{quote(org)}/teams/{quote(slug)}", missing_ok=True)
        grand = (data or {}).get("parent")
        parent = f"{org}/{grand['slug']}" if grand else None
        self._parents.put(team, parent or "")
        return parent


def _pick_email(user: dict[str, Any], api: _Api) -> tuple[str | None, bool]:
    """The primary verified address; an unverified one is returned but never as verified."""
    try:
        emails = list(api.paginate("/user/emails"))
    except _Missing:
        emails = []  # token lacks user:email: the profile email cannot be proven verified
    verified = [e for e in emails if e.get("verified")]
    for entry in verified:
        if entry.get("primary"):
            return str(entry["email"]), True
    if verified:
        return str(verified[0]["email"]), True
    fallback = user.get("email") or next((e["email"] for e in emails if e.get("primary")), None)
    return (str(fallback) if fallback else None), False


class _Missing(Exception):
    """A 404 the caller said it can live with."""


def _environment(urls: tuple[str, ...]) -> tuple[dict[str, str], bool | str]:
    """What ``requests`` reads from the environment per call when ``trust_env`` is on,
    read once: a proxy per upstream host (``HTTPS_PROXY``, ``NO_PROXY``...) and the CA
    bundle (``REQUESTS_CA_BUNDLE``, ``CURL_CA_BUNDLE``; GitHub Enterprise often has a
    private CA). Proxies are keyed by host: a host not listed is reached directly."""
    proxies: dict[str, str] = {}
    for url in urls:
        parts = urlsplit(url)
        found = requests.utils.get_environ_proxies(url)
        proxy = found.get(parts.scheme) or found.get("all")
        if proxy:
            proxies[f"{parts.scheme}://{parts.hostname}"] = proxy
    verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
    return proxies, verify


def _pool_for(url: str, proxies: dict[str, str], verify: bool | str, *,
              timeout: float) -> urllib3.PoolManager:
    """Keep-alive connections to one upstream host, through its proxy if it has one,
    verifying TLS like requests does (certifi's bundle unless one is configured).
    No retries; redirects are followed by :class:`_Api`, on the API host only."""
    parts = urlsplit(url)
    bundle = verify if isinstance(verify, str) else certifi.where()
    options: dict[str, Any] = {
        "maxsize": 32, "retries": False, "timeout": urllib3.Timeout(total=timeout),
        "cert_reqs": "CERT_REQUIRED",
        "ca_cert_dir" if os.path.isdir(bundle) else "ca_certs": bundle,
    }
    proxy = proxies.get(f"{parts.scheme}://{parts.hostname}")
    if not proxy:
        return urllib3.PoolManager(**options)
    if urlsplit(proxy).scheme not in ("http", "https"):
        raise ConfigError([f"the proxy for {parts.hostname} (HTTPS_PROXY/ALL_PROXY) must be an "
                           "http:// or https:// URL"])
    # urllib3 ignores user:password in the proxy URL; requests turned it into this header.
    user, password = requests.utils.get_auth_from_url(proxy)
    headers = urllib3.make_headers(proxy_basic_auth=f"{user}:{password}") if user else None
    return urllib3.ProxyManager(proxy, proxy_headers=headers, **options)


@dataclass(frozen=True)
class _Reply:
    """An API answer, as much of it as the failure checks and the callers read."""

    method: str
    url: str
    status: int
    headers: Mapping[str, str]  # case-insensitive (urllib3's HTTPHeaderDict)
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def next_url(self) -> str | None:
        for link in requests.utils.parse_header_links(self.headers.get("Link", "")):
            if link.get("rel") == "next":
                return link.get("url")
        return None


class _Api:
    """A GitHub REST client bound to one user's token; translates failure shapes."""

    def __init__(self, http: urllib3.PoolManager, config: GitHubConfig, token: str, *,
                 scheme: str = "Bearer") -> None:
        self._http = http
        self._config = config
        self._headers = {
            "Authorization": f"{scheme} {token}",
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": API_VERSION,
            "User-Agent": "Keycard-SSO",
        }

    def _request(self, url: str) -> _Reply:
        """One API call, redirects included, within one deadline and the size cap."""
        deadline = time.monotonic() + self._config.timeout
        for _ in range(MAX_REDIRECTS + 1):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _too_slow(url)
            try:
                answer = self._http.request("GET", url, headers=self._headers, redirect=False,
                                            preload_content=False,
                                            timeout=urllib3.Timeout(total=remaining))
            except urllib3.exceptions.HTTPError as exc:  # timeouts, refused, reset, TLS
                raise UpstreamUnavailable(
                    "GitHub did not answer in time. Please try again in a minute.",
                    detail=repr(exc),
                ) from exc
            body = _read_whole(answer, deadline, url)
            reply = _Reply("GET", url, answer.status, answer.headers, body)
            target = urljoin(url, reply.headers.get("Location", ""))
            if reply.status in REDIRECTS and target.startswith(self._config.api_url + "/"):
                url = target  # a renamed org or team; the token stays on the API host
                continue
            _raise_for_failure(reply)  # a redirect anywhere else is an error, not followed
            return reply
        raise UpstreamError("GitHub redirected too many times.", detail=url)

    def get(self, path: str, *, missing_ok: bool = False) -> Any:
        try:
            return _json(self._request(self._config.api_url + path))
        except _Missing:
            if missing_ok:
                return None
            raise UpstreamError(
                "GitHub did not return your profile.", detail=f"404 on {path}"
            ) from None

    def paginate(self, path: str) -> Iterator[dict[str, Any]]:
        url: str | None = f"{self._config.api_url}{path}?per_page=100"
        for _ in range(MAX_PAGES):
            if url is None:
                return
            response = self._request(url)
            page = _json(response)
            if not isinstance(page, list):
                raise UpstreamMalformed("GitHub answered in an unexpected shape.", detail=path)
            yield from page
            url = response.next_url()
            if url and not url.startswith(self._config.api_url + "/"):
                # Never send the user's GitHub token to a host a Link header names.
                raise UpstreamError("GitHub's pagination pointed elsewhere.", detail=str(url))


def _too_slow(url: str) -> UpstreamUnavailable:
    return UpstreamUnavailable("GitHub did not answer in time. Please try again in a minute.",
                               detail=f"no complete answer from {url} within the deadline")


def _read_whole(answer: urllib3.BaseHTTPResponse, deadline: float, url: str) -> bytes:
    """:func:`_read_capped`, then the connection back to its pool (or closed, when the
    answer was left half read and so cannot be reused)."""
    try:
        return _read_capped(answer, deadline, url)
    except UpstreamError:
        answer.close()
        raise
    finally:
        answer.release_conn()


def _read_capped(answer: urllib3.BaseHTTPResponse, deadline: float, url: str) -> bytes:
    """The body of an unread answer, read in chunks until ``deadline`` (a monotonic time)
    and at most :data:`MAX_BODY_BYTES` (decoded); :class:`UpstreamError` otherwise.

    ``read1`` returns whatever one receive brought, so a body trickled a byte at a time
    is checked against the deadline at every byte, and each receive waits at most for
    what is left of the deadline."""
    too_large = UpstreamMalformed(
        "GitHub's answer was too large. Please try again in a minute.",
        detail=f"answer from {url} larger than {MAX_BODY_BYTES} bytes",
    )
    length = answer.headers.get("Content-Length", "")
    if length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise too_large  # refused before a byte of it is read
    chunks: list[bytes] = []
    size = 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _too_slow(url)
        sock = getattr(getattr(answer, "connection", None), "sock", None)
        if sock is not None:
            sock.settimeout(remaining)  # urllib3 sets it again for the next request
        try:
            chunk = answer.read1(READ_CHUNK, decode_content=True)
        except (urllib3.exceptions.HTTPError, OSError) as exc:  # timeout, reset, bad gzip
            raise UpstreamUnavailable(
                "GitHub did not answer in time. Please try again in a minute.",
                detail=f"reading {url}: {exc!r}",
            ) from exc
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise too_large
        chunks.append(chunk)


def _json(response: _Reply) -> Any:
    try:
        return orjson.loads(response.body)
    except ValueError as exc:
        raise UpstreamMalformed(
            "GitHub answered with something that is not JSON. Please try again shortly.",
            detail=f"{response.status} {response.url}",
        ) from exc


def _raise_for_failure(response: _Reply) -> None:
    status = response.status
    if status < 300:
        return
    detail = f"{status} {response.method} {response.url}: {response.text[:200]}"
    if status < 400:
        raise UpstreamError("GitHub answered with an unexpected redirect.", detail=detail)
    if status == 404:
        raise _Missing(detail)
    if status == 401:
        raise BadCredentials(
            "GitHub no longer accepts Keycard's access for your account. Please sign in again.",
            detail=detail,
        )
    sso = response.headers.get("X-GitHub-SSO", "")
    if status == 403 and sso.startswith("required"):
        url = sso.split("url=", 1)[1].strip() if "url=" in sso else None
        raise SamlSsoRequired(
            "Your organisation enforces SAML single sign-on. Authorise Keycard for the "
            "organisation on GitHub, then sign in again.",
            url=url if url and url.startswith(("https://", "http://")) else None,
            detail=detail,
        )
    if status in (403, 429) and (
        status == 429
        or response.headers.get("X-RateLimit-Remaining") == "0"
        or "Retry-After" in response.headers
    ):
        retry_after = _retry_after(response)
        raise RateLimited(
            f"GitHub is limiting how often we may ask. Please try again in "
            f"{_human(retry_after)}.",
            retry_after=retry_after,
            detail=detail,
        )
    if status >= 500:
        raise UpstreamUnavailable(
            "GitHub is having trouble right now. Please try again in a minute.", detail=detail
        )
    if status == 403:
        raise AccessDenied(
            "GitHub refused to share your membership with Keycard. Ask an organisation owner "
            "to approve Keycard's OAuth app.",
            detail=detail,
        )
    raise UpstreamError("GitHub answered with an unexpected error.", detail=detail)


def _retry_after(response: _Reply) -> int:
    header = response.headers.get("Retry-After")
    if header and header.isdigit():
        return max(1, int(header))
    reset = response.headers.get("X-RateLimit-Reset")
    if reset and reset.isdigit():
        return max(1, int(reset) - int(time.time()))
    return 60


def _human(seconds: int) -> str:
    if seconds < 90:
        return f"{seconds} seconds"
    return f"{round(seconds / 60)} minutes"
