"""Where clients live: one JSON record per client in Redis (the secret only as a hash),
with a short in-process cache for the token hot path (a client changed or deleted on
one instance is seen by every other within ``CACHE_SECONDS``)."""

from __future__ import annotations

import builtins
import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import fields, replace
from typing import Any

import redis

from sso.cache import ExpiringCache
from sso.crypto import hash_secret, new_secret
from sso.oidc.client_file import ImportPlan
from sso.oidc.clients import (
    CLIENT_ID,
    DEVICE_CODE_GRANT,
    Client,
    ClientError,
    check_field_names,
    new_client_id,
    validate,
)
from sso.storage import Store, guard

CACHE_SECONDS = 2.0
CACHE_MAX_ENTRIES = 1024


class ClientRegistry:
    """Clients in Redis: ``Keys.client`` (JSON, one per client) and the id set
    ``Keys.clients_index``."""

    def __init__(self, store: Store, *, cache_seconds: float = CACHE_SECONDS,
                 on_revoke: Callable[[str], object] | None = None) -> None:
        self.store = store
        # Ends every grant of a client (its refresh tokens and access tokens): the
        # provider's Records.revoke_all_client_grants, wired in registry.build.
        self.on_revoke = on_revoke
        self.index_key = store.keys.clients_index()
        self._cache: ExpiringCache[str, Client] = ExpiringCache(CACHE_MAX_ENTRIES, cache_seconds)

    def clear_cache(self) -> None:
        """Forget every cached client (Redis lost its data: see :mod:`sso.epoch`)."""
        self._cache.clear()

    def key(self, client_id: str) -> str:
        return self.store.keys.client(client_id)

    def create(self, *, public: bool = False, **fields: Any) -> tuple[Client, str | None]:
        """Register a client; returns it and its secret (``None`` for a public client).

        The secret is shown to the caller once and stored only as its hash.
        """
        check_field_names(fields)
        secret = None if public else new_secret(32)
        client = validate(Client(
            client_id="", secret_hash=None if secret is None else hash_secret(secret),
            created_at=int(time.time()), **fields,
        ))
        self._insert(client)
        return client, secret

    @guard
    def _insert(self, client: Client) -> None:
        while True:
            client.client_id = new_client_id()
            pipe = self.store.redis.pipeline(transaction=True)
            pipe.set(self.key(client.client_id), _encode(client), nx=True)
            pipe.sadd(self.index_key, client.client_id)
            if pipe.execute()[0]:  # 128 random bits: a collision is only theoretical
                return

    def get(self, client_id: str) -> Client | None:
        """The client, or ``None``: a copy the caller may change."""
        client = self.shared(client_id)
        return None if client is None else _copy(client)

    def shared(self, client_id: str) -> Client | None:
        """The client, or ``None``, as cached: read it, never change it. Cached per
        process for a couple of seconds, so a burst of token requests from one client
        costs one Redis GET."""
        if not isinstance(client_id, str) or not CLIENT_ID.fullmatch(client_id):
            return None  # attacker-supplied garbage never reaches Redis
        hit = self._cache.get(client_id)
        if hit is not None:
            return hit
        client = self._load(client_id)
        if client is not None:
            self._cache.put(client_id, client)
            return client
        self._forget(client_id)
        return None

    @guard
    def _load(self, client_id: str) -> Client | None:
        raw = self.store.redis.get(self.key(client_id))
        return None if raw is None else Client.from_dict(json.loads(raw))

    @guard
    def list(self) -> builtins.list[Client]:
        ids = sorted(str(i) for i in self.store.redis.smembers(self.index_key))
        pipe = self.store.redis.pipeline(transaction=False)
        for client_id in ids:
            pipe.get(self.key(client_id))
        clients = [Client.from_dict(json.loads(raw)) for raw in pipe.execute() if raw]
        return sorted(clients, key=lambda c: (c.created_at, c.name, c.client_id))

    def update(self, client_id: str, **changes: Any) -> Client:
        """Apply ``changes`` and validate the result as a whole; nothing is written if the
        result is invalid. Raises :class:`ClientError` for an unknown client."""
        check_field_names(changes)

        def change(client: Client) -> Client:
            return validate(dataclasses.replace(client, **changes))

        return self._mutate(client_id, change)

    def rotate_secret(self, client_id: str, *, revoke_tokens: bool = False) -> str:
        """Replace the secret; the old one stops working at once (after the cache window
        of other processes, at most a couple of seconds).

        ``revoke_tokens`` (a leaked secret): also end every token issued so far: access
        tokens issued up to this second are refused (``tokens_valid_after``, seen within
        the cache window) and every grant, with its refresh tokens, is revoked.
        """
        secret = new_secret(32)
        changes: dict[str, Any] = {"secret_hash": hash_secret(secret)}
        if revoke_tokens:
            changes["tokens_valid_after"] = int(time.time()) + 1

        def change(client: Client) -> Client:
            if client.public:
                raise ClientError(f"client {client_id} is public: it has no secret to rotate")
            return dataclasses.replace(client, **changes)

        self._mutate(client_id, change)
        if revoke_tokens:
            self._revoke_tokens(client_id)
        return secret

    def _revoke_tokens(self, client_id: str) -> None:
        if self.on_revoke is not None:
            self.on_revoke(client_id)

    # -- the default device client: what `sso login` uses when told no client --------------

    @guard
    def default_device_client(self) -> Client | None:
        """The client ``sso login`` uses by default, while it exists."""
        client_id = self.store.redis.get(self.store.keys.cli_client())
        return None if not client_id else self.get(str(client_id))

    def create_default_device_client(self, **fields: Any) -> Client:
        """Register a public device-grant client (with refresh) and make it the default;
        a client id is not a secret, so Keycard serves it at ``/device/cli-client``."""
        fields.setdefault("name", "Keycard CLI")
        fields.setdefault("grant_types", [DEVICE_CODE_GRANT, "refresh_token"])
        client, _ = self.create(public=True, **fields)
        self._set_default_device_client(client.client_id)
        return client

    @guard
    def _set_default_device_client(self, client_id: str) -> None:
        self.store.redis.set(self.store.keys.cli_client(), client_id)

    @guard
    def delete(self, client_id: str) -> bool:
        pipe = self.store.redis.pipeline(transaction=True)
        pipe.delete(self.key(client_id))
        pipe.srem(self.index_key, client_id)
        deleted = bool(pipe.execute()[0])
        self._forget(client_id)
        # Its access tokens are refused as soon as the client is gone (Provider.token_claims);
        # its grants and refresh tokens end here.
        self._revoke_tokens(client_id)
        return deleted

    @guard
    def _mutate(self, client_id: str, change: Callable[[Client], Client]) -> Client:
        """Read-change-write under WATCH, so two admins editing at once never lose a change
        and an update racing a delete does not bring the client back."""
        key = self.key(client_id)
        try:
            with self.store.redis.pipeline(transaction=True) as pipe:  # WATCH needs it in a cluster
                while True:
                    try:
                        pipe.watch(key)
                        raw = pipe.get(key)
                        if raw is None:
                            raise ClientError(f"no client {client_id!r}")
                        client = change(Client.from_dict(json.loads(raw)))
                        pipe.multi()
                        pipe.set(key, _encode(client))
                        pipe.execute()
                        return client
                    except redis.WatchError:
                        continue
        finally:
            self._forget(client_id)

    @guard
    def apply_import(self, build: Callable[[dict[str, Client]], ImportPlan]
                     ) -> tuple[ImportPlan, dict[str, str]]:
        """Plan against every stored client and write the plan in one transaction, all of
        it or (``build`` raising ClientError) none; retried when a client changed between.
        Returns the plan and the new confidential clients' secrets."""
        plan = ImportPlan([])
        try:
            with self.store.redis.pipeline(transaction=True) as pipe:
                while True:
                    try:
                        pipe.watch(self.index_key)
                        ids = sorted(str(i) for i in pipe.smembers(self.index_key))
                        keys = [self.key(i) for i in ids]
                        current: dict[str, Client] = {}
                        if keys:
                            pipe.watch(*keys)
                            for raw in pipe.mget(keys):
                                if raw:
                                    client = Client.from_dict(json.loads(raw))
                                    current[client.client_id] = client
                        plan = build(current)
                        new_ids = [c.after.client_id for c in plan.created]
                        if new_ids:  # an id the file names must not appear meanwhile
                            pipe.watch(*[self.key(i) for i in new_ids])
                        pipe.multi()
                        for change in [*plan.created, *plan.updated]:
                            pipe.set(self.key(change.after.client_id), _encode(change.after))
                            pipe.sadd(self.index_key, change.after.client_id)
                        pipe.execute()
                        return plan, plan.secrets
                    except redis.WatchError:
                        continue
        finally:
            for change in plan.changes:
                self._forget(change.after.client_id)

    def _forget(self, client_id: str) -> None:
        self._cache.pop(client_id)


def _copy(client: Client) -> Client:
    """A copy whose lists are its own: what deepcopy gave, at a tenth of its cost (the
    registry is read on every token request)."""
    lists: dict[str, Any] = {f.name: list(getattr(client, f.name)) for f in fields(client)
                             if isinstance(getattr(client, f.name), list)}
    return replace(client, **lists)


def _encode(client: Client) -> str:
    return json.dumps(client._record(), separators=(",", ":"))
