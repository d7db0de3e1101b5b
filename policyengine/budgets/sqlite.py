"""Durable :class:`~policyengine.budgets.store.BudgetStore` on one SQLite file.

Safe across threads and across processes on one host: each thread (and each process
after ``fork``) gets its own connection; every write is one ``BEGIN IMMEDIATE``
transaction (the database write lock is taken before the guards are read, so no two
writers ever interleave check and debit); WAL journal so readers never block the writer;
a busy timeout instead of ``database is locked`` errors.

Layout: one row per bucket holding its ``spent`` and ``reserved`` counters, so a guard is
one primary-key read; one row per reservation, flagged ``held`` while its lines are
counted in ``reserved``, with its tenant and listing key (a partial index serves
:meth:`~SQLiteStore.list_reservations`). Every write first releases the holds of reservations that
expired by its ``now`` (a partial index finds them); a read subtracts them instead, so
expiry is exact without a background sweeper. Amounts are INTEGER quanta (cents,
tokens, micro-credits), never floats.

Durability (``durability=``): what a returned call guarantees. A killed process loses
nothing in every mode (the WAL is written before the call returns); the modes differ in
what survives the *host* losing power or crashing:

* ``"process"`` (default): ``synchronous=NORMAL``, which SQLite recommends with WAL
  (and Rails applies by default since 7.1). No fsync per transaction; the WAL is
  synced at each checkpoint (about every 1,000 pages), so a power loss can lose the
  transactions since the last one, spend included.
* ``"spend"``: a transaction that records spend (``commit``, ``record``) or moves an
  expiry (``extend``) is synced before it returns (``synchronous=FULL``); one that only
  places or gives back holds (``reserve``, ``release``) is not, and becomes durable with
  the next synced transaction of any process, because the WAL is synced in order. One
  fsync per reserve + commit pair.
* ``"full"``: every transaction is synced before it returns. Two fsyncs per pair.

docs/budgets.md has the throughput of each mode.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Literal, TypeVar

from policyengine.budgets._options import check_store_options
from policyengine.budgets.errors import BudgetInputError, BudgetStoreError
from policyengine.budgets.ratelimit import RateKey, RateOutcome, gcra_all, now_micros
from policyengine.budgets.spec import MAX_ROLLING_SECONDS
from policyengine.budgets.store import (
    ACTIVE,
    OK,
    Bucket,
    IdempotencyRecord,
    Outcome,
    RecentReservations,
    ReservationRecord,
    Transaction,
    Usage,
    compact_json,
    json_loads,
    listing_key,
    record_from_json,
    record_to_json,
)

__all__ = ["SQLiteStore"]

Durability = Literal["process", "spend", "full"]

#: ``PRAGMA user_version`` of the layout below; a file with another layout is refused.
SCHEMA_VERSION = 3
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS budget_buckets (
    budget TEXT NOT NULL, subject TEXT NOT NULL, win INTEGER NOT NULL,
    spent INTEGER NOT NULL, reserved INTEGER NOT NULL,
    PRIMARY KEY (budget, subject, win)) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS budget_buckets_by_window ON budget_buckets (win)",
    """CREATE TABLE IF NOT EXISTS budget_events (
    budget TEXT NOT NULL, subject TEXT NOT NULL, at REAL NOT NULL, amount INTEGER NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS budget_events_by_bucket ON budget_events (budget, subject, at)",
    """CREATE TABLE IF NOT EXISTS budget_reservations (
    id TEXT PRIMARY KEY, status TEXT NOT NULL, expires_at REAL NOT NULL,
    held INTEGER NOT NULL, holds TEXT NOT NULL, finished_at REAL, data TEXT NOT NULL,
    tenant TEXT NOT NULL DEFAULT '', listed TEXT)
    WITHOUT ROWID""",
    """CREATE INDEX IF NOT EXISTS budget_reservations_listed
    ON budget_reservations (tenant, listed) WHERE listed IS NOT NULL""",
    """CREATE INDEX IF NOT EXISTS budget_reservations_held
    ON budget_reservations (expires_at) WHERE held = 1""",
    """CREATE INDEX IF NOT EXISTS budget_reservations_finished
    ON budget_reservations (finished_at) WHERE finished_at IS NOT NULL""",
    """CREATE TABLE IF NOT EXISTS budget_idempotency (
    key TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, expires_at REAL NOT NULL,
    result TEXT NOT NULL) WITHOUT ROWID""",
    # Rate limits: the theoretical arrival time of each key (policyengine.budgets.ratelimit).
    # Added to layout 2 without a new version: files written before simply lack it.
    """CREATE TABLE IF NOT EXISTS budget_rates (
    key TEXT PRIMARY KEY, tat_us INTEGER NOT NULL, tat_frac INTEGER NOT NULL) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS budget_rates_by_tat ON budget_rates (tat_us)",
)

_BUCKET = "SELECT spent, reserved FROM budget_buckets WHERE budget = ? AND subject = ? AND win = ?"
_ROLLING = (
    "SELECT COALESCE(SUM(amount), 0) FROM budget_events "
    "WHERE budget = ? AND subject = ? AND at > ?"
)
_EXPIRED = "SELECT id, holds FROM budget_reservations WHERE held = 1 AND expires_at <= ?"
_ADD = (
    "INSERT INTO budget_buckets (budget, subject, win, spent, reserved) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (budget, subject, win) DO UPDATE SET "
    "spent = spent + excluded.spent, reserved = reserved + excluded.reserved"
)
#: An idempotency key claimed unless a live record holds it (then no row changes).
_CLAIM = (
    "INSERT INTO budget_idempotency (key, fingerprint, expires_at, result) "
    "VALUES (?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET fingerprint = excluded.fingerprint, "
    "expires_at = excluded.expires_at, result = excluded.result "
    "WHERE budget_idempotency.expires_at <= ?"
)
#: A calendar window is at most a month; bucket rows of windows that started longer ago
#: than this are never read again.
_BUCKET_LIFETIME = 32 * 86400
_SWEEP_EVERY = 512

_Key = tuple[str, str, int]
_T = TypeVar("_T")

#: Waiting for another process's write lock: SQLite's own busy handler sleeps 1 ms, then
#: 2, 5, 10 ... ms, while a write holds the lock for about 0.1 ms, so two processes
#: writing one file spent much of their time asleep. The store waits itself instead:
#: 50 us, doubling up to 2 ms, until ``busy_timeout``.
_BUSY_FIRST = 0.00005
_BUSY_MOST = 0.002
_SQLITE_BUSY = 5


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    if code is not None:
        return bool(code & 0xFF == _SQLITE_BUSY)
    return str(exc).startswith(("database is locked", "database is busy"))

#: Forks so far in this process's ancestry: a connection opened before a fork must not be
#: used after it. Counting forks spares a getpid() system call per operation.
_forks = [0]


def _count_fork() -> None:
    _forks[0] += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_count_fork)


class SQLiteStore:
    """Budget store in the SQLite database at ``path`` (created if missing).

    >>> store = SQLiteStore(":memory:")   # a private in-memory database, for tests

    ``durability``: ``"process"`` (default), ``"spend"`` or ``"full"``; see the module
    docstring. ``busy_timeout``: seconds a writer waits for the lock before giving up
    with ``store_unavailable``. ``retention``: seconds finished reservations and
    idempotency records are kept. Raises ``BudgetStoreError`` ``store_unavailable`` if
    the file cannot be opened and ``store_incompatible`` if it holds another layout.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        durability: Durability = "process",
        busy_timeout: float = 30.0,
        retention: float = 86400.0,
    ) -> None:
        check_store_options("SQLiteStore", durability=durability, busy_timeout=busy_timeout,
                            retention=retention)
        name = os.fspath(path) if isinstance(path, (str, os.PathLike)) else None
        if not isinstance(name, str) or not name or "\x00" in name:
            raise BudgetInputError("invalid_store_url", "SQLiteStore: the database is a "
                                   "non-empty path (or ':memory:') without a NUL character, "
                                   f"not {_shown(path)}")
        self.path = name
        self.durability = durability
        self.busy_timeout = busy_timeout
        self.retention = retention
        self._local = threading.local()
        # Threads use their own connections; only the shared ":memory:" one needs a lock.
        self._lock: AbstractContextManager[object] = (
            threading.Lock() if self.path == ":memory:" else nullcontext()
        )
        self._shared: sqlite3.Connection | None = None
        self._writes = 0
        self._rate_writes = 0
        self._recent = RecentReservations()
        self._create_schema(self._conn())

    # -- connections -------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path, timeout=self.busy_timeout, isolation_level=None,
                check_same_thread=self.path != ":memory:",
            )
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            if self.path != ":memory:":
                conn.execute("PRAGMA journal_mode = WAL")
            sync = "NORMAL" if self.durability == "process" else "FULL"
            conn.execute(f"PRAGMA synchronous = {sync}")
            # From here on a busy database is waited for by _retrying (see _BUSY_FIRST).
            conn.execute("PRAGMA busy_timeout = 0")
        except sqlite3.Error as exc:
            raise BudgetStoreError(
                "store_unavailable", f"cannot open budget database {self.path!r}: {exc}"
            ) from exc
        return conn

    def _conn(self) -> sqlite3.Connection:
        if self.path == ":memory:":
            # One private database: one connection shared by threads, under _lock.
            if self._shared is None:
                self._shared = self._connect()
            return self._shared
        local = self._local
        conn: sqlite3.Connection | None = getattr(local, "conn", None)
        if conn is None or local.generation != _forks[0]:  # a forked child needs its own
            conn = self._connect()
            local.conn = conn
            local.generation = _forks[0]
            local.synced = True  # synchronous=FULL unless durability is "process"
        return conn

    def _begin(self, conn: sqlite3.Connection, statement: str) -> None:
        """Open a transaction, waiting while another process holds the write lock (the
        first attempt without the retry's closure: the common case)."""
        try:
            conn.execute(statement)
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):
                raise
            self._retrying(lambda: conn.execute(statement))

    def _retrying(self, op: Callable[[], _T]) -> _T:
        """``op()``, run again while the database is busy (another process holds the
        write lock, or recovers the log), for up to ``busy_timeout`` seconds in all."""
        try:
            return op()
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):
                raise
        deadline = time.monotonic() + self.busy_timeout
        pause = _BUSY_FIRST
        while True:
            time.sleep(pause)
            try:
                return op()
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() >= deadline:
                    raise
            pause = min(pause * 2, _BUSY_MOST, max(0.0, deadline - time.monotonic()))

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        try:
            # Processes opening one new file take turns.
            self._retrying(lambda: conn.execute("BEGIN IMMEDIATE"))
            try:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version == 0:
                    old = conn.execute(
                        "SELECT 1 FROM sqlite_master WHERE name = 'budget_holds'"
                    ).fetchone()
                    if old is not None:
                        version = 1  # the first layout, which had no version number
                if version not in (0, SCHEMA_VERSION):
                    raise BudgetStoreError(
                        "store_incompatible",
                        f"budget database {self.path!r} has layout version {version}, this "
                        f"policyengine reads version {SCHEMA_VERSION}: settle or export its "
                        "budgets with the version that wrote it, then start a new file",
                    )
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise BudgetStoreError(
                "store_unavailable", f"cannot open budget database {self.path!r}: {exc}"
            ) from exc

    def close(self) -> None:
        """Close this thread's connection (others close when their threads end)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
        if self._shared is not None:
            self._shared.close()
            self._shared = None

    # -- reads -------------------------------------------------------------------------

    def usage(self, buckets: tuple[Bucket, ...], now: float) -> tuple[Usage, ...]:
        with self._lock:
            conn = self._conn()

            def read() -> tuple[Usage, ...]:
                conn.execute("BEGIN")  # one snapshot for all buckets
                try:
                    # Holds that expired but were not released yet (no write since).
                    stale: dict[_Key, int] = {}
                    for _, holds in conn.execute(_EXPIRED, (now,)):
                        for budget, subject, win, amount in json.loads(holds):
                            key = (budget, subject, win)
                            stale[key] = stale.get(key, 0) + amount
                    return tuple(self._usage(conn, b, stale, []) for b in buckets)
                finally:
                    if conn.in_transaction:
                        conn.execute("COMMIT")

            try:
                return self._retrying(read)
            except sqlite3.Error as exc:
                raise _unavailable(exc) from exc

    def get_reservation(self, reservation_id: str) -> ReservationRecord | None:
        with self._lock:
            conn = self._conn()
            try:
                row = self._retrying(lambda: conn.execute(
                    "SELECT data FROM budget_reservations WHERE id = ?", (reservation_id,)
                ).fetchone())
            except sqlite3.Error as exc:
                raise _unavailable(exc) from exc
        return None if row is None else record_from_json(row[0])

    def get_idempotency(self, key: str, now: float) -> IdempotencyRecord | None:
        with self._lock:
            conn = self._conn()
            try:
                row = self._retrying(lambda: conn.execute(
                    "SELECT fingerprint, expires_at, result FROM budget_idempotency "
                    "WHERE key = ? AND expires_at > ?",
                    (key, now),
                ).fetchone())
            except sqlite3.Error as exc:
                raise _unavailable(exc) from exc
        if row is None:
            return None
        return IdempotencyRecord(key, row[0], record_from_json(row[2]), row[1])

    def list_reservations(self, tenant: str, after: str | None, limit: int
                          ) -> list[ReservationRecord]:
        with self._lock:
            try:
                rows = self._conn().execute(
                    "SELECT data FROM budget_reservations WHERE tenant = ? AND listed > ? "
                    "ORDER BY listed LIMIT ?", (tenant, after or "", limit),
                ).fetchall()
            except sqlite3.Error as exc:
                raise _unavailable(exc) from exc
        return [record_from_json(row[0]) for row in rows]

    # -- the one write -----------------------------------------------------------------

    def apply(self, tx: Transaction, now: float) -> Outcome:
        with self._lock:
            conn = self._conn()
            try:
                if self.durability == "spend" and self.path != ":memory:":
                    self._sync_for(conn, bool(tx.spends) or tx.extend_to is not None)
                self._begin(conn, "BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise _unavailable(exc) from exc
            try:
                outcome = self._apply(conn, tx, now)
                conn.execute("COMMIT" if outcome.ok else "ROLLBACK")
            except BaseException as exc:
                _abort(conn, exc)
                raise
        if outcome.ok:
            self._recent.note(tx)
        elif outcome.reason == "reservation":
            self._recent.forget(tx.require_active)
        return outcome

    def live_reservation(self, reservation_id: str, now: float) -> ReservationRecord | None:
        """This process's last view of a reservation it created, if live by that view
        (no read; ``apply`` re-checks it inside the write: another process sharing the
        file may have finished it)."""
        return self._recent.live(reservation_id, now)

    def rate_admit(self, keys: tuple[RateKey, ...], now_us: int | None,
                   consume: bool = True) -> RateOutcome:
        """Rate limits (:mod:`policyengine.budgets.ratelimit`): inside one write
        transaction, all of ``keys`` admit one call and count it, or none does; this
        host's clock unless ``now_us``."""
        with self._lock:
            conn = self._conn()
            try:
                self._begin(conn, "BEGIN IMMEDIATE" if consume else "BEGIN")
            except sqlite3.Error as exc:
                raise _unavailable(exc) from exc
            try:
                now = now_micros() if now_us is None else now_us

                def state(key: str) -> tuple[int, int]:
                    row = conn.execute("SELECT tat_us, tat_frac FROM budget_rates "
                                       "WHERE key = ?", (key,)).fetchone()
                    return (row[0], row[1]) if row is not None else (0, 0)

                new, index, worst = gcra_all(keys, state, now)
                if index >= 0:
                    conn.execute("ROLLBACK")
                    return RateOutcome(False, index, worst, now)
                if consume:
                    conn.executemany(
                        "INSERT INTO budget_rates (key, tat_us, tat_frac) VALUES (?, ?, ?) "
                        "ON CONFLICT (key) DO UPDATE SET tat_us = excluded.tat_us, "
                        "tat_frac = excluded.tat_frac", new)
                    self._rate_writes += 1
                    if self._rate_writes % _SWEEP_EVERY == 0:  # keys at rest
                        conn.execute("DELETE FROM budget_rates WHERE tat_us < ?", (now,))
                conn.execute("COMMIT")
                return RateOutcome(True, -1, 0, now)
            except BaseException as exc:
                _abort(conn, exc)
                raise

    def _sync_for(self, conn: sqlite3.Connection, synced: bool) -> None:
        """Set ``synchronous`` for the next transaction (outside it, where SQLite allows
        the change), issuing the PRAGMA only when the level changes."""
        if self._local.synced is not synced:
            conn.execute("PRAGMA synchronous = FULL" if synced else "PRAGMA synchronous = NORMAL")
            self._local.synced = synced

    def _apply(self, conn: sqlite3.Connection, tx: Transaction, now: float) -> Outcome:
        ex = conn.execute
        self._writes += 1
        if self._writes % _SWEEP_EVERY == 0:
            self._housekeep(conn, now)
        self._release_expired(conn, now)
        idem = tx.idempotency
        # The record this write stores is also its idempotency record's result: its JSON
        # is made once.
        written = tx.create if tx.create is not None else tx.finalize
        written_json = None if written is None else record_to_json(written)
        if idem is not None:
            # The key is claimed first, in the same statement that finds a live one: a
            # live record is a replay (nothing below runs); otherwise the record is
            # written now and undone with everything else if a check below fails.
            claimed = ex(_CLAIM, (
                idem.key, idem.fingerprint, idem.expires_at,
                written_json if idem.result is written and written_json is not None
                else record_to_json(idem.result), now)).rowcount
            if not claimed:
                row = ex(
                    "SELECT fingerprint, expires_at, result FROM budget_idempotency "
                    "WHERE key = ?", (idem.key,),
                ).fetchone()
                existing = IdempotencyRecord(idem.key, row[0], record_from_json(row[2]), row[1])
                return Outcome(False, "idempotency", idempotency=existing)
        rid = tx.require_active
        own_holds: list[list[Any]] = []  # its holds: [budget, subject, win, amount]
        if rid is not None:
            row = ex(
                "SELECT status, expires_at, held, holds FROM budget_reservations WHERE id = ?",
                (rid,),
            ).fetchone()
            # Not held while unexpired only if another process, its clock ahead of ours,
            # released it as expired: treat it as gone rather than hold it twice or never.
            if row is None or row[0] != ACTIVE or row[1] <= now or not row[2]:
                return Outcome(False, "reservation", reservation=self._record(conn, rid))
            own_holds = json_loads(row[3])
        if tx.guards:
            usages: list[Usage] = []
            for i, guard in enumerate(tx.guards):
                use = self._usage(conn, guard.bucket, None, own_holds)
                usages.append(use)
                if guard.debt_above is not None and use.spent > guard.debt_above:
                    return Outcome(False, "debt", i, tuple(usages))
                if use.spent + use.reserved + guard.add > guard.ceiling:
                    return Outcome(False, "guard", i, tuple(usages))
        # Every check passed: apply all effects. Counter changes are summed per bucket
        # (spent, reserved) and written with one statement.
        deltas: dict[_Key, list[int]] = {}
        if rid is not None:
            if tx.finalize is not None:
                for budget, subject, win, amount in own_holds:
                    _bump(deltas, (budget, subject, win), 0, -amount)
                ex(
                    "UPDATE budget_reservations SET status = ?, held = 0, finished_at = ?, "
                    "data = ? WHERE id = ?",
                    (tx.finalize.status, now, written_json, rid),
                )
            elif tx.extend_to is not None:
                own = self._record(conn, rid)
                assert own is not None  # read above, in this transaction
                extended = own._replace(expires_at=tx.extend_to)
                ex(
                    "UPDATE budget_reservations SET expires_at = ?, data = ? WHERE id = ?",
                    (tx.extend_to, record_to_json(extended), rid),
                )
        created = tx.create
        if created is not None:
            active = created.status == ACTIVE
            holds: list[list[Any]] = [
                [ln.budget, ln.subject, ln.window, ln.amount] for ln in created.lines if ln.amount
            ] if active else []
            ex(
                "INSERT INTO budget_reservations (id, status, expires_at, held, holds, "
                "finished_at, data, tenant, listed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (created.id, created.status, created.expires_at, int(active),
                 compact_json(holds), None if active else now, written_json,
                 created.tenant or "",
                 listing_key(created.created_at, created.id) if active else None),
            )
            for budget, subject, win, amount in holds:
                _bump(deltas, (budget, subject, win), 0, amount)
        for spend in tx.spends:
            if spend.rolling:
                ex(
                    "INSERT INTO budget_events (budget, subject, at, amount) VALUES (?, ?, ?, ?)",
                    (spend.budget, spend.subject, now, spend.amount),
                )
            elif spend.amount:
                _bump(deltas, (spend.budget, spend.subject, spend.window), spend.amount, 0)
        if deltas:
            conn.executemany(_ADD, [(*key, d[0], d[1]) for key, d in deltas.items() if any(d)])
        return OK

    @staticmethod
    def _record(conn: sqlite3.Connection, rid: str) -> ReservationRecord | None:
        row = conn.execute("SELECT data FROM budget_reservations WHERE id = ?", (rid,)).fetchone()
        return None if row is None else record_from_json(row[0])

    @staticmethod
    def _usage(
        conn: sqlite3.Connection,
        bucket: Bucket,
        stale: dict[_Key, int] | None,
        own_holds: list[list[Any]],
    ) -> Usage:
        budget, subject, win, since = bucket
        if since is not None:
            win = 0  # a rolling bucket keeps its holds in window 0 and its spend as events
        row = conn.execute(_BUCKET, (budget, subject, win)).fetchone()
        spent, reserved = (0, 0) if row is None else row
        if stale:
            reserved -= stale.get((budget, subject, win), 0)
        for h_budget, h_subject, h_win, amount in own_holds:
            if h_budget == budget and h_subject == subject and h_win == win:
                reserved -= amount
        if since is not None:
            spent = conn.execute(_ROLLING, (budget, subject, since)).fetchone()[0]
        return Usage(spent, reserved)

    @staticmethod
    def _release_expired(conn: sqlite3.Connection, now: float) -> None:
        """Give back the holds of reservations expired by ``now`` (inside the write)."""
        rows = conn.execute(_EXPIRED, (now,)).fetchall()
        if not rows:
            return
        deltas: dict[_Key, list[int]] = {}
        for _, holds in rows:
            for budget, subject, win, amount in json.loads(holds):
                _bump(deltas, (budget, subject, win), 0, -amount)
        conn.executemany(_ADD, [(*key, d[0], d[1]) for key, d in deltas.items()])
        conn.executemany(
            "UPDATE budget_reservations SET held = 0, finished_at = expires_at WHERE id = ?",
            [(rid,) for rid, _ in rows],
        )

    def _housekeep(self, conn: sqlite3.Connection, now: float) -> None:
        # Forgetting what nobody can ask about any more; correctness never waits for it.
        # Runs inside the caller's write transaction.
        ex = conn.execute
        ex("DELETE FROM budget_events WHERE at < ?", (now - MAX_ROLLING_SECONDS - 60,))
        ex("DELETE FROM budget_reservations WHERE finished_at < ?", (now - self.retention,))
        ex("DELETE FROM budget_idempotency WHERE expires_at <= ?", (now,))
        ex(
            "DELETE FROM budget_buckets WHERE win > 0 AND win < ? AND reserved = 0",
            (now - _BUCKET_LIFETIME,),
        )


def _bump(deltas: dict[_Key, list[int]], key: _Key, spent: int, reserved: int) -> None:
    """Add to a bucket's pending (spent, reserved) change."""
    delta = deltas.get(key)
    if delta is None:
        deltas[key] = [spent, reserved]
    else:
        delta[0] += spent
        delta[1] += reserved


def _unavailable(exc: sqlite3.Error) -> BudgetStoreError:
    return BudgetStoreError("store_unavailable", f"budget database error: {exc}")


def _abort(conn: sqlite3.Connection, exc: BaseException) -> None:
    """Roll back the transaction ``exc`` interrupted (KeyboardInterrupt included: never
    leave one half open); a database error becomes ``store_unavailable``, anything
    else is re-raised by the caller as it was."""
    with contextlib.suppress(sqlite3.Error):
        conn.execute("ROLLBACK")
    if isinstance(exc, sqlite3.Error):
        raise _unavailable(exc) from exc


def _shown(path: object) -> str:
    return repr(path)[:100] if isinstance(path, (str, os.PathLike)) else type(path).__name__
