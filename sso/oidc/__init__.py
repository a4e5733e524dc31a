"""Keycard as an OpenID Connect provider (Authlib server side, Keycard storage/policy).

Modules: ``clients`` (registry), ``keys`` (signing keys), ``records`` (codes, grants,
refresh tokens, consents), ``device`` (RFC 8628 records and grant), ``tokens`` (claims
and JWTs), ``scopes``, ``grants`` (Authlib grants), ``server`` (the provider and
Authlib's server), ``endpoints`` (introspection, revocation, RP-initiated logout),
``discovery`` (the metadata document) and ``views`` (the blueprint). The pieces are
built and wired in :mod:`sso.registry`.
"""
