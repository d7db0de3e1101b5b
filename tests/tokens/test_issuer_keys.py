"""Adversarial tests: a verifying key belongs to an issuer (docs/delegation.md, "Keys and
issuers").

Each class names the attack it tries. The verifier always holds a key set with two
issuers' keys, the way a service trusting two identity providers would.
"""

from __future__ import annotations

from typing import Any

import pytest
from conftest import Clock
from hypothesis import given, settings
from hypothesis import strategies as st

from policyengine.engine import Engine
from policyengine.tokens import KeySet, TokenError, attenuate, mint, verify
from policyengine.tokens.grants import _sign, load_hop

NOW = 1_767_225_600
A, B = "https://a.example", "https://b.example"


@pytest.fixture(scope="module")
def key_a() -> KeySet:
    return KeySet.generate(issuer=A)


@pytest.fixture(scope="module")
def key_b() -> KeySet:
    return KeySet.generate(issuer=B)


def root(keys: KeySet, issuer: str = A, **kw: Any) -> str:
    args: dict[str, Any] = dict(issuer=issuer, acting_for="besar", agent="bot",
                                permissions=["payments:*"], ttl=600, now=NOW)
    args.update(kw)
    return mint(keys, **args)


def code_of(fn: Any, *args: Any, **kw: Any) -> str:
    with pytest.raises(TokenError) as info:
        fn(*args, **kw)
    return info.value.code


def unbound_signer(keys: KeySet) -> KeySet:
    """The same private key with its issuer binding stripped: what an attacker holding
    issuer B's key uses to sign any claims it likes."""
    k = keys.active_key
    return KeySet([k.bound_to(None)])


class TestOneIssuersKeySignsForAnother:
    """Issuer B's key signs a token naming issuer A (root hop, or one hop of a chain),
    with a verifier whose key set holds both issuers' keys."""

    def test_root_signed_by_the_other_issuer(self, key_a: KeySet, key_b: KeySet) -> None:
        both = key_a.merge(key_b)
        forged = root(unbound_signer(key_b), issuer=A)
        assert code_of(verify, both, forged, now=NOW, issuer=A) == "issuer_key_mismatch"
        assert code_of(verify, both, forged, now=NOW) == "issuer_key_mismatch"
        # Each issuer's own tokens still verify through the shared set.
        assert verify(both, root(key_a), now=NOW, issuer=A).issuer == A
        assert verify(both, root(both, issuer=B), now=NOW, issuer=B).issuer == B

    def test_engine_with_delegation_issuer(self, key_a: KeySet, key_b: KeySet) -> None:
        both = key_a.merge(key_b)
        engine = Engine.from_source(
            'role r: payments:*\nagent "bot": r\ndelegation {\n  issuer "' + A + '"\n}\n',
            keys=both, clock=Clock(NOW))
        good = engine.authorize("bot", "payments:pay", {}, token=root(key_a))
        assert good.allowed and good.acting_for == "besar"
        forged = root(unbound_signer(key_b), issuer=A)
        d = engine.authorize("bot", "payments:pay", {}, token=forged)
        assert (d.status, d.code) == ("denied", "invalid_token")
        assert [x.code for x in d.diagnostics] == ["issuer_key_mismatch"]

    def test_forged_hop_inside_a_chain(self, key_a: KeySet, key_b: KeySet) -> None:
        both = key_a.merge(key_b)
        parent = root(key_a)
        # B re-signs the child hop A's agent would have made: every claim is valid.
        child_by_a = attenuate(key_a, parent, agent="sub", permissions=["payments:pay"],
                               now=NOW)
        claims = load_hop(key_a, child_by_a)
        assert claims.issuer == A
        import json

        from policyengine.tokens._jws import b64decode
        payload = json.loads(b64decode(child_by_a.split(".")[1], "payload"))
        forged = _sign(unbound_signer(key_b), payload)
        assert verify(both, child_by_a, now=NOW).chain == ("besar", "bot", "sub")
        assert code_of(verify, both, forged, now=NOW) == "issuer_key_mismatch"

    @settings(max_examples=25, deadline=None)
    @given(names=st.lists(st.text(st.characters(min_codepoint=33, max_codepoint=126),
                                  min_size=1, max_size=12), min_size=2, max_size=4,
                          unique=True),
           signer=st.integers(0, 3), named=st.integers(0, 3))
    def test_any_key_verifies_only_its_issuer(self, names: list[str], signer: int,
                                              named: int) -> None:
        sets = [KeySet.generate(issuer=n) for n in names]
        trusted = sets[0]
        for other in sets[1:]:
            trusted = trusted.merge(other)
        signer %= len(names)
        named %= len(names)
        token = root(unbound_signer(sets[signer]), issuer=names[named])
        if signer == named:
            assert verify(trusted, token, now=NOW).issuer == names[named]
        else:
            assert code_of(verify, trusted, token, now=NOW) == "issuer_key_mismatch"


class TestAmbiguousKeySets:
    """Key sets that would let a key speak for an issuer nobody bound it to: unbound keys
    merged, bound and unbound mixed, a JWKS loaded for another issuer, minting for an
    issuer the key does not belong to."""

    def test_merging_unbound_sets_is_refused(self) -> None:
        a, b = KeySet.generate(), KeySet.generate()
        assert code_of(a.merge, b) == "unbound_key"
        assert code_of(a.bound_to(A).merge, b) == "unbound_key"
        assert a.bound_to(A).merge(b.bound_to(B)).issuers == {A, B}

    def test_mixing_bound_and_unbound_keys_is_refused(self, key_a: KeySet) -> None:
        loose = KeySet.generate()
        assert code_of(KeySet, [*key_a, *loose]) == "unbound_key"

    def test_jwks_carries_the_issuer(self, key_a: KeySet, key_b: KeySet) -> None:
        both = key_a.merge(key_b)
        jwks = both.public_jwks()
        assert sorted(k["iss"] for k in jwks["keys"]) == [A, B]
        loaded = KeySet.load_jwks(jwks)
        assert loaded.issuers == {A, B}
        forged = root(unbound_signer(key_b), issuer=A)
        assert code_of(verify, loaded, forged, now=NOW) == "issuer_key_mismatch"
        # Loading B's keys as A's is refused; loading unbound keys binds them.
        assert code_of(KeySet.load_jwks, key_b.public_jwks(), issuer=A) == \
            "issuer_key_mismatch"
        plain = KeySet.generate()
        assert KeySet.load_jwks(plain.public_jwks(), issuer=A).issuers == {A}
        bad = {"keys": [{**key_a.public_jwks()["keys"][0], "iss": 5}]}
        assert code_of(KeySet.load_jwks, bad) == "invalid_key"

    def test_minting_for_another_issuer(self, key_a: KeySet, key_b: KeySet) -> None:
        assert code_of(root, key_a, issuer=B) == "issuer_key_mismatch"
        both = key_a.merge(key_b)  # the active key is A's; B's signs B's tokens
        token = root(both, issuer=B)
        assert load_hop(both, token).issuer == B
        assert verify(key_b, token, now=NOW).issuer == B
        assert code_of(verify, key_a, token, now=NOW) == "unknown_kid"

    def test_rotation_keeps_the_issuer(self, key_a: KeySet) -> None:
        rotated = key_a.rotate()
        assert rotated.issuers == {A} and len(rotated) == 2
        assert verify(rotated, root(key_a), now=NOW).issuer == A

    def test_single_issuer_sets_need_no_binding(self) -> None:
        keys = KeySet.generate()
        assert verify(keys, root(keys, issuer=B), now=NOW).issuer == B
        assert keys.for_issuer(A).kids == keys.kids
