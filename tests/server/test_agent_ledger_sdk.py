"""The real, unmodified agent-ledger-sdk 0.0.6 against the live service (the
agent-ledger wire)."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
from agent_ledger_sdk import (
    AgentLedgerClient,
    AgentLedgerError,
    BudgetGuardrailError,
    instrument_tool,
    run_session,
)

from policyengine.budgets import BudgetStoreError, SQLiteStore

from .budget_harness import PRICES, Live, live

DAILY = "budget daily: llm:* limit 2 USD per day per agent\n"


@pytest.fixture
def svc() -> Iterator[Live]:
    with live(DAILY) as s:
        yield s


def ledger(svc: Live, key: str = "ledger-key") -> AgentLedgerClient:
    return AgentLedgerClient(key, base_url=f"{svc.url}/ledger")


def test_a_session_starts_logs_tool_events_and_ends(svc: Live) -> None:
    with ledger(svc) as lg:
        with run_session(lg, "ledger-agent") as (sid, steps):
            assert sid.startswith("ses_")
            out = instrument_tool(ledger=lg, session_id=sid, step_index=steps.next(),
                                  tool_name="search", tool_input={"q": "LIS"},
                                  run=lambda: {"hits": 3})
            assert out == {"hits": 3}
        session = svc.app.agent_ledger.sessions[sid]
        assert session.status == "success" and session.agent == "ledger-agent"
        kept = [(a, s, e.type, e.toolName) for a, s, e in svc.app.agent_ledger.events]
        assert kept == [("ledger-agent", sid, "tool_call", "search"),
                        ("ledger-agent", sid, "tool_result", "search")]
        with pytest.raises(AgentLedgerError, match="ended"):  # no events after the end
            lg.log_tool_call(sid, {"stepIndex": 9, "toolName": "x", "toolInput": {}})


def test_a_failing_session_ends_in_error(svc: Live) -> None:
    with ledger(svc) as lg:
        with pytest.raises(RuntimeError), run_session(lg, "ledger-agent") as (sid, _):
            raise RuntimeError("boom")
        s = svc.app.agent_ledger.sessions[sid]
        assert s.status == "error" and s.error == "boom"


def test_keys_agents_and_sessions_are_checked(svc: Live) -> None:
    with ledger(svc, key="wrong") as lg, pytest.raises(AgentLedgerError, match="API key"):
        lg.start_session("ledger-agent")
    with ledger(svc) as lg:
        with pytest.raises(AgentLedgerError, match="not for that agent"):
            lg.start_session("ag-agent")
        sid = lg.start_session("ledger-agent")
        with ledger(svc, key="other-key") as other, \
                pytest.raises(AgentLedgerError, match="no such session"):
            other.log_tool_call(sid, {"stepIndex": 0, "toolName": "x", "toolInput": 1})


def test_an_llm_call_the_policy_cannot_price_is_refused(svc: Live) -> None:
    with ledger(svc) as lg, run_session(lg, "ledger-agent") as (sid, _):
        with pytest.raises(AgentLedgerError, match="price") as err:
            lg.log_llm_call(sid, {"stepIndex": 0, "provider": "acme", "model": "m-1",
                                  "prompt": "hi", "response": "yo", "tokensIn": 10,
                                  "tokensOut": 5, "latencyMs": 12})
        assert not isinstance(err.value, BudgetGuardrailError)
    assert not svc.app.agent_ledger.events


def test_malformed_batches_are_400(svc: Live) -> None:
    h = {"x-api-key": "ledger-key"}
    sid = httpx.post(f"{svc.url}/ledger/v1/sessions", json={"agentName": "ledger-agent"},
                     headers=h).json()["id"]
    for body in ({"sessionId": sid}, {"sessionId": sid, "events": [{"stepIndex": 0}]},
                 {"sessionId": sid, "events": [{"type": "llm_call", "tokensIn": "9"}]},
                 {"sessionId": sid, "events": [{"type": "llm_call", "tokensIn": -1}]},
                 {"sessionId": sid, "events": [{"type": "llm_call", "provider": "openai",
                                                "model": "gpt-4o", "tokensIn": 10**13}]}):
        r = httpx.post(f"{svc.url}/ledger/v1/events", json=body, headers=h)
        assert r.status_code == 400, body
        assert isinstance(r.json()["error"], str) and r.json()["code"]


# ---------------------------------------------------------------- priced by the policy
def call(step: int, tokens_in: int = 1000, tokens_out: int = 500,
         model: str = "gpt-4o") -> dict[str, object]:
    """One LLM call as an agent logs it: $0.0075 at the test prices for gpt-4o."""
    return {"stepIndex": step, "provider": "openai", "model": model, "prompt": "p",
            "response": "r", "tokensIn": tokens_in, "tokensOut": tokens_out,
            "latencyMs": 10}


def test_llm_calls_are_priced_into_the_daily_budget_until_the_guardrail() -> None:
    budget = "budget daily: llm:* limit 5000000 USD_MICROCENTS per day per agent\n"  # $0.05
    with live(budget + PRICES) as svc, ledger(svc) as lg, \
            run_session(lg, "ledger-agent") as (sid, steps):
        for _ in range(6):  # 6 x $0.0075 = $0.045
            lg.log_llm_call(sid, call(steps.next()))
        with pytest.raises(BudgetGuardrailError) as err:
            lg.log_llm_call(sid, call(steps.next()))
        d = err.value.details
        assert d.agent_name == "ledger-agent"
        assert (d.daily_limit_usd, d.spent_today_usd, d.attempted_cost_usd) == (
            0.05, 0.045, 0.0075)
        assert (d.projected_cost_usd, d.remaining_budget_usd) == (0.0525, 0.005)
        (b,) = svc.engine.budgets.balances("ledger-agent")
        assert b.spent == Decimal(4_500_000)  # the refused call counted for nothing
        # A cheaper call still fits what is left: 1000 tokens of another model.
        lg.log_llm_call(sid, call(steps.next(), 1000, 1000, model="gpt-4o-mini"))
        (b,) = svc.engine.budgets.balances("ledger-agent")
        assert b.spent == Decimal(4_500_000 + 75_000)  # $0.00075, exact
        llm = [e for _, s, e in svc.app.agent_ledger.events if e.type == "llm_call"]
        assert len(llm) == 7


def test_tokens_and_sessions_are_budgets_too() -> None:
    budgets = ("budget per-session: llm:* limit 0.02 USD per day per context.session\n"
               "budget tokens: llm:* limit 4000 tokens per day per agent\n")
    with live(budgets + PRICES) as svc, ledger(svc) as lg:
        a = lg.start_session("ledger-agent")
        lg.log_llm_call(a, call(0))  # $0.0075 is a whole cent on a cent budget
        lg.log_llm_call(a, call(1))
        with pytest.raises(BudgetGuardrailError) as err:  # the session's $0.02 is spent
            lg.log_llm_call(a, call(2, 100, 100))         # (200 tokens fit the agent's)
        assert err.value.details.daily_limit_usd == 0.02
        (bucket,) = [b.subject for b in svc.engine.budgets.balances(
            scope={"session": f"tenant:/session:{a}"}) if b.spent]
        assert bucket == f"tenant:/session:{a}"  # the session's, under the empty tenant
        b = lg.start_session("ledger-agent")  # a new session has its own $0.02 ...
        with pytest.raises(BudgetGuardrailError) as err:  # ... but the agent's tokens:
            lg.log_llm_call(b, call(0, 1000, 1001))      # 3000 used, 2001 more is over
        raw = httpx.post(f"{svc.url}/ledger/v1/events", headers={"x-api-key": "ledger-key"},
                         json={"sessionId": b, "events": [
                             {**call(0, 1000, 1001), "type": "llm_call"}]}).json()
        assert raw["details"]["currency"] == "tokens"  # the refusing budget's own unit
        assert raw["details"]["remainingBudgetUsd"] == 1000
        lg.log_llm_call(b, call(1, 100, 100))  # 200 tokens fit


def test_a_tokens_budget_alone_counts_the_batches_tokens() -> None:
    # Only a tokens budget covers llm:call: the policy is asked with the batch's tokens
    # (asked in dollars, no tokens budget can count it: every batch was refused 403
    # unit_mismatch), and the ledger counts them; over the limit is the 429 guardrail.
    with live("budget tokens: llm:* limit 4000 tokens per day per agent\n" + PRICES) as svc, \
            ledger(svc) as lg, run_session(lg, "ledger-agent") as (sid, steps):
        lg.log_llm_call(sid, call(steps.next()))  # 1500 tokens
        lg.log_events(sid, [{**call(steps.next(), 500, 500), "type": "llm_call"},
                            {**call(steps.next(), 400, 100), "type": "llm_call"}])
        (b,) = svc.engine.budgets.balances("ledger-agent")
        assert (b.unit, b.spent, b.reserved) == ("tokens", Decimal(3000), 0)
        with pytest.raises(BudgetGuardrailError) as err:  # 1001 more is over 4000
            lg.log_llm_call(sid, call(steps.next(), 1000, 1))
        d = err.value.details
        assert (d.daily_limit_usd, d.spent_today_usd, d.attempted_cost_usd) == (
            4000, 3000, 1001)
        assert d.remaining_budget_usd == 1000
        with pytest.raises(BudgetGuardrailError):  # a batch over it: none of it counts
            lg.log_events(sid, [{**call(steps.next(), 500, 0), "type": "llm_call"},
                                {**call(steps.next(), 500, 1), "type": "llm_call"}])
        lg.log_llm_call(sid, call(steps.next(), 600, 400))  # exactly the 1000 left
        (b,) = svc.engine.budgets.balances("ledger-agent")
        assert (b.spent, b.remaining) == (Decimal(4000), 0)
        llm = [e for _, s, e in svc.app.agent_ledger.events if e.type == "llm_call"]
        assert len(llm) == 4


def test_with_only_a_tokens_budget_rules_see_the_tokens_and_a_dollar_rule_fails_closed(
        ) -> None:
    # No dollar amount is asked there: a rule on context.tokens decides, and a rule on
    # the dollar amount cannot be read, so it refuses (missing_amount), never passes.
    tokens = "budget tokens: llm:* limit 100000 tokens per day per agent\n"
    rule = "forbid long: llm:call when context.tokens > 2000\n"
    with live(tokens + rule + PRICES) as svc, ledger(svc) as lg, \
            run_session(lg, "ledger-agent") as (sid, steps):
        lg.log_llm_call(sid, call(steps.next()))  # 1500 tokens
        with pytest.raises(AgentLedgerError, match="long") as err:
            lg.log_llm_call(sid, call(steps.next(), 2000, 1))
        assert not isinstance(err.value, BudgetGuardrailError)
    cap = "limit cap: llm:call amount <= 1 USD\n"
    with live(tokens + cap + PRICES) as svc, ledger(svc) as lg, \
            run_session(lg, "ledger-agent") as (sid, steps):
        with pytest.raises(AgentLedgerError) as err:
            lg.log_llm_call(sid, call(steps.next()))
        assert not isinstance(err.value, BudgetGuardrailError)
        assert svc.engine.budgets.balances("ledger-agent")[0].spent == 0


def test_a_money_budget_beside_a_tokens_budget_still_counts_the_cost() -> None:
    budgets = ("budget daily: llm:* limit 1000000 USD_MICROCENTS per day per agent\n"
               "budget tokens: llm:* limit 100000 tokens per day per agent\n")
    with live(budgets + PRICES) as svc, ledger(svc) as lg, \
            run_session(lg, "ledger-agent") as (sid, steps):
        lg.log_llm_call(sid, call(steps.next()))  # $0.0075 of the $0.01
        with pytest.raises(BudgetGuardrailError) as err:  # another $0.0075 is over
            lg.log_llm_call(sid, call(steps.next()))
        assert err.value.details.daily_limit_usd == 0.01
        spent = {b.budget: b.spent for b in svc.engine.budgets.balances("ledger-agent")}
        assert spent == {"wires.daily": Decimal(750_000), "wires.tokens": Decimal(1500)}


def test_a_batch_is_all_or_nothing() -> None:
    budget = "budget daily: llm:* limit 1000000 USD_MICROCENTS per day per agent\n"  # 1 cent
    with live(budget + PRICES) as svc, ledger(svc) as lg:
        sid = lg.start_session("ledger-agent")
        with pytest.raises(BudgetGuardrailError):  # $0.0075 fits, two do not
            lg.log_events(sid, [{**call(0), "type": "llm_call"},
                                {"type": "tool_call", "stepIndex": 1, "toolName": "t"},
                                {**call(2), "type": "llm_call"}])
        (b,) = svc.engine.budgets.balances("ledger-agent")
        assert (b.spent, b.reserved) == (0, 0) and not svc.app.agent_ledger.events
        lg.log_events(sid, [{**call(0), "type": "llm_call"}])
        (b,) = svc.engine.budgets.balances("ledger-agent")
        assert (b.spent, b.reserved) == (Decimal(750_000), 0)


def test_without_prefixes_the_api_key_header_picks_the_ledger_over_cycles() -> None:
    # POST /v1/events is both agent-ledger's batch and the Cycles event: x-api-key (and
    # no X-Cycles-API-Key) makes it the ledger's.
    with live("budget daily: llm:* limit 1 USD per day per agent\n" + PRICES,
              prefixes={}) as svc, AgentLedgerClient("ledger-key", base_url=svc.url) as lg, \
            run_session(lg, "ledger-agent") as (sid, steps):
        lg.log_llm_call(sid, call(steps.next()))
        (b,) = svc.engine.budgets.balances("ledger-agent")
        assert b.spent == Decimal("0.01")


def test_sessions_live_in_the_shared_store_so_any_worker_answers(tmp_path: Any) -> None:
    """Two workers on one SQLite budget file: a session started on one is logged to,
    priced against the shared daily budget and ended on the other, and its end holds on
    both (the real SDK, one client per worker)."""
    path = tmp_path / "budgets.db"
    with live(DAILY + PRICES, store=SQLiteStore(path)) as one, \
            live(DAILY + PRICES, store=SQLiteStore(path)) as two, \
            ledger(one) as first, ledger(two) as second:
        sid = first.start_session("ledger-agent")
        assert sid not in two.app.agent_ledger.sessions  # nothing shared in memory
        second.log_llm_call(sid, {"stepIndex": 0, "provider": "openai", "model": "gpt-4o",
                                  "prompt": "p", "response": "r", "tokensIn": 0,
                                  "tokensOut": 150_000, "latencyMs": 5})  # $1.50
        with pytest.raises(BudgetGuardrailError) as err:  # the shared day: $2
            first.log_llm_call(sid, {"stepIndex": 1, "provider": "openai",
                                     "model": "gpt-4o", "prompt": "p", "response": "r",
                                     "tokensIn": 0, "tokensOut": 100_000, "latencyMs": 5})
        assert err.value.details.spent_today_usd == 1.5
        with ledger(two, key="other-key") as stranger, \
                pytest.raises(AgentLedgerError, match="no such session"):
            stranger.log_tool_call(sid, {"stepIndex": 2, "toolName": "x", "toolInput": 1})
        second.end_session(sid, status="success")
        with pytest.raises(AgentLedgerError, match="ended"):  # ended on the other worker
            first.log_tool_call(sid, {"stepIndex": 3, "toolName": "x", "toolInput": {}})
        again = httpx.post(f"{one.url}/ledger/v1/sessions/{sid}/end",
                           json={"status": "success", "errorMessage": "late"},
                           headers={"x-api-key": "ledger-key"})
        assert again.status_code == 200 and again.json()["errorMessage"] is None
        other = httpx.post(f"{one.url}/ledger/v1/sessions/{sid}/end",
                           json={"status": "error", "errorMessage": "boom"},
                           headers={"x-api-key": "ledger-key"})
        assert other.status_code == 409
        assert one.app.agent_ledger.sessions[sid].status == "success"


def test_a_store_fault_refuses_a_session_rather_than_keep_it_in_memory(
        svc: Live, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> None:
        raise BudgetStoreError("store_unavailable", "budget database error: gone")

    monkeypatch.setattr(svc.engine.budgets, "remember", broken)
    r = httpx.post(f"{svc.url}/ledger/v1/sessions", json={"agentName": "ledger-agent"},
                   headers={"x-api-key": "ledger-key"})
    assert r.status_code == 503 and r.json()["code"] == "store_unavailable"
    assert not svc.app.agent_ledger.sessions
