"""The composition root: every service of one app instance, built once and typed.

:func:`build` wires the services in dependency order (storage, then people and
sessions, then the OpenID provider on top) and is the only place that knows how
they connect: the session store announces ended sessions and the accounts
service announces ended access through callbacks given here, so neither ever
imports :mod:`sso.oidc`. Views and CLI commands ask :func:`registry` for what
they need; nothing else is kept in ``app.extensions``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from authlib.oidc.discovery import OpenIDProviderMetadata
from flask import Flask, current_app

from sso.accounts import Accounts
from sso.admin.service import AdminService
from sso.assertions import Asserter
from sso.audit import Audit
from sso.config import Settings
from sso.crypto import Sealer, derive_key
from sso.epoch import DataLossWatch
from sso.forgetting import Forgetting
from sso.hooks.github import GitHubHooks
from sso.login.flow import SignInFlow
from sso.oidc.backchannel import BackchannelLogout
from sso.oidc.client_registry import ClientRegistry
from sso.oidc.device_records import DeviceRecords
from sso.oidc.discovery import discovery_document
from sso.oidc.keys import KeyRing
from sso.oidc.records import Records
from sso.oidc.server import KeycardServer, Provider, build_server
from sso.ratelimit import RateLimiter
from sso.redis_checks import Readiness
from sso.rules_store import RuleStore
from sso.sessions import SessionStore
from sso.storage import Store, connect
from sso.upstream.base import Connector
from sso.upstream.github import GitHubConfig, GitHubConnector

EXTENSION = "keycard"


@dataclass(frozen=True, slots=True)
class Registry:
    settings: Settings
    store: Store
    epoch: DataLossWatch
    sealer: Sealer
    connector: Connector
    audit: Audit
    rules: RuleStore
    sessions: SessionStore
    accounts: Accounts
    signin: SignInFlow
    admin: AdminService
    clients: ClientRegistry
    keys: KeyRing
    records: Records
    devices: DeviceRecords
    provider: Provider
    server: KeycardServer
    discovery: dict[str, Any]
    asserter: Asserter
    limiter: RateLimiter
    hooks: GitHubHooks
    backchannel: BackchannelLogout
    readiness: Readiness
    forgetting: Forgetting


def registry(app: Flask | None = None) -> Registry:
    found: Registry = (app or current_app).extensions[EXTENSION]
    return found


def github_connector(settings: Settings) -> GitHubConnector:
    return GitHubConnector(
        GitHubConfig(
            client_id=settings.github_client_id,
            client_secret=settings.github_client_secret,
            web_url=settings.github_url,
            api_url=settings.github_api_url,
            allowed_orgs=settings.github_orgs if not settings.allow_any_github_user else (),
            timeout=settings.upstream_timeout,
        )
    )


def build(app: Flask, settings: Settings, connector: Connector | None = None) -> Registry:
    """Every service, once; the OAuth server is bound to ``app`` (it reads its config)."""
    # In a cluster, Keys gives each entity's keys a hash tag of their own (sso/storage.py).
    store = Store(connect(settings.redis_url), settings.redis_prefix,
                  wait_replicas=settings.redis_wait_replicas)
    sealer = Sealer(settings.secret_key)
    connector = connector or github_connector(settings)
    audit = Audit(store, settings.audit_max_events)
    rules = RuleStore(store)
    records = Records(store)
    clients = ClientRegistry(store, on_revoke=records.revoke_all_client_grants)
    # Redis lost its data: every cache trusting what it held is dropped (sso/epoch.py),
    # noticed by the key ring's periodic re-check; production never re-makes keys unasked.
    epoch = DataLossWatch(store, audit)
    keys = KeyRing(store, sealer, generate_missing=not settings.is_production, watch=epoch,
                   audit=audit)
    # Tokens end with the browser session they were born in, and with a person's access;
    # the apps that session signed in to are told (back-channel logout).
    backchannel = BackchannelLogout(store, issuer=settings.issuer, records=records,
                                    clients=clients, keys=keys, audit=audit)

    def session_ended(sid_hash: str, initiator: str | None) -> int:
        # The apps are told first: they are found through the grants revoked next.
        backchannel.session_ended(sid_hash, except_client=initiator)
        return records.revoke_session_grants(sid_hash)

    sessions = SessionStore(store, idle=settings.session_idle_seconds,
                            absolute=settings.session_absolute_seconds, on_end=session_ended)
    accounts = Accounts(store=store, settings=settings, connector=connector, sealer=sealer,
                        sessions=sessions, audit=audit, rules=rules.all,
                        on_access_end=records.revoke_user_grants)
    devices = DeviceRecords(store, derive_key(settings.secret_key, "device-user-code"))
    provider = Provider(issuer=settings.issuer, records=records, accounts=accounts, keys=keys,
                        clients=clients, audit_log=audit, sessions=sessions, devices=devices)
    limiter = RateLimiter(store, settings.redis_url, settings.rate_limits)
    asserter = Asserter(settings.issuer, keys)
    for clear in (provider.verified.clear, asserter.cache.clear, clients.clear_cache,
                  rules.clear_cache, accounts.after_data_loss):
        epoch.on_loss(clear)
    backchannel.resume()
    metadata = OpenIDProviderMetadata(discovery_document(settings.issuer))
    metadata.validate()  # a malformed discovery document is a start-up error, not a surprise
    return Registry(
        settings=settings,
        store=store,
        epoch=epoch,
        sealer=sealer,
        connector=connector,
        audit=audit,
        rules=rules,
        sessions=sessions,
        accounts=accounts,
        signin=SignInFlow(store, connector, f"{settings.issuer}/auth/github/callback",
                          settings.login_state_seconds),
        admin=AdminService(settings=settings, rules=rules, accounts=accounts,
                           sessions=sessions, audit=audit, clients=clients, keys=keys,
                           connector=connector),
        clients=clients,
        keys=keys,
        records=records,
        devices=devices,
        provider=provider,
        server=build_server(provider, app,
                            device_poll_interval=settings.device_poll_interval,
                            limiter=limiter),
        discovery=dict(metadata),
        asserter=asserter,
        limiter=limiter,
        backchannel=backchannel,
        hooks=GitHubHooks(store=store, settings=settings, accounts=accounts, sessions=sessions,
                          connector=connector, audit=audit),
        readiness=Readiness(store, production=settings.is_production),
        forgetting=Forgetting(store=store, sessions=sessions, audit=audit,
                              after_days=settings.forget_after_days,
                              on_access_end=records.revoke_user_grants),
    )
