"""Sizes and kinds a caller or a key file hands the token package: RSA key sizes
(generated and loaded), the kinds of ``verify``'s options, and how much of a token's
permission text an ``invalid_permission`` message quotes. Each is refused with a stable
code, at once: never hours of key generation, a key that makes each verify cost
milliseconds, a misuse that reads as a token fault, or a claim copied whole."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from policyengine.tokens import KeySet, MemoryRevocationStore, TokenError, mint, verify
from policyengine.tokens._jws import MAX_SHOWN, b64encode, encode_json
from policyengine.tokens.keys import MAX_RSA_BITS, RSA_GENERATE_BITS, _int_b64

NOW = 1767225600  # 2026-01-01T00:00:00Z
ISS = "https://auth.example"
KEYS = KeySet.generate()
LIVE = mint(KEYS, issuer=ISS, acting_for="besar", agent="travel-agent",
            permissions=["flights:*"], ttl=3600, now=NOW)
EXPIRED = mint(KEYS, issuer=ISS, acting_for="besar", agent="travel-agent",
               permissions=["flights:*"], ttl=60, now=NOW - 3600)


def code_of(call: Callable[[], Any]) -> str:
    with pytest.raises(TokenError) as info:
        call()
    assert len(info.value.message) < 200
    return info.value.code


# --------------------------------------------------------------------------- RSA sizes
@pytest.mark.parametrize("bits", [10**6, 2049, 3000, 5120, 8192, 16384])
def test_generate_refuses_an_rsa_size_no_reviewer_would_pick(bits: int) -> None:
    start = time.monotonic()
    with pytest.raises(TokenError) as info:
        KeySet.generate("RS256", rsa_bits=bits)
    assert info.value.code == "invalid_option"
    assert "2048, 3072, 4096" in info.value.message
    assert time.monotonic() - start < 1  # refused, not generated (10**6: hours)


def test_generate_still_makes_the_reviewed_sizes() -> None:
    assert RSA_GENERATE_BITS == (2048, 3072, 4096)
    assert KeySet.generate("RS256", rsa_bits=3072).active_key.public.key_size == 3072
    assert code_of(lambda: KeySet.generate("RS256", rsa_bits=1024)) == "weak_key"


def _rsa_jwks(bits: int, e: int = 65537) -> dict[str, Any]:
    # A modulus that is no product of two primes loads as a public key all the same:
    # what a hostile JWKS publisher can hand a verifier.
    n = secrets.randbits(bits) | (1 << (bits - 1)) | 1
    return {"keys": [{"kty": "RSA", "n": _int_b64(n), "e": _int_b64(e)}]}


@pytest.mark.parametrize("bits", [MAX_RSA_BITS + 1, 16384])
def test_a_jwks_with_a_huge_rsa_modulus_is_refused_at_load(bits: int) -> None:
    assert code_of(lambda: KeySet.load_jwks(_rsa_jwks(bits))) == "invalid_key"


def test_a_jwks_rsa_modulus_at_the_cap_still_loads() -> None:
    assert next(iter(KeySet.load_jwks(_rsa_jwks(MAX_RSA_BITS)))).public.key_size == 8192


def test_a_huge_rsa_public_exponent_is_refused_at_load() -> None:
    # 2048 bits with a 2047-bit exponent: each verify ~25x the cost of e = 65537
    e = secrets.randbits(2047) | (1 << 2046) | 1
    assert code_of(lambda: KeySet.load_jwks(_rsa_jwks(2048, e))) == "invalid_key"
    assert code_of(lambda: KeySet.load_jwks(_rsa_jwks(2048, (1 << 256) + 1))) == "invalid_key"
    assert len(KeySet.load_jwks(_rsa_jwks(2048, (1 << 255) + 1))) == 1


def test_a_huge_private_rsa_jwk_is_refused_before_its_primes_are_recovered() -> None:
    jwk = _rsa_jwks(16384)["keys"][0]
    jwk["d"] = _int_b64(secrets.randbits(16000) | 1)
    start = time.monotonic()
    assert code_of(lambda: KeySet.load_jwks({"keys": [jwk]})) == "invalid_key"
    assert time.monotonic() - start < 1


def test_a_pem_with_a_huge_rsa_modulus_is_refused_at_load() -> None:
    n = secrets.randbits(16384) | (1 << 16383) | 1
    pem = rsa.RSAPublicNumbers(65537, n).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert code_of(lambda: KeySet.load_pem(pem)) == "invalid_key"


# --------------------------------------------------------------------------- verify options
@pytest.mark.parametrize("store", [5, "memory:", object(), [LIVE], {"any_revoked": None}])
def test_revocations_that_is_no_store_is_a_misuse(store: Any) -> None:
    KEYS.clear_cache()
    assert code_of(lambda: verify(KEYS, LIVE, now=NOW, revocations=store)) == "invalid_option"
    verify(KEYS, LIVE, now=NOW)  # cached: the cache hit says the same
    assert code_of(lambda: verify(KEYS, LIVE, now=NOW, revocations=store)) == "invalid_option"
    # the same answer whatever the token's window says, cold or cached
    assert code_of(lambda: verify(KEYS, EXPIRED, now=NOW, revocations=store)) == "invalid_option"


def test_a_failing_store_is_still_revocation_unavailable() -> None:
    class Broken:
        def any_revoked(self, ids: object) -> bool:
            raise AttributeError("the backend went away")

    assert code_of(lambda: verify(KEYS, LIVE, now=NOW, revocations=Broken())) \
        == "revocation_unavailable"
    assert verify(KEYS, LIVE, now=NOW, revocations=MemoryRevocationStore()).subject \
        == "travel-agent"


@pytest.mark.parametrize("name", ["issuer", "audience"])
@pytest.mark.parametrize("value", [[1], [ISS], 5, b"https://auth.example", {"a": 1}, ("x",)])
def test_an_issuer_or_audience_that_is_no_string_is_a_misuse(name: str, value: Any) -> None:
    verify(KEYS, LIVE, now=NOW)
    assert code_of(lambda: verify(KEYS, LIVE, now=NOW, **{name: value})) == "invalid_option"
    assert code_of(lambda: verify(KEYS, EXPIRED, now=NOW, **{name: value})) \
        == "invalid_option"


def test_string_issuer_and_audience_still_compare() -> None:
    assert code_of(lambda: verify(KEYS, LIVE, now=NOW, issuer="other")) == "issuer_mismatch"
    assert code_of(lambda: verify(KEYS, LIVE, now=NOW, audience="other")) \
        == "audience_mismatch"
    assert verify(KEYS, LIVE, now=NOW, issuer=ISS).issuer == ISS


@pytest.mark.parametrize("rates", [5, "EUR", {"USD": "0.9"}])
def test_rates_that_is_no_rate_source_is_a_misuse(rates: Any) -> None:
    KEYS.clear_cache()
    assert code_of(lambda: verify(KEYS, LIVE, now=NOW, rates=rates)) == "invalid_option"


# --------------------------------------------------------------------------- messages
def _signed(permissions: list[Any]) -> str:
    key = KEYS.active_key
    claims = {"iss": ISS, "sub": "travel-agent", "iat": NOW, "nbf": NOW, "exp": NOW + 60,
              "jti": "j", "grant_id": "g", "acting_for": "besar",
              "delegation_chain": ["besar", "travel-agent"],
              "delegated_permissions": permissions, "depth": 0, "max_depth": 1}
    header = {"alg": key.alg, "typ": "delegation+jwt", "kid": key.kid}
    signing_input = f"{b64encode(encode_json(header))}.{b64encode(encode_json(claims))}"
    return f"{signing_input}.{b64encode(key.sign(signing_input.encode('ascii')))}"


@pytest.mark.parametrize("bad", ["x" * 10000 + " ", "flights:" + "é" * 1000,
                                 ["nested"] * 500, {"k" * 5000: 1}])
def test_an_invalid_permission_quotes_at_most_64_characters_of_the_token(bad: Any) -> None:
    with pytest.raises(TokenError) as info:
        verify(KEYS, _signed([bad]), now=NOW)
    assert info.value.code == "invalid_permission"
    assert len(info.value.message) < 64 + 80
    assert "..." in info.value.message


def test_a_short_invalid_permission_is_quoted_whole() -> None:
    with pytest.raises(TokenError) as info:
        verify(KEYS, _signed(["no spaces"]), now=NOW)
    assert "'no spaces'" in info.value.message
    assert MAX_SHOWN == 64


def test_mint_quotes_a_long_bad_permission_in_part() -> None:
    with pytest.raises(TokenError) as info:
        mint(KEYS, issuer=ISS, acting_for="besar", agent="a", permissions=["y" * 5000 + "!"],
             ttl=60, now=NOW)
    assert info.value.code == "invalid_permission"
    assert len(info.value.message) < 64 + 80
