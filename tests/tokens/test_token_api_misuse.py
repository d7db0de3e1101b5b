"""Public token functions given an argument of the wrong kind raise :class:`TokenError`
with a stable code (``invalid_option``; ``invalid_claim`` for a revocation id, as
``revoke`` already refuses one), never a bare ``TypeError`` or ``AttributeError`` from
deep inside, and never an answer (a ``KeySet.get`` of a list is no missing key)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest

from policyengine.tokens import KeySet, MemoryRevocationStore, TokenError, mint, verify
from policyengine.tokens.grants import DEFAULT_LEEWAY, MAX_LEEWAY, recheck_terms

KEYS = KeySet.generate(issuer="https://auth.example")
TOKEN = mint(KEYS, issuer="https://auth.example", acting_for="besar", agent="travel-agent",
             permissions=["flights:*"], ttl=600)
GRANT = verify(KEYS, TOKEN)


def code_of(call: Callable[[], Any]) -> str:
    with pytest.raises(TokenError) as info:
        call()
    assert len(info.value.message) < 200
    return info.value.code


@pytest.mark.parametrize("kid", [[KEYS.active_kid], {"k": 1}, 5, None, b"kid", ("k",)])
def test_a_kid_that_is_no_string(kid: Any) -> None:
    assert code_of(lambda: KEYS.get(kid)) == "invalid_option"
    assert code_of(lambda: KEYS.without(kid)) == "invalid_option"
    assert kid not in KEYS  # a membership test answers False, as for any unknown kid
    if kid is not None:  # to_pem(None) is the active key
        assert code_of(lambda: KEYS.to_pem(kid)) == "invalid_option"


def test_a_string_kid_still_answers() -> None:
    assert KEYS.get(KEYS.active_kid or "") is KEYS.active_key
    assert KEYS.get("nope") is None
    assert KEYS.active_kid in KEYS and "nope" not in KEYS


@pytest.mark.parametrize("bits", ["x", "4096", 2048.0, 3072.5, True, None, [2048]])
@pytest.mark.parametrize("alg", ["RS256", "EdDSA"])
def test_generate_rsa_bits_of_the_wrong_kind(bits: Any, alg: str) -> None:
    assert code_of(lambda: KeySet.generate(alg, rsa_bits=bits)) == "invalid_option"


def test_generate_rsa_bits_int_still_works() -> None:
    assert code_of(lambda: KeySet.generate("RS256", rsa_bits=1024)) == "weak_key"
    assert KeySet.generate("RS256", rsa_bits=2048).active_key.alg == "RS256"


@pytest.mark.parametrize("other", [5, None, [KEYS.active_key], "keys"])
def test_merge_with_what_is_no_key_set(other: Any) -> None:
    assert code_of(lambda: KEYS.merge(other)) == "invalid_option"


@pytest.mark.parametrize("issuer", [5, ["https://auth.example"], b"https://auth.example"])
def test_for_issuer_of_what_is_no_issuer(issuer: Any) -> None:
    assert code_of(lambda: KEYS.for_issuer(issuer)) == "invalid_option"


@pytest.mark.parametrize("leeway", ["x", "5", None, math.nan, math.inf, -1, MAX_LEEWAY + 1,
                                    True, [5]])
def test_recheck_terms_leeway_as_verify_refuses_it(leeway: Any) -> None:
    assert code_of(lambda: recheck_terms(GRANT, leeway=leeway)) == "invalid_option"
    assert code_of(lambda: verify(KEYS, TOKEN, leeway=leeway)) == "invalid_option"


@pytest.mark.parametrize("grant", [TOKEN, None, {"hops": []}, 5])
def test_recheck_terms_of_what_is_no_grant(grant: Any) -> None:
    assert code_of(lambda: recheck_terms(grant)) == "invalid_option"


def test_recheck_terms_still_answers() -> None:
    terms = recheck_terms(GRANT)
    assert terms is not None
    lo, hi, ids = terms
    assert hi - lo == GRANT.expires_at - max(GRANT.not_before, GRANT.issued_at) \
        + 2 * DEFAULT_LEEWAY
    assert ids == (GRANT.grant_id, GRANT.jti)
    assert recheck_terms(GRANT, leeway=0) == (lo + DEFAULT_LEEWAY, hi - DEFAULT_LEEWAY, ids)


@pytest.mark.parametrize("identifier", [[1], {"a": 1}, 5, None])
def test_is_revoked_of_what_is_no_id(identifier: Any) -> None:
    store = MemoryRevocationStore(["g1"])
    assert code_of(lambda: store.is_revoked(identifier)) == "invalid_claim"


@pytest.mark.parametrize("identifiers", [5, None, [["g1"]], [{"a"}]])
def test_any_revoked_of_what_is_no_ids(identifiers: Any) -> None:
    store = MemoryRevocationStore(["g1"])
    assert code_of(lambda: store.any_revoked(identifiers)) == "invalid_claim"


def test_revocation_queries_still_answer() -> None:
    store = MemoryRevocationStore(["g1"])
    assert store.is_revoked("g1") and not store.is_revoked("g2")
    assert store.any_revoked(("g2", "g1")) and not store.any_revoked(["g2"])
    assert not store.any_revoked(())
