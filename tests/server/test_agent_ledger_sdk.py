"""The real, unmodified agent-ledger-sdk 0.0.6 against the live service (the
agent-ledger wire)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from agent_ledger_sdk import (
    AgentLedgerClient,
    AgentLedgerError,
    BudgetGuardrailError,
    instrument_tool,
    run_session,
)

from .budget_harness import Live, live

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
                 {"sessionId": sid, "events": [{"type": "llm_call", "tokensIn": -1}]}):
        r = httpx.post(f"{svc.url}/ledger/v1/events", json=body, headers=h)
        assert r.status_code == 400, body
        assert isinstance(r.json()["error"], str) and r.json()["code"]

