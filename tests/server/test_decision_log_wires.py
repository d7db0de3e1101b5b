"""The decision log behind the service: the real tracengent, actguard and agent-ledger
SDKs drive a live service whose engine logs; decisions, budget operations and the events
each SDK sends land in the same log, each with its kind."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import actguard
import pytest
from agent_ledger_sdk import AgentLedgerClient, instrument_tool, run_session
from tracengent import AgentEvent, TracengentClient, TracengentOptions

import policyengine as pe
from policyengine.audit import CallbackSink, DecisionLog
from policyengine.server import ServiceConfig, create_app

from .budget_harness import POLICY, TRACENGENT, Live, credentials
from .service_harness import serving


@contextlib.contextmanager
def logged_service(**log_options: Any) -> Iterator[tuple[Live, list[dict[str, Any]]]]:
    records: list[dict[str, Any]] = []
    log = DecisionLog(CallbackSink(records.append), **log_options)
    engine = pe.Engine.from_source(
        POLICY + "budget daily: llm:* limit 5 USD per day per agent overdraft 1\n",
        decision_log=log)
    app = create_app(engine, credentials=credentials(), config=ServiceConfig(
        access_log=False, prefixes={"actguard": "/ag", "agent-ledger": "/ledger"}))
    try:
        with serving(app) as port:
            yield Live(app, engine, port), records
    finally:
        engine.close()


def events(records: list[dict[str, Any]], source: str) -> list[str]:
    return [r["event_kind"] for r in records if r["kind"] == "event" and r["source"] == source]


@pytest.fixture(scope="module")
def svc() -> Iterator[tuple[Live, list[dict[str, Any]]]]:
    with logged_service() as s:
        yield s


def settle(live: Live) -> None:
    assert live.engine.decision_log is not None
    assert live.engine.decision_log.flush(20)


def test_tracengent_decisions_events_and_traces_land_in_the_log(
        svc: tuple[Live, list[dict[str, Any]]]) -> None:
    live, records = svc
    with TracengentClient(TracengentOptions(
            agent_id="ag-agent", base_url=live.url, client_id=TRACENGENT[0],
            client_secret=TRACENGENT[1], flush_interval_ms=20)) as c:
        decision = c.authorize("llm:chat", {"plan_key": "basic"})
        assert decision.allowed
        with c.begin_trace("plan a trip") as trace:
            trace.step("looking")
        c.record(AgentEvent(name="custom-step", attributes={"password": "hunter2"}))
    settle(live)
    (auth,) = [r for r in records if r["kind"] == "authorize"
               and r["decision_id"] == decision.decision_id]
    assert auth["principal"] == "ag-agent" and auth["result"]["status"] == "allowed"
    kinds = events(records, "tracengent")
    assert "trace.close" in kinds and "action" in kinds
    step = next(r for r in records if r["kind"] == "event"
                and r["event"].get("name") == "custom-step")
    assert step["principal"] == "ag-agent"
    assert step["event"]["attributes"]["password"] == "***REDACTED***"


def test_actguard_runs_are_logged_with_their_taxonomy_and_budget_operations(
        svc: tuple[Live, list[dict[str, Any]]]) -> None:
    live, records = svc
    c = actguard.Client(api_key="ag-key", gateway_url=f"{live.url}/ag", flush_interval_ms=20,
                        budget_max_retries=0, budget_timeout_s=60)  # never unreserved
    try:
        with c.run(run_id="run-log-1"), c.budget_guard(cost_limit=1500):
            pass
    finally:
        c.close()
    settle(live)
    kinds = events(records, "actguard")
    assert "run.start" in kinds and "run.end" in kinds
    ops = [(r["kind"], r["status"]) for r in records if r["kind"].startswith("budget.")]
    assert ("budget.reserve", "ok") in ops and ("budget.commit", "ok") in ops
    run_decision = [r for r in records if r["kind"] == "authorize"
                    and r["permission"] == "llm:run"]
    assert run_decision and run_decision[-1]["input"]["context"]["run_id"] == "run-log-1"


def test_agent_ledger_sessions_and_events_are_logged(
        svc: tuple[Live, list[dict[str, Any]]]) -> None:
    live, records = svc
    with AgentLedgerClient("ledger-key", base_url=f"{live.url}/ledger") as lg, \
            run_session(lg, "ledger-agent") as (sid, steps):
        instrument_tool(ledger=lg, session_id=sid, step_index=steps.next(),
                        tool_name="search", tool_input={"q": "LIS"},
                        run=lambda: {"hits": 3})
    settle(live)
    mine = [r for r in records if r["kind"] == "event" and r["source"] == "agent-ledger"
            and (r["event"].get("sessionId") == sid or r["event"].get("id") == sid)]
    assert [r["event_kind"] for r in mine] == ["session.start", "tool_call", "tool_result",
                                               "session.end"]
    assert all(r["principal"] == "ledger-agent" for r in mine)


def test_a_log_that_cannot_take_events_answers_503_and_the_sdk_retries_later() -> None:
    class Down:
        def write(self, lines: Any) -> None:
            raise OSError("down")

        def close(self) -> None:
            pass

    log = DecisionLog(Down(), overflow="deny", stall_after=0.05, retry_backoff=0.01)
    engine = pe.Engine.from_source(POLICY, decision_log=log)
    app = create_app(engine, credentials=credentials(), config=ServiceConfig(
        access_log=False))
    import httpx
    with serving(app) as port:
        deadline = time.monotonic() + 20
        while log.healthy and time.monotonic() < deadline:
            time.sleep(0.01)
        token = httpx.post(f"http://127.0.0.1:{port}/v1/oauth/token", data={
            "grant_type": "client_credentials", "client_id": TRACENGENT[0],
            "client_secret": TRACENGENT[1]}).json()["access_token"]
        reply = httpx.post(f"http://127.0.0.1:{port}/v1/ingest/events", json=[{
            "eventId": "evt_1", "agentId": "ag-agent", "type": "action", "name": "x",
            "status": "success", "occurredAt": "2026-01-01T00:00:00Z"}],
            headers={"authorization": f"Bearer {token}"})
        assert reply.status_code == 503
        assert reply.json()["error"]["code"] == "decision_log_unavailable"
        decision = httpx.post(f"http://127.0.0.1:{port}/v1/authorize",
                              json={"permission": "llm:chat"},
                              headers={"authorization": f"Bearer {token}"}).json()
        assert decision["allowed"] is False and decision["reasonCode"] == \
            "decision_log_unavailable"
    engine.close(timeout=0.2)
