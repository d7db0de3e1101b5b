"""The budget ``RedisStore`` takes ``timeout`` (seconds to wait for a connection and for
each reply) in its URL as in its constructor, checked like every store's time option
(``invalid_store_url``); a server that stops answering fails each call after it with
``store_unavailable``, and a budgeted request is denied, never allowed.

Before, ``redis://...?timeout=`` was refused as an unknown option: a deployment's URL
could not shorten the five seconds a hung server held every budgeted request."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import REDIS_URL, Relay, drop_namespace, require_service, unique_name
from redis_waits import client_waits

from policyengine.budgets import BudgetInputError, BudgetStoreError, RedisStore, store_from_url
from policyengine.budgets.ratelimit import RateKey
from policyengine.engine import Engine

pytestmark = pytest.mark.redis

# Nothing listens on port 1: a URL refused here is refused before any connection.
NO_REDIS = "redis://:s3cret@127.0.0.1:1/0"

SRC = """namespace t
currency EUR
role payer: payments:*
agent "bot": payer
budget daily: payments:* limit 100 EUR per day per agent
"""
TEN = {"amount": "10", "currency": "EUR"}


@pytest.fixture
def prefix() -> Iterator[str]:
    require_service("redis")
    base = unique_name("rtimeout")
    yield base + ":"
    drop_namespace("redis", base)


def _timeouts(store: RedisStore) -> tuple[object, ...]:
    """The timeouts of the client's connections and of the budget scripts' own."""
    script = store._eval._make()
    return (*client_waits(store), script.socket_timeout, script.socket_connect_timeout)


def test_the_url_takes_timeout(prefix: str) -> None:
    store = store_from_url(f"{REDIS_URL}?prefix={prefix}&timeout=0.25&create=true")
    try:
        assert isinstance(store, RedisStore) and store.timeout == 0.25
        assert _timeouts(store) == (0.25,) * 4
    finally:
        store.close()
    # a keyword argument overrides the URL's, as for every other option
    store = store_from_url(f"{REDIS_URL}?prefix={prefix}&timeout=0.25", timeout=2)
    try:
        assert isinstance(store, RedisStore) and _timeouts(store) == (2,) * 4
    finally:
        store.close()


@pytest.mark.parametrize("query", ["timeout=0", "timeout=-1", "timeout=nan", "timeout=inf",
                                   "timeout=1e300", "timeout=315360001", "timeout=abc",
                                   "timeout=none", "timeout=", "timeout=1&timeout=2"])
def test_a_bad_url_timeout_is_refused_with_the_url_code(query: str) -> None:
    with pytest.raises(BudgetInputError) as info:
        store_from_url(f"{NO_REDIS}?{query}")
    assert info.value.code == "invalid_store_url", str(info.value)
    assert "timeout" in info.value.message
    assert "unknown option" not in info.value.message  # read, and its value refused
    assert "s3cret" not in info.value.message


def test_a_store_that_stops_answering_denies_after_its_timeout(prefix: str) -> None:
    """Through a relay that stops passing anything on: every kind of call (the budget
    scripts on their own connections, the client's commands, a rate limit, the server's
    clock) fails ``store_unavailable`` within about the timeout, and the engine denies."""
    relay = Relay(REDIS_URL)
    url = relay.url(REDIS_URL) + f"?prefix={prefix}&timeout=0.3&create=true"
    engine = Engine.from_source(SRC, budget_store=url)
    try:
        ledger = engine.budgets
        assert ledger is not None
        store = ledger.store
        assert isinstance(store, RedisStore)
        assert engine.authorize("bot", "payments:pay", TEN).status == "allowed"
        held = ledger.reserve("bot", "payments:pay", "10", "EUR")
        relay.stall()
        calls: list[Callable[[], Any]] = [
            lambda: ledger.reserve("bot", "payments:pay", "10", "EUR"),
            lambda: ledger.commit(held.id, "5"),
            lambda: ledger.record("bot", "payments:pay", "1", "EUR"),
            lambda: ledger.balances("bot"),
            lambda: store.get_reservation(held.id),
            lambda: store.rate_admit((RateKey("k", 5, 1_000_000, 5),), None),
            store.server_time,
        ]
        for call in calls:
            started = time.monotonic()
            with pytest.raises(BudgetStoreError) as info:
                call()
            assert info.value.code == "store_unavailable", str(info.value)
            assert time.monotonic() - started < 2.5  # the default would wait 5 s
        started = time.monotonic()
        decision = engine.authorize("bot", "payments:pay", TEN)
        assert decision.status != "allowed" and decision.code == "store_unavailable"
        assert time.monotonic() - started < 2.5
    finally:
        relay.cut()
        engine.close(timeout=5)
