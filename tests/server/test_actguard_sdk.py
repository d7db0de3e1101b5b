"""The real, unmodified actguard 1.0.2 SDK against the live service (the actguard wire)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from decimal import Decimal

import actguard
import httpx
import pytest
from actguard.core.budget_context import record_usage
from actguard.exceptions import BudgetExceededError

from .budget_harness import PRICES, Live, live

DAILY = "budget daily: llm:* limit 2 USD per day per agent overdraft 1\n"


def client(svc: Live, key: str = "ag-key") -> actguard.Client:
    # The SDK runs unreserved when a reserve times out (its default: 3 s): a loaded
    # machine must not turn that into a test outcome.
    return actguard.Client(api_key=key, gateway_url=f"{svc.url}/ag", flush_interval_ms=20,
                           budget_max_retries=0, budget_timeout_s=60)


@pytest.fixture
def svc() -> Iterator[Live]:
    with live(DAILY) as s:
        yield s


def reserved(svc: Live, agent: str = "ag-agent") -> tuple[Decimal, Decimal]:
    (b,) = [b for b in svc.engine.budgets.balances(agent) if b.budget == "wires.daily"]
    return b.spent, b.reserved


def test_root_scope_reserves_once_nested_scopes_share_it_and_exit_settles(svc: Live) -> None:
    c = client(svc)
    try:
        with c.run(run_id="run-1"), c.budget_guard(cost_limit=1500) as root:
            reserve_id = root._shared_root.reserve_id  # what the SDK got back
            assert reserve_id is not None and reserve_id.startswith("rsv_")
            assert reserved(svc) == (Decimal("0.00"), Decimal("1.50"))
            with c.budget_guard(name="search", cost_limit=500) as inner:
                assert inner._state.reserve_id == reserve_id  # no second reservation
                assert reserved(svc) == (Decimal("0.00"), Decimal("1.50"))
        # Leaving the root settled the run: nothing used, the hold given back.
        assert reserved(svc) == (Decimal("0.00"), Decimal("0.00"))
        assert svc.engine.budgets.get(reserve_id).status == "committed"
    finally:
        c.close()


def test_a_run_that_does_not_fit_is_409_and_the_sdk_raises(svc: Live) -> None:
    # Another run holds $1.50 of the $2 day: $1 more does not fit.
    svc.engine.budgets.reserve("ag-agent", "llm:run", "1.50", "USD")
    c = client(svc)
    try:
        with pytest.raises(BudgetExceededError) as err, c.run(run_id="run-2"), \
                c.budget_guard(cost_limit=1000):
            pytest.fail("the scope must not run")
        e = err.value
        assert e.origin == "remote" and e.status_code == 409
        assert e.cost_limit == 2000 and e.cost_used == 1500
        assert reserved(svc) == (Decimal("0.00"), Decimal("1.50"))  # nothing more held
        # The same room for 500 CU is there: it fits.
        with c.run(run_id="run-3"), c.budget_guard(cost_limit=500):
            assert reserved(svc) == (Decimal("0.00"), Decimal("2.00"))
    finally:
        c.close()


def test_a_budget_in_debt_is_402_payment_required(svc: Live) -> None:
    # $2.40 metered after the fact (overdraft $1): $0.40 of debt, nothing new admitted.
    svc.engine.budgets.record("ag-agent", "llm:call", "2.40", "USD",
                              overage="allow_with_overdraft")
    c = client(svc)
    try:
        with pytest.raises(actguard.ActGuardPaymentRequired) as err, \
                c.run(run_id="run-4"), c.budget_guard(cost_limit=100):
            pytest.fail("the scope must not run")
        e = err.value
        assert e.current_balance == -400 and e.required_amount == 100
        assert e.shortfall == 500
    finally:
        c.close()


def test_a_policy_denial_stops_the_run_too(svc: Live) -> None:
    # A 403 would be swallowed by the SDK (it runs unreserved): a denial is a 409.
    c = client(svc)
    try:
        with pytest.raises(BudgetExceededError) as err, c.run(run_id="run-5"), \
                c.budget_guard(cost_limit=100, plan_key="banned"):
            pytest.fail("the scope must not run")
        assert "banned-plan" in str(err.value.details.get("summary"))
        assert reserved(svc) == (Decimal("0.00"), Decimal("0.00"))
    finally:
        c.close()


def test_without_cost_limit_the_room_left_becomes_the_runs_limit(svc: Live) -> None:
    svc.engine.budgets.record("ag-agent", "llm:call", "0.75", "USD")
    c = client(svc)
    try:
        with c.run(run_id="run-6"), c.budget_guard() as root:
            assert root._shared_root.root_cost_limit == 1250  # adopted from the reply
    finally:
        c.close()


def test_a_bad_key_is_401_which_the_sdk_swallows_and_nothing_is_held(svc: Live) -> None:
    c = client(svc, key="not-a-key")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with c.run(run_id="run-7"), c.budget_guard(cost_limit=100) as root:
                assert root._shared_root.reserve_id is None
        assert any("401" in str(w.message) for w in caught)
        assert reserved(svc) == (Decimal("0.00"), Decimal("0.00"))
    finally:
        c.close()


def test_run_ids_are_idempotent_per_key(svc: Live) -> None:
    url, auth = f"{svc.url}/ag/api/v1/reserve", {"Authorization": "Bearer ag-key"}
    first = httpx.post(url, json={"run_id": "r", "cost_limit": 100}, headers=auth)
    again = httpx.post(url, json={"run_id": "r", "cost_limit": 100}, headers=auth)
    assert first.status_code == again.status_code == 200
    assert first.json()["reserve_id"] == again.json()["reserve_id"]
    assert reserved(svc) == (Decimal("0.00"), Decimal("0.10"))
    other = httpx.post(url, json={"run_id": "r", "cost_limit": 200}, headers=auth)
    assert other.status_code == 409 and other.json()["code"] == "run_reused"


def test_a_run_id_that_has_run_cannot_run_again_uncharged(svc: Live) -> None:
    c = client(svc)
    try:
        with c.run(run_id="once"), c.budget_guard(cost_limit=100):
            pass
        # A replay would hand back the settled reservation and its usage would never be
        # charged: the SDK is stopped instead (a 4xx other than 402/409 it would ignore).
        with pytest.raises(BudgetExceededError) as err, c.run(run_id="once"), \
                c.budget_guard(cost_limit=100):
            pytest.fail("the scope must not run")
        assert "already run" in str(err.value.details.get("summary"))
    finally:
        c.close()


def test_settle_records_custom_costs_and_is_409_past_the_overdraft(svc: Live) -> None:
    url, auth = f"{svc.url}/ag/api/v1", {"Authorization": "Bearer ag-key"}
    rid = httpx.post(f"{url}/reserve", json={"run_id": "s1", "cost_limit": 1000},
                     headers=auth).json()["reserve_id"]
    body = {"reserve_id": rid, "input_tokens": 0, "cached_input_tokens": 0,
            "output_tokens": 0, "usage_breakdown": [
                {"type": "custom_cost", "name": "search", "cost_cu": 1234}]}
    r = httpx.post(f"{url}/settle", json=body, headers=auth)
    assert r.status_code == 200, r.text
    assert r.json()["cost_used"] == 1234 and r.json()["charged"] == 1.24  # a JSON number
    assert reserved(svc) == (Decimal("1.24"), Decimal("0.00"))  # over the hold, in budget
    assert httpx.post(f"{url}/settle", json=body, headers=auth).json() == r.json()  # retry
    changed = {**body, "usage_breakdown": [{"type": "custom_cost", "name": "s", "cost_cu": 1}]}
    r2 = httpx.post(f"{url}/settle", json=changed, headers=auth)
    assert r2.status_code == 409 and r2.json()["code"] == "already_settled"
    # The next run spends $2 more: $3.24 is past $2 + $1 overdraft. The budget is charged
    # what it has left ($0.76, its hold of $0.50 included): it is full.
    rid = httpx.post(f"{url}/reserve", json={"run_id": "s2", "cost_limit": 500},
                     headers=auth).json()["reserve_id"]
    body["reserve_id"] = rid
    body["usage_breakdown"] = [{"type": "custom_cost", "name": "x", "cost_cu": 2000}]
    r = httpx.post(f"{url}/settle", json=body, headers=auth)
    assert r.status_code == 409 and r.json()["code"] == "overdraft_limit_exceeded"
    assert r.json()["cost_limit"] == 2000
    assert reserved(svc) == (Decimal("2.00"), Decimal("0.00"))


def test_a_run_that_held_nothing_and_overspent_fills_the_budget() -> None:
    """A run without ``cost_limit`` holds nothing; one whose usage the budgets cannot
    take even with their overdraft is charged what they have left, so the budget is full
    and the next run is refused (charging its empty hold left every such run free)."""
    m1 = 'price "acme" "m1": input 1 USD, output 1 USD per 1M tokens\n'
    with live("budget d: llm:* limit 1 USD per day per agent\n" + m1) as svc:
        c = client(svc)
        try:
            with c.run(run_id="first"), c.budget_guard():
                record_usage(provider="acme", provider_model_id="m1",
                             input_tokens=900_000, output_tokens=0)
            (b,) = svc.engine.budgets.balances("ag-agent")
            assert (b.spent, b.remaining) == (Decimal("0.90"), Decimal("0.10"))
            with pytest.raises(BudgetExceededError), c.run(run_id="second"), \
                    c.budget_guard():
                record_usage(provider="acme", provider_model_id="m1",
                             input_tokens=900_000, output_tokens=0)
            (b,) = svc.engine.budgets.balances("ag-agent")
            assert (b.spent, b.reserved, b.remaining) == (Decimal("1.00"), 0, 0)
            with pytest.raises(BudgetExceededError) as err, c.run(run_id="third"), \
                    c.budget_guard():
                pytest.fail("a full budget admits no run")
            assert err.value.cost_used == 1000
        finally:
            c.close()


def test_settle_of_another_agents_reservation_is_404(svc: Live) -> None:
    url = f"{svc.url}/ag/api/v1"
    rid = httpx.post(f"{url}/reserve", json={"run_id": "x", "cost_limit": 100},
                     headers={"Authorization": "Bearer ag-key"}).json()["reserve_id"]
    body = {"reserve_id": rid, "input_tokens": 0, "cached_input_tokens": 0,
            "output_tokens": 0, "usage_breakdown": []}
    for key in ("other-key", "acme-key"):  # another agent; the same agent, another tenant
        r = httpx.post(f"{url}/settle", json=body, headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 404 and r.json()["code"] == "unknown_reservation"
    assert reserved(svc) == (Decimal("0.00"), Decimal("0.10"))


def test_events_are_validated_and_kept(svc: Live) -> None:
    c = client(svc)
    with c.run(run_id="run-8"):
        pass
    c.close()  # drains the queue
    names = [(agent, e.category, e.name, e.run_id) for agent, e in svc.app.actguard.events]
    assert ("ag-agent", "run", "start", "run-8") in names
    assert ("ag-agent", "run", "end", "run-8") in names
    bad = httpx.post(f"{svc.url}/ag/api/v1/events", json={"events": [{"id": 1}]},
                     headers={"Authorization": "Bearer ag-key"})
    assert bad.status_code == 400 and bad.json()["code"] == "invalid_request"
    anon = httpx.post(f"{svc.url}/ag/api/v1/events", json={"events": []})
    assert anon.status_code == 401


def test_a_budget_per_run_caps_each_run_on_its_own() -> None:
    per_run = "budget per-run: llm:run limit 1 USD per day per context.run_id\n"
    with live(per_run) as svc:
        c = client(svc)
        try:
            with pytest.raises(BudgetExceededError) as err, c.run(run_id="big"), \
                    c.budget_guard(cost_limit=1500):
                pytest.fail("the scope must not run")
            assert err.value.cost_limit == 1000 and err.value.cost_used == 0
            for run_id in ("a", "b"):  # each run has its own dollar
                # (kept under the key's tenant: this key has none, the empty tenant's)
                bucket = f"tenant:/run_id:{run_id}"
                with c.run(run_id=run_id), c.budget_guard(cost_limit=800):
                    lines = [(b.budget, b.subject, b.reserved) for b in
                             svc.engine.budgets.balances(scope={"run_id": bucket})]
                    assert lines == [("wires.per-run", bucket, Decimal("0.80"))]
        finally:
            c.close()


def test_a_fraction_of_a_cent_is_charged_as_a_whole_cent_on_a_cent_budget(svc: Live) -> None:
    url, auth = f"{svc.url}/ag/api/v1", {"Authorization": "Bearer ag-key"}
    r = httpx.post(f"{url}/reserve", json={"run_id": "c1", "cost_limit": 1}, headers=auth)
    assert r.status_code == 200, r.text  # $0.001 held as $0.01: never less
    assert reserved(svc) == (Decimal("0.00"), Decimal("0.01"))
    body = {"reserve_id": r.json()["reserve_id"], "input_tokens": 0, "cached_input_tokens": 0,
            "output_tokens": 0, "usage_breakdown": [
                {"type": "custom_cost", "name": "lookup", "cost_cu": 3}]}
    r = httpx.post(f"{url}/settle", json=body, headers=auth)
    assert r.status_code == 200 and r.json()["cost_used"] == 3, r.text
    assert r.json()["charged"] == 0.01 and r.json()["usd_micros"] == 3000
    assert reserved(svc) == (Decimal("0.01"), Decimal("0.00"))


# ---------------------------------------------------------------- priced by the policy
def test_the_tariff_is_the_policys_price_table_in_cost_units() -> None:
    with live(DAILY + PRICES) as svc:
        raw = httpx.get(f"{svc.url}/ag/api/v1/cu-tariff").json()
        assert raw["cu_per_usd"] == 1000
        # $2.50 / 1M input is 2.5 CU per 1k: sent per million; $1.25 cached rounds up.
        assert raw["llm"]["providers"]["openai"]["models"]["gpt-4o"] == {
            "input_cu_per_1m": 2500, "output_cu_per_1k": 10, "cached_cu_per_1k": 2}
        assert raw["llm"]["default"] == {"input_cu_per_1k": 3, "output_cu_per_1k": 10,
                                         "cached_cu_per_1k": 2}  # the dearest of each
        c = client(svc)
        try:
            tariff = c.get_cu_tariff()  # the SDK's own parser accepts it
            assert tariff.llm_cost(provider="openai", provider_model_id="gpt-4o",
                                   input_tokens=1000, output_tokens=500) == 8  # 3 + 5
            assert tariff.llm_cost(provider="x", provider_model_id="y",
                                   input_tokens=1000, output_tokens=0) == 3
        finally:
            c.close()


def test_a_run_is_charged_its_usage_priced_exactly() -> None:
    micro = ("budget micro: llm:* limit 200000000 USD_MICROCENTS per day per agent\n"
             + PRICES)
    with live(micro) as svc:
        c = client(svc)
        try:
            with c.run(run_id="priced"), c.budget_guard(cost_limit=1000):
                with c.budget_guard(name="answer"):
                    # What the SDK's OpenAI integration records for one completion.
                    record_usage(provider="openai", provider_model_id="gpt-4o",
                                 input_tokens=1000, output_tokens=500)
                actguard.add_cost(name="search-api", usd=0.25)
            (b,) = svc.engine.budgets.balances("ag-agent")
            # $0.0075 for the completion (not the SDK's rounded 8 CU) + 250 CU.
            assert (b.spent, b.reserved) == (Decimal(25_750_000), 0)
        finally:
            c.close()


def test_a_usage_the_policy_cannot_price_charges_the_whole_hold() -> None:
    with live(DAILY + 'price "acme" "m1": input 1 USD, output 1 USD per 1M tokens\n') as svc:
        url, auth = f"{svc.url}/ag/api/v1", {"Authorization": "Bearer ag-key"}
        rid = httpx.post(f"{url}/reserve", json={"run_id": "u", "cost_limit": 300},
                         headers=auth).json()["reserve_id"]
        r = httpx.post(f"{url}/settle", headers=auth, json={
            "reserve_id": rid, "input_tokens": 10, "cached_input_tokens": 0,
            "output_tokens": 10, "usage_breakdown": [
                {"provider": "other", "provider_model_id": "m9", "input_tokens": 10,
                 "cached_input_tokens": 0, "output_tokens": 10}]})
        assert r.status_code == 422 and r.json()["code"] == "unpriced_model"
        assert reserved(svc) == (Decimal("0.30"), Decimal("0.00"))
