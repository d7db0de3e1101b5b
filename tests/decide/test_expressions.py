"""Expressions: every operator and function, type errors, NaN/inf, ``in``, globs.

Each expression is judged through two policies so that errors are told apart from false:
a permit ``when EXPR`` (allowed only if EXPR is true) and an unconditional permit with a
forbid ``when EXPR`` (denied if EXPR is true or errors).
"""

from __future__ import annotations

import functools
from decimal import Decimal
from typing import Any

import pytest

from policyengine.engine import Engine

PRINCIPAL = '''role r1: other:*
role r2: other:*
agent "bot": r1, r2 { tier = "gold", level = 3, beta = true, score = 1.5 }
'''


@functools.cache
def engines(expr: str) -> tuple[Engine, Engine]:
    permit = Engine.from_source(PRINCIPAL + f"permit p: t:x when {expr}")
    forbid = Engine.from_source(PRINCIPAL + f"permit base: t:x\nforbid f: t:x when {expr}")
    return permit, forbid


def judge(expr: str, context: Any = None, principal: str = "bot") -> bool | str:
    permit, forbid = engines(expr)
    p = permit.authorize(principal, "t:x", context)
    f = forbid.authorize(principal, "t:x", context)
    if p.allowed:
        assert p.diagnostics == ()
        assert not f.allowed and f.code == "forbidden"
        return True
    if f.allowed:
        return False
    # errored: the permit was skipped and the forbid applied, both with a diagnostic
    assert [d.effect for d in p.diagnostics] == ["skipped"]
    assert [d.rule for d in f.diagnostics] == ["default.f"]
    assert f.diagnostics[0].code == p.diagnostics[0].code
    return f"error:{f.diagnostics[0].code}"


@pytest.mark.parametrize(
    ("expr", "ctx", "expected"),
    [
        ("context.a == 1", {"a": 1}, True),
        ("context.a == 1", {"a": 2}, False),
        ("context.a == 1", {"a": 1.0}, True),
        ("context.a == 1", {"a": Decimal("1.00")}, True),
        ("context.a == 1.5", {"a": 1.5}, True),
        ("context.a == 1", {"a": True}, "error:type_error"),
        ("context.a == true", {"a": 1}, "error:type_error"),
        ("context.a == true", {"a": True}, True),
        ("context.a == 0", {"a": False}, "error:type_error"),
        ("context.a == \"1\"", {"a": 1}, "error:type_error"),
        ("context.a == \"x\"", {"a": "x"}, True),
        ("context.a == \"x\"", {"a": "X"}, False),
        ("context.a != 1", {"a": 2}, True),
        ("context.a != 1", {"a": 1}, False),
        ("context.a != 1", {"a": "1"}, "error:type_error"),
        ("context.a == context.b", {"a": [1, 2], "b": [1, 2]}, True),
        ("context.a == context.b", {"a": {"k": 1}, "b": {"k": 1}}, True),
        ("context.a < 5", {"a": 4}, True),
        ("context.a < 5", {"a": 5}, False),
        ("context.a <= 5", {"a": 5}, True),
        ("context.a > 5", {"a": Decimal("5.01")}, True),
        ("context.a >= 5", {"a": 4.99}, False),
        ("context.a < 5", {"a": "4"}, "error:type_error"),
        ("context.a < context.b", {"a": "a", "b": "b"}, "error:type_error"),
        ("context.a < 5", {"a": True}, "error:type_error"),
        ("context.a < 5", {"a": None}, "error:type_error"),
        ("context.a < 5", {"a": [1]}, "error:type_error"),
        ("context.a < 5", {}, "error:missing_attribute"),
        ("context.a.b == 1", {"a": {"b": 1}}, True),
        ("context.a.b == 1", {"a": "str"}, "error:type_error"),
        ("context.a.b == 1", {"a": [1]}, "error:type_error"),
        ("context.a.b == 1", {"a": {}}, "error:missing_attribute"),
        ('context["a b"] == 1', {"a b": 1}, True),
        ("context.a", {"a": True}, True),
        ("context.a", {"a": False}, False),
        ("context.a", {"a": 1}, "error:type_error"),
        ("context.a", {"a": "true"}, "error:type_error"),
        ("not context.a", {"a": False}, True),
        ("not context.a", {"a": 0}, "error:type_error"),
        ("context.a and context.b", {"a": True, "b": True}, True),
        ("context.a and context.b", {"a": True, "b": False}, False),
        ("context.a or context.b", {"a": False, "b": True}, True),
        ("context.a or context.b", {"a": False, "b": False}, False),
        ("context.a or context.b", {"a": False, "b": "x"}, "error:type_error"),
    ],
)
def test_operators(expr: str, ctx: dict[str, Any], expected: bool | str) -> None:
    assert judge(expr, ctx) == expected


@pytest.mark.parametrize(
    ("value", "expr"),
    [
        (float("nan"), "context.a < 5"),
        (float("nan"), "context.a == 1"),
        (float("nan"), "context.a != 1"),
        (float("nan"), "context.a in [1, 2]"),
        (float("nan"), "context.a not in [1, 2]"),
        (float("inf"), "context.a > 5"),
        (float("-inf"), "context.a < 5"),
        (float("inf"), "context.a != 1"),
        (Decimal("NaN"), "context.a < 5"),
        (Decimal("Infinity"), "context.a > 5"),
        (Decimal("sNaN"), "context.a == 1.5"),
    ],
)
def test_non_finite_numbers_fail_closed(value: Any, expr: str) -> None:
    result = judge(expr, {"a": value})
    assert isinstance(result, str) and result.startswith("error:")


@pytest.mark.parametrize("expr", ["context.a != 1.5", "context.a == 1.5",
                                  "context.a not in [1.5, 2.5]", "context.a == context.a"])
def test_decimal_nan_fails_closed_in_equality(expr: str) -> None:
    result = judge(expr, {"a": Decimal("NaN")})
    assert isinstance(result, str) and result.startswith("error:")


def test_float_nan_against_itself_fails_closed() -> None:
    result = judge("context.a == context.a", {"a": float("nan")})
    assert isinstance(result, str) and result.startswith("error:")


@pytest.mark.parametrize(
    ("expr", "ctx", "expected"),
    [
        ('context.a in ["x", "y"]', {"a": "x"}, True),
        ('context.a in ["x", "y"]', {"a": "z"}, False),
        ('context.a in ["x", "y"]', {"a": 1}, "error:type_error"),
        ('context.a not in ["x", "y"]', {"a": "z"}, True),
        ('context.a not in ["x", "y"]', {"a": "x"}, False),
        ("context.a in [1, 2.5]", {"a": 2.5}, True),
        ("context.a in [1, 2.5]", {"a": Decimal("1.0")}, True),
        ("context.a in [1, 2]", {"a": True}, "error:type_error"),
        ("context.a in [true]", {"a": 1}, "error:type_error"),
        ("context.a in []", {"a": 1}, False),
        ('context.a in ["x"]', {"a": ["x"]}, "error:type_error"),
        ('context.a in ["x"]', {"a": {"x": 1}}, "error:type_error"),
        ("context.a in context.list", {"a": "x", "list": ["x", "y"]}, True),
        ("context.a in context.list", {"a": "z", "list": ("x", "y")}, False),
        ("context.a in context.list", {"a": 1, "list": [True]}, "error:type_error"),
        ("context.a in context.list", {"a": "x", "list": "xyz"}, "error:type_error"),
        ("context.a in context.list", {"a": "x", "list": {"x": 1}}, "error:type_error"),
        ("context.a in context.list", {"a": "x"}, "error:missing_attribute"),
        ("context.a not in context.list", {"a": "x", "list": None}, "error:type_error"),
        ('"r1" in principal.roles', {}, True),
        ('"admin" in principal.roles', {}, False),
    ],
)
def test_in(expr: str, ctx: dict[str, Any], expected: bool | str) -> None:
    assert judge(expr, ctx) == expected


@pytest.mark.parametrize(
    ("expr", "principal", "expected"),
    [
        ('principal.id == "bot"', "bot", True),
        ('principal.id == "bot"', "other", False),
        ('principal.attributes.tier == "gold"', "bot", True),
        ("principal.attributes.level >= 3", "bot", True),
        ("principal.attributes.beta", "bot", True),
        ("principal.attributes.score == 1.5", "bot", True),
        ('principal.attributes.tier == "gold"', "other", "error:missing_attribute"),
        ("principal.attributes.nope == 1", "bot", "error:missing_attribute"),
        ('contains(principal.roles, "r2")', "bot", True),
    ],
)
def test_principal(expr: str, principal: str, expected: bool | str) -> None:
    assert judge(expr, {}, principal) == expected


@pytest.mark.parametrize(
    ("expr", "ctx", "expected"),
    [
        ('startswith(context.s, "ab")', {"s": "abc"}, True),
        ('startswith(context.s, "ab")', {"s": "xabc"}, False),
        ('startswith(context.s, "")', {"s": ""}, True),
        ('startswith(context.s, "ab")', {"s": 1}, "error:type_error"),
        ("startswith(context.s, context.p)", {"s": "abc", "p": None}, "error:type_error"),
        ('endswith(context.s, ".txt")', {"s": "a.txt"}, True),
        ('endswith(context.s, ".txt")', {"s": "a.txt.gz"}, False),
        ('endswith(context.s, ".txt")', {"s": ["a.txt"]}, "error:type_error"),
        ('contains(context.s, "sudo")', {"s": "run sudo ls"}, True),
        ('contains(context.s, "sudo")', {"s": "run ls"}, False),
        ('contains(context.s, "x")', {"s": ["x", "y"]}, True),
        ('contains(context.s, "z")', {"s": ["x", "y"]}, False),
        ("contains(context.s, 1)", {"s": "a1"}, "error:type_error"),
        ('contains(context.s, "x")', {"s": 5}, "error:type_error"),
        ('matches(context.s, "*.env")', {"s": "prod.env"}, True),
        ('matches(context.s, "*.env")', {"s": "prod.env.bak"}, False),
        ('matches(context.s, "*.env")', {"s": "prodXenv"}, False),
        ('matches(context.s, "a?c")', {"s": "abc"}, True),
        ('matches(context.s, "a?c")', {"s": "ac"}, False),
        ('matches(context.s, "a?c")', {"s": "abbc"}, False),
        ('matches(context.s, "a*")', {"s": "a\nb"}, True),
        ('matches(context.s, "(a|b)+")', {"s": "(a|b)+"}, True),
        ('matches(context.s, "(a|b)+")', {"s": "a"}, False),
        ('matches(context.s, "[abc]")', {"s": "a"}, False),
        ('matches(context.s, "[abc]")', {"s": "[abc]"}, True),
        ('matches(context.s, "^a$")', {"s": "^a$"}, True),
        ('matches(context.s, "a.c")', {"s": "abc"}, False),
        ('matches(context.s, "\\\\d")', {"s": "\\d"}, True),
        ('matches(context.s, "\\\\d")', {"s": "5"}, False),
        ('matches(context.s, "")', {"s": ""}, True),
        ('matches(context.s, "*")', {"s": 3}, "error:type_error"),
    ],
)
def test_functions(expr: str, ctx: dict[str, Any], expected: bool | str) -> None:
    assert judge(expr, ctx) == expected


def test_unless_inverts_and_conditions_conjoin() -> None:
    eng = Engine.from_source(PRINCIPAL + "permit p: t:x when context.a == 1 "
                             "unless context.b == 2")
    assert eng.authorize("bot", "t:x", {"a": 1, "b": 3}).allowed
    assert not eng.authorize("bot", "t:x", {"a": 1, "b": 2}).allowed
    assert not eng.authorize("bot", "t:x", {"a": 0, "b": 3}).allowed


def test_short_circuit_keeps_errors_out_of_decided_branches() -> None:
    assert judge("context.a or context.missing", {"a": True}) is True
    assert judge("context.a and context.missing", {"a": False}) is False


def test_money_comparison_in_conditions() -> None:
    eng = Engine.from_source("currency EUR\nrate USD 0.5\n" + PRINCIPAL
                             + "permit p: t:x when amount < 100 EUR and amount >= 20 USD")
    assert eng.authorize("bot", "t:x", {"amount": "50", "currency": "EUR"}).allowed
    assert eng.authorize("bot", "t:x", {"amount": "100", "currency": "USD"}).allowed
    assert not eng.authorize("bot", "t:x", {"amount": "100", "currency": "EUR"}).allowed
    assert not eng.authorize("bot", "t:x", {"amount": "5", "currency": "EUR"}).allowed
    d = eng.authorize("bot", "t:x", {"amount": "abc", "currency": "EUR"})
    assert not d.allowed and d.diagnostics
