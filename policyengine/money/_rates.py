"""Exchange rates and conversion that never favours spend.

A rate table has a *base* currency (a policy's ``currency EUR``) and says how many base
units one unit of another currency is worth: ``rate USD 0.92`` means 1 USD = 0.92 EUR.
Any pair of currencies in the table converts through the base, so USD->GBP is
USD->EUR->GBP. A missing rate is ``RateError("no_rate")``; there is never a guess.

:func:`convert` rounds a converted **spend** up (``rounding="up"``, towards +infinity) to
the target currency's minor unit, and a converted **limit** down (``rounding="down"``),
so rounding can only make a request look bigger or a cap look smaller. Cross rates from a
table are computed exactly as a fraction (``rate_fraction``) and rounded once, at the end.

Rate sources (the :class:`RateSource` protocol): :class:`StaticRates` (an in-memory
table, what ``rate USD 0.92`` lines compile to), :class:`JsonFileRates` (a JSON file with
an as-of timestamp; with ``max_age`` old rates are ``stale_rate``) and
:class:`CallableRates` (your function).

>>> from policyengine.money._money import Money
>>> rates = StaticRates("EUR", {"USD": "0.92", "GBP": "1.17"})
>>> convert(Money.parse("280", "USD"), "EUR", rates)
Money(amount=Decimal('257.60'), currency='EUR')

This module is a leaf: it imports nothing from the engine.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone
from decimal import (
    ROUND_CEILING,
    ROUND_FLOOR,
    ROUND_HALF_EVEN,
    Context,
    Decimal,
    DecimalException,
    DivisionByZero,
    Inexact,
    InvalidOperation,
    Overflow,
)
from typing import Final, Literal, Protocol, runtime_checkable

from policyengine import _json as strict_json
from policyengine._files import UnreadableFileError, read_regular_file, shown_path
from policyengine.errors import PolicyEngineError
from policyengine.money._money import (
    MAX_AMOUNT,
    UNITS,
    AmountSpec,
    Money,
    MoneyError,
    parse_spec,
    spec_of,
    trusted_money,
)

__all__ = [
    "CallableRates",
    "JsonFileRates",
    "RateError",
    "RateSource",
    "StaticRates",
    "convert",
    "fits",
    "parse_rfc3339",
]

_ONE: Final = Decimal(1)
_ZERO: Final = Decimal(0)
_MIN_AMOUNT: Final = -MAX_AMOUNT
#: Rates: positive, at most 40 decimal places, at most 10**15.
_RATE_SPEC: Final = AmountSpec("rate", 40, Decimal("1E-40"), False)

_TRAPS: Final = [InvalidOperation, DivisionByZero, Overflow]
# Products of an amount (<= 22 digits) and a rate (<= 56 digits) fit in 100 digits, so
# multiplication is exact (Inexact is trapped to prove it); division rounds in the
# direction of the conversion, then quantize rounds the same way: one directed rounding
# of the exact quotient, never an intermediate round-to-nearest.
_EXACT: Final = Context(
    prec=100, rounding=ROUND_HALF_EVEN, Emax=999, Emin=-999, traps=[*_TRAPS, Inexact]
)
_UP: Final = Context(prec=100, rounding=ROUND_CEILING, Emax=999, Emin=-999, traps=_TRAPS)
_DOWN: Final = Context(prec=100, rounding=ROUND_FLOOR, Emax=999, Emin=-999, traps=_TRAPS)
# What rate() reports for a cross rate (informational; convert uses the exact fraction).
_NEAREST: Final = Context(prec=34, rounding=ROUND_HALF_EVEN, Emax=999, Emin=-999, traps=_TRAPS)


def fraction_rate(numerator: Decimal, denominator: Decimal) -> Decimal:
    """The rate ``numerator / denominator`` as :meth:`StaticRates.rate` reports it: the
    numerator itself over a denominator of 1, else the quotient to 34 significant digits
    (a public name of this private module, not API: the ledger records the rate a
    conversion used from the very fraction it converted with)."""
    if denominator is _ONE or denominator == _ONE:
        return numerator
    return _NEAREST.divide(numerator, denominator)


class RateError(PolicyEngineError, ValueError):
    """A conversion could not be done. ``code`` is stable (see ``docs/money.md``)."""


#: The codes of :class:`RateError` (docs/money.md, "Error codes"): the only ones a rate
#: error leaves this module with, whoever raised it.
RATE_CODES: Final = frozenset({
    "no_rate", "stale_rate", "invalid_rate", "invalid_rate_table", "unknown_currency",
    "unit_mismatch", "invalid_argument",
})


def sources_error(exc: RateError, what: str) -> RateError | None:
    """None when ``exc``, a :class:`RateError` a rate source of the caller's own raised
    (or :class:`CallableRates`' function), may pass as it is: a ``RateError`` (or a
    subclass) whose ``code`` is one of :data:`RATE_CODES` and whose ``message`` is text.
    Else the error to raise instead, ``from exc``: ``no_rate``, the documented code of a
    failed source, naming the code it gave. A code is stable (docs/errors.md): one a
    source made up (``"oops"``, ``42``, ``None``) would otherwise reach a decision's
    diagnostics and the wire as if it were ours. The source's own error, its code and
    message, stays as ``__cause__``. Its ``code`` and ``message`` are read once,
    guarded (a subclass's property may raise), and judged by their exact type, so a
    ``str`` look-alike is no code of ours either (a public name of this private module,
    not API)."""
    code: object = None
    message: object = None
    with contextlib.suppress(Exception):  # unreadable: no code of ours
        code, message = exc.code, exc.message
    if type(code) is str and code in RATE_CODES and type(message) is str:
        return None
    shown = repr(code[:40]) if type(code) is str else f"of type {type(code).__name__}"
    return RateError("no_rate", f"rate source failed for {what}: it raised a RateError "
                     f"with code {shown}, which is no rate error code")


@runtime_checkable
class RateSource(Protocol):
    """Anything that can price one currency in another.

    ``rate(a, b, now)`` returns how many ``b`` one ``a`` is worth, as a positive finite
    ``Decimal`` (or raises :class:`RateError`). ``now`` is POSIX seconds (``None``: the
    current time) for sources whose rates can go stale. A source may also offer
    ``rate_fraction(a, b, now) -> (numerator, denominator)`` for exact cross rates;
    :func:`convert` prefers it when present.
    """

    def rate(self, from_code: str, to_code: str, now: float | None = None) -> Decimal: ...


def _currency_code(code: object) -> str:
    try:
        spec = spec_of(code)
    except MoneyError as exc:
        raise RateError("unknown_currency", exc.message) from exc
    if spec.is_unit:
        raise RateError("unit_mismatch", f"{spec.code!r} is a budget unit and has no rate")
    return spec.code


def _to_rate(value: object, what: str) -> Decimal:
    """Validate one rate: a positive finite Decimal, int or decimal string (not float)."""
    if isinstance(value, float):
        raise RateError(
            "invalid_rate", f"rate for {what} is a float; use a decimal string or Decimal"
        )
    try:
        rate = parse_spec(value, _RATE_SPEC, False, False, False)
    except MoneyError as exc:
        raise RateError("invalid_rate", f"rate for {what} is invalid: {exc}") from exc
    if not rate:
        raise RateError("invalid_rate", f"rate for {what} is zero; rates must be positive")
    return rate


def _finite_number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RateError("invalid_rate_table", f"{name} must be a number of seconds")
    number = float(value)
    if not math.isfinite(number):
        raise RateError("invalid_rate_table", f"{name} must be finite")
    return number


_RFC3339: Final = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))",
    re.ASCII,
)


def parse_rfc3339(text: str) -> float:
    """Parse an RFC 3339 timestamp with a zone (``2025-01-02T10:00:00Z``) to POSIX seconds.

    Raises :class:`RateError` ``invalid_rate_table`` for anything else (no zone, a space
    instead of ``T``, leap second 60, out-of-range fields).
    """
    match = _RFC3339.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise RateError(
            "invalid_rate_table",
            f"as_of {text!r} is not an RFC 3339 timestamp such as '2025-01-02T10:00:00Z'",
        )
    year, month, day, hour, minute, second, frac, zulu, sign, oh, om = match.groups()
    try:
        offset = timedelta(0)
        if not zulu:
            if int(oh) > 23 or int(om) > 59:
                raise ValueError("offset out of range")
            offset = timedelta(hours=int(oh), minutes=int(om))
            if sign == "-":
                offset = -offset
        stamp = datetime(
            int(year),
            int(month),
            int(day),
            int(hour),
            int(minute),
            int(second),
            tzinfo=timezone(offset),
        )
    except ValueError as exc:
        raise RateError("invalid_rate_table", f"as_of {text!r} is not a valid time: {exc}") from exc
    return stamp.timestamp() + (int(frac) / 10 ** len(frac) if frac else 0.0)


class StaticRates:
    """A fixed rate table against one base currency.

    ``rates`` maps a currency code to how many ``base`` units one unit of it is worth
    (values: ``Decimal``, ``int`` or decimal strings; floats are refused). ``as_of`` is
    when the table was true (POSIX seconds); with ``max_age`` (seconds) every lookup
    after ``as_of + max_age`` raises ``RateError("stale_rate")``.

    >>> rates = StaticRates("EUR", {"USD": "0.92"})
    >>> rates.rate("USD", "EUR")
    Decimal('0.92')
    """

    __slots__ = ("_as_of", "_base", "_max_age", "_to_base")

    def __init__(
        self,
        base: str,
        rates: Mapping[str, Decimal | str | int],
        as_of: float | None = None,
        max_age: float | None = None,
    ) -> None:
        self._base = _currency_code(base)
        table: dict[str, Decimal] = {self._base: _ONE}
        if not isinstance(rates, Mapping):
            raise RateError("invalid_rate_table", "rates must be a mapping of code -> rate")
        for code, value in rates.items():
            canonical = _currency_code(code)
            rate = _to_rate(value, f"{canonical} in {self._base}")
            if canonical == self._base:
                if rate != _ONE:
                    raise RateError(
                        "invalid_rate", f"the base currency {self._base} can only have rate 1"
                    )
                continue
            if canonical in table:
                raise RateError("invalid_rate_table", f"rate for {canonical} is given twice")
            table[canonical] = rate
        self._to_base = table
        self._as_of = None if as_of is None else _finite_number(as_of, "as_of")
        self._max_age = None if max_age is None else _finite_number(max_age, "max_age")
        if self._max_age is not None:
            if self._max_age < 0:
                raise RateError("invalid_rate_table", "max_age must not be negative")
            if self._as_of is None:
                raise RateError(
                    "invalid_rate_table", "max_age needs an as_of time to measure age from"
                )

    @classmethod
    def from_json(cls, text: str | bytes, *, max_age: float | None = None) -> StaticRates:
        """Build from the JSON rates document (the format :class:`JsonFileRates` reads)."""
        if not isinstance(text, (str, bytes, bytearray)):
            raise RateError("invalid_rate_table", "a rates document is JSON text (str or "
                            f"bytes), not {type(text).__name__}")
        base, rates, as_of = _parse_document(text)
        return cls(base, rates, as_of=as_of, max_age=max_age)

    @property
    def base(self) -> str:
        """The base currency code."""
        return self._base

    @property
    def as_of(self) -> float | None:
        """When the table was true (POSIX seconds), if known."""
        return self._as_of

    @property
    def max_age(self) -> float | None:
        """Seconds after ``as_of`` when lookups become ``stale_rate``, if set."""
        return self._max_age

    @property
    def codes(self) -> frozenset[str]:
        """Currencies this table can convert between (the base included)."""
        return frozenset(self._to_base)

    def _lookup(self, code: str) -> Decimal:
        """Slow path: canonicalise ``code`` ("usd") and explain a missing rate."""
        canonical = _currency_code(code)
        rate = self._to_base.get(canonical)
        if rate is None:
            raise RateError(
                "no_rate",
                f"no rate for {canonical} against {self._base}: add 'rate {canonical} ...'",
            )
        return rate

    def rate_fraction(
        self, from_code: str, to_code: str, now: float | None = None
    ) -> tuple[Decimal, Decimal]:
        """``(n, d)`` with 1 ``from_code`` = n / d ``to_code``, exactly."""
        if self._max_age is not None:
            self._check_age(now)
        table = self._to_base
        numerator = table.get(from_code)
        if numerator is None:
            numerator = self._lookup(from_code)
        denominator = table.get(to_code)
        if denominator is None:
            denominator = self._lookup(to_code)
        return numerator, denominator

    def _check_age(self, now: float | None) -> None:
        age = (time.time() if now is None else now) - self._as_of  # type: ignore[operator]
        if age > self._max_age:  # type: ignore[operator]
            raise RateError(
                "stale_rate",
                f"rates against {self._base} are {age:.0f}s old, older than max_age "
                f"{self._max_age:.0f}s",
            )

    def rate(self, from_code: str, to_code: str, now: float | None = None) -> Decimal:
        """How many ``to_code`` one ``from_code`` is worth (cross rates to 34 digits)."""
        return fraction_rate(*self.rate_fraction(from_code, to_code, now))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base={self._base!r}, codes={len(self._to_base)})"


_DOCUMENT_KEYS: Final = frozenset({"base", "as_of", "rates", "source"})


def _parse_document(text: str | bytes) -> tuple[str, dict[str, Decimal | str | int], float]:
    try:
        # parse_float=Decimal keeps JSON numbers exact (0.92 stays 0.92, never a float).
        doc = strict_json.loads(text, decimal=True)
    except strict_json.AmbiguousJsonError as exc:
        if exc.code == "non_finite_number":
            raise RateError("invalid_rate", f"rate {exc} (not a finite number)") from exc
        raise RateError("invalid_rate_table", f"rates file: {exc}") from exc
    except (ValueError, RecursionError) as exc:
        raise RateError("invalid_rate_table", f"rates file is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise RateError("invalid_rate_table", "rates file must hold a JSON object")
    unknown = set(doc) - _DOCUMENT_KEYS
    if unknown:
        raise RateError("invalid_rate_table", f"unknown keys in rates file: {sorted(unknown)}")
    for key in ("base", "as_of", "rates"):
        if key not in doc:
            raise RateError("invalid_rate_table", f"rates file has no {key!r}")
    if not isinstance(doc["base"], str):
        raise RateError("invalid_rate_table", "'base' must be a currency code string")
    if not isinstance(doc["rates"], dict):
        raise RateError("invalid_rate_table", "'rates' must be an object of code -> rate")
    return doc["base"], doc["rates"], parse_rfc3339(doc["as_of"])


#: Largest rates file read (bytes); a table of every ISO 4217 currency is a few kB.
MAX_RATES_FILE_BYTES = 1 << 20


def _read_rates_file(path: str | os.PathLike[str]) -> bytes:
    """The bytes of a regular file of at most :data:`MAX_RATES_FILE_BYTES`
    (:func:`~policyengine._files.read_regular_file`)."""
    try:
        return read_regular_file(path, MAX_RATES_FILE_BYTES)
    except UnreadableFileError as exc:
        raise RateError("invalid_rate_table",
                        f"cannot read rates file {shown_path(path)}: {exc}") from None


class JsonFileRates(StaticRates):
    """Rates loaded once from a JSON file::

        {"base": "EUR", "as_of": "2025-01-02T00:00:00Z",
         "rates": {"USD": "0.92", "GBP": 1.17}}

    ``as_of`` (RFC 3339 with a zone) is required; ``source`` (a string) is allowed and
    ignored; other keys are refused. JSON numbers are read as exact decimals. Reading
    happens at construction, never on the request path; make a new object to reload.
    """

    __slots__ = ("path",)

    def __init__(self, path: str | os.PathLike[str], *, max_age: float | None = None) -> None:
        data = _read_rates_file(path)
        base, rates, as_of = _parse_document(data)
        super().__init__(base, rates, as_of=as_of, max_age=max_age)
        self.path = os.fspath(path)


class CallableRates:
    """Rates from a function ``fn(from_code, to_code, now) -> Decimal | str | int | None``.

    ``None`` means "no rate" (``no_rate``). Results are validated like table rates. A
    :class:`RateError` from ``fn`` with one of our codes (``stale_rate`` ...) passes
    through; one with any other code, and any other exception, becomes ``no_rate`` (fail
    closed, a stable code) with the original exception as ``__cause__``.
    """

    __slots__ = ("_fn",)

    def __init__(self, fn: Callable[[str, str, float | None], Decimal | str | int | None]) -> None:
        self._fn = fn

    def rate_fraction(
        self, from_code: str, to_code: str, now: float | None = None
    ) -> tuple[Decimal, Decimal]:
        """``(rate, 1)``: ``fn`` asked once (as every source of the package offers it, so
        a conversion and the rate it reports are one answer of ``fn``, never two)."""
        return self.rate(from_code, to_code, now), _ONE

    def rate(self, from_code: str, to_code: str, now: float | None = None) -> Decimal:
        """Ask ``fn`` and validate its answer."""
        if from_code == to_code:
            return _ONE
        try:
            value = self._fn(from_code, to_code, now)
        except RateError as exc:
            mapped = sources_error(exc, f"{from_code}->{to_code}")
            if mapped is None:
                raise
            raise mapped from exc
        except Exception as exc:
            raise RateError(
                "no_rate", f"rate source failed for {from_code}->{to_code}: "
                f"{type(exc).__name__}") from exc
        if value is None:
            raise RateError("no_rate", f"no rate for {from_code}->{to_code}")
        return _to_rate(value, f"{from_code}->{to_code}")


def convert(
    money: Money,
    to_code: str,
    rates: RateSource | None,
    *,
    now: float | None = None,
    rounding: Literal["up", "down"] = "up",
) -> Money:
    """Convert ``money`` into ``to_code``, rounding to its minor unit in one direction.

    ``rounding="up"`` (spends) rounds towards +infinity, so the result is never below the
    exact value; ``rounding="down"`` (limits) rounds towards -infinity. Same-currency
    conversion returns ``money`` unchanged and needs no rates.

    Raises :class:`RateError` (``no_rate``, ``stale_rate``, ``invalid_rate``,
    ``unknown_currency``, ``unit_mismatch``; ``invalid_argument`` for ``money`` that is no
    :class:`Money`, ``rates`` that is no rate source or a bad ``rounding``) or
    :class:`MoneyError` (``amount_too_large`` when the converted amount exceeds the
    maximum).
    """
    try:
        spec = spec_of(to_code)
    except MoneyError as exc:
        raise RateError("unknown_currency", exc.message) from exc
    target = spec.code
    try:
        source = money.currency
    except AttributeError:  # (a try costs nothing until it catches: no check per call)
        raise _not_money("money", money) from None
    if target == source:
        return money
    if spec.is_unit or source in UNITS:
        raise RateError("unit_mismatch", f"cannot convert {source} to {target}: no rates for units")
    if rounding == "up":
        context = _UP
    elif rounding == "down":
        context = _DOWN
    else:
        raise RateError("invalid_argument", f"rounding must be 'up' or 'down', not {rounding!r}")
    numerator, denominator = source_fraction(rates, source, target, now)
    return trusted_money(converted_amount(money, spec, numerator, denominator, context is _UP),
                         target)


#: The sources of the package: each validates the rates it answers (a table when it is
#: built, a function's answer when it is asked), so their ``rate_fraction`` answers two
#: positive finite ``Decimal``s. Any other source's answer is checked by
#: :func:`source_fraction`.
VALIDATING_SOURCES: Final = (StaticRates, JsonFileRates, CallableRates)


def source_fraction(rates: object, source: str, target: str, now: float | None
                    ) -> tuple[Decimal, Decimal]:
    """``(numerator, denominator)``, 1 ``source`` = n / d ``target``: how every conversion
    asks a rate source for its rate, and the one place the answer of a source of the
    caller's own is checked (a public name of this private module, not API: ``convert``,
    the evaluator, the policy compiler and the budget ledger ask through it).

    A source of the package (:data:`VALIDATING_SOURCES`, by exact type) answers its own
    ``rate_fraction``. Any other source is asked once: its ``rate_fraction`` when it has
    one, else ``(rate(...), 1)``; each of the two numbers must be a rate as a table's are
    (a positive finite ``Decimal``, ``int`` or decimal string, at most 10**15 and 40
    decimals: never 0, a negative, NaN, an infinity, a float, a bool, a huge or tiny
    exponent), else ``RateError("invalid_rate")``. A :class:`RateError` it raises passes
    through when its code is one of ours (:func:`sources_error`), else it is ``no_rate``;
    any other exception is ``no_rate`` too (as :class:`CallableRates` reports its
    function's); either way with the source's exception as ``__cause__``. ``rates``
    None is ``no_rate``; an object without ``rate`` is ``invalid_argument``."""
    if type(rates) in VALIDATING_SOURCES:
        own: StaticRates | CallableRates = rates  # type: ignore[assignment]
        return own.rate_fraction(source, target, now)
    if rates is None:
        raise RateError("no_rate", f"no rates configured to convert {source} to {target}")
    what = f"{source}->{target}"
    try:
        fraction = getattr(rates, "rate_fraction", None)
        if fraction is None:
            lookup = getattr(rates, "rate", None)
            if lookup is None:
                raise RateError("invalid_argument", "rates must be a RateSource (with "
                                f"rate(from, to, now)) or None, not {type(rates).__name__}")
            return _answered(lookup(source, target, now), what), _ONE
        answer = fraction(source, target, now)
        if not isinstance(answer, tuple) or tuple.__len__(answer) != 2:
            raise RateError("invalid_rate", f"rate_fraction for {what} answered "
                            f"{type(answer).__name__}, not a (numerator, denominator) pair")
        numerator, denominator = tuple.__getitem__(answer, 0), tuple.__getitem__(answer, 1)
    except RateError as exc:
        mapped = sources_error(exc, what)
        if mapped is None:
            raise
        raise mapped from exc
    except Exception as exc:  # the source failed: there is no rate (fail closed)
        raise RateError("no_rate", f"rate source failed for {what}: "
                        f"{type(exc).__name__}") from exc
    return _answered(numerator, what), _answered(denominator, what)


def _answered(value: object, what: str) -> Decimal:
    """A source's answer as a rate, else ``RateError("invalid_rate")``: the plain positive
    ``Decimal`` itself (the common answer; a caller may compare it by identity), anything
    else as a table's rate is read (:func:`_to_rate`); an answer whose own methods fail
    (a subclass's ``__str__``) is ``invalid_rate`` too."""
    if (type(value) is Decimal and value.is_finite() and _ZERO < value <= MAX_AMOUNT
            and value.as_tuple().exponent >= -40):  # type: ignore[operator]
        return value
    try:
        return _to_rate(value, what)
    except RateError:
        raise
    except Exception as exc:
        raise RateError("invalid_rate", f"rate for {what} is invalid: "
                        f"{type(exc).__name__}") from None


def converted_amount(money: Money, spec: AmountSpec, numerator: Decimal, denominator: Decimal,
                     up: bool) -> Decimal:
    """The arithmetic of :func:`convert`: ``money.amount * numerator / denominator`` rounded
    up (``up``) or down to ``spec``'s minor unit, with its errors. ``money`` is valid, in
    another currency than ``spec`` (a public name of this private module, not API: the
    ledger converts at a rate it has already asked for)."""
    context = _UP if up else _DOWN
    try:
        value = _EXACT.multiply(money.amount, numerator)
        if denominator is not _ONE:  # identity: the table's base rate is this object
            value = context.divide(value, denominator)
        value = value.quantize(spec.quantum, context=context)
    except DecimalException as exc:  # unreachable for validated inputs; fail closed
        raise RateError("invalid_rate",
                        f"cannot convert {money} to {spec.code}: {exc!r}") from exc
    if value > MAX_AMOUNT or value < _MIN_AMOUNT:
        raise MoneyError(
            "amount_too_large", f"{money} is {value} {spec.code}, beyond the maximum of 10**15"
        )
    if not value and value.is_signed():
        value = value.copy_abs()
    return value


def fits(spend: Money, cap: Money, rates: RateSource | None, *, now: float | None = None) -> bool:
    """True when ``spend``, converted into the cap's currency rounding up, is <= ``cap``.

    >>> rates = StaticRates("EUR", {"USD": "0.92"})
    >>> fits(Money.parse("100", "USD"), Money.parse("92", "EUR"), rates)
    True
    >>> fits(Money.parse("100.01", "USD"), Money.parse("92", "EUR"), rates)
    False
    """
    if not isinstance(cap, Money):
        raise _not_money("cap", cap)
    return convert(spend, cap.currency, rates, now=now, rounding="up").amount <= cap.amount


def _not_money(name: str, value: object) -> RateError:
    return RateError("invalid_argument", f"{name} must be a Money, not {type(value).__name__}")
