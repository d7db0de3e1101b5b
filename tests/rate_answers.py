"""What the tests of a rate source of the caller's own share (docs/money.md, "Rates"):
sources that answer whatever a test sets, so that every path converting money (the
evaluator, the compiler, the ledger, the tokens, the service's wires) can be handed an
answer that is no rate, or a source that fails, and be seen to refuse it with its code.

One definition for the money, token and wire tests: each kept its own copy before, and
the copies had begun to differ in how a pair source hid ``rate()``."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

#: A policy capping payments at 500 EUR: 1000 USD is over it at any rate above 0.5.
CAPPED = """namespace fx
currency EUR
role payer: payments:*
agent "bot": payer
permit p: payments:*
limit cap: payments:* amount <= 500 EUR
"""


class Answers:
    """A source of the caller's own with only the protocol's ``rate()``: it answers
    ``answer`` for every pair, or raises it when it is an exception. ``answer`` may be
    set again between calls (one source, many answers)."""

    def __init__(self, answer: object = Decimal("0.92")) -> None:
        self.answer = answer

    def rate(self, from_code: str, to_code: str, now: float | None = None) -> Any:
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer

    def __repr__(self) -> str:
        return repr(self.answer)


class PairAnswers(Answers):
    """A source with ``rate_fraction()`` too, answering ``pair`` (raising it when it is an
    exception). Its ``rate()`` answers 1E-20, a rate that lets every amount through, so a
    path that asked ``rate()`` instead of the checked pair would show it."""

    def __init__(self, pair: object = (Decimal("0.92"), Decimal(1))) -> None:
        super().__init__(Decimal("1E-20"))
        self.pair = pair

    def rate_fraction(self, from_code: str, to_code: str, now: float | None = None) -> Any:
        if isinstance(self.pair, BaseException):
            raise self.pair
        return self.pair

    def __repr__(self) -> str:
        return f"pair{self.pair!r}"
