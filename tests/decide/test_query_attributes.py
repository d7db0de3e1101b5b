"""principals_with over agents grouped by the values of what the rules read of them.

When a rule decides on the principal alone (``principal.attributes.tier == "gold"``,
``principal.id == "c3"``), principals_with works out one answer per group of agents with
the same roles and the same values of exactly what those rules read, and gives it to
every agent of the group. These properties draw many agents with random roles and
random attribute values (strings, integers, decimals, booleans, absent, or of another
type than a rule compares with) and rules reading them, and hold each agent's lines
equal to its own permissions_of lines (worked out for that agent alone) and deciding
as authorize does for it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from unittest.mock import patch

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import policyengine as pe
from policyengine.decide import _query
from policyengine.decide._query import index as query_index
from policyengine.decide._query import principals as query_principals


@contextmanager
def _few(few: int) -> Iterator[None]:
    """Up to ``few`` holders, a role counts as few-held (``FEW``, read by the index and
    by principals_with)."""
    with patch.object(query_index, "FEW", few), patch.object(query_principals, "FEW", few):
        yield


PERMISSIONS = ["x:a", "x:b", "y:a", "z"]
PATTERNS = ["*", "x:*", "x:a", "y:*", "z"]
#: Values of the attributes ``tier`` and ``level`` (None: absent); of several types, so
#: that a comparison meets a value of another type too.
TIERS = ['"gold"', '"silver"', "1", "true", "1.0", "1.00", None]
LEVELS = ["1", "2", '"2"', "2.5", "false", None]
DECIDING = [
    'principal.attributes.tier == "gold"', 'principal.attributes.tier != "silver"',
    "principal.attributes.tier == 1", "principal.attributes.tier == 1.0",
    "principal.attributes.tier", "has(principal.attributes.tier)",
    "principal.attributes.level > 1", 'principal.attributes.level in [1, 2]',
    "has(principal.attributes.level) and principal.attributes.level >= 2",
    'principal.id == "c3"', 'principal.id in ["c1", "c4"]', 'principal.id != "c2"',
    '"r1" in principal.roles', 'principal.attributes.tier == "gold" or context.n > 1',
]
#: Conditions reading the request, some writing the principal's values in.
OTHER = ["context.n > 1", "context.flag", "context.s == principal.id",
         "has(principal.attributes.tier) and context.s == principal.attributes.tier",
         "amount > 200 EUR"]
SCOPES = ["", " for role r1", " for role r2", " for role r1, role r2"]

contexts = st.fixed_dictionaries({
    "n": st.integers(0, 3), "s": st.sampled_from(["gold", "c1", "c3", "u"]),
    "flag": st.booleans(), "amount": st.sampled_from(["100", "250"]),
    "currency": st.just("EUR")})


@st.composite
def agents(draw: Any) -> list[str]:
    """Five to fourteen agents (ids c0, c1, ...), each with roles and attributes."""
    out = []
    for i in range(draw(st.integers(5, 14))):
        roles = draw(st.sampled_from(["r1", "r2", "r1, r2", "r3"]))
        attrs = [f"{name} = {value}" for name, value in (
            ("tier", draw(st.sampled_from(TIERS))), ("level", draw(st.sampled_from(LEVELS))))
            if value is not None]
        body = f" {{ {', '.join(attrs)} }}" if attrs else ""
        out.append(f'agent "c{i}": {roles}{body}')
    return out


@st.composite
def policies(draw: Any) -> tuple[str, str]:
    """A policy, and the head (currency, roles granting nothing asked, the agents) to
    read its residuals back with."""
    head = ["currency EUR", f"role r1: {draw(st.sampled_from(PATTERNS))}",
            f"role r2: {draw(st.sampled_from(PATTERNS))}", "role r3: z",
            *draw(agents())]
    body = []
    for n in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["permit", "permit", "forbid", "approval"]))
        pat = draw(st.sampled_from(PATTERNS))
        conds = "".join(f" {k} {c}" for k, c in draw(st.lists(st.tuples(
            st.sampled_from(["when", "unless"]),
            st.sampled_from(DECIDING + DECIDING + OTHER)), max_size=2)))
        body.append(f"{kind} k{n}: {pat}{draw(st.sampled_from(SCOPES))}{conds}")
    # the head residuals are read back with: roles granting nothing the check asks
    harness = ["currency EUR", "role r1: zzz:zzz", "role r2: zzz:zzz", "role r3: zzz:zzz",
               *head[4:]]
    return "\n".join([*head, *body]), "\n".join(harness)


def _decides(head: str, engines: dict[Any, pe.Engine], aid: str, line: pe.Access,
             ctx: dict[str, Any]) -> bool:
    """Whether ``line``'s residual holds for ``aid`` in ``ctx``, read back as policy."""
    key = (line.when, line.unless)
    engine = engines.get(key)
    if engine is None:
        text = "permit residual: q:q"
        if line.when is not None:
            text += f" when {line.when}"
        if line.unless is not None:
            text += f" unless {line.unless}"
        engine = engines[key] = pe.Engine.from_source(head + "\n" + text)
    return engine.authorize(aid, "q:q", ctx).allowed


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policies(), st.lists(contexts, min_size=1, max_size=2), st.sampled_from([0, 1, 3, 64]))
def test_grouped_agents_get_their_own_answers(drawn: tuple[str, str],
                                              ctxs: list[dict[str, Any]], few: int) -> None:
    """``few``: up to how many holders a role counts as few-held, so that the agents
    holding two roles are found from the few-held roles' holders or, failing that, from
    every holder (both ways are met)."""
    source, head = drawn
    fresh = pe.Engine.from_source(source)  # principals_with asked before anything else
    engine = pe.Engine.from_source(source)
    engines: dict[Any, pe.Engine] = {}
    ids = list(engine.policy.principals)
    for permission in PERMISSIONS:
        with _few(few):
            who = fresh.principals_with(permission)
        assert who.total == len(who.entries) and not who.truncated
        for aid in ids:
            mine = [a for a in who.entries if a.kind == "agent" and a.principal == aid]
            theirs = engine.permissions_of(aid).lookup(permission)
            assert sorted([(a.status, a.when, a.unless) for a in mine],
                          key=str) == sorted([(a.status, a.when, a.unless)
                                              for a in theirs], key=str), (
                permission, aid, source)
            tier = engine.policy.principals[aid].attributes.get("tier", "")
            if any("principal." in str(a) for a in mine) or type(tier) is not str:
                # a value that fails to evaluate meets a request's condition (the residual
                # keeps the path, or compares context.s with a number): compared with
                # permissions_of above, not read back through a permit
                continue
            for ctx in ctxs:
                found = {a.status for a in mine if _decides(head, engines, aid, a, ctx)}
                assert len(found) <= 1, (permission, aid, source)
                want = engine.authorize(aid, permission, ctx).status
                assert (found.pop() if found else "denied") == want, (permission, aid, ctx,
                                                                       source)


def test_agents_are_grouped_by_the_values_the_rules_read() -> None:
    """Ten agents of one role, the rule reading their tier: gold, silver, tiers of
    other types and none fold apart, each agent listed with its own status."""
    tiers = ['"gold"', '"gold"', '"silver"', "1", "true", None, '"gold"', "1.0", "1.00",
             '"silver"']
    lines = ["currency EUR", "role r1: x:*", "permit p: x:a for role r1",
             'forbid f: x:a when principal.attributes.tier == "gold"',
             'forbid g: x:a when principal.id == "d9"']
    for i, tier in enumerate(tiers):
        body = f" {{ tier = {tier} }}" if tier is not None else ""
        lines.append(f'agent "d{i}": r1{body}')
    engine = pe.Engine.from_source("\n".join(lines))
    who = engine.principals_with("x:a")
    allowed = sorted(a.principal for a in who.entries if a.kind == "agent")
    # gold is forbidden, d9 by id; a missing tier and one of another type than the
    # string compared with fail to evaluate: the forbid applies (fail closed)
    assert allowed == ["d2"]
    for i in range(len(tiers)):
        assert engine.authorize(f"d{i}", "x:a", {}).allowed == (f"d{i}" in allowed)


def test_an_agent_holding_none_of_the_roles_is_listed_beside_a_named_one() -> None:
    """An unscoped permit lets every agent in; one agent is also named by a rule (so
    worked out alone): a1, holding none of the roles with rules there, is still listed,
    as permissions_of and authorize say."""
    engine = pe.Engine.from_source("\n".join([
        "currency EUR", "role r1: x:*", "role r2: *", 'agent "a1": r1', 'agent "a2": r2',
        'agent "a3": r1, r2', 'agent "a4": r2', "permit p0: *", 'permit p1: * for agent "a2"']))
    who = engine.principals_with("y:a")
    assert sorted(a.principal for a in who.entries if a.kind == "agent") == [
        "a1", "a2", "a3", "a4"]
    assert who.total == len(who.entries) == 6
    assert all(engine.authorize(aid, "y:a", {}).allowed for aid in ("a1", "a2", "a3", "a4"))


REQUEST_ONLY = ["context.n > 1", "context.flag", "amount > 200 EUR", 'context.s == "u"']


@st.composite
def role_named_agents(draw: Any) -> str:
    """A policy whose conditions read only the request, with agents some of whom are
    named like a role (``agent "r1": r1``) and some holding one role alone."""
    lines = ["currency EUR", *(f"role r{k}: {draw(st.sampled_from(PATTERNS))}"
                               for k in (1, 2, 3))]
    ids = draw(st.lists(st.sampled_from(["r1", "r2", "r3", "c0", "c1", "c2", "c3", "c4"]),
                        min_size=2, max_size=8, unique=True))
    for aid in ids:
        lines.append(f'agent "{aid}": {draw(st.sampled_from(["r1", "r2", "r1, r2", "r3"]))}')
    for n in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(["permit", "permit", "forbid", "approval"]))
        conds = "".join(f" {k} {c}" for k, c in draw(st.lists(st.tuples(
            st.sampled_from(["when", "unless"]), st.sampled_from(REQUEST_ONLY)),
            max_size=2)))
        lines.append(f"{kind} k{n}: {draw(st.sampled_from(PATTERNS))}"
                     f"{draw(st.sampled_from(SCOPES))}{conds}")
    return "\n".join(lines)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(role_named_agents(), st.sampled_from([0, 1, 64]))
def test_agents_holding_one_role_get_its_lines_under_their_own_names(
        source: str, few: int) -> None:
    """No rule reads the principal: an agent holding one role of those the rules name
    gets that role's lines, listed as the agent's (also when its id is a role's name),
    the same lines (status, residuals, rules) as worked out for it alone, and each
    role's own lines listed once as the role's. ``few`` as above."""
    fresh = pe.Engine.from_source(source)
    engine = pe.Engine.from_source(source)
    # each agent's lines for the permission worked out for it alone
    index = _query.QueryIndex(engine.policy, prepare=False)
    for permission in PERMISSIONS:
        with _few(few):
            who = fresh.principals_with(permission)
        assert who.total == len(who.entries) and not who.truncated
        for aid in engine.policy.principals:
            mine = [(a.status, a.when, a.unless, a.rules)
                    for a in who.entries if a.kind == "agent" and a.principal == aid]
            theirs = [(a.status, a.when, a.unless, a.rules)
                      for a in index.access(index.subject("agent", aid), permission)]
            assert sorted(mine, key=str) == sorted(theirs, key=str), (permission, aid,
                                                                      source)
        for role in ("r1", "r2", "r3"):
            mine = [(a.status, a.when, a.unless, a.rules) for a in who.entries
                    if a.kind == "role" and a.principal == role]
            theirs = [(a.status, a.when, a.unless, a.rules)
                      for a in index.access(index.subject("role", role), permission)]
            if mine:
                assert sorted(mine, key=str) == sorted(theirs, key=str), (permission, role,
                                                                          source)
