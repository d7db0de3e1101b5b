"""Differential: policyengine against Cedar (``cedarpy``) on generated policies and
requests, in the fragment both languages share.

The fragment: ``permit``/``forbid`` rules on one permission, conditions built from
``==``, ``!=``, ``<``, ``<=``, ``in`` on list literals and on context lists
(Cedar's ``.contains``), ``has`` on context keys, boolean context values, ``and``,
``or``, ``not``; values are strings, longs, booleans, sets (JSON arrays) and records.

One reference evaluator, written from the documented rules (docs/semantics.md, "Values
and comparison" and "Fail closed"), computes each rule's outcome (true, false or an
error) in two modes. The documented differences are its only switches:

* ``cedar=False`` (policyengine): comparing values of different types, a set of mixed
  types, an item ``in`` a set of another element type, or records with other keys is an
  error; an erroring forbid applies (fail closed).
* ``cedar=True``: those comparisons are simply false (``!=`` true); an erroring policy
  of either effect is skipped.

Cedar's answer (decision, satisfied policies, erroring policies) must equal the
reference in Cedar mode, and policyengine's whole decision (status, code, rules and
diagnostics with their codes) must equal the reference in policyengine mode. So each
engine is pinned to the same evaluator, which differs between the two only by the
switches above.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import cedarpy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policyengine.engine import Engine

KEYS = ("k0", "k1", "k2")
FIELDS = ("u", "v")


class EvaluationError(Exception):
    """A condition that cannot be evaluated; ``code`` as policyengine reports it."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


def missing() -> EvaluationError:
    return EvaluationError("missing_attribute")


def type_error() -> EvaluationError:
    return EvaluationError("type_error")


# --------------------------------------------------------------------------- values


def kind(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "long"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "set"
    return "record"


def comparable(a: Any, b: Any) -> bool:
    """Documented rule: one type per comparison; the empty list fits any list."""
    if kind(a) != kind(b):
        return False
    if kind(a) == "set":
        return all(comparable(x, y) for x in a for y in b)
    if kind(a) == "record":
        return a.keys() == b.keys() and all(comparable(a[k], b[k]) for k in a)
    return True


def well_formed(v: Any) -> bool:
    """Documented rule: every element of a list has one type."""
    if kind(v) == "set":
        return all(well_formed(x) for x in v) and all(comparable(x, y) for x in v for y in v)
    if kind(v) == "record":
        return all(well_formed(x) for x in v.values())
    return True


def equal(a: Any, b: Any, cedar: bool) -> bool:
    if cedar:  # Cedar: different types are unequal, never an error
        if kind(a) != kind(b):
            return False
    elif not (well_formed(a) and well_formed(b) and comparable(a, b)):
        raise type_error()
    if kind(a) == "set":  # sets: order and repetition do not matter
        return (all(any(equal(x, y, cedar) for y in b) for x in a)
                and all(any(equal(x, y, cedar) for y in a) for x in b))
    if kind(a) == "record":
        return a.keys() == b.keys() and all(equal(a[k], b[k], cedar) for k in a)
    return bool(a == b)


def member(x: Any, coll: Any, cedar: bool) -> bool:
    if kind(coll) != "set":
        raise type_error()
    if not cedar:
        if not (well_formed(x) and well_formed(coll)):
            raise type_error()
        if coll and not all(comparable(x, e) for e in coll):
            raise type_error()
    return any(equal(x, e, cedar) for e in coll)


# --------------------------------------------------------------------------- expressions


@dataclass(frozen=True)
class Path:
    key: str


@dataclass(frozen=True)
class Lit:
    value: Any


@dataclass(frozen=True)
class Op:
    op: str  # == != < <= in_lit in_dyn has bool and or not
    args: tuple[Any, ...]


def read(ctx: dict[str, Any], e: Path | Lit) -> Any:
    if isinstance(e, Lit):
        return e.value
    if e.key not in ctx:
        raise missing()
    return ctx[e.key]


def boolean(v: Any) -> bool:
    if not isinstance(v, bool):
        raise type_error()
    return v


def evaluate(e: Op, ctx: dict[str, Any], cedar: bool) -> bool:
    """Left to right, short-circuiting ``and``/``or``, as both engines do."""
    op, args = e.op, e.args
    if op == "and":
        return all(boolean(evaluate(a, ctx, cedar)) for a in args)
    if op == "or":
        return any(boolean(evaluate(a, ctx, cedar)) for a in args)
    if op == "not":
        return not boolean(evaluate(args[0], ctx, cedar))
    if op == "has":
        return args[0] in ctx
    if op == "bool":
        return boolean(read(ctx, args[0]))
    left, right = read(ctx, args[0]), read(ctx, args[1])
    if op in ("==", "!="):
        result = equal(left, right, cedar)
        return result if op == "==" else not result
    if op in ("<", "<="):
        if kind(left) != "long" or kind(right) != "long":
            raise type_error()
        return bool(left < right) if op == "<" else bool(left <= right)
    if op == "in_lit":
        return member(left, right, cedar)
    assert op == "in_dyn"
    return member(left, right, cedar)  # item, then the context list


def outcome(e: Op, ctx: dict[str, Any], cedar: bool) -> bool | EvaluationError:
    try:
        return evaluate(e, ctx, cedar)
    except EvaluationError as failure:
        return failure


# --------------------------------------------------------------------------- rendering


def lit_text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return f'"{v}"'
    assert isinstance(v, list)
    return "[" + ", ".join(lit_text(x) for x in v) + "]"


def ours(e: Any) -> str:
    if isinstance(e, Path):
        return f"context.{e.key}"
    if isinstance(e, Lit):
        return lit_text(e.value)
    op, args = e.op, e.args
    if op in ("and", "or"):
        return "(" + f" {op} ".join(ours(a) for a in args) + ")"
    if op == "not":
        return f"(not {ours(args[0])})"
    if op == "has":
        return f"has(context.{args[0]})"
    if op == "bool":
        return ours(args[0])
    if op in ("in_lit", "in_dyn"):
        return f"({ours(args[0])} in {ours(args[1])})"
    return f"({ours(args[0])} {op} {ours(args[1])})"


def cedar_text(e: Any) -> str:
    if isinstance(e, Path):
        return f"context.{e.key}"
    if isinstance(e, Lit):
        return lit_text(e.value)
    op, args = e.op, e.args
    if op in ("and", "or"):
        sep = " && " if op == "and" else " || "
        return "(" + sep.join(cedar_text(a) for a in args) + ")"
    if op == "not":
        return f"(!{cedar_text(args[0])})"
    if op == "has":
        return f"(context has {args[0]})"
    if op == "bool":
        return cedar_text(args[0])
    if op in ("in_lit", "in_dyn"):
        return f"({cedar_text(args[1])}.contains({cedar_text(args[0])}))"
    return f"({cedar_text(args[0])} {op} {cedar_text(args[1])})"


# --------------------------------------------------------------------------- strategies

scalars = st.sampled_from(["a", "b"]) | st.integers(-2, 2) | st.booleans()
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.sampled_from(FIELDS), inner, max_size=2),
    max_leaves=5,
)
# Mostly every key present (so conditions get past missing attributes), sometimes not.
_full = st.fixed_dictionaries({k: values for k in KEYS})
contexts = st.one_of(_full, _full, _full, st.dictionaries(st.sampled_from(KEYS), values,
                                                         max_size=3))
paths = st.sampled_from(KEYS).map(Path)
# Literal lists hold one type (the checker refuses mixed literals).
list_literals = st.one_of(
    st.lists(st.sampled_from(["a", "b"]), max_size=3),
    st.lists(st.integers(-2, 2), max_size=3),
    st.lists(st.booleans(), max_size=2),
).map(Lit)
atoms = st.one_of(
    st.tuples(st.sampled_from(["==", "!="]), paths, scalars.map(Lit) | list_literals | paths)
    .map(lambda t: Op(t[0], (t[1], t[2]))),
    st.tuples(st.sampled_from(["<", "<="]), paths, st.integers(-2, 2).map(Lit))
    .map(lambda t: Op(t[0], (t[1], t[2]))),
    st.tuples(paths, list_literals).map(lambda t: Op("in_lit", t)),
    st.tuples(scalars.map(Lit), paths).map(lambda t: Op("in_dyn", t)),
    st.sampled_from(KEYS).map(lambda k: Op("has", (k,))),
    paths.map(lambda p: Op("bool", (p,))),
)
expressions = st.recursive(
    atoms,
    lambda inner: st.one_of(
        st.tuples(st.sampled_from(["and", "or"]), st.lists(inner, min_size=2, max_size=3))
        .map(lambda t: Op(t[0], tuple(t[1]))),
        inner.map(lambda e: Op("not", (e,))),
    ),
    max_leaves=4,
)
rules = st.lists(st.tuples(st.sampled_from(["permit", "forbid"]), expressions),
                 min_size=1, max_size=4)


# --------------------------------------------------------------------------- the test

POLICY_ID = re.compile(r"policy(\d+)")


def expected_decision(rule_list: list[tuple[str, Op]], ctx: dict[str, Any]
                      ) -> dict[str, Any]:
    """policyengine's decision by the documented semantics, from the reference."""
    results = [outcome(e, ctx, cedar=False) for _, e in rule_list]
    ids = [f"default.r{i}" for i in range(len(rule_list))]
    diags: list[tuple[str, str]] = []
    applied: list[str] = []
    any_true = False
    for i, (effect, _) in enumerate(rule_list):
        if effect != "forbid":
            continue
        r = results[i]
        if isinstance(r, EvaluationError):
            diags.append((r.code, ids[i]))
            applied.append(ids[i])
        elif r:
            applied.append(ids[i])
            any_true = True
    if applied:
        code = "forbidden" if any_true else diags[0][0]
        return {"status": "denied", "code": code, "rules": applied, "diagnostics": diags}
    permitted = []
    for i, (effect, _) in enumerate(rule_list):
        if effect != "permit":
            continue
        r = results[i]
        if isinstance(r, EvaluationError):
            diags.append((r.code, ids[i]))
        elif r:
            permitted.append(ids[i])
    if permitted:
        return {"status": "allowed", "code": "permitted", "rules": permitted,
                "diagnostics": diags}
    return {"status": "denied", "code": "no_permit", "rules": [], "diagnostics": diags}


class TestAgainstCedar:
    """Tries generated rule sets and contexts (nested sets and records, missing keys,
    values of every type against literals of every type) and checks both engines
    against the one reference, which differs between them only by the documented
    differences."""

    @settings(max_examples=400, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(rules, contexts)
    def test_differential(self, rule_list: list[tuple[str, Op]],
                          ctx: dict[str, Any]) -> None:
        # Cedar, against the reference in Cedar mode: satisfied and erroring policies.
        cedar_policies = "\n".join(f"{effect}(principal, action, resource) when "
                                   f"{{ {cedar_text(e)} }};" for effect, e in rule_list)
        request = {"principal": 'User::"bot"', "action": 'Action::"act"',
                   "resource": 'Res::"r"', "context": ctx}
        answer = cedarpy.is_authorized(request, cedar_policies, [])
        satisfied = {int(m.group(1)) for r in answer.diagnostics.reasons
                     for m in [POLICY_ID.search(r)] if m}
        erroring = {int(m.group(1)) for r in answer.diagnostics.errors
                    for m in [POLICY_ID.search(r)] if m}
        lenient = [outcome(e, ctx, cedar=True) for _, e in rule_list]
        # Cedar names the policies that decided: the satisfied forbids if there are
        # any, else the satisfied permits.
        true_forbids = {i for i, r in enumerate(lenient)
                        if r is True and rule_list[i][0] == "forbid"}
        true_permits = {i for i, r in enumerate(lenient)
                        if r is True and rule_list[i][0] == "permit"}
        assert satisfied == (true_forbids or true_permits), cedar_policies
        assert erroring == {i for i, r in enumerate(lenient) if isinstance(r, EvaluationError)}, \
            cedar_policies
        cedar_allows = (any(r is True for (eff, _), r in zip(rule_list, lenient, strict=True)
                            if eff == "permit")
                        and not any(r is True for (eff, _), r in
                                    zip(rule_list, lenient, strict=True) if eff == "forbid"))
        assert answer.allowed == cedar_allows

        # policyengine, against the reference in policyengine mode: the whole decision.
        text = "\n".join(f"{effect} r{i}: t:x when {ours(e)}"
                         for i, (effect, e) in enumerate(rule_list))
        decision = Engine.from_source(text).authorize("bot", "t:x", ctx)
        got = {"status": decision.status, "code": decision.code,
               "rules": list(decision.rules),
               "diagnostics": [(d.code, d.rule) for d in decision.diagnostics]}
        assert got == expected_decision(rule_list, ctx), text

    def test_the_documented_differences_occur(self) -> None:
        """Each switch of the reference changes an answer somewhere (so the differential
        above is not vacuous about them)."""
        eq = Op("==", (Path("k0"), Lit("admin")))
        forbid_eq = [("permit", Op("has", ("k0",))), ("forbid", eq)]
        ctx = {"k0": ["admin"]}
        assert outcome(eq, ctx, cedar=True) is False
        assert isinstance(outcome(eq, ctx, cedar=False), EvaluationError)
        assert expected_decision(forbid_eq, ctx)["status"] == "denied"
        answer = cedarpy.is_authorized(
            {"principal": 'User::"bot"', "action": 'Action::"act"', "resource": 'Res::"r"',
             "context": ctx},
            'permit(principal, action, resource) when { context has k0 };\n'
            'forbid(principal, action, resource) when { context.k0 == "admin" };', [])
        assert answer.allowed  # Cedar: ["admin"] == "admin" is false, the forbid is off
        # an erroring forbid: Cedar skips it, policyengine applies it
        lt = Op("<", (Path("k0"), Lit(1)))
        assert isinstance(outcome(lt, {"k0": "x"}, cedar=True), EvaluationError)
        assert expected_decision([("permit", Op("has", ("k0",))), ("forbid", lt)],
                                 {"k0": "x"})["status"] == "denied"
