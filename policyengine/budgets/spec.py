"""What a budget is: :class:`BudgetSpec`, and the units a budget can count.

Units are an ISO 4217 currency code (``EUR``), a microcent unit (``USD_MICROCENTS``,
10**-8 USD, counted in whole numbers), or one of ``tokens``, ``calls``, ``credits``,
``risk_points``. Inside the ledger every amount is an integer number of *quanta* of its
unit: the currency's minor unit (cents for EUR, yen for JPY, fils/1000 for BHD), one
token, one call, or a millionth of a credit. Stores only ever see these integers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import cast

from policyengine.budgets.errors import BudgetInputError
from policyengine.budgets.windows import MAX_ROLLING_SECONDS, window_problems
from policyengine.money._money import (
    MAX_EXPONENT,
    MONEY_CONTEXT,
    UNITS,
    MoneyError,
    decimal_places,
    get_currency,
)
from policyengine.permissions import is_valid_pattern, matches

__all__ = [
    "MAX_QUANTA",
    "MAX_ROLLING_SECONDS",
    "CAPS",
    "HIERARCHY",
    "NON_CURRENCY_UNITS",
    "PART_ESCAPES",
    "SUBJECTS",
    "BudgetProblem",
    "BudgetSpec",
    "budget_problems",
    "canonical_unit",
    "dimension",
    "money_unit",
    "partitioned",
    "scope_path",
    "subject_field",
    "under",
    "unit_scale",
]

NON_CURRENCY_UNITS = UNITS
#: The Cycles scope hierarchy, outermost first. ``agent`` is the principal.
HIERARCHY = ("tenant", "workspace", "app", "workflow", "agent", "toolset")
#: Named subjects. A subject may also be ``context.NAME``: a field of the request.
SUBJECTS = frozenset({"agent", "acting_for", "tenant", "global", "workspace", "app",
                      "workflow", "toolset"})
_FIELD_FIRST = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")
_FIELD_REST = _FIELD_FIRST | frozenset("0123456789")


def subject_field(subject: str) -> str | None:
    """The request field a subject reads, or None for ``agent``, ``acting_for`` and
    ``global``: ``tenant`` and the hierarchy levels read the field of their name,
    ``context.run_id`` reads ``run_id``.

    >>> subject_field("workspace"), subject_field("context.run_id"), subject_field("agent")
    ('workspace', 'run_id', None)
    """
    if subject.startswith("context."):
        return subject[8:]
    if subject in ("agent", "acting_for", "global"):
        return None
    return subject


def _is_field(name: str) -> bool:
    return (0 < len(name) <= 64 and name[0] in _FIELD_FIRST
            and all(c in _FIELD_REST for c in name))


def _escape(value: str) -> str:
    return value.replace("%", "%25").replace("/", "%2F")


def scope_path(level: str, principal: str | None, values: Mapping[str, str | None]) -> str:
    """The bucket subject of a hierarchy budget ``per LEVEL`` (``workspace``, ``app``,
    ``workflow``, ``toolset``): the Cycles scope path down to that level, in the order
    tenant, workspace, app, workflow, agent, toolset, levels the request does not give
    skipped, and ``LEVEL:`` with an empty value when it does not give the level itself
    (requests without it share that bucket: never less strict). ``/`` and ``%`` in a value
    are written ``%2F`` and ``%25``, so two different requests never share a path by
    accident. ``agent`` is the principal.

    >>> scope_path("app", "bot", {"tenant": "acme", "app": "crm"})
    'tenant:acme/app:crm'
    >>> scope_path("workspace", "bot", {"tenant": "acme"})
    'tenant:acme/workspace:'
    >>> scope_path("toolset", "bot", {"toolset": "search"})
    'agent:bot/toolset:search'
    """
    parts = []
    for name in HIERARCHY:
        value = principal if name == "agent" else values.get(name)
        if value is not None:
            parts.append(f"{name}:{_escape(value)}")
        elif name == level:
            parts.append(f"{name}:")
        if name == level:
            break
    return "/".join(parts)


#: A name inside a tenant's bucket or principal (:func:`under`): no ``/`` nor ``#`` left,
#: so the parts read back one way only.
PART_ESCAPES = str.maketrans({"%": "%25", "/": "%2F", "#": "%23"})
_MAX_UNDER = 256  # the ledger's longest principal (and scope value)
#: The hierarchy levels among request fields: their buckets are scope paths under the
#: tenant already (:func:`scope_path`), so they are handed over as they are.
_LEVELS = frozenset({"workspace", "app", "workflow", "toolset"})


def under(tenant: str, below: str | None = None) -> str:
    """A name under ``tenant`` in the ``tenant:`` namespace: the tenant's own principal
    ``tenant:acme`` (``below`` None), a request field's bucket
    ``tenant:acme/cost_center:cc1`` (``below`` ``cost_center:cc1``, its parts escaped
    by the caller), the principal of an agent named on the Cycles wire only
    ``tenant:acme/agent:bot``. ``%``, ``/`` and ``#`` in the tenant are escaped, so two
    (tenant, below) pairs never make one name. Past what the ledger keeps (256
    characters), both parts are cut and a digest of the pair follows a ``#``, which no
    short form holds."""
    where = tenant.translate(PART_ESCAPES)
    name = f"tenant:{where}" if below is None else f"tenant:{where}/{below}"
    if len(name) <= _MAX_UNDER:
        return name
    digest = hashlib.sha256(f"{tenant}\0{below or ''}".encode("utf-8", "surrogatepass")
                            ).hexdigest()
    cut = f"tenant:{where[:100]}" if below is None else f"tenant:{where[:100]}/{below[:100]}"
    return f"{cut}#{digest[:32]}"


def dimension(tenant: str, name: str, value: str) -> str:
    """The bucket of the request field ``name: value`` under ``tenant`` (``per
    context.NAME`` subjects): ``tenant:acme/cost_center:cc1``, so two tenants' equal
    values are two buckets, and no value names another namespace's (:func:`under`)."""
    return under(tenant, f"{name.translate(PART_ESCAPES)}:{value.translate(PART_ESCAPES)}")


def partitioned(partition: str, fields: Iterable[str], given: Mapping[str, object]
                ) -> dict[str, str | None]:
    """The ``scope=`` request fields of a request counted in ``partition`` (a tenant;
    ``""`` the empty tenant, ``tenant:/NAME:VALUE``): every field in ``fields`` (what
    the budgets or rate limits read) that is a ``context.NAME`` field is
    ``tenant:P/NAME:VALUE`` (:func:`dimension`; a field not given as a string is the
    partition's empty value ``tenant:P/NAME:``); a hierarchy level is its value as given
    (None when not a string), which
    :func:`scope_path` writes under the partition's tenant. So two partitions' equal
    values are two buckets, and these are the very buckets the budget wires charge
    for that tenant (docs/service.md, "Tenants on the budget wires")."""
    out: dict[str, str | None] = {}
    for name in fields:  # a dict subclass's own get() is not called
        value = (dict.get(given, name) if isinstance(given, dict)
                 else given.get(name))
        if name in _LEVELS:
            out[name] = value if type(value) is str else None
        else:
            out[name] = dimension(partition, name,
                                  value if type(value) is str else "")
    return out


#: Caps a budget may declare (Cycles' ``Caps``; a decision with caps is
#: ``ALLOW_WITH_CAPS``).
CAPS = frozenset({"max_tokens", "max_steps_remaining", "cooldown_ms"})
#: Largest amount, limit or overdraft in quanta. Guarded sums stay below 2 * 10**18,
#: under 2**63, so an SQL INTEGER column can never overflow.
MAX_QUANTA = 10**18

_units: dict[str, tuple[str, int]] = {}


#: Suffix of a unit of a millionth of a cent: ``USD_MICROCENTS`` is 10**-8 USD.
MICRO_SUFFIX = "_MICROCENTS"
#: Decimal exponent of one microcent, for a currency with two decimals.
_MICRO_EXPONENT = 8


def canonical_unit(unit: object) -> tuple[str, int]:
    """``(code, scale)``: the canonical spelling of a unit and its decimal places.

    Currency codes are case-insensitive (``"usd"`` is ``USD``), as are the units.
    ``USD_MICROCENTS`` (any currency with two decimals) counts 10**-8 of the currency in
    whole numbers. Raises :class:`BudgetInputError` ``unknown_unit``.

    >>> canonical_unit("usd"), canonical_unit("JPY"), canonical_unit("credits")
    (('USD', 2), ('JPY', 0), ('credits', 6))
    >>> canonical_unit("usd_microcents"), canonical_unit("RISK_POINTS")
    (('USD_MICROCENTS', 0), ('risk_points', 0))
    """
    found = _units.get(unit) if type(unit) is str else None
    if found is not None:
        return found
    try:
        if type(unit) is not str:
            raise MoneyError("unknown_currency", "not a string")
        upper = unit.upper() if unit.isascii() else unit
        if upper.endswith(MICRO_SUFFIX) and len(upper) == 3 + len(MICRO_SUFFIX):
            if get_currency(upper[:3]).minor_units != 2:
                raise MoneyError("unknown_currency", "microcents need a two-decimal currency")
            code, scale = upper, 0
        else:
            scale = decimal_places(unit)
            code = unit.lower() if unit.lower() in UNITS else get_currency(unit).code
    except MoneyError:
        raise BudgetInputError(
            "unknown_unit",
            f"unknown unit {str(unit)[:20]!r}: use an ISO 4217 currency code (EUR, USD, ...), "
            "a microcent unit (USD_MICROCENTS) or tokens, calls, credits, risk_points",
        ) from None
    if len(_units) < 4096:
        _units[unit] = (code, scale)
    return code, scale


def money_unit(code: str) -> tuple[str, int] | None:
    """``(currency, exponent)`` of a canonical money unit: one quantum is
    ``10**-exponent`` of the currency (``USD`` -> ``("USD", 2)``, ``USD_MICROCENTS`` ->
    ``("USD", 8)``); None for ``tokens``, ``calls``, ``credits``, ``risk_points``.

    >>> money_unit("USD"), money_unit("USD_MICROCENTS"), money_unit("tokens")
    (('USD', 2), ('USD', 8), None)
    """
    if code in NON_CURRENCY_UNITS:
        return None
    if code.endswith(MICRO_SUFFIX):
        return code[:3], _MICRO_EXPONENT
    return code, canonical_unit(code)[1]


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


def plain_decimal(value: str) -> bool:
    """Is ``value`` a plain ASCII decimal (``12``, ``-3``, ``2.50``), the grammar of
    amounts (docs/money.md)? ``Decimal()`` also takes surrounding whitespace, ``_``,
    exponents, a ``+``, ``.5`` and digits of other scripts, which no amount is written
    with (a budget's limits and a price's amounts are held to it)."""
    whole, dot, frac = value.removeprefix("-").partition(".")
    return value.isascii() and whole.isdigit() and (not dot or frac.isdigit())


def _decimal(value: object, what: str) -> Decimal | str:
    """``value`` as a finite, non-negative Decimal, or what is wrong with it."""
    if isinstance(value, bool) or not isinstance(value, (Decimal, int, str)):
        return f"{what} must be a Decimal, int or string"
    if isinstance(value, str) and not plain_decimal(value):
        return f"{what} {value[:40]!r} is not a plain decimal such as '100.50'"
    try:
        result = Decimal(value)
    except InvalidOperation:  # pragma: no cover - a plain decimal always converts
        return f"{what} {value!r} is not a number"
    if not result.is_finite() or result < 0:
        return f"{what} must be a finite number >= 0"
    # Bounded before any arithmetic: 1E+998 overflowed (decimal.Overflow, no budget
    # error) and 1E-100000 underflowed to a whole number of quanta (accepted).
    if result and not -MAX_EXPONENT <= result.adjusted() <= MAX_EXPONENT:
        return (f"{what} {str(value)[:40]} is out of range (its exponent is beyond "
                f"+-{MAX_EXPONENT})")
    return result


#: A problem found by :func:`budget_problems`: (field, message). The field is one of
#: ``id``, ``patterns``, ``unit``, ``limit``, ``overdraft_limit``, ``window``, ``subject``,
#: ``tz``, ``caps``.
BudgetProblem = tuple[str, str]


#: The longest budget id (a policy's ``namespace.id``): it names buckets in every store.
MAX_BUDGET_ID = 256


def budget_problems(patterns: object, limit: object, unit: object, window: object,
                    rolling_seconds: object = None, subject: object = "agent",
                    tz: object = "UTC", overdraft_limit: object = Decimal(0),
                    caps: object = (), budget_id: object = None) -> list[BudgetProblem]:
    """Everything wrong with a budget's fields, as ``(field, message)`` pairs.

    The one place the limits of a budget live (units, amounts and their decimals, the
    quanta bound, windows, the longest rolling window, subjects, time zones):
    :class:`BudgetSpec` raises the first problem, and the policy checker reports each one
    at the ``budget`` statement's position.
    """
    out: list[BudgetProblem] = []
    if budget_id is not None and (type(budget_id) is not str
                                  or not 0 < len(budget_id) <= MAX_BUDGET_ID):
        out.append(("id", f"the budget id (namespace.id) must be 1 to {MAX_BUDGET_ID} "
                          f"characters, not {len(str(budget_id))}"))
    pats: tuple[object, ...] = ()
    if isinstance(patterns, Iterable) and not isinstance(patterns, (str, bytes)):
        pats = tuple(patterns)
    if not pats or not all(type(p) is str and is_valid_pattern(p) for p in pats):
        out.append(("patterns", "patterns must be a non-empty list of permission patterns"))
    try:
        code, scale = canonical_unit(unit)
    except BudgetInputError as exc:
        out.append(("unit", exc.message))
        code, scale = str(unit), None
    for name, raw, positive in (("limit", limit, True),
                                ("overdraft_limit", overdraft_limit, False)):
        value = _decimal(raw, name)
        if isinstance(value, str):
            out.append((name, value))
            continue
        if positive and value == 0:
            out.append((name, f"{name} must be positive"))
            continue
        if scale is None:
            continue
        scaled = value.scaleb(scale, MONEY_CONTEXT)
        if scaled != scaled.to_integral_value(context=MONEY_CONTEXT):
            out.append((name, f"{name} {value} has more decimals than {code} allows "
                              f"({scale})"))
        elif scaled > MAX_QUANTA:
            most = _dec_str(Decimal(MAX_QUANTA).scaleb(-scale, MONEY_CONTEXT))
            out.append((name, f"{name} {value} is too large (at most {most} {code})"))
    of_window = window_problems(window, rolling_seconds, tz)
    out += [p for p in of_window if p[0] == "window"]
    if type(subject) is not str or (subject not in SUBJECTS and not (
            subject.startswith("context.") and _is_field(subject[8:]))):
        out.append(("subject", f"subject must be one of {', '.join(sorted(SUBJECTS))}, or "
                               "context.NAME (a request field)"))
    pairs: tuple[object, ...] = caps if isinstance(caps, tuple) else (None,)
    names = [c[0] if isinstance(c, tuple) and len(c) == 2 else None for c in pairs]
    if any(n not in CAPS for n in names) or not all(
            isinstance(c, tuple) and type(c[1]) is int and 0 <= c[1] <= MAX_QUANTA
            for c in pairs):
        out.append(("caps", f"caps are (name, whole number >= 1) pairs, names among "
                            f"{', '.join(sorted(CAPS))}"))
    elif len(set(names)) != len(names):
        out.append(("caps", "each cap is given once"))
    else:
        # A cap of 0 admits calls it leaves nothing to do (max_tokens 0: no output at
        # all, which providers refuse; max_steps_remaining 0: no step), or caps nothing
        # (cooldown_ms 0); and a client that reads 0 as "not set" would not cap the call
        # at all. Refusing the calls is a forbid's job; capping nothing is no cap.
        out += [(f"caps[{i}]", f"cap {name} must be at least 1, not 0 (a cap of 0 admits "
                               "calls it leaves nothing to do, and a client that reads 0 "
                               "as unset caps nothing): to refuse the calls write a forbid; "
                               "to cap nothing leave the cap out")
                for i, (name, value) in enumerate(cast("tuple[tuple[str, int], ...]", pairs))
                if value == 0]
    out += [p for p in of_window if p[0] == "tz"]
    return out


def _dec_str(value: Decimal) -> str:
    return format(value.normalize(MONEY_CONTEXT), "f")


@dataclass(frozen=True)
class BudgetSpec:
    """One budget: spend on permissions matching ``patterns``, per subject, per window.

    ``budget daily-spend: payments:* limit 1000 EUR per day per agent`` is::

        BudgetSpec("travel.daily-spend", ("payments:*",), Decimal("1000"), "EUR", "day")

    ``window`` is ``minute``, ``hour``, ``day``, ``week``, ``month`` (calendar-aligned in
    ``tz``) or ``rolling`` (with ``rolling_seconds``). ``subject`` is ``agent``,
    ``acting_for``, ``tenant``, ``global``, a Cycles level (``workspace``, ``app``,
    ``workflow``, ``toolset``) or ``context.NAME`` (a request field: a run, a session).
    ``overdraft_limit`` is how far a commit with ``overage="allow_with_overdraft"`` may
    push spend past ``limit`` (as debt).
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
    #: Cycles caps a reservation on this budget carries: ``(("max_tokens", 4000),)``.
    caps: tuple[tuple[str, int], ...] = ()

    def __post_init__(self) -> None:
        if type(self.id) is not str or not self.id or len(self.id) > MAX_BUDGET_ID:
            raise _bad(f"budget id must be a non-empty string, got {self.id!r}")
        problems = budget_problems(self.patterns, self.limit, self.unit, self.window,
                                   self.rolling_seconds, self.subject, self.tz,
                                   self.overdraft_limit, self.caps)
        if problems:
            raise _bad(f"budget {self.id}: {problems[0][1]}")
        object.__setattr__(self, "patterns", tuple(self.patterns))  # validated: iterable
        object.__setattr__(self, "unit", canonical_unit(self.unit)[0])
        object.__setattr__(self, "limit", Decimal(self.limit))
        object.__setattr__(self, "overdraft_limit",
                           Decimal(self.overdraft_limit))

    def covers(self, permission: str) -> bool:
        """True when one of the budget's patterns matches ``permission``."""
        return any(matches(p, permission) for p in self.patterns)
