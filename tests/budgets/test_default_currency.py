"""The one rule for an amount given without a unit (docs/semantics.md, "Amounts and
currencies"): a request's ``context.amount`` and ``engine.budgets.check`` / ``reserve`` /
``record`` / ``admit`` read it alike -- the policy's ``default_currency`` where a money
budget covers the permission, ``missing_currency`` without one -- and a ``usage=`` that
is not an :class:`LLMUsage` is refused, never spent as an amount."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from conftest import BUDGET_NOW, Clock
from hypothesis import given, settings
from hypothesis import strategies as st

import policyengine as pe
from policyengine.budgets import BudgetError, BudgetSpec, Ledger, LLMUsage
from policyengine.money import MoneyError
from policyengine.money._money import amount_unit


def _policy(default: str | None, budget: str = "EUR", limit: str = "10") -> str:
    return ("namespace dc\ncurrency EUR\n"
            + (f"default_currency {default}\n" if default else "")
            + "rate USD 0.9\nrate GBP 1.17\nrole r: pay:*, llm:*\nagent \"bot\": r\n"
            f"budget money: pay:* limit {limit} {budget} per day per agent\n")


def _engine(default: str | None, budget: str = "EUR", **options: Any) -> pe.Engine:
    return pe.Engine.from_source(_policy(default, budget), clock=Clock(BUDGET_NOW), **options)


def test_the_rule_in_one_function() -> None:
    assert amount_unit("GBP", "USD") == "GBP"
    assert amount_unit(None, "USD") == "USD"
    with pytest.raises(MoneyError) as exc:
        amount_unit(None, None)
    assert exc.value.code == "missing_currency"
    # a ledger spend on a permission no money budget covers: its non-money unit
    assert amount_unit(None, "USD", {"tokens"}) == "tokens"
    assert amount_unit(None, None, set()) is None
    with pytest.raises(MoneyError) as exc:
        amount_unit(None, "USD", {"tokens", "credits"})
    assert exc.value.code == "unit_required"


def test_the_review_repro_authorize_and_the_ledger_agree() -> None:
    """default_currency USD, rate USD 0.9, a 10 EUR budget: 11 without a currency is
    11 USD = 9.90 EUR for authorize and for engine.budgets alike."""
    engine = _engine("USD")
    assert engine.authorize("bot", "pay:x", {"amount": "11"}).code == "permitted"
    assert engine.budgets.check("bot", "pay:x", "11").allowed
    done = engine.budgets.record("bot", "pay:x", "11", None)
    assert (done.unit, done.amount, done.lines[0].amount) == ("USD", Decimal("11.00"),
                                                             Decimal("9.90"))
    # without a default: missing_currency for both, never the budget's own EUR
    engine = _engine(None)
    assert engine.authorize("bot", "pay:x", {"amount": "1"}).code == "missing_currency"
    for op in (engine.budgets.check, engine.budgets.reserve, engine.budgets.record,
               engine.budgets.admit):
        with pytest.raises(BudgetError) as exc:
            op("bot", "pay:x", "1", None)
        assert exc.value.code == "missing_currency", op
    assert engine.budgets.balances("bot")[0].reserved == Decimal(0)


def _decided(engine: pe.Engine, amount: object, currency: str | None) -> tuple[str, ...]:
    context: dict[str, Any] = {"amount": amount}
    if currency is not None:
        context["currency"] = currency
    d = engine.authorize("bot", "pay:x", context)
    if d.status == "allowed":
        return ("fits",)
    return ("exceeded",) if d.code == "budget_exceeded" else ("refused", d.code)


def _checked(engine: pe.Engine, op: str, amount: object, currency: str | None
             ) -> tuple[str, ...]:
    try:
        found = getattr(engine.budgets, op)("bot", "pay:x", amount, currency)
    except BudgetError as exc:
        return ("refused", exc.code)
    if found.allowed:
        return ("fits",)
    return ("exceeded",) if found.code == "budget_exceeded" else ("refused", found.code)


_AMOUNTS = st.one_of(
    st.integers(0, 30),
    st.builds(lambda whole, cents, places: f"{whole}.{cents:03d}"[:len(str(whole)) + 1
                                                                    + places],
              st.integers(0, 30), st.integers(0, 999), st.integers(1, 3)),
)


@settings(max_examples=300, deadline=None)
@given(default=st.sampled_from([None, "EUR", "USD", "GBP"]),
       budget=st.sampled_from(["EUR", "USD"]),
       currency=st.sampled_from([None, "EUR", "USD", "GBP", "JPY", "usd", "tokens"]),
       amount=_AMOUNTS, spent_cents=st.integers(0, 1000))
def test_authorize_and_the_ledger_agree_on_every_amount(
        default: str | None, budget: str, currency: str | None, amount: object,
        spent_cents: int) -> None:
    """For random amounts, currencies (or none), default_currency settings and spend so
    far, authorize and engine.budgets.admit (the check authorize makes) give the same
    answer -- fits, exceeded, or the same refusal code -- and so does
    engine.budgets.check (the plain projection) while the budget has room left (an
    exhausted budget refuses even an amount of 0 in admit, by design)."""
    engine = _engine(default, budget)
    if spent_cents:
        engine.budgets.record("bot", "pay:x", Decimal(spent_cents).scaleb(-2), budget)
    decided = _decided(engine, amount, currency)
    answers = [_checked(engine, "admit", amount, currency)]
    if spent_cents < 1000:
        answers.append(_checked(engine, "check", amount, currency))
    for got in answers:
        if currency == "tokens":  # no money budget counts it: both refuse (authorize may
            # read "0.5 tokens" as invalid_amount before the ledger's unit_mismatch)
            assert got[0] == decided[0] == "refused"
        else:
            assert got == decided
    if default is None and currency is None:
        assert decided == ("refused", "missing_currency")


def test_non_money_budgets_take_their_own_unit() -> None:
    """A permission only non-money budgets cover: an amount without a unit is in their
    one unit (the default currency could not count it); several: unit_required."""
    specs = [BudgetSpec("t.tok", ("tok:*",), Decimal(1000), "tokens", "hour"),
             BudgetSpec("t.mt", ("meter:*",), Decimal(1000), "tokens", "hour"),
             BudgetSpec("t.mc", ("meter:*",), Decimal(5), "credits", "day"),
             BudgetSpec("t.calls", ("call:*",), Decimal(2), "calls", "minute")]
    for default in (None, "USD"):
        ledger = Ledger(specs, clock=Clock(BUDGET_NOW), default_currency=default)
        assert ledger.reserve("bot", "tok:x", 500).unit == "tokens"
        r = ledger.reserve("bot", "call:x", 0)
        assert r.unit is None and [ln.amount for ln in r.lines] == [Decimal(1)]
        with pytest.raises(BudgetError) as exc:
            ledger.reserve("bot", "meter:x", "1")
        assert exc.value.code == "unit_required"
        assert ledger.reserve("bot", "none:x", "1").lines == ()


def test_a_standalone_ledger_takes_a_default_currency() -> None:
    specs = [BudgetSpec("t.eur", ("pay:*",), Decimal(10), "EUR", "day"),
             BudgetSpec("t.tok", ("pay:*",), Decimal(1000), "tokens", "day")]
    rates = pe.StaticRates("EUR", {"USD": "0.9"})
    ledger = Ledger(specs, rates=rates, clock=Clock(BUDGET_NOW), default_currency="usd")
    assert ledger.default_currency == "USD"
    r = ledger.reserve("bot", "pay:x", "2")
    assert r.unit == "USD" and [ln.amount for ln in r.lines] == [Decimal("1.80")]
    with pytest.raises(BudgetError) as exc:
        Ledger(specs).reserve("bot", "pay:x", "2")
    assert exc.value.code == "missing_currency"
    for bad in ("tokens", "XYZ", 5, "USD_MICROCENTS"):
        with pytest.raises(BudgetError) as exc:
            Ledger(specs, default_currency=bad)  # type: ignore[arg-type]
        assert exc.value.code == "unknown_unit", bad


def test_the_engine_with_a_decision_log_has_the_default_too() -> None:
    from policyengine.audit import CallbackSink, DecisionLog
    records: list[Any] = []
    engine = _engine("USD", decision_log=DecisionLog(CallbackSink(records.append)))
    assert engine.budgets.record("bot", "pay:x", "11").lines[0].amount == Decimal("9.90")
    engine.reload()
    assert engine.budgets.default_currency == "USD"


def test_a_shadow_budget_is_charged_in_the_spends_unit() -> None:
    """One spend, one unit: an amount the enforced budgets read as USD is not counted
    as tokens by a tokens shadow budget (before, the shadow ledger read the unit on its
    own, from its own budgets)."""
    clock = Clock(BUDGET_NOW)
    rates = pe.StaticRates("EUR", {"USD": "0.9"})
    real = BudgetSpec("t.real", ("llm:*",), Decimal(100), "EUR", "day")
    trial = BudgetSpec("t.trial", ("llm:*",), Decimal(1000), "tokens", "day")
    ledger = Ledger([real], rates=rates, clock=clock, shadow=[trial],
                    default_currency="USD")
    ledger.record("bot", "llm:chat", "5")
    ledger.reserve("bot", "llm:chat", "7")
    (shadow,) = Ledger([trial], ledger.store, clock=clock).balances("bot")
    assert (shadow.spent, shadow.reserved) == (Decimal(0), Decimal(0))
    (real_b,) = ledger.balances("bot")
    assert (real_b.spent, real_b.reserved) == (Decimal("4.50"), Decimal("6.30"))


@pytest.mark.parametrize("usage", [5, "5", Decimal(5), {"provider": "openai"}, None])
def test_usage_must_be_an_llm_usage(usage: object) -> None:
    """``usage=5`` was spent as the amount 5.00; every operation now refuses it."""
    engine = _engine("USD")
    ledger = engine.budgets
    held = ledger.reserve("bot", "pay:x", "1", "EUR")
    if usage is None:  # the control: no usage at all is an amount spend
        assert ledger.reserve("bot", "pay:x", "1", "EUR", usage=None).lines
        return
    for call in (lambda: ledger.reserve("bot", "pay:x", usage=usage),
                 lambda: ledger.record("bot", "pay:x", usage=usage),
                 lambda: ledger.check("bot", "pay:x", usage=usage),
                 lambda: ledger.admit("bot", "pay:x", usage=usage),
                 lambda: ledger.commit(held.id, usage=usage)):
        with pytest.raises(BudgetError) as exc:
            call()
        assert exc.value.code == "invalid_amount"
        assert exc.value.details == {"reason": "invalid_usage"}
    (b,) = ledger.balances("bot")
    assert (b.spent, b.reserved) == (Decimal(0), Decimal("1.00"))
    assert ledger.get(held.id).status == "active"
    # a real usage still goes through to pricing (this policy has no price table)
    with pytest.raises(BudgetError) as exc:
        ledger.reserve("bot", "pay:x", usage=LLMUsage("openai", "gpt-4o", 10))
    assert exc.value.code == "unpriced_model"
