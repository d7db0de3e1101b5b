"""Known-answer vectors (RFC 8037) and interop with an independent JOSE library."""

from __future__ import annotations

import json

import pytest

from policyengine.tokens import KeySet, mint, verify
from policyengine.tokens._jws import b64encode

jwcrypto = pytest.importorskip("jwcrypto")
from jwcrypto import jwk, jws  # type: ignore[import-untyped]  # noqa: E402

# RFC 8037 Appendix A.1 / A.3 / A.4
RFC_JWK = {
    "kty": "OKP",
    "crv": "Ed25519",
    "d": "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A",
    "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
}
RFC_THUMBPRINT = "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
RFC_JWS = (
    "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc."
    "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"
)
NOW = 1767225600


def test_rfc8037_thumbprint_is_the_default_kid() -> None:
    keys = KeySet.load_jwks({"keys": [RFC_JWK]})
    assert keys.active_kid == RFC_THUMBPRINT


def test_rfc8037_signature_byte_exact() -> None:
    key = KeySet.load_jwks({"keys": [RFC_JWK]}).active_key
    header = b64encode(b'{"alg":"EdDSA"}')
    payload = b64encode(b"Example of Ed25519 signing")
    assert f"{header}.{payload}" == RFC_JWS.rsplit(".", 1)[0]
    signature = key.sign(f"{header}.{payload}".encode())
    assert f"{header}.{payload}.{b64encode(signature)}" == RFC_JWS
    assert key.verify(RFC_JWS.rsplit(".", 1)[0].encode(), signature)


def test_rfc8037_validation_with_public_key_only() -> None:
    public = KeySet.load_jwks({"keys": [{k: v for k, v in RFC_JWK.items() if k != "d"}]})
    head, _, sig = RFC_JWS.rpartition(".")
    from policyengine.tokens._jws import b64decode

    assert public.active_kid is None  # verification-only
    assert public.get(RFC_THUMBPRINT) is not None
    assert public.get(RFC_THUMBPRINT).verify(head.encode(), b64decode(sig))  # type: ignore[union-attr]


@pytest.mark.parametrize("alg", ["EdDSA", "ES256", "RS256"])
def test_our_tokens_verify_with_jwcrypto(alg: str) -> None:
    keys = KeySet.generate(alg)
    token = mint(keys, issuer="iss", acting_for="besar", agent="a", permissions=["x:*"],
                 ttl=600, now=NOW)
    pub = jwk.JWKSet.from_json(json.dumps(keys.public_jwks()))
    obj = jws.JWS()
    obj.deserialize(token)
    obj.verify(pub.get_key(keys.active_kid), alg=alg)
    assert json.loads(obj.payload)["sub"] == "a"
    assert obj.jose_header == {"alg": alg, "typ": "delegation+jwt", "kid": keys.active_kid}


@pytest.mark.parametrize("alg", ["EdDSA", "ES256", "RS256"])
def test_jwcrypto_tokens_verify_here(alg: str) -> None:
    if alg == "EdDSA":
        key = jwk.JWK.generate(kty="OKP", crv="Ed25519", kid="k1")
    elif alg == "ES256":
        key = jwk.JWK.generate(kty="EC", crv="P-256", kid="k1")
    else:
        key = jwk.JWK.generate(kty="RSA", size=2048, kid="k1")
    claims = {
        "iss": "iss", "sub": "a", "iat": NOW, "nbf": NOW, "exp": NOW + 600, "jti": "j",
        "grant_id": "g", "acting_for": "besar", "delegation_chain": ["besar", "a"],
        "delegated_permissions": ["x:*"], "depth": 0, "max_depth": 1,
    }
    obj = jws.JWS(json.dumps(claims).encode())
    obj.add_signature(key, alg=alg, protected={"alg": alg, "typ": "delegation+jwt", "kid": "k1"})
    token = obj.serialize(compact=True)
    keys = KeySet.load_jwks({"keys": [json.loads(key.export_public())]})
    grant = verify(keys, token, now=NOW)
    assert grant.chain == ("besar", "a")
    assert grant.covers("x:y")
