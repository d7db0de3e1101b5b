"""RedisStore's key layout (version 3), as the scripts rely on it: the expiry set is a
skiplist scored in whole milliseconds (a hold due within ``now``'s own millisecond is
compared exactly), idempotency records are strings read back whole, buckets expire 32
days after their window starts; a prefix of another layout (the one before included) is
refused, never read or written; and an answer or record the store cannot read fails
closed."""

from __future__ import annotations

import math
from decimal import Decimal

import pytest
import redis
from conftest import BUDGET_NOW, DAILY, REDIS_URL, SharedStores, make_ledger

from policyengine.budgets import BudgetExceeded, BudgetSpec, BudgetStoreError, RedisStore
from policyengine.budgets.redis import _SKIPLIST, LAYOUT_VERSION
from policyengine.budgets.store import IdempotencyRecord, Transaction

pytestmark = pytest.mark.redis


def _client() -> redis.Redis:
    return redis.Redis.from_url(REDIS_URL, decode_responses=True)


def _bucket_key(prefix: str, budget: str, subject: str, window: int) -> str:
    """A bucket's key as the layout documents it: ``b:<len>:<budget><subject>:<window>``,
    the budget id's length in UTF-8 bytes first."""
    return f"{prefix}b:{len(budget.encode())}:{budget}{subject}:{window}"


def test_a_prefix_of_the_layout_before_is_refused_and_left_as_it_is(
        shared_stores: SharedStores) -> None:
    assert LAYOUT_VERSION == 3
    store = shared_stores.redis()
    ledger, _ = make_ledger(store, DAILY)
    client = _client()
    # What version 2 wrote: its layout key, an idempotency record as a hash.
    client.set(store.prefix + "layout", "2:0123456789abcdef")
    client.hset(store.prefix + "i:reserve:k", mapping={"f": "fp", "x": "1", "d": "[]"})
    with pytest.raises(BudgetStoreError) as info:
        RedisStore(REDIS_URL, prefix=store.prefix)
    assert info.value.code == "store_incompatible" and "version 3" in str(info.value)
    # A store that opened the prefix before refuses every call: its dataset is gone.
    for call in (lambda: ledger.reserve("bot", "payments:x", "1", "EUR",
                                        idempotency_key="k"),
                 lambda: ledger.check("bot", "payments:x", "1", "EUR")):
        with pytest.raises(BudgetStoreError) as info:
            call()
        assert info.value.code == "store_unavailable"
        assert info.value.details == {"reason": "dataset_lost"}
    assert client.type(store.prefix + "i:reserve:k") == "hash"  # never written
    assert client.get(store.prefix + "layout") == "2:0123456789abcdef"


def test_the_expiry_set_is_a_skiplist_scored_in_whole_milliseconds(
        shared_stores: SharedStores) -> None:
    store = shared_stores.redis()
    client = _client()
    key = store.prefix + "x"
    assert client.object("encoding", key) == "skiplist"
    assert client.zscore(key, _SKIPLIST) == math.inf  # never due
    ledger, clock = make_ledger(store, DAILY)
    clock.t = BUDGET_NOW + 0.123456
    held = [ledger.reserve("bot", "payments:x", "1", "EUR", ttl=60) for _ in range(3)]
    for r in held:
        assert client.zscore(key, r.id) == math.floor(r.expires_at * 1000)
    moved = ledger.extend(held[0].id, 30.000999)
    assert client.zscore(key, held[0].id) == math.floor(moved.expires_at * 1000)
    for r in held:
        ledger.release(r.id)
    # Only the long member is left, and the set is kept as a skiplist.
    assert client.zrange(key, 0, -1) == [_SKIPLIST]
    assert client.object("encoding", key) == "skiplist"
    assert ledger.reserve("bot", "payments:x", "1", "EUR").status == "active"


def test_a_hold_due_in_nows_own_millisecond_counts_until_its_exact_expiry(
        shared_stores: SharedStores) -> None:
    store = shared_stores.redis()
    ledger, clock = make_ledger(store, DAILY)
    clock.t = BUDGET_NOW + 0.0002
    r = ledger.reserve("bot", "payments:x", "60", "EUR", ttl=10)
    client = _client()
    score = client.zscore(store.prefix + "x", r.id)
    clock.t = r.expires_at - 0.0001  # the same millisecond, before the expiry
    assert math.floor(clock.t * 1000) == score
    ledger.record("bot", "payments:x", "1", "EUR")  # a write: the expiry set is read
    (balance,) = ledger.balances("bot")
    assert (balance.spent, balance.reserved) == (Decimal(1), Decimal(60))
    with pytest.raises(BudgetExceeded):
        ledger.reserve("bot", "payments:x", "40", "EUR")
    clock.t = r.expires_at  # due now: given back by the next write, once
    ledger.record("bot", "payments:x", "1", "EUR")
    (balance,) = ledger.balances("bot")
    assert (balance.spent, balance.reserved) == (Decimal(2), Decimal(0))
    assert client.zscore(store.prefix + "x", r.id) is None


def test_buckets_expire_32_days_after_their_window_starts(
        shared_stores: SharedStores) -> None:
    store = shared_stores.redis()
    client = _client()
    ledger, clock = make_ledger(store, DAILY)
    r = ledger.reserve("bot", "payments:x", "5", "EUR")
    start = r.lines[0].window_start
    assert start is not None
    expected = start + 32 * 86400 - clock.t
    held = _bucket_key(store.prefix, DAILY.id, "bot", int(start))
    assert expected - 5 <= client.ttl(held) <= expected + 1
    ledger.release(r.id)
    ledger.record("ann", "payments:x", "5", "EUR")  # a bucket a spend makes
    made = _bucket_key(store.prefix, DAILY.id, "ann", int(start))
    assert expected - 5 <= client.ttl(made) <= expected + 1
    # A later write that finds the bucket's field at what it added (here reserved was
    # back at 0) leaves the expiry where it was.
    client.expire(held, 1000)
    ledger.reserve("bot", "payments:x", "5", "EUR")
    assert 990 <= client.ttl(held) <= 1000


def test_an_idempotency_record_is_one_string_read_back_whole(
        shared_stores: SharedStores) -> None:
    store = shared_stores.redis()
    ledger, clock = make_ledger(store, DAILY)
    note = "a note\nof two lines"
    first = ledger.reserve("bot", "payments:x", "5", "EUR", idempotency_key="k1", note=note)
    ledger.commit(first.id, "4")
    value = _client().get(store.prefix + "i:reserve:k1")
    assert isinstance(value, str) and value.count("\n") == 2  # the record's JSON has none
    found = store.get_idempotency("reserve:k1", clock.t)
    assert found is not None and found.result.status == "active"  # as it was then
    again = ledger.reserve("bot", "payments:x", "5", "EUR", idempotency_key="k1", note=note)
    assert (again.id, again.note) == (first.id, note)
    # Any fingerprint reads back as written, newlines included.
    odd = IdempotencyRecord("note:k", "fp\nof\nlines \u00e9", found.result, clock.t + 60)
    assert store.apply(Transaction(idempotency=odd), clock.t).ok
    assert store.get_idempotency("note:k", clock.t) == odd
    refused = store.apply(Transaction(idempotency=odd._replace(fingerprint="other")), clock.t)
    assert refused.reason == "idempotency" and refused.idempotency == odd
    assert store.get_idempotency("note:k", clock.t + 60) is None  # expired at its time


@pytest.mark.parametrize("value", ["no newline at all", "not-a-time\n[]\nfp", "1e30\nnot json\nfp"])
def test_an_idempotency_record_the_store_cannot_read_fails_closed(
        shared_stores: SharedStores, value: str) -> None:
    store = shared_stores.redis()
    ledger, _ = make_ledger(store, DAILY)
    _client().set(store.prefix + "i:record:k2", value)
    with pytest.raises(BudgetStoreError) as info:
        ledger.record("bot", "payments:x", "5", "EUR", idempotency_key="k2")
    assert info.value.code == "store_unavailable"
    assert ledger.balances("bot")[0].spent == 0  # nothing was applied


@pytest.mark.parametrize("reply", [
    b"Z", b"G", b"Gx 1 2", b"G0 1", b"G5 1 2", b"D0 1 2 3", b"I", b"Ino newline", b"R",
    b"U1", b"\xff",
])
def test_a_script_answer_the_store_does_not_know_fails_closed(
        shared_stores: SharedStores, monkeypatch: pytest.MonkeyPatch, reply: bytes) -> None:
    store = shared_stores.redis()
    ledger, _ = make_ledger(store, DAILY)
    r = ledger.reserve("bot", "payments:x", "5", "EUR", idempotency_key="k3")
    monkeypatch.setattr(store._eval, "call", lambda script, packed: reply)
    for call in (lambda: ledger.reserve("bot", "payments:x", "5", "EUR",
                                        idempotency_key="k4"),
                 lambda: ledger.check("bot", "payments:x", "5", "EUR"),
                 lambda: ledger.commit(r.id, "5")):
        with pytest.raises(BudgetStoreError) as info:
            call()
        assert info.value.code == "store_unavailable"


@pytest.mark.parametrize("digits", [14, 15, 16, 17])
def test_limits_near_and_past_a_doubles_exact_range_compare_exactly(
        shared_stores: SharedStores, digits: int) -> None:
    """Guards compare as doubles while every value has at most 15 characters and as
    exact limbs past that: both ways, one quantum over the limit is refused."""
    limit = Decimal(10**digits - 1).scaleb(-2)  # EUR: quanta are cents
    spec = BudgetSpec("t.big", ("payments:*",), limit, "EUR", "day")
    store = shared_stores.redis()
    ledger, _ = make_ledger(store, spec)
    ledger.record("bot", "payments:x", str(limit - Decimal("0.10")), "EUR")
    r = ledger.reserve("bot", "payments:x", "0.05", "EUR")
    with pytest.raises(BudgetExceeded):
        ledger.reserve("bot", "payments:x", "0.06", "EUR")
    assert ledger.reserve("bot", "payments:x", "0.05", "EUR").status == "active"  # to the limit
    ledger.commit(r.id, "0.05")
    (balance,) = ledger.balances("bot")
    assert (balance.spent, balance.reserved) == (limit - Decimal("0.05"), Decimal("0.05"))
