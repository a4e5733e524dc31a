"""Signing keys against a real Redis: sealed at rest, generated once across processes,
rotated with the new key published first and the old one kept for the grace period."""

from __future__ import annotations

import json
import threading

import pytest
import redis
from joserfc import jwt
from joserfc.errors import InvalidKeyIdError

from sso.crypto import Sealer
from sso.oidc.keys import KeyRing
from sso.storage import Store
from tests.support import wait_until

SECRET = "keys-test-secret-key-long-enough-0123456789"


class Clock:
    """A wall clock the test moves forward, instead of sleeping through a grace period."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(redis_server, prefix) -> Store:
    return Store(redis.Redis.from_url(redis_server.url, decode_responses=True), prefix)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_ring(store, clock):
    def factory(**kwargs) -> KeyRing:
        kwargs.setdefault("clock", clock)
        return KeyRing(store, kwargs.pop("sealer", Sealer(SECRET)), **kwargs)

    return factory


def kids(ring: KeyRing) -> set[str]:
    return {key["kid"] for key in ring.jwks()["keys"]}


def sign(ring: KeyRing, alg: str = "RS256") -> str:
    key = ring.signing_key(alg)
    return jwt.encode({"alg": alg, "kid": key.kid}, {"sub": "u1", "iss": "keycard"}, key)


def verify(ring: KeyRing, token: str) -> dict:
    return jwt.decode(token, ring.public_keyset(), algorithms=["RS256", "ES256"]).claims


def test_first_start_generates_rs256_and_es256_keys_sealed_at_rest(make_ring, rdb, prefix):
    ring = make_ring()
    new = ring.ensure()
    assert len(new) == 2
    assert ring.ensure() == []  # idempotent
    jwks = ring.jwks()["keys"]
    assert sorted(k["alg"] for k in jwks) == ["ES256", "RS256"]
    for jwk in jwks:
        assert jwk["use"] == "sig" and jwk["kid"] in new
        assert "d" not in jwk and "p" not in jwk
    assert {k["kty"] for k in jwks} == {"RSA", "EC"}

    stored = rdb.hgetall(f"{prefix}keys")
    assert set(stored) == set(new)
    assert rdb.get(f"{prefix}keys:version")
    everything = "\n".join(stored.values())
    for alg in ("RS256", "ES256"):
        private = ring.signing_key(alg).as_dict(private=True)
        assert private["d"] not in everything  # private parts only ever sealed
    for raw in stored.values():
        record = json.loads(raw)
        assert "d" not in record["public_jwk"]
        assert record["state"] == "active" and record["retire_at"] is None
        opened = json.loads(Sealer(SECRET).open(record["sealed_private"]))
        assert opened["kid"] == record["kid"] and "d" in opened


def test_two_processes_starting_at_once_create_one_set_of_keys(make_ring, rdb, prefix):
    rings = [make_ring() for _ in range(4)]
    barrier = threading.Barrier(len(rings))
    results: list[list[str]] = []

    def start(ring: KeyRing) -> None:
        barrier.wait()
        results.append(ring.ensure())

    threads = [threading.Thread(target=start, args=(r,)) for r in rings]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sum(len(r) for r in results) == 2
    assert rdb.hlen(f"{prefix}keys") == 2
    assert len({frozenset(kids(r)) for r in rings}) == 1
    assert len({r.signing_key("RS256").kid for r in rings}) == 1


def test_signing_key_generates_keys_lazily_on_a_fresh_installation(make_ring):
    ring = make_ring()
    key = ring.signing_key()
    assert key.kid in kids(ring)
    assert verify(ring, sign(ring))["sub"] == "u1"


def test_rotation_publishes_new_key_signs_with_it_and_keeps_old_until_retire_at(
    make_ring, clock
):
    ring = make_ring()
    ring.ensure()
    old_rs, old_es = ring.signing_key("RS256").kid, ring.signing_key("ES256").kid
    before_rs, before_es = sign(ring, "RS256"), sign(ring, "ES256")

    new = ring.rotate(grace_seconds=3600)
    assert len(new) == 2 and not {old_rs, old_es} & set(new)
    assert set(new) <= kids(ring)
    assert {ring.signing_key("RS256").kid, ring.signing_key("ES256").kid} == set(new)
    assert {old_rs, old_es} <= kids(ring)
    # Tokens signed before the rotation still verify; new ones use the new kid.
    assert verify(ring, before_rs)["sub"] == "u1"
    assert verify(ring, before_es)["sub"] == "u1"
    assert jwt.decode(sign(ring), ring.public_keyset()).header["kid"] in new

    states = {k["kid"]: k for k in ring.list()}
    assert states[old_rs]["state"] == "retired"
    assert states[old_rs]["retire_at"] == pytest.approx(clock.now + 3600, abs=0.01)
    assert states[new[0]]["state"] == "active"

    clock.now += 3599
    assert old_rs in kids(ring)
    clock.now += 2
    assert kids(ring) == set(new)
    with pytest.raises(InvalidKeyIdError):
        verify(ring, before_rs)
    assert [k["kid"] for k in ring.list()] == new


def test_a_second_rotation_prunes_expired_keys_and_keeps_earlier_retire_dates(
    make_ring, clock, rdb, prefix
):
    ring = make_ring()
    first = set(ring.ensure())
    second = set(ring.rotate(grace_seconds=100))
    retire = {k["kid"]: k["retire_at"] for k in ring.list()}
    clock.now += 10
    third = set(ring.rotate(grace_seconds=3600))
    after = {k["kid"]: k for k in ring.list()}
    assert all(after[kid]["retire_at"] == retire[kid] for kid in first)  # not extended
    assert kids(ring) == first | second | third
    clock.now += 200
    ring.rotate(grace_seconds=3600)
    assert not first & set(rdb.hgetall(f"{prefix}keys"))  # expired keys removed from Redis


def test_publish_delay_puts_the_new_key_in_jwks_before_it_signs(make_ring, clock):
    ring = make_ring()
    ring.ensure()
    old = ring.signing_key().kid
    new_rs, _ = ring.rotate(grace_seconds=3600, publish_delay=300)
    assert new_rs in kids(ring)
    assert ring.signing_key().kid == old
    assert {k["kid"]: k["state"] for k in ring.list()}[new_rs] == "next"
    clock.now += 301
    assert ring.signing_key().kid == new_rs
    assert old in kids(ring)


def test_another_process_picks_up_a_rotation_within_its_recheck_interval(make_ring):
    ring_a = make_ring()
    ring_a.ensure()
    ring_b = make_ring(recheck_seconds=0.1)
    token = sign(ring_b)
    new_rs, new_es = ring_a.rotate()
    wait_until(lambda: ring_b.signing_key().kid == new_rs, timeout=5)
    assert new_rs in kids(ring_b) and new_es in kids(ring_b)
    assert verify(ring_b, token)["sub"] == "u1"


def test_keys_are_decrypted_once_per_process(make_ring):
    sealer = Sealer(SECRET)
    opened: list[str] = []
    real_open = sealer.open

    def counting_open(token: str) -> str:
        opened.append(token)
        return real_open(token)

    sealer.open = counting_open
    ring = make_ring(sealer=sealer, recheck_seconds=0)
    ring.ensure()
    for _ in range(5):
        ring.signing_key("RS256")
        ring.jwks()
    ring.rotate()
    ring.signing_key()
    ring.list()
    assert len(opened) == len(set(opened)) == 4  # two first keys, two rotated keys


def test_keys_sealed_with_another_secret_are_published_but_never_used_to_sign(make_ring):
    make_ring().ensure()
    wrong = make_ring(sealer=Sealer("a-different-secret-key-0123456789abcdef"))
    assert len(wrong.jwks()["keys"]) == 2
    with pytest.raises(RuntimeError, match="SSO_SECRET_KEY"):
        wrong.signing_key()


def test_cached_keys_keep_serving_while_redis_is_down(private_redis):
    store = Store(private_redis.client(), "kt:")
    ring = KeyRing(store, Sealer(SECRET), recheck_seconds=0)
    ring.ensure()
    published = kids(ring)
    private_redis.stop()
    try:
        assert kids(ring) == published
        assert verify(ring, sign(ring))["sub"] == "u1"
    finally:
        private_redis.start()  # empty: this test's Redis keeps nothing on disk
    # Back, and wiped: the ring notices and a fresh installation gets fresh keys.
    wait_until(lambda: ring.signing_key().kid not in published)
    assert ring.signing_key().kid in kids(ring)


def test_rotation_arguments_are_checked(make_ring):
    with pytest.raises(ValueError):
        make_ring().rotate(grace_seconds=-1)
    with pytest.raises(ValueError):
        make_ring().signing_key("HS256")
