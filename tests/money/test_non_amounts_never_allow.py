"""No value that is not an amount (a float, NaN, an infinity, a bool, a Decimal NaN/sNaN,
an exponent of 10**9, a negative zero) is ever allowed as one, on any entry point that
takes an amount, and none raises anything but a coded error or takes long; and a decimal
amount is decided the same whether given as text, as a ``Decimal`` or as a JSON number in
a tool call's body (the JSON is read exactly, never through a float)."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policyengine.budgets import BudgetError, BudgetSpec, Ledger, MemoryStore
from policyengine.engine import Engine
from policyengine.errors import PolicyEngineError
from policyengine.money import StaticRates

POLICY = """namespace nf
currency EUR
rate USD 0.92
role r: pay:*
agent "bot": r

limit cap: pay:* amount <= 500 EUR

tool pay: http "pay.example.com" {
  POST "/v1/pay" -> pay:send { amount = $.amount, currency = $.currency }
}
"""

ENGINE = Engine.from_source(POLICY)

non_amounts = (
    st.floats()
    | st.sampled_from([float("nan"), float("inf"), float("-inf"), -0.0, 5e-324, 0.1, 500.0])
    | st.booleans()
    | st.sampled_from([Decimal("NaN"), Decimal("sNaN"), Decimal("-NaN7"), Decimal("Infinity"),
                       Decimal("-Infinity"), Decimal("-0"), Decimal("1E+999999999"),
                       Decimal("1E-999999999"), Decimal("0E-999999999"),
                       Decimal("-1E+999999999"), "1e999999999", "-0", "NaN", "0.1e1",
                       10**5000, -1, Decimal("500.001")]))


def _timed(call: Any) -> Any:
    started = time.perf_counter()
    try:
        return call()
    finally:
        assert time.perf_counter() - started < 0.5


@settings(max_examples=300, deadline=None)
@given(non_amounts, st.sampled_from(["EUR", "USD"]))
def test_a_non_amount_is_never_allowed(value: object, currency: str) -> None:
    d = _timed(lambda: ENGINE.authorize("bot", "pay:send",
                                        context={"amount": value, "currency": currency}))
    assert d.status == "denied" and d.code == "invalid_amount", (value, d)
    t = _timed(lambda: ENGINE.tool_authorize(
        "bot", transport="http", method="POST", host="pay.example.com", path="/v1/pay",
        body={"amount": value, "currency": currency}))
    assert t.status == "denied", (value, t)


@settings(max_examples=200, deadline=None)
@given(non_amounts)
def test_a_non_amount_never_reaches_a_budget(value: object) -> None:
    ledger = Ledger([BudgetSpec("nf.day", ("pay:*",), Decimal(1000), "EUR", "day")],
                    MemoryStore(), rates=StaticRates("EUR", {"USD": Decimal("0.92")}))
    for call in (lambda: ledger.record("bot", "pay:send", value, "EUR"),
                 lambda: ledger.reserve("bot", "pay:send", value, "USD"),
                 lambda: ledger.check("bot", "pay:send", value, "EUR")):
        with pytest.raises(BudgetError) as err:
            _timed(call)
        assert isinstance(err.value, PolicyEngineError) and err.value.code == "invalid_amount"
    assert ledger.record("bot", "pay:send", "1", "EUR").status == "committed"


@settings(max_examples=300, deadline=None)
@given(st.decimals(min_value=0, max_value=1000, places=2, allow_nan=False,
                   allow_infinity=False), st.sampled_from(["EUR", "USD"]))
def test_a_decimal_amount_is_decided_alike_as_text_decimal_and_json(amount: Decimal,
                                                                    currency: str) -> None:
    def decide(value: object) -> tuple[str, str]:
        d = ENGINE.authorize("bot", "pay:send", context={"amount": value, "currency": currency})
        return d.status, d.code
    want = decide(format(amount, "f"))
    assert decide(amount) == want
    body = '{"amount": ' + format(amount, "f") + ', "currency": "' + currency + '"}'
    t = ENGINE.tool_authorize("bot", transport="http", method="POST", host="pay.example.com",
                              path="/v1/pay", body=body.encode())
    assert (t.status, t.code) == want
    assert want[0] == ("allowed" if amount * (1 if currency == "EUR" else Decimal("0.92"))
                       <= 500 else "denied")
