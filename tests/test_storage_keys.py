"""Every Redis key is built in ``sso/storage.py``'s :class:`Keys`, which declares each
pattern with its lifetime (issue #10, Structure item 2).

- A broad scenario against the real Keycard, development upstream and Redis makes
  Keycard write every kind of key it can; every key under the test's prefix must match
  exactly one declared pattern, carry a TTL when declared ``ttl`` and none when declared
  ``durable``.
- A source check: no module under ``sso/`` but ``sso/storage.py`` reads the key prefix
  or spells a key name.
"""

from __future__ import annotations

import ast
import inspect
import re
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from redis.crc import key_slot

from sso.crypto import hash_secret
from sso.oidc.client_registry import ClientRegistry
from sso.oidc.records import Grant, Records
from sso.storage import CONFIG_TAG, KeyPattern, Keys, Store
from tests.device_support import (
    answer_device,
    enter_code,
    poll,
    register_device_client,
    start_device,
)
from tests.oidc.conftest import (
    CB,
    DEFAULT_SCOPE,
    RP,
    approve,
    authorize,
    code_from,
    redeem,
    refresh,
    revoke,
    sent_back,
)
from tests.support import pick_upstream_user, start_sign_in

SSO = Path(__file__).resolve().parent.parent / "sso"


# -- the declarations themselves ------------------------------------------------------------


def _sample_args(method: Any) -> list[str]:
    names = [p for p in inspect.signature(method).parameters if p != "self"]
    return [f"<{name}>" for name in names]


def _hash_tag(key: str) -> str | None:
    """The part of ``key`` Redis Cluster hashes when it has a tag (its rule, verbatim)."""
    start = key.find("{")
    end = key.find("}", start + 1)
    return key[start + 1:end] if start >= 0 and end > start + 1 else None


@pytest.mark.parametrize("cluster", [False, True], ids=["standalone", "cluster"])
def test_every_key_method_is_declared_once_and_builds_what_it_declares(cluster):
    keys = Keys("p:", cluster=cluster)
    builders = {name for name, member in vars(Keys).items()
                if inspect.isfunction(member) and not name.startswith("_")
                and name not in {"grant_id_of", "patterns_of", "scan_match", "args_of",
                                 "build"}}
    declared = [p.method for p in Keys.PATTERNS]
    assert sorted(declared) == sorted(builders)  # every builder declared, none twice
    assert len({p.template for p in Keys.PATTERNS}) == len(Keys.PATTERNS)
    for pattern in Keys.PATTERNS:
        assert pattern.lifetime in ("ttl", "durable") and pattern.why, pattern
        args = _sample_args(getattr(Keys, pattern.method))
        key = getattr(keys, pattern.method)(*args)
        assert keys.patterns_of(key) == [pattern], (key, keys.patterns_of(key))
        read = keys.args_of(key, pattern)  # read back, as a backup names its records
        assert read is not None and keys.build(pattern, read) == key, (key, read)
        if pattern.tag is not None and "*}" not in pattern.template:  # modes differ
            assert Keys("p:", cluster=not cluster).patterns_of(key) == [], key
        plain = "p:" + re.sub(r"\{[^}]*\}", "%s", pattern.template) % tuple(args)
        if not cluster:  # byte for byte the names Keycard wrote before hash tags
            assert key == plain, key
            continue
        if pattern.tag is None:
            assert _hash_tag(key) is None and key == plain, key
        elif pattern.tag == CONFIG_TAG:
            assert key == plain.replace("p:", "p:{config}:", 1), key
        else:
            assert _hash_tag(key) == f"<{pattern.tag}>", key


def test_keys_used_together_share_a_hash_slot_in_a_cluster():
    """What one script or MULTI touches (sso/oidc/records.py, device_records.py,
    sessions.py, accounts.py, client_registry.py, keys.py) lives in one slot; and entities
    spread: neither the whole keyspace nor one kind of record in a single slot."""
    keys = Keys("kc:", cluster=True)
    groups = [
        [keys.code("c"), keys.used_code("c")],
        [keys.grant("g1"), keys.grant_tombstone("g1"), keys.revoked_access_token("g1.x7"),
         keys.revoked_access_token("g1.y8")],
        [keys.device("d"), keys.device_tombstone("d")],
        [keys.session("s"), keys.session_grants("s")],
        [keys.user("42"), keys.user_sessions("42"), keys.user_grants("42"),
         keys.user_consents("42"), keys.recheck_lock("42"), keys.device_tries("user", "42")],
        [keys.client("c1"), keys.client("c2"), keys.clients_index(), keys.signing_keys(),
         keys.signing_keys_version(), keys.signing_keys_lock(), keys.rules(), keys.audit(),
         keys.users_index(), keys.login_index(), keys.bootstrap_pins(),
         keys.dev_demo_client(), keys.cli_client()],
    ]
    for group in groups:
        assert len({key_slot(k.encode()) for k in group}) == 1, group
    spread = {key_slot(keys.session(f"s{n}").encode()) for n in range(50)}
    spread |= {key_slot(keys.grant(f"g{n}").encode()) for n in range(50)}
    assert len(spread) > 90
    # A jti without a grant (client credentials) is a slot of its own.
    assert _hash_tag(keys.revoked_access_token("plainjti")) == "plainjti"


def test_a_prefix_with_a_hash_tag_keeps_everything_in_its_slot():
    """``SSO_REDIS_PREFIX={keycard}:`` on a cluster: the one-slot layout of earlier versions,
    names unchanged (no tag of Keycard's own after the prefix's)."""
    keys = Keys("{keycard}:", cluster=True)
    assert keys.session("s") == "{keycard}:sess:s" and keys.rules() == "{keycard}:rules"
    assert keys.patterns_of(keys.grant("g")) == [
        p for p in Keys.PATTERNS if p.method == "grant"]


def test_a_colon_in_an_open_ended_segment_still_names_one_pattern():
    keys = Keys("{kc}:")
    assert [p.method for p in keys.patterns_of(keys.device_tries("ip", "::1"))] == [
        "device_tries"]
    assert keys.patterns_of("other:" + keys.session("x")) == []


def test_grant_indexes_written_as_key_names_before_are_still_revoked(redis_server, prefix):
    """Index sets hold grant ids now; members an older version wrote (the grant's key
    name) keep working, so an upgrade needs no migration."""
    store = Store(redis.Redis.from_url(redis_server.url, decode_responses=True), prefix)
    records = Records(store)
    now = int(time.time())
    old, new = records.new_grant_id(), records.new_grant_id()
    for grant_id in (old, new):
        assert records.create_grant(Grant(grant_id, "77", "c1", "openid", "sid", now, now + 600))
    rdb = store.redis
    assert rdb.smembers(store.keys.user_grants("77")) == {old, new}
    assert rdb.smembers(store.keys.session_grants("sid")) == {old, new}
    for index in (store.keys.user_grants("77"), store.keys.session_grants("sid")):
        rdb.srem(index, old)
        rdb.sadd(index, store.keys.grant(old))  # as written before this change
    assert records.revoke_client_grants("77", "c1") == 2
    for grant_id in (old, new):
        assert records.create_grant(Grant(grant_id + "x", "77", "c1", "", "sid", now, now + 600))
    rdb.sadd(store.keys.session_grants("sid"), store.keys.grant(old + "x"))
    assert records.revoke_session_grants("sid") == 2
    assert not rdb.exists(store.keys.grant(old + "x"), store.keys.grant(new + "x"))
    assert rdb.exists(store.keys.grant_tombstone(old + "x"))


# -- (a) a broad scenario: every key Keycard writes is declared --------------------------------


class KeyAudit:
    """SCANs the prefix at chosen moments and checks every key against ``Keys``."""

    def __init__(self, rdb: redis.Redis, keys: Keys) -> None:
        self.rdb = rdb
        self.keys = keys
        self.seen: dict[str, str] = {}  # pattern method -> one key seen
        self.problems: list[str] = []

    def scan(self) -> None:
        for key in self.rdb.scan_iter(match=f"{self.keys.prefix}*", count=1000):
            matches = self.keys.patterns_of(key)
            if len(matches) != 1:
                self.problems.append(f"{key}: matches {[p.template for p in matches]}")
                continue
            pattern = matches[0]
            ttl = self.rdb.ttl(key)
            if ttl == -2:  # deleted between SCAN and TTL
                continue
            if pattern.lifetime == "ttl" and ttl <= 0:
                self.problems.append(f"{key}: declared ttl ({pattern.why}) but has none")
            if pattern.lifetime == "durable" and ttl != -1:
                self.problems.append(f"{key}: declared durable but expires in {ttl}s")
            self.seen.setdefault(pattern.method, key)


@pytest.mark.parametrize("topology", [
    "standalone", pytest.param("cluster", marks=pytest.mark.topology("cluster"))])
def test_every_key_keycard_writes_is_declared_with_its_lifetime(topology, request, upstream,
                                                                 http, prefix):
    """On a cluster too: its names carry hash tags, and any script or transaction whose
    keys did not share a slot would fail here (CROSSSLOT)."""
    if topology == "cluster":
        keycard = request.getfixturevalue("make_cluster_keycard")()
        rdb = request.getfixturevalue("cluster_topology").client()
    else:
        keycard, rdb = request.getfixturevalue("keycard"), request.getfixturevalue("rdb")
    services = keycard.services
    assert services.store.keys.cluster is (topology == "cluster")
    assert services.store.keys.prefix == prefix
    audit = KeyAudit(rdb, services.store.keys)
    registry: ClientRegistry = keycard.services.clients

    # Browser sign-in, stopped at the upstream page first (the state record is live).
    page = start_sign_in(http, keycard.url)
    audit.scan()
    pick_upstream_user(http, page, "bob")
    bob = services.accounts.find_by_login("bob")
    assert bob is not None

    # Code flow with consent (untrusted client) and a refresh token, then a rotation.
    client, secret = registry.create(name="Wiki", redirect_uris=[CB], trusted=False)
    rp = RP(client, secret, keycard.url)
    consent = authorize(http, rp, scope=DEFAULT_SCOPE)
    assert consent.status_code == 200, consent.text[:300]
    code = code_from(approve(http, consent).headers["Location"])
    audit.scan()  # the code, before redemption
    tokens = redeem(rp, code, consent.code_verifier).json()
    assert "refresh_token" in tokens, tokens
    rotated = refresh(rp, tokens["refresh_token"]).json()
    assert "access_token" in rotated, rotated
    assert redeem(rp, code, consent.code_verifier).status_code == 400  # replay: code-used hit

    # Revocation: an access token by jti, and another grant through its refresh token.
    assert revoke(rp, rotated["access_token"]).status_code == 200
    second = authorize(http, rp, scope=DEFAULT_SCOPE)
    answer = sent_back(second)  # consent remembered: straight back with a code
    doomed = redeem(rp, answer["code"], second.code_verifier).json()
    assert revoke(rp, doomed["refresh_token"]).status_code == 200

    # Client credentials, its token revoked (a revocation without a grant).
    service, service_secret = registry.create(name="Bot", grant_types=["client_credentials"],
                                              scopes=["roles"], redirect_uris=[])
    bot = RP(service, service_secret, keycard.url)
    token = bot.post("/token", {"grant_type": "client_credentials", "scope": "roles"}).json()
    assert revoke(bot, token["access_token"]).status_code == 200

    # Device authorization: a wrong code counted, the right one approved, tokens polled.
    device_client = register_device_client(keycard)
    started = start_device(keycard.url, device_client.client_id,
                           "openid offline_access").json()
    audit.scan()  # pending request and its user-code index
    wrong = "BBBB-BBBB" if started["user_code"] != "BBBB-BBBB" else "CCCC-CCCC"
    assert enter_code(http, keycard.url, wrong).status_code == 400
    answer_device(http, keycard.url, started["user_code"])
    polled = poll(keycard.url, device_client.client_id, started["device_code"])
    assert polled.status_code == 200, polled.text

    # A rule, and a membership re-check that fails upstream (its lock then holds off).
    services.rules.map("team", "acme/platform", ("viewer",))
    upstream.state.add_fault("/api/v3/user", "server_error", count=-1)
    try:
        services.accounts.recheck(bob.user_id)
    finally:
        upstream.state.clear_faults()

    # A bootstrap admin (SSO_BOOTSTRAP_ADMINS=alice) signs in: her login is pinned to her id.
    with requests.Session() as other:
        pick_upstream_user(other, start_sign_in(other, keycard.url), "alice")
    assert services.accounts.bootstrap_ids() == {"1001"}

    # A session ends that an app with a back-channel logout URI got an ID token in; the
    # worker is stopped so the job stays queued while the keys are scanned.
    services.backchannel.stop()
    bcl_app, _ = services.clients.create(name="BCL", redirect_uris=["https://bcl.test/cb"],
                                         backchannel_logout_uri="https://bcl.test/logout")
    now = int(time.time())
    services.records.create_grant(Grant("bclgrant", bob.user_id, bcl_app.client_id, "openid",
                                        hash_secret("a-session"), now, now + 600))
    assert services.backchannel.session_ended(hash_secret("a-session")) == 1

    # A GitHub webhook delivery (verified by the view; the service remembers it).
    assert services.hooks.receive("72d3162e-cc78-11e3-81ab-4c9367dc0958", "ping", {}).result \
        == "pong"

    # Signing keys exist since the first token; hold the rotation lock while scanning.
    ring = keycard.services.keys
    with ring._redis_lock():
        audit.scan()

    # `sso dev` remembers its demo client and the default device client of `sso login`.
    from sso.dev import register_cli_client, register_demo_client

    register_demo_client(keycard.app, "http://127.0.0.1:9")
    register_cli_client(keycard.app)
    audit.scan()

    assert audit.problems == []
    assert rdb.smembers(services.store.keys.user_grants(bob.user_id))  # ids, not key names
    assert all(":" not in m for m in rdb.smembers(services.store.keys.user_grants(bob.user_id)))
    unseen = {p.method for p in Keys.PATTERNS} - set(audit.seen)
    assert unseen == set(), f"declared but never written here: {sorted(unseen)}"


# -- (b) the source check -------------------------------------------------------------------

# String literals that start like a key name but are not one.
NOT_KEYS = {
    ("oidc/tokens.py", "client:"): "client_subject(): the `sub` of a service, not a key",
}


def _heads() -> set[str]:
    """The literal start of every declared key that has a colon in it (``grant:``,
    ``device-tries:``, ``keys:version``...). Colon-free names (``rules``, ``audit``) are
    ordinary words; reading the prefix is what gives those away."""
    heads = (p.template.split("{", 1)[0] for p in Keys.PATTERNS)
    return {head for head in heads if ":" in head}


def _is_prefix(node: ast.AST) -> bool:
    """``prefix``, ``self.p``, ``store.keys.prefix``...: what key names start with."""
    if isinstance(node, ast.Attribute):
        return node.attr == "p" or node.attr.endswith("prefix")
    return isinstance(node, ast.Name) and node.id.endswith("prefix")


def offenders(root: Path) -> list[str]:
    """Places under ``root`` (an ``sso`` tree) that build a Redis key outside storage.py."""
    heads = _heads()
    found: list[str] = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel == "storage.py" or rel.startswith("devupstream/"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=rel)
        for node in ast.walk(tree):
            where = f"sso/{rel}:{getattr(node, 'lineno', '?')}"
            if (isinstance(node, ast.Attribute) and node.attr == "prefix"
                    and (isinstance(node.value, ast.Name) and node.value.id == "keys"
                         or isinstance(node.value, ast.Attribute)
                         and node.value.attr == "keys")):
                found.append(f"{where}: reads the key prefix ({ast.unparse(node)})")
            elif (isinstance(node, ast.JoinedStr) and node.values
                  and isinstance(node.values[0], ast.FormattedValue)
                  and _is_prefix(node.values[0].value)):
                found.append(f"{where}: f-string on a prefix ({ast.unparse(node)})")
            elif (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add)
                  and _is_prefix(node.left)):
                found.append(f"{where}: concatenates a prefix ({ast.unparse(node)})")
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                for head in heads:
                    if node.value.startswith(head) and (rel, head) not in NOT_KEYS:
                        found.append(f"{where}: spells the key name {node.value!r}")
    return found


def test_no_module_but_storage_builds_a_key_name():
    assert offenders(SSO) == []


def test_the_development_upstream_keeps_no_redis_state():
    """Why the source check skips ``sso/devupstream``: its rate-limit keys are in memory."""
    for path in (SSO / "devupstream").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "import redis" not in text and "sso.storage" not in text, path


@pytest.mark.parametrize("line", [
    'self.key = f"{store.keys.prefix}audit"',
    'lock = f"{self.store.keys.prefix}recheck:{user_id}"',
    'def _grant(self, grant_id):\n    return f"{self.p}grant:{grant_id}"',
    'self.hash_key = prefix + "keys"',
    'SCRIPT_KEY = "grant-dead:"',
])
def test_the_source_check_catches_how_keys_used_to_be_built(tmp_path, line):
    (tmp_path / "oidc").mkdir()
    (tmp_path / "oidc" / "records.py").write_text(line + "\n", encoding="utf-8")
    assert offenders(tmp_path), line


def test_the_source_check_allows_what_is_not_a_key(tmp_path):
    (tmp_path / "oidc").mkdir()
    (tmp_path / "oidc" / "tokens.py").write_text(
        'def client_subject(c):\n    return f"client:{c}"\n', encoding="utf-8")
    assert offenders(tmp_path) == []


def test_key_patterns_are_listed_for_machines():
    assert all(isinstance(p, KeyPattern) for p in Keys.PATTERNS)
    session = next(p for p in Keys.PATTERNS if p.method == "session")
    assert (session.glob, session.lifetime) == ("sess:*", "ttl")
    assert Keys("kc:").session(hash_secret("x")) == f"kc:sess:{hash_secret('x')}"
