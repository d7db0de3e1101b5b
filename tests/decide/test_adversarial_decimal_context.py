"""Adversarial: the calling thread's ``decimal`` context.

``decimal`` arithmetic rounds and traps by the *thread's* context, which any caller
(or library) may change: a precision of 3, rounding down, ``Inexact`` or
``FloatOperation`` trapped, a tiny ``Emax``. Money computed in that context makes
``authorize`` raise or a commit record less than was spent. Every money computation
must run in the engine's own fixed contexts, so these workloads give identical answers
under any thread context.
"""

from __future__ import annotations

import decimal
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from conftest import Clock

from policyengine.budgets import MemoryStore, SQLiteStore
from policyengine.engine import Engine
from policyengine.money import Money, StaticRates, convert, parse_amount

POLICY = """namespace shop
currency EUR
default_currency EUR
rate USD 0.9237
rate JPY 0.006123
rate BHD 2.4391

role buyer: shop:*
agent "bot": buyer

limit cap: shop:pay amount <= 5000 EUR
approval review: shop:pay over 3000 EUR
forbid odd: shop:pay when amount > 4999.990 EUR and amount < 5000 EUR
budget daily: shop:* limit 100000.07 EUR per day per agent
budget calls: shop:* limit 1000 calls per day per agent

tool pay: function "pay" -> shop:pay { amount = $.amount minor, currency = $.currency }
"""

NOW = 1_767_225_600.0
AMOUNTS = [("280", "USD"), ("99.99", "USD"), ("4321.09", "EUR"), ("3001.01", "EUR"),
           ("5000.01", "EUR"), ("5413.27", "USD"), ("123456", "JPY"), ("12.345", "BHD"),
           ("0.01", "USD"), (Decimal("1234.56"), "EUR"), (7, "EUR"), ("4999.995", "EUR")]


def workload(tmp_path: Path, tag: str) -> list[Any]:
    """Everything money touches, reduced to comparable results."""
    out: list[Any] = []
    for store in (MemoryStore(), SQLiteStore(tmp_path / f"{tag}.db")):
        engine = Engine.from_source(POLICY, budget_store=store, clock=Clock(NOW))
        for amount, currency in AMOUNTS:
            d = engine.authorize("bot", "shop:pay", {"amount": amount, "currency": currency})
            wire = d.to_wire()
            wire.pop("decisionId", None)
            wire.pop("approvalId", None)
            out.append(wire)
        for minor, currency in ((123456, "EUR"), (499999, "EUR"), (500001, "EUR"),
                                (600000, "JPY")):
            t = engine.tool_authorize("bot", transport="function", function_name="pay",
                                      body={"amount": minor, "currency": currency})
            out.append((t.status, t.code))
        ledger = engine.budgets
        r = ledger.reserve("bot", "shop:buy", "1234.57", "USD")
        out.append(ledger.commit(r.id, "1111.11", "USD").to_wire() | {"id": None})
        r = ledger.reserve("bot", "shop:buy", "99999", "JPY")
        out.append(ledger.commit(r.id, "12345", "JPY").to_wire() | {"id": None})
        out.append(ledger.record("bot", "shop:buy", "0.07", "EUR").to_wire() | {"id": None})
        out.append(ledger.record("bot", "shop:buy", "12.345", "BHD").to_wire() | {"id": None})
        out.append([b.to_wire() for b in ledger.balances("bot")])
        store.close()
    rates = StaticRates("EUR", {"USD": Decimal("0.9237"), "JPY": Decimal("0.006123")})
    for amount, currency in [("1234.56", "USD"), ("99999", "JPY"), ("0.01", "USD")]:
        money = Money.parse(amount, currency)
        out.append([str(convert(money, "EUR", rates, rounding=r))
                    for r in ("up", "down")])
        out.append(str(money + money - Money.parse("0.01" if currency != "JPY" else "1",
                                                  currency)))
        out.append(money.wire_amount())
    out.append(str(parse_amount("123456789012.345", "EUR", excess_decimals="round")))
    out.append(str(parse_amount("0.0000001", "credits", excess_decimals="round")))
    return out


HOSTILE = {
    "precision 3, rounding down": decimal.Context(prec=3, rounding=decimal.ROUND_DOWN),
    "precision 1, rounding up": decimal.Context(prec=1, rounding=decimal.ROUND_UP),
    "every signal trapped": decimal.Context(
        prec=5, traps=[decimal.Inexact, decimal.Rounded, decimal.FloatOperation,
                       decimal.Subnormal, decimal.Underflow, decimal.Clamped,
                       decimal.InvalidOperation, decimal.DivisionByZero, decimal.Overflow]),
    "tiny exponent range": decimal.Context(prec=28, Emax=3, Emin=-3, clamp=1),
    "lower-case exponents": decimal.Context(capitals=0),
}


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> list[Any]:
    with decimal.localcontext(decimal.Context()):
        return workload(tmp_path_factory.mktemp("base"), "base")


class TestThreadContext:
    """Tries each hostile thread context on authorize (converted amounts, limits,
    approvals, budgets), reserve/commit/record/balances on both local stores, convert(),
    Money arithmetic and parsing: the answers must equal those under the default context."""

    @pytest.mark.parametrize("name", list(HOSTILE))
    def test_same_answers(self, name: str, baseline: list[Any], tmp_path: Path) -> None:
        with decimal.localcontext(HOSTILE[name]):
            got = workload(tmp_path, "hostile")
        for i, (expected, actual) in enumerate(zip(baseline, got, strict=True)):
            assert actual == expected, f"item {i}"

    def test_the_baseline_decides_what_the_policy_says(self, baseline: list[Any]) -> None:
        codes = [w["reasonCode"] for w in baseline[:len(AMOUNTS)]]
        assert baseline[len(AMOUNTS):len(AMOUNTS) + 4] == [
            ("allowed", "permitted"), ("pending_approval", "approval_required"),
            ("denied", "limit_exceeded"), ("pending_approval", "approval_required")]
        assert codes == ["permitted", "permitted", "approval_required", "approval_required",
                         "limit_exceeded", "limit_exceeded", "permitted", "permitted",
                         "permitted", "permitted", "permitted", "invalid_amount"]
