"""Rate limits: at most N calls per second, minute or hour, with a burst, per subject.

``ratelimit search: tools:search 10 per second burst 20 per agent`` admits, per agent,
20 calls back to back from rest and then one call every 100 ms: the Generic Cell Rate
Algorithm (GCRA), which is a token bucket of ``burst`` tokens refilled at ``count`` per
``per`` kept as one number per key, its *theoretical arrival time* (TAT).

Exact arithmetic. Time is whole microseconds (the resolution of PostgreSQL's and Redis's
clocks). The emission interval ``T = period / count`` need not be a whole number of
microseconds (7 per second), so a TAT is kept as ``tat_us + tat_frac / count`` with
``0 <= tat_frac < count``: two integers, exact in every store (Redis scripts compute in
doubles, exact below 2**53: :data:`MAX_COUNT`, :data:`MAX_BURST` and the longest period
keep every intermediate value below 2**53). A call arriving at ``now``:

* ``tat = max(TAT, now)``;
* admitted when ``tat - now <= (burst - 1) * T``; then ``TAT = tat + T``;
* refused otherwise, with ``retry_after = tat - (burst - 1) * T - now`` (rounded up to
  the microsecond): the earliest moment the same call would be admitted.

So from rest ``burst`` calls pass at once, and over any interval of length ``e`` at most
``burst + e / T`` calls pass (``burst + count * e / period``).

Which clock: the store's. A shared store (PostgreSQL, Redis) reads its own server clock
inside the one atomic operation that decides, so hosts whose clocks disagree share one
timeline; the memory and SQLite stores read this host's clock. An explicit ``now_us``
(a ledger built with its own ``clock=``; tests) is used instead, and a shared store
refuses it with ``clock_skew`` when it is further than its ``max_clock_skew`` from the
server's time.

Stores implement ``rate_admit(keys, now_us, consume) -> RateOutcome``: every key admits
the call, and then (``consume``) every key's TAT moves, or none does: one lock, one
transaction or one script. ``consume=False`` answers the same question and changes
nothing (``explain``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from policyengine.budgets.errors import BudgetInputError, BudgetStoreError
from policyengine.budgets.spec import SUBJECTS, scope_path, subject_field
from policyengine.permissions import is_valid_pattern, matches

__all__ = [
    "MAX_BURST",
    "MAX_COUNT",
    "PERIODS",
    "RateKey",
    "RateLimitSpec",
    "RateLimitUsage",
    "RateLimiter",
    "RateOutcome",
    "gcra",
    "gcra_all",
    "rate_limit_problems",
]

#: Microseconds of each period a rate limit may count calls per.
PERIODS = {"second": 1_000_000, "minute": 60_000_000, "hour": 3_600_000_000}
#: Most calls per period, and largest burst: ``MAX_BURST * 1 hour`` in microseconds stays
#: below 2**53 (exact in a Redis script's doubles).
MAX_COUNT = 1_000_000
MAX_BURST = 1_000_000
_MAX_NAME = 256
_new_key = tuple.__new__
_HIERARCHY_LEVELS = frozenset({"workspace", "app", "workflow", "toolset"})


class RateKey(NamedTuple):
    """One rate-limit bucket as a store sees it: its key and GCRA parameters."""

    key: str
    calls: int  # per period
    period_us: int
    burst: int


class RateOutcome(NamedTuple):
    """What ``rate_admit`` answers: ``ok``; else ``refused`` (the index of the refusing
    key; the one with the longest wait when several refuse) and ``retry_after_us``;
    ``now_us`` is the time the store decided at."""

    ok: bool
    refused: int
    retry_after_us: int
    now_us: int


def gcra(tat_us: int, tat_frac: int, now_us: int, count: int, period_us: int,
         burst: int) -> tuple[bool, int, int, int]:
    """One GCRA step: ``(admitted, tat_us, tat_frac, retry_after_us)``, the new TAT when
    admitted (else the TAT as it stands). Integers only.

    >>> gcra(0, 0, 1_000_000, 10, 1_000_000, 2)          # rested: admitted, TAT = now + T
    (True, 1100000, 0, 0)
    >>> gcra(1_200_000, 0, 1_000_000, 10, 1_000_000, 2)  # 200 ms owed, 100 ms tolerated
    (False, 1200000, 0, 100000)
    """
    if tat_us < now_us:
        tat_us, tat_frac = now_us, 0
    diff = (tat_us - now_us) * count + tat_frac
    tolerance = (burst - 1) * period_us
    if diff > tolerance:
        return False, tat_us, tat_frac, -(-(diff - tolerance) // count)
    q, r = divmod(period_us, count)
    tat_frac += r
    tat_us += q
    if tat_frac >= count:
        tat_frac -= count
        tat_us += 1
    return True, tat_us, tat_frac, 0


def gcra_all(keys: Iterable[RateKey], state: Any, now_us: int
             ) -> tuple[list[tuple[str, int, int]], int, int]:
    """:func:`gcra` over every key, all or nothing: ``(new TATs, refused index, wait)``.
    ``state(key)`` reads a key's ``(tat_us, tat_frac)`` (``(0, 0)`` at rest); the index
    is -1 when every key admits, else the key with the longest wait. The stores that
    decide in Python (memory, SQLite) share this; Redis and PostgreSQL do the same in
    their own scripts."""
    new: list[tuple[str, int, int]] = []
    worst, index = 0, -1
    for i, (key, count, period_us, burst) in enumerate(keys):
        u, f = state(key)
        ok, u, f, wait = gcra(u, f, now_us, count, period_us, burst)
        if not ok:
            if wait > worst:
                worst, index = wait, i
        else:
            new.append((key, u, f))
    return new, index, worst


#: A problem found by :func:`rate_limit_problems`: (field, message); the field is one of
#: ``id``, ``patterns``, ``count``, ``per``, ``burst``, ``subject``.
RateLimitProblem = tuple[str, str]


def _is_field(name: str) -> bool:
    return (0 < len(name) <= 64 and (name[0].isascii() and (name[0].isalpha() or name[0] == "_"))
            and all(c.isascii() and (c.isalnum() or c == "_") for c in name))


def rate_limit_problems(patterns: object, count: object, per: object, burst: object = None,
                        subject: object = "agent", limit_id: object = None
                        ) -> list[RateLimitProblem]:
    """Everything wrong with a rate limit's fields, as ``(field, message)`` pairs: the
    one place its bounds live (:class:`RateLimitSpec` raises the first, the policy
    checker reports each at the statement)."""
    out: list[RateLimitProblem] = []
    if limit_id is not None and (type(limit_id) is not str
                                 or not 0 < len(limit_id) <= _MAX_NAME):
        out.append(("id", f"the rate limit id (namespace.id) must be 1 to {_MAX_NAME} "
                          f"characters, not {len(str(limit_id))}"))
    pats: tuple[object, ...] = ()
    if isinstance(patterns, Iterable) and not isinstance(patterns, (str, bytes)):
        pats = tuple(patterns)
    if not pats or not all(type(p) is str and is_valid_pattern(p) for p in pats):
        out.append(("patterns", "patterns must be a non-empty list of permission patterns"))
    if type(count) is not int or not 1 <= count <= MAX_COUNT:
        out.append(("count", f"the number of calls must be a whole number from 1 to "
                             f"{MAX_COUNT:,}"))
    if per not in PERIODS:
        out.append(("per", "a rate limit counts calls per second, minute or hour"))
    if burst is not None and (type(burst) is not int or not 1 <= burst <= MAX_BURST):
        out.append(("burst", f"burst must be a whole number from 1 to {MAX_BURST:,}"))
    if subject not in SUBJECTS and not (
            type(subject) is str and subject.startswith("context.") and _is_field(subject[8:])):
        out.append(("subject", f"subject must be one of {', '.join(sorted(SUBJECTS))}, or "
                               "context.NAME (a request field)"))
    return out


@dataclass(frozen=True)
class RateLimitSpec:
    """``ratelimit ID: PATTERNS COUNT per PERIOD [burst B] [per SUBJECT]``.

    ``per`` is ``second``, ``minute`` or ``hour``; ``burst`` (default ``count``) is how
    many calls pass back to back from rest; ``subject`` as for budgets (``agent``,
    ``acting_for``, ``tenant``, ``global``, a Cycles level, ``context.NAME``). Invalid
    specs raise :class:`BudgetInputError` ``invalid_rate_limit``.
    """

    id: str
    patterns: tuple[str, ...]
    count: int
    per: str
    burst: int | None = None
    subject: str = "agent"

    def __post_init__(self) -> None:
        if type(self.id) is not str or not self.id or len(self.id) > _MAX_NAME:
            raise BudgetInputError("invalid_rate_limit",
                                   f"rate limit id must be a non-empty string, got {self.id!r}")
        problems = rate_limit_problems(self.patterns, self.count, self.per, self.burst,
                                       self.subject)
        if problems:
            raise BudgetInputError("invalid_rate_limit", f"rate limit {self.id}: "
                                   f"{problems[0][1]}")
        object.__setattr__(self, "patterns", tuple(self.patterns))
        if self.burst is None:
            object.__setattr__(self, "burst", self.count)

    @property
    def period_us(self) -> int:
        return PERIODS[self.per]

    def covers(self, permission: str) -> bool:
        return any(matches(p, permission) for p in self.patterns)


class RateLimitUsage:
    """The rate limit that refused a call (``rate_limited``), immutable: its ``id``, the
    ``subject`` it counted, ``count`` per ``per`` with ``burst``, and ``retry_after_us``:
    the earliest the same call would be admitted, in microseconds from the store's
    decision (``retry_after`` in seconds, ``retry_after_ms`` rounded up)."""

    __slots__ = ("burst", "count", "id", "per", "retry_after_us", "subject")

    id: str
    subject: str
    count: int
    per: str
    burst: int
    retry_after_us: int

    def __init__(self, id: str, subject: str, count: int, per: str, burst: int,
                 retry_after_us: int) -> None:
        for name, value in (("id", id), ("subject", subject), ("count", count), ("per", per),
                            ("burst", burst), ("retry_after_us", retry_after_us)):
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"RateLimitUsage is immutable (cannot set {name!r})")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"RateLimitUsage is immutable (cannot delete {name!r})")

    def __reduce__(self) -> tuple[Any, ...]:
        """Copied and pickled as its constructor's arguments (unpickling by
        ``__setattr__`` is refused)."""
        return RateLimitUsage, (self.id, self.subject, self.count, self.per, self.burst,
                                self.retry_after_us)

    @property
    def retry_after(self) -> float:
        return self.retry_after_us / 1e6

    @property
    def retry_after_ms(self) -> int:
        return -(-self.retry_after_us // 1000)

    def to_wire(self) -> dict[str, Any]:
        return {"rateLimit": self.id, "subject": self.subject, "limit": self.count,
                "per": self.per, "burst": self.burst, "retryAfterMs": self.retry_after_ms}

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, RateLimitUsage)
                and self.to_wire() == other.to_wire()
                and self.retry_after_us == other.retry_after_us)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (f"RateLimitUsage({self.id!r}, {self.subject!r}, {self.count} per "
                f"{self.per}, burst {self.burst}, retry after {self.retry_after_us} us)")


def _subject_value(value: object, what: str) -> str:
    if type(value) is not str or not value.isascii() or len(value) > _MAX_NAME:
        raise BudgetInputError("invalid_subject", f"{what} must be ASCII text of at most "
                               f"{_MAX_NAME} characters")
    return value


class RateLimiter:
    """The rate limits of a policy over a store (``rate_admit``): :meth:`admit` asks,
    and by default takes, one call of every limit covering a permission, atomically.

    ``clock``: POSIX seconds; None (the default) lets the store's own clock decide.
    """

    def __init__(self, specs: Iterable[RateLimitSpec], store: Any,
                 clock: Any = None) -> None:
        self.specs = tuple(specs)
        if len({s.id for s in self.specs}) != len(self.specs):
            raise BudgetInputError("invalid_rate_limit", "rate limit ids must be unique")
        self.store = store
        self.clock = clock
        fields: set[str] = set()
        for s in self.specs:
            if s.subject in _HIERARCHY_LEVELS:
                fields.update(("workspace", "app", "workflow", "toolset"))
            elif s.subject.startswith("context."):
                fields.add(s.subject[8:])
        #: The request fields (besides ``tenant``) the subjects read.
        self.scope_fields: tuple[str, ...] = tuple(sorted(fields))
        self._matches: dict[str, tuple[RateLimitSpec, ...]] = {}
        #: Per rate limit id: its key prefix (length-prefixed id, so that no subject can
        #: forge another limit's key) and GCRA parameters.
        self._params: dict[str, tuple[str, int, int, int]] = {
            s.id: (f"{len(s.id)}:{s.id}:", s.count, s.period_us,
                   s.burst)  # type: ignore[misc]  # burst is set by __post_init__
            for s in self.specs}

    def covering(self, permission: str) -> tuple[RateLimitSpec, ...]:
        """The rate limits whose patterns match ``permission`` (cached)."""
        found = self._matches.get(permission)
        if found is None:
            found = tuple(s for s in self.specs if s.covers(permission))
            if len(self._matches) >= 65536:
                self._matches.clear()
            self._matches[permission] = found
        return found

    def admit(self, principal: str, permission: str, *, acting_for: str | None = None,
              tenant: str | None = None, scope: Mapping[str, object] | None = None,
              consume: bool = True) -> RateLimitUsage | None:
        """None when every rate limit covering ``permission`` admits the call (and,
        with ``consume``, the call is counted by each); else the refusing limit, and
        nothing is counted. Raises ``BudgetInputError`` for a subject value that cannot
        be a key, ``BudgetStoreError`` when the store fails."""
        return self._admit(self.covering(permission), principal, acting_for, tenant, scope,
                           consume)

    def admit_each(self, principal: str, permission: str, *, acting_for: str | None = None,
                   tenant: str | None = None, scope: Mapping[str, object] | None = None,
                   consume: bool = True) -> tuple[RateLimitUsage, ...]:
        """Each covering rate limit on its own (one atomic step each, not all or
        nothing): the ones that refuse the call. What shadow rate limits report: each
        judges the call as if it alone were enforced."""
        found = []
        for spec in self.covering(permission):
            usage = self._admit((spec,), principal, acting_for, tenant, scope, consume)
            if usage is not None:
                found.append(usage)
        return tuple(found)

    def _admit(self, specs: tuple[RateLimitSpec, ...], principal: str,
               acting_for: str | None, tenant: str | None,
               scope: Mapping[str, object] | None, consume: bool) -> RateLimitUsage | None:
        if not specs:
            return None
        keyed: list[tuple[str, RateLimitSpec, str]]
        if len(specs) == 1:  # the common case, without the sort
            s = specs[0]
            subject = self._subject(s.subject, principal, acting_for, tenant, scope)
            prefix, calls, period_us, burst = self._params[s.id]
            keyed = [(prefix, s, subject)]
            keys: tuple[RateKey, ...] = (
                _new_key(RateKey, (prefix + subject, calls, period_us, burst)),)
        else:
            keyed = []
            for s in specs:
                subject = self._subject(s.subject, principal, acting_for, tenant, scope)
                keyed.append((self._params[s.id][0] + subject, s, subject))
            keyed.sort(key=lambda k: k[0])  # one lock order everywhere
            keys = tuple(RateKey(k, s.count, s.period_us, s.burst)  # type: ignore[arg-type]
                         for k, s, _ in keyed)
        now_us = None if self.clock is None else round(self.clock() * 1_000_000)
        rate_admit = getattr(self.store, "rate_admit", None)
        if rate_admit is None:
            raise BudgetStoreError("store_unavailable",
                                   f"{type(self.store).__name__} keeps no rate limits")
        outcome: RateOutcome = rate_admit(keys, now_us, consume)
        if outcome.ok:
            return None
        _, s, subject = keyed[outcome.refused]
        return RateLimitUsage(s.id, subject, s.count, s.per, s.burst,  # type: ignore[arg-type]
                              outcome.retry_after_us)

    @staticmethod
    def _subject(kind: str, principal: str, acting_for: str | None, tenant: str | None,
                 scope: Mapping[str, object] | None) -> str:
        if kind == "agent":
            return principal
        if kind == "acting_for":
            return acting_for if acting_for is not None else principal
        if kind == "global":
            return "*"
        if kind == "tenant":
            return _subject_value(tenant, "tenant") if tenant is not None else ""
        name = subject_field(kind)
        if kind.startswith("context."):
            value = scope.get(name) if scope is not None and name is not None else None
            return _subject_value(value, f"context.{name}") if value is not None else ""
        values: dict[str, str | None] = {"tenant": tenant}
        for level in _HIERARCHY_LEVELS:
            v = scope.get(level) if scope is not None else None
            values[level] = _subject_value(v, level) if v is not None else None
        return scope_path(kind, principal, values)


_REST = (0, 0)


class MemoryRates:
    """GCRA state in a dict under the caller's lock (the memory and SQLite-less paths):
    ``admit`` is :func:`gcra` over every key, all or nothing."""

    __slots__ = ("_due", "_tats")

    def __init__(self) -> None:
        self._tats: dict[str, tuple[int, int]] = {}
        self._due = 0

    def admit(self, keys: tuple[RateKey, ...], now_us: int, consume: bool) -> RateOutcome:
        tats = self._tats
        if len(keys) == 1:  # the common case, without the lists
            key, count, period_us, burst = keys[0]
            u, f = tats.get(key, _REST)
            ok, u, f, wait = gcra(u, f, now_us, count, period_us, burst)
            if not ok:
                return _new_key(RateOutcome, (False, 0, wait, now_us))
            if consume:
                tats[key] = (u, f)
                if len(tats) > self._due:
                    self._prune(now_us)
            return _new_key(RateOutcome, (True, -1, 0, now_us))
        new, index, worst = gcra_all(keys, lambda key: tats.get(key, _REST), now_us)
        if index >= 0:
            return RateOutcome(False, index, worst, now_us)
        if consume:
            for key, u, f in new:
                tats[key] = (u, f)
            if len(tats) > self._due:
                self._prune(now_us)
        return RateOutcome(True, -1, 0, now_us)

    def _prune(self, now_us: int) -> None:
        """Forget keys at rest (their TAT has passed: forgetting changes nothing)."""
        tats = self._tats
        for key in [k for k, (u, _f) in tats.items() if u < now_us]:
            del tats[key]
        self._due = 2 * len(tats) + 4096


def now_micros() -> int:
    """This host's clock in whole microseconds."""
    return time.time_ns() // 1000
