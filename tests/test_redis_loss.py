"""A Redis restart without persistence (every key under the prefix gone) never turns into
an allow, on the hosts running then or on any started afterwards (docs/deployment.md,
"What each store guarantees").

Before: a budget store opened after the loss made a fresh dataset (``SET layout NX``), so
a restarted worker granted every budget again the same day, and the hosts running then
refused forever a dataset they had not opened. Now only an operator makes a dataset
(``policyengine store init URL``, ``create=True``, ``reinitialize()``): until then every
store refuses (``store_unavailable`` / ``dataset_lost`` on a running one,
``store_uninitialized`` on a new one), and afterwards the running ones take it up at
their next call. Approvals lost with the server are unknown, never honoured."""

from __future__ import annotations

import time
from collections.abc import Iterator
from decimal import Decimal

import pytest
import redis
from conftest import REDIS_URL, drop_namespace, require_service, unique_name

from policyengine.budgets import (
    BudgetInputError,
    BudgetStoreError,
    RedisStore,
    store_from_url,
)
from policyengine.budgets.ratelimit import RateKey
from policyengine.cli import main as cli_main
from policyengine.decide import ApprovalError, approvals_from_url
from policyengine.engine import Engine
from policyengine.errors import PolicyEngineError

pytestmark = pytest.mark.redis

SRC = """namespace t
currency EUR
role payer: payments:*
agent "bot": payer
budget daily: payments:* limit 100 EUR per day per agent
"""
FULL = {"amount": "100", "currency": "EUR"}


@pytest.fixture
def prefix() -> Iterator[str]:
    require_service("redis")
    base = unique_name("loss")
    yield base + ":"
    drop_namespace("redis", base)


def _lose(prefix: str) -> None:
    """What a restart without persistence does to the prefix."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=prefix + "*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def _layout(prefix: str) -> str | None:
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        value: str | None = client.get(prefix + "layout")  # type: ignore[assignment]
        return value
    finally:
        client.close()


def _code(call: object) -> tuple[str, object]:
    with pytest.raises(PolicyEngineError) as info:
        call()  # type: ignore[operator]
    return info.value.code, info.value.details


def test_a_first_use_is_an_explicit_act(prefix: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    url = f"{REDIS_URL}?prefix={prefix}"
    with pytest.raises(BudgetStoreError) as info:
        store_from_url(url)
    assert info.value.code == "store_uninitialized"
    assert "policyengine store init" in info.value.message
    assert _layout(prefix) is None  # nothing made by a refused open
    with pytest.raises(BudgetInputError) as bad:
        store_from_url(url + "&create=maybe")
    assert bad.value.code == "invalid_store_url"
    assert cli_main(["store", "init", url]) == 0
    assert "created" in capsys.readouterr().out
    made = _layout(prefix)
    assert made is not None and made.startswith("3:")
    assert cli_main(["store", "init", url]) == 0  # a second init changes nothing
    assert "nothing changed" in capsys.readouterr().out and _layout(prefix) == made
    store = store_from_url(url)
    store.close()
    other = unique_name("loss") + ":"
    try:
        store = store_from_url(f"{REDIS_URL}?prefix={other}&create=true")
        store.close()
        assert _layout(other) is not None
    finally:
        drop_namespace("redis", other.rstrip(":"))


def test_a_host_started_after_the_loss_grants_nothing_afresh(prefix: str) -> None:
    """The audit's case: host A has recorded the whole day's budget; the keys go."""
    url = f"{REDIS_URL}?prefix={prefix}"
    assert cli_main(["store", "init", url]) == 0
    host_a = Engine.from_source(SRC, budget_store=url)
    host_a.budgets.record("bot", "payments:pay", "100", "EUR")
    assert host_a.authorize("bot", "payments:pay", FULL).code == "budget_exceeded"
    _lose(prefix)
    decision = host_a.authorize("bot", "payments:pay", FULL)
    assert decision.status != "allowed" and decision.code == "store_unavailable"
    code, details = _code(lambda: Engine.from_source(SRC, budget_store=url))
    assert (code, details) == ("store_uninitialized",
                               {"reason": "no_dataset", "prefix": prefix})
    code, details = _code(lambda: RedisStore(REDIS_URL, prefix=prefix))
    assert code == "store_uninitialized"
    with pytest.raises(BudgetStoreError) as info:
        host_a.budgets.record("bot", "payments:pay", "1", "EUR")
    assert info.value.details == {"reason": "dataset_lost"}
    assert _layout(prefix) is None  # no host made one on its own


def test_running_hosts_take_up_the_dataset_an_operator_makes(prefix: str) -> None:
    url = f"{REDIS_URL}?prefix={prefix}"
    assert cli_main(["store", "init", url]) == 0
    host_a = Engine.from_source(SRC, budget_store=url)
    host_b = RedisStore(REDIS_URL, prefix=prefix, max_clock_skew=None)
    try:
        host_a.budgets.record("bot", "payments:pay", "100", "EUR")
        first = _layout(prefix)
        _lose(prefix)
        assert host_a.authorize("bot", "payments:pay", FULL).code == "store_unavailable"
        assert _code(lambda: host_b.rate_admit((RateKey("k", 5, 1_000_000, 5),), None)
                     ) == ("store_unavailable", {"reason": "dataset_lost"})
        assert cli_main(["store", "init", url]) == 0  # the operator accepts the loss
        second = _layout(prefix)
        assert second is not None and second != first
        # Each running store uses it from its next call, by whichever path it comes.
        assert host_b.rate_admit((RateKey("k", 5, 1_000_000, 5),), None).ok
        assert host_a.authorize("bot", "payments:pay", FULL).status == "allowed"
        host_a.budgets.record("bot", "payments:pay", "60", "EUR")
        balance = host_a.budgets.balances("bot")[0]
        assert balance.spent == Decimal(60)  # spent in the new dataset alone
        assert host_a.authorize("bot", "payments:pay", FULL).code == "budget_exceeded"
        assert _layout(prefix) == second  # taken up, never replaced
    finally:
        host_b.close()


def test_reinitialize_adopts_the_dataset_another_host_made(prefix: str) -> None:
    one = RedisStore(REDIS_URL, prefix=prefix, create=True, max_clock_skew=None)
    two = RedisStore(REDIS_URL, prefix=prefix, max_clock_skew=None)
    try:
        _lose(prefix)
        one.reinitialize()
        made = _layout(prefix)
        two.reinitialize()
        assert _layout(prefix) == made  # SET NX: one dataset, whoever asks first
    finally:
        one.close()
        two.close()


def test_a_lost_approval_is_never_honoured(prefix: str) -> None:
    from policyengine import Approval
    store = approvals_from_url(f"{REDIS_URL}?prefix={prefix}")
    try:
        now = time.time()
        store.add(Approval("apr_lost", "bot", "payments:pay", "d" * 64, ("t.big",),
                           "pending", now, now + 600, 1))
        store.approve("apr_lost", by="alice")
        _lose(prefix)
        for call in (lambda: store.consume("apr_lost", "d" * 64, time.time()),
                     lambda: store.get("apr_lost"), lambda: store.approve("apr_lost")):
            with pytest.raises(ApprovalError) as info:
                call()
            assert info.value.code == "unknown_approval"
        assert store.list() == []
    finally:
        store.close()


def test_a_rate_limit_admission_is_one_script_call(prefix: str) -> None:
    """The rate-limit script answers the layout it found with its refusal: an admission
    sends the script alone (once more after taking up an operator's new dataset), never
    a second command to read the layout, which could see another one than the script."""
    store = RedisStore(REDIS_URL, prefix=prefix, create=True, max_clock_skew=None)
    sent: list[str] = []
    send = store._redis.execute_command

    def counted(*args: object, **options: object) -> object:
        sent.append(str(args[0]))
        return send(*args, **options)

    store._redis.execute_command = counted  # type: ignore[method-assign]
    keys = (RateKey("k", 5, 1_000_000, 5),)
    try:
        assert store.rate_admit(keys, None).ok and sent == ["EVALSHA"]
        first = _layout(prefix)
        _lose(prefix)
        sent.clear()
        with pytest.raises(BudgetStoreError) as info:
            store.rate_admit(keys, None)
        assert info.value.details == {"reason": "dataset_lost"}
        assert f"found layout '', opened {first!r}" in info.value.message
        assert sent == ["EVALSHA"]
        other = RedisStore(REDIS_URL, prefix=prefix, create=True)  # the operator's act
        other.close()
        second = _layout(prefix)
        sent.clear()
        assert store.rate_admit(keys, None).ok
        assert sent == ["EVALSHA", "EVALSHA"]  # refused, the new dataset taken up, run
        assert store.rate_admit(keys, None).ok and sent == ["EVALSHA"] * 3
        _lose(prefix)
        with redis.Redis.from_url(REDIS_URL) as client:
            client.set(prefix + "layout", "2:" + "0" * 16)  # a layout of another version
        sent.clear()
        with pytest.raises(BudgetStoreError) as info:
            store.rate_admit(keys, None)
        assert f"found layout '2:{'0' * 16}', opened {second!r}" in info.value.message
        assert sent == ["EVALSHA"]
    finally:
        store.close()
