"""Adversarial: values of the wrong type, nested values, subclasses of built-in types and
values built to make one comparison expensive.

Every class drives ``Engine.authorize`` through a forbid (which must apply when its
condition errors) and a permit (which must not), so an error is told apart from false.
"""

from __future__ import annotations

import enum
import time
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policyengine.engine import Engine

BASE = 'role r: t:*, u:*\nagent "bot": r\nagent "travel-bot": travel\nrole travel: v:*\n'


def forbid_engine(expr: str) -> Engine:
    return Engine.from_source(BASE + f"permit any: t:x\nforbid f: t:x when {expr}\n")


def permit_engine(expr: str) -> Engine:
    return Engine.from_source(BASE + f"permit p: w:x when {expr}\n")


def outcome(expr: str, context: dict[str, Any], principal: str = "bot") -> str:
    """``true``, ``false`` or ``error:CODE``, checked on a forbid and on a permit."""
    f = forbid_engine(expr).authorize(principal, "t:x", context)
    p = permit_engine(expr).authorize(principal, "w:x", context)
    if f.code == "forbidden":
        assert p.allowed
        return "true"
    if f.allowed:
        assert (p.status, p.code, p.diagnostics) == ("denied", "no_permit", ())
        return "false"
    assert f.status == "denied" and f.rules == ("default.f",)
    assert f.diagnostics[0].effect == "applied (fail closed)"
    assert (p.code, p.diagnostics[0].effect) == ("no_permit", "skipped")
    return f"error:{f.diagnostics[0].code}"


class TestNestedValues:
    """Tries equality inside lists and records, where Python's own ``==`` says
    ``[1] == [True]`` and ``{"v": 1} == {"v": True}``; lists compared as sets; lists of
    mixed types; records with other keys; the principal's roles against a list."""

    @pytest.mark.parametrize(("a", "b", "expected"), [
        ([1], [True], "error:type_error"),
        ({"v": 1}, {"v": True}, "error:type_error"),
        ([[1]], [[True]], "error:type_error"),
        ([{"v": 1}], [{"v": True}], "error:type_error"),
        ({"v": [1]}, {"v": ["1"]}, "error:type_error"),
        ({"v": 1}, {"w": 1}, "error:type_error"),
        ([1, "a"], [1, "a"], "error:type_error"),
        (["a", "b"], ["b", "a", "a"], "true"),
        (["a", "b"], ["a"], "false"),
        ([], [], "true"),
        ([], ["a"], "false"),
        ([[], ["a"]], [["a"], []], "true"),
        ([1, 2.5], [Decimal("2.50"), 1.0], "true"),
        ({"v": {"w": [1, 2]}}, {"v": {"w": [2, 1]}}, "true"),
        ({"v": 1, "w": "x"}, {"w": "x", "v": 1}, "true"),
        ({"v": 1}, {"v": 2}, "false"),
        ([1], "1", "error:type_error"),
        (["admin"], "admin", "error:type_error"),
        ({}, [], "error:type_error"),
    ])
    def test_equality(self, a: Any, b: Any, expected: str) -> None:
        assert outcome("context.a == context.b", {"a": a, "b": b}) == expected
        negated = {"true": "false", "false": "true"}.get(expected, expected)
        assert outcome("context.a != context.b", {"a": a, "b": b}) == negated

    @pytest.mark.parametrize(("value", "expected"), [
        (["admin"], "error:type_error"),          # a repeated parameter became a list
        ({"name": "admin"}, "error:type_error"),
        (None, "error:type_error"),
        (1, "error:type_error"),
        ("admin", "true"),
        ("Admin", "false"),
    ])
    def test_a_forbid_on_a_string_cannot_be_dodged_by_changing_the_type(
            self, value: Any, expected: str) -> None:
        assert outcome('context.user == "admin"', {"user": value}) == expected
        assert outcome('context.user in ["admin", "root"]', {"user": value}) == expected

    def test_roles_compare_as_a_set_and_an_undeclared_principal_has_none(self) -> None:
        assert outcome('principal.roles == ["travel"]', {}, "travel-bot") == "true"
        assert outcome('principal.roles == ["travel", "travel"]', {}, "travel-bot") == "true"
        assert outcome('principal.roles == ["r"]', {}, "travel-bot") == "false"
        assert outcome("principal.roles != []", {}, "travel-bot") == "true"
        # the finding: `permit ... when principal.roles != []` let in a stranger
        assert outcome("principal.roles != []", {}, "stranger") == "false"
        assert outcome("principal.roles == []", {}, "stranger") == "true"
        engine = Engine.from_source(BASE + "permit any-role: z:x when principal.roles != []\n")
        assert not engine.authorize("stranger", "z:x").allowed
        assert engine.authorize("travel-bot", "z:x").allowed

    @pytest.mark.parametrize(("item", "coll", "expected"), [
        ("a", ["a", 1], "error:type_error"),
        (1, ["a"], "error:type_error"),
        (True, [1], "error:type_error"),
        (["a"], [["a"]], "true"),
        (["a", "b"], [["b", "a"]], "true"),
        ({"v": 1}, [{"v": True}], "error:type_error"),
        ("a", [], "false"),
        ("a", "abc", "error:type_error"),
        ("a", {"a": 1}, "error:type_error"),
    ])
    def test_membership(self, item: Any, coll: Any, expected: str) -> None:
        assert outcome("context.x in context.list", {"x": item, "list": coll}) == expected
        if not isinstance(coll, str):  # contains() on a string looks for a substring
            assert outcome("contains(context.list, context.x)",
                           {"x": item, "list": coll}) == expected


class Color(str, enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 7


class Shouty(str):
    """A str subclass that lies about equality and hashing."""

    def __eq__(self, other: object) -> bool:
        return False

    def __ne__(self, other: object) -> bool:
        return True

    def __hash__(self) -> int:
        raise RuntimeError("no hashing")

    def __str__(self) -> str:
        return "something else"


class Lying(int):
    def __eq__(self, other: object) -> bool:
        return False

    __hash__ = int.__hash__

    def __int__(self) -> int:
        return 0

    def __index__(self) -> int:
        return 0


class TestSubclasses:
    """Tries subclasses of ``str`` and ``int`` (an ``enum`` with a ``str`` or ``int``
    base, an ``IntEnum``, subclasses that override ``__eq__``, ``__hash__``, ``__str__``
    and ``__int__``) and ``bool`` against numbers: compared by their value, never skipped,
    and ``True`` is never the number 1."""

    @pytest.mark.parametrize(("expr", "value", "expected"), [
        ('context.v == "red"', Color.RED, "true"),
        ('context.v in ["red", "blue"]', Color.RED, "true"),
        ('context.v != "red"', Color.RED, "false"),
        ('startswith(context.v, "re")', Color.RED, "true"),
        ('matches(context.v, "r*")', Color.RED, "true"),
        ("context.v == 7", Level.HIGH, "true"),
        ("context.v in [7, 8]", Level.HIGH, "true"),
        ("context.v > 6", Level.HIGH, "true"),
        ('context.v == "red"', Shouty("red"), "true"),
        ('context.v in ["red"]', Shouty("red"), "true"),
        ("context.v == 7", Lying(7), "true"),
        ("context.v >= 7", Lying(7), "true"),
        ("context.v == 1", True, "error:type_error"),
        ("context.v > 0", True, "error:type_error"),
        ("context.v == true", 1, "error:type_error"),
    ])
    def test_by_value(self, expr: str, value: Any, expected: str) -> None:
        assert outcome(expr, {"v": value}) == expected

    def test_inside_lists_and_records(self) -> None:
        ctx = {"a": [Color.RED, Shouty("x")], "b": ["x", "red"]}
        assert outcome("context.a == context.b", ctx) == "true"
        ctx = {"a": {Color.RED: Level.HIGH}, "b": {"red": 7}}
        assert outcome("context.a == context.b", ctx) == "true"


class Opaque:
    """An object the policy cannot read; it raises from everything it can."""

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("eq")

    def __hash__(self) -> int:
        raise RuntimeError("hash")

    def __bool__(self) -> bool:
        raise RuntimeError("bool")


class TestNotValues:
    """Tries objects that are not values (None, NaN, infinities, arbitrary objects whose
    methods raise, non-string record keys): each is an error, never false."""

    @pytest.mark.parametrize("value", [None, float("nan"), float("inf"), Decimal("NaN"),
                                       Decimal("-Infinity"), Opaque(), b"admin",
                                       {1: "a"}, [Opaque()], object()])
    def test_every_operator_errors(self, value: Any) -> None:
        for expr in ('context.v == "admin"', 'context.v != "admin"', "context.v == 1",
                     'context.v in ["admin"]', "context.v < 1", "context.v == context.w"):
            assert outcome(expr, {"v": value, "w": [value]}).startswith("error:"), expr

    @settings(max_examples=200, deadline=None)
    @given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=3)
                        | st.floats(allow_nan=True),
                        lambda inner: st.lists(inner, max_size=3)
                        | st.dictionaries(st.text(max_size=2), inner, max_size=3),
                        max_leaves=8))
    def test_a_forbid_on_a_string_applies_unless_given_another_string(self, v: Any) -> None:
        d = FORBID_ADMIN.authorize("bot", "t:x", {"user": v})
        if type(v) is str and v != "admin":
            assert d.allowed
        else:
            assert d.status == "denied"


FORBID_ADMIN = forbid_engine('context.user == "admin" or context.user in ["root"]')


class TestCost:
    """Tries values built to make one comparison slow: a huge integer against a decimal
    (converting it costs time quadratic in its digits), deep nesting, cyclic lists, long
    lists compared as sets. Each decision must stay fast and fail closed."""

    def test_huge_integer_against_a_decimal(self) -> None:
        huge = 1 << 3_000_000
        for expr in ("context.n < 0.5", "context.n == 0.5", "context.n in [0.5, 1]",
                     "context.l == [0.5]"):
            start = time.process_time()
            assert outcome(expr, {"n": huge, "l": [huge]}) == "error:number_too_large", expr
            assert time.process_time() - start < 0.5
        assert outcome("context.n == context.m", {"n": huge, "m": huge}) == "true"

    def test_deep_and_cyclic_values(self) -> None:
        deep: Any = "x"
        for _ in range(10_000):
            deep = [deep]
        cyclic: list[Any] = []
        cyclic.append(cyclic)
        for value in (deep, cyclic):
            assert outcome("context.v == context.w", {"v": value, "w": [[1]]}) == \
                "error:too_deep"
            assert outcome('"x" in context.v', {"v": value}) == "error:too_deep"

    def test_integers_built_to_collide_in_a_hash_set(self) -> None:
        # Python hashes an integer to its value modulo 2**61 - 1: these all hash alike,
        # so a hash set of them costs time quadratic in their number
        colliding = [k * ((1 << 61) - 1) for k in range(1, 40_001)]
        start = time.process_time()
        assert outcome("7 in context.l", {"l": colliding}) == "false"
        assert outcome("context.l == context.m",
                       {"l": colliding, "m": list(reversed(colliding))}) == "true"
        assert time.process_time() - start < 2.0

    def test_long_lists_compare_in_linear_time(self) -> None:
        a = [f"s{i}" for i in range(200_000)]
        b = list(reversed(a))
        start = time.process_time()  # CPU time: other processes on the machine do not count
        assert outcome("context.a == context.b", {"a": a, "b": b}) == "true"
        assert time.process_time() - start < 2.0
