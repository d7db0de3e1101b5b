"""Units finer than a currency's minor unit (USD_MICROCENTS), on every store: exact
within a currency, refused when not exact, never over a limit, nothing drifts."""

from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction

import pytest
from conftest import STORE_KINDS, Clock, SharedStores
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from policyengine.budgets import (
    BudgetError,
    BudgetInputError,
    BudgetSpec,
    Ledger,
    MemoryStore,
    SQLiteStore,
)
from policyengine.budgets.spec import canonical_unit, money_unit
from policyengine.money import StaticRates

START = 1_773_144_000.0
CENTS_LIMIT = 100  # 1.00 USD
MICRO_LIMIT = 150_000_000  # 1.50 USD in microcents
SPECS = [BudgetSpec("m.usd", ("a:*",), Decimal("1"), "USD", "day", subject="global"),
         BudgetSpec("m.micro", ("a:*", "b:*"), Decimal(MICRO_LIMIT), "USD_MICROCENTS", "day",
                    subject="global")]
# Amounts in microcents: whole cents often, fractions of a cent often, boundaries exactly.
MICRO = st.one_of(st.integers(0, 40).map(lambda c: c * 1_000_000),
                  st.integers(0, 60_000_000),
                  st.sampled_from([1, 999_999, 1_000_001, 50_000_000, 100_000_000]))
OPS = st.lists(st.tuples(st.sampled_from(["a:x", "b:x"]), MICRO,
                         st.sampled_from(["USD_MICROCENTS", "USD"])), max_size=25)


@pytest.mark.parametrize("kind", STORE_KINDS)
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_microcents_are_exact_and_never_over(
    kind: str, ops: list[tuple[str, int, str]], shared_stores: SharedStores
) -> None:
    store: object
    if kind in ("memory", "sqlite"):
        store = MemoryStore() if kind == "memory" else SQLiteStore(":memory:")
    else:
        store = shared_stores.fresh(kind)
    ledger = Ledger(SPECS, store, clock=Clock(START))  # type: ignore[arg-type]
    cents = micro = 0  # the model: what each budget has spent
    for permission, amount, unit in ops:
        if unit == "USD":
            if amount % 1_000_000:
                continue  # not a USD amount
            value: object = Decimal(amount).scaleb(-8)
        else:
            value = amount
        on_cents = permission == "a:x"
        if on_cents and amount % 1_000_000:
            expect = "inexact_amount"
        elif micro + amount > MICRO_LIMIT or (
                on_cents and cents + amount // 1_000_000 > CENTS_LIMIT):
            expect = "budget_exceeded"
        else:
            expect = None
        try:
            ledger.record("bot", permission, value, unit)
            got = None
        except BudgetError as exc:
            got = exc.code
        assert got == expect, (permission, amount, unit)
        if got is None:
            micro += amount
            cents += amount // 1_000_000 if on_cents else 0
        by_id = {b.budget: b for b in ledger.balances()}
        assert by_id["m.micro"].spent == micro <= MICRO_LIMIT
        assert by_id["m.usd"].spent * 100 == cents <= CENTS_LIMIT


def test_commit_in_another_unit_of_the_same_currency_is_exact_or_refused() -> None:
    ledger = Ledger(SPECS, clock=Clock(START))
    r = ledger.reserve("bot", "a:x", "0.50", "USD")
    with pytest.raises(BudgetInputError) as err:
        ledger.commit(r.id, 12_345, "USD_MICROCENTS")
    assert err.value.code == "inexact_amount"
    done = ledger.commit(r.id, 30_000_000, "USD_MICROCENTS")
    assert [line.committed for line in done.lines] == [Decimal("0.30"), Decimal(30_000_000)]


def test_across_currencies_the_rounding_is_up_and_the_reservation_rate_is_kept() -> None:
    rates = StaticRates("EUR", {"USD": Decimal("0.9")})  # 1 USD = 0.9 EUR
    spec = BudgetSpec("m.eur", ("a:*",), Decimal(10), "EUR", "day")
    ledger = Ledger([spec], rates=rates, clock=Clock(START))
    r = ledger.reserve("bot", "a:x", 1, "USD_MICROCENTS")  # 0.000000009 EUR: one cent
    assert r.lines[0].amount == Decimal("0.01") and r.lines[0].rate == Decimal("0.9")
    micro = BudgetSpec("m.m", ("a:*",), Decimal(10**9), "USD_MICROCENTS", "day")
    ledger = Ledger([micro], rates=rates, clock=Clock(START))
    r = ledger.reserve("bot", "a:x", "0.01", "EUR")  # 0.0111... USD
    assert r.lines[0].amount == Decimal(1_111_112)
    done = ledger.commit(r.id, "0.01")  # in the reservation's unit: its recorded rate
    assert done.lines[0].committed == Decimal(1_111_112)


def test_unit_names() -> None:
    assert canonical_unit("usd_microcents") == ("USD_MICROCENTS", 0)
    assert canonical_unit("EUR_MICROCENTS") == ("EUR_MICROCENTS", 0)
    assert money_unit("EUR_MICROCENTS") == ("EUR", 8)
    for bad in ("JPY_MICROCENTS", "BHD_MICROCENTS", "XXX_MICROCENTS", "_MICROCENTS",
                "USDMICROCENTS", "USD_MICROCENTSX"):
        with pytest.raises(BudgetInputError) as err:
            canonical_unit(bad)
        assert err.value.code == "unknown_unit"
    with pytest.raises(BudgetInputError) as err:
        BudgetSpec("m.x", ("a:*",), Decimal("1.5"), "USD_MICROCENTS", "day")
    assert err.value.code == "invalid_budget"


# Rates of up to 40 decimals (what a table takes), so that a cross rate's fraction has a
# long expansion: its rate() (34 digits) then differs from the exact fraction.
RATES = st.builds(lambda digits, places: Decimal(digits).scaleb(-places),
                  st.integers(1, 10**16), st.integers(0, 40)).filter(
                      lambda r: Decimal("1E-12") <= r <= 10**6)
PAIRS = st.sampled_from([
    ("GBP_MICROCENTS", "USD_MICROCENTS"), ("GBP", "USD_MICROCENTS"),
    ("GBP_MICROCENTS", "USD"), ("EUR_MICROCENTS", "USD_MICROCENTS"),
    ("EUR", "USD_MICROCENTS"), ("USD_MICROCENTS", "EUR"), ("GBP_MICROCENTS", "EUR"),
    ("EUR_MICROCENTS", "USD")])


@settings(max_examples=400, deadline=None)
@given(usd=RATES, gbp=RATES, pair=PAIRS, quanta=st.integers(1, 10**12))
@example(usd=Decimal("0." + "9" * 36), gbp=Decimal(1), pair=("EUR_MICROCENTS",
         "USD_MICROCENTS"), quanta=1)  # rate() rounds 1/0.99..9 down to 1: 1 µ¢, not 2
@example(usd=Decimal("0." + "9" * 36), gbp=Decimal(1), pair=("EUR", "USD_MICROCENTS"),
         quanta=1)  # 0.01 EUR came to 1,000,000 µ¢, under its 1,000,000.00...1
@example(usd=Decimal("0.0021"), gbp=Decimal("0.0001"), pair=("GBP_MICROCENTS",
         "USD_MICROCENTS"), quanta=21)  # exactly 1 µ¢; rate() rounded up made it 2
def test_microcent_conversions_charge_the_exact_ceiling(
        usd: Decimal, gbp: Decimal, pair: tuple[str, str], quanta: int) -> None:
    """A spend converted into or out of microcents at a table's rate (a cross rate through
    the base included) is charged exactly the ceiling of its exact value in the budget's
    quantum: never a quantum under it (spend would slip past the limit), never one over
    it; a commit of the reserved amount in its unit charges exactly the hold."""
    spend_unit, budget_unit = pair
    rates = StaticRates("EUR", {"USD": usd, "GBP": gbp})
    spec = BudgetSpec("m.b", ("a:*",), Decimal(10**15) if budget_unit.endswith(
        "MICROCENTS") else Decimal(10**12), budget_unit, "day")
    ledger = Ledger([spec], rates=rates, clock=Clock(START))
    src_scale = 0 if spend_unit.endswith("MICROCENTS") else 2
    amount = Decimal(quanta).scaleb(-src_scale)
    to_base = {"EUR": Fraction(1), "USD": Fraction(usd), "GBP": Fraction(gbp)}
    # the spend in microcents of its own currency, then in the budget's currency
    exact = Fraction(quanta) if spend_unit.endswith("MICROCENTS") else Fraction(amount) * 10**8
    exact = exact * to_base[spend_unit[:3]] / to_base[budget_unit[:3]]
    per_quantum = 1 if budget_unit.endswith("MICROCENTS") else 10**6  # µ¢ in a cent
    want = math.ceil(exact / per_quantum)
    try:
        r = ledger.reserve("bot", "a:x", amount, spend_unit)
    except BudgetError as exc:  # too large for the budget's quanta: nothing to compare
        assert exc.code in ("invalid_amount", "budget_exceeded"), exc
        return
    scale = 0 if budget_unit.endswith("MICROCENTS") else 2
    assert int(r.lines[0].amount.scaleb(scale)) == want
    done = ledger.commit(r.id, amount)
    assert int(done.lines[0].committed.scaleb(scale)) == want
