"""The wires' dollar arithmetic (cost units, microcents, cents, Cycles minor units) runs
in the package's money context, never the thread's: under an embedding application's
``decimal.getcontext().prec = 3`` a Cycles commit of 1001 cents was recorded as 10.0 USD,
a refusal's 123456.78 USD limit said 1.23E+5, and 123456789 tokens at 2.50 USD per 1M
cost 308000 cost units instead of 308642. A spend is never under-counted by a context."""

from __future__ import annotations

import decimal
from decimal import ROUND_DOWN, Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policyengine.server import _actguard, _budgetwire
from policyengine.server._cycles import CyclesWire

SMALL = decimal.Context(prec=3, rounding=ROUND_DOWN)
usd = st.decimals(min_value=0, max_value=10**12, places=8, allow_nan=False,
                  allow_infinity=False)


@given(usd)
def test_microcents_and_cents_do_not_depend_on_the_thread_context(value: Decimal) -> None:
    want = (_budgetwire.microcents(value), _budgetwire.at_cent(value), _actguard._cu(value))
    with decimal.localcontext(SMALL):
        assert (_budgetwire.microcents(value), _budgetwire.at_cent(value),
                _actguard._cu(value)) == want
    assert want[0] >= value * 10**8 and want[1] >= value


@given(st.integers(0, 2**63 - 1), st.sampled_from([0, 2, 3, 8]))
def test_cycles_minor_units_do_not_depend_on_the_thread_context(amount: int,
                                                                 places: int) -> None:
    want = CyclesWire._to_ledger(amount, places)
    with decimal.localcontext(SMALL):
        got = CyclesWire._to_ledger(amount, places)
        assert got == want and CyclesWire._to_wire(got, places) == amount


@pytest.mark.parametrize("usage", [
    {"currency": "USD_MICROCENTS", "limit": 123456789012, "spent": 98765432109,
     "remaining": 24691356903},
    {"currency": "USD", "limit": "123456.78", "spent": "98765.43", "remaining": "24691.35"}])
def test_refusal_amounts_do_not_depend_on_the_thread_context(usage: dict[str, object]
                                                             ) -> None:
    want = _budgetwire.usd_amounts(usage)
    with decimal.localcontext(SMALL):
        assert _budgetwire.usd_amounts(usage) == want


def test_cost_units_of_a_price_do_not_depend_on_the_thread_context() -> None:
    want = _actguard._cu_per(Decimal("2.50"), 1_000_000, 123_456_789)
    with decimal.localcontext(SMALL):
        assert _actguard._cu_per(Decimal("2.50"), 1_000_000, 123_456_789) == want == 308642


class _Metrics:
    def error(self, code: str) -> None:
        pass


class _Service:
    metrics = _Metrics()


@pytest.mark.parametrize("status", [409, 402])
def test_an_actguard_refusals_cost_units_do_not_depend_on_the_thread_context(
        status: int) -> None:
    """The 409's ``cost_used`` (spent + reserved) and the 402's shortfall: a prec=3
    context made 98765.43 + 1.00 USD 98700 USD, under-stating the spend to the SDK."""
    import json

    wire = object.__new__(_actguard.ActguardWire)
    wire.service = _Service()  # type: ignore[assignment]
    usage = {"currency": "USD", "limit": "123456.78", "spent": "98765.43",
             "reserved": "1.00", "debt": "98765.43", "attempted": "1.00",
             "remaining": "24690.35"}

    def body() -> dict[str, object]:
        refused = wire._exceeded("budget_exceeded", "over", usage, "u", status)
        return json.loads(refused.reply.body)  # type: ignore[no-any-return]

    want = body()
    with decimal.localcontext(SMALL):
        assert body() == want
    if status == 409:
        assert want["cost_used"] == _actguard._cu(Decimal("98766.43"))
    else:
        assert want["shortfall"] == _actguard._cu(Decimal("98766.43"))
