"""Reverse queries agree with forward decisions, on generated policies and requests.

For every principal, permission and context (one that gives each condition a value of the
right type, so that no condition fails to evaluate), ``authorize`` answers ``allowed``
exactly when a line of ``permissions_of`` with status ``allowed`` covers the permission
and its residual holds, and ``pending_approval`` exactly when a ``pending_approval`` line
does. A residual "holds" is judged by a separate engine that compiles the residual's
text as the conditions of one permit: the reverse answer's text is read back as policy.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import policyengine as pe

PERMISSIONS = ["x:a", "x:b", "x:c:d", "x:c:e", "y:a", "z"]
PATTERNS = ["*", "x:*", "x:c:*", "x:a", "x:c:d", "y:*", "y:a", "z"]
CONDITIONS = [
    "context.n > 1", "context.n <= 2", 'context.s == "u"', 'context.s in ["u", "v"]',
    'has(principal.attributes.tier) and principal.attributes.tier == "gold"',
    'principal.id == "a1"', '"r1" in principal.roles', "context.flag",
    "not context.flag and context.n > 0", "amount > 200 EUR", "grant.delegated",
    'context.s != principal.id', 'startswith(principal.id, context.s)',
    "has(principal.attributes.tier) and context.s == principal.attributes.tier",
]
SCOPES = ["", " for role r1", " for role r2", ' for agent "a2"', " for role r1, role r2"]
AGENTS = {"a1": ("r1", "gold"), "a2": ("r2", "silver"), "a3": ("r1, r2", "gold"),
          "a4": ("r2", None)}
PRINCIPALS = [*AGENTS, "stranger"]

#: Conditions that compare a request's value with the principal's: the answer writes the
#: principal's id or attribute in as a literal.
MIXED = ['context.s != principal.id', 'context.s == principal.id',
         'startswith(context.s, principal.id)',
         "has(principal.attributes.tier) and context.s == principal.attributes.tier"]

patterns = st.lists(st.sampled_from(PATTERNS), min_size=1, max_size=2, unique=True)


def _conditions(pool: list[str]) -> Any:
    return st.lists(st.tuples(st.sampled_from(["when", "unless"]), st.sampled_from(pool)),
                    max_size=2)


@st.composite
def rules(draw: Any, n: int, pool: list[str] = CONDITIONS) -> str:
    kind = draw(st.sampled_from(["permit", "permit", "forbid", "approval", "limit",
                                 "approval_over"]))
    pats = ", ".join(draw(patterns))
    scope = draw(st.sampled_from(SCOPES))
    conds = "".join(f" {k} {c}" for k, c in draw(_conditions(pool)))
    if kind == "limit":
        return f"limit r{n}: {pats} amount <= 300 EUR{scope}{conds}"
    if kind == "approval_over":
        return f"approval r{n}: {pats} over 150 EUR{scope}{conds}"
    return f"{kind} r{n}: {pats}{scope}{conds}"


def _agents() -> str:
    lines = []
    for aid, (roles, tier) in AGENTS.items():
        attrs = f' {{ tier = "{tier}" }}' if tier else ""
        lines.append(f'agent "{aid}": {roles}{attrs}')
    return "\n".join(lines)


@st.composite
def policies(draw: Any, pool: list[str] = CONDITIONS) -> str:
    r1 = ", ".join(draw(patterns))
    r2 = ", ".join(draw(patterns))
    body = [draw(rules(i, pool)) for i in range(draw(st.integers(0, 6)))]
    return "\n".join(["currency EUR", f"role r1: {r1}", f"role r2: {r2}", _agents(), *body])


contexts = st.fixed_dictionaries({
    "n": st.integers(0, 3), "s": st.sampled_from(["u", "v", "a", "gold", "a1"]),
    "flag": st.booleans(),
    "amount": st.sampled_from(["100", "250", "400"]), "currency": st.just("EUR")})

_HARNESS_HEAD = "currency EUR\nrole r1: zzz:zzz\nrole r2: zzz:zzz\n" + _agents() + "\n"


class _Residuals:
    """Reads a line's residual back as policy text and evaluates it for one principal."""

    def __init__(self) -> None:
        self.engines: dict[tuple[str, str | None, str | None], pe.Engine] = {}

    def holds(self, principal: str, line: pe.Access, context: dict[str, Any]) -> bool:
        key = (principal, line.when, line.unless)
        engine = self.engines.get(key)
        if engine is None:
            text = "permit residual: q:q"
            if line.when is not None:
                text += f" when {line.when}"
            if line.unless is not None:
                text += f" unless {line.unless}"
            engine = self.engines[key] = pe.Engine.from_source(_HARNESS_HEAD + text)
        return engine.authorize(principal, "q:q", context).allowed


def _predicted(answer: pe.Permissions, principal: str, permission: str,
               context: dict[str, Any], residuals: _Residuals) -> str:
    found = {line.status for line in answer.lookup(permission)
             if residuals.holds(principal, line, context)}
    assert len(found) <= 1, f"both statuses hold for {permission}: {answer}"
    return found.pop() if found else "denied"


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policies(), st.lists(contexts, min_size=1, max_size=3))
def test_permissions_of_agrees_with_authorize(source: str, ctxs: list[dict[str, Any]]
                                              ) -> None:
    _agrees(source, ctxs)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policies(MIXED), st.lists(contexts, min_size=2, max_size=3))
def test_what_is_known_of_the_principal_is_written_in(source: str,
                                                      ctxs: list[dict[str, Any]]) -> None:
    _agrees(source, ctxs)


def _agrees(source: str, ctxs: list[dict[str, Any]]) -> None:
    engine = pe.Engine.from_source(source)
    residuals = _Residuals()
    for principal in PRINCIPALS:
        answer = engine.permissions_of(principal)
        for permission in PERMISSIONS:
            for ctx in ctxs:
                want = engine.authorize(principal, permission, ctx).status
                got = _predicted(answer, principal, permission, ctx, residuals)
                assert got == want, (
                    f"{principal} {permission} {ctx}: authorize {want}, answer {got}\n"
                    f"{source}\n{answer}")


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policies())
def test_principals_with_lists_each_agent_as_permissions_of_does(source: str) -> None:
    engine = pe.Engine.from_source(source)
    for permission in PERMISSIONS:
        who = engine.principals_with(permission)
        for aid in AGENTS:
            mine = [(a.status, a.when, a.unless) for a in who.entries
                    if a.kind == "agent" and a.principal == aid]
            theirs = [(a.status, a.when, a.unless)
                      for a in engine.permissions_of(aid).lookup(permission)]
            assert sorted(mine, key=str) == sorted(theirs, key=str), (permission, aid)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policies(MIXED), st.lists(contexts, min_size=1, max_size=2))
def test_principals_with_writes_each_agents_own_values_in(source: str,
                                                          ctxs: list[dict[str, Any]]
                                                          ) -> None:
    """When the rules read the principal only to write its id or attributes into a
    residual, agents with the same roles share one worked-out answer: each agent's
    lines still print its own values (a2 and a4 hold the same role, a4 has no tier), as
    its own permissions_of answer does, and decide as authorize does."""
    engine = pe.Engine.from_source(source)
    residuals = _Residuals()
    for permission in PERMISSIONS:
        who = engine.principals_with(permission)
        assert who.total == len(who.entries)
        for aid in AGENTS:
            mine = [a for a in who.entries if a.kind == "agent" and a.principal == aid]
            theirs = engine.permissions_of(aid).lookup(permission)
            assert sorted([(a.status, a.when, a.unless) for a in mine], key=str) == sorted(
                [(a.status, a.when, a.unless) for a in theirs], key=str), (permission, aid,
                                                                          source)
            for ctx in ctxs:
                found = {a.status for a in mine if residuals.holds(aid, a, ctx)}
                want = engine.authorize(aid, permission, ctx).status
                assert (found.pop() if found else "denied") == want, (permission, aid,
                                                                       ctx, source)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policies(), contexts)
def test_anyone_line_speaks_for_undeclared_principals(source: str, ctx: dict[str, Any]
                                                      ) -> None:
    """The ``anyone`` lines of ``principals_with`` decide as ``authorize`` does for a
    principal the policy does not declare (its id read back into the residual)."""
    engine = pe.Engine.from_source(source)
    residuals = _Residuals()
    for permission in PERMISSIONS:
        lines = [a for a in engine.principals_with(permission).entries if a.kind == "anyone"]
        found = {a.status for a in lines if residuals.holds("stranger", a, ctx)}
        assert len(found) <= 1
        got = found.pop() if found else "denied"
        assert got == engine.authorize("stranger", permission, ctx).status, (
            permission, source)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policies(), st.lists(contexts, min_size=1, max_size=2))
def test_a_role_answer_speaks_for_an_agent_holding_only_that_role(
        source: str, ctxs: list[dict[str, Any]]) -> None:
    """a1 holds only r1 and a4 only r2, and no rule names either: the role's answer, its
    residual read with the agent's id and attributes, decides as authorize does for it
    (asked after and before the agent's own answer, which may share cached parts)."""
    engine = pe.Engine.from_source(source)
    residuals = _Residuals()
    for agent, role in (("a1", "r1"), ("a4", "r2")):
        if agent == "a1":
            engine.permissions_of(agent)
        answer = engine.permissions_of(role=role)
        for permission in PERMISSIONS:
            for ctx in ctxs:
                want = engine.authorize(agent, permission, ctx).status
                got = _predicted(answer, agent, permission, ctx, residuals)
                assert got == want, (agent, role, permission, ctx, source, str(answer))


KNOWN_PRINCIPAL = "\n".join([
    "currency EUR", "role r1: zz:zz", "role r2: zz:zz", _agents(),
    "permit m1: x:a when context.s == principal.id",
    "permit m2: x:b unless context.s != principal.id or context.n > 2",
    "forbid m3: x:b when startswith(context.s, principal.id) and context.flag",
    "permit m4: y:a when has(principal.attributes.tier) and "
    "context.s == principal.attributes.tier",
    "approval m5: y:a when context.s == principal.id",
    "permit m6: z", "forbid m7: z when context.s != principal.id and context.n > 1",
])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(contexts, min_size=1, max_size=3))
def test_the_principal_written_into_residuals_decides_as_authorize(
        ctxs: list[dict[str, Any]]) -> None:
    _agrees(KNOWN_PRINCIPAL, ctxs)
