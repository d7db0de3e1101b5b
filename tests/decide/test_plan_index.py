"""The rule index and the plan cache (issue 10, item 8).

A plan is resolved from rules indexed by permission pattern *and* by scope (role, agent),
so a miss never scans rules scoped to someone else. The property: for random policies,
principals and permissions, the plan equals the one a full scan of every rule gives,
with matching by :func:`policyengine.permissions.permission_matches` (the agent SDKs'
matcher) and scope as docs/language.md states it. The cache is bounded and evicts one
plan at a time, keeping the plans in use.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policyengine import Engine
from policyengine.decide import _compiled
from policyengine.decide._compiled import PLAN_CACHE_SIZE
from policyengine.permissions import permission_matches

PERMISSIONS = ("docs:read", "docs:write", "docs:a:b", "docs:a:c", "mail:send", "mail:a:b",
               "x", "docs")
PATTERNS = ("*", "docs:*", "docs:a:*", "mail:*", "docs:read", "docs:a:b", "mail:send", "x",
            "docs")
ROLES = ("r0", "r1", "r2", "r3")
AGENTS = ("a0", "a1", "a2", "a3")
PRINCIPALS = (*AGENTS, "stranger")


@dataclass(frozen=True)
class RuleSpec:
    effect: str
    patterns: tuple[str, ...]
    roles: tuple[str, ...]
    agents: tuple[str, ...]


@dataclass(frozen=True)
class PolicySpec:
    role_patterns: dict[str, tuple[str, ...]]
    agent_roles: dict[str, tuple[str, ...]]
    rules: tuple[RuleSpec, ...]

    def text(self) -> str:
        lines = ["namespace t"]
        for role, pats in self.role_patterns.items():
            lines.append(f"role {role}: {', '.join(pats)}")
        for agent, roles in self.agent_roles.items():
            lines.append(f'agent "{agent}": {", ".join(roles)}')
        for i, r in enumerate(self.rules):
            scope = [f"role {x}" for x in r.roles] + [f'agent "{x}"' for x in r.agents]
            tail = f" for {', '.join(scope)}" if scope else ""
            lines.append(f"{r.effect} p{i}: {', '.join(r.patterns)}{tail}")
        return "\n".join(lines) + "\n"


def distinct(items: tuple[str, ...], min_size: int, max_size: int) -> st.SearchStrategy[
        tuple[str, ...]]:
    return st.lists(st.sampled_from(items), min_size=min_size, max_size=max_size,
                    unique=True).map(tuple)


rule_specs = st.builds(RuleSpec, st.sampled_from(("permit", "forbid", "approval")),
                       distinct(PATTERNS, 1, 3), distinct(ROLES, 0, 2),
                       distinct(AGENTS, 0, 2))
policy_specs = st.builds(
    PolicySpec,
    st.dictionaries(st.sampled_from(ROLES), distinct(PATTERNS, 1, 2), min_size=1),
    st.dictionaries(st.sampled_from(AGENTS), distinct(ROLES, 1, 3)),
    st.lists(rule_specs, max_size=12).map(tuple),
)


def covered(spec: PolicySpec) -> PolicySpec:
    """Scopes and agents may only name declared roles and agents: keep those."""
    declared = set(spec.role_patterns)
    agents = {a: kept for a, roles in spec.agent_roles.items()
              if (kept := tuple(r for r in roles if r in declared))}
    rules = tuple(RuleSpec(r.effect, r.patterns, tuple(x for x in r.roles if x in declared),
                           tuple(x for x in r.agents if x in agents)) for r in spec.rules)
    return PolicySpec(spec.role_patterns, agents, rules)


def full_scan(spec: PolicySpec, principal: str, permission: str) -> dict[str, list[str]]:
    """The rules that can decide, by effect, from every rule in declaration order."""
    held = set(spec.agent_roles.get(principal, ()))
    out: dict[str, list[str]] = {"permit": [], "forbid": [], "approval": []}
    for role, pats in spec.role_patterns.items():  # role grants come first
        if role in held and any(permission_matches(p, permission) for p in pats):
            out["permit"].append(f"role:{role}")
    for i, r in enumerate(spec.rules):
        in_scope = (not r.roles and not r.agents) or principal in r.agents or bool(
            held & set(r.roles))
        if in_scope and any(permission_matches(p, permission) for p in r.patterns):
            out[r.effect].append(f"t.p{i}")
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy_specs.map(covered), st.lists(st.tuples(st.sampled_from(PRINCIPALS),
                                                     st.sampled_from(PERMISSIONS)),
                                           min_size=1, max_size=8))
def test_plan_from_the_index_equals_a_full_scan(spec: PolicySpec,
                                                requests: list[tuple[str, str]]) -> None:
    engine = Engine.from_source(spec.text())
    for principal, permission in requests:
        expected = full_scan(spec, principal, permission)
        plan = engine.policy.plan(principal, permission)
        assert [r.qid for r in plan.permits] == expected["permit"]
        assert [r.qid for r in plan.forbids] == expected["forbid"]
        assert [r.qid for r in plan.approvals] == expected["approval"]
        # and the decision follows: forbid > approval > permit > default deny
        decision = engine.authorize(principal, permission)
        if expected["forbid"]:
            assert decision.code == "forbidden"
        elif not expected["permit"]:
            assert decision.code == "no_permit"
        elif expected["approval"]:
            assert decision.status == "pending_approval"
        else:
            assert decision.allowed


def test_a_miss_needs_only_the_rules_of_the_principal() -> None:
    """2,000 rules name the permission, each for its own role: the plan of one agent
    holds its own rule and the unscoped ones, whichever way it is resolved."""
    lines = ["namespace big", "role base: other:x", "permit everyone: docs:read"]
    for i in range(2_000):
        lines += [f"role r{i}: other:x", f'agent "a{i}": r{i}',
                  f"permit p{i}: docs:read, docs:* for role r{i}"]
    lines.append('forbid f: docs:* for agent "a7"')
    engine = Engine.from_source("\n".join(lines) + "\n")
    plan = engine.policy.plan("a7", "docs:read")
    assert [r.qid for r in plan.permits] == ["big.everyone", "big.p7"]
    assert [r.qid for r in plan.forbids] == ["big.f"]
    assert [r.qid for r in engine.policy.plan("a8", "docs:read").permits] == [
        "big.everyone", "big.p8"]
    assert engine.authorize("a7", "docs:read").code == "forbidden"
    assert engine.authorize("a1999", "docs:write").allowed
    assert engine.authorize("nobody", "docs:read").allowed  # the unscoped permit
    assert not engine.authorize("nobody", "docs:write").allowed


def test_a_shared_entry_keeps_a_reference_bit_per_principal(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Principals of one role share one cache entry, yet each keeps its own reference
    bit (the entry or its twin): past the bound, the hand evicts the principals not
    asked since it last passed, never one that was, whoever shares its entry."""
    monkeypatch.setattr(_compiled, "PLAN_CACHE_SIZE", 8)
    agents = [f"a{i}" for i in range(3)]
    engine = Engine.from_source('namespace t\nrole r: docs:*\nforbid f: docs:x\n' + "".join(
        f'agent "{a}": r\n' for a in agents))
    policy = engine.policy
    assert all(engine.authorize(a, "docs:read").allowed for a in agents)  # room: used
    for i in range(60):  # strangers past the bound; a0 asked all along, a1 and a2 not
        assert engine.authorize(f"u{i}", "docs:read").code == "no_permit"
        if i >= 16:  # after the hand's first round (everything entered used)
            assert policy.is_cached("a0", "docs:read")
        assert engine.authorize("a0", "docs:read").allowed
        assert policy.cached_plans <= 8
    assert not policy.is_cached("a1", "docs:read") and not policy.is_cached("a2", "docs:read")
    assert engine.authorize("a1", "docs:read").rules == ("role:r",)  # resolved again
    assert engine.authorize("a2", "docs:x").code == "forbidden"


def test_plans_in_use_survive_more_pairs_than_the_cache_holds() -> None:
    """Past the bound, one plan is evicted per new one and the plans in use stay: the
    cache never empties, decisions stay right, and a hot pair keeps hitting its plan."""
    engine = Engine.from_source(
        'namespace t\nrole reader: docs:*\nagent "hot": reader\nagent "warm": reader\n'
        "forbid secret: docs:secret\n")
    policy = engine.policy
    assert engine.authorize("hot", "docs:read").allowed
    total = PLAN_CACHE_SIZE + PLAN_CACHE_SIZE // 2
    for i in range(total):
        decision = engine.authorize(f"u{i}", "docs:read")
        assert decision.code == "no_permit"
        if i % 512 == 0:
            assert engine.authorize("hot", "docs:read").allowed
            assert engine.authorize("warm", "docs:secret").code == "forbidden"
        assert policy.cached_plans <= PLAN_CACHE_SIZE
    assert policy.cached_plans == PLAN_CACHE_SIZE  # evicted one by one, never cleared
    assert policy.is_cached("hot", "docs:read")  # still cached: a hit
    assert not policy.is_cached("u0", "docs:read")
    # evicted pairs are resolved again, with the same answers
    assert engine.authorize("u0", "docs:read").code == "no_permit"
    assert engine.authorize("warm", "docs:secret").code == "forbidden"
    assert engine.authorize("warm", "docs:read").allowed


def test_the_budget_cover_cache_is_bounded_and_stays_right() -> None:
    engine = Engine.from_source(
        'namespace t\ncurrency EUR\nrole r: *\nagent "a": r\n'
        "budget b: pay:* limit 10 EUR per day per agent\n")
    policy = engine.policy
    for i in range(PLAN_CACHE_SIZE + 100):
        assert not policy.budgeted(f"x:{i}")
    assert policy.budgeted("pay:send")
    assert not policy.budgeted("x:0")
    assert engine.authorize("a", "pay:send", {"amount": "11", "currency": "EUR"}).code == (
        "budget_exceeded")


@settings(max_examples=100, deadline=None)
@given(st.lists(distinct(PATTERNS, 1, 3), min_size=1, max_size=3),
       st.lists(st.sampled_from((*PERMISSIONS, "docs:a:b:c", "mail", "mailx:send")),
                min_size=1, max_size=6))
def test_budget_cover_equals_the_sdk_matcher(budgets: list[tuple[str, ...]],
                                             permissions: list[str]) -> None:
    text = 'namespace t\nrole r: *\nagent "a": r\n' + "".join(
        f"budget b{i}: {', '.join(pats)} limit 10 calls per day per agent\n"
        for i, pats in enumerate(budgets))
    policy = Engine.from_source(text).policy
    for permission in permissions:
        expected = any(permission_matches(p, permission) for pats in budgets for p in pats)
        assert policy.budgeted(permission) is expected
        assert policy.budgeted(permission) is expected  # cached: the same answer


def test_permissions_matched_by_the_same_rules_share_one_plan_per_principal() -> None:
    """The cache grows with principals x rule buckets, not with every permission asked:
    500 permissions under ``docs:`` cost each agent one plan, and the answers stay
    per permission (an exact rule and a schema make their own class)."""
    engine = Engine.from_source(
        'namespace t\nrole reader: docs:*\nagent "a": reader\nagent "b": reader\n'
        'agent "c": reader\nforbid secret: docs:secret\n'
        "schema docs:typed { level: int }\n")
    policy = engine.policy
    for i in range(500):
        for agent in ("a", "b", "c"):
            assert engine.authorize(agent, f"docs:p{i}").allowed
    assert policy.cached_plans == 3
    assert engine.authorize("a", "docs:secret").code == "forbidden"
    assert engine.authorize("a", "docs:typed", {"level": "x"}).code == "invalid_request"
    assert engine.authorize("a", "docs:typed", {"level": 3}).allowed
    assert engine.authorize("a", "docs:p7", {"level": "x"}).allowed
    assert policy.cached_plans == 5  # and one more for "a" in each of the two classes


def test_a_reload_answers_with_the_new_rules_for_pairs_asked_before(tmp_path: Path) -> None:
    path = tmp_path / "p.policy"
    path.write_text('namespace t\nrole reader: docs:*\nagent "a": reader\n')
    engine = Engine.from_path(path)
    for _ in range(3):
        assert engine.authorize("a", "docs:read").allowed
    path.write_text('namespace t\nrole reader: docs:*\nagent "a": reader\n'
                    "forbid stop: docs:read\n")
    engine.reload()
    assert engine.authorize("a", "docs:read").code == "forbidden"
    assert engine.authorize("a", "docs:write").allowed


def test_a_miss_under_a_known_permission_still_checks_the_principal() -> None:
    """Once a permission has its class, a plan miss skips checking the permission again
    (only valid ones get a class) but not the principal: an empty or over-long id is
    still invalid_request, 256 characters still decided by the rules."""
    engine = Engine.from_source('namespace t\nrole r: docs:*\nagent "a0": r\n'
                                "permit p: docs:* for role r\n")
    assert engine.authorize("a0", "docs:read").allowed  # the class of docs:read exists
    for principal in ("", "x" * 257):
        d = engine.authorize(principal, "docs:read")
        assert (d.status, d.code) == ("denied", "invalid_request"), principal
    d = engine.authorize("x" * 256, "docs:read")
    assert (d.status, d.code) == ("denied", "no_permit")
    d = engine.authorize("a0", "docs:read", ["not", "an", "object"])  # type: ignore[arg-type]
    assert d.code == "invalid_request"
