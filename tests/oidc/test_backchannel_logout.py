"""OpenID Connect Back-Channel Logout 1.0 (issue #13 §2): every app that got an ID token in a
session that ends receives a logout token, at least once, without the session's end waiting."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from flask import Flask, request
from joserfc import jwt
from joserfc.jwk import KeySet

from sso.demoapp import create_demo_app
from sso.metrics import BACKCHANNEL_LOGOUT
from sso.oidc.backchannel import LOGOUT_EVENT
from sso.oidc.tokens import subject_for
from tests.support import LiveServer, csrf_token, obtain_tokens, sign_in, wait_until

CB = "http://127.0.0.1:9/cb"


class Receiver:
    """An app's back-channel endpoint: records logout tokens; can fail or be down."""

    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.attempts = 0
        self.failures_left = 0
        self.lock = threading.Lock()
        app = Flask("receiver")

        @app.post("/bcl")
        def bcl() -> tuple[str, int]:
            with self.lock:
                self.attempts += 1
                if self.failures_left:
                    self.failures_left -= 1
                    return "down for maintenance", 503
                self.tokens.append(request.form["logout_token"])
            return "", 200

        self.server = LiveServer(app).start()
        self.url = self.server.url + "/bcl"


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    made: list[Receiver] = []
    yield made
    for receiver in made:
        receiver.server.stop()


@pytest.fixture
def receiver(receivers: list[Receiver]) -> Receiver:
    receivers.append(Receiver())
    return receivers[-1]


def app_with_bcl(keycard: Any, uri: str, **fields: Any) -> tuple[Any, str]:
    return keycard.services.clients.create(
        name="App", redirect_uris=[CB], trusted=True, backchannel_logout_uri=uri,
        post_logout_redirect_uris=["http://127.0.0.1:9/bye"], **fields)


def decode(keycard: Any, token: str) -> Any:
    jwks = KeySet.import_key_set(requests.get(keycard.url + "/jwks.json", timeout=5).json())
    return jwt.decode(token, jwks, algorithms=["RS256", "ES256"])


def id_token_claims(keycard: Any, tokens: dict[str, Any]) -> dict[str, Any]:
    return dict(decode(keycard, tokens["id_token"]).claims)


def sign_out(http: requests.Session, keycard: Any) -> None:
    page = http.get(keycard.url + "/")
    assert http.post(keycard.url + "/logout",
                     data={"csrf_token": csrf_token(page.text)}).status_code == 200


def counter(outcome: str) -> float:
    return BACKCHANNEL_LOGOUT.labels(outcome)._value.get()


def test_discovery_announces_back_channel_logout(keycard):
    meta = requests.get(keycard.url + "/.well-known/openid-configuration", timeout=5).json()
    assert meta["backchannel_logout_supported"] is True
    assert meta["backchannel_logout_session_supported"] is True


def test_signing_out_sends_a_valid_logout_token_to_the_app(keycard, http, receiver):
    client, secret = app_with_bcl(keycard, receiver.url, id_token_alg="ES256")
    sign_in(http, keycard.url, "bob")
    tokens = obtain_tokens(http, keycard.url, client.client_id, secret)
    id_claims = id_token_claims(keycard, tokens)
    delivered = counter("delivered")

    started = time.monotonic()
    sign_out(http, keycard)
    assert time.monotonic() - started < 2  # the session's end never waits for the app
    wait_until(lambda: receiver.tokens, timeout=10)

    [raw] = receiver.tokens
    token = decode(keycard, raw)
    assert token.header["typ"] == "logout+jwt" and token.header["alg"] == "ES256"
    claims = token.claims
    assert claims["iss"] == keycard.url and claims["aud"] == client.client_id
    assert claims["sub"] == id_claims["sub"] == subject_for(keycard.url, "1002")
    assert claims["sid"] == id_claims["sid"]
    assert claims["events"] == {LOGOUT_EVENT: {}}
    assert "nonce" not in claims and claims["jti"]
    assert 0 < claims["exp"] - claims["iat"] <= 120
    # counted and taken off the queue once the worker has the receiver's answer
    wait_until(lambda: counter("delivered") == delivered + 1
               and keycard.services.backchannel.pending() == 0, timeout=10)


def test_only_apps_of_that_session_with_an_id_token_are_told(keycard, http, receivers):
    receivers.extend([Receiver(), Receiver(), Receiver()])
    signed_in, oauth_only, elsewhere = receivers
    a, a_secret = app_with_bcl(keycard, signed_in.url)
    b, b_secret = app_with_bcl(keycard, oauth_only.url)
    app_with_bcl(keycard, elsewhere.url)  # never used in this session
    sign_in(http, keycard.url, "bob")
    obtain_tokens(http, keycard.url, a.client_id, a_secret)
    obtain_tokens(http, keycard.url, b.client_id, b_secret, scope="profile")  # no ID token
    other = requests.Session()
    sign_in(other, keycard.url, "alice")

    sign_out(http, keycard)

    wait_until(lambda: signed_in.tokens, timeout=10)
    wait_until(lambda: keycard.services.backchannel.pending() == 0, timeout=10)
    assert oauth_only.attempts == 0 and elsewhere.attempts == 0
    assert "Alice Archer" in other.get(keycard.url + "/").text


def test_rp_initiated_logout_tells_the_other_apps_not_the_one_that_asked(keycard, http,
                                                                         receivers):
    receivers.extend([Receiver(), Receiver()])
    asking, other = receivers
    a, a_secret = app_with_bcl(keycard, asking.url)
    b, b_secret = app_with_bcl(keycard, other.url)
    sign_in(http, keycard.url, "bob")
    a_tokens = obtain_tokens(http, keycard.url, a.client_id, a_secret)
    obtain_tokens(http, keycard.url, b.client_id, b_secret)

    bye = http.get(keycard.url + "/end-session", allow_redirects=False, params={
        "id_token_hint": a_tokens["id_token"], "post_logout_redirect_uri": "http://127.0.0.1:9/bye"})
    assert bye.status_code in (302, 303), bye.text[:300]

    wait_until(lambda: other.tokens, timeout=10)
    wait_until(lambda: keycard.services.backchannel.pending() == 0, timeout=10)
    assert asking.attempts == 0


@pytest.mark.parametrize("how", ["everywhere", "admin", "access_ended"])
def test_every_way_a_session_ends_tells_the_app(keycard, http, receiver, how):
    client, secret = app_with_bcl(keycard, receiver.url)
    sign_in(http, keycard.url, "bob")
    obtain_tokens(http, keycard.url, client.client_id, secret)
    if how == "everywhere":
        page = http.get(keycard.url + "/")
        http.post(keycard.url + "/logout/everywhere", data={"csrf_token": csrf_token(page.text)})
    elif how == "admin":
        keycard.services.accounts.end_all_sessions("1002")
    else:
        keycard.services.accounts.end_access("1002", reason="test", actor="test")
    wait_until(lambda: receiver.tokens, timeout=10)


def test_a_failing_app_is_retried_with_back_off_until_it_answers(keycard, http, receiver):
    service = keycard.services.backchannel
    service.backoff = (0.2, 0.5)
    receiver.failures_left = 3
    client, secret = app_with_bcl(keycard, receiver.url)
    sign_in(http, keycard.url, "bob")
    obtain_tokens(http, keycard.url, client.client_id, secret)
    failed = counter("failed")

    sign_out(http, keycard)

    wait_until(lambda: receiver.tokens, timeout=15)
    assert receiver.attempts == 4 and len(receiver.tokens) == 1
    assert counter("failed") == failed + 3


def test_an_app_down_past_the_retry_period_is_dropped_with_an_audit_event(keycard, http,
                                                                           receiver):
    service = keycard.services.backchannel
    service.backoff, service.give_up_after = (0.1, 0.2), 1.0
    receiver.failures_left = 10_000
    client, secret = app_with_bcl(keycard, receiver.url)
    sign_in(http, keycard.url, "bob")
    obtain_tokens(http, keycard.url, client.client_id, secret)
    dropped = counter("dropped")

    sign_out(http, keycard)

    wait_until(lambda: service.pending() == 0, timeout=15)
    assert receiver.tokens == [] and receiver.attempts >= 3
    [event] = [e for e in keycard.services.audit.recent(50)
               if e["event"] == "oidc.backchannel_logout_dropped"]
    assert event["subject"] == client.client_id and "HTTP 503" in event["details"]["reason"]
    assert counter("dropped") == dropped + 1


def test_queued_logouts_survive_a_restart_and_any_instance_delivers(make_keycard, http,
                                                                    receiver):
    first = make_keycard()
    first.services.backchannel.backoff = (30.0, 60.0)  # first retry far away
    receiver.failures_left = 1
    client, secret = app_with_bcl(first, receiver.url)
    sign_in(http, first.url, "bob")
    obtain_tokens(http, first.url, client.client_id, secret)
    sign_out(http, first)
    wait_until(lambda: receiver.attempts == 1, timeout=10)
    first.services.backchannel.stop()  # the process "dies" with the job queued
    assert first.services.backchannel.pending() == 1
    # Let the job fall due now, as it would by the time a replacement process starts.
    queue = first.services.store.keys.logout_queue()
    [job_id] = first.services.store.redis.zrange(queue, 0, -1)
    first.services.store.redis.zadd(queue, {job_id: 0})

    second = make_keycard(SSO_ISSUER=first.url)  # a new process: picks the queue up at start
    wait_until(lambda: receiver.tokens, timeout=10)
    # The receiver has the token before its answer reaches the worker, which only then
    # takes the job off the queue.
    wait_until(lambda: second.services.backchannel.pending() == 0, timeout=10)
    assert decode(first, receiver.tokens[0]).claims["aud"] == client.client_id


def test_the_demo_app_ends_its_session_when_keycard_signs_the_person_out(keycard, http):
    demo = LiveServer()
    client, secret = keycard.services.clients.create(
        name="Demo", redirect_uris=[f"{demo.url}/callback"], trusted=True,
        backchannel_logout_uri=f"{demo.url}/backchannel-logout",
        backchannel_logout_session_required=True)
    demo.start(create_demo_app(issuer=keycard.url, client_id=client.client_id,
                               client_secret=str(secret), base_url=demo.url))
    try:
        sign_in(http, keycard.url, "bob")
        page = http.get(demo.url + "/login")
        assert "Bob Builder" in page.text
        sign_out(http, keycard)
        wait_until(lambda: "You were signed out at Keycard." in http.get(demo.url + "/").text,
                   timeout=10)
        assert "Bob Builder" not in http.get(demo.url + "/").text
    finally:
        demo.stop()


def test_the_demo_app_refuses_a_forged_logout_token(keycard):
    demo = LiveServer()
    demo.start(create_demo_app(issuer=keycard.url, client_id="demo", client_secret="x",
                               base_url=demo.url))
    try:
        answer = requests.post(demo.url + "/backchannel-logout",
                               data={"logout_token": "eyJhbGciOiJub25lIn0.e30."}, timeout=5)
        assert answer.status_code == 400
    finally:
        demo.stop()


def test_back_channel_uris_are_validated_and_removable(keycard):
    from sso.oidc.clients import ClientError
    with pytest.raises(ClientError, match="back-channel logout URI"):
        app_with_bcl(keycard, "http://app.example.com/bcl")  # plain http off loopback
    with pytest.raises(ClientError, match="fragment"):
        app_with_bcl(keycard, "https://app.example.com/bcl#x")
    client, _ = app_with_bcl(keycard, "https://app.example.com/bcl")
    runner = keycard.app.test_cli_runner()
    shown = runner.invoke(args=["clients", "show", client.client_id])
    assert "https://app.example.com/bcl" in shown.output
    result = runner.invoke(args=["clients", "update", client.client_id,
                                 "--backchannel-logout-uri", "",
                                 "--backchannel-logout-session-required"])
    assert result.exit_code == 0, result.output
    updated = keycard.services.clients.get(client.client_id)
    assert updated.backchannel_logout_uri is None
    assert updated.backchannel_logout_session_required is True
