"""Keycard as an OpenID Connect provider (Authlib server side, Keycard storage/policy).

Modules: ``clients`` (registry), ``keys`` (signing keys), ``records`` (codes, grants,
refresh tokens, consents), ``tokens`` (claims and JWTs), ``grants`` (Authlib grants),
``server`` (assembly and endpoints), ``views`` (the blueprint).
"""

from __future__ import annotations

from authlib.oidc.discovery import OpenIDProviderMetadata
from flask import Flask

from sso.oidc.clients import ClientRegistry
from sso.oidc.keys import KeyRing
from sso.oidc.records import Records
from sso.oidc.server import Provider, build_server
from sso.oidc.views import bp, discovery_document
from sso.registry import Services


def init_app(app: Flask, svc: Services) -> Provider:
    issuer = svc.settings.issuer
    clients = ClientRegistry(svc.store)
    keys = KeyRing(svc.store, svc.sealer)
    records = Records(svc.store)
    provider = Provider(issuer=issuer, records=records, accounts=svc.accounts, keys=keys,
                        clients=clients, audit_log=svc.audit)
    metadata = OpenIDProviderMetadata(discovery_document(issuer))
    metadata.validate()  # a malformed discovery document is a start-up error, not a surprise
    app.extensions.update({
        "keycard.clients": clients,
        "keycard.keys": keys,
        "keycard.records": records,
        "keycard.oidc": build_server(provider, app),
        "keycard.discovery": dict(metadata),
    })
    # Ending access anywhere (sign-out everywhere, deprovisioning, admin) ends tokens too.
    svc.accounts.token_revokers.append(records.revoke_user_grants)
    app.register_blueprint(bp)
    return provider
