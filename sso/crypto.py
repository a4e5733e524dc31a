"""Secrets: generation, hashing for storage, and encryption at rest.

Bearer secrets (state, session ids, codes, refresh tokens, client secrets) carry
at least 256 bits from :mod:`secrets`, so a plain SHA-256 is enough to make a
leaked Redis dump useless; upstream tokens and private keys must be readable
again, so they are encrypted with a key derived from ``SSO_SECRET_KEY``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

# The JOSE algorithms Keycard signs with, and the only ones it accepts: never "none",
# never HMAC (a public client could forge with a shared secret).
SIGNING_ALGS = ("RS256", "ES256")


def new_secret(nbytes: int = 32) -> str:
    """A URL-safe random string with ``8 * nbytes`` bits of entropy."""
    return secrets.token_urlsafe(nbytes)


def hash_secret(value: str) -> str:
    """The storage form of a bearer secret: unpadded base64url SHA-256."""
    digest = hashlib.sha256(value.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def same(a: str | bytes, b: str | bytes) -> bool:
    """Constant-time equality for secrets."""
    a_bytes = a.encode() if isinstance(a, str) else a
    b_bytes = b.encode() if isinstance(b, str) else b
    return hmac.compare_digest(a_bytes, b_bytes)


def derive_key(secret_key: str, purpose: str, length: int = 32) -> bytes:
    """A sub-key per purpose, so one leaked derived key reveals nothing else."""
    return HKDF(
        algorithm=hashes.SHA256(), length=length, salt=None, info=f"keycard:{purpose}".encode()
    ).derive(secret_key.encode())


class DecryptionError(Exception):
    """Ciphertext was tampered with or encrypted under another ``SSO_SECRET_KEY``."""


class Sealer:
    """Authenticated encryption (Fernet: AES-128-CBC + HMAC-SHA256) for data at rest."""

    def __init__(self, secret_key: str, purpose: str = "at-rest-v1") -> None:
        # Another purpose, another key: a backup file (``backup-v1``) cannot be opened as a
        # record at rest, nor the reverse.
        key = base64.urlsafe_b64encode(derive_key(secret_key, purpose))
        self._fernet = Fernet(key)

    def seal(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def open(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken as exc:
            raise DecryptionError("cannot decrypt: wrong SSO_SECRET_KEY or tampered data") from exc
