"""What a rate source of the caller's own answers is checked once, the same way, on every
path that converts money: ``convert``/``fits``, a ``limit`` (the evaluator), a policy
literal (the compiler), ``authorize`` with a budget, the ledger's ``admit``, ``reserve``,
``commit`` and ``record`` (a budget in another currency, and one in microcents), a
grant's ``amount_fits`` and the tokens' ``attenuate``/``verify`` (docs/money.md, "Rates").

A source may answer ``rate()`` or a ``rate_fraction()`` pair. Before, the ledger and
``convert`` used a pair as it came: ``(0, 1)`` charged nothing and let any amount fit a
grant's cap, ``(1, -1)`` took spend off a budget, and an exception other than
``RateError`` (a ``KeyError`` of a lookup) escaped as a traceback. Now any answer that is
no rate is ``invalid_rate``, a failing source ``no_rate``, a ``RateError`` it raises its
own code: the request is refused, nothing is charged.

The scenario: 1000 USD against 500 EUR (a limit, a budget, a grant's cap), or 1000 EUR
against a 500 USD microcent budget. The hypothesis property draws hostile answers (and
valid ones) and compares each path with exact rational arithmetic: a valid answer gives
what that rate gives, anything else a refusal with its code; never an allow, never an
uncoded exception.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from rate_answers import CAPPED, Answers, PairAnswers

from policyengine import Engine, PolicyError
from policyengine.budgets import BudgetError, BudgetSpec, Ledger
from policyengine.budgets.spec import MAX_QUANTA
from policyengine.money import Money, MoneyError, RateError, convert, fits
from policyengine.tokens import KeySet, TokenError, attenuate, mint, verify

NOW = 1_773_144_000.0
HUGE_INT = 10**100_000  # str() of it is refused by CPython; never printed


_LIMIT = CAPPED
_BUDGET = CAPPED.replace("limit cap: payments:* amount <= 500 EUR",
                         "budget b: payments:* limit 500 EUR per day")
_USD = {"amount": "1000", "currency": "USD"}

SINGLE, PAIR = Answers(), PairAnswers()
ENGINES = {(kind, text): Engine.from_source(text, rates=source, clock=lambda: NOW)
           for kind, source in (("rate", SINGLE), ("pair", PAIR))
           for text in (_LIMIT, _BUDGET)}
KEYS = KeySet.generate()
PARENT = mint(KEYS, issuer="https://auth.example", acting_for="u", agent="a",
              permissions=["payments:*"], max_amount=("500", "EUR"), ttl=3600, now=NOW)
CHILD = attenuate(KEYS, PARENT, agent="b", permissions=["payments:*"],
                  max_amount=("500", "EUR"), now=NOW)
GRANT = verify(KEYS, PARENT, now=NOW)
# A child whose cap (1000 USD) is checked against its parent's 500 EUR when verified.
_WIDE = Answers(Decimal("0.4"))
USD_CHILD = attenuate(KEYS, PARENT, agent="b", permissions=["payments:*"],
                      max_amount=("1000", "USD"), now=NOW, rates=_WIDE)


def _ledger(source: object, unit: str = "EUR", limit: str = "500") -> Ledger:
    return Ledger([BudgetSpec("t.b", ("payments:*",), Decimal(limit), unit, "day")],
                  rates=source,  # type: ignore[arg-type]
                  clock=lambda: NOW)


def _code(exc: BaseException) -> tuple[str, str]:
    code = getattr(exc, "code", None)
    assert type(code) is str, f"an uncoded {type(exc).__name__}: {exc!r}"
    return ("error", code)


def _decision(d: Any) -> tuple[str, ...]:
    if d.allowed:
        return ("allowed",)
    codes = {x.code for x in d.diagnostics} or {d.code}
    assert len(codes) == 1, d
    return ("denied", codes.pop())


# Each path: the source -> ("ok", amount) / ("allowed",) / ("denied", code) /
# ("error", code). 1000 USD is converted into EUR (the microcent path: 1000 EUR into
# USD); what is refused has charged nothing.
def _convert(source: Answers) -> tuple[Any, ...]:
    return ("ok", convert(Money.parse("1000", "USD"), "EUR", source).amount)


def _fits(source: Answers) -> tuple[Any, ...]:
    fit = fits(Money.parse("1000", "USD"), Money.parse("500", "EUR"), source)
    return ("allowed",) if fit else ("denied", "over")


def _limit(source: Answers) -> tuple[Any, ...]:
    kind = "pair" if isinstance(source, PairAnswers) else "rate"
    d = ENGINES[kind, _LIMIT].authorize("bot", "payments:pay", _USD)
    return _decision(d)


def _authorize_budget(source: Answers) -> tuple[Any, ...]:
    kind = "pair" if isinstance(source, PairAnswers) else "rate"
    d = ENGINES[kind, _BUDGET].authorize("bot", "payments:pay", _USD)
    return _decision(d)


def _admit(source: Answers) -> tuple[Any, ...]:
    check = _ledger(source).admit("bot", "payments:pay", "1000", "USD")
    return ("allowed",) if check.allowed else ("denied", check.code)


def _reserve(source: Answers) -> tuple[Any, ...]:
    ledger = _ledger(source)
    try:
        held = ledger.reserve("bot", "payments:pay", "1000", "USD")
    except BudgetError:
        [balance] = ledger.balances("bot")
        assert (balance.spent, balance.reserved) == (0, 0)
        raise
    return ("ok", held.lines[0].amount)


def _commit(source: Answers) -> tuple[Any, ...]:
    """A hold of 500 EUR committed as 1000 USD (converted at the source's rate now)."""
    ledger = _ledger(source)
    held = ledger.reserve("bot", "payments:pay", "500", "EUR")
    try:
        done = ledger.commit(held.id, "1000", "USD")
    except BudgetError:
        assert ledger.balances("bot")[0].spent == 0
        raise
    return ("ok", done.lines[0].committed)


def _record_microcents(source: Answers) -> tuple[Any, ...]:
    """1000 EUR recorded against a budget of 500 USD counted in microcents."""
    ledger = _ledger(source, "USD_MICROCENTS", "50000000000")
    try:
        done = ledger.record("bot", "payments:pay", "1000", "EUR")
    except BudgetError:
        assert ledger.balances("bot")[0].spent == 0
        raise
    return ("ok", done.lines[0].amount)


def _amount_fits(source: Answers) -> tuple[Any, ...]:
    fit = GRANT.amount_fits(Money.parse("1000", "USD"), source, now=NOW)
    return ("allowed",) if fit else ("denied", "over")


def _attenuate(source: Answers) -> tuple[Any, ...]:
    """A child capped at 1000 USD under the 500 EUR parent."""
    attenuate(KEYS, PARENT, agent="b", permissions=["payments:*"],
              max_amount=("1000", "USD"), now=NOW, rates=source)  # type: ignore[arg-type]
    return ("allowed",)


def _verify(source: Answers) -> tuple[Any, ...]:
    verify(KEYS, USD_CHILD, now=NOW, rates=source)  # type: ignore[arg-type]
    return ("allowed",)


PATHS = {"convert": _convert, "fits": _fits, "limit": _limit,
         "authorize_budget": _authorize_budget, "admit": _admit, "reserve": _reserve,
         "commit": _commit, "record_microcents": _record_microcents,
         "amount_fits": _amount_fits, "attenuate": _attenuate, "verify": _verify}


def outcome(path: str, source: Answers) -> tuple[Any, ...]:
    try:
        return PATHS[path](source)
    except (RateError, MoneyError, BudgetError, TokenError) as exc:
        return _code(exc)


#: The paths of the tokens, whose refusal at no rate is their own code (docs/delegation.md).
TOKEN_PATHS = frozenset({"amount_fits", "attenuate", "verify"})


def expected(path: str, rate: Fraction | None, code: str) -> tuple[Any, ...]:
    """What ``path`` answers when the source's answer is the rate ``rate`` (exact), or,
    for ``None`` (no rate), its refusal with ``code``."""
    if rate is not None and 1000 * rate > 10**15:  # converted beyond the maximum
        rate, code = None, ("amount_too_large" if path in ("convert", "fits")
                            else "invalid_amount")
    if rate is None:
        if path in TOKEN_PATHS:
            return ("error", "amount_unconvertible")
        return ("denied", code) if path in ("limit", "authorize_budget") else ("error", code)
    cents = Fraction(math.ceil(1000 * rate * 100), 100)  # rounded up to the cent
    amount = Decimal(cents.numerator) / cents.denominator
    fit = cents <= 500
    if path == "convert":
        return ("ok", amount)
    if path in ("reserve", "commit"):
        return ("ok", amount) if fit else ("error", "budget_exceeded")
    if path == "record_microcents":  # 1000 EUR in USD microcents, rounded up
        micro = math.ceil(1000 * rate * 10**8)
        if micro > MAX_QUANTA:
            return ("error", "invalid_amount")
        return ("ok", Decimal(micro)) if micro <= 5 * 10**10 else ("error",
                                                                  "budget_exceeded")
    if fit:
        return ("allowed",)
    return {"limit": ("denied", "limit_exceeded"), "admit": ("denied", "budget_exceeded"),
            "authorize_budget": ("denied", "budget_exceeded"), "fits": ("denied", "over"),
            "amount_fits": ("denied", "over")}.get(path, ("error", "amount_widened"))


_GRAMMAR = re.compile(r"[0-9]+(\.[0-9]+)?", re.ASCII)


def as_rate(value: object) -> Fraction | None:
    """The rate ``value`` is, read as docs/money.md says (a positive finite Decimal, int
    or plain decimal string, at most 10**15 and 40 decimals; never a float or bool), or
    None: an oracle of its own, not the package's check."""
    if type(value) is str:
        if len(value) > 64 or not _GRAMMAR.fullmatch(value):
            return None
        value = Decimal(value)
    if type(value) is int:
        return Fraction(value) if 0 < value <= 10**15 else None
    if type(value) is not Decimal or not value.is_finite():
        return None
    if not -40 <= value.adjusted() <= 15:
        return None
    exact = Fraction(value)
    if not 0 < exact <= 10**15 or (exact * 10**40).denominator != 1:
        return None
    return exact


def refusal_code(answer: object) -> str:
    """The code a source's answer that is no rate gives: its own RateError's, no_rate
    for any other exception, else invalid_rate."""
    if isinstance(answer, RateError):
        return answer.code
    if isinstance(answer, BaseException):
        return "no_rate"
    return "invalid_rate"


def check(path: str, source: Answers) -> None:
    """One path, one answer: the exact expectation, and never an allow at no rate."""
    if isinstance(source, PairAnswers):
        pair = source.pair
        if isinstance(pair, BaseException):
            rate, code = None, refusal_code(pair)
        elif type(pair) is not tuple or len(pair) != 2:
            rate, code = None, "invalid_rate"
        else:
            n, d = as_rate(pair[0]), as_rate(pair[1])
            rate = None if n is None or d is None else n / d
            code = "invalid_rate"
    else:
        rate, code = as_rate(source.answer), refusal_code(source.answer)
        if isinstance(source.answer, BaseException):
            rate = None
    got = outcome(path, source)
    want = expected(path, rate, code)
    assert got == want, (path, got, want)
    if rate is None:
        assert got[0] not in ("allowed", "ok"), (path, got)


class _BadStr(str):
    def __str__(self) -> str:
        raise RuntimeError("no text")


#: Each an answer that is no rate, on every path: its refusal code.
NOT_RATES: list[object] = [
    Decimal(0), Decimal("-0"), Decimal(-1), Decimal("-0.92"), Decimal("NaN"),
    Decimal("-sNaN"), Decimal("Infinity"), Decimal("-Infinity"), Decimal("1e999999"),
    Decimal("1e-999999"), Decimal("1E+16"), Decimal("1E-41"), Decimal(10**15 + 1),
    0.92, float("nan"), float("inf"), True, False, None, "0", "-0.92", "x", "1e3", "NaN",
    " 0.92", "0,92", "", "\u0661", Fraction(23, 25), Fraction(-23, 25), [Decimal(1)], 0, -1,
    HUGE_INT, -HUGE_INT, object(), _BadStr("0.92"),
    KeyError("USD"), ZeroDivisionError(), RecursionError(), ValueError("bad"),
    RateError("stale_rate", "old"), RateError("no_rate", "none"),
]
#: Each a pair that is no fraction of two rates.
NOT_PAIRS: list[object] = [
    (Decimal(1), Decimal(0)), (Decimal(1), Decimal(-1)), (Decimal(0), Decimal(1)),
    (Decimal(-1), Decimal(-1)), (Decimal("NaN"), Decimal(1)), (Decimal(1), Decimal("NaN")),
    (Decimal("1e999999"), Decimal(1)), (Decimal(1), Decimal("1e-999999")),
    (Decimal(1), Decimal("1e999999")), (0.92, 1), (Decimal(1), 1.0), (True, True),
    (Decimal(1),), (Decimal(1), Decimal(1), Decimal(1)), [Decimal(1), Decimal(1)],
    Decimal("0.92"), None, "0.92", (Fraction(1, 2), 1), (1, HUGE_INT),
    KeyError("USD"), RateError("stale_rate", "old"),
]
#: Valid answers (the property checks these convert as their rate).
RATES: list[object] = [Decimal("0.92"), Decimal("0.4"), "0.5", 1, Decimal("1E-40"),
                       Decimal(10**15), "0.500000"]


@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize("answer", [*NOT_RATES, *RATES], ids=lambda a: type(a).__name__)
def test_a_sources_rate(path: str, answer: object) -> None:
    SINGLE.answer = answer
    check(path, SINGLE)


@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize("pair", [*NOT_PAIRS, (Decimal("0.92"), 1), ("1", "3"),
                                  (Decimal(2), Decimal(3))],
                         ids=lambda a: type(a).__name__)
def test_a_sources_rate_fraction(path: str, pair: object) -> None:
    """The pair, never ``rate()`` (which answers a rate letting everything through)."""
    PAIR.pair = pair
    check(path, PAIR)


def test_the_refusals_are_the_documented_codes() -> None:
    """The three codes, the same on every path; a token's refusal is its own
    ``amount_unconvertible`` with the rate's code behind it (``attenuate``,
    ``amount_fits``) or in its message (``verify``)."""
    for answer, code in ((Decimal(0), "invalid_rate"), (KeyError("x"), "no_rate"),
                         (RateError("stale_rate", "old"), "stale_rate")):
        SINGLE.answer = answer
        got = {path: outcome(path, SINGLE)[-1] for path in PATHS if path not in TOKEN_PATHS}
        assert set(got.values()) == {code}, got
        with pytest.raises(TokenError) as caught:
            _amount_fits(SINGLE)
        assert getattr(caught.value.__cause__, "code", None) == code
        with pytest.raises(TokenError) as caught:
            _attenuate(SINGLE)
        assert getattr(caught.value.__cause__, "code", None) == code


def test_a_policy_literal_is_refused_at_every_answer_that_is_no_rate() -> None:
    """A limit written in USD under a EUR base is converted when the policy loads: E127
    for every answer (and every pair) that is no rate, never a limit of 0 or less."""
    # The checker wants a rate line for USD; the engine's source replaces the table.
    text = _LIMIT.replace("500 EUR", "500 USD").replace("currency EUR\n",
                                                        "currency EUR\nrate USD 0.5\n")
    for answer in NOT_RATES:
        with pytest.raises(PolicyError) as caught:
            Engine.from_source(text, rates=Answers(answer))
        [problem] = caught.value.problems
        assert problem.code == "E127" and "cannot convert 500 USD" in problem.message
    for pair in NOT_PAIRS:
        with pytest.raises(PolicyError) as caught:
            Engine.from_source(text, rates=PairAnswers(pair))
        [problem] = caught.value.problems
        assert problem.code == "E127" and "cannot convert 500 USD" in problem.message
    # 500 USD = 250 EUR: 1000 USD is over
    engine = Engine.from_source(text, rates=PairAnswers((Decimal(1), Decimal(2))))
    assert engine.authorize("bot", "payments:pay", _USD).status == "denied"
    assert engine.authorize("bot", "payments:pay", {"amount": "500", "currency": "USD"}
                            ).allowed


def _decimals() -> st.SearchStrategy[Decimal]:
    return st.builds(lambda sign, digits, exp: Decimal((sign, digits, exp)),
                     st.integers(0, 1), st.lists(st.integers(0, 9), min_size=1,
                                                  max_size=45).map(tuple),
                     st.one_of(st.integers(-60, 20), st.integers(-10**6, 10**6)))


ANSWERS = st.one_of(
    st.sampled_from([*NOT_RATES, *RATES]),
    _decimals(),
    st.decimals(allow_nan=True, allow_infinity=True),
    st.integers(-10**17, 10**17),
    st.floats(),
    st.text(alphabet="0123456789.-e +", max_size=12),
    st.fractions(),
)
PAIRS = st.one_of(st.sampled_from(NOT_PAIRS), st.tuples(ANSWERS, ANSWERS),
                  st.tuples(_decimals(), _decimals()))


@settings(max_examples=300, deadline=None)
@example(path="record_microcents", answer=Decimal("-1"))
@example(path="amount_fits", answer=(Decimal(0), Decimal(1)))
@example(path="reserve", answer=(Decimal(1), Decimal(-1)))
@given(path=st.sampled_from(sorted(PATHS)), answer=st.one_of(ANSWERS, PAIRS))
def test_hostile_answers_never_allow_what_their_rate_would_not(path: str,
                                                              answer: object) -> None:
    """A tuple is a ``rate_fraction`` source's pair, anything else a ``rate()`` answer:
    a valid one converts exactly as its rate (rounded up once), anything else is the
    refusal with its code. No path allows at no rate; none raises an uncoded error."""
    if isinstance(answer, tuple):
        PAIR.pair = answer
        check(path, PAIR)
    else:
        SINGLE.answer = answer
        check(path, SINGLE)
