"""Compact JWS signing (RFC 7515 §7.1) with a key's cryptography object, set up once.

joserfc builds, checks and signs through several layers on every call: a third of an
ES256 access token's cost (bench/inprocess.py: 34 µs against 20 µs for ES256; the RSA
signature itself dominates RS256). Keycard's own tokens have a fixed shape, so this signs
them directly: the header encoded once per ``typ``, the claims with orjson, the signature
from the ``RSAPrivateKey`` or ``EllipticCurvePrivateKey`` joserfc already loaded (the
issue's "precomputed key object"). Verification stays with joserfc
(:func:`sso.oidc.tokens.verify_jwt`), and tests/oidc/test_jws.py checks what this signs
with it.
"""

from __future__ import annotations

import base64
from typing import Any

import orjson
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from joserfc.jwk import ECKey, RSAKey

_SHA256 = hashes.SHA256()
_ECDSA = ec.ECDSA(_SHA256)
_PKCS1 = padding.PKCS1v15()


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


class Signer:
    """Signs JWTs with one key (RS256 or ES256, P-256), naming it by ``kid``."""

    def __init__(self, key: RSAKey | ECKey) -> None:
        if not key.kid:
            raise ValueError("a signing key needs a kid: verifiers pick the key by it")
        self.key = key
        self.kid = str(key.kid)
        private = key.private_key
        if isinstance(private, rsa.RSAPrivateKey):
            self.alg = "RS256"
            self._rsa: rsa.RSAPrivateKey | None = private
            self._ec: ec.EllipticCurvePrivateKey | None = None
        elif isinstance(private, ec.EllipticCurvePrivateKey) and isinstance(
                private.curve, ec.SECP256R1):
            self.alg, self._rsa, self._ec = "ES256", None, private
        else:
            raise ValueError("an RS256 or ES256 private key is required")
        self._headers: dict[str, bytes] = {}

    def sign(self, claims: dict[str, Any], typ: str = "JWT") -> str:
        header = self._headers.get(typ)
        if header is None:
            header = self._headers[typ] = _b64(orjson.dumps(
                {"alg": self.alg, "typ": typ, "kid": self.kid}))
        signing_input = header + b"." + _b64(orjson.dumps(claims))
        if self._ec is not None:
            # RFC 7518 §3.4: R and S as two 32-byte big-endian integers, not DER.
            r, s = utils.decode_dss_signature(self._ec.sign(signing_input, _ECDSA))
            signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        else:
            assert self._rsa is not None
            signature = self._rsa.sign(signing_input, _PKCS1, _SHA256)
        return (signing_input + b"." + _b64(signature)).decode()
