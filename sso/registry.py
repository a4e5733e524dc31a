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
from sso.forgetting import Forgetting
from sso.login.flow import SignInFlow
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
    readiness: Readiness
    forgetting: Forgetting


def registry(app: Flask | None = None) -> Registry:
    found: Registry = (app or current_app).extensions[EXTENSION]
    return found


def redis_prefix(settings: Settings) -> str:
    prefix = settings.redis_prefix
    if "+cluster" in settings.redis_url.split("://", 1)[0] and "{" not in prefix:
        # Scripts and transactions touch several keys: in a cluster they must share a slot.
        prefix = "{" + prefix.rstrip(":") + "}:"
    return prefix


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
    store = Store(connect(settings.redis_url), redis_prefix(settings))
    sealer = Sealer(settings.secret_key)
    connector = connector or github_connector(settings)
    audit = Audit(store, settings.audit_max_events)
    rules = RuleStore(store)
    records = Records(store)
    # Tokens end with the browser session they were born in, and with a person's access.
    sessions = SessionStore(store, idle=settings.session_idle_seconds,
                            absolute=settings.session_absolute_seconds,
                            on_end=records.revoke_session_grants)
    accounts = Accounts(store=store, settings=settings, connector=connector, sealer=sealer,
                        sessions=sessions, audit=audit, rules=rules.all,
                        on_access_end=records.revoke_user_grants)
    clients = ClientRegistry(store, on_revoke=records.revoke_all_client_grants)
    keys = KeyRing(store, sealer)
    devices = DeviceRecords(store, derive_key(settings.secret_key, "device-user-code"))
    provider = Provider(issuer=settings.issuer, records=records, accounts=accounts, keys=keys,
                        clients=clients, audit_log=audit, sessions=sessions, devices=devices)
    limiter = RateLimiter(store, settings.redis_url, settings.rate_limits)
    metadata = OpenIDProviderMetadata(discovery_document(settings.issuer))
    metadata.validate()  # a malformed discovery document is a start-up error, not a surprise
    return Registry(
        settings=settings,
        store=store,
        sealer=sealer,
        connector=connector,
        audit=audit,
        rules=rules,
        sessions=sessions,
        accounts=accounts,
        signin=SignInFlow(store, connector, f"{settings.issuer}/auth/github/callback",
                          settings.login_state_seconds),
        admin=AdminService(settings=settings, rules=rules, accounts=accounts,
                           sessions=sessions, audit=audit),
        clients=clients,
        keys=keys,
        records=records,
        devices=devices,
        provider=provider,
        server=build_server(provider, app,
                            device_poll_interval=settings.device_poll_interval,
                            limiter=limiter),
        discovery=dict(metadata),
        asserter=Asserter(settings.issuer, keys),
        limiter=limiter,
        readiness=Readiness(store, production=settings.is_production),
        forgetting=Forgetting(store=store, sessions=sessions, audit=audit,
                              after_days=settings.forget_after_days,
                              on_access_end=records.revoke_user_grants),
    )
