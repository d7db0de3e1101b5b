"""What a budget is: :class:`BudgetSpec`, and the units a budget can count.

Units are an ISO 4217 currency code (``EUR``), or one of ``tokens``, ``calls``,
``credits``. Inside the ledger every amount is an integer number of *quanta* of its
unit: the currency's minor unit (cents for EUR, yen for JPY, fils/1000 for BHD), one
token, one call, or a millionth of a credit. Stores only ever see these integers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from policyengine.budgets.errors import BudgetInputError
from policyengine.budgets.windows import WINDOWS
from policyengine.money._money import (
    MONEY_CONTEXT,
    UNITS,
    MoneyError,
    decimal_places,
    get_currency,
)
from policyengine.permissions import is_valid_pattern, permission_matches

__all__ = [
    "MAX_QUANTA",
    "MAX_ROLLING_SECONDS",
    "NON_CURRENCY_UNITS",
    "SUBJECTS",
    "BudgetSpec",
    "canonical_unit",
    "unit_scale",
]

NON_CURRENCY_UNITS = UNITS
SUBJECTS = frozenset({"agent", "acting_for", "tenant", "global"})
#: Longest rolling window (31 days); stores may forget rolling spend older than this.
MAX_ROLLING_SECONDS = 31 * 86400
#: Largest amount, limit or overdraft in quanta. Guarded sums stay below 2 * 10**18,
#: under 2**63, so an SQL INTEGER column can never overflow.
MAX_QUANTA = 10**18

_units: dict[str, tuple[str, int]] = {}


def canonical_unit(unit: object) -> tuple[str, int]:
    """``(code, scale)``: the canonical spelling of a unit and its decimal places.

    Currency codes are case-insensitive (``"usd"`` is ``USD``), as are the units.
    Raises :class:`BudgetInputError` ``unknown_unit``.

    >>> canonical_unit("usd"), canonical_unit("JPY"), canonical_unit("credits")
    (('USD', 2), ('JPY', 0), ('credits', 6))
    """
    found = _units.get(unit) if type(unit) is str else None
    if found is not None:
        return found
    try:
        if type(unit) is not str:
            raise MoneyError("unknown_currency", "not a string")
        scale = decimal_places(unit)
        code = unit.lower() if unit.lower() in UNITS else get_currency(unit).code
    except MoneyError:
        raise BudgetInputError(
            "unknown_unit",
            f"unknown unit {str(unit)[:20]!r}: use an ISO 4217 currency code (EUR, USD, ...) "
            "or tokens, calls, credits",
        ) from None
    if len(_units) < 4096:
        _units[unit] = (code, scale)
    return code, scale


def unit_scale(unit: str) -> int:
    """Decimal places of one quantum of ``unit``; raises ``unknown_unit``.

    >>> unit_scale("EUR"), unit_scale("JPY"), unit_scale("tokens"), unit_scale("credits")
    (2, 0, 0, 6)
    """
    return canonical_unit(unit)[1]


def is_money_unit(unit: str) -> bool:
    """True for a currency code (any unit that is not tokens, calls or credits)."""
    return unit not in NON_CURRENCY_UNITS


def _bad(message: str) -> BudgetInputError:
    return BudgetInputError("invalid_budget", message)


def _decimal(value: object, what: str, budget_id: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (Decimal, int, str)):
        raise _bad(f"budget {budget_id}: {what} must be a Decimal, int or string")
    try:
        result = Decimal(value)
    except InvalidOperation:
        raise _bad(f"budget {budget_id}: {what} {value!r} is not a number") from None
    if not result.is_finite() or result < 0:
        raise _bad(f"budget {budget_id}: {what} must be a finite number >= 0")
    return result


@dataclass(frozen=True)
class BudgetSpec:
    """One budget: spend on permissions matching ``patterns``, per subject, per window.

    ``budget daily-spend: payments:* limit 1000 EUR per day per agent`` is::

        BudgetSpec("travel.daily-spend", ("payments:*",), Decimal("1000"), "EUR", "day")

    ``window`` is ``minute``, ``hour``, ``day``, ``week``, ``month`` (calendar-aligned in
    ``tz``) or ``rolling`` (with ``rolling_seconds``). ``subject`` is ``agent``,
    ``acting_for``, ``tenant`` or ``global``. ``overdraft_limit`` is how far a commit
    with ``overage="allow_with_overdraft"`` may push spend past ``limit`` (as debt).
    Invalid specs raise :class:`BudgetInputError` with code ``invalid_budget``.
    """

    id: str
    patterns: tuple[str, ...]
    limit: Decimal
    unit: str
    window: str
    rolling_seconds: int | None = None
    subject: str = "agent"
    tz: str = "UTC"
    overdraft_limit: Decimal = field(default=Decimal(0))

    def __post_init__(self) -> None:
        if type(self.id) is not str or not self.id or len(self.id) > 256:
            raise _bad(f"budget id must be a non-empty string, got {self.id!r}")
        bid = self.id
        patterns = tuple(self.patterns) if not isinstance(self.patterns, str) else ()
        if not patterns or not all(is_valid_pattern(p) for p in patterns):
            raise _bad(f"budget {bid}: patterns must be a non-empty list of permission patterns")
        object.__setattr__(self, "patterns", patterns)
        try:
            unit, scale = canonical_unit(self.unit)
        except BudgetInputError as exc:
            raise _bad(f"budget {bid}: {exc.message}") from None
        object.__setattr__(self, "unit", unit)
        for name in ("limit", "overdraft_limit"):
            value = _decimal(getattr(self, name), name, bid)
            scaled = value.scaleb(scale, MONEY_CONTEXT)
            if scaled != scaled.to_integral_value(context=MONEY_CONTEXT):
                raise _bad(
                    f"budget {bid}: {name} {value} has more decimals than {self.unit} allows"
                )
            if scaled > MAX_QUANTA:
                raise _bad(f"budget {bid}: {name} {value} is too large")
            object.__setattr__(self, name, value)
        if self.window not in WINDOWS:
            raise _bad(f"budget {bid}: window must be one of {', '.join(sorted(WINDOWS))}")
        if self.window == "rolling":
            rs = self.rolling_seconds
            if type(rs) is not int or not 1 <= rs <= MAX_ROLLING_SECONDS:
                raise _bad(
                    f"budget {bid}: a rolling window needs rolling_seconds between 1 and "
                    f"{MAX_ROLLING_SECONDS} (31 days)"
                )
        elif self.rolling_seconds is not None:
            raise _bad(f"budget {bid}: rolling_seconds is only for window='rolling'")
        if self.subject not in SUBJECTS:
            raise _bad(f"budget {bid}: subject must be one of {', '.join(sorted(SUBJECTS))}")
        if type(self.tz) is not str or not self.tz:
            raise _bad(f"budget {bid}: tz must be an IANA zone name such as 'Europe/Paris'")
        if self.tz != "UTC":
            try:
                ZoneInfo(self.tz)
            except (ZoneInfoNotFoundError, ValueError):
                raise _bad(f"budget {bid}: unknown time zone {self.tz!r}") from None

    def covers(self, permission: str) -> bool:
        """True when one of the budget's patterns matches ``permission``."""
        return any(permission_matches(p, permission) for p in self.patterns)
