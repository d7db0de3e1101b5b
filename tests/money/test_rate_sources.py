"""Any RateSource works wherever StaticRates does: the whole money conformance suite,
run once per kind of rate source.

The policies' ``rate`` lines and ``rates`` tables compile to one :class:`StaticRates` per
file; here each is swapped for the same table as a :class:`JsonFileRates` (written to a
file), a :class:`CallableRates` (a function) or a user's own class with only the
protocol's ``rate``, and every money fixture must still pass with exactly the same
expected decisions.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from rate_answers import CAPPED, Answers

import policyengine.engine as engine_module
from policyengine._conformance import run_fixture
from policyengine.money import CallableRates, JsonFileRates, Money, StaticRates, fits

FIXTURES = sorted((Path(__file__).resolve().parents[2] / "conformance" / "money")
                  .glob("*.json"))


def _as_json_file(rates: StaticRates, folder: Path) -> JsonFileRates:
    as_of = rates.as_of if rates.as_of is not None else 0.0
    table = {code: format(rates.rate(code, rates.base, as_of), "f")
             for code in rates.codes if code != rates.base}
    path = folder / f"rates-{len(list(folder.iterdir()))}.json"
    stamp = datetime.fromtimestamp(as_of, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    path.write_text(json.dumps({"base": rates.base, "as_of": stamp, "rates": table}))
    return JsonFileRates(path, max_age=rates.max_age)


def _as_callable(rates: StaticRates) -> CallableRates:
    """The table behind a function. A function has no as-of date, so policy literals are
    converted at load with ``now=None``; this one then answers as of the table's date
    (as a table does for its literals), and at request time checks ``now``."""
    return CallableRates(lambda a, b, now: rates.rate(a, b, rates.as_of if now is None
                                                      else now))


class _OwnRates:
    """A user's own source: a plain class with only the protocol's ``rate`` (no
    ``rate_fraction``, no base class of the package), answering from the table."""

    def __init__(self, rates: StaticRates) -> None:
        self._rates = rates

    def rate(self, from_code: str, to_code: str, now: float | None = None) -> Decimal:
        rates = self._rates
        return rates.rate(from_code, to_code, rates.as_of if now is None else now)


@pytest.mark.parametrize("kind", ["static", "json", "callable", "own"])
def test_money_conformance_with_every_kind_of_rate_source(
        kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    built = engine_module.build_rates
    swapped: list[Any] = []

    def build_rates(files: Any, base_dirs: Any) -> dict[str, Any]:
        out = built(files, base_dirs)
        for name, rates in out.items():
            assert type(rates) is StaticRates
            if kind == "json":
                out[name] = _as_json_file(rates, tmp_path)
            elif kind == "callable":
                out[name] = _as_callable(rates)
            elif kind == "own":
                out[name] = _OwnRates(rates)
            swapped.append(out[name])
        return out

    monkeypatch.setattr(engine_module, "build_rates", build_rates)
    failures = [f"{Path(r.fixture).name} :: {r.case}: {r.message}"
                for path in FIXTURES for r in run_fixture(path) if not r.passed]
    assert not failures, "\n".join(failures)
    expected = {"static": StaticRates, "json": JsonFileRates, "callable": CallableRates,
                "own": _OwnRates}[kind]
    assert swapped and all(type(r) is expected for r in swapped)
    assert len(FIXTURES) >= 9


#: What no rate may be: each made any amount fit a limit (0, a negative, a rate too
#: small to count), or failed with an error of the arithmetic instead of invalid_rate.
_NOT_RATES = [Decimal(0), Decimal("-0"), Decimal(-1), Decimal("-0.92"), Decimal("1E-900"),
              Decimal("NaN"), Decimal("sNaN"), Decimal("Infinity"), 0.92, True, None, "x"]


@pytest.mark.parametrize("answer", _NOT_RATES, ids=repr)
def test_a_limit_fails_closed_on_a_sources_answer_that_is_no_rate(answer: object) -> None:
    """1000 USD against a 500 EUR limit: a source of the caller's own that answers 0 or
    a negative rate used to make it 0 EUR (or less) and permit it; every answer that is
    no positive decimal is ``invalid_rate`` and the limit denies (fail closed)."""
    from policyengine import Engine
    engine = Engine.from_source(CAPPED, rates=Answers(answer))
    d = engine.authorize("bot", "payments:pay", {"amount": "1000", "currency": "USD"})
    assert d.status == "denied" and d.rules == ("fx.cap",), d
    assert [(x.code, x.rule) for x in d.diagnostics] == [("invalid_rate", "fx.cap")]


@pytest.mark.parametrize(("answer", "allowed"), [("0.5", True), (Decimal("0.5"), True),
                                                 (1, False), (Decimal("0.50001"), False)])
def test_a_sources_positive_answer_is_its_rate(answer: object, allowed: bool) -> None:
    """Decimal strings and ints are rates (as ``convert`` takes them): 1000 USD at 0.5
    is 500 EUR, within the limit; at 0.50001 it is over."""
    from policyengine import Engine
    engine = Engine.from_source(CAPPED, rates=Answers(answer))
    d = engine.authorize("bot", "payments:pay", {"amount": "1000", "currency": "USD"})
    assert d.allowed is allowed, d


@pytest.mark.parametrize("answer", _NOT_RATES, ids=repr)
def test_a_microcent_budget_refuses_a_sources_answer_that_is_no_rate(answer: object) -> None:
    """A spend converted into a microcent budget: a rate of 0 charged nothing, a negative
    one recorded negative spend (taking spend off the budget), NaN raised ValueError.
    Now each is ``invalid_rate`` and nothing is recorded."""
    from policyengine.budgets import BudgetError, BudgetSpec, Ledger
    ledger = Ledger([BudgetSpec("m.usd", ("x:*",), Decimal(10), "USD_MICROCENTS", "day")],
                    rates=Answers(answer), clock=lambda: 1_773_144_000.0)
    with pytest.raises(BudgetError) as caught:
        ledger.record("bot", "x:a", "100", "EUR")
    assert caught.value.code == "invalid_rate"
    assert [b.spent for b in ledger.balances("bot")] == [0]


@pytest.mark.parametrize("answer", [Decimal(0), Decimal(-1), Decimal("NaN"), 0.5],
                         ids=repr)
def test_a_policy_literal_is_not_converted_at_an_answer_that_is_no_rate(
        answer: object) -> None:
    """A limit written in another currency is converted when the policy loads: at a
    source's answer that is no rate the policy is refused (E127), as a table with such
    a rate is, instead of a limit of 0 or below (or an arithmetic error)."""
    from policyengine import Engine, PolicyError
    # With a rate line for USD (else the checker's own E127, no rate, answers first):
    # the engine's source replaces the table, and its answer is what is refused.
    text = CAPPED.replace("amount <= 500 EUR", "amount <= 500 USD").replace(
        "currency EUR\n", "currency EUR\nrate USD 0.5\n")
    with pytest.raises(PolicyError) as caught:
        Engine.from_source(text, rates=Answers(answer))
    assert [p.code for p in caught.value.problems] == ["E127"]
    assert "cannot convert 500 USD" in caught.value.problems[0].message


#: An engine's own table in another base than the policy's (USD, policy in EUR): every
#: conversion for the policy is a cross rate, n/d. 1 GBP = 2/3 EUR, 1 CHF = 1/3 EUR.
_CROSS = StaticRates("USD", {"EUR": "3", "GBP": "2", "CHF": "1"})


@pytest.mark.parametrize(("amount", "currency", "allowed"), [
    ("3", "GBP", True), ("3.01", "GBP", False), ("2", "EUR", True), ("6", "CHF", True),
    ("6.01", "CHF", False)])
def test_a_request_at_a_cross_rate_converts_at_the_exact_fraction(
        amount: str, currency: str, allowed: bool) -> None:
    """3 GBP is exactly 2 EUR: at the 34-digit cross rate 0.66...67 it came to 2.01 EUR
    and a limit of 2 EUR refused it, where convert() and fits() say it fits."""
    from policyengine import Engine
    engine = Engine.from_source(CAPPED.replace("500 EUR", "2 EUR"), rates=_CROSS)
    d = engine.authorize("bot", "payments:pay", {"amount": amount, "currency": currency})
    assert d.allowed is allowed, d
    assert fits(Money.parse(amount, currency), Money.parse("2", "EUR"), _CROSS) is allowed


@pytest.mark.parametrize(("amount", "allowed"), [("1", True), ("1.01", False)])
def test_a_limit_written_at_a_cross_rate_converts_at_the_exact_fraction(
        amount: str, allowed: bool) -> None:
    """A limit of 3 CHF is exactly 1 EUR: at the 34-digit cross rate 0.33...33 it came to
    0.99 EUR (rounded down), refusing 1 EUR. (The file's own ``rate CHF`` line lets the
    checker see a rate; the engine's table replaces it.)"""
    from policyengine import Engine
    text = CAPPED.replace("500 EUR", "3 CHF").replace("currency EUR\n",
                                                        "currency EUR\nrate CHF 0.5\n")
    engine = Engine.from_source(text, rates=_CROSS)
    d = engine.authorize("bot", "payments:pay", {"amount": amount, "currency": "EUR"})
    assert d.allowed is allowed, d
