"""Budget windows: calendar-aligned (UTC or an IANA zone, DST-correct) or rolling.

A calendar window is the half-open interval ``[start, end)`` of POSIX seconds containing
``now``:

* ``day``, ``week`` (ISO weeks, starting Monday) and ``month`` run from local midnight to
  local midnight in the budget's zone, so a ``day`` in Europe/Paris is 23 hours on the
  spring-forward day and 25 hours on the fall-back day. A midnight that does not exist
  (a DST gap at 00:00) starts the window at the transition instant.
* ``minute`` and ``hour`` are fixed-length and aligned to the zone's UTC offset at
  ``now``; across a DST change consecutive hour windows stay contiguous, never overlap,
  and each lasts exactly 3600 seconds, except across a change by less than an hour
  (Lord Howe Island's half hour), where the hour across it lasts 90 minutes.

A rolling window has no fixed bounds: it covers the ``rolling_seconds`` before ``now``.
"""

from __future__ import annotations

import math
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from policyengine.budgets.errors import BudgetInputError

__all__ = ["CALENDAR_WINDOWS", "MAX_ROLLING_SECONDS", "WINDOWS", "Window", "window_problems"]

CALENDAR_WINDOWS = frozenset({"minute", "hour", "day", "week", "month"})
WINDOWS = CALENDAR_WINDOWS | {"rolling"}
_FIXED = {"minute": 60, "hour": 3600}
#: Longest rolling window (31 days); stores may forget rolling spend older than this.
MAX_ROLLING_SECONDS = 31 * 86400


def window_problems(kind: object, rolling_seconds: object = None,
                    tz: object = "UTC") -> list[tuple[str, str]]:
    """Everything wrong with a window, as ``(field, message)`` pairs (field ``window`` or
    ``tz``): the budgets leaf's rule, which :class:`Window` and ``budget_problems`` (so
    :class:`~policyengine.budgets.BudgetSpec` and the policy checker) apply."""
    out: list[tuple[str, str]] = []
    if type(kind) is not str or kind not in WINDOWS:
        out.append(("window", f"window must be one of {', '.join(sorted(WINDOWS))}"))
    elif kind == "rolling":
        if type(rolling_seconds) is not int or not 1 <= rolling_seconds <= MAX_ROLLING_SECONDS:
            out.append(("window", "a rolling window lasts between 1s and "
                                  f"{MAX_ROLLING_SECONDS // 86400}d"))
    elif rolling_seconds is not None:
        out.append(("window", "rolling_seconds is only for window='rolling'"))
    if type(tz) is not str or not tz:
        out.append(("tz", "tz must be an IANA zone name such as 'Europe/Paris'"))
    elif tz != "UTC":
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a name too long
            out.append(("tz", f"unknown time zone {tz[:100]!r}"))
    return out


class Window:
    """The window of one budget; :meth:`bounds` maps ``now`` to ``(start, end)``.

    >>> w = Window("day", None, "Europe/Paris")
    >>> s, e = w.bounds(1774740600.0)   # 00:30 in Paris on 2026-03-29, spring-forward day
    >>> e - s
    82800
    """

    __slots__ = ("_cache", "kind", "rolling_seconds", "tz", "zone")

    def __init__(self, kind: str, rolling_seconds: int | None, tz: str = "UTC") -> None:
        problems = window_problems(kind, rolling_seconds, tz)
        if problems:  # (once per budget, when a ledger is built: never on a spend)
            raise BudgetInputError("invalid_budget", problems[0][1])
        self.kind = kind
        self.rolling_seconds = rolling_seconds if kind == "rolling" else None
        self.tz = tz
        self.zone = timezone.utc if tz == "UTC" else ZoneInfo(tz)
        # (start, end) of the last calendar window computed: most calls hit it.
        self._cache: tuple[int, int] = (0, 0)

    @property
    def is_rolling(self) -> bool:
        return self.rolling_seconds is not None

    def bounds(self, now: float) -> tuple[int, int]:
        """``(start, end)`` POSIX seconds of the calendar window containing ``now``.

        For a rolling window: ``(ceil(now) - rolling_seconds, ceil(now))``, informational.
        """
        if self.rolling_seconds is not None:
            top = math.ceil(now)
            return top - self.rolling_seconds, top
        cached = self._cache
        if cached[0] <= now < cached[1]:
            return cached
        result = self._compute(now)
        self._cache = result
        return result

    def _compute(self, now: float) -> tuple[int, int]:
        zone = self.zone
        local = datetime.fromtimestamp(now, zone)
        size = _FIXED.get(self.kind)
        if size is not None:
            return self._fixed(now, size)
        day = local.date()
        if self.kind == "day":
            first, nxt = day, day + timedelta(days=1)
        elif self.kind == "week":
            first = day - timedelta(days=day.weekday())
            nxt = first + timedelta(days=7)
        else:
            first = day.replace(day=1)
            nxt = date(first.year + (first.month == 12), first.month % 12 + 1, 1)
        return self._midnight(first), self._midnight(nxt)

    def _offset(self, at: float) -> int:
        offset = datetime.fromtimestamp(at, self.zone).utcoffset()
        return int(offset.total_seconds()) if offset is not None else 0

    def _fixed(self, now: float, size: int) -> tuple[int, int]:
        """The ``minute`` / ``hour`` window containing ``now``: from the last instant at
        or before ``now`` that is a whole ``size`` in the zone's local time *at that
        instant*, to the next one after. An offset change by a multiple of ``size`` (a
        one-hour DST change) keeps every boundary; one by less (Lord Howe Island's
        half-hour DST) moves them, and the window across the change runs from the last
        boundary before it to the first after (90 minutes), as a DST ``day`` is 23 or
        25 hours: contiguous, never overlapping, never shorter than ``size``. Offsets
        change at most once within a few ``size`` (DST changes are months apart), so
        the offsets in force ``size`` either side of ``now`` are all there are."""
        offsets = {self._offset(now - size), self._offset(now), self._offset(now + size)}
        if len(offsets) == 1:  # the common case: one offset around now
            off = offsets.pop()
            first = math.floor((now + off) / size) * size - off
            return first, first + size
        starts: list[int] = []
        ends: list[int] = []
        for off in offsets:
            at = math.floor((now + off) / size) * size - off  # last such boundary <= now
            for _ in range(3):
                if self._offset(at) == off:
                    starts.append(at)
                    break
                at -= size
            at = math.floor((now + off) / size) * size - off + size  # first > now
            for _ in range(3):
                if self._offset(at) == off:
                    ends.append(at)
                    break
                at += size
        start, end = max(starts), min(ends)
        return start, end

    def _midnight(self, day: date) -> int:
        # fold=0: an ambiguous midnight is its first occurrence; a midnight inside a DST
        # gap resolves (with the pre-transition offset) to the transition instant.
        return math.floor(datetime(day.year, day.month, day.day, tzinfo=self.zone).timestamp())
