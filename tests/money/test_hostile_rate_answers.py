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


#: The codes of RateError as docs/money.md lists them (an oracle of its own).
DOCUMENTED_RATE_CODES = frozenset({"no_rate", "stale_rate", "invalid_rate",
                                   "invalid_rate_table", "unknown_currency",
                                   "unit_mismatch", "invalid_argument"})


def refusal_code(answer: object) -> str:
    """The code a source's answer that is no rate gives: its own RateError's when that is
    one of ours (a string, with a string message), no_rate for any other RateError (a
    code it made up, or no string) and any other exception, else invalid_rate."""
    if isinstance(answer, RateError):
        code, message = answer.__dict__.get("code"), answer.__dict__.get("message")
        if (type(code) is str and code in DOCUMENTED_RATE_CODES
                and type(message) is str):
            return code
        return "no_rate"
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


class _CodelessRateError(RateError):
    """A RateError of the source's own whose ``code`` cannot even be read."""

    def __init__(self) -> None:
        ValueError.__init__(self, "x")  # no code is set

    def __getattribute__(self, name: str) -> Any:
        if name == "code":
            raise RuntimeError("no code")
        return super().__getattribute__(name)


class _LoudError(Exception):
    """A plain exception whose text cannot be made: its repr and str raise."""

    def __repr__(self) -> str:
        raise RuntimeError("no repr")

    __str__ = __repr__


def _made_up_rate_errors() -> list[RateError]:
    """RateErrors a hostile source raises with codes that are not ours: made up, not a
    string, a string look-alike, unreadable; and one of ours with a message that is no
    text. Each must come out as ``no_rate``."""
    return [RateError("made_up_code", "x"), RateError("No_Rate", "x"),
            RateError(42, "x"),  # type: ignore[arg-type]
            RateError(None, "x"),  # type: ignore[arg-type]
            RateError(_BadStr("stale_rate"), "x"),
            RateError("stale_rate", 42),  # type: ignore[arg-type]
            _CodelessRateError()]


#: Each an answer that is no rate, on every path: its refusal code.
NOT_RATES: list[object] = [
    Decimal(0), Decimal("-0"), Decimal(-1), Decimal("-0.92"), Decimal("NaN"),
    Decimal("-sNaN"), Decimal("Infinity"), Decimal("-Infinity"), Decimal("1e999999"),
    Decimal("1e-999999"), Decimal("1E+16"), Decimal("1E-41"), Decimal(10**15 + 1),
    0.92, float("nan"), float("inf"), True, False, None, "0", "-0.92", "x", "1e3", "NaN",
    " 0.92", "0,92", "", "\u0661", Fraction(23, 25), Fraction(-23, 25), [Decimal(1)], 0, -1,
    HUGE_INT, -HUGE_INT, object(), _BadStr("0.92"),
    KeyError("USD"), ZeroDivisionError(), RecursionError(), ValueError("bad"), _LoudError(),
    RateError("stale_rate", "old"), RateError("no_rate", "none"), *_made_up_rate_errors(),
]
#: Each a pair that is no fraction of two rates.
NOT_PAIRS: list[object] = [
    (Decimal(1), Decimal(0)), (Decimal(1), Decimal(-1)), (Decimal(0), Decimal(1)),
    (Decimal(-1), Decimal(-1)), (Decimal("NaN"), Decimal(1)), (Decimal(1), Decimal("NaN")),
    (Decimal("1e999999"), Decimal(1)), (Decimal(1), Decimal("1e-999999")),
    (Decimal(1), Decimal("1e999999")), (0.92, 1), (Decimal(1), 1.0), (True, True),
    (Decimal(1),), (Decimal(1), Decimal(1), Decimal(1)), [Decimal(1), Decimal(1)],
    Decimal("0.92"), None, "0.92", (Fraction(1, 2), 1), (1, HUGE_INT),
    KeyError("USD"), RateError("stale_rate", "old"), *_made_up_rate_errors(),
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
                         (RateError("stale_rate", "old"), "stale_rate"),
                         (RateError("made_up_code", "x"), "no_rate"),
                         (RateError(42, "x"), "no_rate")):  # type: ignore[arg-type]
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


def _codes(wire: object) -> list[object]:
    """Every value a ``code`` or ``reasonCode`` key holds, anywhere in a wire answer."""
    if isinstance(wire, dict):
        return [v for k, v in wire.items() if k in ("code", "reasonCode")] + [
            c for v in wire.values() for c in _codes(v)]
    if isinstance(wire, list):
        return [c for v in wire for c in _codes(v)]
    return []


@pytest.mark.parametrize("raised", [*_made_up_rate_errors(), ValueError("bad"),
                                    _LoudError()], ids=lambda e: type(e).__name__)
@pytest.mark.parametrize("source", [SINGLE, PAIR], ids=["rate", "pair"])
def test_a_made_up_code_never_reaches_a_decision_or_the_wire(source: Answers,
                                                             raised: BaseException) -> None:
    """A source raising a RateError with a code that is not ours (or a plain exception)
    is denied ``no_rate`` on every path, fail closed; the decision's wire carries no code
    but documented ones; the source's error, its code as it gave it, is the
    ``__cause__``."""
    if source is PAIR:
        PAIR.pair = raised
    else:
        SINGLE.answer = raised
    for path in PATHS:
        if path in TOKEN_PATHS:
            assert outcome(path, source) == ("error", "amount_unconvertible"), path
        else:
            assert outcome(path, source)[-1] == "no_rate", path
    with pytest.raises(RateError) as caught:
        _convert(source)
    assert caught.value.code == "no_rate" and caught.value.__cause__ is raised
    assert type(caught.value.message) is str and "rate source failed" in caught.value.message
    for text in (_LIMIT, _BUDGET):
        kind = "pair" if source is PAIR else "rate"
        decision = ENGINES[kind, text].authorize("bot", "payments:pay", _USD)
        assert not decision.allowed and decision.code == "no_rate"
        assert {c for c in _codes(decision.to_wire()) if c is not None} <= {
            "no_rate", "not_evaluated"}, decision.to_wire()


@pytest.mark.parametrize("raised", [*_made_up_rate_errors(), ValueError("bad"),
                                    _LoudError()], ids=lambda e: type(e).__name__)
def test_callable_rates_maps_a_made_up_code_to_no_rate(raised: BaseException) -> None:
    """``CallableRates``' function, a source of the package, is held to the same rule:
    a RateError of ours passes (``stale_rate``), anything else is ``no_rate`` with the
    function's error as ``__cause__``, on ``convert``, the ledger and ``authorize``."""
    from policyengine.money import CallableRates

    def fn(from_code: str, to_code: str, now: float | None) -> Decimal:
        raise raised

    source = CallableRates(fn)
    with pytest.raises(RateError) as caught:
        convert(Money.parse("1000", "USD"), "EUR", source)
    assert caught.value.code == "no_rate" and caught.value.__cause__ is raised
    with pytest.raises(BudgetError) as refused:
        _ledger(source).reserve("bot", "payments:pay", "1000", "USD")
    assert refused.value.code == "no_rate"
    engine = Engine.from_source(_BUDGET, rates=source, clock=lambda: NOW)
    decision = engine.authorize("bot", "payments:pay", _USD)
    assert not decision.allowed and decision.code == "no_rate"

    def stale(from_code: str, to_code: str, now: float | None) -> Decimal:
        raise RateError("stale_rate", "old")

    with pytest.raises(RateError) as caught:
        convert(Money.parse("1000", "USD"), "EUR", CallableRates(stale))
    assert caught.value.code == "stale_rate" and caught.value.__cause__ is None


def test_the_rate_codes_a_source_may_raise_are_the_documented_ones() -> None:
    """The codes a source's RateError keeps are exactly those docs/money.md lists for
    RateError: a code added to one and not the other fails here."""
    from pathlib import Path

    from policyengine.money._rates import RATE_CODES
    doc = (Path(__file__).resolve().parents[2] / "docs" / "money.md").read_text()
    table = doc.split("## Error codes", 1)[1].split("\n## ", 1)[0]
    listed = {m.group(1) for m in re.finditer(r"^\| `([a-z_]+)` \| ([^|]*)\|", table, re.M)
              if "RateError" in m.group(2)}
    assert RATE_CODES == listed == DOCUMENTED_RATE_CODES
