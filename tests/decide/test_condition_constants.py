"""A rule's test is its shape's code compiled once with the rule's literals put in as
constants of the code (``build_many``): every rule must decide exactly as the condition
means, however many rules share a shape and whatever their literals.

Differential: random conditions (comparisons with integer, string, decimal and boolean
literals on either side, ``in`` and ``not in`` lists, ``has``, nested paths, ``and``,
``or``, ``not``), several rules of each shape with other literals, judged against a
reference that walks the condition with the runtime helpers (the semantics' own
functions) over random contexts: the same outcome, allowed, not permitted, or the same
error code (a missing key included).
"""

from __future__ import annotations

import enum
import warnings
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policyengine.decide._runtime import RUNTIME, EvalError, build_many
from policyengine.engine import Engine

OPS = {"<": "_lt", "<=": "_le", ">": "_gt", ">=": "_ge", "==": "_eq", "!=": "_ne"}
PATHS = (("x",), ("y",), ("r", "z"))


class Level(enum.IntEnum):
    HIGH = 9


# ---- conditions: (policy text, reference) -------------------------------------------------
# A reference is a function of the context returning True / False or raising what the
# engine turns into an error code (see ``reference_outcome``).

Cond = tuple[str, Any]


def _read(ctx: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = ctx
    for seg in path:
        value = value[seg]  # KeyError: missing_attribute; TypeError: type_error
    return value


def _text(value: Any) -> str:
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


numbers = st.one_of(
    st.integers(min_value=-12, max_value=12), st.just(10**30),
    st.sampled_from([Decimal("1.5"), Decimal("-0.25"), Decimal("9.00")]))
literals = st.one_of(numbers, st.sampled_from(["a", "", "KP"]), st.booleans())
paths = st.sampled_from(PATHS)


@st.composite
def compares(draw: st.DrawFn) -> Cond:
    path, op = draw(paths), draw(st.sampled_from(list(OPS)))
    k = draw(literals if op in ("==", "!=") else numbers)  # the checker orders numbers only
    helper = RUNTIME[OPS[op]]
    text = "context." + ".".join(path)
    if draw(st.booleans()):
        return (f"{text} {op} {_text(k)}",
                lambda c, path=path, k=k, helper=helper: helper(_read(c, path), k))
    return (f"{_text(k)} {op} {text}",
            lambda c, path=path, k=k, helper=helper: helper(k, _read(c, path)))


@st.composite
def memberships(draw: st.DrawFn) -> Cond:
    path = draw(paths)
    items = draw(st.one_of(st.lists(st.sampled_from(["a", "KP", "IR", ""]), min_size=1,
                                    max_size=3),
                           st.lists(st.integers(min_value=-3, max_value=3), min_size=1,
                                    max_size=3)))
    negated = draw(st.booleans())
    strings = frozenset(items) if all(type(i) is str for i in items) else None
    values = tuple(items)

    def ref(c: dict[str, Any], path: tuple[str, ...] = path) -> bool:
        found = RUNTIME["_in_lit"](_read(c, path), strings, values)
        return not found if negated else found

    text = f"context.{'.'.join(path)} {'not in' if negated else 'in'} " \
           f"[{', '.join(_text(i) for i in items)}]"
    return text, ref


@st.composite
def hases(draw: st.DrawFn) -> Cond:
    path = draw(paths)
    return (f"has(context.{'.'.join(path)})",
            lambda c, path=path: RUNTIME["_has"](c, path))


def _combine(children: st.SearchStrategy[Cond]) -> st.SearchStrategy[Cond]:
    def both(pair: tuple[Cond, Cond], word: str) -> Cond:
        (ta, fa), (tb, fb) = pair
        if word == "and":
            return f"({ta} and {tb})", lambda c: fa(c) and fb(c)
        return f"({ta} or {tb})", lambda c: fa(c) or fb(c)

    def negate(cond: Cond) -> Cond:
        text, f = cond
        return f"not ({text})", lambda c: not f(c)

    return st.one_of(
        st.tuples(children, children).map(lambda p: both(p, "and")),
        st.tuples(children, children).map(lambda p: both(p, "or")),
        children.map(negate))


conditions = st.recursive(st.one_of(compares(), memberships(), hases()), _combine,
                          max_leaves=4)

scalars = st.one_of(
    st.integers(min_value=-12, max_value=12), st.integers(), st.just(10**30),
    st.booleans(), st.sampled_from(["a", "", "KP", "IR"]), st.text(max_size=2),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([1.5, 9.0, -0.25]),
    st.decimals(allow_nan=False, places=2), st.just(Decimal("1.50")), st.none(),
    st.just(Level.HIGH))
values = st.one_of(scalars, st.lists(scalars, max_size=3),
                   st.dictionaries(st.sampled_from(["z", "w"]), scalars, max_size=2))
contexts = st.fixed_dictionaries({}, optional={"x": values, "y": values, "r": values})


def reference_outcome(ref: Any, ctx: dict[str, Any]) -> str:
    try:
        return "allowed" if ref(ctx) is True else "no_permit"
    except EvalError as err:
        return f"error:{err.code}"
    except KeyError:
        return "error:missing_attribute"
    except (TypeError, IndexError):
        return "error:type_error"


def engine_outcome(engine: Engine, permission: str, ctx: dict[str, Any]) -> str:
    decision = engine.authorize("bot", permission, ctx)
    if decision.allowed:
        return "allowed"
    assert decision.code == "no_permit", decision
    if decision.diagnostics:
        return f"error:{decision.diagnostics[0].code}"
    return "no_permit"


@settings(max_examples=80, deadline=None)
@given(conds=st.lists(conditions, min_size=1, max_size=6),
       again=st.lists(st.tuples(st.integers(min_value=0, max_value=5), compares()),
                      max_size=6),
       ctxs=st.lists(contexts, min_size=1, max_size=8))
def test_each_rule_decides_as_its_condition_means(
        conds: list[Cond], again: list[tuple[int, Cond]], ctxs: list[dict[str, Any]]) -> None:
    # ``again``: more comparisons, many of one shape with other literals
    cases = conds + [cond for _, cond in again]
    lines = ['role r: other:x', 'agent "bot": r']
    lines += [f"permit p{i}: t:c{i} when {text}" for i, (text, _) in enumerate(cases)]
    engine = Engine.from_source("\n".join(lines) + "\n")
    for ctx in ctxs:
        for i, (text, ref) in enumerate(cases):
            assert engine_outcome(engine, f"t:c{i}", ctx) == reference_outcome(ref, ctx), \
                (text, ctx)


@settings(max_examples=40, deadline=None)
@given(levels=st.lists(st.integers(min_value=-5, max_value=5), min_size=2, max_size=30),
       probe=st.integers(min_value=-6, max_value=6))
def test_a_shape_compiled_once_holds_each_rules_own_literals(levels: list[int],
                                                              probe: int) -> None:
    """Straight through ``build_many``: the tests of one shape share its bytecode, and
    each compares against its own literal (the level and the key both)."""
    source = ("((True if _v0 > _k1 else False) if type(_v0 := c[_k0]) is int "
              "else _gt(_v0, _k1))")
    made = build_many([(source, {"_k0": f"k{i % 3}", "_k1": level})
                       for i, level in enumerate(levels)])
    ctx = {f"k{j}": probe + j for j in range(3)}
    for i, (level, test) in enumerate(zip(levels, made, strict=True)):
        assert test(ctx, None, None) is (probe + i % 3 > level)
        assert test.__code__.co_code == made[0].__code__.co_code
        assert test.__code__.co_freevars == ()  # constants, not a closure's cells


def test_a_folded_constant_is_refused_not_left_as_a_placeholder() -> None:
    """A display of constants would be folded into one by the compiler, and the rule's
    values could not be put in it: compiling it is an error, never a wrong test."""
    with pytest.raises(AssertionError, match="folded"):
        build_many([("c[_k0] in (_k1, _k2)", {"_k0": "x", "_k1": "a", "_k2": "b"})])


def test_coverage_conditions_compile_without_warnings() -> None:
    """Coverage calls a recorder held as a constant: no ``SyntaxWarning`` (an error
    under ``-W error``) for calling a literal."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        made = build_many([("_c0_0(lambda: c[_c0_1] == _c0_2)",
                            {"_c0_0": lambda thunk: thunk(), "_c0_1": "x",
                             "_c0_2": "a"})])
    assert made[0]({"x": "a"}, None, None) is True
    assert made[0]({"x": "b"}, None, None) is False
