"""Compact cached plans decide exactly as the rules do (issue 10, item 8).

A cached plan reads as little memory as it can (docs/architecture.md, "The hot path"):
rules that differ in nothing but their rule id share one compiled test, the rules of one
part are shared by every principal whose plan they are (when no condition reads
``principal.*``), a plan of permits only runs a flat tuple of (test, rule id), and a plan
that is one permit and nothing else is decided from the cache entry alone. The property:
for random policies and requests, every decision (asked first on a miss, then again from
the cache, in any order) equals the straightforward evaluation of the rules in scope,
each run with the principal itself.
"""

from __future__ import annotations

import pickle
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policyengine import Engine
from policyengine.decide._compiled import CompiledPolicy, Entry, PlanRules, _Part
from policyengine.decide._evaluator import RequestState, rule_facts
from policyengine.decide._runtime import build_many

ROLES = ("r0", "r1", "r2")
AGENTS = ("a0", "a1", "a2", "a3")
PRINCIPALS = (*AGENTS, "stranger")
PERMISSIONS = ("docs:read", "docs:a:b", "mail:send", "x")
PATTERNS = ("*", "docs:*", "docs:read", "mail:*", "x")
#: Conditions: none, on the context (several sharing one source and differing in their
#: literal, of the same or another type), on the principal, and on the amount.
CONDITIONS = (
    "", "when context.level > 1", "when context.level > 2", "when context.level > 1.0",
    "when context.level > 1.00", 'when context.level == "1"', "when context.level in [1, 2]",
    'when context.name == "x"', "when context.level > 1 unless context.level > 3",
    "when principal.attributes.tier == 2", "when has(principal.attributes.tier)",
    'when "r1" in principal.roles', 'when principal.id == "a1"',
    "when amount > 5 USD",
)
EFFECTS = ("permit", "permit", "permit", "forbid", "approval")
CONTEXTS = st.fixed_dictionaries({}, optional={
    "level": st.one_of(st.integers(-1, 4), st.sampled_from(("1", "x", 1.5, True, None))),
    "name": st.sampled_from(("x", "y", 3)),
    "amount": st.sampled_from(("3", "7", "oops")),
})

rules = st.lists(st.tuples(st.sampled_from(EFFECTS), st.sampled_from(PATTERNS),
                           st.sampled_from((None, *ROLES, *(f'agent "{a}"' for a in AGENTS))),
                           st.sampled_from(CONDITIONS)), max_size=8)
agents = st.dictionaries(st.sampled_from(AGENTS),
                         st.tuples(st.lists(st.sampled_from(ROLES), min_size=1, max_size=2,
                                            unique=True),
                                   st.sampled_from(("", " { tier = 2 }", " { tier = 3 }"))))
requests = st.lists(st.tuples(st.sampled_from(PRINCIPALS), st.sampled_from(PERMISSIONS),
                              CONTEXTS), min_size=1, max_size=12)


def policy_text(grants: dict[str, str], held: dict[str, tuple[list[str], str]],
                written: list[tuple[str, str, str | None, str]]) -> str:
    lines = ["namespace t", "currency USD"]
    lines += [f"role {role}: {pattern}" for role, pattern in grants.items()]
    lines += [f'agent "{a}": {", ".join(roles)}{attrs}' for a, (roles, attrs) in held.items()]
    for i, (effect, pattern, scope, cond) in enumerate(written):
        if scope is not None and not scope.startswith("agent"):
            scope = f"role {scope}"
        tail = f" for {scope}" if scope is not None else ""
        lines.append(f"{effect} p{i}: {pattern}{tail} {cond}".rstrip())
    return "\n".join(lines) + "\n"


def straightforward(policy: CompiledPolicy, principal: str, permission: str,
                    context: dict[str, Any]) -> tuple[Any, ...]:
    """The rules step over every rule naming the permission and in the principal's scope,
    split by effect in declaration order, each test run with the principal itself (no
    cache, no shared plan, no flat permits)."""
    who = policy.principal(principal)
    part = _Part([r for r in policy.candidates(permission) if r.scoped_to(who)])
    rules = PlanRules(who, part.forbids, part.limits, part.permits, part.approvals,
                      part.uses_amount, part.shadows)
    return rule_facts(rules, principal, permission, context,
                      RequestState(context, policy.default_currency, None))


def seen(d: Any) -> tuple[Any, ...]:
    return (d.status, d.code, d.reason, d.rules, d.obligations,
            tuple((x.code, x.rule, x.effect) for x in d.diagnostics))


def expected(facts: tuple[Any, ...]) -> tuple[Any, ...]:
    status, code, reason, rules, obligations, diagnostics, _ = facts
    if reason is None:  # an allowed decision spells it when read
        assert status == "allowed"
        reason = "permitted by " + ", ".join(rules)
    return (status, code, reason, rules, obligations,
            tuple((x.code, x.rule, x.effect) for x in diagnostics))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(ROLES), st.sampled_from(PATTERNS), min_size=3),
       agents, rules, requests)
def test_cached_plans_decide_as_the_rules_in_scope(
        grants: dict[str, str], held: dict[str, tuple[list[str], str]],
        written: list[tuple[str, str, str | None, str]],
        asked: list[tuple[str, str, dict[str, Any]]]) -> None:
    written = [w for w in written if w[2] is None or not w[2].startswith("agent")
               or w[2][7:-1] in held]  # an agent scope names a declared agent
    engine = Engine.from_source(policy_text(grants, held, written))
    policy = engine.policy
    unread = []  # decisions whose rules are read only after every other request
    for _ in range(2):  # a miss, then the cached plan
        for principal, permission, context in asked:
            decision = engine.authorize(principal, permission, context)
            if decision.status == "pending_approval":
                continue  # the approval step adds an id; its rules step is checked below
            want = expected(straightforward(policy, principal, permission, context))
            unread.append((engine.authorize(principal, permission, context), want))
            assert seen(decision) == want
    for decision, want in unread:  # an entry resolves the ids of its own principal
        assert seen(decision) == want
    for principal, permission, context in asked:  # the rules step itself, pending or not
        plan = policy.plan(principal, permission)
        req = RequestState(context, policy.default_currency, None)
        if plan.permitted is not None:  # permits only, at most one conditional
            assert plan.permitted == tuple(r.qid for r in plan.rules.permits)
            assert [r.test for r in plan.permits if r.test is not None] == (
                [plan.test] if plan.test is not None else [])
            assert plan.rules.principal is None
            entry = policy.classes[permission].plans[principal]  # shared, not the plan
            assert type(entry) is Entry and entry.test is plan.test
            assert entry.rule_ids(principal) == plan.permitted
            unconditional = tuple(r.qid for r in plan.permits if r.test is None)
            if entry.fallback is None:
                assert plan.test is None or not unconditional
            else:
                assert entry.fallback.rule_ids(principal) == unconditional != ()
        else:
            assert policy.classes[permission].plans[principal] is plan
        assert rule_facts(plan.rules, principal, permission, context, req) == (
            straightforward(policy, principal, permission, context))


def test_rules_alike_but_for_their_id_share_one_test() -> None:
    lines = ["namespace t", "role r: docs:*"]
    lines += [f"permit p{i}: docs:* for role r when context.level > {i % 3}"
              for i in range(30)]
    lines += ["permit q0: docs:* for role r when context.level > 1.0",
              "permit q1: docs:* for role r when context.level > 1.00",
              'permit q2: docs:* for role r when context.level == "1"',
              "permit q3: docs:* for role r when context.level in [1, 2]",
              "permit q4: docs:* for role r when context.level in [1, 2]"]
    engine = Engine.from_source("\n".join(lines) + "\n")
    tests = {r.qid: r.test for r in engine.policy.rules if r.kind == "rule"}
    assert len({id(tests[f"t.p{i}"]) for i in range(30)}) == 3
    assert tests["t.p0"] is tests["t.p3"] and tests["t.p1"] is not tests["t.p0"]
    # a decimal literal is keyed by its text; a list literal is never shared
    assert len({id(tests[q]) for q in ("t.q0", "t.q1", "t.q2", "t.p1")}) == 4
    assert tests["t.q3"] is not tests["t.q4"]


def test_constants_are_shared_only_when_no_condition_can_tell_them_apart() -> None:
    source = "(c[_k0] == _k1)"
    made = build_many([(source, {"_k0": "level", "_k1": v})
                       for v in (1, True, 1, Decimal("1"), Decimal("1.0"), "1", ["1"], ["1"])])
    assert made[0] is made[2]
    assert len({id(t) for t in made}) == 7  # 1 and True, 1 and 1.0, lists: apart


def test_a_single_permit_is_decided_from_the_entry_and_anything_more_from_its_rules(
        ) -> None:
    engine = Engine.from_source(
        'namespace t\ncurrency USD\nrole r: docs:*, pay:*\nrole s: docs:*\n'
        'agent "a": r\nagent "b": r\nagent "c": r { tier = 1 }\nagent "d": r, s\n'
        "permit tiered: docs:* for agent \"c\" when principal.attributes.tier > 0\n"
        "forbid big: pay:* when amount > 10 USD\n"
        "schema docs:typed { level: int }\n")
    policy = engine.policy
    a, b = policy.plan("a", "docs:read"), policy.plan("b", "docs:read")
    assert a.permitted == ("role:r",) and a.test is None and a is not b
    assert a.rules is b.rules  # one role's rules, shared by its agents
    cached = policy.classes["docs:read"].plans  # the cache: one entry, shared by both
    assert cached["a"] is cached["b"] and cached["a"].rule_ids("b") == ("role:r",)
    assert policy.plan("c", "docs:read").permitted is None  # reads principal.*
    assert policy.plan("c", "docs:read").rules.principal is policy.principals["c"]
    assert policy.plan("d", "docs:read").permitted == ("role:r", "role:s")  # two grants
    assert policy.plan("a", "pay:send").permitted is None  # a forbid
    assert policy.plan("a", "docs:typed").permitted is None  # a schema
    assert engine.authorize("a", "docs:typed", {"level": "x"}).code == "invalid_request"
    assert engine.authorize("a", "pay:send", {"amount": "11", "currency": "USD"}).code == (
        "forbidden")
    d = engine.authorize("d", "docs:read")
    assert d.rules == ("role:r", "role:s") and d.reason == "permitted by role:r, role:s"


def test_an_entry_with_a_condition_that_fails_or_errors_keeps_the_other_permits() -> None:
    engine = Engine.from_source(
        'namespace t\nrole r: docs:*\nagent "a": r\n'
        "permit lvl: docs:* for role r when context.level > 1\n"
        "permit ask: mail:* when context.level > 1\n")
    plan = engine.policy.plan("a", "docs:read")
    assert plan.permitted == ("role:r", "t.lvl") and plan.test is not None
    d = engine.authorize("a", "docs:read", {"level": 2})
    assert d.rules == ("role:r", "t.lvl") and d.reason == "permitted by role:r, t.lvl"
    d = engine.authorize("a", "docs:read", {"level": 0})
    assert d.rules == ("role:r",) and d.reason == "permitted by role:r" and not d.diagnostics
    d = engine.authorize("a", "docs:read", {"level": "x"})
    assert d.allowed and d.rules == ("role:r",)
    assert [(x.code, x.rule, x.effect) for x in d.diagnostics] == [
        ("type_error", "t.lvl", "skipped")]
    assert engine.policy.plan("a", "mail:send").permitted == ("t.ask",)
    d = engine.authorize("a", "mail:send", {"level": "x"})
    assert d.code == "no_permit" and d.diagnostics[0].rule == "t.ask"
    assert d.reason == "no rule permits mail:send for a"


def test_a_decision_decided_from_the_entry_reads_its_rule_ids_when_asked() -> None:
    engine = Engine.from_source(
        'namespace t\nrole r: docs:*\nrole s: docs:*\nagent "a": r, s\n'
        "permit lvl: docs:* for role r when context.level > 1\n")
    first = engine.authorize("a", "docs:read", {"level": 2})
    engine.policy.forget_plans()  # the entry it came from is gone; its ids are not
    assert first.rules == ("role:r", "role:s", "t.lvl")
    d = engine.authorize("a", "docs:read", {"level": 2})
    assert d.to_wire()["rules"] == ["role:r", "role:s", "t.lvl"]
    assert "rules=('role:r', 'role:s', 't.lvl')" in repr(engine.authorize(
        "a", "docs:read", {"level": 2}))
    copied = pickle.loads(pickle.dumps(engine.authorize("a", "docs:read", {"level": 2})))
    assert (copied.status, copied.rules, copied.reason) == (
        "allowed", ("role:r", "role:s", "t.lvl"), "permitted by role:r, role:s, t.lvl")
    assert engine.authorize("a", "docs:read", {"level": 0}).rules == ("role:r", "role:s")


def test_principals_share_an_entry_only_when_they_decide_alike() -> None:
    """One condition, for a principal with a role grant beside it and for one without:
    when it does not hold, the first is allowed by the grant and the second is not
    allowed at all, whichever of them asked first (and then shared what it made)."""
    source = ('namespace t\nrole r: docs:*\nrole s: mail:*\nagent "a": r\nagent "b": s\n'
              'agent "c": r\nagent "d": s\npermit lvl: docs:* when context.level > 1\n')
    for order in (("a", "b", "c", "d"), ("b", "a", "d", "c")):
        engine = Engine.from_source(source)
        for who in order:
            assert engine.authorize(who, "docs:read", {"level": 2}).rules == (
                ("role:r", "t.lvl") if who in "ac" else ("t.lvl",))
        for who in order:
            d = engine.authorize(who, "docs:read", {"level": 0})
            if who in "ac":
                assert d.allowed and d.rules == ("role:r",)
            else:
                assert d.code == "no_permit" and d.rules == ()
        plans = engine.policy.classes["docs:read"].plans
        assert plans["a"].test is plans["b"].test  # one condition, two entries
        assert plans["a"] is plans["c"] and plans["b"] is plans["d"]
        assert plans["a"] is not plans["b"] and plans["a"] is not plans["b"].twin
