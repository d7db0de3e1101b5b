"""Store internals that carry a promise: SQLite durability modes and layout versions,
exact expiry without a sweeper, bounded memory, and the ledger's per-subject plan cache."""

from __future__ import annotations

import gc
import sqlite3
from contextlib import closing
from decimal import Decimal
from pathlib import Path

import pytest
from conftest import BUDGET_NOW, DAILY, Clock, make_ledger, ts
from hypothesis import given
from hypothesis import strategies as st

from policyengine.budgets import (
    BudgetExceeded,
    BudgetInputError,
    BudgetSpec,
    BudgetStoreError,
    Ledger,
    MemoryStore,
    ReservationError,
    SQLiteStore,
)
from policyengine.budgets.memory import _frozen, _thawed
from policyengine.budgets.store import Line, ReservationRecord

NOW = BUDGET_NOW
PER_TENANT = BudgetSpec("t.tenant", ("payments:*",), Decimal(50), "EUR", "month",
                        subject="tenant")
CALLS = BudgetSpec("t.calls", ("payments:*",), Decimal(1000), "calls", "minute")
make = make_ledger


# -- SQLite durability -------------------------------------------------------------------


def _sync_levels(store: SQLiteStore, run: object) -> list[tuple[str, str]]:
    """(synchronous level, first statement) of every write transaction ``run`` makes,
    read from the statements the connection executes."""
    conn = store._conn()
    level = {"2": "FULL", "1": "NORMAL"}[str(conn.execute("PRAGMA synchronous").fetchone()[0])]
    seen: list[tuple[str, str]] = []
    pending: list[str] = []

    def trace(sql: str) -> None:
        nonlocal level
        text = sql.strip().upper()
        if text.startswith("PRAGMA SYNCHRONOUS ="):
            level = text.rsplit("=", 1)[1].strip()
        elif text == "BEGIN IMMEDIATE":
            pending.append(level)
        elif pending and not text.startswith(("COMMIT", "ROLLBACK")):
            seen.append((pending.pop(), text.split()[0]))

    conn.set_trace_callback(trace)
    try:
        run()  # type: ignore[operator]
    finally:
        conn.set_trace_callback(None)
    return seen


def _ops(ledger: Ledger) -> None:
    r = ledger.reserve("bot", "payments:x", "5", "EUR")     # holds only
    ledger.commit(r.id, "4")                                   # records spend
    r = ledger.reserve("bot", "payments:x", "5", "EUR")
    ledger.extend(r.id, 120)                                   # moves an expiry
    ledger.release(r.id)                                       # gives holds back
    ledger.record("bot", "payments:x", "1", "EUR")             # records spend


@pytest.mark.parametrize(
    ("durability", "expected"),
    [
        ("process", ["NORMAL"] * 6),
        ("spend", ["NORMAL", "FULL", "NORMAL", "FULL", "NORMAL", "FULL"]),
        ("full", ["FULL"] * 6),
    ],
)
def test_durability_decides_which_transactions_are_synced(
    tmp_path: Path, durability: str, expected: list[str]
) -> None:
    store = SQLiteStore(tmp_path / "d.db", durability=durability)  # type: ignore[arg-type]
    ledger, _ = make(store, DAILY)
    _ops(ledger)  # warm: the first transaction of a connection may set the level
    levels = [level for level, _ in _sync_levels(store, lambda: _ops(ledger))]
    assert levels == expected


def test_default_durability_is_process_and_bad_values_are_refused(tmp_path: Path) -> None:
    assert SQLiteStore(tmp_path / "a.db").durability == "process"
    with pytest.raises(ValueError, match="durability"):
        SQLiteStore(tmp_path / "b.db", durability="sometimes")  # type: ignore[arg-type]


# -- SQLite layout versions --------------------------------------------------------------


def test_a_file_with_another_layout_is_refused_with_a_code(tmp_path: Path) -> None:
    old = tmp_path / "old.db"
    with sqlite3.connect(old) as conn:  # the first layout had a holds table and no version
        conn.execute("CREATE TABLE budget_holds (rid TEXT)")
    with pytest.raises(BudgetStoreError) as info:
        SQLiteStore(old)
    assert info.value.code == "store_incompatible"
    newer = tmp_path / "newer.db"
    with sqlite3.connect(newer) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(BudgetStoreError) as info:
        SQLiteStore(newer)
    assert info.value.code == "store_incompatible" and "99" in str(info.value)


def test_reopening_a_file_keeps_its_data(tmp_path: Path) -> None:
    path = tmp_path / "keep.db"
    ledger, _ = make(SQLiteStore(path), DAILY)
    ledger.record("bot", "payments:x", "7", "EUR")
    again, _ = make(SQLiteStore(path), DAILY)
    assert again.balances("bot")[0].spent == 7


# -- expiry is exact without a sweeper ---------------------------------------------------


def test_expired_holds_stop_counting_before_and_after_any_write(store: object) -> None:
    ledger, clock = make(store, DAILY, CALLS)
    r = ledger.reserve("bot", "payments:x", "60", "EUR", ttl=10)
    assert [b.reserved for b in ledger.balances("bot")] == [60, 1]
    clock.t += 10  # expired; nothing has written since
    assert [b.reserved for b in ledger.balances("bot")] == [0, 0]
    assert ledger.check("bot", "payments:x", "100", "EUR").allowed
    # A write releases the hold once; later reads and writes agree.
    ledger.record("bot", "payments:x", "30", "EUR")
    money, calls = ledger.balances("bot")
    assert (money.spent, money.reserved, calls.reserved) == (Decimal(30), Decimal(0), Decimal(0))
    with pytest.raises(ReservationError) as info:
        ledger.commit(r.id, "1")
    assert info.value.code == "reservation_expired"
    assert ledger.reserve("bot", "payments:x", "70", "EUR").status == "active"
    with pytest.raises(BudgetExceeded) as over:
        ledger.reserve("bot", "payments:x", "0.01", "EUR")
    assert over.value.code == "budget_exceeded"


def test_a_hold_released_by_a_clock_ahead_is_expired_for_a_clock_behind(
    tmp_path: Path,
) -> None:
    path = tmp_path / "skew.db"
    behind, _ = make(SQLiteStore(path), DAILY)
    ahead = Ledger([DAILY], SQLiteStore(path), clock=Clock(NOW + 30))
    r = behind.reserve("bot", "payments:x", "40", "EUR", ttl=20)
    ahead.record("bot", "payments:x", "1", "EUR")  # a write at NOW+30 releases the hold
    with pytest.raises(ReservationError) as info:
        behind.commit(r.id, "40")  # still live at NOW by this clock
    assert info.value.code == "reservation_expired"
    (balance,) = behind.balances("bot")
    # Given back once, never twice.
    assert (balance.spent, balance.reserved) == (Decimal(1), Decimal(0))


# -- memory stays bounded ----------------------------------------------------------------


def test_memory_store_forgets_buckets_of_windows_long_gone() -> None:
    store = MemoryStore(retention=60)
    ledger, clock = make(store, DAILY, CALLS)
    for day in range(40):
        clock.t = NOW + day * 86400
        ledger.record("bot", "payments:x", "1", "EUR")
    # 40 daily and 40 per-minute buckets were written; only the last 32 days' remain.
    assert store.bucket_count <= 2 * 33
    assert ledger.balances("bot")[0].spent == 1  # the current window is intact


def test_memory_store_keeps_finished_reservations_out_of_the_gc() -> None:
    store = MemoryStore()
    ledger, _ = make(store, DAILY, CALLS)
    gc.collect()
    tracked = len(gc.get_objects())
    for _ in range(500):
        small = ledger.reserve("bot", "payments:x", "0.05", "EUR")
        ledger.commit(small.id, "0.04")
    gc.collect()
    assert len(gc.get_objects()) - tracked < 100  # 500 finished, none tracked
    r = ledger.reserve("bot", "payments:x", "5", "EUR")
    done = ledger.commit(r.id, "4.5")
    # ... and they read back whole.
    again = ledger.get(r.id)
    assert again.status == "committed"
    assert again.to_wire() == done.to_wire()
    assert [line.committed for line in again.lines] == [Decimal("4.50"), Decimal(1)]


def test_sqlite_store_forgets_buckets_of_windows_long_gone(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "g.db", retention=60)
    ledger, clock = make(store, DAILY)
    ledger.record("bot", "payments:x", "1", "EUR")
    clock.t = NOW + 40 * 86400
    for _ in range(512):  # housekeeping runs every 512 writes
        ledger.record("bot", "payments:x", "0.01", "EUR")
    with closing(sqlite3.connect(tmp_path / "g.db")) as db:  # the file, as another reader
        rows = db.execute("SELECT win FROM budget_buckets").fetchall()
        held = db.execute("SELECT COUNT(*) FROM budget_reservations").fetchone()[0]
    assert len(rows) == 1 and rows[0][0] > NOW + 39 * 86400
    assert held == 512


# -- the ledger's plan cache -------------------------------------------------------------


def test_windows_roll_over_on_one_ledger(store: object) -> None:
    ledger, clock = make(store, DAILY)
    clock.t = ts("2026-03-10T23:59:59.5Z")
    ledger.record("bot", "payments:x", "100", "EUR")
    assert not ledger.check("bot", "payments:x", "1", "EUR").allowed
    clock.t = ts("2026-03-11T00:00:00Z")
    r = ledger.reserve("bot", "payments:x", "100", "EUR")
    assert r.lines[0].window_start == ts("2026-03-11T00:00:00Z")
    (balance,) = ledger.balances("bot")
    assert (balance.spent, balance.reserved) == (Decimal(0), Decimal(100))


def test_subjects_never_share_a_cached_plan(store: object) -> None:
    ledger, _ = make(store, DAILY, PER_TENANT)
    ledger.record("bot", "payments:x", "50", "EUR", tenant="acme")
    assert not ledger.check("bot", "payments:x", "1", "EUR", tenant="acme").allowed
    assert ledger.check("bot", "payments:x", "1", "EUR", tenant="globex").allowed
    assert ledger.check("other", "payments:x", "50", "EUR", tenant="globex").allowed
    assert not ledger.check("bot", "payments:x", "51", "EUR", tenant="globex").allowed


@pytest.mark.parametrize("principal", [["bot"], {"a": 1}, b"bot", 7, None, ""])
def test_odd_principals_are_refused_not_crashed_on(store: object, principal: object) -> None:
    ledger, _ = make(store, DAILY)
    ledger.check("bot", "payments:x", "1", "EUR")  # a cached plan exists for "bot"
    with pytest.raises(BudgetInputError) as info:
        ledger.reserve(principal, "payments:x", "1", "EUR")  # type: ignore[arg-type]
    assert info.value.code == "invalid_subject"


_atoms = st.one_of(st.none(), st.text(max_size=5))
_lines = st.builds(
    Line, st.text(max_size=5), st.text(max_size=5), st.integers(0, 2**40),
    st.integers(0, 2**40), st.booleans(), st.integers(0, 10**18), _atoms, st.booleans(),
)


@st.composite
def _records(draw: st.DrawFn) -> ReservationRecord:
    lines = tuple(draw(st.lists(_lines, max_size=4)))
    committed = draw(st.one_of(
        st.none(), st.lists(st.integers(0, 10**18), min_size=len(lines), max_size=len(lines))
    ))
    return ReservationRecord(
        draw(st.text(max_size=8)), draw(st.sampled_from(["active", "committed", "released"])),
        draw(st.text(max_size=5)), draw(st.text(max_size=5)), draw(_atoms),
        draw(st.text(max_size=5)), draw(_atoms), draw(_atoms),
        draw(st.floats(0, 2e9)), draw(st.floats(0, 2e9)), lines,
        None if committed is None else tuple(committed), draw(_atoms), draw(_atoms),
        draw(st.one_of(st.none(), st.floats(0, 2e9))), draw(st.floats(0, 60)), draw(_atoms),
        draw(st.booleans()), draw(_atoms), draw(_atoms),
    )


@given(_records())
def test_frozen_records_read_back_exactly(record: ReservationRecord) -> None:
    frozen = _frozen(record)
    assert type(frozen) is tuple and not any(isinstance(x, tuple) for x in frozen)
    thawed = _thawed(frozen)
    assert thawed == record and type(thawed) is ReservationRecord
    assert all(type(line) is Line for line in thawed.lines)
