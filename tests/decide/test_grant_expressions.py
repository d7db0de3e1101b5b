"""Delegation shaped by policy: ``grant.*`` in conditions and ``child_max_ttl``.

A policy can require a sub-agent to act only under delegation (``unless
grant.delegated``), bound the depth it acts at, the principal it acts for, or the chain
it came through; sub-agents' tokens can be held to a shorter lifetime than the root's.
"""

from __future__ import annotations

from typing import Any

import pytest
from conftest import Clock, codes_of
from hypothesis import given, settings
from hypothesis import strategies as st

from policyengine.engine import Engine
from policyengine.lang import format_source
from policyengine.tokens import KeySet, attenuate, mint

NOW = 1_767_225_600
ISS = "https://auth.example"

POLICY = """namespace d
role worker: payments:*, docs:*
agent "lead": worker
agent "sub": worker
forbid sub-only-delegated: * for agent "sub" unless grant.delegated
forbid too-deep: payments:* when grant.delegated and grant.depth > 1
forbid not-for-besar: payments:* when grant.delegated and grant.acting_for != "besar"
forbid via-intern: docs:* when grant.delegated and "intern" in grant.chain
permit issuer-docs: docs:read when grant.issuer == "https://auth.example"
delegation {
  max_ttl 1h
  child_max_ttl 10m
}
"""


@pytest.fixture(scope="module")
def keys() -> KeySet:
    return KeySet.generate()


@pytest.fixture
def engine(keys: KeySet) -> Engine:
    return Engine.from_source(POLICY, name="d.policy", keys=keys, clock=Clock(NOW))


def root(keys: KeySet, acting_for: str = "besar", agent: str = "lead", ttl: int = 3600,
         **kw: Any) -> str:
    return mint(keys, issuer=ISS, acting_for=acting_for, agent=agent,
                permissions=["payments:*", "docs:*"], ttl=ttl, now=NOW, **kw)


def child(keys: KeySet, parent: str, agent: str, ttl: int = 600) -> str:
    return attenuate(keys, parent, agent=agent, permissions=["payments:*", "docs:*"],
                     ttl=ttl, now=NOW)


class TestGrantInConditions:
    """Requests with and without a delegation against rules reading ``grant.*``."""

    def test_sub_agent_acts_only_under_delegation(self, engine: Engine, keys: KeySet
                                                  ) -> None:
        d = engine.authorize("sub", "payments:pay")
        assert (d.status, d.code, d.rules) == ("denied", "forbidden", ("d.sub-only-delegated",))
        delegated = engine.authorize("sub", "payments:pay",
                                     token=child(keys, root(keys), "sub"))
        assert delegated.allowed and delegated.chain == ("besar", "lead", "sub")
        # The lead may act on its own authority.
        assert engine.authorize("lead", "payments:pay").allowed

    def test_depth_acting_for_and_chain(self, engine: Engine, keys: KeySet) -> None:
        tok = root(keys)
        deep = child(keys, child(keys, tok, "intern"), "sub")
        d = engine.authorize("sub", "payments:pay", token=deep)
        assert (d.code, d.rules) == ("forbidden", ("d.too-deep",))
        d = engine.authorize("lead", "payments:pay", token=root(keys, acting_for="mallory"))
        assert (d.code, d.rules) == ("forbidden", ("d.not-for-besar",))
        d = engine.authorize("sub", "docs:write", token=deep)
        assert (d.code, d.rules) == ("forbidden", ("d.via-intern",))

    def test_a_permit_on_the_grant_needs_one(self, keys: KeySet) -> None:
        eng = Engine.from_source('agent "bot"\npermit p: docs:read when grant.issuer == "'
                                 + ISS + '"\n', keys=keys, clock=Clock(NOW))
        tok = root(keys, agent="bot")
        assert eng.authorize("bot", "docs:read", token=tok).allowed
        d = eng.authorize("bot", "docs:read")  # no grant: the permit cannot apply
        assert (d.status, d.code) == ("denied", "no_permit")
        assert [x.code for x in d.diagnostics] == ["missing_attribute"]

    def test_reading_a_grant_field_without_a_grant_fails_closed(self, keys: KeySet
                                                                 ) -> None:
        eng = Engine.from_source('role r: a:*\nagent "bot": r\n'
                                 "forbid f: a:* when grant.depth > 0\n", keys=keys,
                                 clock=Clock(NOW))
        d = eng.authorize("bot", "a:x")
        assert (d.status, d.code) == ("denied", "missing_attribute")
        assert eng.authorize("bot", "a:x", token=mint(
            keys, issuer=ISS, acting_for="u", agent="bot", permissions=["a:*"], ttl=60,
            now=NOW)).allowed

    @settings(max_examples=30, deadline=None)
    @given(depth=st.integers(0, 3), delegated=st.booleans())
    def test_a_forbid_on_depth_never_lets_a_deeper_chain_in(self, keys: KeySet, depth: int,
                                                            delegated: bool) -> None:
        eng = Engine.from_source(POLICY + 'agent "a1": worker\nagent "a2": worker\n',
                                 name="d.policy", keys=keys, clock=Clock(NOW))
        agents = ["lead", "a1", "a2", "sub"][: depth + 1]
        tok = root(keys, agent=agents[0])
        for agent in agents[1:]:
            tok = child(keys, tok, agent)
        d = eng.authorize(agents[-1], "payments:pay", token=tok if delegated else None)
        if not delegated:
            assert d.allowed == (agents[-1] != "sub")
        else:
            assert d.allowed == (depth <= 1)


class TestGrantInPolicyText:
    """``grant`` in policy text: unknown fields, types, ``has()``, formatting."""

    @pytest.mark.parametrize(("expr", "code"), [
        ("grant.subject == \"x\"", "E111"),
        ("grant.depth.x == 1", "E111"),
        ("grant == 1", "E111"),
        ("grant.depth == \"one\"", "E108"),
        ("has(grant.depth)", "E108"),
    ])
    def test_bad_uses_are_positioned_errors(self, expr: str, code: str) -> None:
        found = codes_of(("main.policy", f'agent "a"\npermit p: a:b when {expr}\n'))
        assert [c for c, _, _ in found] == [code]
        assert all(line == 2 for _, line, _ in found)

    def test_fmt_round_trip(self) -> None:
        text = ("permit p: a:b when grant.delegated and grant.depth <= 1\n\n"
                "delegation {\n  max_ttl 1h\n  child_max_ttl 10m\n}\n")
        assert format_source(text) == text


class TestChildMaxTtl:
    """Sub-agent tokens that live longer than ``child_max_ttl`` while the root may live
    ``max_ttl``."""

    def test_root_and_children_have_their_own_ceiling(self, engine: Engine, keys: KeySet
                                                      ) -> None:
        tok = root(keys, ttl=3600)
        assert engine.authorize("lead", "payments:pay", token=tok).allowed
        assert engine.authorize("sub", "payments:pay", token=child(keys, tok, "sub", 600)
                                ).allowed
        d = engine.authorize("sub", "payments:pay", token=child(keys, tok, "sub", 601))
        assert d.code == "invalid_token"
        assert [x.code for x in d.diagnostics] == ["ttl_exceeded"]
        assert "child_max_ttl" in d.diagnostics[0].message
        d = engine.authorize("lead", "payments:pay", token=root(keys, ttl=3601))
        assert [x.code for x in d.diagnostics] == ["ttl_exceeded"]

    def test_without_child_max_ttl_children_share_max_ttl(self, keys: KeySet) -> None:
        eng = Engine.from_source(POLICY.replace("  child_max_ttl 10m\n", ""),
                                 name="d.policy", keys=keys, clock=Clock(NOW))
        tok = root(keys, ttl=3600)
        assert eng.authorize("sub", "payments:pay", token=child(keys, tok, "sub", 3600)
                             ).allowed

    def test_out_of_range_is_e125(self) -> None:
        found = codes_of(("main.policy", "delegation {\n  child_max_ttl 400d\n}\n"))
        assert [c for c, _, _ in found] == ["E125"]
