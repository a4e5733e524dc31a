"""The everyday ``/auth/verify`` answered without Flask (sso.forward_auth.LeanVerify, issue
#15) answers exactly as the view does, and hands everything else to the view unchanged.

Each comparison sends the same request once through the lean layer and once with it
switched off, and compares status, headers and the assertion's header and claims (all
but its ``iat`` and ``exp``)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from sso.forward_auth import LeanVerify
from sso.storage import StorageUnavailable
from tests.support import (
    RP_CALLBACK,
    jwt_parts,
    obtain_tokens,
    sign_in,
    spy_on_layer,
    with_layer_off,
)

APP_HOST = "app.acme.test"
PER_RESPONSE = {"Date", "X-Request-Id", "Server"}


@pytest.fixture
def keycard(make_keycard: Callable[..., Any]) -> Any:
    return make_keycard(SSO_FORWARD_AUTH_DOMAINS="acme.test")


@dataclass
class Lean:
    layer: LeanVerify
    reached: int = 0  # checks that went on to the view

    def both_ways(self, send: Callable[[], requests.Response]
                  ) -> tuple[requests.Response, requests.Response]:
        """(lean answer, view answer); ``reached`` then says whether the first went on
        to the view."""
        self.reached = 0
        return send(), with_layer_off(self.layer, send)


@pytest.fixture
def lean(keycard: Any) -> Iterator[Lean]:
    spy: list[Lean] = []

    def reached(environ: dict[str, Any]) -> None:
        spy[0].reached += 1

    layer, restore = spy_on_layer(keycard.app, LeanVerify, ("/auth/verify",), reached)
    spy.append(Lean(layer))
    yield spy[0]
    restore()


def verify(http: requests.Session, keycard: Any, query: str = "", *,
           headers: dict[str, str] | None = None, method: str = "GET") -> requests.Response:
    sent = {"X-Forwarded-Host": APP_HOST, "X-Forwarded-Proto": "https",
            "X-Forwarded-Uri": "/reports?q=1", **(headers or {})}
    return http.request(method, f"{keycard.url}/auth/verify{query}", headers=sent,
                        allow_redirects=False, timeout=10)


def assert_same_answer(lean: requests.Response, full: requests.Response) -> None:
    assert lean.status_code == full.status_code, (lean.text, full.text)
    a = {k: v for k, v in lean.headers.items() if k not in PER_RESPONSE}
    b = {k: v for k, v in full.headers.items() if k not in PER_RESPONSE}
    assert list(a) == list(b)  # the same headers, in the same order
    for name in a:
        if name == "X-Auth-Request-Assertion":
            (ha, ca), (hb, cb) = jwt_parts(a[name]), jwt_parts(b[name])
            assert ha == hb
            assert {k: v for k, v in ca.items() if k not in ("iat", "exp")} == {
                k: v for k, v in cb.items() if k not in ("iat", "exp")}
        else:
            assert a[name] == b[name], name
    assert lean.content == full.content


@pytest.fixture
def token(keycard: Any, http: requests.Session) -> str:
    """bob's access token addressed to the app (RFC 8707)."""
    client, secret = keycard.services.clients.create(
        name="CLI", redirect_uris=[RP_CALLBACK], trusted=True, audiences=[f"https://{APP_HOST}"])
    sign_in(http, keycard.url, "bob")
    tokens = obtain_tokens(http, keycard.url, client.client_id, secret,
                           resource=f"https://{APP_HOST}")
    return str(tokens["access_token"])


@pytest.mark.parametrize("query", [
    "", f"?aud=https://{APP_HOST}", "?allowed_roles=admin,auditor", "?aud=https://wiki.acme.test"
        "&allowed_roles=admin"], ids=["plain", "aud", "roles", "aud-and-roles"])
@pytest.mark.parametrize("login", ["alice", "carol"])  # an admin; no verified email
def test_a_session_check_is_answered_here_as_the_view_answers(keycard, lean, http, query,
                                                              login):
    sign_in(http, keycard.url, login)
    by_lean, by_view = lean.both_ways(lambda: verify(http, keycard, query))
    expected = 403 if "roles" in query and login == "carol" else 200
    assert by_lean.status_code == expected, by_lean.text
    assert lean.reached == (0 if expected == 200 else 1)
    assert_same_answer(by_lean, by_view)


@pytest.mark.parametrize("method", ["HEAD", "POST", "OPTIONS", "DELETE"])
def test_every_method_a_proxy_forwards_is_answered_here_alike(keycard, lean, http, method):
    sign_in(http, keycard.url, "bob")
    by_lean, by_view = lean.both_ways(lambda: verify(http, keycard, method=method))
    assert by_lean.status_code == 200 and lean.reached == 0
    assert_same_answer(by_lean, by_view)


@pytest.mark.parametrize("headers", [
    {}, {"X-Forwarded-Host": "APP.acme.test:8443"}, {"X-Forwarded-Host": ""}],
    ids=["forwarded", "port-and-case", "no-forwarded-host"])
def test_a_bearer_check_is_answered_here_as_the_view_answers(keycard, lean, token, headers):
    sent = {"Authorization": f"Bearer {token}", **headers}
    by_lean, by_view = lean.both_ways(lambda: verify(requests.Session(), keycard,
                                                     headers=sent))
    # Without X-Forwarded-Host the check is about Keycard's own host: not the token's app.
    expected = 401 if headers.get("X-Forwarded-Host") == "" else 200
    assert by_lean.status_code == expected, by_lean.text
    assert lean.reached == (0 if expected == 200 else 1)
    assert_same_answer(by_lean, by_view)


def test_everything_else_goes_to_the_view_unchanged(keycard, lean, http, token):
    anonymous = requests.Session()
    cases: list[tuple[requests.Session, str, dict[str, str], int]] = [
        (anonymous, "", {}, 401),  # nobody signed in
        (anonymous, "?redirect=1", {"Accept": "text/html"}, 302),  # to sign-in
        (anonymous, "", {"Authorization": "Bearer not-a-token"}, 401),
        (anonymous, "", {"Authorization": "Basic Ym9iOnB3"}, 401),
        (anonymous, "?aud=ftp://app.acme.test", {"Authorization": f"Bearer {token}"}, 400),
        (anonymous, "?aud=https://other.acme.test", {"Authorization": f"Bearer {token}"}, 401),
        (http, "?allowed_roles=admin", {}, 403),  # bob is no admin
        (http, "?aud=https://app.acme.test&aud=https://x.acme.test", {}, 200),  # repeated
        (http, "?other=1", {}, 200),  # a parameter this layer does not know
        (anonymous, "", {"Cookie": "keycard_session=" + "x" * 200}, 401),
        (anonymous, "", {"Cookie": "keycard_session=unknown-session"}, 401),
        (http, "", {"X-Method": "PROPFIND"}, 405),  # not a method a proxy forwards
    ]
    for browser, query, headers, status in cases:
        method = headers.pop("X-Method", "GET")
        by_lean, by_view = lean.both_ways(lambda b=browser, q=query, h=headers, m=method: verify(
            b, keycard, q, headers=h, method=m))
        assert lean.reached == 1, (query, headers)
        assert by_lean.status_code == status, (query, headers, by_lean.text)
        assert_same_answer(by_lean, by_view)


def test_a_stale_profile_goes_to_the_view_which_rechecks_upstream(keycard, lean, http, rdb):
    sign_in(http, keycard.url, "bob")
    key = keycard.services.sessions.key(http.cookies.get("keycard_session"))
    fields = rdb.get(key).split("\x1f")
    profile = json.loads(fields[6])
    profile["checked_at"] = 0  # last confirmed upstream long ago
    fields[6] = json.dumps(profile)
    rdb.set(key, "\x1f".join(fields), keepttl=True)
    answer = verify(http, keycard)
    assert answer.status_code == 200 and lean.reached == 1
    fresh = json.loads(rdb.get(key).split("\x1f")[6])
    assert fresh["checked_at"] > 0  # the view re-checked and wrote the new snapshot


def test_an_outage_goes_to_the_view_which_answers_503(keycard, lean, http, monkeypatch):
    sign_in(http, keycard.url, "bob")

    def down(*args: Any) -> None:
        raise StorageUnavailable("connection refused")

    monkeypatch.setattr(keycard.services.sessions, "load", down)
    answer = verify(http, keycard)
    assert answer.status_code == 503 and lean.reached == 1


def test_lean_answers_are_counted_under_the_verify_route(keycard, lean, http):
    from prometheus_client import REGISTRY

    sign_in(http, keycard.url, "bob")
    labels = {"method": "GET", "route": "/auth/verify", "status": "200"}

    def count() -> float:
        return REGISTRY.get_sample_value("keycard_http_requests_total", labels) or 0.0

    before = count()
    assert verify(http, keycard).status_code == 200 and lean.reached == 0
    assert count() == before + 1
