"""SQLiteStore waits for another process's write lock itself (short sleeps, up to
``busy_timeout``), answers ``store_unavailable`` when it stays held, and never waits on a
read (WAL)."""

from __future__ import annotations

import sqlite3
import threading
import time
from contextlib import closing
from decimal import Decimal
from pathlib import Path

import pytest

from policyengine.budgets import BudgetSpec, BudgetStoreError, Ledger, SQLiteStore
from policyengine.budgets.sqlite import _is_busy

DAY = BudgetSpec("t.day", ("payments:*",), Decimal(100), "EUR", "day")


def _ledger(path: Path, busy_timeout: float) -> Ledger:
    return Ledger([DAY], SQLiteStore(path, busy_timeout=busy_timeout))


def _hold_write_lock(path: Path) -> sqlite3.Connection:
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # another process's writer, mid-transaction
    return other


def test_a_write_waits_for_the_lock_and_goes_through_when_it_is_released(
        tmp_path: Path) -> None:
    ledger = _ledger(tmp_path / "b.db", busy_timeout=10)
    with closing(_hold_write_lock(tmp_path / "b.db")) as other:
        threading.Timer(0.2, other.execute, ("COMMIT",)).start()
        start = time.monotonic()
        r = ledger.reserve("a", "payments:x", "10", "EUR")
        waited = time.monotonic() - start
    assert 0.15 <= waited < 5
    assert ledger.commit(r.id, "4").status == "committed"
    assert ledger.balances("a")[0].spent == Decimal(4)


def test_a_lock_held_past_busy_timeout_is_store_unavailable(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path / "b.db", busy_timeout=0.3)
    r = ledger.reserve("a", "payments:x", "10", "EUR")
    with closing(_hold_write_lock(tmp_path / "b.db")) as other:
        start = time.monotonic()
        with pytest.raises(BudgetStoreError) as err:
            ledger.commit(r.id, "4")
        waited = time.monotonic() - start
        assert err.value.code == "store_unavailable"
        assert 0.3 <= waited < 5
        # Reads never wait for a writer.
        start = time.monotonic()
        assert ledger.get(r.id).status == "active"
        assert ledger.balances("a")[0].reserved == Decimal(10)
        assert time.monotonic() - start < 0.25
        other.execute("ROLLBACK")
    # Nothing was lost or half done: the commit goes through now.
    assert ledger.commit(r.id, "4").status == "committed"
    assert ledger.balances("a")[0].spent == Decimal(4)


def test_busy_is_told_from_other_errors() -> None:
    locked = sqlite3.OperationalError("database is locked")
    other = sqlite3.OperationalError("no such table: x")
    if hasattr(locked, "sqlite_errorcode"):
        locked.sqlite_errorcode = 5  # type: ignore[attr-defined]
        other.sqlite_errorcode = 1  # type: ignore[attr-defined]
    assert _is_busy(locked)
    assert not _is_busy(other)


def test_sqlites_own_sleeping_busy_handler_is_off(tmp_path: Path) -> None:
    # SQLite's handler sleeps 1, 2, 5 ... ms; the store's own waits are far shorter.
    store = SQLiteStore(tmp_path / "b.db", busy_timeout=7)
    assert store._conn().execute("PRAGMA busy_timeout").fetchone()[0] == 0
    assert store.busy_timeout == 7
