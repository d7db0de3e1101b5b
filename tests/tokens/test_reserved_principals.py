"""No delegation grant names a principal in the ``tenant:`` namespace: those are the
budget wires' tenant-scoped principals (a Cycles agent ``tenant:acme/agent:bot``, an
actguard user ``tenant:acme/user_id:alice``). A grant naming one as its holder or as
whom it acts for would let the token's holder act as, or for, that principal on the
tracengent wire (``attenuate``'s holder is the caller's choice there): mint, attenuate
and verify refuse it with ``reserved_principal``."""

from __future__ import annotations

import pytest

import policyengine as pe
from policyengine.tokens import attenuate, mint, verify
from policyengine.tokens.grants import _sign
from policyengine.tokens.keys import KeySet

KEYS = KeySet.generate()
RESERVED = ["tenant:acme", "tenant:acme/agent:bot", "tenant:/user_id:alice", "tenant:"]


def root(agent: str = "planner", acting_for: str = "besar") -> str:
    return mint(KEYS, issuer="https://auth.example", acting_for=acting_for, agent=agent,
                permissions=["llm:*"], ttl=600)


@pytest.mark.parametrize("name", RESERVED)
def test_mint_refuses_a_reserved_holder_or_person(name: str) -> None:
    for kw in ({"agent": name}, {"acting_for": name}):
        with pytest.raises(pe.TokenError) as err:
            root(**kw)
        assert err.value.code == "reserved_principal"


@pytest.mark.parametrize("name", RESERVED)
def test_attenuate_refuses_a_reserved_holder(name: str) -> None:
    with pytest.raises(pe.TokenError) as err:
        attenuate(KEYS, root(), agent=name, permissions=["llm:chat"])
    assert err.value.code == "reserved_principal"


def test_verify_refuses_a_grant_signed_for_a_reserved_principal() -> None:
    """A grant signed before (or by another minter) is refused when read, too."""
    good = verify(KEYS, root())
    claims = {"iss": "https://auth.example", "sub": "tenant:acme/agent:bot",
              "iat": good.issued_at, "nbf": good.issued_at, "exp": good.expires_at,
              "jti": "j-1", "grant_id": "g-1", "acting_for": "besar",
              "delegation_chain": ["besar", "tenant:acme/agent:bot"],
              "delegated_permissions": ["llm:*"], "depth": 0, "max_depth": 3}
    forged = _sign(KEYS, claims)  # signed by the key, as no mint here would
    with pytest.raises(pe.TokenError) as err:
        verify(KEYS, forged)
    assert err.value.code == "reserved_principal"
    engine = pe.Engine.from_source("namespace t\nagent \"planner\": r\n"
                                   "role r: llm:*\n", keys=KEYS)
    assert engine.authorize("planner", "llm:chat", token=root()).allowed
    d = engine.authorize("tenant:acme/agent:bot", "llm:chat", token=forged)
    assert not d.allowed and "reserved_principal" in [x.code for x in d.diagnostics]
    assert root("tenant-ish:bot") and root("bot", "tenantacme")  # only the namespace
