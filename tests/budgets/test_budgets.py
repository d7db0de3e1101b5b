"""Budgets: specs, windows, the ledger's rules and both stores (behaviour, not internals)."""

from __future__ import annotations

import threading
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from conftest import BUDGET_NOW, DAILY, Clock, make_ledger, ts

from policyengine.budgets import (
    BudgetError,
    BudgetExceeded,
    BudgetInputError,
    BudgetSpec,
    IdempotencyMismatch,
    Ledger,
    MemoryStore,
    ReservationError,
    SQLiteStore,
    Window,
)
from policyengine.money import StaticRates


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


NOW = BUDGET_NOW
make = make_ledger


# -- specs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"limit": Decimal(-1)},
        {"limit": Decimal("NaN")},
        {"limit": Decimal("1.001")},
        {"unit": "BTC"},
        {"window": "fortnight"},
        {"window": "rolling"},
        {"window": "rolling", "rolling_seconds": 0},
        {"window": "rolling", "rolling_seconds": 32 * 86400},
        {"rolling_seconds": 60},
        {"subject": "user"},
        {"tz": "Mars/Olympus"},
        {"patterns": ()},
        {"patterns": ("pay::x",)},
        {"id": ""},
        # A limit or overdraft out of the range of amounts: 1E+998 raised decimal.Overflow
        # (no budget error), and 1E-100000 underflowed to whole quanta and was accepted.
        {"limit": Decimal("1E+998")},
        {"limit": Decimal("1E+100000")},
        {"limit": 10**1000},
        {"limit": Decimal("1E-100000")},
        {"limit": Decimal("1E-65")},
        {"overdraft_limit": Decimal("1E+998")},
        {"overdraft_limit": Decimal("1E-100000")},
        # A string follows the grammar of amounts (docs/money.md), as a policy's does.
        {"limit": " 10"}, {"limit": "1_0"}, {"limit": "\uff11\uff10"}, {"limit": "1e3"},
        {"limit": "+5"}, {"limit": ".5"}, {"limit": "10."}, {"overdraft_limit": "5 "},
    ],
)
def test_invalid_spec_is_refused_with_a_code(kwargs: dict[str, object]) -> None:
    base: dict[str, object] = {"id": "x", "patterns": ("a:*",), "limit": Decimal(1),
                               "unit": "EUR", "window": "day"}
    base.update(kwargs)
    with pytest.raises(BudgetInputError) as info:
        BudgetSpec(**base)  # type: ignore[arg-type]
    assert info.value.code == "invalid_budget"


def test_a_limit_at_the_edges_of_the_range_is_kept_exactly() -> None:
    for limit in ("0.01", "10000000000000000", Decimal("1E+16"), 10**16,
                  Decimal("1." + "0" * 200)):
        spec = BudgetSpec("x", ("a:*",), limit, "EUR", "day")  # type: ignore[arg-type]
        assert spec.limit == Decimal(limit)


def test_spec_normalises_units_and_amounts() -> None:
    spec = BudgetSpec("x", ["a:*"], "10", "usd", "day")  # type: ignore[arg-type]
    assert (spec.unit, spec.limit, spec.patterns) == ("USD", Decimal(10), ("a:*",))
    assert spec.covers("a:b") and not spec.covers("ab:c")


def test_duplicate_budget_ids_are_refused() -> None:
    with pytest.raises(BudgetInputError):
        Ledger([DAILY, DAILY])


# -- windows -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "tz", "now", "start", "end"),
    [
        ("day", "Europe/Paris", "2026-03-29T12:00:00Z", "2026-03-28T23:00:00Z", "2026-03-29T22:00:00Z"),  # noqa: E501
        ("day", "Europe/Paris", "2026-10-25T12:00:00Z", "2026-10-24T22:00:00Z", "2026-10-25T23:00:00Z"),  # noqa: E501
        ("day", "UTC", "2026-03-10T23:59:59Z", "2026-03-10T00:00:00Z", "2026-03-11T00:00:00Z"),
        ("week", "UTC", "2026-03-29T23:59:59Z", "2026-03-23T00:00:00Z", "2026-03-30T00:00:00Z"),
        ("week", "UTC", "2026-03-30T00:00:00Z", "2026-03-30T00:00:00Z", "2026-04-06T00:00:00Z"),
        ("week", "Europe/Paris", "2026-03-29T12:00:00Z", "2026-03-22T23:00:00Z", "2026-03-29T22:00:00Z"),  # noqa: E501
        ("month", "UTC", "2026-02-28T23:59:59Z", "2026-02-01T00:00:00Z", "2026-03-01T00:00:00Z"),
        ("month", "UTC", "2028-02-29T12:00:00Z", "2028-02-01T00:00:00Z", "2028-03-01T00:00:00Z"),
        ("month", "UTC", "2026-12-31T23:59:59Z", "2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z"),
        ("month", "Europe/Paris", "2026-10-31T23:30:00Z", "2026-10-31T23:00:00Z", "2026-11-30T23:00:00Z"),  # noqa: E501
        ("hour", "Europe/Paris", "2026-10-25T00:30:00Z", "2026-10-25T00:00:00Z", "2026-10-25T01:00:00Z"),  # noqa: E501
        ("hour", "Europe/Paris", "2026-10-25T01:30:00Z", "2026-10-25T01:00:00Z", "2026-10-25T02:00:00Z"),  # noqa: E501
        ("hour", "Asia/Kolkata", "2026-03-10T12:00:00Z", "2026-03-10T11:30:00Z", "2026-03-10T12:30:00Z"),  # noqa: E501
        ("minute", "UTC", "2026-03-10T12:00:59Z", "2026-03-10T12:00:00Z", "2026-03-10T12:01:00Z"),
        # Lord Howe Island's DST moves the clock by half an hour, so hour boundaries move
        # from :00 to :30 UTC and back: the hour across the change lasts 90 minutes
        # (it used to overlap the one before, [14:00, 15:00) then [14:30, 15:30)).
        ("hour", "Australia/Lord_Howe", "2026-04-04T13:59:59Z", "2026-04-04T13:00:00Z", "2026-04-04T14:00:00Z"),  # noqa: E501
        ("hour", "Australia/Lord_Howe", "2026-04-04T14:00:00Z", "2026-04-04T14:00:00Z", "2026-04-04T15:30:00Z"),  # noqa: E501
        ("hour", "Australia/Lord_Howe", "2026-04-04T15:00:00Z", "2026-04-04T14:00:00Z", "2026-04-04T15:30:00Z"),  # noqa: E501
        ("hour", "Australia/Lord_Howe", "2026-04-04T15:29:59Z", "2026-04-04T14:00:00Z", "2026-04-04T15:30:00Z"),  # noqa: E501
        ("hour", "Australia/Lord_Howe", "2026-04-04T15:30:00Z", "2026-04-04T15:30:00Z", "2026-04-04T16:30:00Z"),  # noqa: E501
        ("hour", "Australia/Lord_Howe", "2026-10-03T15:45:00Z", "2026-10-03T14:30:00Z", "2026-10-03T16:00:00Z"),  # noqa: E501
        ("minute", "Australia/Lord_Howe", "2026-04-04T15:00:00Z", "2026-04-04T15:00:00Z", "2026-04-04T15:01:00Z"),  # noqa: E501
        # Sao Paulo 2018: DST began at midnight, so 00:00 never happened; the day starts
        # at the transition instant.
        ("day", "America/Sao_Paulo", "2018-11-04T12:00:00Z", "2018-11-04T03:00:00Z", "2018-11-05T02:00:00Z"),  # noqa: E501
    ],
)
def test_calendar_windows(kind: str, tz: str, now: str, start: str, end: str) -> None:
    s, e = Window(kind, None, tz).bounds(ts(now))
    assert (iso(s), iso(e)) == (start, end)


def test_windows_are_contiguous_across_a_year_in_paris() -> None:
    for kind in ("hour", "day", "week", "month"):
        w = Window(kind, None, "Europe/Paris")
        t = ts("2026-01-01T00:00:00Z")
        start, end = w.bounds(t)
        while end < ts("2027-01-01T00:00:00Z"):
            nxt = w.bounds(end)
            assert nxt[0] == end and nxt[1] > end
            if kind == "day":
                assert end - start in (82800, 86400, 90000)
            start, end = nxt


@pytest.mark.parametrize("tz", ["Australia/Lord_Howe", "Europe/Paris", "Asia/Kolkata",
                                "America/St_Johns", "UTC"])
@pytest.mark.parametrize("kind", ["minute", "hour"])
def test_fixed_windows_are_contiguous_through_dst_changes(kind: str, tz: str) -> None:
    """Around each of a year's offset changes, every window starts where the one before
    ends, contains the instants it is asked for, and is never shorter than its size;
    exactly its size unless the change moved its boundaries (a half-hour DST)."""
    size = {"minute": 60, "hour": 3600}[kind]
    zone = Window(kind, None, tz).zone
    changes = [t for t in range(int(ts("2026-01-01T00:00:00Z")),
                                int(ts("2027-01-01T00:00:00Z")), 900)
               if datetime.fromtimestamp(t, zone).utcoffset()
               != datetime.fromtimestamp(t + 900, zone).utcoffset()] or [int(NOW)]
    for change in changes:
        w = Window(kind, None, tz)
        start, end = w.bounds(change - 3 * 3600)
        while end < change + 3 * 3600:
            for probe in (start, (start + end) / 2, end - 0.001):
                assert Window(kind, None, tz).bounds(probe) == (start, end)
            nxt = w.bounds(end)
            assert nxt[0] == end and nxt[1] - nxt[0] >= size
            start, end = nxt
        moved = abs(datetime.fromtimestamp(change + 900, zone).utcoffset()  # type: ignore[operator]
                    - datetime.fromtimestamp(change, zone).utcoffset()).total_seconds()
        assert tz == "Australia/Lord_Howe" or moved % size == 0


def test_an_hour_budget_on_lord_howe_island_gets_no_extra_window() -> None:
    """Half an hour after DST ends on Lord Howe Island the limit spent at 14:10 UTC
    still counts: the hour runs [14:00, 15:30) UTC (it used to restart at 15:00 as a
    window [14:30, 15:30) overlapping the one before, a second limit within the hour)."""
    spec = BudgetSpec("t.hourly", ("payments:*",), Decimal(10), "EUR", "hour",
                      tz="Australia/Lord_Howe")
    clock = Clock(ts("2026-04-04T14:10:00Z"))
    ledger = Ledger([spec], MemoryStore(), clock=clock)
    ledger.record("bot", "payments:send", "10", "EUR")
    clock.t = ts("2026-04-04T15:05:00Z")  # 01:35 local, after the change
    assert ledger.check("bot", "payments:send", "1", "EUR").code == "budget_exceeded"
    clock.t = ts("2026-04-04T15:30:00Z")  # 02:00 local: the next hour
    assert ledger.check("bot", "payments:send", "10", "EUR").code is None


# -- ledger ------------------------------------------------------------------------------


def test_reservation_ids_sort_by_creation_and_stay_unguessable(store: object) -> None:
    """An id begins with the ledger's time in milliseconds (12 hex digits), so ids sort by
    creation and a store's index on them takes each new one at its right edge; 96 random
    bits follow, so ids made in one millisecond, or by two processes, still differ and
    none can be guessed from another."""
    ledger, clock = make(store, DAILY)
    steps = (0.0, 0.0, 0.0004, 0.001, 2.5, 3600.0)
    ids = []
    for step in steps:
        clock.t = NOW + step
        ids.append(ledger.reserve("bot", "payments:refund", "1", "EUR").id)
    clock.t = NOW + 7200
    ids.append(ledger.record("bot", "payments:refund", "1", "EUR").id)
    times = [*steps, 7200.0]
    assert [i[4:16] for i in ids] == [f"{int((NOW + s) * 1000):012x}" for s in times]
    assert all(len(i) == 40 and int(i[4:], 16) >= 0 for i in ids)
    assert len({i[16:] for i in ids}) == len(ids)  # the random part never repeats
    assert max(ids[:3]) < ids[3] < ids[4] < ids[5] < ids[6]  # the first three: one ms


def test_reservation_reports_what_it_holds(store: object) -> None:
    rates = StaticRates("EUR", {"USD": "0.92"})
    ledger, _ = make(store, DAILY, rates=rates)
    r = ledger.reserve("bot", "payments:refund", "10", "USD", ttl=90, acting_for="ann")
    assert r.id.startswith("rsv_") and len(r.id) > 20
    assert (r.status, r.amount, r.unit, r.acting_for, r.expires_at) == (
        "active", Decimal("10.00"), "USD", "ann", NOW + 90)
    (line,) = r.lines
    assert (line.budget, line.subject, line.amount, line.rate) == (
        "t.daily", "bot", Decimal("9.20"), Decimal("0.92"))
    assert ledger.get(r.id).status == "active"
    wire = r.to_wire()
    assert wire["lines"][0]["amount"] == "9.20" and wire["expiresAt"] == "2026-03-10T12:01:30Z"


def test_budget_exceeded_carries_wire_details(store: object) -> None:
    ledger, _ = make(store, DAILY)
    ledger.record("bot", "payments:refund", "70", "EUR")
    ledger.reserve("bot", "payments:refund", "20", "EUR")
    with pytest.raises(BudgetExceeded) as info:
        ledger.reserve("bot", "payments:refund", "15", "EUR")
    assert info.value.code == "budget_exceeded"
    assert info.value.details == {
        "budget": "t.daily", "subject": "bot", "limit": "100.00", "spent": "70.00",
        "reserved": "20.00", "debt": "0.00", "attempted": "15.00", "projected": "105.00",
        "remaining": "10.00", "currency": "EUR", "windowEnd": "2026-03-11T00:00:00Z",
    }
    assert "remaining 10.00" in str(info.value)


def test_check_reports_tightest_and_changes_nothing(store: object) -> None:
    calls = BudgetSpec("t.calls", ("payments:*",), Decimal(2), "calls", "minute")
    ledger, _ = make(store, DAILY, calls)
    ledger.record("bot", "payments:refund", "10", "EUR")
    before = ledger.balances("bot")
    result = ledger.check("bot", "payments:refund", "10", "EUR")
    assert result.allowed and result.code is None and result.details is None
    assert result.tightest is not None and result.tightest["budget"] == "t.calls"
    assert [b["budget"] for b in result.budgets] == ["t.daily", "t.calls"]
    assert ledger.balances("bot") == before
    assert ledger.check("bot", "other:thing", "1", "EUR").tightest is None


BAD_CALLS = [
    ("reserve", ("bot", "payments:x", "-1", "EUR"), {}, "invalid_amount"),
    ("reserve", ("bot", "payments:x", "NaN", "EUR"), {}, "invalid_amount"),
    ("reserve", ("bot", "payments:x", 1.5, "EUR"), {}, "invalid_amount"),
    ("reserve", ("bot", "payments:x", "1e400", "EUR"), {}, "invalid_amount"),
    ("reserve", ("bot", "payments:x", "1", "tokens"), {}, "unit_mismatch"),
    ("reserve", ("bot", "payments:x", "1", "ZZZ"), {}, "unknown_unit"),
    ("reserve", ("bot", "payments:x", "1", "EUR"), {"ttl": 0}, "invalid_ttl"),
    ("reserve", ("bot", "payments:x", "1", "EUR"), {"ttl": float("nan")}, "invalid_ttl"),
    ("reserve", ("bot", "payments:x", "1", "EUR"), {"ttl": True}, "invalid_ttl"),
    ("reserve", ("bot", "payments:x", "1", "EUR"), {"idempotency_key": ""},
     "invalid_idempotency_key"),
    ("reserve", ("bot", "payments:x", "1", "USD"), {}, "no_rate"),
    ("reserve", (None, "payments:x", "1", "EUR"), {}, "invalid_subject"),
    ("reserve", ("bot", 7, "1", "EUR"), {}, "invalid_permission"),
    ("record", ("bot", "payments:x", "1", "EUR"), {"overage": "maybe"}, "invalid_overage"),
    ("commit", ("rsv_nope", "1"), {}, "unknown_reservation"),
    ("commit", (None, "1"), {}, "unknown_reservation"),
    ("release", ("rsv_nope",), {}, "unknown_reservation"),
    ("extend", ("rsv_nope", 10), {}, "unknown_reservation"),
    ("check", ("bot", "payments:x", "-1", "EUR"), {}, "invalid_amount"),
]


@pytest.mark.parametrize(("op", "args", "kwargs", "code"), BAD_CALLS)
def test_bad_input_has_a_code_and_changes_nothing(
    store: object, op: str, args: tuple[object, ...], kwargs: dict[str, object], code: str
) -> None:
    ledger, _ = make(store, DAILY)
    live = ledger.reserve("bot", "payments:x", "5", "EUR")
    ledger.record("bot", "payments:x", "7", "EUR")
    before = ledger.balances("bot")
    with pytest.raises(BudgetError) as info:
        getattr(ledger, op)(*args, **kwargs)
    assert info.value.code == code
    assert ledger.balances("bot") == before
    assert ledger.get(live.id).status == "active"


def test_final_and_expired_reservations(store: object) -> None:
    ledger, clock = make(store, DAILY)
    r = ledger.reserve("bot", "payments:x", "5", "EUR", ttl=10)
    ledger.commit(r.id, "5")
    with pytest.raises(ReservationError, match="already committed"):
        ledger.release(r.id)
    r2 = ledger.reserve("bot", "payments:x", "5", "EUR", ttl=10)
    clock.t += 10
    assert ledger.get(r2.id).status == "expired"
    for call in (lambda: ledger.commit(r2.id, "1"), lambda: ledger.extend(r2.id, 60)):
        with pytest.raises(ReservationError) as info:
            call()
        assert info.value.code == "reservation_expired"
    assert ledger.balances("bot")[0].reserved == 0


def test_idempotency_mismatch_is_its_own_error(store: object) -> None:
    ledger, _ = make(store, DAILY)
    ledger.reserve("bot", "payments:x", "5", "EUR", idempotency_key="k")
    with pytest.raises(IdempotencyMismatch):
        ledger.reserve("bot", "payments:x", "5", "EUR", idempotency_key="k", ttl=61)
    # The same key for another operation is a separate key space.
    assert ledger.record("bot", "payments:x", "5", "EUR", idempotency_key="k").status == "committed"


def test_concurrent_replays_of_one_key_reserve_once(store: object) -> None:
    ledger, _ = make(store, DAILY)
    ids: list[str] = []

    def go() -> None:
        ids.append(ledger.reserve("bot", "payments:x", "30", "EUR", idempotency_key="same").id)

    threads = [threading.Thread(target=go) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 1 and len(ids) == 8
    assert ledger.balances("bot")[0].reserved == 30


def test_a_replay_returns_the_original_result_whatever_happened_since(store: object) -> None:
    """A replayed key returns the result exactly as first returned: a reserve's and an
    extend's ``active``, not ``expired`` once the lease has ended nor ``committed`` once
    committed (get gives the state now), on every store."""
    ledger, clock = make(store, DAILY)
    r = ledger.reserve("bot", "payments:x", "10", "EUR", ttl=5, idempotency_key="r")
    moved = ledger.extend(r.id, 10, idempotency_key="e")
    done = ledger.commit(r.id, "7", idempotency_key="c")
    spent = ledger.record("bot", "payments:x", "2", "EUR", idempotency_key="s")
    other = ledger.reserve("bot", "payments:x", "1", "EUR", ttl=5, idempotency_key="o")
    gone = ledger.release(other.id, idempotency_key="g")
    firsts = [(r, lambda: ledger.reserve("bot", "payments:x", "10", "EUR", ttl=5,
                                         idempotency_key="r")),
              (moved, lambda: ledger.extend(r.id, 10, idempotency_key="e")),
              (done, lambda: ledger.commit(r.id, "7", idempotency_key="c")),
              (spent, lambda: ledger.record("bot", "payments:x", "2", "EUR",
                                            idempotency_key="s")),
              (gone, lambda: ledger.release(other.id, idempotency_key="g"))]
    for later in (0.0, 30.0, 3600.0):  # before the lease ends, after, much after
        clock.t = NOW + later
        for first, replay in firsts:
            again = replay()
            assert (again.id, again.status) == (first.id, first.status)
            assert again.to_wire() == first.to_wire()
        assert ledger.get(r.id).status == "committed"
        assert ledger.reservation_for("r").status == "committed"  # as it is now
    assert (r.status, moved.status, done.status) == ("active", "active", "committed")
    (balance,) = ledger.balances("bot")
    assert (balance.spent, balance.reserved) == (Decimal(9), Decimal(0))  # once each


def test_extend_moves_expiry_and_keeps_the_hold(store: object) -> None:
    ledger, clock = make(store, DAILY)
    r = ledger.reserve("bot", "payments:x", "60", "EUR", ttl=10)
    clock.t += 9
    assert ledger.extend(r.id, 100).expires_at == clock.t + 100
    clock.t += 50
    with pytest.raises(BudgetExceeded):
        ledger.reserve("bot", "payments:x", "50", "EUR")
    assert ledger.commit(r.id, "60").status == "committed"


def test_rolling_window_counts_the_last_n_seconds(store: object) -> None:
    spec = BudgetSpec("t.roll", ("llm:*",), Decimal(1000), "tokens", "rolling", 3600)
    ledger, clock = make(store, spec)
    ledger.record("bot", "llm:chat", 600, "tokens")
    clock.t += 1800
    ledger.record("bot", "llm:chat", 400, "tokens")
    assert not ledger.check("bot", "llm:chat", 1, "tokens").allowed
    clock.t += 1800
    (bal,) = ledger.balances("bot")
    assert (bal.spent, bal.window_end) == (400, None)
    assert ledger.check("bot", "llm:chat", 600, "tokens").allowed


def test_memory_store_forgets_finished_reservations_after_retention() -> None:
    ledger, clock = make(MemoryStore(retention=100), DAILY)
    r = ledger.reserve("bot", "payments:x", "5", "EUR")
    ledger.commit(r.id, "5")
    clock.t += 101
    ledger.balances("bot")  # any call sweeps
    with pytest.raises(ReservationError) as info:
        ledger.get(r.id)
    assert info.value.code == "unknown_reservation"
    assert ledger.balances("bot")[0].spent == 5


def test_sqlite_store_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "durable.db"
    ledger, _ = make(SQLiteStore(path), DAILY)
    r = ledger.reserve("bot", "payments:x", "30", "EUR", ttl=600)
    ledger.record("bot", "payments:x", "20", "EUR")
    ledger.store.close()
    again, _ = make(SQLiteStore(path), DAILY)
    (bal,) = again.balances("bot")
    assert (bal.spent, bal.reserved) == (20, 30)
    assert again.commit(r.id, "30").status == "committed"


def test_store_errors_are_budget_errors(tmp_path: Path) -> None:
    with pytest.raises(BudgetError) as info:
        SQLiteStore(tmp_path / "missing-dir" / "x.db")
    assert info.value.code == "store_unavailable"
