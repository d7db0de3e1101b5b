"""The :class:`Ledger`: check, reserve, commit, release, extend, record and balances.

Rules (``docs/budgets.md`` has the long form):

* **Matching.** A budget covers a spend when one of its patterns matches the permission
  and its unit can count the spend: a currency budget counts spends in any currency
  (converted into its own at reservation time, rounded up, rate recorded); a ``tokens``
  or ``credits`` budget counts only spends in that unit; a ``calls`` budget counts one
  call per ``reserve`` / ``record`` (or the amount, when the spend itself is in
  ``calls``). A spend whose unit no matching (non-``calls``) budget can count raises
  ``unit_mismatch``: a spend never slips past a budget by using another unit.
* **Subjects.** ``agent``: the principal; ``acting_for``: the principal the agent acts
  for, or the agent itself when it acts for nobody; ``tenant``: the ``tenant`` argument,
  all requests without one sharing the ``""`` bucket; ``global``: one ``"*"`` bucket.
* **Atomicity.** Every operation is one :meth:`BudgetStore.apply`: it succeeds on every
  covering budget or changes nothing.
* **Invariant.** For every bucket, ``spent + live reserved <= limit`` unless a commit or
  record used ``overage="allow_with_overdraft"``, and never more than
  ``limit + overdraft_limit``. Spend past ``limit`` is *debt*; a bucket with debt admits
  no new reservation (``debt_outstanding``) until its window rolls over.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import (
    ROUND_CEILING,
    Context,
    Decimal,
    DivisionByZero,
    InvalidOperation,
    Overflow,
)
from typing import Any, Literal, NamedTuple, TypeGuard, cast

from policyengine.budgets.errors import (
    BudgetError,
    BudgetExceeded,
    BudgetInputError,
    IdempotencyMismatch,
    ReservationError,
)
from policyengine.budgets.memory import MemoryStore
from policyengine.budgets.pricing import LLMUsage, PriceTable
from policyengine.budgets.spec import (
    HIERARCHY,
    MAX_QUANTA,
    MICRO_SUFFIX,
    NON_CURRENCY_UNITS,
    BudgetSpec,
    canonical_unit,
    money_unit,
    scope_path,
    subject_field,
)
from policyengine.budgets.store import (
    ACTIVE,
    COMMITTED,
    LISTING_KEY_MAX,
    RELEASED,
    Bucket,
    BudgetStore,
    Guard,
    IdempotencyRecord,
    Line,
    Outcome,
    ReservationRecord,
    Spend,
    Transaction,
    Usage,
    listing_key,
)
from policyengine.budgets.urls import as_budget_store
from policyengine.budgets.windows import Window
from policyengine.money._money import (
    MAX_AMOUNT,
    MAX_EXPONENT,
    MONEY_CONTEXT,
    AmountSpec,
    Money,
    MoneyError,
    amount_unit,
    is_currency,
    parse_amount,
    parse_spec,
    spec_of,
    trusted_money,
)
from policyengine.money._rates import (
    JsonFileRates,
    RateError,
    RateSource,
    StaticRates,
    converted_amount,
    fraction_rate,
    source_fraction,
)
from policyengine.permissions import InvalidPermission, matches, validate_permission

__all__ = [
    "MAX_TTL",
    "MIN_TTL",
    "Balance",
    "BudgetCheck",
    "BudgetUsage",
    "Ledger",
    "Overage",
    "Reservation",
    "ReservationLine",
    "ReservationPage",
    "is_store_text",
    "unknown_reservation",
]

Overage = Literal["reject", "allow_if_available", "allow_with_overdraft"]
_OVERAGES = frozenset({"reject", "allow_if_available", "allow_with_overdraft"})
MIN_TTL = 1
MAX_TTL = 86400
#: Longest ``note`` a reservation keeps (characters).
MAX_NOTE = 65536
#: Longest a :meth:`Ledger.remember` text is kept (seconds): 30 days.
MAX_REMEMBER = 30 * 86400
#: Most reservations one :meth:`Ledger.reservations` call returns, and most it examines.
MAX_LIST = 500
_LIST_SCAN = 2000
#: Longest grace period after a lease ends (Cycles: ``grace_period_ms`` <= 60,000).
MAX_GRACE = 60
#: Seconds an idempotency key is remembered.
IDEMPOTENCY_RETENTION = 86400.0
_MAX_NAME = 256
#: Reads and writes an ``allow_if_available`` commit or record makes before it charges
#: what is held (commit) or nothing (record) on the budgets a race keeps taking.
_CAP_TRIES = 4
_MAX_MATCH_CACHE = 10_000
#: Rate sources whose ``rate()`` is a function of the fraction ``rate_fraction`` gives.
_TABLES = (StaticRates, JsonFileRates)
#: Division rounding up (a spend converted at an exact fraction: its ceiling, once).
_CEILING = Context(prec=100, rounding=ROUND_CEILING, Emax=999, Emin=-999,
                   traps=[InvalidOperation, DivisionByZero, Overflow])
_NO_TEXT: tuple[str | None, int] = (None, 0)  # no amount text asked yet (admission_text)
_NOT_SEEN: tuple[int, float, int, int] = (-1, float("-inf"), 0, 0)  # no bucket read yet
_NON_MONEY = NON_CURRENCY_UNITS
#: Subjects whose bucket is a scope path (:func:`~policyengine.budgets.spec.scope_path`).
_PATH_LEVELS = frozenset({"workspace", "app", "workflow", "toolset"})
# How a budget counts a spend: one call, the amount as is, converted, or nothing (a spend
# in a unit the budget does not count, checked only for an exhausted budget; admit()), or
# the tokens of a priced LLM usage.
_CALL, _SAME, _CONVERT, _ZERO, _TOKENS = 0, 1, 2, 3, 4
_QUANTA = [Decimal(1).scaleb(-n, MONEY_CONTEXT) for n in range(19)]
_INF = float("inf")
_ZERO_D = Decimal(0)
_ONE_D = Decimal(1)
#: Builds a record tuple without the NamedTuple ``__new__`` (a Python-level call that
#: costs twice as much); used on the hot path where every field is given in order.
_new = tuple.__new__


_unit_scales: dict[str, tuple[int, Decimal]] = {}


def _unit_scale(unit: str) -> tuple[int, Decimal]:
    """(decimal places, quantum) of a canonical unit, memoised (one dict lookup)."""
    found = _unit_scales.get(unit)
    if found is None:
        scale = canonical_unit(unit)[1]
        found = _unit_scales[unit] = (scale, _QUANTA[scale])
    return found


#: Per unit as given, what :meth:`Ledger._amount` parses an amount in it with (the
#: spec ``parse_amount`` took: micro-units parse as whole tokens) and the unit's
#: quantum; filled as units are met.
_amount_units: dict[str, tuple[AmountSpec, Decimal]] = {}


def _new_id(now: float) -> str:
    """A fresh reservation id: the time it is made (``now``, the ledger's clock) in whole
    milliseconds as 12 hex digits, then 96 random bits from the OS.

    The random bits keep it unique across ``fork`` and unguessable from another id. The
    time in front makes ids sort by creation, so a store's index on them takes each new
    one at its right edge, in pages already cached, where wholly random ids land each in
    a random leaf of an index that holds every reservation kept for ``retention``: the
    primary key of PostgreSQL's reservations, and SQLite's reservations table itself
    (clustered on its id). Nothing reads the time back: the record carries
    ``created_at``."""
    return f"rsv_{max(0, int(now * 1000)):012x}{os.urandom(12).hex()}"


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    dt = datetime.fromtimestamp(t, timezone.utc)
    if t == int(t):
        return dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _dec(quanta: int, scale: int) -> Decimal:
    return Decimal(quanta).scaleb(-scale, MONEY_CONTEXT)


def _fmt(quanta: int, scale: int) -> str:
    return format(Decimal(quanta).scaleb(-scale, MONEY_CONTEXT), "f")


class _Budget:
    """A :class:`BudgetSpec` prepared for the hot path (integers, window object)."""

    __slots__ = (
        "calls", "ceiling", "currency", "id", "limit", "money", "overdraft", "rolling",
        "scale", "spec",
        "subject", "unit", "window",
    )

    def __init__(self, spec: BudgetSpec) -> None:
        self.spec = spec
        self.id = spec.id
        self.unit, self.scale = canonical_unit(spec.unit)
        self.calls = self.unit == "calls"
        self.money = self.unit not in _NON_MONEY
        #: (currency, exponent of one quantum): ("USD", 2), ("USD", 8) for USD_MICROCENTS.
        self.currency = money_unit(self.unit) if self.money else None
        self.limit = int(spec.limit.scaleb(self.scale, MONEY_CONTEXT))
        self.overdraft = int(spec.overdraft_limit.scaleb(self.scale, MONEY_CONTEXT))
        self.ceiling = self.limit + self.overdraft
        self.window = Window(spec.window, spec.rolling_seconds, spec.tz)
        self.rolling = spec.rolling_seconds
        self.subject = spec.subject


#: (spend unit, valid from, valid until, per covering budget: (budget, how it counts the
#: spend, subject, window start, window end, bucket, or None for a rolling window)).
_Targets = tuple[
    str | None, float, float, tuple[tuple[_Budget, int, str, int, int, Bucket | None], ...]
]


@dataclass(frozen=True)
class ReservationLine:
    """What a reservation holds on one budget, in that budget's unit."""

    budget: str
    subject: str
    unit: str
    amount: Decimal
    rate: Decimal | None
    committed: Decimal | None
    window_start: float | None
    window_end: float | None

    def to_wire(self) -> dict[str, Any]:
        return {
            "budget": self.budget,
            "subject": self.subject,
            "unit": self.unit,
            "amount": format(self.amount, "f"),
            "rate": None if self.rate is None else format(self.rate, "f"),
            "committed": None if self.committed is None else format(self.committed, "f"),
            "windowStart": _iso(self.window_start),
            "windowEnd": _iso(self.window_end),
        }


class Reservation:
    """A reservation (or a recorded spend) as the ledger returned it.

    ``status`` is ``active``, ``committed``, ``released`` or ``expired`` (as of the call
    that returned it; a replayed idempotency key returns the first call's result, so
    its status as of that call). ``lines`` holds one :class:`ReservationLine` per budget charged.
    """

    __slots__ = ("_hidden", "_meta", "_record", "status")

    def __init__(
        self, record: ReservationRecord, meta: dict[str, tuple[str, int]], now: float,
        hidden: frozenset[str] = frozenset(),
    ) -> None:
        self._record = record
        self._meta = meta  # budget id -> (unit, scale)
        self._hidden = hidden  # shadow budgets' ids: their lines are not shown
        status = record.status
        if status == ACTIVE and record.expires_at <= now:
            status = "expired"
        self.status: str = status

    @property
    def id(self) -> str:
        return self._record.id

    @property
    def principal(self) -> str:
        return self._record.principal

    @property
    def permission(self) -> str:
        return self._record.permission

    @property
    def amount(self) -> Decimal:
        return Decimal(self._record.amount)

    @property
    def unit(self) -> str | None:
        return self._record.unit

    @property
    def acting_for(self) -> str | None:
        return self._record.acting_for

    @property
    def tenant(self) -> str | None:
        return self._record.tenant

    @property
    def created_at(self) -> float:
        return self._record.created_at

    @property
    def expires_at(self) -> float:
        """When the lease ends (extend only before); commits are accepted until
        :attr:`grace_until`."""
        return self._record.expires_at - self._record.grace

    @property
    def grace_until(self) -> float:
        """The lease end plus the grace period: the last moment a commit is accepted and
        the hold lasts (``status`` is ``active`` until then)."""
        return self._record.expires_at

    @property
    def capped(self) -> bool:
        """True when ``allow_if_available`` charged a budget less than the amount."""
        return self._record.capped

    @property
    def committed_amount(self) -> Decimal | None:
        value = self._record.committed_amount
        return None if value is None else Decimal(value)

    @property
    def committed_unit(self) -> str | None:
        return self._record.committed_unit

    @property
    def priced(self) -> str | None:
        """``provider/model`` of the price that priced a ``usage=`` spend, else None."""
        return self._record.priced

    @property
    def overage(self) -> str | None:
        """The overage policy given to ``reserve`` (what a commit naming none follows)."""
        return self._record.overage

    @property
    def note(self) -> str | None:
        """The text given to ``reserve`` as ``note``, as it was given."""
        return self._record.note

    @property
    def finalized_at(self) -> float | None:
        """When it was committed or released (POSIX seconds), else None."""
        return self._record.finalized_at

    @property
    def holds(self) -> bool:
        """Whether any budget was charged: ``bool(self.lines)`` without building the lines
        (a reservation no budget covers holds nothing)."""
        hidden = self._hidden
        if not hidden:
            return bool(self._record.lines)
        return any(line.budget not in hidden for line in self._record.lines)

    @property
    def lines(self) -> tuple[ReservationLine, ...]:
        rec = self._record
        out = []
        hidden = self._hidden
        for i, line in enumerate(rec.lines):
            if hidden and line.budget in hidden:
                continue  # a shadow budget's line: what it would have held, not shown
            unit, scale = self._meta.get(line.budget, ("", 0))
            committed = None if rec.committed is None else _dec(rec.committed[i], scale)
            out.append(
                ReservationLine(
                    budget=line.budget,
                    subject=line.subject,
                    unit=unit,
                    amount=_dec(line.amount, scale),
                    rate=None if line.rate is None else Decimal(line.rate),
                    committed=committed,
                    window_start=None if line.rolling else float(line.window),
                    window_end=None if line.rolling else float(line.window_end),
                )
            )
        return tuple(out)

    def to_wire(self) -> dict[str, Any]:
        """camelCase dict; amounts are decimal strings, times ISO 8601 UTC."""
        rec = self._record
        return {
            "id": rec.id,
            "status": self.status,
            "principal": rec.principal,
            "permission": rec.permission,
            "amount": rec.amount,
            "unit": rec.unit,
            "actingFor": rec.acting_for,
            "tenant": rec.tenant,
            "createdAt": _iso(rec.created_at),
            "expiresAt": _iso(rec.expires_at - rec.grace),
            "graceUntil": _iso(rec.expires_at),
            "capped": rec.capped,
            "committedAmount": rec.committed_amount,
            "lines": [line.to_wire() for line in self.lines],
            "priced": rec.priced,
            "overage": rec.overage,
            "note": rec.note,
        }

    def __repr__(self) -> str:
        rec = self._record
        return (
            f"Reservation(id={rec.id!r}, status={self.status!r}, amount={rec.amount} "
            f"{rec.unit}, lines={len(rec.lines)})"
        )


class ReservationPage(NamedTuple):
    """One page of :meth:`Ledger.reservations`: the reservations, and the cursor of the
    next page (None when this is the last)."""

    reservations: tuple[Reservation, ...]
    cursor: str | None


_LIST_STATUSES = frozenset({ACTIVE, COMMITTED, RELEASED, "expired"})


def _is_cursor(cursor: object) -> bool:
    """Is ``cursor`` a listing key (17 digits, ``:``, an id of ASCII letters, digits and
    ``_``)?"""
    if type(cursor) is not str or not 19 < len(cursor) <= LISTING_KEY_MAX:
        return False
    stamp, sep, rid = cursor[:17], cursor[17], cursor[18:]
    return (sep == ":" and stamp.isascii() and stamp.isdigit() and rid.isascii()
            and rid.replace("_", "").isalnum())


class BudgetCheck:
    """Result of :meth:`Ledger.check`: would this spend fit every covering budget?

    ``allowed``; ``code`` (None, ``budget_exceeded`` or ``debt_outstanding``);
    ``details``: the refusing budget's details (None when allowed); ``budgets``: details of
    every covering budget; ``tightest``: the covering budget with the least room left
    after this spend (as a fraction of its limit), or None when no budget covers it.
    """

    __slots__ = ("_ledger", "_rows", "allowed", "code", "index")

    def __init__(
        self,
        ledger: Ledger,
        rows: list[tuple[_Budget, Line, Usage]],
        code: str | None,
        index: int,
    ) -> None:
        self._ledger = ledger
        self._rows = rows
        self.allowed = code is None
        self.code = code
        self.index = index

    @property
    def details(self) -> dict[str, Any] | None:
        if self.code is None:
            return None
        budget, line, use = self._rows[self.index]
        return _details(budget, line, use)

    @property
    def budgets(self) -> list[dict[str, Any]]:
        return [_details(b, line, use) for b, line, use in self._rows]

    @property
    def tightest(self) -> dict[str, Any] | None:
        i = self._tightest()
        if i < 0:
            return None
        return _details(*self._rows[i])

    @property
    def refusals(self) -> tuple[tuple[str, str], ...]:
        """``(budget id, code)`` of every covering budget that refuses the spend, in the
        order the check asks them (the policy's), each with the code it alone would give
        (``debt_outstanding`` or ``budget_exceeded``); the first is ``code``'s. Empty when
        allowed. What ``authorize`` reports of the shadow budgets (docs/budgets.md)."""
        out = []
        for b, line, use in self._rows:
            code = _refusal(b.limit, use.spent, use.reserved, line.amount)
            if code is not None:
                out.append((b.id, code))
        return tuple(out)

    @property
    def caps(self) -> dict[str, int]:
        """The Cycles caps of the covering budgets (the most restrictive value of each
        name: the smallest ``max_tokens`` and ``max_steps_remaining``, the longest
        ``cooldown_ms``);
        empty when none declares caps. An allowed check with caps is Cycles'
        ``ALLOW_WITH_CAPS``."""
        return self._ledger.caps_of(b.id for b, _line, _use in self._rows)

    @property
    def usage(self) -> BudgetUsage | None:
        """The refusing budget, when refused; else the tightest covering budget (None
        when no budget covers the spend). What a decision reports as ``budget``."""
        i = self.index if self.code is not None else self._tightest()
        if i < 0:
            return None
        return _usage(*self._rows[i])

    def _tightest(self) -> int:
        best: tuple[float, int] | None = None
        for i, (b, line, use) in enumerate(self._rows):
            left = b.limit - use.spent - use.reserved - line.amount
            ratio = left / b.limit if b.limit else (0.0 if left >= 0 else -1.0)
            if best is None or ratio < best[0]:
                best = (ratio, i)
        return -1 if best is None else best[1]

    def to_wire(self) -> dict[str, Any]:
        return {"allowed": self.allowed, "code": self.code, "details": self.details,
                "budgets": self.budgets, "caps": self.caps}


@dataclass(frozen=True)
class Balance:
    """One budget's state for one subject in the current window (amounts in ``unit``).

    ``remaining = max(0, limit - spent - reserved)``; ``debt = max(0, spent - limit)``.
    A rolling window reports ``window_start = now - rolling_seconds`` and no end.
    """

    budget: str
    subject: str
    unit: str
    limit: Decimal
    spent: Decimal
    reserved: Decimal
    debt: Decimal
    remaining: Decimal
    overdraft_limit: Decimal
    window: str
    window_start: float
    window_end: float | None
    level: str = "agent"  #: the budget's subject kind (``agent``, ``workspace``, ...)

    def to_wire(self) -> dict[str, Any]:
        return {
            "budget": self.budget,
            "subject": self.subject,
            "level": self.level,
            "unit": self.unit,
            "limit": format(self.limit, "f"),
            "spent": format(self.spent, "f"),
            "reserved": format(self.reserved, "f"),
            "debt": format(self.debt, "f"),
            "remaining": format(self.remaining, "f"),
            "overdraftLimit": format(self.overdraft_limit, "f"),
            "isOverLimit": self.debt > 0,
            "window": self.window,
            "windowStart": _iso(self.window_start),
            "windowEnd": _iso(self.window_end),
        }


def _details(
    budget: _Budget, line: Line, use: Usage, attempted: int | None = None
) -> dict[str, Any]:
    scale = budget.scale
    limit = budget.limit
    spent, reserved = use
    add = line.amount if attempted is None else attempted
    return {
        "budget": budget.id,
        "subject": line.subject,
        "limit": _fmt(limit, scale),
        "spent": _fmt(spent, scale),
        "reserved": _fmt(reserved, scale),
        "debt": _fmt(max(0, spent - limit), scale),
        "attempted": _fmt(add, scale),
        "projected": _fmt(spent + reserved + add, scale),
        "remaining": _fmt(max(0, limit - spent - reserved), scale),
        "currency": budget.unit,
        "windowEnd": None if line.rolling else _iso(line.window_end),
    }


class BudgetUsage:
    """One budget's state as a decision reports it: the refusing budget of a
    ``budget_exceeded`` decision, or the tightest covering budget of any other one.

    Amounts are :class:`~decimal.Decimal` in ``unit`` (``currency`` on the wire);
    ``attempted`` is what the request would add (one call for a ``calls`` budget, zero
    for a budget the request's amount does not count against). Immutable; the strings
    of :meth:`to_wire` are made only when asked for.
    """

    # One tuple (budget, subject, unit, window_end, scale, limit, spent, reserved,
    # attempted), set once: a decision builds one per budgeted request.
    __slots__ = ("_t",)

    _t: tuple[str, str, str, float | None, int, int, int, int, int]

    def __init__(self, budget: str, subject: str, unit: str, scale: int, limit: int,
                 spent: int, reserved: int, attempted: int, window_end: float | None
                 ) -> None:
        _set_t(self, (budget, subject, unit, window_end, scale, limit, spent, reserved,
                      attempted))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"BudgetUsage is immutable (cannot set {name})")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"BudgetUsage is immutable (cannot delete {name})")

    def __reduce__(self) -> tuple[Any, ...]:
        """Copied and pickled as its tuple (unpickling by ``__setattr__`` is refused)."""
        return budget_usage, (self._t,)

    @property
    def budget(self) -> str:
        """The budget's qualified id."""
        return self._t[0]

    @property
    def subject(self) -> str:
        """Whose bucket: an agent, a person acted for, a tenant, or ``*``."""
        return self._t[1]

    @property
    def unit(self) -> str:
        """A currency code, or tokens / calls / credits."""
        return self._t[2]

    @property
    def window_end(self) -> float | None:
        """POSIX seconds; None for a rolling window."""
        return self._t[3]

    @property
    def _scale(self) -> int:
        return self._t[4]

    @property
    def _limit(self) -> int:
        return self._t[5]

    @property
    def _spent(self) -> int:
        return self._t[6]

    @property
    def _reserved(self) -> int:
        return self._t[7]

    @property
    def _attempted(self) -> int:
        return self._t[8]

    @property
    def limit(self) -> Decimal:
        return _dec(self._limit, self._scale)

    @property
    def spent(self) -> Decimal:
        return _dec(self._spent, self._scale)

    @property
    def reserved(self) -> Decimal:
        return _dec(self._reserved, self._scale)

    @property
    def debt(self) -> Decimal:
        return _dec(max(0, self._spent - self._limit), self._scale)

    @property
    def attempted(self) -> Decimal:
        return _dec(self._attempted, self._scale)

    @property
    def projected(self) -> Decimal:
        return _dec(self._spent + self._reserved + self._attempted, self._scale)

    @property
    def remaining(self) -> Decimal:
        return _dec(max(0, self._limit - self._spent - self._reserved), self._scale)

    def to_wire(self) -> dict[str, Any]:
        """The ``budget`` member of a wire decision (docs/budgets.md)."""
        budget, subject, unit, window_end, scale, limit, spent, reserved, attempted = self._t
        return {
            "budget": budget,
            "subject": subject,
            "limit": _fmt(limit, scale),
            "spent": _fmt(spent, scale),
            "reserved": _fmt(reserved, scale),
            "debt": _fmt(max(0, spent - limit), scale),
            "attempted": _fmt(attempted, scale),
            "projected": _fmt(spent + reserved + attempted, scale),
            "remaining": _fmt(max(0, limit - spent - reserved), scale),
            "currency": unit,
            "windowEnd": _iso(window_end),
        }

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BudgetUsage) and self.to_wire() == other.to_wire()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"BudgetUsage({self.to_wire()!r})"


_set_t = BudgetUsage.__dict__["_t"].__set__  # the slot's own setter (__setattr__ refuses)



def budget_usage(t: tuple[str, str, str, float | None, int, int, int, int, int]
                 ) -> BudgetUsage:
    """A :class:`BudgetUsage` from its tuple, without the ``__init__`` call (not API: a
    name without ``_`` because decision.py builds a decision's usage with it too)."""
    usage = object.__new__(BudgetUsage)
    _set_t(usage, t)
    return usage


def _usage(budget: _Budget, line: Line, use: Usage) -> BudgetUsage:
    return BudgetUsage(budget.id, line.subject, budget.unit, budget.scale, budget.limit,
                       use.spent, use.reserved, line.amount,
                       None if line.rolling else line.window_end)


def _refusal(limit: int, spent: int, reserved: int, amount: int, exhausted: bool = True
             ) -> str | None:
    """The ledger's one refusal rule: the code a bucket with ``spent`` and ``reserved``
    (quanta) under ``limit`` refuses a spend of ``amount`` quanta with, or None when it
    takes it. Debt (``spent`` past ``limit``) refuses anything (``debt_outstanding``);
    so does a spend the room left does not hold (``budget_exceeded``); ``exhausted``
    (what ``authorize`` asks: :meth:`Ledger.admit` and its fast paths,
    :attr:`BudgetCheck.refusals`) also refuses any spend, a zero one too, once no room
    is left, while :meth:`Ledger.check`, the dry run of a reserve, takes a zero spend
    that fits exactly, as the store's guard (``spent + reserved + add <= ceiling``)
    does. Every read-only answer of the ledger asks this one function, so the paths
    cannot drift apart (they were seven copies of it)."""
    if spent > limit:
        return "debt_outstanding"
    room = limit - spent - reserved
    if amount > room or (exhausted and room <= 0):
        return "budget_exceeded"
    return None


def _over_code(over: str) -> str:
    """The code a write refused by a budget's guard gives: past the overdraft under
    ``allow_with_overdraft``, else past the limit (debt is ``debt_outstanding``,
    whatever the overage: :meth:`Ledger._failed`)."""
    return "overdraft_limit_exceeded" if over == "allow_with_overdraft" else "budget_exceeded"


def _exceeded(code: str, budget: _Budget, line: Line, use: Usage, attempted: int,
              note: str = "") -> BudgetExceeded:
    """The refusal of ``budget`` as an error: its ``code``, the message that says why and
    the wire's details, built once here for every refusing path (``note``: what the
    caller adds to the message, as a commit over its hold does)."""
    d = _details(budget, line, use, attempted)
    if code == "debt_outstanding":
        msg = (
            f"budget {budget.id} for {line.subject!r} has outstanding debt of {d['debt']} "
            f"{budget.unit}: no new spend until its window ends ({d['windowEnd'] or 'rolling'})"
        )
    elif code == "overdraft_limit_exceeded":
        d["overdraftLimit"] = _fmt(budget.overdraft, budget.scale)
        msg = (
            f"budget {budget.id} for {line.subject!r}: {d['attempted']} {budget.unit} would "
            f"bring the total to {d['projected']}, past limit {d['limit']} plus overdraft "
            f"{d['overdraftLimit']}"
        )
    else:
        msg = (
            f"budget {budget.id} for {line.subject!r}: {d['attempted']} {budget.unit} does "
            f"not fit (limit {d['limit']}, spent {d['spent']}, reserved {d['reserved']}, "
            f"remaining {d['remaining']}); the window ends {d['windowEnd'] or 'on a rolling basis'}"
        )
    return BudgetExceeded(code, msg + note, d)


def _name(value: object, what: str, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if type(value) is not str or not value or len(value) > _MAX_NAME:
        raise BudgetInputError(
            "invalid_subject", f"{what} must be a non-empty string of at most {_MAX_NAME} chars"
        )
    if not is_store_text(value):
        raise BudgetInputError("invalid_subject", f"{what} is not text every store keeps "
                               "(it holds a NUL character or a lone surrogate)")
    return value


def is_store_text(value: str) -> bool:
    """Can every store keep ``value``? A lone surrogate cannot be UTF-8 (every store would
    raise UnicodeEncodeError), and PostgreSQL keeps no NUL character in text or JSON
    (memory, SQLite and Redis would): refused here as bad input on every store, where
    PostgreSQL alone would fail it as an outage. ``isascii`` is O(1), so an ASCII name
    costs one scan for NUL. The policy checker asks it of an ``agent`` id (E118)."""
    if value.isascii():
        return "\0" not in value
    return "\0" not in value and _is_utf8(value)


def _is_utf8(value: str) -> bool:
    """Can ``value`` be written as UTF-8 (no lone surrogate)? Enough for a note: stores
    keep it as escaped JSON text, where a NUL character is ``\\u0000`` on every store."""
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _is_id(value: object) -> TypeGuard[str]:
    """Could ``value`` be a reservation id? Ids are ASCII without NUL, so no other is
    stored, and looking one up would fail on some stores (a lone surrogate cannot be
    encoded, PostgreSQL takes no NUL) where it is simply unknown."""
    return type(value) is str and value.isascii() and "\0" not in value


def _ttl(ttl: object) -> float:
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not (
        MIN_TTL <= ttl <= MAX_TTL
    ):
        raise BudgetInputError(
            "invalid_ttl",
            f"ttl must be a number of seconds from {MIN_TTL} to {MAX_TTL}, got {ttl!r}",
        )
    return float(ttl)


def _key(key: object) -> str | None:
    if key is None:
        return None
    if type(key) is not str or not key or len(key) > _MAX_NAME or not is_store_text(key):
        raise BudgetInputError(
            "invalid_idempotency_key",
            f"idempotency_key must be a non-empty string of at most {_MAX_NAME} chars "
            "of valid Unicode text",
        )
    return key


def _string_tokens(tokens: str) -> BudgetInputError:
    """A request's ``context.tokens`` given as text (``"100"``): refused, never read as
    the number. A count of tokens is a JSON number, exact as it is (text is for money,
    whose decimals JSON numbers would blur), and rules compare ``context.tokens`` as the
    string it is: one field is never a number to the budgets and a string to the rules."""
    return BudgetInputError(
        "invalid_amount", f"tokens {tokens[:32]!r} is text: give the count of tokens as a "
        "number (100, not \"100\")", {"reason": "tokens_not_a_number"})


def _valid_money(value: Decimal, unit: str) -> Money:
    """``Money(value, unit)``: the same checks and errors, without the dataclass's
    ``__init__``."""
    spec = spec_of(unit)
    return trusted_money(parse_spec(value, spec, True, False, False), spec.code)


def _count_modes(matched: Sequence[_Budget], unit: str | None, *, keep_unmatched: bool,
                 tokens: int = 0) -> tuple[list[tuple[_Budget, int]], int, int]:
    """How a spend in ``unit`` counts against each covering budget: calls, same unit or
    converted money. A budget that cannot count it is left out, or kept as ``_ZERO``.
    Returns the modes, how many money/unit budgets count it, and how many cannot.

    ``tokens``: ``tokens`` budgets count tokens the spend carries (``_TOKENS``): 1, a
    priced usage's tokens (they count the spend: accepted); 2, a request's
    ``context.tokens`` beside its amount (``admission(tokens=)``): counted, but not
    the amount, so an amount no other budget can count is still ``unit_mismatch``."""
    spend_money = unit is not None and unit not in _NON_MONEY
    modes: list[tuple[_Budget, int]] = []
    accepted = unmatched = 0
    for b in matched:
        if b.calls and unit != "calls":
            modes.append((b, _CALL))
        elif tokens and b.unit == "tokens":  # a priced usage's or a request's tokens
            modes.append((b, _TOKENS))
            if tokens == 1:
                accepted += 1
            else:  # the amount itself is not counted here
                unmatched += 1
        elif b.unit == unit:
            modes.append((b, _SAME))
            accepted += not b.calls
        elif b.money and spend_money:
            modes.append((b, _CONVERT))
            accepted += 1
        else:
            unmatched += 1
            if keep_unmatched:
                modes.append((b, _ZERO))
    return modes, accepted, unmatched


class Ledger:
    """Budgets over a store: ``Ledger(specs, store=None, rates=None, clock=None)``.

    ``store`` defaults to a new :class:`MemoryStore` (a store URL opens one, as
    :func:`~policyengine.budgets.store_from_url` does); ``rates`` converts spends in one
    currency against budgets in another (``budget_rates``: per budget id, the rates of
    the file that declares it); ``clock`` returns POSIX seconds and defaults to the
    store's ``clock`` when it has one (shared stores: the server's time, see
    :mod:`policyengine.budgets.clock`), else ``time.time``. ``default_currency``: the
    currency of an amount given without a unit where money may count it (the policy
    set's ``default_currency``: ``engine.budgets`` has it); without one such an amount
    is ``missing_currency``, as in a request (docs/semantics.md, "Amounts and
    currencies").

    >>> from decimal import Decimal
    >>> spec = BudgetSpec("default.daily", ("payments:*",), Decimal(100), "EUR", "day")
    >>> ledger = Ledger([spec])
    >>> r = ledger.reserve("bot", "payments:refund", "80", "EUR")
    >>> ledger.commit(r.id, "75").status
    'committed'
    >>> ledger.check("bot", "payments:refund", "30", "EUR").code
    'budget_exceeded'
    """

    def __init__(
        self,
        specs: Iterable[BudgetSpec],
        store: BudgetStore | str | None = None,
        rates: RateSource | None = None,
        clock: Callable[[], float] | None = None,
        *,
        budget_rates: Mapping[str, RateSource | None] | None = None,
        prices: PriceTable | None = None,
        shadow: Iterable[BudgetSpec] = (),
        default_currency: str | None = None,
    ) -> None:
        specs = tuple(specs) if isinstance(specs, Iterable) and not isinstance(
            specs, (str, bytes)) else (None,)
        if not all(isinstance(s, BudgetSpec) for s in specs):
            raise BudgetInputError("invalid_budget", "a Ledger's budgets are BudgetSpec "
                                   "objects")
        self.specs: tuple[BudgetSpec, ...] = tuple(specs)
        if default_currency is not None:
            if type(default_currency) is not str or not is_currency(default_currency):
                raise BudgetInputError("unknown_unit", "default_currency must be an ISO "
                                       "4217 currency code (EUR, USD, ...)")
            default_currency = canonical_unit(default_currency)[0]
        #: The unit of an amount given without one where money may count it (the policy
        #: set's ``default_currency``); None: such an amount is ``missing_currency``.
        self.default_currency: str | None = default_currency
        #: The LLM price table (``price`` statements) that ``usage=`` spends are priced with.
        self.prices = prices
        self._budgets = tuple(_Budget(s) for s in self.specs)
        self._by_id = {b.id: b for b in self._budgets}
        if len(self._by_id) != len(self._budgets):
            raise BudgetInputError("invalid_budget", "budget ids must be unique")
        self._scales = {b.id: b.scale for b in self._budgets}
        self._units = {b.id: b.unit for b in self._budgets}
        self._meta = {b.id: (b.unit, b.scale) for b in self._budgets}
        fields: set[str] = set()
        for b in self._budgets:
            if b.subject in _PATH_LEVELS:  # a scope path: every level down to its own
                levels = HIERARCHY[:HIERARCHY.index(b.subject) + 1]
                fields.update(f for f in levels if f not in ("tenant", "agent"))
            elif b.subject.startswith("context."):
                fields.add(b.subject[8:])
        fields.discard("tenant")  # the ``tenant`` argument
        #: Request fields (besides ``tenant``) the budgets' subjects read, in order.
        self._fields: tuple[str, ...] = tuple(sorted(fields))
        self._field_set = frozenset(fields)
        # A URL is opened as Engine opens one; anything else that is not a store is
        # refused now, not on the first spend.
        opened = as_budget_store(store, "Ledger store")
        self.store: BudgetStore = opened if opened is not None else MemoryStore()
        self.rates = rates
        # A budget converts with the rates of the policy file that declares it; ``rates``
        # serves budgets not named here.
        self._rates_of: dict[str, RateSource | None] = {
            b.id: (budget_rates[b.id] if budget_rates is not None and b.id in budget_rates
                   else rates)
            for b in self._budgets}
        self.clock: Callable[[], float] = (
            clock if clock is not None else getattr(self.store, "clock", time.time)
        )
        self._live: Callable[[str, float], ReservationRecord | None] | None = getattr(
            self.store, "live_reservation", None)
        self._matches: dict[str, tuple[_Budget, ...]] = {}
        self._mode_cache: dict[
            tuple[str, str | None],
            tuple[str | None, tuple[tuple[_Budget, int], ...]] | str,
        ] = {}
        self._targets_cache: dict[tuple[str, str | None, str, str | None, str | None],
                                  _Targets] = {}
        #: (amount object, unit, its value, its quanta) of the last exact Decimal
        #: :meth:`admission` took as it is; held, so the object's id is not reused.
        self._last_amount: tuple[Any, str | None, Decimal, int] = (None, None, _ZERO_D, 0)
        #: (permission, principal) -> what :meth:`admission_of` reads (``_lean_entry``).
        self._lean: dict[tuple[str, str], list[Any]] = {}
        #: (budget id, unit, amount) -> (rate source, numerator, denominator, quanta, rate
        #: text) of its last conversion (``_convert_at``).
        self._fx: dict[tuple[str, str, Decimal], tuple[Any, Decimal, Decimal, int,
                                                       str]] = {}
        #: (spent, reserved) of one calendar bucket: the store's own lean read if it has one
        self._read_one: Callable[[Bucket, float], tuple[int, int]] = getattr(
            self.store, "usage_one", self._read_one_usage)
        #: (writes, due, spent, reserved) of one calendar bucket, where the store keeps a
        #: ``writes`` counter that every change moves (``MemoryStore``), else None.
        self._usage_seen: Callable[[Bucket, float], tuple[int, float, int, int]] | None = (
            getattr(self.store, "usage_seen", None))
        #: The shadow budgets (``mode warn`` / ``mode log``): every reserve, record and
        #: commit also charges their own buckets, never guarded (they refuse nothing), so
        #: they hold what would have been spent; None without any.
        self._shadow: Ledger | None = None
        self._hidden: frozenset[str] = frozenset()
        #: For a ledger of shadow budgets: the ledger of the enforced budgets they sit
        #: beside. A shadow budget answers as an enforced one of its definition would,
        #: beside the enforced budgets: a spend one of those counts is no
        #: ``unit_mismatch`` here (a ``tokens`` shadow budget beside a money budget
        #: counts an amount in USD as nothing, as an enforced one would). Set by the
        #: enforced ledger (``shadow=``), never the other way round: a shadow budget never
        #: changes what the enforced budgets answer.
        self._beside: Ledger | None = None
        shadow_specs = tuple(shadow)
        if shadow_specs:
            self._shadow = Ledger(shadow_specs, self.store, rates, self.clock,
                                  budget_rates=budget_rates, prices=prices,
                                  default_currency=default_currency)
            self._shadow._beside = self
            self._hidden = frozenset(s.id for s in shadow_specs)
            if self._hidden & self._by_id.keys():
                raise BudgetInputError("invalid_budget", "budget ids must be unique")

    @property
    def shadow_ledger(self) -> Ledger | None:
        """The ledger of the shadow budgets (``shadow=``), judged beside this one's
        enforced budgets, over the same store; None without any. Ask it read-only
        (``admit``, ``admission``): this ledger's ``reserve``, ``record`` and ``commit``
        charge it."""
        return self._shadow

    # -- public operations ---------------------------------------------------------------

    def check(
        self,
        principal: str,
        permission: str,
        amount: object = None,
        currency: str | None = None,
        *,
        acting_for: str | None = None,
        tenant: str | None = None,
        scope: Mapping[str, str | None] | None = None,
        usage: LLMUsage | None = None,
    ) -> BudgetCheck:
        """Would this spend fit every budget covering it? Read-only; reserves nothing:
        the dry run of :meth:`reserve` (a Cycles ``dry_run`` or ``decide``).

        Raises :class:`BudgetInputError` for bad input, like :meth:`reserve`.
        """
        now = self.clock()
        _unit, _value, lines, budgets, buckets, _p = self._plan(
            principal, permission, _spend(amount, usage), currency, acting_for, tenant, now,
            True, scope
        )
        if not lines:
            return BudgetCheck(self, [], None, -1)
        usages = self.store.usage(tuple(buckets), now)
        rows = list(zip(budgets, lines, usages, strict=True))
        for i, (b, line, use) in enumerate(rows):
            code = _refusal(b.limit, use.spent, use.reserved, line.amount, False)
            if code is not None:
                return BudgetCheck(self, rows, code, i)
        return BudgetCheck(self, rows, None, -1)

    def admit(
        self,
        principal: str,
        permission: str,
        amount: object = None,
        unit: str | None = None,
        *,
        acting_for: str | None = None,
        tenant: str | None = None,
        scope: Mapping[str, str | None] | None = None,
        usage: LLMUsage | None = None,
        tokens: object = None,
    ) -> BudgetCheck:
        """May a request go ahead under every budget covering ``permission``? Read-only.

        What ``authorize`` asks. Unlike :meth:`check`, every covering budget is checked
        whatever the request carries: a ``calls`` budget counts one call (even for a zero
        amount), a budget in the request's unit (or convertible to it) counts the amount,
        ``tokens`` budgets count ``tokens`` (the request's ``context.tokens``) when it is
        given, and any other covering budget -- or every non-calls budget, for a request
        with neither -- counts nothing but still refuses when it is exhausted (no room
        left, or debt outstanding). ``tokens`` without an amount is the amount, in
        ``tokens``; with an amount in ``tokens`` the budget counts the larger of the two.
        Raises :class:`BudgetInputError` for bad input.
        """
        if usage is not None:
            if isinstance(tokens, str):
                raise _string_tokens(tokens)
            if tokens is not None:
                raise BudgetInputError("invalid_amount", "usage= carries its own tokens: "
                                       "give no tokens= with it", {"reason": "invalid_usage"})
            amount, extra = _spend(amount, usage), -1
        else:
            amount, unit, extra = self._request_amount(permission, amount, unit, tokens)
        now = self.clock()
        _unit, _value, lines, budgets, buckets, _p = self._plan(
            principal, permission, amount, unit, acting_for, tenant, now, False, scope,
            extra
        )
        if not lines:
            return BudgetCheck(self, [], None, -1)
        usages = self.store.usage(tuple(buckets), now)
        rows = list(zip(budgets, lines, usages, strict=True))
        for i, (b, line, use) in enumerate(rows):
            code = _refusal(b.limit, use.spent, use.reserved, line.amount)
            if code is not None:
                return BudgetCheck(self, rows, code, i)
        return BudgetCheck(self, rows, None, -1)

    def admission(
        self,
        principal: str,
        permission: str,
        amount: object = None,
        unit: str | None = None,
        *,
        acting_for: str | None = None,
        tenant: str | None = None,
        scope: Mapping[str, str | None] | None = None,
        tokens: object = None,
    ) -> tuple[str | None, BudgetUsage | None]:
        """:meth:`admit` as a decision reads it: ``(code, usage)``, where ``code`` is None
        (admitted), ``budget_exceeded`` or ``debt_outstanding``, and ``usage`` is the
        refusing budget or else the tightest covering one (None when no budget covers the
        spend). The same checks, answers and errors as :meth:`admit` (``tokens``: the
        request's ``context.tokens``, which ``tokens`` budgets count), without building
        its result: what ``authorize`` asks on every budgeted request."""
        amount, unit, extra = self._request_amount(permission, amount, unit, tokens)
        now = self.clock()
        found = None
        if (extra < 0 and scope is None and type(principal) is str
                and type(permission) is str
                and (unit is None or type(unit) is str)
                and (acting_for is None or type(acting_for) is str)
                and (tenant is None or type(tenant) is str)):  # _targets' cache, inline
            found = self._targets_cache.get(
                (permission, unit, principal, acting_for, tenant, 0))  # type: ignore[arg-type]
            if found is not None and not found[1] <= now < found[2]:
                found = None
        if found is None:
            found = self._targets(principal, permission, unit, acting_for, tenant, now, False,
                                  self._scope_key(scope) if scope is not None else (),
                                  2 if extra >= 0 else 0)
        unit, _lo, _hi, targets = found
        last = self._last_amount
        if last[0] is amount and last[1] == unit:  # _amount_quanta's memo, inline
            value, quanta = last[2], last[3]
        else:
            value, quanta = self._amount_quanta(amount, unit)
        if not targets:
            return None, None
        if len(targets) == 1:  # the common case, without the lists
            b, mode, subject, _start, end, bucket = targets[0]
            q = quanta if mode == _SAME and quanta <= MAX_QUANTA else self._charge(
                b, mode, value, quanta, unit, now, extra)
            if bucket is None:  # a rolling window ends now
                bucket = _new(Bucket, (b.id, subject, 0, now - b.rolling))  # type: ignore[operator]
                end = None  # type: ignore[assignment]
            spent, reserved = self.store.usage((bucket,), now)[0]
            limit = b.limit
            return _refusal(limit, spent, reserved, q), budget_usage((
                b.id, subject, b.unit, end, b.scale, limit, spent, reserved, q))
        amounts: list[int] = []
        buckets: list[Bucket] = []
        for b, mode, subject, _start, _end, bucket in targets:
            amounts.append(self._charge(b, mode, value, quanta, unit, now, extra))
            if bucket is None:  # a rolling window ends now
                bucket = _new(Bucket, (b.id, subject, 0, now - b.rolling))  # type: ignore[operator]
            buckets.append(bucket)  # set just above
        usages = self.store.usage(tuple(buckets), now)
        code = None
        index = 0
        for i, use in enumerate(usages):
            code = _refusal(targets[i][0].limit, use.spent, use.reserved, amounts[i])
            if code is not None:
                index = i
                break
        else:  # the tightest: least room left after this spend
            best = None
            for i, use in enumerate(usages):
                limit = targets[i][0].limit
                left = limit - use.spent - use.reserved - amounts[i]
                ratio = left / limit if limit else (0.0 if left >= 0 else -1.0)
                if best is None or ratio < best:
                    best, index = ratio, i
        b, _mode, subject, _start, end, bucket = targets[index]
        use = usages[index]
        return code, budget_usage((b.id, subject, b.unit, None if bucket is None else end,
                                   b.scale, b.limit, use.spent, use.reserved,
                                   amounts[index]))

    def admission_of(self, principal: str, permission: str, amount: object,
                     unit: str | None) -> tuple[str | None, BudgetUsage | None]:
        """:meth:`admission` of a request with no ``acting_for``, ``tenant`` or ``scope``
        (the same answers and errors): the steady state of the common case -- one
        calendar budget counting the amount in its own unit, asked again with the same
        parsed amount -- reads one bucket and nothing else."""
        code, usage = self.admission_parts(principal, permission, amount, unit)
        if type(usage) is tuple:
            return code, budget_usage(usage)
        return code, usage

    def admission_parts(self, principal: str, permission: str, amount: object,
                        unit: str | None, text: str | None = None
                        ) -> tuple[str | None, Any]:
        """:meth:`admission_of` as a decision asks it: the usage may come as the tuple a
        :class:`BudgetUsage` is made of (``BudgetUsage._t``), which ``Decision.budget``
        turns into one when first read (most decisions are never read that far).

        ``text``: the string ``amount`` was parsed from, with ``unit`` as its currency
        (``Decimal(text)``, exact in ``unit``); remembered with the lean entry, so that
        :meth:`admission_text` answers the same text again without the parsed amount."""
        now = self.clock()
        lean = self._lean.get((permission, principal))
        if lean is None or not lean[0] <= now < lean[1] or lean[2] != unit:
            lean = self._lean_entry(principal, permission, unit, now)
        last = self._last_amount
        if (lean is not None and last[0] is amount and amount is not None
                and unit is not None and last[1] == lean[3] and last[3] <= MAX_QUANTA):
            into = lean[8]
            q = last[3] if into is None else self._convert(last[2], lean[3], into, now)[0]
            if text is not None and lean[6][0] != text:
                lean[6] = (text, q)  # one slot, replaced whole: a reader sees both or neither
            spent, reserved = self._read_one(lean[4], now)
            bid, subject, bunit, end, scale, limit = lean[5]
            return _refusal(limit, spent, reserved, q), (
                bid, subject, bunit, end, scale, limit, spent, reserved, q)
        return self.admission(principal, permission, amount, unit)

    def admission_text(self, principal: str, permission: str, text: str, unit: str
                       ) -> tuple[str | None, Any] | None:
        """:meth:`admission_parts` of the amount written ``text`` in ``unit``, answered
        when the lean entry of (``permission``, ``principal``) is current and was last
        asked with this same text and unit (the steady state of a caller asking with
        the same amount): no parsed amount, one bucket read. Else None (ask
        :meth:`admission_parts`).

        On a store with ``usage_seen`` (``MemoryStore``) the bucket is read under the
        store's lock only when the store changed since this entry last read it (its
        ``writes`` counter moved) or housekeeping is due: otherwise the (spent, reserved)
        read then are still the bucket's, so a reserve, commit or expiry is seen by the
        very next check."""
        lean = self._lean.get((permission, principal))
        if lean is None:
            return None
        now = self.clock()
        seen = lean[6]
        if not (seen[0] == text and lean[2] == unit and lean[0] <= now < lean[1]):
            return None
        q = seen[1]
        snap = lean[7]  # (writes, due, spent, reserved); due -inf: none read yet
        if now < snap[1] and snap[0] == self.store.writes:  # type: ignore[attr-defined]
            spent, reserved = snap[2], snap[3]
        elif self._usage_seen is not None:
            snap = lean[7] = self._usage_seen(lean[4], now)
            spent, reserved = snap[2], snap[3]
        else:
            spent, reserved = self._read_one(lean[4], now)
        bid, subject, bunit, end, scale, limit = lean[5]
        return _refusal(limit, spent, reserved, q), (
            bid, subject, bunit, end, scale, limit, spent, reserved, q)

    def _lean_entry(self, principal: str, permission: str, unit: str | None, now: float
                    ) -> list[Any] | None:
        """What :meth:`admission_of` reads of the cached targets of one request when
        they are one calendar budget counting the amount in its own unit, or converting
        it with a rate table that cannot change or go stale: (window start and end as
        floats, the request's unit, the targets' unit, bucket, and the head of a
        :class:`BudgetUsage` tuple: budget id, subject, budget unit, window end, scale,
        limit; then the amount text last asked and its quanta, what
        :meth:`admission_text` last read of the bucket, and the budget the amount is
        converted into, or None), kept per (permission, principal) for the last unit
        asked; else None (:meth:`admission` answers). A list: its slots 6 and 7 are
        replaced whole (each one tuple) as requests go.

        A converted amount's quanta are kept with its text only when its budget's rates
        are a :class:`StaticRates` (or :class:`JsonFileRates`) without ``max_age``: an
        immutable table that never goes stale, so the same text converts to the same
        quanta for as long as the entry lives. Any other source is asked on every
        request (:meth:`_convert`)."""
        found = self._targets_cache.get((permission, unit, principal, None, None, 0))  # type: ignore[arg-type]
        if found is None or not found[1] <= now < found[2] or len(found[3]) != 1:
            return None
        b, mode, subject, _start, end, bucket = found[3][0]
        if bucket is None:
            return None
        into = None
        if mode != _SAME:
            rates = self._rates_of[b.id]
            if mode != _CONVERT or type(rates) not in _TABLES or rates.max_age is not None:  # type: ignore[union-attr]
                return None
            into = b
        lean = [float(found[1]), float(found[2]), unit, found[0], bucket,
                (b.id, subject, b.unit, end, b.scale, b.limit), _NO_TEXT, _NOT_SEEN, into]
        if len(self._lean) >= _MAX_MATCH_CACHE:
            self._lean.clear()
        self._lean[(permission, principal)] = lean
        return lean

    def _read_one_usage(self, bucket: Bucket, now: float) -> tuple[int, int]:
        """(spent, reserved) of one calendar bucket, for stores without ``usage_one``."""
        use = self.store.usage((bucket,), now)[0]
        return use[0], use[1]

    def _charge(self, b: _Budget, mode: int, value: Decimal, quanta: int, unit: str | None,
                now: float, tokens: int = -1) -> int:
        """Quanta a spend of ``value`` ``unit`` (``quanta`` in its own unit) charges to
        budget ``b`` counting it by ``mode`` (as :meth:`_plan` works it out); ``tokens``:
        the request's tokens, which a ``_TOKENS`` budget counts."""
        if mode == _CALL:
            return 1
        if mode == _TOKENS:
            return tokens
        if mode == _SAME:
            if quanta > MAX_QUANTA:
                raise BudgetInputError("invalid_amount", f"amount {value} {unit} is too "
                                       "large", {"reason": "amount_too_large"})
            return quanta
        if mode == _ZERO:
            return 0
        return self._convert(value, unit, b, now)[0]  # type: ignore[arg-type]

    def _request_amount(self, permission: str, amount: object, unit: str | None,
                        tokens: object) -> tuple[object, str | None, int]:
        """A request's amount, unit and ``context.tokens`` as :meth:`admit` and
        :meth:`admission` ask with them: ``(amount, unit, extra)``, ``extra`` the tokens
        that ``tokens`` budgets count beside the amount (-1: none; :meth:`_with_tokens`).
        No amount is 0 with no unit, or the tokens in ``tokens``; an amount without a
        unit is money (the permission's currency); tokens given as text are refused."""
        if isinstance(tokens, str):
            raise _string_tokens(tokens)
        if amount is None:
            if tokens is None:
                return 0, None, -1
            return tokens, "tokens", -1
        if unit is None:  # a request's amount: money
            unit = self._unit_of(None, permission)
        if tokens is None:
            return amount, unit, -1
        amount, extra = self._with_tokens(amount, unit, tokens)
        return amount, unit, extra

    def _with_tokens(self, amount: object, unit: str | None, tokens: object
                     ) -> tuple[object, int]:
        """A request's ``context.tokens`` beside its amount (in ``unit``, resolved): the
        amount to ask with and the tokens that ``tokens`` budgets count (whole tokens,
        parsed as a ``tokens`` amount is: ``invalid_amount`` else), or -1 when the amount
        is itself in ``tokens``: the budget in that unit then counts the larger of the
        two (each must fit), so the amount is the larger one."""
        count = self._amount(tokens, "tokens")
        if count > MAX_QUANTA:
            raise BudgetInputError("invalid_amount", f"tokens {count} is too large",
                                   {"reason": "amount_too_large"})
        if unit != "tokens":
            return amount, int(count)
        return max(self._amount(amount, "tokens"), count), -1

    def _amount_quanta(self, amount: object, unit: str | None) -> tuple[Decimal, int]:
        """:meth:`_amount` and the amount in ``unit``'s quanta. An exact ``Decimal`` that
        :meth:`_amount` would take as it is (finite, not negative, within the limits, no
        more decimals than ``unit`` has: what ``authorize`` passes, parsed already) skips
        the second parse."""
        if unit is None:
            return self._amount(amount, None), 0
        last = self._last_amount  # the same parsed Decimal object, asked again
        if last[0] is amount and last[1] == unit:
            return last[2], last[3]
        scale = _unit_scale(unit)[0]
        if (type(amount) is Decimal and amount.is_finite() and not amount.is_signed()
                and amount <= MAX_AMOUNT and -MAX_EXPONENT <= amount.adjusted() <= MAX_EXPONENT):
            scaled = amount.scaleb(scale, MONEY_CONTEXT)
            quanta = int(scaled)
            if quanta == scaled:
                self._last_amount = (amount, unit, amount, quanta)
                return amount, quanta
        value = self._amount(amount, unit)
        return value, int(value.scaleb(scale, MONEY_CONTEXT))

    def reserve(
        self,
        principal: str,
        permission: str,
        amount: object = None,
        currency: str | None = None,
        *,
        ttl: float = 60,
        idempotency_key: str | None = None,
        acting_for: str | None = None,
        tenant: str | None = None,
        scope: Mapping[str, str | None] | None = None,
        usage: LLMUsage | None = None,
        grace: float = 0,
        overage: Overage | None = None,
        note: str | None = None,
    ) -> Reservation:
        """Hold ``amount`` on every budget covering ``permission`` for ``ttl`` seconds.

        All or nothing: raises :class:`BudgetExceeded` (``budget_exceeded`` or
        ``debt_outstanding``) if any covering budget lacks room. Commit, release or let
        it expire.

        ``usage=LLMUsage(provider, model, input_tokens, ...)`` instead of an amount: the
        usage is priced with the price table and holds money (on money budgets) and
        tokens (on ``tokens`` budgets) in this one reservation. ``grace``: seconds (0 to
        60) after the lease ends during which a commit is still accepted (the hold lasts
        as long; extend and the status go by the lease). ``overage``: the policy a
        :meth:`commit` that names none follows (else ``reject``). ``note``: text kept
        with the reservation and read back as :attr:`Reservation.note` (at most
        :data:`MAX_NOTE` characters). Both are stored with the reservation, so a commit,
        :meth:`get` or :meth:`reservations` on any process sharing the store sees them.
        """
        over = None if overage is None else self._overage(overage)
        if note is not None and (type(note) is not str or len(note) > MAX_NOTE
                                 or not _is_utf8(note)):
            raise BudgetInputError("invalid_note", f"note must be text of at most {MAX_NOTE} "
                                   "characters")
        ttl_s = float(ttl) if type(ttl) is int and MIN_TTL <= ttl <= MAX_TTL else _ttl(ttl)
        grace_s = 0.0 if grace == 0 else _grace(grace)
        key = None if idempotency_key is None else _key(idempotency_key)
        now = self.clock()
        spend = amount if usage is None else _spend(amount, usage)
        unit, value, lines, budgets, buckets, priced = self._plan(
            principal, permission, spend, currency, acting_for, tenant, now, True, scope
        )
        held = tuple(lines)
        if self._shadow is not None:
            held += self._shadow_lines(principal, permission, spend, currency, unit, priced,
                                       acting_for, tenant, now, scope)
        record = _new(ReservationRecord, (
            _new_id(now), ACTIVE, principal, permission, unit, str(value), acting_for, tenant,
            now, now + ttl_s + grace_s, held, None, None, None, None,
            grace_s, priced, False, over, note,
        ))
        guards = []
        for line, b, bucket in zip(lines, budgets, buckets, strict=True):
            guards.append(_new(Guard, (bucket, line[5], b.limit, b.limit)))
        idem = None
        if key is not None:
            skey = self._scope_key(scope)
            fingerprint = repr(("reserve", principal, permission, unit, str(value), ttl_s,
                                acting_for, tenant) + ((skey,) if skey else ())
                               + ((grace_s,) if grace_s else ())
                               + ((priced, [ln.amount for ln in lines]) if priced else ())
                               + ((over, note) if over is not None or note is not None
                                  else ()))
            # No read first: every store checks the key before anything else in the
            # write, and a live record there comes back as a replay (``_failed``).
            idem = IdempotencyRecord("reserve:" + key, fingerprint, record,
                                     now + IDEMPOTENCY_RETENTION)
        outcome = self.store.apply(
            _new(Transaction, (tuple(guards), None, record, None, None, (), idem)), now
        )
        if outcome.ok:
            return Reservation(record, self._meta, now, self._hidden)  # _view, inlined
        return self._failed(outcome, lines, budgets, idem, now, "budget_exceeded")

    def record(
        self,
        principal: str,
        permission: str,
        amount: object = None,
        currency: str | None = None,
        *,
        idempotency_key: str | None = None,
        acting_for: str | None = None,
        tenant: str | None = None,
        scope: Mapping[str, str | None] | None = None,
        overage: Overage = "reject",
        usage: LLMUsage | None = None,
    ) -> Reservation:
        """Debit ``amount`` directly, without a reservation (returns it ``committed``).

        The same all-or-nothing rules as :meth:`reserve`; with
        ``overage="allow_with_overdraft"`` the spend may go past the limit up to the
        budget's ``overdraft_limit`` (becoming debt), e.g. to meter usage after the fact.
        ``usage=`` records a priced LLM usage (money and tokens), as for :meth:`reserve`.
        """
        over = self._overage(overage)
        key = _key(idempotency_key)
        now = self.clock()
        spend = _spend(amount, usage)
        unit, value, lines, budgets, buckets, priced = self._plan(
            principal, permission, spend, currency, acting_for, tenant, now, True, scope
        )
        shadow = (() if self._shadow is None else self._shadow_lines(
            principal, permission, spend, currency, unit, priced, acting_for, tenant, now,
            scope))
        record = ReservationRecord(
            _new_id(now), COMMITTED, principal, permission, unit,
            str(value), acting_for, tenant, now, now, tuple(lines) + shadow,
            tuple(line.amount for line in lines) + tuple(ln.amount for ln in shadow),
            str(value), unit, now, 0.0, priced,
        )
        if over == "allow_if_available":
            return self._record_capped(record, lines, shadow, budgets, buckets, key,
                                       fingerprint_of(
                "record", principal, permission, unit, value, over, acting_for, tenant,
                self._scope_key(scope), priced, lines), now)
        if over == "allow_with_overdraft":
            guards = tuple(
                Guard(bucket, line.amount, b.ceiling, None)
                for line, b, bucket in zip(lines, budgets, buckets, strict=True)
            )
        else:
            guards = tuple(
                Guard(bucket, line.amount, b.limit, b.limit)
                for line, b, bucket in zip(lines, budgets, buckets, strict=True)
            )
        spends = tuple(
            Spend(line.budget, line.subject, line.window, line.rolling, line.amount)
            for line in record.lines
        )
        idem = None
        if key is not None:
            fingerprint = fingerprint_of("record", principal, permission, unit, value, over,
                                         acting_for, tenant, self._scope_key(scope), priced,
                                         lines)
            replay = self._replay("record:" + key, fingerprint, now)
            if replay is not None:
                return replay
            idem = IdempotencyRecord("record:" + key, fingerprint, record,
                                     now + IDEMPOTENCY_RETENTION)
        outcome = self.store.apply(
            Transaction(guards, create=record, spends=spends, idempotency=idem), now
        )
        if outcome.ok:
            return self._view(record, now)
        return self._failed(outcome, lines, budgets, idem, now, _over_code(over))

    def commit(
        self,
        reservation_id: str,
        amount: object = None,
        currency: str | None = None,
        *,
        idempotency_key: str | None = None,
        overage: Overage | None = None,
        usage: LLMUsage | None = None,
    ) -> Reservation:
        """Spend ``amount`` (default unit: the reservation's) and release the rest.

        A reservation made with ``usage=`` is committed with ``usage=`` (the usage
        measured): it is priced again, and each money line is charged the price, each
        ``tokens`` line the tokens.

        Over the reserved amount: ``overage="reject"`` raises ``budget_exceeded``;
        ``"allow_if_available"`` (Cycles' meaning) never fails for want of budget: each
        budget is charged at most what it has available, and the result is ``capped``
        when that is less than the amount;
        ``"allow_with_overdraft"`` lets spend exceed the limit by up to the budget's
        ``overdraft_limit`` (else ``overdraft_limit_exceeded``). A failed commit leaves
        the reservation active. ``overage=None`` (the default): the policy given to
        :meth:`reserve`, else ``reject``.
        """
        if overage is not None and overage != "reject":
            self._overage(overage)
        if usage is not None:
            _check_usage(usage)
        key = None if idempotency_key is None else _key(idempotency_key)
        now = self.clock()
        rec = self._active(reservation_id, now, idempotency_key is not None)
        over = overage if overage is not None else rec.overage or "reject"
        unit = rec.unit
        tokens = -1
        if usage is not None or rec.priced is not None:
            if usage is None or rec.priced is None:
                raise BudgetInputError(
                    "unit_mismatch", f"reservation {rec.id} was made "
                    + ("with usage=: commit it with usage=" if rec.priced is not None
                       else f"in {rec.unit}: commit an amount, not a usage"))
            unit, value, tokens, _ = self._priced(_spend(amount, usage), currency)
            if unit != rec.unit:
                raise BudgetInputError("unit_mismatch", f"reservation {rec.id} is priced in "
                                       f"{rec.unit}; this usage is priced in {unit}")
        else:
            if currency is not None:
                unit, _ = canonical_unit(currency)
            value = self._amount(amount, unit)
        fingerprint = ""
        if key is not None:
            fingerprint = repr(("commit", reservation_id, unit, str(value), over)
                               + ((tokens,) if tokens >= 0 else ()))
            if rec.status != ACTIVE or rec.expires_at <= now:
                # Finished (or expired): a replay of this commit, or the state's error.
                replay = self._replay("commit:" + key, fingerprint, now)
                if replay is not None:
                    return replay
                _raise_state(rec, now)
            # Live as just read: the write checks the key first (a live record comes
            # back as a replay, ``_failed``) and the reservation again.
        if rec is None:  # pragma: no cover - _active raises
            raise AssertionError
        actuals: list[int] = []
        spends: list[Spend] = []
        guards: list[Guard] = []
        guard_lines: list[tuple[Line, _Budget | None]] = []
        over_lines: list[tuple[int, Line, _Budget]] = []
        same_unit = unit == rec.unit
        hidden = self._hidden
        by_id = self._by_id
        for line in rec.lines:
            bid, subject, window, _end, rolling, held, rate, counts_call = line
            if hidden and bid in hidden:  # a shadow budget: charged, never guarded
                actual = self._shadow_actual(rec, line, value, unit, tokens, now)
                actuals.append(actual)
                spends.append(_new(Spend, (bid, subject, window, rolling, actual)))
                continue
            budget = by_id.get(bid)
            if counts_call:
                actual = held  # the call happened; its count is the reservation's
            elif tokens >= 0 and budget is not None and budget.unit == "tokens":
                actual = tokens  # a priced usage's tokens line
            elif same_unit and rate is None and budget is not None and budget.unit == unit:
                actual = int(value.scaleb(budget.scale, MONEY_CONTEXT))  # fast path: no conversion
                if actual > MAX_QUANTA:
                    raise BudgetInputError("invalid_amount", f"amount {value} {unit} is too "
                                           "large", {"reason": "amount_too_large"})
            else:
                actual = self._commit_amount(rec, line, budget, value, unit, now)
            actuals.append(actual)
            spends.append(_new(Spend, (bid, subject, window, rolling, actual)))
            if actual <= held or budget is None:
                continue
            if over == "allow_if_available":
                over_lines.append((len(actuals) - 1, line, budget))
                continue
            if over == "reject":
                bucket = _bucket(line, budget, now)
                use = self.store.usage((bucket,), now)[0]
                raise _exceeded("budget_exceeded", budget, line, use, actual,
                                f"; commit {_fmt(actual, budget.scale)} exceeds the reserved "
                                f"{_fmt(line.amount, budget.scale)} and overage is 'reject'")
            ceiling = budget.ceiling if over == "allow_with_overdraft" else budget.limit
            guards.append(Guard(_bucket(line, budget, now), actual, ceiling, None))
            guard_lines.append((line, budget))
        if over_lines:
            return self._commit_capped(rec, actuals, over_lines, value, unit, key,
                                       fingerprint, now)
        final = _new(ReservationRecord, (
            rec.id, COMMITTED, rec.principal, rec.permission, rec.unit, rec.amount,
            rec.acting_for, rec.tenant, rec.created_at, rec.expires_at, rec.lines,
            tuple(actuals), str(value), unit, now, rec.grace, rec.priced, False, rec.overage,
            rec.note,
        ))
        idem = None
        if key is not None:
            idem = IdempotencyRecord("commit:" + key, fingerprint, final,
                                     now + IDEMPOTENCY_RETENTION)
        outcome = self.store.apply(
            _new(Transaction, (tuple(guards), rec.id, None, final, None, tuple(spends), idem)),
            now,
        )
        if outcome.ok:
            return Reservation(final, self._meta, now, self._hidden)  # _view, inlined
        lines = [gl[0] for gl in guard_lines]
        budgets = [gl[1] for gl in guard_lines]
        return self._failed(outcome, lines, budgets, idem, now,  # type: ignore[arg-type]
                            _over_code(over), [g.add for g in guards])

    def _record_capped(self, record: ReservationRecord, lines: list[Line],
                       shadow: tuple[Line, ...], budgets: list[_Budget],
                       buckets: list[Bucket], key: str | None, fingerprint: str, now: float
                       ) -> Reservation:
        """``record(..., overage="allow_if_available")``: each budget is charged at most
        what it has available (nothing once it is spent), never refused for want of
        budget; ``capped`` when less than the amount. Races as in :meth:`_commit_capped`;
        the last try charges nothing."""
        if key is not None:
            replay = self._replay("record:" + key, fingerprint, now)
            if replay is not None:
                return replay
        wanted = [line.amount for line in lines]
        outcome = Outcome(False)
        idem = None
        for attempt in range(_CAP_TRIES):
            charged = [0] * len(lines)
            guards: list[Guard] = []
            if attempt < _CAP_TRIES - 1 and lines:
                for i, (b, use, bucket) in enumerate(zip(
                        budgets, self.store.usage(tuple(buckets), now), buckets, strict=True)):
                    charged[i] = min(wanted[i], max(0, b.limit - use.spent - use.reserved))
                    if charged[i]:
                        guards.append(Guard(bucket, charged[i], b.limit, None))
            # a shadow line is charged the whole amount: it is never short of room
            final = record._replace(
                committed=tuple(charged) + tuple(ln.amount for ln in shadow),
                capped=charged != wanted)
            spends = tuple(Spend(ln.budget, ln.subject, ln.window, ln.rolling, q)
                           for ln, q in zip(record.lines, final.committed or (), strict=True))
            if key is not None:
                idem = IdempotencyRecord("record:" + key, fingerprint, final,
                                         now + IDEMPOTENCY_RETENTION)
            outcome = self.store.apply(
                Transaction(tuple(guards), create=final, spends=spends, idempotency=idem), now)
            if outcome.ok:
                return self._view(final, now)
            if outcome.reason not in ("guard", "debt"):
                break
        return self._failed(outcome, [], [], idem, now, "budget_exceeded")

    def _commit_capped(self, rec: ReservationRecord, actuals: list[int],
                       over_lines: list[tuple[int, Line, _Budget]], value: Decimal,
                       unit: str | None, key: str | None, fingerprint: str, now: float
                       ) -> Reservation:
        """A commit above the reservation with ``allow_if_available``: each line over its
        hold is charged what its budget has available (its own hold, plus the room no
        other hold takes), never past the limit and never refused for want of budget.
        The room is read, then guarded in the write; a concurrent spend that takes it
        first makes the write fail and the room is read again; the last try charges the
        hold alone, which always fits."""
        outcome = Outcome(False)
        final = rec
        idem = None
        for attempt in range(_CAP_TRIES):
            charged = list(actuals)
            guards: list[Guard] = []
            if attempt < _CAP_TRIES - 1:
                buckets = tuple(_bucket(line, b, now) for _i, line, b in over_lines)
                for (i, line, b), use, bucket in zip(over_lines, self.store.usage(buckets, now),
                                                     buckets, strict=True):
                    room = b.limit - use.spent - max(0, use.reserved - line.amount)
                    charged[i] = min(actuals[i], max(line.amount, room))
                    if charged[i] > line.amount:
                        guards.append(Guard(bucket, charged[i], b.limit, None))
            else:
                for i, line, _b in over_lines:
                    charged[i] = line.amount
            spends = tuple(_new(Spend, (ln.budget, ln.subject, ln.window, ln.rolling, q))
                           for ln, q in zip(rec.lines, charged, strict=True))
            final = _new(ReservationRecord, (
                rec.id, COMMITTED, rec.principal, rec.permission, rec.unit, rec.amount,
                rec.acting_for, rec.tenant, rec.created_at, rec.expires_at, rec.lines,
                tuple(charged), str(value), unit, now, rec.grace, rec.priced,
                charged != actuals, rec.overage, rec.note,
            ))
            if key is not None:
                idem = IdempotencyRecord("commit:" + key, fingerprint, final,
                                         now + IDEMPOTENCY_RETENTION)
            outcome = self.store.apply(
                _new(Transaction, (tuple(guards), rec.id, None, final, None, spends, idem)),
                now)
            if outcome.ok:
                return self._view(final, now)
            if outcome.reason not in ("guard", "debt"):
                break
        return self._failed(outcome, [], [], idem, now, "budget_exceeded")

    def release(self, reservation_id: str, *, idempotency_key: str | None = None) -> Reservation:
        """Give back everything a reservation holds."""
        key = _key(idempotency_key)
        now = self.clock()
        fingerprint = repr(("release", reservation_id))
        if key is not None:
            replay = self._replay("release:" + key, fingerprint, now)
            if replay is not None:
                return replay
        rec = self._active(reservation_id, now, False)
        final = rec._replace(status=RELEASED, finalized_at=now)
        idem = None
        if key is not None:
            idem = IdempotencyRecord("release:" + key, fingerprint, final,
                                     now + IDEMPOTENCY_RETENTION)
        outcome = self.store.apply(
            Transaction(require_active=rec.id, finalize=final, idempotency=idem), now
        )
        if outcome.ok:
            return self._view(final, now)
        return self._failed(outcome, [], [], idem, now, "budget_exceeded")

    def extend(self, reservation_id: str, ttl: float | None = None, *, by: float | None = None,
               idempotency_key: str | None = None) -> Reservation:
        """Keep a live reservation longer (a heartbeat): ``ttl`` seconds from now, or
        ``by`` seconds past its current lease end (Cycles' ``extend_by_ms``). A lease
        ends at most :data:`MAX_TTL` seconds from now (the returned ``expires_at`` is
        authoritative). Only before the lease ends: not in the grace period
        (``reservation_expired``). ``idempotency_key`` makes a retry return the first
        result instead of extending twice."""
        if (ttl is None) == (by is None):
            raise BudgetInputError("invalid_ttl", "give ttl (seconds from now) or by "
                                   "(seconds past the current expiry), not both")
        step = _ttl(ttl if by is None else by)
        key = _key(idempotency_key)
        now = self.clock()
        fingerprint = repr(("extend", reservation_id, "ttl" if by is None else "by", step))
        if key is not None:
            replay = self._replay("extend:" + key, fingerprint, now)
            if replay is not None:
                return replay
        rec = self._active(reservation_id, now, False)
        lease_end = rec.expires_at - rec.grace
        if lease_end <= now:
            raise ReservationError(
                "reservation_expired",
                f"reservation {rec.id} expired at {_iso(lease_end)}; it can still be "
                f"committed until {_iso(rec.expires_at)}, not extended")
        new_end = min(now + step if by is None else lease_end + step, now + MAX_TTL)
        extended = rec._replace(expires_at=new_end + rec.grace)
        idem = None
        if key is not None:
            idem = IdempotencyRecord("extend:" + key, fingerprint, extended,
                                     now + IDEMPOTENCY_RETENTION)
        outcome = self.store.apply(
            Transaction(require_active=rec.id, extend_to=new_end + rec.grace,
                        idempotency=idem), now
        )
        if outcome.ok:
            return self._view(extended, now)
        return self._failed(outcome, [], [], idem, now, "budget_exceeded")

    def get(self, reservation_id: str) -> Reservation:
        """The current state of a reservation; raises ``unknown_reservation``."""
        rec = self.store.get_reservation(reservation_id) if _is_id(reservation_id) else None
        if rec is None:
            raise unknown_reservation(reservation_id)
        return self._view(rec, self.clock())

    def reservations(
        self,
        *,
        tenant: str | None = None,
        status: str | None = None,
        principal: str | None = None,
        where: Callable[[Reservation], bool] | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> ReservationPage:
        """The reservations of ``tenant`` (None: those made without one), oldest first,
        a page at a time: every reservation :meth:`reserve` made (not the spends
        :meth:`record` writes) while the store keeps it (finished ones for its
        ``retention``). ``status`` (``active``, ``committed``, ``released``,
        ``expired``, as of now), ``principal`` and ``where`` (a predicate on the
        :class:`Reservation`) filter; ``limit`` (1 to :data:`MAX_LIST`) caps the page;
        ``cursor`` is a previous page's :attr:`ReservationPage.cursor`. A page may hold
        fewer than ``limit`` when filters skip many (at most 2,000 examined per call):
        continue while its ``cursor`` is not None. Raises ``invalid_listing`` for a bad
        limit, status or cursor."""
        _name(tenant, "tenant", optional=True)
        _name(principal, "principal", optional=True)
        if type(limit) is not int or not 1 <= limit <= MAX_LIST:
            raise BudgetInputError("invalid_listing", f"limit must be an integer from 1 to "
                                   f"{MAX_LIST}")
        if status is not None and status not in _LIST_STATUSES:
            raise BudgetInputError("invalid_listing", "status must be one of "
                                   + ", ".join(sorted(_LIST_STATUSES)))
        if cursor is not None and not _is_cursor(cursor):
            raise BudgetInputError("invalid_listing", "cursor is not one this ledger gave")
        now = self.clock()
        out: list[Reservation] = []
        after = cursor
        examined = 0
        batch_size = min(max(limit, 50), _LIST_SCAN)
        while True:
            batch = self.store.list_reservations(tenant or "", after, batch_size)
            for i, rec in enumerate(batch):
                examined += 1
                after = listing_key(rec.created_at, rec.id)
                if principal is None or rec.principal == principal:
                    view = self._view(rec, now)
                    if (status is None or view.status == status) and (
                            where is None or where(view)):
                        out.append(view)
                more = i + 1 < len(batch) or len(batch) == batch_size
                if len(out) >= limit or examined >= _LIST_SCAN:
                    return ReservationPage(tuple(out), after if more else None)
            if len(batch) < batch_size:
                return ReservationPage(tuple(out), None)

    def reservation_for(self, idempotency_key: str) -> Reservation | None:
        """The reservation :meth:`reserve` made with ``idempotency_key``, as it is now,
        while the key is remembered (a day); else None."""
        key = _key(idempotency_key)
        now = self.clock()
        found = self.store.get_idempotency("reserve:" + str(key), now)
        if found is None:
            return None
        rec = self.store.get_reservation(found.result.id)
        return None if rec is None else self._view(rec, now)

    def remember(self, key: str, text: str, ttl: float) -> str:
        """Keep ``text`` under ``key`` for ``ttl`` seconds (up to :data:`MAX_REMEMBER`)
        in the ledger's store, unless a live text is kept there already: write once,
        first writer wins, atomically (the store's idempotency record). Returns the text
        kept: ``text``, or the one written first. Small shared state of a wire (the
        agent-ledger wire's sessions) lives here, so every process on a shared store
        sees it. Keys share nothing with reservations' idempotency keys."""
        k = _key(key)
        if k is None:
            raise BudgetInputError("invalid_idempotency_key", "a key is required")
        if type(text) is not str or len(text) > MAX_NOTE or not _is_utf8(text):
            raise BudgetInputError("invalid_note", f"text must be a string of at most "
                                   f"{MAX_NOTE} characters")
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not (
                1 <= ttl <= MAX_REMEMBER):
            raise BudgetInputError("invalid_ttl", f"ttl must be 1 to {MAX_REMEMBER} seconds")
        now = self.clock()
        kept = ReservationRecord(k, COMMITTED, "", "", None, "0", None, None, now, now, (),
                                 note=text)
        idem = IdempotencyRecord("note:" + k, "", kept, now + float(ttl))
        outcome = self.store.apply(Transaction(idempotency=idem), now)
        if outcome.ok:
            return text
        if outcome.reason == "idempotency" and outcome.idempotency is not None:
            return outcome.idempotency.result.note or ""
        raise BudgetError("store_conflict", f"the store refused the operation "
                          f"({outcome.reason})")

    def recall(self, key: str) -> str | None:
        """The text :meth:`remember` keeps under ``key``, or None (never kept, or its
        time is up)."""
        k = _key(key)
        if k is None:
            return None
        found = self.store.get_idempotency("note:" + k, self.clock())
        return None if found is None else found.result.note

    def balances(
        self,
        principal: str | None = None,
        *,
        acting_for: str | None = None,
        tenant: str | None = None,
        scope: Mapping[str, str | None] | None = None,
        level: str | None = None,
    ) -> list[Balance]:
        """State of every bucket a request with these arguments would touch, now.

        ``agent`` budgets need ``principal``; ``acting_for`` budgets need ``acting_for``
        or ``principal``; ``tenant`` and ``global`` budgets are always listed; a
        hierarchy level (``workspace``, ``app``, ``workflow``, ``toolset``) or a
        ``context.NAME`` subject is listed when ``scope`` gives its field (``toolset``
        also needs ``principal``, its ``agent`` level). ``level`` keeps only the budgets
        of one subject kind (``"workspace"``, ``"context.run_id"``).
        """
        _name(principal, "principal", optional=True)
        _name(acting_for, "acting_for", optional=True)
        _name(tenant, "tenant", optional=True)
        skey = self._scope_key(scope) if scope is not None else ()
        given = dict(zip(self._fields, skey, strict=False))
        now = self.clock()
        rows: list[tuple[_Budget, Bucket, int, int | None]] = []
        for b in self._budgets:
            if level is not None and b.subject != level:
                continue
            field = subject_field(b.subject)
            if field is not None and field != "tenant" and given.get(field) is None:
                continue
            if b.subject == "toolset" and principal is None:
                continue
            subject = _subject(b.subject, principal, acting_for, tenant, self._fields, skey)
            if subject is None:
                continue
            if b.rolling is not None:
                start, end = now - b.rolling, None
                rows.append((b, Bucket(b.id, subject, 0, now - b.rolling), start, end))  # type: ignore[arg-type]
            else:
                start_i, end_i = b.window.bounds(now)
                rows.append((b, Bucket(b.id, subject, start_i), start_i, end_i))
        usages = self.store.usage(tuple(r[1] for r in rows), now) if rows else ()
        out = []
        for (b, bucket, start, end), use in zip(rows, usages, strict=True):
            s = b.scale
            out.append(
                Balance(
                    budget=b.id, subject=bucket.subject, unit=b.unit,
                    limit=_dec(b.limit, s), spent=_dec(use.spent, s),
                    reserved=_dec(use.reserved, s), debt=_dec(max(0, use.spent - b.limit), s),
                    remaining=_dec(max(0, b.limit - use.spent - use.reserved), s),
                    overdraft_limit=_dec(b.overdraft, s), window=b.spec.window,
                    window_start=float(start), window_end=None if end is None else float(end),
                    level=b.subject,
                )
            )
        return out

    def caps_of(self, budgets: Iterable[str] | Reservation) -> dict[str, int]:
        """The caps (``max_tokens`` ...) the given budgets declare, the most restrictive
        value of each name: the smallest ``max_tokens`` and ``max_steps_remaining``, the
        longest ``cooldown_ms`` (a wait: the longer one is the cap). What a reservation on
        them carries (``ledger.caps_of(reservation)``)."""
        if isinstance(budgets, Reservation):  # its shown lines' budgets, without the lines
            hidden = budgets._hidden
            ids: Iterable[str] = [line.budget for line in budgets._record.lines
                                  if line.budget not in hidden]
        else:
            ids = budgets
        out: dict[str, int] = {}
        for bid in ids:
            b = self._by_id.get(bid)
            for name, value in b.spec.caps if b is not None else ():
                out[name] = (max if name == "cooldown_ms" else min)(
                    value, out.get(name, value))
        return out

    @property
    def scope_fields(self) -> frozenset[str]:
        """The request fields the budgets' subjects read from ``scope`` (``workspace``,
        ``run_id`` ...; ``tenant`` is its own argument): what a caller should pass."""
        return self._field_set

    # -- internals -----------------------------------------------------------------------

    def _scope_key(self, scope: object) -> tuple[str | None, ...]:
        """The values ``scope`` gives for the fields the budgets read, validated."""
        if scope is None:
            return ()
        if not isinstance(scope, Mapping):
            raise BudgetInputError("invalid_subject", "scope must be a mapping of request "
                                   "field names to strings")
        if not self._fields:
            return ()
        out: list[str | None] = []
        for name in self._fields:
            value = scope.get(name)
            if value is not None and (type(value) is not str or not value.isascii()
                                      or not 0 < len(value) <= _MAX_NAME or "\0" in value):
                _name(value, f"scope[{name!r}]")
            out.append(value)
        return tuple(out)

    def _shadow_lines(self, principal: str, permission: str, amount: object,
                      currency: str | None, unit: str | None, priced: str | None,
                      acting_for: str | None, tenant: str | None, now: float,
                      scope: Mapping[str, str | None] | None) -> tuple[Line, ...]:
        """What this spend charges to each shadow budget covering it, as an enforced
        budget of the same definition would be charged; none for a shadow budget that
        could not count it (its own check at ``authorize`` reports that error).
        ``unit``: the spend's unit as the enforced budgets read it (one spend, one unit;
        the shadow ledger reads ``currency`` itself only when they read none)."""
        assert self._shadow is not None
        if priced is None and unit is not None:
            currency = unit
        try:
            lines = self._shadow._plan(principal, permission, amount, currency, acting_for,
                                       tenant, now, True, scope)[2]
        except Exception:  # a shadow budget never fails a spend
            return ()
        return tuple(lines)

    def _shadow_actual(self, rec: ReservationRecord, line: Line, value: Decimal,
                       unit: str | None, tokens: int, now: float) -> int:
        """What a commit charges to a shadow budget's line (as to an enforced one, over
        its hold or not); the hold itself when the shadow budget cannot count it."""
        shadow = self._shadow
        budget = None if shadow is None else shadow._by_id.get(line.budget)
        if shadow is None or budget is None or line.counts_call:
            return line.amount
        if tokens >= 0 and budget.unit == "tokens":
            return tokens
        try:
            return shadow._commit_amount(rec, line, budget, value, unit, now)
        except Exception:  # a shadow budget never fails a commit
            return line.amount

    def _view(self, record: ReservationRecord, now: float) -> Reservation:
        return Reservation(record, self._meta, now, self._hidden)

    @staticmethod
    def _overage(overage: object) -> str:
        if overage not in _OVERAGES:
            raise BudgetInputError(
                "invalid_overage",
                "overage must be 'reject', 'allow_if_available' or 'allow_with_overdraft'",
            )
        return overage

    def _match(self, permission: str) -> tuple[_Budget, ...]:
        found = self._matches.get(permission)
        if found is None:
            try:
                validate_permission(permission)
            except InvalidPermission as exc:
                raise BudgetInputError("invalid_permission", exc.message) from None
            found = tuple(
                b for b in self._budgets
                if any(matches(p, permission) for p in b.spec.patterns)
            )
            if len(self._matches) >= _MAX_MATCH_CACHE:
                self._matches.clear()
            self._matches[permission] = found
        return found

    def _amount(self, amount: object, unit: str | None) -> Decimal:
        found = None if unit is None else _amount_units.get(unit)
        if found is not None:  # the common case: a unit met before
            try:
                value = parse_spec(amount, found[0], False, False, False)
            except MoneyError as exc:
                raise _invalid_amount(exc) from None
            return value.quantize(found[1], None, MONEY_CONTEXT)
        parse_unit = unit if unit is None or not unit.endswith(MICRO_SUFFIX) else "tokens"
        try:
            value = parse_amount(amount, parse_unit)
        except MoneyError as exc:
            raise _invalid_amount(exc) from None
        if unit is None:
            return value
        quantum = _unit_scale(unit)[1]
        _amount_units[unit] = (spec_of(parse_unit), quantum)  # what parse_amount used
        # One spelling per amount ("75" and "75.00" EUR are the same payload).
        return value.quantize(quantum, None, MONEY_CONTEXT)

    def _plan(
        self,
        principal: object,
        permission: object,
        amount: object,
        currency: object,
        acting_for: object,
        tenant: object,
        now: float,
        strict: bool = True,
        scope: object = None,
        extra: int = -1,
    ) -> tuple[str | None, Decimal, list[Line], list[_Budget], list[Bucket], str | None]:
        """Validate a spend and work out what it charges to each covering budget.

        Returns the spend unit, the amount, and per covering budget its :class:`Line`,
        the budget and the :class:`Bucket` to guard, and for a priced usage the price's
        ``provider/model``. ``strict=False`` (``admit``) keeps budgets the spend's unit
        does not count against, charged zero. ``extra`` (``admit`` only): a request's
        tokens beside its amount, which ``tokens`` budgets count (-1: none).
        """
        priced = None
        tokens = 0
        if type(amount) is LLMUsage:
            currency, value, tokens, priced = self._priced(amount, currency)
        elif extra >= 0:
            tokens = extra
        unit, _lo, _hi, targets = self._targets(
            principal, permission, currency, acting_for, tenant, now, strict,
            self._scope_key(scope) if scope is not None else (),
            1 if priced is not None else 2 if extra >= 0 else 0
        )
        if priced is None:
            value = self._amount(amount, unit)
        # The amount in its own unit's quanta: what a budget in that unit is charged.
        quanta = 0 if unit is None else int(value.scaleb(
            (_unit_scales.get(unit) or _unit_scale(unit))[0], MONEY_CONTEXT))
        lines: list[Line] = []
        budgets: list[_Budget] = []
        buckets: list[Bucket] = []
        for b, mode, subject, start, end, bucket in targets:
            rate: str | None = None
            if mode == _CALL:
                q = 1
            elif mode == _SAME:
                q = quanta
                if q > MAX_QUANTA:
                    raise BudgetInputError("invalid_amount", f"amount {value} {unit} is too "
                                           "large", {"reason": "amount_too_large"})
            elif mode == _ZERO:  # only from admit()
                q = 0
            elif mode == _TOKENS:
                q = tokens
            else:
                q, rate = self._convert(value, unit, b, now,  # type: ignore[arg-type]
                                        priced is not None)
            rolling = bucket is None
            if bucket is None:  # a rolling window ends now
                bucket = _new(Bucket, (b.id, subject, 0, now - b.rolling))  # type: ignore[operator]
            lines.append(_new(Line, (b.id, subject, start, end, rolling, q, rate,
                                     mode == _CALL)))
            budgets.append(b)
            buckets.append(bucket)  # set just above
        return unit, value, lines, budgets, buckets, priced

    def _priced(self, usage: object, currency: object) -> tuple[str, Decimal, int, str]:
        """A usage priced by the table: (microcent unit, amount, tokens, provider/model).
        The exact price is rounded up to a microcent (prices of at most 2 decimals per
        million tokens are exact)."""
        if type(usage) is not LLMUsage:
            raise BudgetInputError("invalid_amount", "usage must be an LLMUsage",
                                   {"reason": "invalid_usage"})
        if currency is not None:
            raise BudgetInputError("unit_mismatch", "a usage is priced by the price table: "
                                   "give no unit with usage=")
        if self.prices is None:
            raise BudgetInputError("unpriced_model", "the policy has no LLM price table "
                                   "(price statements): a usage cannot be priced")
        price = self.prices.price_usage(usage)
        if price is None:
            raise BudgetInputError(
                "unpriced_model", f"the price table has no price for {usage.provider[:64]}/"
                f"{usage.model[:64]} (nor a '*' default)",
                {"provider": usage.provider, "model": usage.model})
        value = Decimal(int(price.amount.scaleb(8, MONEY_CONTEXT).to_integral_value(
            ROUND_CEILING, MONEY_CONTEXT)))
        mp = price.model_price
        return price.currency + MICRO_SUFFIX, value, usage.tokens, f"{mp.provider}/{mp.model}"

    def _targets(
        self,
        principal: object,
        permission: object,
        currency: object,
        acting_for: object,
        tenant: object,
        now: float,
        strict: bool = True,
        skey: tuple[str | None, ...] = (),
        tokens: int = 0,
    ) -> _Targets:
        """Who is charged what, independent of the amount: per covering budget, how it
        counts the spend, its subject, window and bucket.

        Cached per (permission, unit, principal, acting_for, tenant) while ``now`` stays
        inside every calendar window of the entry, so the steady state is one dict lookup.
        Only exact ``str`` (or None) arguments are cached: anything else is validated
        (and refused) every time.
        """
        cacheable = (
            type(principal) is str and type(permission) is str
            and (currency is None or type(currency) is str)
            and (acting_for is None or type(acting_for) is str)
            and (tenant is None or type(tenant) is str)
        )
        if cacheable:
            # (a 6-tuple for admit's lenient entries, one more item with a scope; typed
            # as the 5-tuple key)
            cache_key: tuple[str, str | None, str, str | None, str | None] = (
                (permission, currency, principal, acting_for, tenant)  # type: ignore[assignment]
                if strict else (permission, currency, principal, acting_for, tenant, 0))
            if skey:
                cache_key += (skey,)  # type: ignore[assignment]
            if tokens:
                cache_key += (("+tokens",) if tokens == 1  # type: ignore[assignment]
                              else ("+context.tokens",))
            found = self._targets_cache.get(cache_key)
            if found is not None and found[1] <= now < found[2]:
                return found
        if (type(principal) is not str or not principal or len(principal) > _MAX_NAME
                or not principal.isascii() or "\0" in principal):
            _name(principal, "principal")
        if acting_for is not None:
            _name(acting_for, "acting_for")
        if tenant is not None:
            _name(tenant, "tenant")
        if type(permission) is not str:
            raise BudgetInputError("invalid_permission", "permission must be a string")
        if currency is not None and type(currency) is not str:  # before it is hashed
            raise BudgetInputError("unknown_unit", "the unit must be a currency code or "
                                   f"unit name, not {type(currency).__name__}")
        unit, modes = self._modes(permission, currency, strict, tokens)
        lo, hi = -_INF, _INF
        targets: list[tuple[_Budget, int, str, int, int, Bucket | None]] = []
        for b, mode in modes:
            subject = cast(str, _subject(b.subject, principal, acting_for, tenant,  # type: ignore[arg-type]
                                         self._fields, skey))
            if b.rolling is not None:
                start = end = 0
                bucket = None
            else:
                start, end = b.window.bounds(now)
                lo, hi = max(lo, start), min(hi, end)
                bucket = Bucket(b.id, subject, start)
            targets.append((b, mode, subject, start, end, bucket))
        result: _Targets = (unit, lo, hi, tuple(targets))
        if cacheable:
            if len(self._targets_cache) >= _MAX_MATCH_CACHE:
                self._targets_cache.clear()
            self._targets_cache[cache_key] = result
        return result

    def _modes(
        self, permission: str, currency: object, strict: bool = True, tokens: int = 0
    ) -> tuple[str | None, tuple[tuple[_Budget, int], ...]]:
        """The spend unit and, per covering budget, how it counts (cached per pair).

        ``strict=False``: no unit is inferred (None is a request without an amount) and
        a budget that cannot count the spend is kept as ``_ZERO`` instead of refused."""
        if not strict:
            return self._lenient_modes(permission, currency, tokens)
        cache_key: tuple[Any, ...] = ((permission, currency, int(tokens)) if tokens
                                      else (permission, currency))
        found = self._mode_cache.get(cache_key)
        if found is not None:
            if isinstance(found, str):
                raise BudgetInputError("unit_mismatch", found)
            return found
        matched = self._match(permission)
        unit: str | None
        if currency is None:
            spending = [b for b in matched if not b.calls]
            unit = self._unit_of(None if any(b.money for b in spending)
                                 else {b.unit for b in spending}, permission)
        else:
            unit = canonical_unit(currency)[0]
        modes, accepted, unmatched = _count_modes(matched, unit, keep_unmatched=False,
                                                  tokens=tokens)
        # A refusal is cached as its message (a fresh exception is raised each time).
        refuse = bool(unmatched and not accepted) and not self._counted_beside(
            permission, unit, tokens)
        return self._cache_modes(cache_key, permission, matched, unit, modes, refuse)

    def _lenient_modes(
        self, permission: str, currency: object, tokens: int = 0
    ) -> tuple[str | None, tuple[tuple[_Budget, int], ...]]:
        cache_key = ((permission, currency, 0, int(tokens)) if tokens
                     else (permission, currency, 0))
        found = self._mode_cache.get(cache_key)  # type: ignore[arg-type]
        if found is not None:
            if isinstance(found, str):
                raise BudgetInputError("unit_mismatch", found)
            return found
        matched = self._match(permission)
        unit = None if currency is None else canonical_unit(currency)[0]
        modes, accepted, unmatched = _count_modes(matched, unit, keep_unmatched=True,
                                                  tokens=tokens)
        # An amount that no covering budget can count is refused, as by check().
        refuse = bool(unit is not None and unmatched and not accepted
                      ) and not self._counted_beside(permission, unit, tokens)
        return self._cache_modes(cache_key, permission, matched, unit, modes, refuse)

    def _counted_beside(self, permission: str, unit: str | None, tokens: int) -> bool:
        """Does an enforced budget beside this shadow ledger's (``_beside``) count a
        spend in ``unit`` on ``permission``? Then no covering shadow budget refuses it
        as ``unit_mismatch``: each counts what its unit counts, as an enforced budget of
        its definition would (a shadow budget's own error stays its own outcome)."""
        beside = self._beside
        if beside is None or unit is None:
            return False
        return _count_modes(beside._match(permission), unit, keep_unmatched=False,
                            tokens=tokens)[1] > 0

    def _cache_modes(
        self, cache_key: tuple[Any, ...], permission: str, matched: Sequence[_Budget],
        unit: str | None, modes: list[tuple[_Budget, int]], refuse: bool,
    ) -> tuple[str | None, tuple[tuple[_Budget, int], ...]]:
        """Cache how a (permission, unit) pair counts, or its refusal as the message (a
        fresh exception is raised each time), and answer it."""
        result: tuple[str | None, tuple[tuple[_Budget, int], ...]] | str
        if refuse:
            kinds = sorted({b.unit for b in matched if not b.calls})
            result = (f"a spend in {unit} cannot count against the budgets covering "
                      f"{permission} ({', '.join(kinds)}): spend in one of those units")
        else:
            result = (unit, tuple(modes))
        if len(self._mode_cache) >= _MAX_MATCH_CACHE:
            self._mode_cache.clear()
        self._mode_cache[cache_key] = result
        if isinstance(result, str):
            raise BudgetInputError("unit_mismatch", result)
        return result

    def _unit_of(self, non_money: set[str] | None, permission: object) -> str | None:
        """The unit of an amount given without one (``amount_unit``, the rule a request's
        amount follows too): the default currency where money may count it (``non_money``
        None), else the one unit of ``non_money``; refusals as :class:`BudgetInputError`."""
        try:
            unit = amount_unit(None, self.default_currency, non_money)
        except MoneyError as exc:
            raise BudgetInputError(exc.code, f"{str(permission)[:200]}: {exc.message}"
                                   ) from None
        return cast("str | None", unit)

    def _convert(self, value: Decimal, unit: str, b: _Budget, now: float,
                 priced: bool = False) -> tuple[int, str | None]:
        if unit == b.unit:
            q = int(value.scaleb(b.scale, MONEY_CONTEXT))
            rate = None
        elif unit.endswith(MICRO_SUFFIX) or b.unit.endswith(MICRO_SUFFIX):
            q, rate = self._convert_units(value, unit, b, now, None, priced)
        else:
            rates = self._rates_of[b.id]
            try:
                if type(value) is Decimal and value:
                    q, rate = self._convert_at(value, unit, b, rates, now)
                else:
                    # The source is asked once (source_fraction, which checks a source
                    # of the caller's own): the line records the very rate its quanta
                    # were converted at (asked twice, a live source could answer two).
                    money = Money(value, unit)  # before the rates, as convert's caller
                    numerator, denominator = source_fraction(rates, unit, b.unit, now)
                    q = int(converted_amount(money, spec_of(b.unit), numerator, denominator,
                                             True).scaleb(b.scale, MONEY_CONTEXT))
                    rate = format(fraction_rate(numerator, denominator), "f")
            except RateError as exc:
                raise BudgetInputError(exc.code, f"cannot convert {unit} to {b.unit} for "
                                       f"budget {b.id}: {exc.message}") from None
            except MoneyError as exc:
                raise BudgetInputError("invalid_amount", exc.message,
                                       {"reason": exc.code}) from None
        if q > MAX_QUANTA:
            raise BudgetInputError("invalid_amount", f"amount {value} {unit} is too large",
                                   {"reason": "amount_too_large"})
        return q, rate

    def _convert_at(self, value: Decimal, unit: str, b: _Budget, rates: Any,
                    now: float) -> tuple[int, str]:
        """:meth:`_convert` of a nonzero ``value``: the same answers and errors, in the same
        order, as ``convert(Money(value, unit), b.unit, rates, now=now, rounding="up")``,
        the source asked for its fraction once per call (its age, its current rates:
        :func:`source_fraction`, which checks a source of the caller's own), and the rate
        recorded is that fraction's (``fraction_rate``). What a conversion gave is kept
        per (budget, unit, amount) with the source and the very fraction objects it used
        (``_fx``): asked again while the source answers with those same objects (a
        :class:`StaticRates` table's, a source's own answer it gives again), the kept quanta
        are the answer -- the product, division and rounding, and the amount's validation
        (``Money``), were done for an equal amount, and depend on its value only (a zero is
        never kept: its exponent is checked). Any other fraction (new rates, a source
        making new objects) converts again and replaces what was kept."""
        key = (b.id, unit, value)
        kept = self._fx.get(key)
        if kept is None or kept[0] is not rates:
            kept = None
            money = _valid_money(value, unit)  # before the rates, as convert's caller
        numerator, denominator = source_fraction(rates, unit, b.unit, now)
        if kept is not None:
            if kept[1] is numerator and kept[2] is denominator:
                return kept[3], kept[4]
            money = _valid_money(value, unit)  # new rates: valid, as it was before
        amount = converted_amount(money, spec_of(b.unit), numerator, denominator, True)
        q = int(amount.scaleb(b.scale, MONEY_CONTEXT))
        # The rate recorded is the fraction converted with (as a table's rate() reports
        # it), never a second answer of the source, which a live one may give otherwise.
        rate = format(fraction_rate(numerator, denominator), "f")
        if len(self._fx) >= _MAX_MATCH_CACHE:
            self._fx.clear()
        self._fx[key] = (rates, numerator, denominator, q, rate)
        return q, rate

    def _convert_units(self, value: Decimal, unit: str, b: _Budget, now: float,
                       rate: str | None, priced: bool = False) -> tuple[int, str | None]:
        """Quanta of ``b`` for ``value`` in a money ``unit`` when either side counts in
        microcents. One currency: exact, or ``inexact_amount`` (never rounded) -- except
        for a priced usage (``priced``), rounded up like a conversion; two currencies: at
        ``rate`` (else the current one), rounded up to ``b``'s quantum."""
        src = money_unit(unit)
        assert src is not None and b.currency is not None
        (src_cur, src_exp), (cur, exp) = src, b.currency
        scale = _unit_scale(unit)[0]
        if src_cur == cur:
            exact = value.scaleb(scale - src_exp + exp, MONEY_CONTEXT)
            if priced:
                return int(exact.to_integral_value(ROUND_CEILING, MONEY_CONTEXT)), None
            if exact != exact.to_integral_value(context=MONEY_CONTEXT):
                raise BudgetInputError(
                    "inexact_amount",
                    f"{value} {unit} is not a whole number of {b.unit} quanta (10^-{exp} "
                    f"{cur}) for budget {b.id}: spend in {b.unit}, or declare the budget "
                    f"in {cur}{MICRO_SUFFIX}", {"budget": b.id, "unit": b.unit})
            return int(exact), None
        scaled = value.scaleb(scale - src_exp + exp, MONEY_CONTEXT)
        rates = self._rates_of[b.id]
        fraction: tuple[Decimal, Decimal] | None = None
        if rate is None:
            try:
                # A table's cross rate is an exact fraction: converted at it, rounded up
                # once (at its rate(), rounded to 34 digits, a spend could come to a
                # quantum under its exact value). A source of the caller's own is
                # checked as every conversion checks it (source_fraction): a rate of 0
                # or below would charge nothing, or take spend off the budget.
                fraction = source_fraction(rates, src_cur, cur, now)
            except RateError as exc:
                raise BudgetInputError(exc.code, f"cannot convert {unit} to {b.unit} for "
                                       f"budget {b.id}: {exc.message}") from None
            rate = format(fraction_rate(*fraction), "f")
        elif type(rates) in _TABLES:
            # A commit at the rate recorded: at the fraction it was recorded from while
            # the table still gives it (as the reservation converted), else at the rate.
            try:
                found = cast(StaticRates, rates).rate_fraction(src_cur, cur, now)
                if format(fraction_rate(*found), "f") == rate:
                    fraction = found
            except RateError:
                pass  # the recorded rate is the reservation's, fresh or not
        if fraction is not None:
            exact = _CEILING.divide(MONEY_CONTEXT.multiply(scaled, fraction[0]), fraction[1])
        else:
            exact = MONEY_CONTEXT.multiply(scaled, Decimal(rate))
        return int(exact.to_integral_value(ROUND_CEILING, MONEY_CONTEXT)), rate

    def _commit_amount(
        self,
        rec: ReservationRecord,
        line: Line,
        budget: _Budget | None,
        value: Decimal,
        unit: str | None,
        now: float,
    ) -> int:
        """Quanta a commit of ``value`` ``unit`` charges to ``line`` (not a calls line)."""
        scale = self._scales.get(line.budget, 0)
        line_unit = self._units.get(line.budget)
        money_unit = unit is not None and unit not in _NON_MONEY
        if unit == line_unit:
            q = int(value.scaleb(scale, MONEY_CONTEXT))
        elif not money_unit or line_unit is None or line_unit in _NON_MONEY:
            raise BudgetInputError(
                "unit_mismatch",
                f"reservation {rec.id} is in {rec.unit}; commit in that unit, not {unit}",
            )
        elif budget is not None and (unit.endswith(MICRO_SUFFIX)  # type: ignore[union-attr]
                                     or line_unit.endswith(MICRO_SUFFIX)):
            # the reservation's rate when committing in its unit, else the current one
            q, _ = self._convert_units(value, unit, budget, now,  # type: ignore[arg-type]
                                       line.rate if unit == rec.unit else None,
                                       rec.priced is not None)
        elif unit == rec.unit and line.rate is not None:
            q = self._at_recorded_rate(value, unit, line, budget, scale, now)
        else:
            assert budget is not None
            q, _ = self._convert(value, unit, budget, now)  # type: ignore[arg-type]
        if q > MAX_QUANTA:
            raise BudgetInputError("invalid_amount", f"amount {value} {unit} is too large",
                                   {"reason": "amount_too_large"})
        return q

    def _at_recorded_rate(self, value: Decimal, unit: str | None, line: Line,
                          budget: _Budget | None, scale: int, now: float) -> int:
        """Quanta of a commit of ``value`` in the reservation's currency on a ``line``
        converted at reservation time: at the rate the line recorded, rounded up.

        A table's cross rate (USD -> GBP through EUR) is an exact fraction, which the
        reservation converted at, recorded rounded to 34 digits; converting at the
        rounded rate could come to a quantum more than the exact value (the reserved 3
        USD at USD 2, GBP 3 EUR: 2.01 GBP against a hold of 2.00, then refused as more
        than reserved). So while the budget's table (immutable) still gives that very
        rate, the commit converts at its exact fraction, as the reservation did; else
        (a stale table, other rates since) at the recorded rate.

        The table is asked through :meth:`_convert_at`, the ledger's memo of what each
        conversion gave (``_fx``): the reservation's own conversion of this amount, or an
        earlier commit's, is the answer while the table still answers with the very
        fraction objects it was made from (asked at ``now``, so a stale table still
        falls back). A rate of the table that is its numerator over 1 (a direct rate)
        gives the same quanta either way: the product is exact and rounded up once, as
        the recorded rate's is below."""
        rates = None if budget is None else self._rates_of.get(budget.id)
        if (type(rates) in _TABLES and budget is not None and unit is not None
                and type(value) is Decimal and value):
            try:
                q, rate = self._convert_at(value, unit, budget, rates, now)
                if rate == line.rate:
                    return q
            except (RateError, MoneyError):
                pass  # the recorded rate is the reservation's, fresh or not
        exact = MONEY_CONTEXT.multiply(value, Decimal(line.rate))  # type: ignore[arg-type]
        scaled = exact.scaleb(scale, MONEY_CONTEXT)
        return int(scaled.to_integral_value(ROUND_CEILING, MONEY_CONTEXT))

    def _active(self, reservation_id: object, now: float, lenient: bool) -> ReservationRecord:
        """The live reservation, or the error its state calls for (lenient: final ok)."""
        if not _is_id(reservation_id):
            raise unknown_reservation(reservation_id)
        if self._live is not None:
            # A shared store's local view, possibly stale: the store re-checks the
            # reservation (and first the idempotency key) inside the write, so this
            # saves a round trip, never a check.
            live = self._live(reservation_id, now)
            if live is not None:
                return live
        rec = self.store.get_reservation(reservation_id)
        if rec is None:
            raise unknown_reservation(reservation_id)
        if not lenient and (rec.status != ACTIVE or rec.expires_at <= now):
            _raise_state(rec, now)
        return rec

    def _replay(self, key: str, fingerprint: str, now: float) -> Reservation | None:
        found = self.store.get_idempotency(key, now)
        if found is None:
            return None
        if found.fingerprint != fingerprint:
            raise IdempotencyMismatch(
                f"idempotency key {key.split(':', 1)[1]!r} was used for a different "
                f"{key.split(':', 1)[0]}: use a new key for a new request"
            )
        # The original result exactly as first returned, on every store and host: the
        # status it was stored with (a reserve or extend stores only a live
        # reservation), never "expired" because its lease has ended since, nor the
        # state now (get and reservation_for give that).
        return self._view(found.result, -_INF)

    def _failed(
        self,
        outcome: Outcome,
        lines: list[Line],
        budgets: list[_Budget],
        idem: IdempotencyRecord | None,
        now: float,
        code: str,
        attempts: list[int] | None = None,
    ) -> Reservation:
        if outcome.reason == "idempotency" and idem is not None and outcome.idempotency:
            # A concurrent request with the same key won the race: replay it.
            replay = self._replay(idem.key, idem.fingerprint, now)
            if replay is not None:
                return replay
        if outcome.reason == "reservation":
            if outcome.reservation is None:
                raise ReservationError("unknown_reservation", "the reservation no longer exists")
            _raise_state(outcome.reservation, now)
            # Live by our clock, yet the store released it: a process whose clock runs
            # ahead of ours found it expired. Its hold is gone, so it is expired.
            raise ReservationError(
                "reservation_expired",
                f"reservation {outcome.reservation.id} was released as expired by a process "
                "whose clock is ahead of this one; processes sharing a store should share "
                "a clock",
            )
        if outcome.reason in ("guard", "debt"):
            i = outcome.failed
            use = outcome.usage[i]
            attempted = lines[i].amount if attempts is None else attempts[i]
            raise _exceeded("debt_outstanding" if outcome.reason == "debt" else code,
                            budgets[i], lines[i], use, attempted)
        raise BudgetError("store_conflict", f"the store refused the operation ({outcome.reason})")


def fingerprint_of(op: str, principal: str, permission: str, unit: str | None,
                   value: Decimal, extra: object, acting_for: str | None, tenant: str | None,
                   skey: tuple[str | None, ...], priced: str | None, lines: list[Line]) -> str:
    """The payload an idempotency key is bound to (the same key with another payload is
    ``idempotency_mismatch``)."""
    return repr((op, principal, permission, unit, str(value), extra, acting_for, tenant)
                + ((skey,) if skey else ())
                + ((priced, [ln.amount for ln in lines]) if priced else ()))


def _invalid_amount(exc: MoneyError) -> BudgetInputError:
    return BudgetInputError("invalid_amount", f"invalid amount: {exc.message}",
                            {"reason": exc.code})


def _spend(amount: object, usage: LLMUsage | None) -> object:
    """What is spent: ``amount``, or ``usage`` (a priced LLM usage), never both; a
    ``usage`` that is not an :class:`LLMUsage` is refused (``invalid_amount``, reason
    ``invalid_usage``), never read as an amount."""
    if usage is None:
        return amount
    _check_usage(usage)
    if amount is not None:
        raise BudgetInputError("invalid_amount", "give an amount or usage=, not both",
                               {"reason": "amount_and_usage"})
    return usage


def _check_usage(usage: object) -> None:
    """Refuse a ``usage=`` that is not an :class:`LLMUsage` (it is never an amount)."""
    if type(usage) is not LLMUsage:
        raise BudgetInputError("invalid_amount", "usage must be an LLMUsage(provider, model, "
                               f"input_tokens, ...), not {type(usage).__name__}",
                               {"reason": "invalid_usage"})


def _grace(grace: object) -> float:
    if isinstance(grace, bool) or not isinstance(grace, (int, float)) or not (
            0 <= grace <= MAX_GRACE):
        raise BudgetInputError("invalid_ttl", f"grace must be a number of seconds from 0 to "
                               f"{MAX_GRACE}, got {grace!r}")
    return float(grace)


def _bucket(line: Line, budget: _Budget, now: float) -> Bucket:
    if line.rolling:
        return Bucket(line.budget, line.subject, 0, now - budget.rolling)  # type: ignore[operator]
    return Bucket(line.budget, line.subject, line.window)


def _subject(
    kind: str, principal: str | None, acting_for: str | None, tenant: str | None,
    fields: tuple[str, ...] = (), skey: tuple[str | None, ...] = (),
) -> str | None:
    if kind == "agent":
        return principal
    if kind == "acting_for":
        return acting_for if acting_for is not None else principal
    if kind == "tenant":
        return tenant if tenant is not None else ""
    if kind == "global":
        return "*"
    values = dict(zip(fields, skey, strict=False))
    if kind.startswith("context."):
        value = values.get(kind[8:])
        return value if value is not None else ""
    values["tenant"] = tenant
    return scope_path(kind, principal, values)


def unknown_reservation(reservation_id: object) -> ReservationError:
    """The refusal of an id no reservation has (never made, or forgotten): the one answer
    a wire also gives for a reservation its caller may not see, so the two cannot be
    told apart."""
    shown = str(reservation_id)[:40]
    return ReservationError(
        "unknown_reservation",
        f"no reservation {shown!r} (never made, or forgotten after its retention period)",
    )


def _raise_state(rec: ReservationRecord, now: float) -> None:
    if rec.status != ACTIVE:
        raise ReservationError(
            "reservation_final",
            f"reservation {rec.id} is already {rec.status}; make a new reservation",
        )
    if rec.expires_at <= now:
        raise ReservationError(
            "reservation_expired",
            f"reservation {rec.id} expired at {_iso(rec.expires_at)}; extend reservations "
            "before their ttl runs out, or reserve again",
        )
