"""The lean path (sso/oidc/lean.py, issue #15) answers ordinary token and introspection
requests exactly as the full Flask/Authlib path does, and hands every other request to it
unchanged.

Each comparison sends the same kind of request once through the lean layer and once with
it switched off, and compares status, headers, body fields and the access token's header
and claims (all but the per-token ``iat``, ``exp`` and ``jti``)."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
from prometheus_client import REGISTRY

from sso.crypto import hash_secret
from sso.oidc.lean import LeanEndpoints
from sso.storage import StorageUnavailable
from tests.oidc.conftest import RP, active, get_code, redeem, refresh, tokens_for
from tests.support import jwt_parts, redis_commands_during, spy_on_layer, with_layer_off

API = "https://deploy-api.acme.test"
PER_TOKEN = {"iat", "exp", "jti", "at_hash"}
PER_RESPONSE = {"Date", "Content-Length", "X-Request-Id", "Server"}


@dataclass
class Lean:
    layer: LeanEndpoints
    reached: list[str] = field(default_factory=list)  # bodies that went the full way

    def both_ways(self, send: Callable[[], requests.Response]
                  ) -> tuple[requests.Response, requests.Response]:
        """(lean answer, full answer) of two calls of ``send``."""
        self.reached.clear()
        return send(), with_layer_off(self.layer, send)

    def each_way(self, via_lean: Callable[[], requests.Response],
                 via_full: Callable[[], requests.Response],
                 between: Callable[[], None] = lambda: None
                 ) -> tuple[requests.Response, requests.Response]:
        """One call that the lean path must answer itself, then ``between``, then another
        call the full way (for requests that each spend their own code or token)."""
        self.reached.clear()
        lean = via_lean()
        assert self.reached == [], "the lean path handed this request on"
        between()
        return lean, with_layer_off(self.layer, via_full)


@pytest.fixture
def lean(keycard: Any) -> Iterator[Lean]:
    spy: list[Lean] = []

    def reached(environ: dict[str, Any]) -> None:
        stream = environ["wsgi.input"]  # the lean layer's copy, or the server's stream
        body = stream.getvalue() if hasattr(stream, "getvalue") else b"(unread)"
        spy[0].reached.append(body.decode("latin-1"))

    layer, restore = spy_on_layer(keycard.app, LeanEndpoints, ("/token", "/introspect"),
                                  reached)
    spy.append(Lean(layer))
    yield spy[0]
    restore()


def assert_same_answer(lean: requests.Response, full: requests.Response) -> None:
    assert lean.status_code == full.status_code, (lean.text, full.text)
    lean_headers = {k: v for k, v in lean.headers.items() if k not in PER_RESPONSE}
    full_headers = {k: v for k, v in full.headers.items() if k not in PER_RESPONSE}
    assert lean_headers == full_headers
    a, b = lean.json(), full.json()
    assert list(a) == list(b)  # the same fields, in the same order
    for name in a:
        if name in ("access_token", "id_token"):
            (ha, ca), (hb, cb) = jwt_parts(a[name]), jwt_parts(b[name])
            assert ha == hb
            assert {k: v for k, v in ca.items() if k not in PER_TOKEN} == {
                k: v for k, v in cb.items() if k not in PER_TOKEN}
            assert list(ca) == list(cb)
            if name == "access_token":  # grant-bound or not, alike
                assert ("." in ca["jti"]) == ("." in cb["jti"])
        elif name != "refresh_token":
            assert a[name] == b[name], name


@pytest.fixture
def service(keycard: Any) -> tuple[Any, str]:
    found: tuple[Any, str] = keycard.services.clients.create(
        name="Deploy bot", grant_types=["client_credentials"], scopes=["roles", "groups"],
        roles=["deployer"], audiences=[API, "https://other.acme.test"], id_token_alg="ES256")
    return found


def token(keycard: Any, data: dict[str, str], **kwargs: Any) -> requests.Response:
    return requests.post(keycard.url + "/token", data=data, timeout=10, **kwargs)


@pytest.mark.parametrize("body", [
    {},
    {"scope": "roles"},
    {"scope": "roles groups", "resource": API},
    {"resource": [API, "https://other.acme.test"]},
], ids=["bare", "scope", "scope-and-resource", "two-resources"])
@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
def test_client_credentials_answered_here_as_the_full_path_answers(keycard, service, lean,
                                                                   body, method):
    client, secret = service
    data: dict[str, Any] = {"grant_type": "client_credentials", **body}
    auth: Any = (client.client_id, secret)
    if method == "client_secret_post":
        data |= {"client_id": client.client_id, "client_secret": secret}
        auth = None
    answers = lean.both_ways(lambda: token(keycard, data, auth=auth))
    assert answers[0].status_code == 200, answers[0].text
    assert lean.reached == []  # the lean layer answered it, Flask never saw it
    assert_same_answer(*answers)
    assert active(RP(client, secret, keycard.url), answers[0].json()["access_token"])


def chain(rp: RP, first: str) -> Callable[[], requests.Response]:
    """A send() that refreshes along one rotation chain."""
    holder = {"rt": first}

    def send() -> requests.Response:
        answer = refresh(rp, holder["rt"])
        if answer.status_code == 200:
            holder["rt"] = answer.json().get("refresh_token", holder["rt"])
        return answer

    return send


def test_refresh_answered_here_as_the_full_path_answers_and_reuse_still_kills_the_family(
        bob, make_client, lean, keycard):
    rp = make_client(name="Lean app", id_token_alg="ES256")
    first = tokens_for(bob, rp, scope="openid profile email groups roles offline_access")
    by_lean, by_full = lean.both_ways(chain(rp, first["refresh_token"]))
    assert by_lean.status_code == 200 and lean.reached == []
    assert_same_answer(by_lean, by_full)
    grant = jwt_parts(first["access_token"])[1]["jti"].split(".")[0]
    for answer in (by_lean, by_full):  # the same grant: its revocation reaches them
        assert jwt_parts(answer.json()["access_token"])[1]["jti"].startswith(grant + ".")
    assert active(rp, by_full.json()["refresh_token"])

    # The token the lean path rotated away is reused: the full path revokes the family.
    reused = refresh(rp, first["refresh_token"])
    assert reused.status_code == 400 and reused.json()["error"] == "invalid_grant"
    assert len(lean.reached) == 1
    assert not active(rp, by_full.json()["refresh_token"])
    assert not active(rp, by_full.json()["access_token"])


def test_public_client_refreshes_here_with_its_client_id(bob, make_client, lean):
    rp = make_client(name="CLI", public=True)
    first = tokens_for(bob, rp, scope="openid offline_access")
    by_lean, by_full = lean.both_ways(chain(rp, first["refresh_token"]))
    assert by_lean.status_code == 200 and lean.reached == []
    assert_same_answer(by_lean, by_full)


def test_refresh_without_offline_access_in_the_grant_issues_no_new_refresh_token(
        bob, make_client, lean, keycard):
    """A grant whose scope lost offline_access (the client no longer registers it): the
    token is still rotated away, and no new one is issued, as on the full path."""
    rp = make_client(name="Shrinking app")
    first = tokens_for(bob, rp, scope="openid profile offline_access")
    second = tokens_for(bob, rp, scope="openid profile offline_access")
    keycard.services.clients.update(rp.client_id, scopes=["openid", "profile"])
    keycard.services.clients.clear_cache()
    by_lean, by_full = lean.each_way(lambda: refresh(rp, first["refresh_token"]),
                                     lambda: refresh(rp, second["refresh_token"]))
    assert by_lean.status_code == 200 and "refresh_token" not in by_lean.json()
    assert by_lean.json()["scope"] == "openid profile"
    assert_same_answer(by_lean, by_full)


def test_refresh_of_an_ended_grant_is_refused_here_in_the_full_paths_words(
        bob, make_client, lean, keycard, rdb):
    rp = make_client(name="Ended app")
    tokens = [tokens_for(bob, rp, scope="openid offline_access") for _ in range(2)]
    records = keycard.services.records
    for t in tokens:
        records.revoke_grant(jwt_parts(t["access_token"])[1]["jti"].split(".")[0])
    pattern = keycard.services.store.keys.refresh_token("*")

    def stored() -> int:
        return sum(1 for _ in rdb.scan_iter(match=pattern))

    before = stored()
    def gone_again() -> None:  # the rotated token written beside the reads
        assert stored() == before

    # Claimed here, so answered here.
    by_lean, by_full = lean.each_way(lambda: refresh(rp, tokens[0]["refresh_token"]),
                                     lambda: refresh(rp, tokens[1]["refresh_token"]),
                                     between=gone_again)
    assert by_lean.status_code == 400
    assert by_lean.json() == by_full.json() == {
        "error": "invalid_grant",
        "error_description": "The grant behind this refresh token has ended."}
    assert_same_answer(by_lean, by_full)


def test_refresh_for_someone_whose_access_ended_is_refused_here_in_the_same_words(
        bob, make_client, lean, keycard, rdb):
    rp = make_client(name="Forgotten app")
    tokens = [tokens_for(bob, rp, scope="openid offline_access") for _ in range(2)]
    user_id = keycard.services.accounts.find_by_login("bob").user_id
    rdb.hdel(keycard.services.store.keys.user(user_id), "profile")  # forgotten since
    by_lean, by_full = lean.each_way(lambda: refresh(rp, tokens[0]["refresh_token"]),
                                     lambda: refresh(rp, tokens[1]["refresh_token"]))
    assert by_lean.json() == by_full.json() == {
        "error": "invalid_grant", "error_description": "Your access has ended; sign in again."}
    assert_same_answer(by_lean, by_full)


@pytest.mark.parametrize("failing", ["roles", "second round trip"])
def test_an_outage_after_the_claim_is_a_503_and_the_token_stays_spent(
        bob, make_client, lean, keycard, monkeypatch, failing):
    rp = make_client(name="Outage app", scopes=["openid", "profile", "offline_access"])
    first = tokens_for(bob, rp, scope="openid profile offline_access")

    def down(*args: Any) -> None:
        raise StorageUnavailable("connection refused")

    if failing == "roles":  # the claim's round trip read the grant and profile
        monkeypatch.setattr(lean.layer.provider.accounts, "with_roles", down)
    else:  # a scope no longer all allowed: the claim script leaves the reads to a second trip
        keycard.services.clients.update(rp.client.client_id, scopes=["openid", "offline_access"])
        monkeypatch.setattr(lean.layer.records, "grant_and_profile", down)
    answer = refresh(rp, first["refresh_token"])
    assert answer.status_code == 503, answer.text
    assert answer.json()["error"] == "temporarily_unavailable"
    assert answer.headers["Retry-After"] == "5" and answer.headers["Cache-Control"] == "no-store"
    monkeypatch.undo()
    # Claimed before the outage: using it again is reuse, and ends the family (fail closed).
    again = refresh(rp, first["refresh_token"])
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    assert not active(rp, first["access_token"])


def basic(client_id: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


def test_everything_else_goes_the_full_way_unchanged(bob, make_client, lean, keycard,
                                                     service):
    client, secret = service
    rp = make_client(name="Other app")
    public = make_client(name="Public app", public=True)
    third = make_client(name="Third app")
    rt = tokens_for(bob, rp, scope="openid offline_access")["refresh_token"]
    cc = "grant_type=client_credentials"
    cases: list[tuple[str, dict[str, str], str, int]] = [
        # (body, headers, why the lean path leaves it alone, the full path's status)
        (cc, {"Authorization": basic(client.client_id, "wrong")}, "wrong secret", 401),
        (cc + "&scope=email", {"Authorization": basic(client.client_id, secret)},
         "scope not registered", 400),
        (cc + "&resource=https://payroll.acme.test",
         {"Authorization": basic(client.client_id, secret)}, "resource not registered", 400),
        (cc + f"&client_id={public.client_id}", {}, "a public client", 401),
        (cc + "&grant_type=client_credentials",
         {"Authorization": basic(client.client_id, secret)}, "a repeated parameter", 400),
        (cc + "&scope=", {"Authorization": basic(client.client_id, secret)}, "empty value",
         200),
        (cc + "&foo=bar", {"Authorization": basic(client.client_id, secret)},
         "unknown parameter", 200),
        (cc + f"&client_secret={secret}", {"Authorization": basic(client.client_id, secret)},
         "two authentication methods", 400),
        (cc, {"Authorization": "Basic %%%"}, "malformed Basic", 401),
        (cc, {"Authorization": f"Bearer {secret}"}, "not Basic", 401),
        (cc, {}, "no client authentication", 401),
        ("grant_type=refresh_token&refresh_token=" + rt + "&scope=openid+email",
         {"Authorization": basic(rp.client_id, rp.secret or "")}, "a scope on a refresh", 400),
        ("grant_type=refresh_token&refresh_token=" + rt,
         {"Authorization": basic(third.client_id, third.secret or "")},
         "another client's token", 400),
        ("grant_type=refresh_token&refresh_token=unknown",
         {"Authorization": basic(rp.client_id, rp.secret or "")}, "an unknown token", 400),
        ("grant_type=password&username=a&password=b",
         {"Authorization": basic(rp.client_id, rp.secret or "")}, "another grant", 400),
    ]
    for body, headers, why, status in cases:
        headers = {"Content-Type": "application/x-www-form-urlencoded", **headers}
        answers = lean.both_ways(lambda body=body, headers=headers: requests.post(
            keycard.url + "/token", data=body, headers=headers, timeout=10))
        assert lean.reached == [body], why
        assert answers[0].status_code == status, (why, answers[0].text)
        assert_same_answer(*answers)
    # A query string, a body that is not UTF-8, a multipart body: Flask parses those.
    for send in (
        lambda: token(keycard, {"grant_type": "client_credentials"}, params={"x": "1"},
                      auth=(client.client_id, secret)),
        lambda: requests.post(keycard.url + "/token", data=b"grant_type=\xff", timeout=10,
                              headers={"Content-Type": "application/x-www-form-urlencoded"}),
        lambda: requests.post(keycard.url + "/token", timeout=10,
                              data=b"grant_type=client_credentials&scope=%FF",
                              headers={"Content-Type": "application/x-www-form-urlencoded"},
                              auth=(client.client_id, secret)),
        lambda: token(keycard, {"grant_type": "client_credentials"},
                      files={"f": ("a", b"b")}, auth=(client.client_id, secret)),
    ):
        lean.reached.clear()
        answer = send()
        assert answer.status_code < 500 and lean.reached, answer.text
    # The refresh token nobody could use here was not spent by the refusals.
    assert refresh(rp, rt).status_code == 200


def test_lean_answers_are_counted_under_the_token_route(keycard, service, lean):
    client, secret = service

    def count() -> float:
        return REGISTRY.get_sample_value("keycard_http_requests_total", {
            "route": "/token", "method": "POST", "status": "200"}) or 0.0

    before = count()
    answer = token(keycard, {"grant_type": "client_credentials"},
                   auth=(client.client_id, secret))
    assert answer.status_code == 200 and lean.reached == []
    assert count() == before + 1


def test_a_refresh_token_stored_before_records_named_their_person_still_refreshes(
        bob, make_client, lean, keycard, rdb):
    """Records written before 2026-11-28 carry no ``u``: the grant is read first."""
    rp = make_client(name="Old app")
    tokens = [tokens_for(bob, rp, scope="openid offline_access") for _ in range(2)]
    for t in tokens:
        key = keycard.services.store.keys.refresh_token(hash_secret(t["refresh_token"]))
        record = json.loads(rdb.get(key))
        assert record.pop("u") == keycard.services.accounts.find_by_login("bob").user_id
        rdb.set(key, json.dumps(record), keepttl=True)
    by_lean, by_full = lean.each_way(lambda: refresh(rp, tokens[0]["refresh_token"]),
                                     lambda: refresh(rp, tokens[1]["refresh_token"]))
    assert by_lean.status_code == 200
    assert_same_answer(by_lean, by_full)
    for answer in (by_lean, by_full):  # the rotated tokens name their person again
        assert active(rp, answer.json()["refresh_token"])
        assert refresh(rp, answer.json()["refresh_token"]).status_code == 200


def two_codes(http: requests.Session, rp: RP, **params: Any) -> list[tuple[str, str | None]]:
    return [get_code(http, rp, **params) for _ in range(2)]


def exchange_both_ways(lean: Lean, rp: RP, codes: list[tuple[str, str | None]],
                       **extra: Any) -> tuple[requests.Response, requests.Response]:
    pending = iter(codes)
    rest = {k: v for k, v in extra.items() if k != "verifier"}

    def send() -> requests.Response:
        code, verifier = next(pending)
        return redeem(rp, code, extra.get("verifier", verifier), **rest)

    return lean.both_ways(send)


@pytest.mark.parametrize("params", [
    {"scope": "openid profile email groups roles offline_access", "nonce": "n-0S6_WzA2Mj"},
    {"scope": "openid"},
    {"scope": "profile offline_access"},
], ids=["everything", "openid-only", "no-openid"])
@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_code_exchange_answered_here_as_the_full_path_answers(bob, make_client, lean, params,
                                                              alg):
    rp = make_client(name="Code app", id_token_alg=alg)
    by_lean, by_full = exchange_both_ways(lean, rp, two_codes(bob, rp, **params))
    assert by_lean.status_code == 200, by_lean.text
    assert lean.reached == []
    assert_same_answer(by_lean, by_full)
    assert ("id_token" in by_lean.json()) == ("openid" in params["scope"].split())
    tokens = by_lean.json()
    if "id_token" in tokens:
        header, claims = jwt_parts(tokens["id_token"])
        assert header["alg"] == alg and claims.get("nonce") == params.get("nonce")
    if "offline_access" in params["scope"]:  # its first refresh token works, here too
        assert refresh(rp, tokens["refresh_token"]).status_code == 200


def test_a_public_client_exchanges_here_with_pkce(bob, make_client, lean):
    rp = make_client(name="Public code app", public=True)
    by_lean, by_full = exchange_both_ways(lean, rp, two_codes(bob, rp, scope="openid"))
    assert by_lean.status_code == 200 and lean.reached == []
    assert_same_answer(by_lean, by_full)


@pytest.mark.parametrize("case", [
    "redirect_uri", "verifier", "no-verifier-public", "another-client", "signed-out"])
def test_refusals_after_the_code_is_spent_are_the_full_paths(bob, make_client, lean, keycard,
                                                            case):
    rp = make_client(name="Refusing app", redirect_uris=["http://127.0.0.1:9/cb",
                                                         "http://127.0.0.1:9/other"])
    extra: dict[str, Any] = {}
    if case == "redirect_uri":
        extra["redirect_uri"] = "http://127.0.0.1:9/other"
    elif case == "verifier":
        extra["verifier"] = "x" * 43
    elif case == "no-verifier-public":
        rp = make_client(name="Refusing public app", public=True)
        extra["verifier"] = None
    codes = two_codes(bob, rp, scope="openid")
    if case == "another-client":
        thief = make_client(name="Thief app")
        rp = RP(thief.client, thief.secret, rp.issuer)
    if case == "signed-out":
        keycard.services.sessions.end_user_sessions(
            keycard.services.accounts.find_by_login("bob").user_id)
    by_lean, by_full = exchange_both_ways(lean, rp, codes, **extra)
    assert lean.reached == [], case  # the code was spent here, so answered here
    assert by_lean.status_code == 400, by_lean.text
    assert_same_answer(by_lean, by_full)
    expected = {"redirect_uri": "Invalid 'redirect_uri' in request.",
                "verifier": "Code challenge failed.",
                "no-verifier-public": "Missing 'code_verifier'",
                "another-client": "Invalid 'code' in request.",
                "signed-out": "There is no 'user' for this code."}[case]
    assert by_lean.json()["error_description"] == expected


def test_a_replayed_code_goes_the_full_way_and_revokes_what_it_gave(bob, make_client, lean):
    rp = make_client(name="Replay app")
    code, verifier = get_code(bob, rp, scope="openid offline_access")
    first = redeem(rp, code, verifier)
    assert first.status_code == 200 and lean.reached == []
    again = redeem(rp, code, verifier)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    assert len(lean.reached) == 1  # declined here: the full path revokes and audits
    assert not active(rp, first.json()["access_token"])
    assert not active(rp, first.json()["refresh_token"])


def test_introspection_answered_here_as_the_full_path_answers(bob, make_client, lean, keycard,
                                                              service):
    client, secret = service
    rp = make_client(name="Introspected app", audiences=[API])
    other = make_client(name="Other introspector")
    user = tokens_for(bob, rp, scope="openid profile groups roles offline_access")
    own_cc = token(keycard, {"grant_type": "client_credentials"},
                   auth=(client.client_id, secret)).json()["access_token"]
    for_api = token(keycard, {"grant_type": "client_credentials", "resource": API},
                  auth=(client.client_id, secret)).json()["access_token"]
    revoked = tokens_for(bob, rp, scope="openid")["access_token"]
    assert rp.post("/revoke", {"token": revoked}).status_code == 200
    cases = [
        (rp, user["access_token"], True, "a person's token, by its client"),
        (rp, user["refresh_token"], True, "a refresh token, by its client"),
        (other, user["access_token"], False, "another client's token"),
        (other, user["refresh_token"], False, "another client's refresh token"),
        (RP(client, secret, keycard.url), own_cc, True, "a service's own token"),
        (rp, for_api, False, "another client's token for a resource (RFC 8707)"),
        (rp, revoked, False, "a revoked token"),
        (rp, "not-a-token", False, "garbage"),
        (rp, own_cc[:-4] + "AAAA", False, "a bad signature"),
    ]
    for who, presented, is_active, why in cases:
        for hint in ({}, {"token_type_hint": "refresh_token"}, {"token_type_hint": "bogus"}):
            answers = lean.both_ways(
                lambda who=who, presented=presented, hint=hint: who.post(
                    "/introspect", {"token": presented, **hint}))
            assert lean.reached == [], why
            assert answers[0].status_code == 200 and answers[0].json()["active"] is is_active, why
            assert_same_answer(*answers)
            assert answers[0].json() == answers[1].json(), why


def test_introspection_refusals_go_the_full_way(make_client, lean, keycard, service):
    client, secret = service
    public = make_client(name="Public introspector", public=True)
    cases = [
        ({"token": "x"}, (client.client_id, "wrong"), 401, "wrong secret"),
        ({"token": "x", "client_id": public.client_id}, None, 401, "a public client"),
        ({}, (client.client_id, secret), 400, "no token"),
        ({"token": "x", "extra": "1"}, (client.client_id, secret), 200, "unknown parameter"),
        ({"token": "x"}, None, 401, "no client authentication"),
    ]
    for data, auth, status, why in cases:
        answers = lean.both_ways(lambda data=data, auth=auth: requests.post(
            keycard.url + "/introspect", data=data, auth=auth, timeout=10))
        assert len(lean.reached) == 1, why
        assert answers[0].status_code == status, (why, answers[0].text)
        assert_same_answer(*answers)


def test_grant_writes_declare_only_real_keys_so_a_prefix_limited_redis_user_may_run_them(
        keycard, rdb, redis_server):
    """Redis ACLs check every key a script declares: an empty placeholder key (no refresh
    token kept) was refused to a user limited to Keycard's prefix (NOPERM)."""
    import time as clock

    import redis as redis_py

    from sso.oidc.records import Grant, Records
    from sso.storage import Store

    prefix = keycard.services.store.keys.prefix
    rdb.acl_setuser("keycard-acl", enabled=True, passwords=["+acl-pw"], keys=[f"{prefix}*"],
                    commands=["+@all"], reset_keys=True)
    try:
        kwargs = rdb.connection_pool.connection_kwargs
        limited = redis_py.Redis(host=kwargs["host"], port=kwargs["port"], username="keycard-acl",
                                 password="acl-pw", decode_responses=True)
        records = Records(Store(limited, prefix))
        for kept in (None, ("rt-" + "x" * 40, 600, None)):
            grant = Grant(records.new_grant_id(), "4242", "acl-client", "openid", "sid-hash",
                          int(clock.time()), int(clock.time()) + 600)
            assert records.create_grant(grant, kept) is True
            assert records.get_grant(grant.grant_id) == grant
        # The one-trip scripts touch keys named in the records: ACLs check those too.
        rdb.hset(records.keys.user("4242"), "profile", "{}")
        records.save_code("acl-code", {"c": "acl-client", "ru": "", "s": "offline_access",
                                       "u": "4242", "sid": "", "at": int(clock.time()),
                                       "cc": "", "g": "acl-grant", "res": []})
        done = records.exchange_code("acl-code", client_id="acl-client", redirect_uri="",
                                     challenge="", scopes=["offline_access"], grant_ttl=600,
                                     refresh=("rt-" + "y" * 40, 600))
        assert (done.status, done.live, done.created, done.kept) == ("fresh", True, True, True)
        claim = records.claim_own_refresh_token("rt-" + "y" * 40, "acl-client",
                                                (["offline_access"], "rt-" + "z" * 40, 600))
        assert claim is not None and claim.rotated and claim.grant is not None
        assert claim.grant["u"] == "4242" and claim.profile == "{}"
        with pytest.raises(redis_py.exceptions.NoPermissionError):
            limited.get("not-keycard:anything")  # the limit is real
    finally:
        rdb.acl_deluser("keycard-acl")


# -- one round trip (issue #15): the redemption or claim script does the reads and writes -----


def grant_state(keycard: Any, rdb: Any, grant_id: str) -> dict[str, Any]:
    """What Redis holds for a grant, less what differs per grant (the family's end)."""
    keys = keycard.services.store.keys
    fields = rdb.hgetall(keys.grant(grant_id))
    user, sid = fields.get("u", ""), fields.get("sid", "")
    now = int(time.time())
    indexes = (keys.user_grants(user), keys.client_grants(fields.get("c", "")),
               keys.session_grants(sid))
    return {
        "fields": {k: v for k, v in fields.items() if k != "exp"},
        "indexed": [grant_id in rdb.smembers(key) for key in indexes],
        "tombstoned": bool(rdb.exists(keys.grant_tombstone(grant_id))),
        # seconds from now: the family's end, the grant's and the indexes' TTLs
        "times": [int(fields["exp"]) - now if fields else -2, rdb.ttl(keys.grant(grant_id)),
                  *(rdb.ttl(key) for key in indexes)],
    }


def close(a: list[int], b: list[int]) -> bool:
    """Times taken a few seconds apart."""
    return all(abs(x - y) <= 3 for x, y in zip(a, b, strict=True))


def data_commands(keycard: Any, commands: list[str]) -> list[str]:
    """The commands' names, less reads of configuration that per-process caches refresh
    every few seconds (clients, rules, bootstrap pins, the data-loss epoch): a request may
    cross such a deadline on a loaded machine."""
    keys = keycard.services.store.keys
    config = (keys.client(""), keys.clients_index(), keys.rules(), keys.bootstrap_pins(),
              keys.instance_epoch())
    return [c.split()[0].upper() for c in commands
            if not any(f" {key}" in c for key in config)]


def code_record(keycard: Any, rdb: Any, code: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(
        rdb.get(keycard.services.store.keys.code(hash_secret(code))))
    return found


def test_a_code_exchange_and_each_refresh_cost_one_redis_round_trip(bob, make_client, lean,
                                                                     keycard, rdb):
    rp = make_client(name="One trip app")
    prefix = keycard.services.store.keys.prefix
    # the first use of each script loads it into Redis (NOSCRIPT, SCRIPT LOAD, EVALSHA)
    refresh(rp, tokens_for(bob, rp, scope="openid offline_access")["refresh_token"])
    code, verifier = get_code(bob, rp, scope="openid offline_access")
    answers: list[requests.Response] = []
    commands = redis_commands_during(rdb, prefix, lambda: answers.append(
        redeem(rp, code, verifier)))
    assert answers[0].status_code == 200, answers[0].text
    assert data_commands(keycard, commands) == ["EVALSHA"], [c[:160] for c in commands]
    tokens = answers[0].json()
    for _ in range(2):  # the first refresh token (written by the script), then a rotated one
        commands = redis_commands_during(rdb, prefix, lambda rt=tokens["refresh_token"]:
                                         answers.append(refresh(rp, rt)))
        assert answers[-1].status_code == 200, answers[-1].text
        assert data_commands(keycard, commands) == ["EVALSHA"], [c[:160] for c in commands]
        tokens = answers[-1].json()
    assert lean.reached == []
    assert active(rp, tokens["access_token"]) and active(rp, tokens["refresh_token"])


def test_the_one_trip_writes_what_the_full_path_writes(bob, make_client, lean, keycard, rdb):
    """The redemption script's grant, indexes and first refresh token are those
    Records.create_grant writes on the full path, field for field."""
    rp = make_client(name="Same writes app")
    keys = keycard.services.store.keys
    codes = two_codes(bob, rp, scope="openid profile offline_access")
    grants = [code_record(keycard, rdb, code)["g"] for code, _ in codes]
    by_lean, by_full = exchange_both_ways(lean, rp, codes)
    assert by_lean.status_code == by_full.status_code == 200
    assert lean.reached == []  # the first went the lean way (the second, the full one)
    states = [grant_state(keycard, rdb, grant) for grant in grants]
    times = [state.pop("times") for state in states]
    assert close(times[0], times[1]) and min(times[0]) > 0
    assert close(times[0][:2], [rp.client.refresh_absolute_ttl] * 2)
    assert states[0]["fields"]["s"] == "openid profile offline_access"
    assert states[0] == states[1] and states[0]["indexed"] == [True] * 3
    records = [json.loads(rdb.get(keys.refresh_token(hash_secret(answer.json()[
        "refresh_token"])))) for answer in (by_lean, by_full)]
    assert records[0] == {**records[1], "g": grants[0]} and records[0]["r"] == 0
    ttls = [rdb.ttl(keys.refresh_token(hash_secret(answer.json()["refresh_token"])))
            for answer in (by_lean, by_full)]
    assert abs(ttls[0] - ttls[1]) <= 2 and ttls[0] > 0
    # and a refresh through the claim script rotates to the same kind of record
    rotated = refresh(rp, by_lean.json()["refresh_token"]).json()["refresh_token"]
    assert json.loads(rdb.get(keys.refresh_token(hash_secret(rotated)))) == records[0]


def test_a_scope_the_client_no_longer_allows_is_dropped_by_the_longer_way(
        bob, make_client, lean, keycard, rdb):
    """The scripts only write a scope that is all still allowed; otherwise the exchange
    and the refresh read and write in further round trips, still on the lean path, and
    answer what the full path answers."""
    rp = make_client(name="Narrowed app", scopes=["openid", "profile", "offline_access"])
    codes = two_codes(bob, rp, scope="openid profile offline_access")
    grant = code_record(keycard, rdb, codes[0][0])["g"]
    keycard.services.clients.update(rp.client.client_id, scopes=["openid", "offline_access"])
    by_lean, by_full = exchange_both_ways(lean, rp, codes)
    assert lean.reached == [] and by_lean.status_code == 200, by_lean.text
    assert_same_answer(by_lean, by_full)
    assert by_lean.json()["scope"] == "openid offline_access"
    assert grant_state(keycard, rdb, grant)["fields"]["s"] == "openid offline_access"

    # A refresh token from before the change: the claim script leaves the scope alone.
    keycard.services.clients.update(rp.client.client_id,
                                    scopes=["openid", "profile", "offline_access"])
    old = [tokens_for(bob, rp, scope="openid profile offline_access")["refresh_token"]
           for _ in range(2)]
    keycard.services.clients.update(rp.client.client_id, scopes=["openid", "offline_access"])
    by_lean, by_full = lean.each_way(lambda: refresh(rp, old[0]), lambda: refresh(rp, old[1]))
    assert by_lean.status_code == 200, by_lean.text
    assert_same_answer(by_lean, by_full)
    assert by_lean.json()["scope"] == "openid offline_access"


def test_a_check_failing_after_the_one_trip_wrote_the_grant_ends_it(bob, make_client, lean,
                                                                     keycard, rdb):
    """The script writes the grant before Provider.subject decides; when it says no (here:
    the app now requires a role bob lacks), the grant is ended and its refresh token gone."""
    rp = make_client(name="Now restricted app")
    code, verifier = get_code(bob, rp, scope="openid offline_access")
    grant = code_record(keycard, rdb, code)["g"]
    keycard.services.clients.update(rp.client.client_id, required_roles=["release-manager"])
    answer = redeem(rp, code, verifier)
    assert answer.status_code == 400 and lean.reached == []
    assert answer.json() == {"error": "invalid_grant",
                             "error_description": "There is no 'user' for this code."}
    state = grant_state(keycard, rdb, grant)
    assert state["fields"] == {} and state["tombstoned"]
    keys = keycard.services.store.keys
    assert not [k for k in rdb.scan_iter(keys.refresh_token("*"))
                if json.loads(rdb.get(k) or "{}").get("g") == grant]


def test_an_outage_after_the_one_trip_wrote_the_grant_ends_it_and_answers_503(
        bob, make_client, lean, keycard, rdb, monkeypatch):
    rp = make_client(name="Outage after write app")
    code, verifier = get_code(bob, rp, scope="openid offline_access")
    grant = code_record(keycard, rdb, code)["g"]

    def down(*args: Any) -> None:
        raise StorageUnavailable("connection refused")

    monkeypatch.setattr(lean.layer.provider.accounts, "with_roles", down)
    answer = redeem(rp, code, verifier)
    assert answer.status_code == 503 and answer.json()["error"] == "temporarily_unavailable"
    state = grant_state(keycard, rdb, grant)
    assert state["fields"] == {} and state["tombstoned"]


def test_introspecting_a_refresh_token_costs_one_round_trip(bob, make_client, lean, keycard,
                                                            rdb):
    from tests.oidc.conftest import introspect

    rp = make_client(name="Introspecting app")
    tokens = [tokens_for(bob, rp, scope="openid offline_access") for _ in range(2)]
    assert introspect(rp, tokens[0]["refresh_token"]).json()["active"]  # the script loaded
    answers: list[requests.Response] = []
    commands = redis_commands_during(rdb, keycard.services.store.keys.prefix, lambda: (
        answers.append(introspect(rp, tokens[1]["refresh_token"]))))
    assert answers[0].json()["active"] is True and lean.reached == []
    assert answers[0].json()["exp"] > time.time()  # the grant's end, read with the token
    assert data_commands(keycard, commands) == ["EVALSHA"], [c[:160] for c in commands]
