"""A declared context schema validates requests at run time: a context that does not
fit is ``invalid_request`` naming the path; an undeclared permission is not touched."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policyengine import Engine

RULES = """namespace pay
currency EUR
role r: pay:*
agent "bot": r
forbid risky: pay:refund when context.risk > 0.8
permit vip: pay:vip when context.customer.tier == "gold"
"""
SCHEMA = """schema pay:refund, pay:vip {
  amount: money
  currency: string
  country: enum("FR", "DE")
  count: int
  risk: decimal
  urgent?: bool
  tags?: list[string]
  customer?: { id: string, tier?: enum("gold", "silver") }
}
"""
OK: dict[str, Any] = {"amount": "12.50", "currency": "EUR", "country": "FR", "count": 2,
                      "risk": Decimal("0.2")}


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.from_source(RULES + SCHEMA)


def test_a_context_that_fits_is_decided(engine: Engine) -> None:
    d = engine.authorize("bot", "pay:refund", OK)
    assert (d.status, d.code) == ("allowed", "permitted")
    full = {**OK, "urgent": True, "tags": ["a", "b"], "customer": {"id": "c1", "tier": "gold"},
            "extra": object()}  # keys the schema does not declare are not checked
    assert engine.authorize("bot", "pay:refund", full).status == "allowed"
    assert engine.authorize("bot", "pay:refund", {**OK, "count": 2, "risk": 1}).code == "forbidden"
    assert engine.authorize("bot", "pay:refund", {**OK, "risk": 0.5}).status == "allowed"
    assert engine.authorize("bot", "pay:refund", {**OK, "amount": 5}).status == "allowed"


BAD = [
    ({"country": "XX"}, 'context.country: expected one of "FR", "DE", got \'XX\''),
    ({"country": None}, "context.country: expected one of"),
    ({"count": True}, "context.count: expected an int, got bool"),
    ({"count": "2"}, "context.count: expected an int, got str"),
    ({"risk": "0.2"}, "context.risk: expected a number, got str"),
    ({"risk": float("nan")}, "context.risk: expected a number, got float"),
    ({"amount": "12,50"}, "context.amount: expected an amount like"),
    ({"amount": -1}, "context.amount: an amount is never negative"),
    ({"amount": 1.5}, "context.amount: expected an amount (a decimal string or an integer)"),
    ({"urgent": "yes"}, "context.urgent: expected true or false, got str"),
    ({"tags": "a"}, "context.tags: expected a list, got str"),
    ({"tags": ["a", 3]}, "context.tags[1]: expected a string, got int"),
    ({"customer": []}, "context.customer: expected an object, got list"),
    ({"customer": {}}, "context.customer.id: missing (the schema requires it)"),
    ({"customer": {"id": "c", "tier": "bronze"}}, "context.customer.tier: expected one of"),
]


@pytest.mark.parametrize(("change", "message"), BAD)
def test_a_context_that_does_not_fit_is_an_invalid_request(
        engine: Engine, change: dict[str, Any], message: str) -> None:
    d = engine.authorize("bot", "pay:refund", {**OK, **change})
    assert (d.status, d.code) == ("denied", "invalid_request")
    assert d.reason.startswith(message), d.reason
    assert d.rules == ()


@pytest.mark.parametrize("missing", ["amount", "currency", "country", "count", "risk"])
def test_every_required_key_is_required(engine: Engine, missing: str) -> None:
    context = {k: v for k, v in OK.items() if k != missing}
    d = engine.authorize("bot", "pay:refund", context)
    assert d.code == "invalid_request"
    assert d.reason == f"context.{missing}: missing (the schema requires it)"
    assert engine.authorize("bot", "pay:refund", None).code == "invalid_request"


def test_undeclared_permissions_are_not_validated(engine: Engine) -> None:
    assert engine.authorize("bot", "pay:other", {"country": 3}).status == "allowed"
    assert engine.policy.plan("bot", "pay:other").schema is None
    assert engine.policy.plan("bot", "pay:refund").schema is not None
    plain = Engine.from_source(RULES)
    assert plain.policy.plan("bot", "pay:refund").schema is None


def test_explain_and_tool_calls_validate_too() -> None:
    engine = Engine.from_source(RULES + SCHEMA + """tool pay: function "refund" -> pay:refund {
  amount = $.amount, currency = $.currency
}
""")
    explained = engine.explain("bot", "pay:refund", {**OK, "count": "x"})
    assert explained.decision.code == "invalid_request"
    assert explained.steps[0]["result"].startswith("invalid_request: context.count")
    tool = engine.tool_authorize("bot", transport="function", function_name="refund",
                                 body={"amount": "5", "currency": "EUR"})
    assert tool.code == "invalid_request" and "context.country: missing" in tool.reason


def test_several_schemas_each_apply() -> None:
    engine = Engine.from_source('role r: pay:*\nagent "bot": r\n'
                                "schema pay:* { country: string }\n"
                                "schema pay:refund { count: int }\n"
                                'forbid x: pay:refund when context.count > 5 or '
                                'context.country == "KP"\n')
    assert engine.authorize("bot", "pay:refund", {"country": "KP", "count": 1}).code == \
        "forbidden"
    assert engine.authorize("bot", "pay:refund", {"country": "FR", "count": 1}).allowed
    assert "context.count" in engine.authorize("bot", "pay:refund", {"country": "FR"}).reason
    assert "context.country" in engine.authorize("bot", "pay:refund", {"count": 1}).reason
    assert engine.authorize("bot", "pay:other", {"country": "FR"}).allowed


class Hostile(list[Any]):
    def __iter__(self) -> Any:
        raise RuntimeError("boom")


class Sneaky(dict[str, Any]):
    def get(self, *_: Any) -> Any:  # never called: the validator reads with dict.get
        return "FR"


def test_hostile_values_are_read_by_their_real_contents(engine: Engine) -> None:
    d = engine.authorize("bot", "pay:refund", {**OK, "tags": Hostile(["a", 3])})
    assert d.code == "invalid_request"
    assert d.reason == "context.tags[1]: expected a string, got int"
    sneaky = Sneaky({k: v for k, v in OK.items() if k != "country"})
    assert engine.authorize("bot", "pay:refund", sneaky).reason.startswith(
        "context.country: missing")


_values = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.text(max_size=3),
                    st.sampled_from(["FR", "DE", "12.50", "gold"]),
                    st.decimals(allow_nan=False, allow_infinity=False, places=2),
                    st.lists(st.sampled_from(["a", 1]), max_size=2))


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(["amount", "currency", "country", "count", "risk",
                                        "urgent", "tags", "customer"]), _values))
def test_a_schema_only_ever_turns_a_decision_into_invalid_request(
        changes: dict[str, Any]) -> None:
    """With a schema, every request is either refused as invalid or decided exactly as
    without it: a schema never allows what the rules deny."""
    context = {**OK, **changes}
    typed = Engine.from_source(RULES + SCHEMA).authorize("bot", "pay:refund", context)
    plain = Engine.from_source(RULES).authorize("bot", "pay:refund", context)
    if typed.code == "invalid_request":
        assert typed.reason.startswith("context")
    else:
        assert (typed.status, typed.code, typed.rules) == (plain.status, plain.code,
                                                           plain.rules)
