"""Shared pieces for the OpenID provider tests: registered clients, the authorization
request, following the browser until it is sent back to the client, and the calls a
relying party makes to the token, userinfo, introspection and revocation endpoints.

Everything goes over HTTP to the real Keycard, the development upstream and Redis; the
client's callback (``CB``) is never contacted: we read ``Location`` headers instead.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import pytest
import requests

from sso.oidc.client_registry import ClientRegistry
from sso.oidc.clients import Client
from tests.support import form_with, pick_upstream_user, sign_in

CB = "http://127.0.0.1:9/cb"
DEFAULT_SCOPE = "openid profile email groups roles offline_access"


def s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def new_verifier() -> str:
    return secrets.token_urlsafe(48)  # 64 characters, within RFC 7636's 43..128


@dataclass
class RP:
    """A registered relying party as the tests drive it."""

    client: Client
    secret: str | None
    issuer: str  # Keycard's base URL (the issuer, in these tests)

    @property
    def client_id(self) -> str:
        return self.client.client_id

    @property
    def redirect_uri(self) -> str:
        return self.client.redirect_uris[0]

    def auth(self) -> tuple[str, str] | None:
        return None if self.secret is None else (self.client_id, self.secret)

    def post(self, path: str, data: dict[str, Any], *, auth: Any = "client",
             **kwargs: Any) -> requests.Response:
        """POST to a Keycard endpoint, authenticated as this client (Basic for a
        confidential client, ``client_id`` in the body for a public one) unless
        ``auth`` says otherwise (``None``: no client authentication at all)."""
        body = dict(data)
        if auth == "client":
            auth = self.auth()
            if auth is None:
                body.setdefault("client_id", self.client_id)
        return requests.post(self.issuer + path, data=body, auth=auth, timeout=10, **kwargs)


@pytest.fixture
def registry(keycard: Any) -> ClientRegistry:
    found: ClientRegistry = keycard.services.clients
    return found


@pytest.fixture
def make_client(keycard: Any, registry: ClientRegistry) -> Callable[..., RP]:
    """Register a client; defaults: confidential, trusted (no consent page), redirect ``CB``."""

    def factory(**fields: Any) -> RP:
        fields.setdefault("name", "Test app")
        fields.setdefault("redirect_uris", [CB])
        fields.setdefault("trusted", True)
        client, secret = registry.create(**fields)
        return RP(client, secret, keycard.url)

    return factory


@pytest.fixture
def bob(keycard: Any, http: requests.Session) -> requests.Session:
    """A browser signed in as bob, the ordinary employee most tests act as."""
    sign_in(http, keycard.url, "bob")
    return http


@pytest.fixture
def discovery(keycard: Any) -> dict[str, Any]:
    response = requests.get(keycard.url + "/.well-known/openid-configuration", timeout=10)
    assert response.status_code == 200
    found: dict[str, Any] = response.json()
    return found


# -- the authorization request --------------------------------------------------------------


def authorize(http: requests.Session, rp: RP, *, method: str = "GET", pkce: bool = True,
              **params: Any) -> requests.Response:
    """Send an authorization request (no redirects followed).

    Defaults: ``response_type=code``, the client's first redirect URI, ``scope=openid``,
    a random ``state`` and, when ``pkce``, an S256 challenge. A parameter given as
    ``None`` is left out; a list is sent repeated. The response carries what was sent
    (``response.sent``) and the PKCE verifier (``response.code_verifier``).
    """
    verifier = new_verifier() if pkce else None
    query: dict[str, Any] = {
        "response_type": "code",
        "client_id": rp.client_id,
        "redirect_uri": rp.redirect_uri,
        "scope": "openid",
        "state": secrets.token_urlsafe(12),
    }
    if verifier is not None:
        query.update(code_challenge=s256(verifier), code_challenge_method="S256")
    query.update(params)
    query = {k: v for k, v in query.items() if v is not None}
    url = rp.issuer + "/authorize"
    if method == "GET":
        response = http.get(url, params=query, allow_redirects=False, timeout=10)
    else:
        response = http.post(url, data=query, allow_redirects=False, timeout=10)
    response.sent = query  # type: ignore[attr-defined]
    response.code_verifier = verifier  # type: ignore[attr-defined]
    return response


def query_of(location: str) -> dict[str, str]:
    """The query of a redirect, refusing repeated parameters."""
    parsed = parse_qs(urlsplit(location).query, keep_blank_values=True)
    assert all(len(v) == 1 for v in parsed.values()), location
    return {k: v[0] for k, v in parsed.items()}


def sent_back(response: requests.Response, redirect_uri: str = CB) -> dict[str, str]:
    """Assert the response sends the browser back to the client; return the query."""
    assert response.status_code in (302, 303), (response.status_code, response.text[:300])
    location = response.headers["Location"]
    assert location.split("?", 1)[0] == redirect_uri, location
    return query_of(location)


def code_from(location: str) -> str:
    params = query_of(location)
    assert "code" in params, location
    return params["code"]


def follow(http: requests.Session, response: requests.Response,
           redirect_uri: str = CB) -> requests.Response:
    """Follow Keycard's own redirects until one leaves for the client (or a page shows)."""
    hops = 0
    while response.is_redirect and not response.headers["Location"].startswith(redirect_uri):
        hops += 1
        assert hops < 10, "redirect loop"
        response = http.get(urljoin(response.url, response.headers["Location"]),
                            allow_redirects=False, timeout=10)
    return response


def through_upstream(http: requests.Session, response: requests.Response, login: str,
                     redirect_uri: str = CB) -> requests.Response:
    """An authorization request that sent the browser to sign in: follow it to the
    upstream's page, pick ``login``, and come back until Keycard answers the client."""
    assert response.is_redirect, (response.status_code, response.text[:300])
    page = http.get(urljoin(response.url, response.headers["Location"]), timeout=10)
    assert "/login/oauth/authorize" in page.url, page.url
    back = pick_upstream_user(http, page, login, allow_redirects=False)
    return follow(http, back, redirect_uri)


def approve(http: requests.Session, page: requests.Response,
            decision: str = "approve") -> requests.Response:
    """Press Allow (or Deny) on the consent page."""
    form = form_with(page.text, "/authorize/decision")
    data = dict(form.fields, decision=decision)
    return http.post(urljoin(page.url, form.action), data=data, allow_redirects=False,
                     timeout=10)


# -- the relying party's back-channel calls -------------------------------------------------


def redeem(rp: RP, code: str, verifier: str | None = None, *, redirect_uri: str | None = None,
           auth: Any = "client", **extra: Any) -> requests.Response:
    data = {"grant_type": "authorization_code", "code": code,
            "redirect_uri": redirect_uri or rp.redirect_uri, **extra}
    if verifier is not None:
        data["code_verifier"] = verifier
    return rp.post("/token", data, auth=auth)


def refresh(rp: RP, refresh_token: str, *, auth: Any = "client",
            **extra: Any) -> requests.Response:
    return rp.post("/token", {"grant_type": "refresh_token", "refresh_token": refresh_token,
                              **extra}, auth=auth)


def introspect(rp: RP, token: str, *, auth: Any = "client", **extra: Any) -> requests.Response:
    return rp.post("/introspect", {"token": token, **extra}, auth=auth)


def revoke(rp: RP, token: str, *, auth: Any = "client", **extra: Any) -> requests.Response:
    return rp.post("/revoke", {"token": token, **extra}, auth=auth)


def active(rp: RP, token: str) -> bool:
    response = introspect(rp, token)
    assert response.status_code == 200, response.text
    return bool(response.json()["active"])


def userinfo(rp: RP, access_token: str, method: str = "GET") -> requests.Response:
    return requests.request(method, rp.issuer + "/userinfo",
                            headers={"Authorization": f"Bearer {access_token}"}, timeout=10)


def get_code(http: requests.Session, rp: RP, login: str | None = "bob",
             **params: Any) -> tuple[str, str | None]:
    """The browser part of the code flow; returns (code, PKCE verifier). Signs ``login``
    in on the upstream first when the browser has no session."""
    first = authorize(http, rp, **params)
    response = first
    if login is not None and response.is_redirect and urlsplit(
            response.headers["Location"]).path == "/login/oauth/authorize":  # to sign in
        response = through_upstream(http, response, login, rp.redirect_uri)
    response = follow(http, response, rp.redirect_uri)
    query = sent_back(response, rp.redirect_uri)
    assert "code" in query, query
    return query["code"], first.code_verifier  # type: ignore[attr-defined]


def tokens_for(http: requests.Session, rp: RP, login: str | None = "bob",
               **params: Any) -> dict[str, Any]:
    """The whole code flow for ``login`` (default scope: all of them); the token response."""
    params.setdefault("scope", DEFAULT_SCOPE)
    code, verifier = get_code(http, rp, login, **params)
    answer = redeem(rp, code, verifier)
    assert answer.status_code == 200, answer.text
    tokens: dict[str, Any] = answer.json()
    return tokens
