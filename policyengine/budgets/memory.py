"""In-process :class:`~policyengine.budgets.store.BudgetStore`: dicts behind one lock.

The default store. Thread-safe (every write holds one ``threading.Lock``), not shared
between processes (use :class:`~policyengine.budgets.sqlite.SQLiteStore` for that), and
forgotten when the process exits.

Layout, chosen so that a reserve + commit pair touches each bucket once and allocates
little: one mutable *cell* ``[spent, reserved]`` per bucket, keyed like a calendar
:class:`Bucket` (``(budget, subject, window, None)``), and per live reservation the list
of ``(cell, amount)`` it holds, so releasing a hold needs no lookup. Housekeeping
(expiring holds, forgetting finished reservations, idempotency records and the cells of
windows long gone) runs inside the next operation once something is due. Per tenant, a
list of ``(creation microsecond, id)`` in listing order serves ``list_reservations``.
It is built by the first listing, from the reservations kept then (so a store never
listed pays nothing for it, neither the work nor a tracked tuple per reservation for the
GC), and from then on a reserve appends to it; entries of forgotten reservations are
skipped, and dropped once they outnumber the reservations kept.

Finished reservations are kept (for ``retention`` seconds) as one flat tuple of atoms
each, not as :class:`ReservationRecord` / :class:`Line`: CPython's cyclic GC stops
tracking an exact tuple of atoms the first time it looks at it, but never a
``NamedTuple`` instance, and every full collection walks all tracked objects. Keeping
finished reservations as named tuples made GC passes cost more than a tenth of the run
time of a reserve + commit.
"""

from __future__ import annotations

import bisect
import heapq
import threading
from collections import deque
from typing import Any

from policyengine.budgets._options import check_store_options
from policyengine.budgets.ratelimit import MemoryRates, RateKey, RateOutcome, now_micros
from policyengine.budgets.store import (
    ACTIVE,
    OK,
    Bucket,
    Guard,
    IdempotencyRecord,
    Line,
    Outcome,
    ReservationRecord,
    Transaction,
    Usage,
)

__all__ = ["MemoryStore"]

_Key = Any  # (budget, subject, window, None): equal to, and hashed like, a calendar Bucket
_Cell = list[int]  # [spent, reserved]
#: A calendar window is at most a month (31 days, plus a DST hour); cells of windows that
#: started longer ago than this can no longer be asked about.
_CELL_LIFETIME = 32 * 86400
_INF = float("inf")
_STATUS, _EXPIRES = 1, 9  # ReservationRecord fields, at the same places in a frozen one
_LINE_SIZE = len(Line._fields)
_TAIL = len(ReservationRecord._fields) - 15  # grace, priced, capped, overage, note
#: Listing entries at which the per-tenant indexes are compacted (entries of forgotten
#: reservations dropped) once they are twice the reservations kept.
_COMPACT_AT = 1024
_UNUSED = Usage(0, 0)
_new = tuple.__new__  # a record tuple without the NamedTuple __new__ (a Python call)
_heappush = heapq.heappush


def _frozen(rec: ReservationRecord) -> tuple[Any, ...]:
    """``rec`` as one flat tuple of atoms (see the module docstring): the first ten
    fields, committed_amount, committed_unit, finalized_at, whether committed is set, the
    number of lines, every line's fields, then the committed quanta if any. Flat, because
    the GC untracks a tuple only once its items are untracked, and may look at a tuple
    before its items. The last five atoms are grace, priced, capped, overage and note."""
    lines, committed = rec[10], rec[11]  # (by index: a field by name is a slower read)
    flat: list[Any] = [*rec[:10], rec[12], rec[13], rec[14], committed is not None,
                       len(lines)]
    for line in lines:
        flat += line
    if committed is not None:
        flat += committed
    flat += rec[15:]
    return tuple(flat)


def _thawed(rec: tuple[Any, ...]) -> ReservationRecord:
    if type(rec) is not tuple:
        return rec  # type: ignore[return-value]  # live: already a ReservationRecord
    end = 15 + _LINE_SIZE * rec[14]
    lines = tuple(Line._make(rec[i:i + _LINE_SIZE]) for i in range(15, end, _LINE_SIZE))
    committed = rec[end:-_TAIL] if rec[13] else None
    return ReservationRecord._make((*rec[:10], lines, committed, rec[10], rec[11], rec[12],
                                    *rec[-_TAIL:]))


def _idem_thawed(found: tuple[Any, ...]) -> IdempotencyRecord:
    key, fingerprint, expires_at = found[:3]
    return IdempotencyRecord(key, fingerprint, _thawed(found[3:]), expires_at)


class MemoryStore:
    """Thread-safe in-memory budget store.

    ``retention``: seconds a finished (committed, released or expired) reservation and an
    idempotency record are remembered, so that a late commit gets
    ``reservation_final`` / ``reservation_expired`` rather than ``unknown_reservation``,
    and a replay within that time returns the original result.
    """

    def __init__(self, *, retention: float = 86400.0) -> None:
        check_store_options("MemoryStore", retention=retention)
        self.retention = retention
        self._lock = threading.Lock()
        self._cells: dict[_Key, _Cell] = {}
        self._cell_order: deque[tuple[int, _Key]] = deque()  # calendar cells, by window
        # Rolling spend: per (budget, subject), (at, amount) in time order, plus a total.
        self._events: dict[tuple[str, str], deque[tuple[float, int]]] = {}
        self._event_totals: dict[tuple[str, str], int] = {}
        # Live reservations as ReservationRecord, finished ones as _frozen tuples.
        self._records: dict[str, tuple[Any, ...]] = {}
        self._holds: dict[str, list[tuple[_Cell, int]]] = {}  # live reservations' holds
        self._expiries: list[tuple[float, str]] = []  # heap of (expires_at, id)
        # Finished reservations, oldest first (the clock is assumed not to go back; an
        # entry out of order is only forgotten a little late). Two deques of floats and
        # strings rather than one of tuples: nothing here for the cyclic GC to traverse.
        self._purge_times: deque[float] = deque()
        self._purge_ids: deque[str] = deque()
        # key, fingerprint, expires_at, then the result _frozen: one flat tuple.
        self._idem: dict[str, tuple[Any, ...]] = {}
        self._idem_order: deque[tuple[float, str]] = deque()
        # Per tenant ("" for none), every reservation created active, as (creation time
        # in whole microseconds, id) in that order; entries of forgotten reservations
        # are skipped when listing and dropped by _compact. Built by the first listing
        # (_index); until then, the ids of the spends created finished (``record``),
        # which the listing leaves out, are kept in _unlisted instead.
        self._listed: dict[str, list[tuple[int, str]]] = {}
        self._indexed = False
        self._unlisted: set[str] = set()
        self._listed_count = 0
        self._compact_due = _COMPACT_AT
        self._due = _INF  # earliest time any housekeeping is due
        #: Moved (under the lock) by every write and every housekeeping pass, before
        #: anything changes: a bucket read with this value (``usage_seen``) still holds
        #: while it has not moved and housekeeping is not due.
        self.writes = 0
        self._rates = MemoryRates()  # rate limits' GCRA state

    # -- reads -------------------------------------------------------------------------

    @property
    def bucket_count(self) -> int:
        """Calendar-window buckets held now (read-only; for monitoring memory): buckets
        of windows that started over 32 days ago are dropped as writes go on, so this
        stays bounded however long the store runs."""
        return len(self._cells)

    def usage(self, buckets: tuple[Bucket, ...], now: float) -> tuple[Usage, ...]:
        with self._lock:
            if now >= self._due:
                self._sweep(now)
            if len(buckets) == 1 and buckets[0][3] is None:  # one calendar bucket
                cell = self._cells.get(buckets[0])
                return (_new(Usage, (cell[0], cell[1])) if cell is not None else _UNUSED,)
            return tuple(self._usage(b, None) for b in buckets)

    def usage_one(self, bucket: Bucket, now: float) -> tuple[int, int]:
        """(spent, reserved) of one calendar bucket: :meth:`usage` of ``(bucket,)``
        without the tuples (what a budget-checked decision reads). The lock is taken
        without ``with``, which costs more than the read itself."""
        lock = self._lock
        lock.acquire()
        try:
            if now >= self._due:
                self._sweep(now)
            cell = self._cells.get(bucket)
            return (cell[0], cell[1]) if cell is not None else (0, 0)
        finally:
            lock.release()

    def usage_seen(self, bucket: Bucket, now: float) -> tuple[int, float, int, int]:
        """:meth:`usage_one` with what it still holds for: (writes, due, spent,
        reserved). Until :attr:`writes` moves or ``due`` comes, the bucket's spent and
        reserved are these (nothing else changes a bucket), so a read-only check may
        keep them rather than take the lock again."""
        lock = self._lock
        lock.acquire()
        try:
            if now >= self._due:
                self._sweep(now)
            cell = self._cells.get(bucket)
            return ((self.writes, self._due, cell[0], cell[1]) if cell is not None
                    else (self.writes, self._due, 0, 0))
        finally:
            lock.release()

    def get_reservation(self, reservation_id: str) -> ReservationRecord | None:
        rec = self._records.get(reservation_id)
        if type(rec) is tuple:  # finished: stored frozen
            return _thawed(rec)
        return rec  # type: ignore[return-value]  # live (a ReservationRecord) or None

    def get_idempotency(self, key: str, now: float) -> IdempotencyRecord | None:
        found = self._idem.get(key)
        return None if found is None or found[2] <= now else _idem_thawed(found)

    def list_reservations(self, tenant: str, after: str | None, limit: int
                          ) -> list[ReservationRecord]:
        with self._lock:
            if not self._indexed:
                self._index()
            entries = self._listed.get(tenant)
            if not entries:
                return []
            start = 0
            if after is not None:
                stamp, _, rid = after.partition(":")
                start = bisect.bisect_right(entries, (int(stamp), rid))
            out: list[ReservationRecord] = []
            records = self._records
            for i in range(start, len(entries)):
                rec = records.get(entries[i][1])
                if rec is not None:
                    out.append(_thawed(rec))
                    if len(out) >= limit:
                        break
            return out

    def close(self) -> None:
        return None

    def rate_admit(self, keys: tuple[RateKey, ...], now_us: int | None,
                   consume: bool = True) -> RateOutcome:
        """Rate limits (:mod:`policyengine.budgets.ratelimit`): all of ``keys`` admit
        one call and count it, or none does; this host's clock unless ``now_us``."""
        with self._lock:
            return self._rates.admit(keys, now_micros() if now_us is None else now_us,
                                     consume)

    # -- the one write -----------------------------------------------------------------

    def apply(self, tx: Transaction, now: float) -> Outcome:
        guards, rid, created, finalize, extend_to, spends, idem = tx
        with self._lock:
            self.writes += 1  # first: a bucket read before this no longer holds
            if now >= self._due:
                self._sweep(now)
            if idem is not None:
                existing = self._idem.get(idem.key)
                if existing is not None and existing[2] > now:
                    return Outcome(False, "idempotency", idempotency=_idem_thawed(existing))
            own: ReservationRecord | None = None
            if rid is not None:
                stored = self._records.get(rid)
                # A frozen record is finished or was swept as expired; after the clock
                # stepped back it can look active by its time, but its holds are gone.
                if (stored is None or type(stored) is tuple or stored[_STATUS] != ACTIVE
                        or stored[_EXPIRES] <= now):
                    return Outcome(False, "reservation",
                                   reservation=None if stored is None else _thawed(stored))
                own = stored  # type: ignore[assignment]  # live: a ReservationRecord
            cells = self._cells
            if guards:
                own_holds = self._holds.get(own[0], ()) if own is not None else ()
                for guard in guards:
                    bucket = guard[0]
                    if bucket[3] is None and not own_holds:  # a calendar bucket, as it is
                        cell = cells.get(bucket)
                        spent, reserved = (0, 0) if cell is None else cell
                    else:
                        spent, reserved = self._counts(bucket, own_holds)
                    debt_above = guard[3]
                    if (debt_above is not None and spent > debt_above) or (
                        spent + reserved + guard[1] > guard[2]
                    ):
                        return self._refusal(guards, own)
            # Every check passed: apply all effects (nothing below can fail).
            if own is not None:
                if finalize is not None:
                    oid = own[0]
                    holds = self._holds.pop(oid, None)  # _unhold, inlined
                    if holds is not None:
                        for held, amount in holds:
                            held[1] -= amount
                    self._records[oid] = _frozen(finalize)
                    purge = now + self.retention  # _purge_at, inlined
                    self._purge_times.append(purge)
                    self._purge_ids.append(oid)
                    if purge < self._due:
                        self._due = purge
                elif extend_to is not None:
                    self._records[own.id] = own._replace(expires_at=extend_to)
                    self._expire_at(extend_to, own.id)
            if created is not None:
                if created[_STATUS] == ACTIVE:
                    cid = created[0]
                    self._records[cid] = created
                    holds = []
                    for line in created[10]:
                        key = (line[0], line[1], line[2], None)
                        cell = cells.get(key)
                        if cell is None:
                            cell = self._new_cell(key)
                        cell[1] += line[5]
                        holds.append((cell, line[5]))
                    self._holds[cid] = holds
                    expires = created.expires_at  # _expire_at, inlined
                    _heappush(self._expiries, (expires, cid))
                    if expires < self._due:
                        self._due = expires
                    if self._indexed:
                        # The tenant's listing: an append, unless out of order (_list).
                        entry = (int(created[8] * 1e6), cid)
                        entries = self._listed.get(created[7] or "")
                        if entries is not None and entry > entries[-1]:
                            entries.append(entry)
                            self._listed_count += 1
                            if self._listed_count >= self._compact_due:
                                self._compact()
                        else:
                            self._list(created[7] or "", entry)
                else:
                    self._records[created.id] = _frozen(created)
                    self._purge_at(now + self.retention, created.id)
                    if not self._indexed:
                        self._unlisted.add(created.id)
            for spend in spends:
                if spend[3]:  # rolling: an event at now
                    ekey = (spend[0], spend[1])
                    events = self._events.get(ekey)
                    if events is None:
                        events = self._events[ekey] = deque()
                    events.append((now, spend[4]))
                    self._event_totals[ekey] = self._event_totals.get(ekey, 0) + spend[4]
                else:
                    key = (spend[0], spend[1], spend[2], None)
                    cell = cells.get(key)
                    if cell is None:
                        cell = self._new_cell(key)
                    cell[0] += spend[4]
            if idem is not None:
                self._idem[idem.key] = (idem.key, idem.fingerprint, idem.expires_at,
                                        *_frozen(idem.result))
                self._idem_order.append((idem.expires_at, idem.key))
                if idem.expires_at < self._due:
                    self._due = idem.expires_at
            return OK

    # -- internals (lock held) ---------------------------------------------------------

    def _counts(
        self, bucket: Bucket, own_holds: list[tuple[_Cell, int]] | tuple[()]
    ) -> tuple[int, int]:
        """(spent, reserved) of a bucket, leaving out ``own_holds``."""
        budget, subject, _, since = bucket
        cell = self._cells.get(bucket if since is None else (budget, subject, 0, None))
        reserved = cell[1] if cell is not None else 0
        for held, amount in own_holds:
            if held is cell:
                reserved -= amount
        if since is None:
            return (cell[0] if cell is not None else 0), reserved
        return self._rolling_spent(budget, subject, since), reserved

    def _usage(self, bucket: Bucket, own: ReservationRecord | None) -> Usage:
        return Usage(*self._counts(bucket, self._holds.get(own.id, ()) if own else ()))

    def _refusal(self, guards: tuple[Guard, ...], own: ReservationRecord | None) -> Outcome:
        """The outcome of the first guard that fails, with the usage of every guard up to
        it (the slow path; the lock is still held, so the numbers are the ones checked)."""
        usages: list[Usage] = []
        for i, guard in enumerate(guards):
            use = self._usage(guard.bucket, own)
            usages.append(use)
            if guard.debt_above is not None and use.spent > guard.debt_above:
                return Outcome(False, "debt", i, tuple(usages))
            if use.spent + use.reserved + guard.add > guard.ceiling:
                return Outcome(False, "guard", i, tuple(usages))
        raise AssertionError("_refusal called for guards that pass")  # pragma: no cover

    def _rolling_spent(self, budget: str, subject: str, since: float) -> int:
        ekey = (budget, subject)
        events = self._events.get(ekey)
        if not events:
            return 0
        total = self._event_totals[ekey]
        # Forget spend that has left the window (clocks are assumed not to go back).
        while events and events[0][0] <= since:
            total -= events.popleft()[1]
        self._event_totals[ekey] = total
        return total

    def _new_cell(self, key: _Key) -> _Cell:
        cell = self._cells[key] = [0, 0]
        if key[2]:  # a calendar window (rolling cells keep window 0 and are never dropped)
            self._cell_order.append((key[2], key))
            if key[2] + _CELL_LIFETIME < self._due:
                self._due = key[2] + _CELL_LIFETIME
        return cell

    def _list(self, tenant: str, entry: tuple[int, str]) -> None:
        """A tenant's first entry, or one created in the same microsecond as, or a
        clock step behind, the last."""
        entries = self._listed.get(tenant)
        if entries is None:
            self._listed[tenant] = [entry]
        else:
            bisect.insort(entries, entry)
        self._listed_count += 1
        if self._listed_count >= self._compact_due:
            self._compact()

    def _index(self) -> None:
        """Build the listing index from the reservations kept (the first listing)."""
        listed: dict[str, list[tuple[int, str]]] = {}
        unlisted = self._unlisted
        for rid, rec in self._records.items():  # live and frozen alike: tenant at 7,
            if rid not in unlisted:              # created_at at 8
                entries = listed.get(rec[7] or "")
                if entries is None:
                    entries = listed[rec[7] or ""] = []
                entries.append((int(rec[8] * 1e6), rid))
        for entries in listed.values():
            entries.sort()
        self._listed = listed
        self._listed_count = total = sum(len(entries) for entries in listed.values())
        self._compact_due = max(_COMPACT_AT, 2 * total + 1)
        self._unlisted = set()
        self._indexed = True

    def _compact(self) -> None:
        """Drop the listing entries of reservations no longer kept (once they are more
        than twice the reservations kept, so the work is amortised)."""
        records = self._records
        if self._listed_count <= 2 * len(records):
            self._compact_due = max(_COMPACT_AT, 2 * len(records) + 1)
            return
        total = 0
        for tenant in list(self._listed):
            kept = [e for e in self._listed[tenant] if e[1] in records]
            if kept:
                self._listed[tenant] = kept
                total += len(kept)
            else:
                del self._listed[tenant]
        self._listed_count = total
        self._compact_due = max(_COMPACT_AT, 2 * total + 1)

    def _unhold(self, rid: str) -> None:
        holds = self._holds.pop(rid, None)
        if holds is not None:
            for cell, amount in holds:
                cell[1] -= amount

    def _expire_at(self, when: float, rid: str) -> None:
        heapq.heappush(self._expiries, (when, rid))
        if when < self._due:
            self._due = when

    def _purge_at(self, when: float, rid: str) -> None:
        self._purge_times.append(when)
        self._purge_ids.append(rid)
        if when < self._due:
            self._due = when

    def _sweep(self, now: float) -> None:
        self.writes += 1  # expiries release holds; old buckets go
        records, holds = self._records, self._holds
        expiries = self._expiries
        while expiries and expiries[0][0] <= now:
            _, rid = heapq.heappop(expiries)
            rec = records.get(rid)
            # Skip timers of reservations finished, or extended, since they were set.
            if rec is None or rid not in holds or rec[_EXPIRES] > now:
                continue
            self._unhold(rid)
            records[rid] = _frozen(rec)  # type: ignore[arg-type]
            self._purge_times.append(rec[_EXPIRES] + self.retention)
            self._purge_ids.append(rid)
        purge_times, purge_ids = self._purge_times, self._purge_ids
        unlisted = self._unlisted
        while purge_times and purge_times[0] <= now:
            purge_times.popleft()
            rid = purge_ids.popleft()
            rec = records.get(rid)
            if rec is not None and rid not in holds and (
                rec[_STATUS] != ACTIVE or rec[_EXPIRES] + self.retention <= now
            ):
                del records[rid]
                if unlisted:
                    unlisted.discard(rid)
        order = self._idem_order
        while order and order[0][0] <= now:
            _, key = order.popleft()
            idem = self._idem.get(key)
            if idem is not None and idem[2] <= now:
                del self._idem[key]
        cells, cell_order = self._cells, self._cell_order
        while cell_order and cell_order[0][0] + _CELL_LIFETIME <= now:
            _, ckey = cell_order.popleft()
            cell = cells.get(ckey)
            if cell is not None and cell[1] == 0:  # nothing live holds it
                del cells[ckey]
        self._due = min(
            expiries[0][0] if expiries else _INF,
            purge_times[0] if purge_times else _INF,
            order[0][0] if order else _INF,
            cell_order[0][0] + _CELL_LIFETIME if cell_order else _INF,
        )
