"""Money: exact ``Decimal`` amounts in an ISO 4217 currency or a budget unit.

Amounts reach the engine from policy text (``500 EUR``), from Python callers and from
JSON request contexts. :func:`parse_amount` is the one gate they all pass through, and it
is strict: anything it does not understand is a :class:`MoneyError` with a stable
``code``, never a guess. The full rules and the list of codes are in ``docs/money.md``;
in short:

* accepted: ``int`` (not ``bool``), finite ``Decimal``, and plain ASCII decimal strings
  (``"12"``, ``"12.50"``, ``"-3"`` when negatives are allowed);
* refused: NaN/sNaN, infinities, exponent notation in strings, non-ASCII digits, ``_``,
  a leading ``+``, surrounding whitespace, ``bool``, floats (unless ``allow_float=True``,
  which converts through ``Decimal(repr(x))``), negatives (unless ``allow_negative``),
  more significant decimals than the currency's minor unit (unless
  ``excess_decimals="round"``, which rounds **up**), and magnitudes above
  :data:`MAX_AMOUNT`.

Currencies come from a bundled ISO 4217 table (:mod:`policyengine.money._iso4217`: ISO 4217
List One as published by SIX Financial Information AG, state of 2025-03-31). Budgets
also count the non-currency :data:`UNITS` ``tokens``, ``calls`` (whole numbers) and
``credits`` (up to 6 decimal places).

>>> parse_amount("12.50", "USD")
Decimal('12.50')
>>> Money.parse("0.5", "BHD") < Money.parse("0.501", "BHD")
True

This module is a leaf: it imports nothing from the engine.
"""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from decimal import (
    ROUND_CEILING,
    ROUND_HALF_EVEN,
    Context,
    Decimal,
    DivisionByZero,
    InvalidOperation,
    Overflow,
)
from types import MappingProxyType
from typing import Final, Literal, NamedTuple

from policyengine.errors import PolicyEngineError
from policyengine.money._iso4217 import NOT_CURRENCIES, SOURCE, SOURCE_DATE, TABLE

__all__ = [
    "CURRENCIES",
    "MONEY_CONTEXT",
    "MAX_AMOUNT",
    "MAX_EXPONENT",
    "MAX_TEXT_LENGTH",
    "UNITS",
    "Currency",
    "Money",
    "MoneyError",
    "amount_unit",
    "decimal_places",
    "get_currency",
    "is_currency",
    "parse_amount",
]

#: Largest accepted magnitude, in major units of the currency (or in units).
MAX_AMOUNT: Final = Decimal(10**15)
#: Largest accepted ``abs(exponent)`` of a ``Decimal`` input (``Decimal("1E-65")`` is out).
MAX_EXPONENT: Final = 64
#: Longest accepted amount string.
MAX_TEXT_LENGTH: Final = 64
#: Decimal places allowed when no currency is given (``parse_amount(x)``).
UNSCALED_DECIMALS: Final = 18

#: Non-currency budget units and how many decimal places each allows.
UNIT_DECIMALS: Final[dict[str, int]] = {"tokens": 0, "calls": 0, "credits": 6,
                                         "risk_points": 0}
UNITS: Final = frozenset(UNIT_DECIMALS)

_MAX_INT: Final = 10**15
_MIN_AMOUNT: Final = -MAX_AMOUNT
_UNIT_MAX_SCALE: Final = 6  # widest scale of any currency or unit
_ONE: Final = Decimal(1)

# Every Decimal operation here runs in this explicit context, so a caller who changed the
# thread's decimal context (precision, traps) cannot change our results. 100 digits is far
# more than any accepted amount (<= 16 integer digits + <= 40 decimals) needs.
_CTX: Final = Context(
    prec=100,
    rounding=ROUND_HALF_EVEN,
    Emax=999,
    Emin=-999,
    traps=[InvalidOperation, DivisionByZero, Overflow],
)
#: The context every money computation of the package runs in (budgets and the evaluator
#: too), never the thread's: pass it to ``scaleb``, ``quantize``, ``to_integral_value``
#: and use its ``add`` / ``multiply``... for arithmetic.
MONEY_CONTEXT: Final = _CTX


class MoneyError(PolicyEngineError, ValueError):
    """An amount or currency was refused. ``code`` is stable (see ``docs/money.md``)."""


@dataclass(frozen=True, slots=True)
class Currency:
    """One ISO 4217 currency: ``Currency("JPY", 392, 0, "Yen")``."""

    code: str
    numeric: int
    minor_units: int
    name: str


class AmountSpec(NamedTuple):
    """What parsing needs to know about a currency or unit (cached per code)."""

    code: str  # canonical spelling: "USD", "tokens"
    scale: int  # decimal places allowed
    quantum: Decimal  # Decimal(1).scaleb(-scale), used by quantize
    is_unit: bool


def _quantum(scale: int) -> Decimal:
    return _ONE.scaleb(-scale, _CTX)


#: Every ISO 4217 currency policyengine accepts, by code.
CURRENCIES: Final = MappingProxyType(
    {code: Currency(code, numeric, minor, name) for code, numeric, minor, name in TABLE}
)

_SPECS: dict[str, AmountSpec] = {}
for _c in CURRENCIES.values():
    _SPECS[_c.code] = _SPECS[_c.code.lower()] = AmountSpec(
        _c.code, _c.minor_units, _quantum(_c.minor_units), False
    )
for _u, _scale in UNIT_DECIMALS.items():
    _SPECS[_u] = _SPECS[_u.upper()] = AmountSpec(_u, _scale, _quantum(_scale), True)
_UNSCALED: Final = AmountSpec("", UNSCALED_DECIMALS, _quantum(UNSCALED_DECIMALS), False)
#: The longest code or unit name (``risk_points``): a longer text is never upper-cased to
#: be looked up (it was 8, so ``Risk_Points`` was unknown where ``RISK_POINTS`` was not).
_LONGEST_CODE: Final = max(len(code) for code in _SPECS)


def _unknown(code: object) -> MoneyError:
    if not isinstance(code, str):
        return MoneyError(
            "unknown_currency", f"currency must be a string code such as 'EUR', not {code!r}"
        )
    shown = repr(code[:16])
    reason = NOT_CURRENCIES.get(code.upper()) if code.isascii() else None
    if reason is not None:
        return MoneyError("unknown_currency", f"currency {shown} {reason}")
    return MoneyError(
        "unknown_currency",
        f"unknown currency {shown}: use an active ISO 4217 code such as 'EUR' "
        f"({SOURCE}, {SOURCE_DATE}) or one of the units tokens, calls, credits",
    )


def spec_of(code: object) -> AmountSpec:
    """Look up a currency or unit; codes are matched case-insensitively (ASCII only)."""
    spec = _SPECS.get(code) if isinstance(code, str) else None
    if spec is None:
        if isinstance(code, str) and code.isascii() and len(code) <= _LONGEST_CODE:
            spec = _SPECS.get(code.upper())
        if spec is None:
            raise _unknown(code)
    return spec


def get_currency(code: str) -> Currency:
    """Return the ISO 4217 currency for ``code`` (``"usd"`` works too).

    Raises :class:`MoneyError` ``unknown_currency`` for unknown, withdrawn, fund-without-
    minor-unit, precious-metal and test codes, and for the budget units.

    >>> get_currency("JPY").minor_units
    0
    """
    spec = spec_of(code)
    if spec.is_unit:
        raise MoneyError(
            "unknown_currency", f"{spec.code!r} is a budget unit, not an ISO 4217 currency"
        )
    return CURRENCIES[spec.code]


def is_currency(code: str) -> bool:
    """True when ``code`` is an accepted ISO 4217 currency (budget units are not)."""
    spec = _SPECS.get(code) if isinstance(code, str) else None
    if spec is None and isinstance(code, str) and code.isascii() and len(code) <= _LONGEST_CODE:
        spec = _SPECS.get(code.upper())
    return spec is not None and not spec.is_unit


def decimal_places(code: str) -> int:
    """Decimal places allowed for a currency or unit: JPY 0, USD 2, BHD 3, credits 6."""
    return spec_of(code).scale


def amount_unit(given: object, default: str | None,
                non_money: AbstractSet[str] | None = None) -> object:
    """The unit an amount is in: the one rule every caller follows (``docs/semantics.md``,
    "Amounts and currencies"); the request pipeline and the ledger both ask it.

    ``given`` (``context.currency``; a ledger call's ``currency`` argument) when it is
    not None. Else, for an amount that may be money -- a request's ``context.amount``
    always, a ledger spend unless ``non_money`` is given -- ``default`` (the policy
    set's one ``default_currency``), and without one :class:`MoneyError`
    ``missing_currency``. Else, a ledger spend on a permission that no money budget
    covers (``non_money``: the units of its covering non-``calls`` budgets): the one
    unit there is, None when there is none (only ``calls`` budgets, or none, cover it),
    ``unit_required`` for several. Nothing is validated here: the unit is read where
    the amount is parsed.
    """
    if given is not None:
        return given
    if non_money is None:
        if default is None:
            raise MoneyError("missing_currency", "an amount without a currency, and the "
                             "policy sets no default_currency")
        return default
    if len(non_money) > 1:
        raise MoneyError("unit_required", "an amount without a unit, and the budgets "
                         f"covering it count {', '.join(sorted(non_money))}: say which")
    for unit in non_money:
        return unit
    return None


# --------------------------------------------------------------------------- parsing


def _short(value: str) -> str:
    return repr(value if len(value) <= 40 else value[:40] + "...")


def _bad_text(text: str) -> MoneyError:
    """Explain why a string is not a plain decimal (slow path, errors only)."""
    shown = _short(text)
    word = text.strip().lstrip("+-").lower()
    if word in ("nan", "snan") or word.startswith(("nan", "snan")):
        return MoneyError("nan_amount", f"amount {shown} is not a number")
    if word in ("inf", "infinity"):
        return MoneyError("infinite_amount", f"amount {shown} is infinite")
    if not text:
        return MoneyError("invalid_amount", "amount is an empty string")
    if len(text) > MAX_TEXT_LENGTH:
        return MoneyError(
            "invalid_amount", f"amount {shown} is longer than {MAX_TEXT_LENGTH} characters"
        )
    if not text.isascii():
        return MoneyError(
            "invalid_amount", f"amount {shown} has non-ASCII characters; use the digits 0-9"
        )
    if text != text.strip():
        return MoneyError("invalid_amount", f"amount {shown} has surrounding whitespace")
    if text.startswith("+"):
        return MoneyError("invalid_amount", f"amount {shown} has a '+' sign; write it without")
    if "_" in text or "," in text:
        return MoneyError(
            "invalid_amount", f"amount {shown} has digit separators; write plain digits"
        )
    if "e" in text.lower():
        return MoneyError(
            "invalid_amount",
            f"amount {shown} uses exponent notation; write a plain decimal such as '1500'",
        )
    return MoneyError(
        "invalid_amount",
        f"amount {shown} is not a plain decimal: write digits with an optional '-' and "
        "an optional '.' followed by digits, such as '12.50'",
    )


def _too_many_decimals(value: object, spec: AmountSpec) -> MoneyError:
    what = spec.code or "an amount without a currency"
    return MoneyError(
        "too_many_decimals",
        f"amount {value} has more decimal places than {what} allows ({spec.scale})",
    )


def _too_large(value: object) -> MoneyError:
    return MoneyError(
        "amount_too_large", f"amount {value} is beyond the maximum of 10**15 (1000000000000000)"
    )


def _negative(value: object) -> MoneyError:
    return MoneyError(
        "negative_amount", f"amount {value} is negative; negative amounts are not allowed here"
    )


def _parse_text(text: str, spec: AmountSpec, allow_negative: bool, round_up: bool) -> Decimal:
    if len(text) > MAX_TEXT_LENGTH or not text.isascii():
        raise _bad_text(text)
    negative = text[:1] == "-"
    body = text[1:] if negative else text
    whole, dot, frac = body.partition(".")
    # str.isdigit() on an ASCII string accepts exactly 0-9: this refuses '', '+', '_',
    # whitespace, 'e', 'NaN', '.5' and '5.' without a regex.
    if not whole.isdigit() or (dot and not frac.isdigit()):
        raise _bad_text(text)
    if negative and not allow_negative:
        raise _negative(_short(text))
    scale = spec.scale
    if len(frac) > scale:
        if frac[scale:].strip("0"):
            if not round_up:
                raise _too_many_decimals(_short(text), spec)
            amount = Decimal(text).quantize(spec.quantum, ROUND_CEILING, _CTX)
        else:  # only zeros beyond the minor unit: "12.500" is exactly 12.50
            amount = Decimal(text).quantize(spec.quantum, context=_CTX)
    else:
        amount = Decimal(text)
    if len(whole) > 15 and (amount > MAX_AMOUNT or amount < _MIN_AMOUNT):
        raise _too_large(_short(text))
    if negative and not amount:
        amount = amount.copy_abs()  # "-0" is zero
    return amount


def _parse_decimal(amount: Decimal, spec: AmountSpec, allow_negative: bool, round_up: bool
                   ) -> Decimal:
    if not amount.is_finite():
        if amount.is_nan():
            raise MoneyError("nan_amount", f"amount {amount} is not a number")
        raise MoneyError("infinite_amount", f"amount {amount} is infinite")
    if amount.is_signed():
        if not allow_negative:
            raise _negative(amount)
        if not amount:
            amount = amount.copy_abs()
    # The cap is on the adjusted exponent (the power of ten of the leading digit), which
    # Decimal gives in O(1); as_tuple() would copy every digit.
    adjusted = amount.adjusted()
    if adjusted > MAX_EXPONENT or adjusted < -MAX_EXPONENT:
        raise MoneyError(
            "exponent_too_large",
            f"amount {amount} has exponent {adjusted}, beyond +-{MAX_EXPONENT}",
        )
    if amount > MAX_AMOUNT or amount < _MIN_AMOUNT:
        raise _too_large(amount)
    exact = amount.quantize(spec.quantum, context=_CTX)
    if exact != amount:
        if not round_up:
            raise _too_many_decimals(amount, spec)
        return amount.quantize(spec.quantum, ROUND_CEILING, _CTX)
    # Returning the quantized value bounds the digits of every accepted amount (a
    # Decimal("1.000...") with 500 zeros comes back as 1.00). Wide scales (rates, no
    # currency) drop trailing zeros instead of padding to 18 or 40 places.
    return exact.normalize(_CTX) if spec.scale > _UNIT_MAX_SCALE else exact


def _parse_int(value: int, allow_negative: bool) -> Decimal:
    if value < 0 and not allow_negative:
        raise _negative(value)
    if value > _MAX_INT or value < -_MAX_INT:
        raise _too_large(value if abs(value) < 10**40 else "with more than 40 digits")
    return Decimal(value)


def parse_spec(
    value: object, spec: AmountSpec, allow_negative: bool, round_up: bool, allow_float: bool
) -> Decimal:
    kind = type(value)
    if kind is str:
        return _parse_text(value, spec, allow_negative, round_up)  # type: ignore[arg-type]
    if kind is int:
        return _parse_int(value, allow_negative)  # type: ignore[arg-type]
    if kind is Decimal:
        return _parse_decimal(value, spec, allow_negative, round_up)  # type: ignore[arg-type]
    if isinstance(value, bool):
        raise MoneyError("bool_amount", f"amount {value} is a boolean, not a number")
    if isinstance(value, float):
        if not allow_float:
            raise MoneyError(
                "float_amount",
                f"amount {value!r} is a float; pass Decimal(repr(x)) or a decimal string",
            )
        if value != value:
            raise MoneyError("nan_amount", "amount is a float NaN")
        if value in (float("inf"), float("-inf")):
            raise MoneyError("infinite_amount", f"amount {value} is infinite")
        return _parse_decimal(Decimal(repr(value)), spec, allow_negative, round_up)
    if isinstance(value, str):
        return _parse_text(str(value), spec, allow_negative, round_up)
    if isinstance(value, int):
        return _parse_int(int(value), allow_negative)
    if isinstance(value, Decimal):
        return _parse_decimal(Decimal(value), spec, allow_negative, round_up)
    raise MoneyError(
        "invalid_amount",
        f"amount must be an int, a Decimal or a decimal string, not {type(value).__name__}",
    )


def parse_amount(
    value: object,
    currency: str | None = None,
    *,
    allow_negative: bool = False,
    excess_decimals: Literal["reject", "round"] = "reject",
    allow_float: bool = False,
) -> Decimal:
    """Parse an amount strictly; raise :class:`MoneyError` with a ``code`` otherwise.

    ``currency`` (an ISO 4217 code or one of :data:`UNITS`) sets how many decimal places
    are allowed; without it up to 18 are. Zeros beyond the minor unit are dropped
    (``"12.500"`` USD is ``12.50``); other excess decimals are ``too_many_decimals`` or,
    with ``excess_decimals="round"``, rounded **up** (towards +infinity) so a spend is
    never understated. Never use ``"round"`` for a limit.

    >>> parse_amount("0.125", "BHD")
    Decimal('0.125')
    >>> parse_amount("10.001", "USD", excess_decimals="round")
    Decimal('10.01')
    """
    if currency is None:
        spec = _UNSCALED
    else:
        found = _SPECS.get(currency) if type(currency) is str else None
        spec = found if found is not None else spec_of(currency)
    if type(value) is str and excess_decimals == "reject":  # the common case, one call deep
        return _parse_text(value, spec, allow_negative, False)
    return parse_spec(value, spec, allow_negative, _round_up(excess_decimals), allow_float)


def _round_up(excess_decimals: str) -> bool:
    if excess_decimals == "reject":
        return False
    if excess_decimals == "round":
        return True
    raise MoneyError(
        "invalid_argument", f"excess_decimals must be 'reject' or 'round', not {excess_decimals!r}"
    )


# --------------------------------------------------------------------------- Money


@dataclass(frozen=True, slots=True, eq=False)
class Money:
    """An exact amount in one currency (or budget unit). Immutable and hashable.

    Build one with :meth:`Money.parse` from untrusted input; ``Money(Decimal("1.50"),
    "EUR")`` validates the same way but takes only ``Decimal`` or ``int`` amounts.
    Negative amounts are allowed in a ``Money`` (refunds, differences); parsing decides.

    ``==`` is False between different currencies; ``<``, ``<=``, ``>``, ``>=``, ``+`` and
    ``-`` raise ``MoneyError("currency_mismatch")`` instead of guessing a rate.

    >>> Money.parse("500", "EUR") >= Money.parse("499.99", "EUR")
    True
    >>> str(Money.parse("5", "BHD"))
    '5.000 BHD'
    """

    amount: Decimal
    currency: str

    def __post_init__(self) -> None:
        spec = spec_of(self.currency)
        if isinstance(self.amount, str):
            raise MoneyError(
                "invalid_amount", "Money() takes a Decimal amount; use Money.parse for text"
            )
        amount = parse_spec(self.amount, spec, True, False, False)
        object.__setattr__(self, "amount", amount)
        object.__setattr__(self, "currency", spec.code)

    @classmethod
    def parse(
        cls,
        value: object,
        currency: str,
        *,
        allow_negative: bool = False,
        excess_decimals: Literal["reject", "round"] = "reject",
        allow_float: bool = False,
    ) -> Money:
        """Parse ``value`` with :func:`parse_amount` rules into a ``Money``."""
        spec = spec_of(currency)
        amount = parse_spec(value, spec, allow_negative, _round_up(excess_decimals), allow_float)
        return cls._trusted(amount, spec.code)

    @classmethod
    def _trusted(cls, amount: Decimal, code: str) -> Money:
        """Build without re-validating (for values this package has just validated)."""
        money = object.__new__(cls)
        object.__setattr__(money, "amount", amount)
        object.__setattr__(money, "currency", code)
        return money

    def wire_amount(self) -> str:
        """The amount as a plain decimal string for JSON: ``"12.50"``, ``"500"`` (JPY).

        Currencies print exactly their minor units; units print without trailing zeros.
        """
        spec = _SPECS[self.currency]
        if spec.is_unit:
            return format(self.amount.normalize(_CTX), "f")
        return format(self.amount.quantize(spec.quantum, context=_CTX), "f")

    def to_wire(self) -> dict[str, str]:
        """``{"amount": "12.50", "currency": "USD"}``."""
        return {"amount": self.wire_amount(), "currency": self.currency}

    def __str__(self) -> str:
        return f"{self.wire_amount()} {self.currency}"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Money):
            return NotImplemented
        return self.currency == other.currency and self.amount == other.amount

    def __hash__(self) -> int:
        return hash((self.amount, self.currency))

    def _other(self, other: Money, op: str) -> Decimal:
        if self.currency != other.currency:
            raise MoneyError(
                "currency_mismatch",
                f"cannot {op} {self} and {other}: convert one with policyengine.money.convert",
            )
        return other.amount

    def __lt__(self, other: Money) -> bool:
        if not isinstance(other, Money):
            return NotImplemented
        return self.amount < self._other(other, "compare")

    def __le__(self, other: Money) -> bool:
        if not isinstance(other, Money):
            return NotImplemented
        return self.amount <= self._other(other, "compare")

    def __gt__(self, other: Money) -> bool:
        if not isinstance(other, Money):
            return NotImplemented
        return self.amount > self._other(other, "compare")

    def __ge__(self, other: Money) -> bool:
        if not isinstance(other, Money):
            return NotImplemented
        return self.amount >= self._other(other, "compare")

    def __add__(self, other: Money) -> Money:
        if not isinstance(other, Money):
            return NotImplemented
        return Money(_CTX.add(self.amount, self._other(other, "add")), self.currency)

    def __sub__(self, other: Money) -> Money:
        if not isinstance(other, Money):
            return NotImplemented
        return Money(_CTX.subtract(self.amount, self._other(other, "subtract")), self.currency)


def trusted_money(amount: Decimal, code: str) -> Money:
    """A ``Money`` built without re-validating, for a value another module of this package
    has just computed from validated ones (``convert``): a public name of this private
    module, not API, so that no private name crosses a module."""
    money = object.__new__(Money)
    object.__setattr__(money, "amount", amount)
    object.__setattr__(money, "currency", code)
    return money
