"""In-process :class:`~policyengine.budgets.store.BudgetStore`: dicts behind one lock.

The default store. Thread-safe (every call holds one ``threading.Lock``), not shared
between processes (use :class:`~policyengine.budgets.sqlite.SQLiteStore` for that), and
forgotten when the process exits.
"""

from __future__ import annotations

import heapq
import threading
from collections import deque

from policyengine.budgets.store import (
    ACTIVE,
    OK,
    Bucket,
    IdempotencyRecord,
    Outcome,
    ReservationRecord,
    Transaction,
    Usage,
)

__all__ = ["MemoryStore"]

_Key = tuple[str, str, int]
_EXPIRE, _PURGE = 0, 1


class MemoryStore:
    """Thread-safe in-memory budget store.

    ``retention``: seconds a finished (committed, released or expired) reservation and an
    idempotency record are remembered, so that a late commit gets
    ``reservation_final`` / ``reservation_expired`` rather than ``unknown_reservation``,
    and a replay within that time returns the original result.
    """

    def __init__(self, *, retention: float = 86400.0) -> None:
        self.retention = retention
        self._lock = threading.Lock()
        self._spent: dict[_Key, int] = {}
        self._reserved: dict[_Key, int] = {}
        # Rolling spend: per (budget, subject), (at, amount) in time order, plus a total.
        self._events: dict[tuple[str, str], deque[tuple[float, int]]] = {}
        self._event_totals: dict[tuple[str, str], int] = {}
        self._records: dict[str, ReservationRecord] = {}
        self._held: set[str] = set()  # ids whose lines are counted in _reserved
        self._timers: list[tuple[float, int, str]] = []  # heap of (when, kind, id)
        self._idem: dict[str, IdempotencyRecord] = {}
        self._idem_order: deque[tuple[float, str]] = deque()

    # -- reads -------------------------------------------------------------------------

    def usage(self, buckets: tuple[Bucket, ...], now: float) -> tuple[Usage, ...]:
        with self._lock:
            self._sweep(now)
            return tuple(self._usage(b, None) for b in buckets)

    def get_reservation(self, reservation_id: str) -> ReservationRecord | None:
        return self._records.get(reservation_id)

    def get_idempotency(self, key: str, now: float) -> IdempotencyRecord | None:
        rec = self._idem.get(key)
        return rec if rec is not None and rec.expires_at > now else None

    def close(self) -> None:
        return None

    # -- the one write -----------------------------------------------------------------

    def apply(self, tx: Transaction, now: float) -> Outcome:
        with self._lock:
            self._sweep(now)
            if tx.idempotency is not None:
                existing = self._idem.get(tx.idempotency.key)
                if existing is not None and existing.expires_at > now:
                    return Outcome(False, "idempotency", idempotency=existing)
            own: ReservationRecord | None = None
            rid = tx.require_active
            if rid is not None:
                own = self._records.get(rid)
                if own is None or own.status != ACTIVE or own.expires_at <= now:
                    return Outcome(False, "reservation", reservation=own)
            if tx.guards:
                usages: list[Usage] = []
                for i, guard in enumerate(tx.guards):
                    use = self._usage(guard.bucket, own)
                    usages.append(use)
                    if guard.debt_above is not None and use.spent > guard.debt_above:
                        return Outcome(False, "debt", i, tuple(usages))
                    if use.spent + use.reserved + guard.add > guard.ceiling:
                        return Outcome(False, "guard", i, tuple(usages))
            # Every check passed: apply all effects (nothing below can fail).
            if own is not None:
                if tx.finalize is not None:
                    self._unhold(own)
                    self._records[own.id] = tx.finalize
                    heapq.heappush(self._timers, (now + self.retention, _PURGE, own.id))
                elif tx.extend_to is not None:
                    self._records[own.id] = own._replace(expires_at=tx.extend_to)
                    heapq.heappush(self._timers, (tx.extend_to, _EXPIRE, own.id))
            created = tx.create
            if created is not None:
                self._records[created.id] = created
                if created.status == ACTIVE:
                    reserved = self._reserved
                    for line in created.lines:
                        key = (line.budget, line.subject, line.window)
                        reserved[key] = reserved.get(key, 0) + line.amount
                    self._held.add(created.id)
                    heapq.heappush(self._timers, (created.expires_at, _EXPIRE, created.id))
                else:
                    heapq.heappush(self._timers, (now + self.retention, _PURGE, created.id))
            for spend in tx.spends:
                if spend.rolling:
                    ekey = (spend.budget, spend.subject)
                    events = self._events.get(ekey)
                    if events is None:
                        events = self._events[ekey] = deque()
                    events.append((now, spend.amount))
                    self._event_totals[ekey] = self._event_totals.get(ekey, 0) + spend.amount
                else:
                    key = (spend.budget, spend.subject, spend.window)
                    self._spent[key] = self._spent.get(key, 0) + spend.amount
            if tx.idempotency is not None:
                self._idem[tx.idempotency.key] = tx.idempotency
                self._idem_order.append((tx.idempotency.expires_at, tx.idempotency.key))
            return OK

    # -- internals (lock held) ---------------------------------------------------------

    def _usage(self, bucket: Bucket, own: ReservationRecord | None) -> Usage:
        key = (bucket.budget, bucket.subject, bucket.window)
        reserved = self._reserved.get(key, 0)
        if own is not None:
            for line in own.lines:
                if line.budget == bucket.budget and line.subject == bucket.subject and (
                    line.window == bucket.window
                ):
                    reserved -= line.amount
        since = bucket.since
        if since is None:
            return Usage(self._spent.get(key, 0), reserved)
        ekey = (bucket.budget, bucket.subject)
        events = self._events.get(ekey)
        if not events:
            return Usage(0, reserved)
        total = self._event_totals[ekey]
        # Forget spend that has left the window (clocks are assumed not to go back).
        while events and events[0][0] <= since:
            total -= events.popleft()[1]
        self._event_totals[ekey] = total
        return Usage(total, reserved)

    def _unhold(self, record: ReservationRecord) -> None:
        if record.id not in self._held:
            return
        self._held.discard(record.id)
        reserved = self._reserved
        for line in record.lines:
            key = (line.budget, line.subject, line.window)
            # A zero-amount line never created an entry (nothing was held for it).
            left = reserved.get(key, 0) - line.amount
            if left > 0:
                reserved[key] = left
            else:
                reserved.pop(key, None)

    def _sweep(self, now: float) -> None:
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, kind, rid = heapq.heappop(timers)
            rec = self._records.get(rid)
            if rec is None:
                continue
            if kind == _EXPIRE:
                if rec.status != ACTIVE or rec.id not in self._held:
                    continue
                if rec.expires_at > now:  # extended since this timer was set
                    continue
                self._unhold(rec)
                heapq.heappush(timers, (rec.expires_at + self.retention, _PURGE, rid))
            elif (
                rec.status != ACTIVE or rec.expires_at + self.retention <= now
            ) and rec.id not in self._held:
                del self._records[rid]
        order = self._idem_order
        while order and order[0][0] <= now:
            _, key = order.popleft()
            idem = self._idem.get(key)
            if idem is not None and idem.expires_at <= now:
                del self._idem[key]
