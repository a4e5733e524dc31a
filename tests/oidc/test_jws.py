"""sso/oidc/jws.py: what the direct signer makes is a JWS joserfc (and so every relying
party's library) verifies, with the header Keycard's tokens always carried."""

from __future__ import annotations

import pytest
from joserfc import jwt
from joserfc.errors import BadSignatureError
from joserfc.jwk import ECKey, KeySet, OKPKey, RSAKey

from sso.oidc.jws import Signer
from sso.oidc.tokens import verify_jwt

CLAIMS = {"iss": "https://sso.acme.test", "sub": "8f1c", "aud": ["app"], "exp": 4102444800,
          "iat": 1795849886, "name": "Zoë Ångström", "groups": ["acme/platform"],
          "email_verified": True}


@pytest.mark.parametrize("key", [RSAKey.generate_key(2048, parameters={"kid": "rs-1"}),
                                 ECKey.generate_key("P-256", parameters={"kid": "es-1"})],
                         ids=["RS256", "ES256"])
@pytest.mark.parametrize("typ", ["at+jwt", "JWT", "logout+jwt"])
def test_signed_tokens_verify_with_joserfc_and_say_alg_kid_and_typ(key, typ):
    signer = Signer(key)
    token = signer.sign(CLAIMS, typ)
    decoded = jwt.decode(token, key, algorithms=[signer.alg])
    assert decoded.header == {"alg": signer.alg, "typ": typ, "kid": key.kid}
    assert decoded.claims == CLAIMS  # non-ASCII names included
    assert signer.sign(CLAIMS, typ) != token or signer.alg == "RS256"  # ECDSA is randomised
    expected = "at+jwt" if typ == "at+jwt" else None
    assert verify_jwt(token, KeySet([key]), typ=expected)["sub"] == "8f1c"


def test_a_signature_by_another_key_of_the_same_kid_does_not_verify():
    mine = ECKey.generate_key("P-256", parameters={"kid": "es-1"})
    forger = ECKey.generate_key("P-256", parameters={"kid": "es-1"})
    with pytest.raises(BadSignatureError):
        jwt.decode(Signer(forger).sign(CLAIMS), mine, algorithms=["ES256"])


@pytest.mark.parametrize("key", [ECKey.generate_key("P-384", parameters={"kid": "p"}),
                                 OKPKey.generate_key("Ed25519", parameters={"kid": "o"})],
                         ids=["P-384", "Ed25519"])
def test_only_rs256_and_es256_keys_are_taken(key):
    with pytest.raises(ValueError, match="RS256 or ES256"):
        Signer(key)


def test_a_key_without_a_kid_is_refused():
    with pytest.raises(ValueError, match="kid"):
        Signer(ECKey.generate_key("P-256"))
