"""The GitHub connector against the development upstream, spoken to over real HTTP.

Tokens are obtained the way Keycard obtains them: the connector builds the authorize
URL, a ``requests`` "browser" picks an account on the upstream's page, and the code
that comes back is exchanged by :meth:`GitHubConnector.handle_callback`.
"""

from __future__ import annotations

import base64
import inspect
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import get_type_hints
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import urllib3

from sso.config import ConfigError
from sso.upstream.base import (
    BadCredentials,
    Connector,
    Identity,
    RateLimited,
    SamlSsoRequired,
    UpstreamError,
    UpstreamToken,
    UpstreamUnavailable,
)
from sso.upstream.github import API_VERSION, GitHubConfig, GitHubConnector
from tests.support import free_port, pick_upstream_user, wait_until

ROOT = Path(__file__).resolve().parent.parent.parent

REDIRECT_URI = "http://127.0.0.1:9/auth/github/callback"  # never contacted: redirects stop here


@pytest.fixture
def connector(upstream) -> GitHubConnector:
    return GitHubConnector(
        GitHubConfig(
            client_id="keycard-dev",
            client_secret="keycard-dev-secret",
            web_url=upstream.url,
            api_url=upstream.url + "/api/v3",
            allowed_orgs=("acme",),
            timeout=1.0,
        )
    )


def authorize(connector: GitHubConnector, login: str) -> tuple[str, str]:
    """Drive the upstream's OAuth page as ``login``; returns (code, code_verifier)."""
    state, verifier = secrets.token_urlsafe(32), secrets.token_urlsafe(48)
    url = connector.login_url(redirect_uri=REDIRECT_URI, state=state, code_verifier=verifier)
    with requests.Session() as browser:
        page = browser.get(url)
        assert page.status_code == 200, page.text[:300]
        answer = pick_upstream_user(browser, page, login, allow_redirects=False)
    assert answer.status_code == 302, answer.text[:300]
    location = answer.headers["Location"]
    assert location.startswith(REDIRECT_URI), location
    query = parse_qs(urlsplit(location).query)
    assert query["state"] == [state]
    return query["code"][0], verifier


@pytest.fixture
def sign_in_as(connector: GitHubConnector) -> Callable[[str], tuple[Identity, UpstreamToken]]:
    def run(login: str) -> tuple[Identity, UpstreamToken]:
        code, verifier = authorize(connector, login)
        return connector.handle_callback(
            code=code, redirect_uri=REDIRECT_URI, code_verifier=verifier
        )

    return run


def api_calls(upstream, path: str) -> int:
    return sum(1 for method, seen in list(upstream.state.requests_seen) if seen == path)


# -- the seam ------------------------------------------------------------------------------


def test_github_connector_satisfies_the_connector_protocol_with_identical_signatures():
    connector = GitHubConnector(GitHubConfig(client_id="x", client_secret="y"))
    assert isinstance(connector, Connector)
    assert isinstance(connector.name, str) and connector.name == "github"
    for verb in ("login_url", "handle_callback", "refresh"):
        expected = inspect.signature(getattr(Connector, verb))
        actual = inspect.signature(getattr(GitHubConnector, verb))
        assert [(p.name, p.kind, p.default) for p in actual.parameters.values()] == [
            (p.name, p.kind, p.default) for p in expected.parameters.values()
        ], verb
        assert get_type_hints(getattr(GitHubConnector, verb)) == get_type_hints(
            getattr(Connector, verb)
        ), verb


# -- identity --------------------------------------------------------------------------------


def test_sign_in_returns_the_numeric_id_profile_and_an_upstream_token(sign_in_as):
    identity, token = sign_in_as("alice")
    assert identity.user_id == "1001"
    assert identity.login == "alice"
    assert identity.name == "Alice Archer"
    assert token.access_token.startswith("gho_")
    assert "read:org" in token.scope and "user:email" in token.scope


def test_user_in_150_teams_gets_every_team_across_two_pages(upstream, sign_in_as):
    state = upstream.state
    state.add_user("busy", "Busy Bee", public_email="busy@acme.test")
    expected = set()
    for n in range(150):
        state.add_team("acme", f"team-{n:03d}")
        state.add_team_member("acme", f"team-{n:03d}", "busy")
        expected.add(f"acme/team-{n:03d}")
    before = api_calls(upstream, "/api/v3/user/teams")

    identity, _ = sign_in_as("busy")

    assert set(identity.teams) == expected
    assert len(identity.teams) == 150
    assert api_calls(upstream, "/api/v3/user/teams") - before == 2  # 100 + 50 per Link rel=next


def test_nested_team_membership_includes_every_ancestor_team(sign_in_as):
    identity, _ = sign_in_as("bob")  # direct member of acme/sre only
    assert identity.teams == ("acme/engineering", "acme/platform", "acme/sre")
    assert "acme:engineering" in identity.groups


def test_private_email_is_read_from_user_emails(upstream, sign_in_as):
    assert upstream.state.user_by_login("bob").public_email is None  # /user says null
    identity, _ = sign_in_as("bob")
    assert identity.email == "bob@acme.test"
    assert identity.email_verified is True


def test_only_unverified_email_is_never_reported_as_verified(sign_in_as):
    identity, _ = sign_in_as("carol")
    assert identity.email == "carol@acme.test"
    assert identity.email_verified is False


def test_verified_secondary_email_beats_an_unverified_primary(upstream, sign_in_as):
    upstream.state.add_user(
        "erin",
        "Erin Ek",
        emails=[
            {"email": "erin@unproven.test", "primary": True, "verified": False},
            {"email": "erin@acme.test", "primary": False, "verified": True},
        ],
    )
    upstream.state.add_org_member("acme", "erin")
    identity, _ = sign_in_as("erin")
    assert identity.email == "erin@acme.test"
    assert identity.email_verified is True


def test_orgs_and_teams_outside_the_allowed_list_are_not_reported(upstream, sign_in_as):
    state = upstream.state
    state.add_team("globex", "ops")
    state.add_team_member("globex", "ops", "alice")  # alice is now in acme and globex
    assert {o.login for o in state.orgs_for_user(1001)} == {"acme", "globex"}

    identity, _ = sign_in_as("alice")

    assert identity.orgs == ("acme",)
    assert identity.teams == ("acme/engineering", "acme/platform", "acme/security")
    assert not any(path.endswith("/globex") for _, path in state.requests_seen)


def test_non_member_gets_no_orgs(sign_in_as):
    identity, _ = sign_in_as("mallory")  # member of globex only
    assert identity.orgs == ()
    assert identity.teams == ()


# -- failures map to typed errors ------------------------------------------------------------


def test_revoked_token_is_bad_credentials(upstream, sign_in_as, connector):
    _, token = sign_in_as("alice")
    upstream.state.add_fault("/api/v3/user", "unauthorized")
    with pytest.raises(BadCredentials):
        connector.refresh(token)


def test_primary_rate_limit_is_rate_limited_until_the_reset_time(upstream, sign_in_as, connector):
    _, token = sign_in_as("alice")
    upstream.state.add_fault("/api/v3/user", "rate_limit", reset_in=600)
    with pytest.raises(RateLimited) as caught:
        connector.refresh(token)
    assert 590 <= caught.value.retry_after <= 600
    assert "10 minutes" in caught.value.message


def test_secondary_rate_limit_is_rate_limited_for_its_retry_after(upstream, sign_in_as, connector):
    _, token = sign_in_as("alice")
    upstream.state.add_fault("/api/v3/user/teams", "secondary_rate_limit")  # Retry-After: 60
    with pytest.raises(RateLimited) as caught:
        connector.refresh(token)
    assert caught.value.retry_after == 60


def test_saml_enforcement_is_saml_sso_required_with_the_header_url(
    upstream, sign_in_as, connector
):
    _, token = sign_in_as("alice")
    upstream.state.add_fault(
        "/api/v3/user/memberships/orgs/acme", "saml", org="acme", authorization_request="t1ck3t"
    )
    with pytest.raises(SamlSsoRequired) as caught:
        connector.refresh(token)
    assert caught.value.url == f"{upstream.url}/orgs/acme/sso?authorization_request=t1ck3t"


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_unicorn_page_is_upstream_unavailable(upstream, sign_in_as, connector, status):
    _, token = sign_in_as("alice")
    upstream.state.add_fault("/api/v3/user", "server_error", status=status)
    with pytest.raises(UpstreamUnavailable):
        connector.refresh(token)


def test_slow_upstream_is_upstream_unavailable_after_the_timeout(upstream, sign_in_as, connector):
    _, token = sign_in_as("alice")
    upstream.state.add_fault("/api/v3/user", "timeout", delay=3)
    started = time.monotonic()
    with pytest.raises(UpstreamUnavailable):
        connector.refresh(token)
    assert time.monotonic() - started < 2.5  # gave up at the 1 s timeout, not after 3 s


def test_token_error_in_an_http_200_body_is_bad_credentials(upstream, connector):
    code, verifier = authorize(connector, "alice")
    upstream.state.add_fault("/login/oauth/access_token", "token_error")
    with pytest.raises(BadCredentials) as caught:
        connector.handle_callback(code=code, redirect_uri=REDIRECT_URI, code_verifier=verifier)
    assert "bad_verification_code" in caught.value.detail


@pytest.mark.parametrize(
    ("kind", "params"), [("server_error", {"status": 502}), ("timeout", {"delay": 3})]
)
def test_token_endpoint_outage_is_upstream_unavailable(upstream, connector, kind, params):
    code, verifier = authorize(connector, "alice")
    upstream.state.add_fault("/login/oauth/access_token", kind, **params)
    with pytest.raises(UpstreamUnavailable):
        connector.handle_callback(code=code, redirect_uri=REDIRECT_URI, code_verifier=verifier)


def test_wrong_pkce_verifier_is_refused_by_the_token_endpoint(connector):
    code, _ = authorize(connector, "alice")
    with pytest.raises(BadCredentials):
        connector.handle_callback(
            code=code, redirect_uri=REDIRECT_URI, code_verifier=secrets.token_urlsafe(48)
        )


def test_api_requests_send_github_media_type_and_api_version(upstream, sign_in_as):
    sign_in_as("alice")
    api = list(upstream.state.headers_seen)
    assert api, "the connector made no API call"
    for _, headers in api:
        lowered = {k.lower(): v for k, v in headers.items()}
        assert lowered.get("accept") == "application/vnd.github+json"
        assert lowered.get("x-github-api-version") == API_VERSION
        assert lowered.get("authorization", "").startswith("Bearer gho_")


# -- the HTTP client -------------------------------------------------------------------------


@pytest.fixture
def keepalive_upstream() -> Iterator[str]:
    """The development upstream behind a server that keeps connections alive, as GitHub
    does (the tests' Werkzeug server answers ``Connection: close``)."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "granian", "--interface", "wsgi", "--factory", "--workers", "1",
         "--blocking-threads", "2", "--host", "127.0.0.1", "--port", str(port),
         "--log-level", "warning", "sso.devupstream:create_upstream_app"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return requests.get(url + "/api/v3/", timeout=2).status_code < 500
        except requests.ConnectionError:
            return False

    try:
        wait_until(up, timeout=30)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(15)


def test_sign_ins_reuse_the_pooled_keep_alive_connections(keepalive_upstream):
    connector = GitHubConnector(GitHubConfig(
        client_id="keycard-dev", client_secret="keycard-dev-secret", web_url=keepalive_upstream,
        api_url=keepalive_upstream + "/api/v3", allowed_orgs=("acme",), timeout=5.0))

    def sign_in(login: str) -> Identity:
        code, verifier = authorize(connector, login)
        identity, _ = connector.handle_callback(code=code, redirect_uri=REDIRECT_URI,
                                                code_verifier=verifier)
        return identity

    assert sign_in("bob").login == "bob"
    token_pools, api_pools = connector._web_pool.pools, connector._api_pool.pools
    (token_key,), (api_key,) = token_pools.keys(), api_pools.keys()
    token_pool, api_pool = token_pools[token_key], api_pools[api_key]
    (token_conn,) = [c for c in token_pool.pool.queue if c is not None]  # idle, pooled
    (api_conn,) = [c for c in api_pool.pool.queue if c is not None]
    token_socket, api_socket = token_conn.sock, api_conn.sock
    assert token_socket is not None and api_socket is not None  # kept open
    assert sign_in("alice").login == "alice"
    # The token exchange did not close the shared adapter, and alice's calls went over the
    # very sockets bob's sign-in left open: no new connection per sign-in or per call.
    assert token_pools[token_key] is token_pool and token_conn.sock is token_socket
    assert api_pools[api_key] is api_pool and api_conn.sock is api_socket
    assert api_pool.num_connections == 1 and token_pool.num_connections == 1


def test_a_redirect_off_the_api_host_is_an_error_and_is_not_followed(upstream, sign_in_as):
    upstream.state.add_fault("/api/v3/user", "redirect")  # to https://elsewhere.example
    with pytest.raises(UpstreamError, match="redirect"):
        sign_in_as("bob")


def test_a_redirect_on_the_api_host_is_followed_like_a_renamed_org(upstream, sign_in_as):
    # Once: /user answers 301 to itself (as GitHub does for a renamed org or team).
    upstream.state.add_fault("/api/v3/user", "redirect", location=upstream.url + "/api/v3/user")
    identity, _ = sign_in_as("bob")
    assert identity.login == "bob"


def test_endless_redirects_on_the_api_host_end_in_an_error(upstream, sign_in_as):
    upstream.state.add_fault("/api/v3/user", "redirect", count=-1,
                             location=upstream.url + "/api/v3/user")
    try:
        with pytest.raises(UpstreamError, match="too many times"):
            sign_in_as("bob")
    finally:
        upstream.state.clear_faults()


def test_proxy_and_ca_bundle_are_read_from_the_environment_once_at_start(monkeypatch, tmp_path):
    bundle = tmp_path / "corp-ca.pem"
    bundle.write_text("")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.corp.test:3128")
    monkeypatch.setenv("NO_PROXY", "ghe.corp.test")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    for variable in ("https_proxy", "no_proxy", "ALL_PROXY", "all_proxy", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(variable, raising=False)

    def build(api_url: str) -> GitHubConnector:
        return GitHubConnector(GitHubConfig(
            client_id="x", client_secret="y", web_url="https://github.com", api_url=api_url))

    direct, proxied = build("https://ghe.corp.test/api/v3"), build("https://api.github.com")
    monkeypatch.setenv("HTTPS_PROXY", "http://changed.test:1")  # read at start, not per call
    # The token exchange goes to github.com, which NO_PROXY does not name: via the proxy.
    assert isinstance(direct._web_pool, urllib3.ProxyManager)
    assert direct._web_pool.proxy.host == "proxy.corp.test"
    assert direct._web_pool.connection_pool_kw["ca_certs"] == str(bundle)
    # NO_PROXY names the Enterprise API host: straight there; api.github.com: via the proxy.
    assert not isinstance(direct._api_pool, urllib3.ProxyManager)
    assert isinstance(proxied._api_pool, urllib3.ProxyManager)
    assert proxied._api_pool.proxy.host == "proxy.corp.test"
    assert proxied._api_pool.proxy_headers == {}
    assert direct._api_pool.connection_pool_kw["ca_certs"] == str(bundle)


def test_proxy_credentials_become_a_proxy_authorization_header(monkeypatch):
    for variable in ("https_proxy", "no_proxy", "NO_PROXY", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://svc%40corp:s3cret@proxy.corp.test:3128")
    connector = GitHubConnector(GitHubConfig(client_id="x", client_secret="y"))
    expected = "Basic " + base64.b64encode(b"svc@corp:s3cret").decode()
    assert connector._api_pool.proxy_headers == {"proxy-authorization": expected}


def test_an_unsupported_proxy_scheme_stops_start_up_with_a_clear_message(monkeypatch):
    for variable in ("https_proxy", "no_proxy", "NO_PROXY", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "socks5://proxy.corp.test:1080")
    with pytest.raises(ConfigError, match="http:// or https://"):
        GitHubConnector(GitHubConfig(client_id="x", client_secret="y"))
