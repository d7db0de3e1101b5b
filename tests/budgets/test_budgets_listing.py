"""Listing reservations (``Ledger.reservations``) and what a reservation keeps for any
process sharing its store (``overage``, ``note``), on every store; the layouts that
added them refuse the layouts before."""

from __future__ import annotations

import sqlite3
from decimal import Decimal
from pathlib import Path

import pytest
from conftest import BUDGET_NOW, DAILY, POSTGRES_URL, REDIS_URL, SharedStores, make_ledger
from hypothesis import given, settings
from hypothesis import strategies as st

from policyengine.budgets import (
    BudgetInputError,
    BudgetSpec,
    BudgetStoreError,
    IdempotencyMismatch,
    Ledger,
    MemoryStore,
    PostgresStore,
    RedisStore,
    SQLiteStore,
)
from policyengine.budgets.store import listing_key

TIGHT = BudgetSpec("t.tight", ("llm:*",), Decimal(10), "EUR", "day")


def _twin(store: object) -> object:
    """A second handle on the same data: another connection, as another process has."""
    if isinstance(store, MemoryStore):
        return store
    if isinstance(store, SQLiteStore):
        return SQLiteStore(store.path)
    if isinstance(store, PostgresStore):
        return PostgresStore(POSTGRES_URL, schema=store.schema, max_clock_skew=None)
    assert isinstance(store, RedisStore)
    return RedisStore(REDIS_URL, prefix=store.prefix, max_clock_skew=None)


def _all(ledger: Ledger, **kw: object) -> list[str]:
    """Every id the listing gives, page by page."""
    ids: list[str] = []
    cursor = None
    for _ in range(100):
        page = ledger.reservations(cursor=cursor, **kw)  # type: ignore[arg-type]
        ids += [r.id for r in page.reservations]
        cursor = page.cursor
        if cursor is None:
            return ids
    raise AssertionError("the listing never ended")


def test_reservations_are_listed_per_tenant_oldest_first_in_pages(store: object) -> None:
    ledger, clock = make_ledger(store, DAILY)
    made = {"acme": [], "globex": []}  # type: dict[str, list[str]]
    for i in range(7):
        tenant = "acme" if i % 3 else "globex"
        made[tenant].append(ledger.reserve("bot", "payments:x", "1", "EUR", tenant=tenant).id)
        clock.t += 0.5
    ledger.record("bot", "payments:x", "1", "EUR", tenant="acme")  # a spend: not listed
    untenanted = ledger.reserve("bot", "payments:x", "1", "EUR").id
    page = ledger.reservations(tenant="acme", limit=2)
    assert [r.id for r in page.reservations] == made["acme"][:2] and page.cursor is not None
    for limit in (1, 2, 3, 50):
        assert _all(ledger, tenant="acme", limit=limit) == made["acme"]
    assert _all(ledger, tenant="globex") == made["globex"]
    assert _all(ledger) == [untenanted]
    assert _all(ledger, tenant="initech") == []


def test_listing_filters_by_status_principal_and_predicate(store: object) -> None:
    ledger, clock = make_ledger(store, DAILY)
    made = []
    for who, ttl, note in (("alice", 60, None), ("bob", 10, "b"), ("alice", 60, None),
                           ("bob", 60, None)):
        made.append(ledger.reserve(who, "payments:x", "5", "EUR", tenant="t", ttl=ttl,
                                   note=note))
        clock.t += 0.001
    a, b, c, d = made
    ledger.commit(a.id, "4")
    ledger.release(c.id)
    clock.t += 30  # b expired
    assert _all(ledger, tenant="t", status="committed") == [a.id]
    assert _all(ledger, tenant="t", status="released") == [c.id]
    assert _all(ledger, tenant="t", status="expired") == [b.id]
    assert _all(ledger, tenant="t", status="active") == [d.id]
    assert _all(ledger, tenant="t", principal="bob") == [b.id, d.id]
    assert _all(ledger, tenant="t", where=lambda r: r.note == "b") == [b.id]
    listed = ledger.reservations(tenant="t").reservations
    assert [r.status for r in listed] == ["committed", "expired", "released", "active"]
    assert listed[0].committed_amount == Decimal(4) and listed[0].finalized_at is not None


def test_a_page_the_filters_thin_still_leads_to_the_rest(store: object) -> None:
    ledger, clock = make_ledger(store, DAILY)
    ids = []
    for i in range(12):
        ids.append(ledger.reserve("bot" if i % 4 else "rare", "payments:x", "1", "EUR",
                                  tenant="t").id)
        clock.t += 0.001
    assert _all(ledger, tenant="t", principal="rare", limit=1) == ids[::4]


@given(st.lists(st.tuples(st.sampled_from(["a", "b"]), st.sampled_from([0, 0.0000004, 1])),
                max_size=30), st.integers(1, 7))
@settings(max_examples=40, deadline=None)
def test_pages_together_are_every_reservation_once_in_key_order(
        steps: list[tuple[str, float]], limit: int) -> None:
    # Ties within a microsecond and a clock stepping back are ordered by the key.
    ledger, clock = make_ledger(MemoryStore(), DAILY)
    made: dict[str, list[tuple[str, str]]] = {"a": [], "b": []}
    for tenant, step in steps:
        r = ledger.reserve("bot", "payments:x", "0.01", "EUR", tenant=tenant)
        made[tenant].append((listing_key(r.created_at, r.id), r.id))
        clock.t += step if len(made[tenant]) % 5 else -2
    for tenant in ("a", "b"):
        assert _all(ledger, tenant=tenant, limit=limit) == [i for _, i in sorted(made[tenant])]


@given(st.lists(st.tuples(st.sampled_from(["reserve", "record", "list"]),
                          st.sampled_from([0, 0.0000004, 1, -2])), max_size=30))
@settings(max_examples=40, deadline=None)
def test_the_memory_listing_is_the_same_whenever_it_is_first_asked_for(
        steps: list[tuple[str, float]]) -> None:
    # The MemoryStore builds its listing index at the first listing: reservations made
    # before it and after it (ties, a clock stepping back, spends never listed) alike.
    ledger, clock = make_ledger(MemoryStore(), DAILY)
    made: list[tuple[str, str]] = []
    for op, step in steps:
        if op == "reserve":
            r = ledger.reserve("bot", "payments:x", "0.01", "EUR", tenant="t")
            made.append((listing_key(r.created_at, r.id), r.id))
            if step < 0:
                ledger.release(r.id)
        elif op == "record":
            ledger.record("bot", "payments:x", "0.01", "EUR", tenant="t")
        else:
            assert _all(ledger, tenant="t", limit=3) == [i for _, i in sorted(made)]
        clock.t += step
    assert _all(ledger, tenant="t", limit=3) == [i for _, i in sorted(made)]
    assert _all(ledger, tenant="u") == []


def test_bad_listing_arguments_are_refused_with_a_code(store: object) -> None:
    ledger, _ = make_ledger(store, DAILY)
    for kw in ({"limit": 0}, {"limit": 501}, {"limit": True}, {"limit": "5"},
               {"status": "ACTIVE"}, {"status": "gone"}, {"cursor": "x"},
               {"cursor": "00000000000000001:rsv_1' OR 1=1"}, {"cursor": "1" * 17 + ":"},
               {"cursor": "\u0661" * 17 + ":rsv_1"}, {"cursor": 5}):
        with pytest.raises(BudgetInputError) as info:
            ledger.reservations(tenant="t", **kw)  # type: ignore[arg-type]
        assert info.value.code == "invalid_listing", kw
    with pytest.raises(BudgetInputError) as info:
        ledger.reservations(tenant="")
    assert info.value.code == "invalid_subject"


def test_overage_and_note_travel_with_the_reservation_to_another_process(
        store: object) -> None:
    first, clock = make_ledger(store, TIGHT)
    second = Ledger([TIGHT], _twin(store), clock=clock)  # type: ignore[arg-type]
    r = first.reserve("bot", "llm:chat", "4", "EUR", overage="allow_if_available",
                      note='{"subject":{"tenant":"acme"}}')
    seen = second.get(r.id)
    assert (seen.overage, seen.note) == ("allow_if_available", '{"subject":{"tenant":"acme"}}')
    # Over the hold and past the limit: the policy given at reserve caps the charge on
    # the other process (its own default, reject, would refuse it).
    done = second.commit(r.id, "25")
    assert done.status == "committed" and done.capped
    assert done.lines[0].committed == Decimal(10)
    assert first.get(r.id).note == '{"subject":{"tenant":"acme"}}'
    assert [x.note for x in first.reservations().reservations] == [
        '{"subject":{"tenant":"acme"}}']
    # Without a policy at reserve, a commit over the hold is refused (reject).
    plain = first.reserve("bot", "llm:chat", "0", "EUR")
    with pytest.raises(Exception) as info:
        second.commit(plain.id, "1")
    assert getattr(info.value, "code", None) == "budget_exceeded"
    # A policy named at commit still wins over the stored one.
    held = first.reserve("bot", "llm:chat", "0", "EUR", overage="allow_if_available")
    with pytest.raises(Exception) as info:
        second.commit(held.id, "1", overage="reject")
    assert getattr(info.value, "code", None) == "budget_exceeded"


def test_the_note_and_policy_are_part_of_an_idempotent_reserve(store: object) -> None:
    ledger, _ = make_ledger(store, DAILY)
    r = ledger.reserve("bot", "payments:x", "1", "EUR", idempotency_key="k1", note="n")
    again = ledger.reserve("bot", "payments:x", "1", "EUR", idempotency_key="k1", note="n")
    assert again.id == r.id and again.note == "n"
    with pytest.raises(IdempotencyMismatch):
        ledger.reserve("bot", "payments:x", "1", "EUR", idempotency_key="k1", note="other")
    with pytest.raises(IdempotencyMismatch):
        ledger.reserve("bot", "payments:x", "1", "EUR", idempotency_key="k1", note="n",
                       overage="allow_if_available")
    found = ledger.reservation_for("k1")
    assert found is not None and found.id == r.id and found.status == "active"
    ledger.release(r.id)
    found = ledger.reservation_for("k1")
    assert found is not None and found.status == "released"
    assert ledger.reservation_for("k2") is None


def test_bad_notes_and_policies_are_refused(store: object) -> None:
    ledger, _ = make_ledger(store, DAILY)
    for note in (5, "x" * 65537, "\ud800"):
        with pytest.raises(BudgetInputError) as info:
            ledger.reserve("bot", "payments:x", "1", "EUR", note=note)  # type: ignore[arg-type]
        assert info.value.code == "invalid_note"
    with pytest.raises(BudgetInputError) as info:
        ledger.reserve("bot", "payments:x", "1", "EUR", overage="sometimes")  # type: ignore[arg-type]
    assert info.value.code == "invalid_overage"
    assert _all(ledger) == []


def test_a_sqlite_file_of_the_layout_before_listing_is_refused(tmp_path: Path) -> None:
    old = tmp_path / "v2.db"
    with sqlite3.connect(old) as conn:
        conn.execute("PRAGMA user_version = 2")
    with pytest.raises(BudgetStoreError) as info:
        SQLiteStore(old)
    assert info.value.code == "store_incompatible" and "version 2" in str(info.value)


def test_shared_stores_of_the_layout_before_listing_are_refused(
        shared_stores: SharedStores) -> None:
    import psycopg
    import redis

    pg = shared_stores.postgres()
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'UPDATE "{pg.schema}".budget_layout SET version = 1')
    with pytest.raises(BudgetStoreError) as info:
        PostgresStore(POSTGRES_URL, schema=pg.schema)
    assert info.value.code == "store_incompatible"
    rs = shared_stores.redis()
    redis.Redis.from_url(REDIS_URL).set(rs.prefix + "layout", "1:abc")
    with pytest.raises(BudgetStoreError) as info:
        RedisStore(REDIS_URL, prefix=rs.prefix)
    assert info.value.code == "store_incompatible"


def test_the_index_forgets_reservations_the_store_no_longer_keeps(store: object) -> None:
    ledger, clock = make_ledger(store, DAILY)
    store.retention = 60  # type: ignore[attr-defined]
    old = ledger.reserve("bot", "payments:x", "1", "EUR", tenant="t", ttl=1)
    ledger.release(old.id)
    clock.t = BUDGET_NOW + 86400 * 2  # long past its retention
    if isinstance(store, RedisStore):  # keys expire by the server's own clock: as if so
        import redis
        client = redis.Redis.from_url(REDIS_URL)
        client.delete(store.prefix + "r:" + old.id)
        ledger.reserve("bot", "payments:x", "1", "EUR", tenant="t")
        assert client.zcard(store.prefix + "l:t") == 1
    for _ in range(600):  # enough writes for every store's housekeeping to run
        ledger.release(ledger.reserve("bot", "payments:x", "1", "EUR", tenant="u").id)
    assert old.id not in _all(ledger, tenant="t")


def test_remembered_text_is_written_once_and_seen_by_every_process(store: object) -> None:
    first, clock = make_ledger(store, DAILY)
    second = Ledger([DAILY], _twin(store), clock=clock)  # type: ignore[arg-type]
    assert first.recall("session/s1") is None
    assert first.remember("session/s1", '{"agent":"a"}', ttl=60) == '{"agent":"a"}'
    # The second writer gets the first text back, and nothing is overwritten.
    assert second.remember("session/s1", '{"agent":"b"}', ttl=60) == '{"agent":"a"}'
    assert second.recall("session/s1") == '{"agent":"a"}'
    # Its own namespace: a reservation's idempotency key of the same name is unrelated.
    r = first.reserve("bot", "payments:x", "1", "EUR", idempotency_key="session/s1")
    assert first.recall("session/s1") == '{"agent":"a"}' and r.note is None
    clock.t += 61
    assert second.recall("session/s1") is None
    assert second.remember("session/s1", "later", ttl=60) == "later"
    assert first.recall("session/s1") == "later"


def test_bad_remember_arguments_are_refused(store: object) -> None:
    ledger, _ = make_ledger(store, DAILY)
    for key, text, ttl, code in (("", "t", 60, "invalid_idempotency_key"),
                                 ("k", 5, 60, "invalid_note"),
                                 ("k", "t", 0, "invalid_ttl"),
                                 ("k", "t", True, "invalid_ttl"),
                                 ("k", "t", 31 * 86400, "invalid_ttl")):
        with pytest.raises(BudgetInputError) as info:
            ledger.remember(key, text, ttl)  # type: ignore[arg-type]
        assert info.value.code == code, (key, text, ttl)
    assert ledger.recall("k") is None


def test_the_memory_index_stays_bounded_by_what_the_store_keeps() -> None:
    store = MemoryStore(retention=1)
    ledger, clock = make_ledger(store, DAILY)
    for _ in range(3000):
        ledger.release(ledger.reserve("bot", "payments:x", "0.01", "EUR", tenant="t").id)
        clock.t += 0.5
    kept = len(_all(ledger, tenant="t"))
    assert kept < 10
    # The index's bound is a private mechanism: nothing public shows its size.
    listed = sum(len(v) for v in store._listed.values())
    assert listed <= 1024 + 2 * kept
