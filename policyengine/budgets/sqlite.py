"""Durable :class:`~policyengine.budgets.store.BudgetStore` on one SQLite file.

Safe across threads and across processes on one host: each thread (and each process
after ``fork``) gets its own connection; every write is one ``BEGIN IMMEDIATE``
transaction (the database write lock is taken before the guards are read, so no two
writers ever interleave check and debit); WAL journal so readers never block the writer;
a busy timeout instead of ``database is locked`` errors. ``synchronous=FULL`` (default)
makes a returned commit survive power loss; ``NORMAL`` survives a killed process but may
lose the last commits on power loss, and is faster.

Amounts are INTEGER quanta (cents, tokens, micro-credits), never floats.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from contextlib import AbstractContextManager, nullcontext
from typing import Literal

from policyengine.budgets.errors import BudgetStoreError
from policyengine.budgets.spec import MAX_ROLLING_SECONDS
from policyengine.budgets.store import (
    ACTIVE,
    OK,
    Bucket,
    IdempotencyRecord,
    Outcome,
    ReservationRecord,
    Transaction,
    Usage,
    record_from_json,
    record_to_json,
)

__all__ = ["SQLiteStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS budget_spent (
    budget TEXT NOT NULL, subject TEXT NOT NULL, win INTEGER NOT NULL,
    spent INTEGER NOT NULL, PRIMARY KEY (budget, subject, win)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS budget_events (
    budget TEXT NOT NULL, subject TEXT NOT NULL, at REAL NOT NULL, amount INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS budget_events_by_bucket ON budget_events (budget, subject, at);
CREATE TABLE IF NOT EXISTS budget_holds (
    rid TEXT NOT NULL, budget TEXT NOT NULL, subject TEXT NOT NULL, win INTEGER NOT NULL,
    amount INTEGER NOT NULL, expires_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS budget_holds_by_bucket
    ON budget_holds (budget, subject, win, expires_at);
CREATE INDEX IF NOT EXISTS budget_holds_by_rid ON budget_holds (rid);
CREATE INDEX IF NOT EXISTS budget_holds_by_expiry ON budget_holds (expires_at);
CREATE TABLE IF NOT EXISTS budget_reservations (
    id TEXT PRIMARY KEY, status TEXT NOT NULL, expires_at REAL NOT NULL,
    finished_at REAL, data TEXT NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS budget_reservations_by_finish ON budget_reservations (finished_at);
CREATE TABLE IF NOT EXISTS budget_idempotency (
    key TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, expires_at REAL NOT NULL,
    result TEXT NOT NULL) WITHOUT ROWID;
"""

_SPENT = "SELECT spent FROM budget_spent WHERE budget = ? AND subject = ? AND win = ?"
_ROLLING = (
    "SELECT COALESCE(SUM(amount), 0) FROM budget_events "
    "WHERE budget = ? AND subject = ? AND at > ?"
)
_RESERVED = (
    "SELECT COALESCE(SUM(amount), 0) FROM budget_holds "
    "WHERE budget = ? AND subject = ? AND win = ? AND expires_at > ? AND rid != ?"
)
_SWEEP_EVERY = 512


class SQLiteStore:
    """Budget store in the SQLite database at ``path`` (created if missing).

    >>> store = SQLiteStore(":memory:")   # a private in-memory database, for tests

    ``busy_timeout``: seconds a writer waits for the lock before giving up with
    ``store_unavailable``. ``retention``: seconds finished reservations and idempotency
    records are kept.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = 30.0,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
        retention: float = 86400.0,
    ) -> None:
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError("synchronous must be 'FULL' or 'NORMAL'")
        self.path = os.fspath(path)
        self.busy_timeout = busy_timeout
        self.synchronous = synchronous
        self.retention = retention
        self._local = threading.local()
        # Threads use their own connections; only the shared ":memory:" one needs a lock.
        self._lock: AbstractContextManager[object] = (
            threading.Lock() if self.path == ":memory:" else nullcontext()
        )
        self._shared: sqlite3.Connection | None = None
        self._writes = 0
        conn = self._conn()
        conn.executescript(_SCHEMA)

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
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
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
        if conn is None or local.pid != os.getpid():  # a forked child needs its own
            conn = self._connect()
            local.conn = conn
            local.pid = os.getpid()
        return conn

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
            try:
                conn.execute("BEGIN")  # one snapshot for all buckets
                try:
                    return tuple(self._usage(conn, b, now, "") for b in buckets)
                finally:
                    conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise _unavailable(exc) from exc

    def get_reservation(self, reservation_id: str) -> ReservationRecord | None:
        with self._lock:
            try:
                row = self._conn().execute(
                    "SELECT data FROM budget_reservations WHERE id = ?", (reservation_id,)
                ).fetchone()
            except sqlite3.Error as exc:
                raise _unavailable(exc) from exc
        return None if row is None else record_from_json(row[0])

    def get_idempotency(self, key: str, now: float) -> IdempotencyRecord | None:
        with self._lock:
            try:
                row = self._conn().execute(
                    "SELECT fingerprint, expires_at, result FROM budget_idempotency "
                    "WHERE key = ? AND expires_at > ?",
                    (key, now),
                ).fetchone()
            except sqlite3.Error as exc:
                raise _unavailable(exc) from exc
        if row is None:
            return None
        return IdempotencyRecord(key, row[0], record_from_json(row[2]), row[1])

    # -- the one write -----------------------------------------------------------------

    def apply(self, tx: Transaction, now: float) -> Outcome:
        with self._lock:
            conn = self._conn()
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise _unavailable(exc) from exc
            try:
                outcome = self._apply(conn, tx, now)
                conn.execute("COMMIT" if outcome.ok else "ROLLBACK")
                return outcome
            except BaseException as exc:
                # Includes KeyboardInterrupt: never leave a transaction half open.
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise _unavailable(exc) from exc
                raise

    def _apply(self, conn: sqlite3.Connection, tx: Transaction, now: float) -> Outcome:
        ex = conn.execute
        self._writes += 1
        if self._writes % _SWEEP_EVERY == 0:
            self._sweep(conn, now)
        idem = tx.idempotency
        if idem is not None:
            row = ex(
                "SELECT fingerprint, expires_at, result FROM budget_idempotency "
                "WHERE key = ? AND expires_at > ?",
                (idem.key, now),
            ).fetchone()
            if row is not None:
                existing = IdempotencyRecord(idem.key, row[0], record_from_json(row[2]), row[1])
                return Outcome(False, "idempotency", idempotency=existing)
        rid = tx.require_active
        own_id = ""
        if rid is not None:
            row = ex(
                "SELECT status, expires_at, data FROM budget_reservations WHERE id = ?", (rid,)
            ).fetchone()
            if row is None or row[0] != ACTIVE or row[1] <= now:
                own = None if row is None else record_from_json(row[2])
                return Outcome(False, "reservation", reservation=own)
            own_id = rid
        if tx.guards:
            usages: list[Usage] = []
            for i, guard in enumerate(tx.guards):
                use = self._usage(conn, guard.bucket, now, own_id)
                usages.append(use)
                if guard.debt_above is not None and use.spent > guard.debt_above:
                    return Outcome(False, "debt", i, tuple(usages))
                if use.spent + use.reserved + guard.add > guard.ceiling:
                    return Outcome(False, "guard", i, tuple(usages))
        if rid is not None:
            if tx.finalize is not None:
                ex("DELETE FROM budget_holds WHERE rid = ?", (rid,))
                ex(
                    "UPDATE budget_reservations SET status = ?, finished_at = ?, data = ? "
                    "WHERE id = ?",
                    (tx.finalize.status, now, record_to_json(tx.finalize), rid),
                )
            elif tx.extend_to is not None:
                ex("UPDATE budget_holds SET expires_at = ? WHERE rid = ?", (tx.extend_to, rid))
                row = ex("SELECT data FROM budget_reservations WHERE id = ?", (rid,)).fetchone()
                extended = record_from_json(row[0])._replace(expires_at=tx.extend_to)
                ex(
                    "UPDATE budget_reservations SET expires_at = ?, data = ? WHERE id = ?",
                    (tx.extend_to, record_to_json(extended), rid),
                )
        created = tx.create
        if created is not None:
            active = created.status == ACTIVE
            ex(
                "INSERT INTO budget_reservations (id, status, expires_at, finished_at, data) "
                "VALUES (?, ?, ?, ?, ?)",
                (created.id, created.status, created.expires_at, None if active else now,
                 record_to_json(created)),
            )
            if active and created.lines:
                conn.executemany(
                    "INSERT INTO budget_holds (rid, budget, subject, win, amount, expires_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    [
                        (created.id, ln.budget, ln.subject, ln.window, ln.amount,
                         created.expires_at)
                        for ln in created.lines
                    ],
                )
        for spend in tx.spends:
            if spend.rolling:
                ex(
                    "INSERT INTO budget_events (budget, subject, at, amount) VALUES (?, ?, ?, ?)",
                    (spend.budget, spend.subject, now, spend.amount),
                )
            else:
                ex(
                    "INSERT INTO budget_spent (budget, subject, win, spent) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (budget, subject, win) "
                    "DO UPDATE SET spent = spent + excluded.spent",
                    (spend.budget, spend.subject, spend.window, spend.amount),
                )
        if idem is not None:
            ex(
                "INSERT OR REPLACE INTO budget_idempotency (key, fingerprint, expires_at, result) "
                "VALUES (?, ?, ?, ?)",
                (idem.key, idem.fingerprint, idem.expires_at, record_to_json(idem.result)),
            )
        return OK

    @staticmethod
    def _usage(conn: sqlite3.Connection, bucket: Bucket, now: float, own_id: str) -> Usage:
        budget, subject, win, since = bucket
        reserved = conn.execute(_RESERVED, (budget, subject, win, now, own_id)).fetchone()[0]
        if since is None:
            row = conn.execute(_SPENT, (budget, subject, win)).fetchone()
            return Usage(0 if row is None else row[0], reserved)
        spent = conn.execute(_ROLLING, (budget, subject, since)).fetchone()[0]
        return Usage(spent, reserved)

    def _sweep(self, conn: sqlite3.Connection, now: float) -> None:
        # Optional housekeeping: expiry is a time comparison, so correctness never waits
        # for this. Runs inside the caller's write transaction.
        ex = conn.execute
        ex("DELETE FROM budget_holds WHERE expires_at <= ?", (now,))
        ex("DELETE FROM budget_events WHERE at < ?", (now - MAX_ROLLING_SECONDS - 60,))
        old = now - self.retention
        ex("DELETE FROM budget_reservations WHERE finished_at < ?", (old,))
        ex(
            "DELETE FROM budget_reservations WHERE status = ? AND expires_at < ?",
            (ACTIVE, old),
        )
        ex("DELETE FROM budget_idempotency WHERE expires_at <= ?", (now,))


def _unavailable(exc: sqlite3.Error) -> BudgetStoreError:
    return BudgetStoreError("store_unavailable", f"budget database error: {exc}")
